"""Datasets by name: torchvision datasets with the default transforms, and whole splits as tensors."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mkdlab.data.mini import FashionMNISTMini
from mkdlab.data.registry import dataset_info
from mkdlab.data.sources import resolve_root, torchvision_class
from mkdlab.data.transforms import test_transform, train_transform

__all__ = ["IndexedDataset", "get_dataset", "load_tensors"]

Transform = Callable[[Any], Any]


class IndexedDataset(Dataset):
    """Wraps a dataset so items are ``(image, label, index)``: self-distillation keeps per-sample memory."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        image, label = self.dataset[index]
        return image, label, index

    def __getattr__(self, name: str) -> Any:
        """Attributes of the wrapped dataset (``targets``, ``classes``, ...) stay reachable."""
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def get_dataset(
    name: str,
    train: bool,
    root: str | os.PathLike[str] | None = None,
    transform: Transform | Literal["default"] | None = "default",
    download: bool = False,
    with_index: bool = False,
) -> Dataset:
    """A torchvision-style dataset of PIL images.

    Args:
        name: ``cifar100``, ``cifar10``, ``fashion_mnist`` or ``fashion_mnist_mini``.
        train: the training split or the test split.
        root: a data folder searched first (see :func:`~mkdlab.data.resolve_root` for the others).
        transform: ``"default"`` picks :func:`train_transform` or :func:`test_transform`; ``None`` gives raw
            PIL images; any other callable is applied to the PIL image.
        download: allow a download when the data is nowhere on disk.
        with_index: wrap in :class:`IndexedDataset` so items are ``(image, label, index)``.

    Raises:
        DatasetNotFoundError: the data is not on disk and ``download`` is false.
    """
    info = dataset_info(name)
    if isinstance(transform, str):
        if transform != "default":
            raise ValueError(f"transform must be 'default', None or a callable, not {transform!r}")
        transform = train_transform(info.name) if train else test_transform(info.name)
    dataset: Dataset
    if info.name == "fashion_mnist_mini":
        dataset = FashionMNISTMini(root, train=train, transform=transform)
    else:
        folder = resolve_root(info.name, root, download=download)
        cls = torchvision_class(info.name)
        try:
            dataset = cls(str(folder), train=train, transform=transform, download=False)
        except RuntimeError as err:
            raise RuntimeError(
                f"{info.name} files are in {folder} but torchvision cannot read them ({err}); they are "
                "probably truncated or corrupted: delete them and extract or prepare them again"
            ) from err
    return IndexedDataset(dataset) if with_index else dataset


def load_tensors(
    name: str, train: bool, root: str | os.PathLike[str] | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as ``(images, labels)``: uint8 ``N x C x 32 x 32`` and int64 ``N``.

    The raw arrays are read directly (no PIL per image). Fashion-MNIST is padded with 2 zero pixels on each
    side to 32x32 (``C = 1``); CIFAR images are ``N x 3 x 32 x 32``.
    """
    info = dataset_info(name)
    raw: Any = get_dataset(info.name, train, root, transform=None, download=download)
    data = raw.data
    images = torch.from_numpy(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    border_h = (info.image_size - images.shape[-2]) // 2
    border_w = (info.image_size - images.shape[-1]) // 2
    if border_h or border_w:
        images = F.pad(images, (border_w, border_w, border_h, border_h))
    labels = torch.as_tensor(np.asarray(raw.targets), dtype=torch.int64)
    return images.contiguous(), labels
