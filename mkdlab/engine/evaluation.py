"""Test-set evaluation of a model: mean cross-entropy, top-1 and top-5 accuracy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor

from mkdlab.methods.base import Batch


def accuracy_counts(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> list[Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, : min(k, top.shape[1])].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader: Iterable[Sequence[Tensor]], device: torch.device, *,
                   channels_last: bool = False, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Test loss (mean CE), top-1 and top-5 accuracy (%) of ``model`` in eval mode; its mode is restored after."""
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, count = torch.zeros((), device=device), 0, 0, 0
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    for item in loader:
        batch = Batch.from_loader(item, device)
        images = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images
        with autocast:
            logits = model(images)
        loss_sum += torch.nn.functional.cross_entropy(logits.float(), batch.labels, reduction="sum")
        c1, c5 = accuracy_counts(logits, batch.labels)
        top1, top5, count = top1 + c1, top5 + c5, count + batch.labels.shape[0]
    model.train(was_training)
    return {"test_loss": float(loss_sum) / count, "test_top1": 100.0 * float(top1) / count,
            "test_top5": 100.0 * float(top5) / count}
