"""Datasets that work offline: CIFAR-100, CIFAR-10, Fashion-MNIST and a packaged Fashion-MNIST subset.

- :func:`dataset_info` / :func:`available_datasets`: fixed facts per name (:mod:`mkdlab.data.registry`).
- :func:`resolve_root`: where the files are, searched in a fixed order, never downloaded silently
  (:mod:`mkdlab.data.sources`).
- :func:`get_dataset`: torchvision datasets with the default transforms (:func:`train_transform`,
  :func:`test_transform`), optionally yielding indices; :func:`load_tensors`: a whole split as uint8 tensors.
- :class:`DeviceLoader`: the dataset on the device, augmented there; :func:`make_loaders` builds train/test
  loaders of either kind.

Every dataset is served as 32x32 images: Fashion-MNIST is padded from 28x28, with one channel.
"""

from mkdlab.data.datasets import IndexedDataset, get_dataset, load_tensors
from mkdlab.data.device_loader import DeviceLoader, EpochParams
from mkdlab.data.loaders import make_loaders
from mkdlab.data.mini import FashionMNISTMini
from mkdlab.data.registry import DatasetInfo, available_datasets, dataset_info
from mkdlab.data.sources import DatasetNotFoundError, resolve_root
from mkdlab.data.transforms import test_transform, train_transform

__all__ = [
    "DatasetInfo",
    "DatasetNotFoundError",
    "DeviceLoader",
    "EpochParams",
    "FashionMNISTMini",
    "IndexedDataset",
    "available_datasets",
    "dataset_info",
    "get_dataset",
    "load_tensors",
    "make_loaders",
    "resolve_root",
    "test_transform",
    "train_transform",
]
