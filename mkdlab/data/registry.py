"""The datasets mkdlab knows by name and their fixed facts (classes, channels, normalisation, sizes)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "DatasetInfo",
    "available_datasets",
    "dataset_info",
]

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# Mean and (population) standard deviation of every pixel of the 60,000 Fashion-MNIST training images, as
# pixel / 255 on the original 28x28 images (before the 2-pixel padding to 32x32), computed once in float64
# from /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz: 0.2860406, 0.3530242.
# tests/test_data.py recomputes them on the full set when it is present. The mini subset shares them.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """Fixed facts about one dataset.

    ``image_size`` is the side of the images the models see: Fashion-MNIST's 28x28 images are padded to 32x32
    so every CIFAR model of the zoo applies with ``in_channels=1``.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int = 32
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int


_REGISTRY: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="cifar100",
            num_classes=100,
            in_channels=3,
            mean=CIFAR100_MEAN,
            std=CIFAR100_STD,
            train_size=50_000,
            test_size=10_000,
        ),
        DatasetInfo(
            name="cifar10",
            num_classes=10,
            in_channels=3,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            train_size=50_000,
            test_size=10_000,
        ),
        DatasetInfo(
            name="fashion_mnist",
            num_classes=10,
            in_channels=1,
            mean=FASHION_MNIST_MEAN,
            std=FASHION_MNIST_STD,
            train_size=60_000,
            test_size=10_000,
        ),
        DatasetInfo(
            name="fashion_mnist_mini",
            num_classes=10,
            in_channels=1,
            mean=FASHION_MNIST_MEAN,
            std=FASHION_MNIST_STD,
            train_size=10_000,
            test_size=2_000,
        ),
    )
}


def available_datasets() -> tuple[str, ...]:
    """Names accepted by :func:`dataset_info`, :func:`~mkdlab.data.get_dataset` and friends."""
    return tuple(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (case-insensitive; ``-`` may stand for ``_``).

    Raises:
        ValueError: ``name`` is not a known dataset; the message lists the valid names.
    """
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    try:
        return _REGISTRY[key]
    except (KeyError, TypeError):
        valid = ", ".join(available_datasets())
        raise ValueError(f"unknown dataset {name!r}; choose one of: {valid}") from None
