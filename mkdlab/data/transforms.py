"""Per-dataset PIL transforms: the standard CIFAR recipe, also for Fashion-MNIST once padded to 32x32."""

from __future__ import annotations

from torchvision import transforms as T

from mkdlab.data.registry import dataset_info

__all__ = ["CROP_PADDING", "test_transform", "train_transform"]

CROP_PADDING = 4


def _to_size(name: str) -> list[T.Pad]:
    """The ``Pad`` that brings native images to ``image_size`` (Fashion-MNIST: 28 -> 32), if any."""
    info = dataset_info(name)
    native = 28 if info.name.startswith("fashion_mnist") else info.image_size
    border = (info.image_size - native) // 2
    return [T.Pad(border)] if border else []


def train_transform(name: str) -> T.Compose:
    """Training transform: [pad to 32,] ``RandomCrop(32, padding=4)``, horizontal flip, tensor, normalise."""
    info = dataset_info(name)
    return T.Compose(
        [
            *_to_size(name),
            T.RandomCrop(info.image_size, padding=CROP_PADDING),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(info.mean, info.std),
        ]
    )


def test_transform(name: str) -> T.Compose:
    """Evaluation transform: [pad to 32,] tensor, normalise."""
    info = dataset_info(name)
    return T.Compose([*_to_size(name), T.ToTensor(), T.Normalize(info.mean, info.std)])


test_transform.__test__ = False  # type: ignore[attr-defined]  # not a test, should pytest collect an import of it
