"""MMKD's hard buffer: recently misclassified training images, the "validation set" of its meta step.

Official behaviour (``dataset/buffer.py``, docs/methods.md §5.3): a fixed capacity (256) of augmented images and their
labels kept on the training device; while it is not full, every training batch is appended whole; once it is full,
after every training step the batch's misclassified samples (student argmax ≠ label) overwrite randomly chosen,
distinct slots. Images, labels, the fill count (and any extra per-sample fields) are buffers, so run checkpoints
save and restore them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


class HardBuffer(nn.Module):
    """A store of at most ``capacity`` images of shape ``image_shape`` (C×H×W) with their labels and, optionally,
    named per-sample float tensors ``extra_shapes`` (MMKD keeps the teachers' outputs for each image, so that a
    meta batch needs no teacher forward).

    The storage is allocated at construction (zeros), so its size is known before a checkpoint is loaded;
    :meth:`push` refuses images of another shape. Random choices use PyTorch's global CPU generator, which run
    checkpoints save: a resumed run makes the same choices.
    """

    def __init__(self, capacity: int, image_shape: Sequence[int],
                 extra_shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"the hard buffer needs a capacity of at least 1, got {capacity}")
        self.capacity = capacity
        self.register_buffer("images", torch.zeros(capacity, *image_shape))
        self.register_buffer("labels", torch.zeros(capacity, dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.extra_names = list(extra_shapes or {})
        for name, shape in (extra_shapes or {}).items():
            self.register_buffer(name, torch.zeros(capacity, *shape))

    def __len__(self) -> int:
        return int(self.count)

    @property
    def full(self) -> bool:
        """Whether every slot holds a sample."""
        return len(self) == self.capacity

    @torch.no_grad()
    def push(self, images: Tensor, labels: Tensor, predictions: Tensor,
             extras: Mapping[str, Tensor] | None = None) -> Tensor:
        """Add one training batch (with one row of every extra field per image); returns the slots written.

        Not yet full: the first ``capacity − count`` samples of the batch are appended (all of them, whatever the
        predictions). Full: the misclassified samples (``predictions != labels``; at most ``capacity``) replace
        distinct, uniformly chosen slots.
        """
        if images.shape[1:] != self.images.shape[1:]:
            raise ValueError(f"the hard buffer stores images of shape {tuple(self.images.shape[1:])}, "
                             f"got a batch of {tuple(images.shape[1:])}")
        count = len(self)
        if count < self.capacity:
            rows = torch.arange(min(images.shape[0], self.capacity - count), device=labels.device)
            slots = torch.arange(count, count + rows.numel(), device=self.images.device)
            self.count.fill_(count + rows.numel())
        else:
            rows = (predictions != labels).nonzero().flatten()[: self.capacity]
            slots = torch.randperm(self.capacity)[: rows.numel()].to(self.images.device)
        fields = {"images": images, "labels": labels, **(extras or {})}
        for name in ("images", "labels", *self.extra_names):
            store = getattr(self, name)
            store[slots] = fields[name][rows].to(store.dtype)
        return slots

    def sample(self, size: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``size`` distinct stored samples, uniformly without replacement: images, labels and the extra fields."""
        if size > len(self):
            raise ValueError(f"cannot draw {size} samples from a hard buffer holding {len(self)}")
        index = torch.randperm(len(self))[:size].to(self.images.device)
        return self.images[index], self.labels[index], {name: getattr(self, name)[index] for name in self.extra_names}
