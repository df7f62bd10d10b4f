"""``fashion_mnist_mini``: a class-balanced real subset of Fashion-MNIST shipped inside the package.

1,000 training and 200 test images per class (10,000 + 2,000), drawn without replacement by a seeded
generator from the full training and test sets. ``mkdlab/assets/fashion_mnist_mini.npz`` holds, per split,
the uint8 28x28 images, the uint8 labels and the int32 indices of the images in the full set;
``scripts/build_fashion_mnist_mini.py`` rebuilds it with :func:`build_mini_arrays`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import datasets as tv_datasets

from mkdlab.data.sources import MINI_FILENAME, resolve_root

__all__ = ["FashionMNISTMini", "balanced_indices", "build_mini_arrays", "load_mini_arrays"]


def load_mini_arrays(train: bool, root: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The ``images`` (N x 28 x 28 uint8), ``labels`` (uint8) and ``indices`` (int32) of one split."""
    path = resolve_root("fashion_mnist_mini", root) / MINI_FILENAME
    split = "train" if train else "test"
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[f"{split}_{key}"] for key in ("images", "labels", "indices")}


class FashionMNISTMini(tv_datasets.VisionDataset):
    """The packaged Fashion-MNIST subset, read like :class:`torchvision.datasets.FashionMNIST`.

    ``data`` (N x 28 x 28 uint8 tensor), ``targets`` (int64 tensor) and ``classes`` match torchvision's class;
    ``source_indices`` gives each image's index in the full Fashion-MNIST split it was drawn from. Items are
    ``(PIL image in mode "L", int label)`` before transforms, so PIL transforms apply.

    Args:
        root: a folder holding ``fashion_mnist_mini.npz``; default: the copy inside the package.
        train: the training split (10,000 images) or the test split (2,000).
        transform: applied to the PIL image.
        target_transform: applied to the label.
    """

    classes = tv_datasets.FashionMNIST.classes

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        train: bool = True,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        folder = resolve_root("fashion_mnist_mini", root)
        super().__init__(str(folder), transform=transform, target_transform=target_transform)
        self.train = train
        arrays = load_mini_arrays(train, folder)
        self.data = torch.from_numpy(arrays["images"])
        self.targets = torch.from_numpy(arrays["labels"].astype(np.int64))
        self.source_indices = torch.from_numpy(arrays["indices"])

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class name to label, as in torchvision."""
        return {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img: Any = Image.fromarray(self.data[index].numpy())  # 2-D uint8: mode "L"
        target: Any = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def extra_repr(self) -> str:
        return f"Split: {'Train' if self.train else 'Test'}"


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class drawn without replacement, returned sorted (int32).

    Raises:
        ValueError: a class has fewer than ``per_class`` samples.
    """
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise ValueError(f"class {c} has {len(pool)} samples, fewer than the {per_class} asked for")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def build_mini_arrays(
    per_class_train: int = 1000,
    per_class_test: int = 200,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """Draw the subset from the full Fashion-MNIST (found with :func:`~mkdlab.data.resolve_root`).

    Returns:
        The arrays to store with :func:`numpy.savez_compressed`: ``{train,test}_{images,labels,indices}`` and
        ``seed``. One generator seeded with ``seed`` draws the training subset, then the test subset.
    """
    folder = resolve_root("fashion_mnist", root)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {"seed": np.asarray(seed, dtype=np.int64)}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        full = tv_datasets.FashionMNIST(str(folder), train=split == "train", download=False)
        images, labels = full.data.numpy(), full.targets.numpy()
        idx = balanced_indices(labels, per_class, rng)
        arrays[f"{split}_images"] = images[idx].astype(np.uint8)
        arrays[f"{split}_labels"] = labels[idx].astype(np.uint8)
        arrays[f"{split}_indices"] = idx
    return arrays
