"""What the trainer accumulates over one epoch: loss sums and accuracy (checkpointed, for exact resume) and, when
asked, every step's extras (per-sample teacher weights …) for the plots."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mkdlab.methods.base import Batch, StepOutput

CORRECT, STEPS = "_correct", "_steps"


class EpochTotals:
    """Running sums of the epoch in progress, kept on the device: every loss term, the correct training
    predictions, the steps and the images; :meth:`record` turns them into the epoch's ``train_*`` history fields.

    Its state (:meth:`state_dict`) goes into the run checkpoint, so an epoch resumed in the middle reports the same
    means as an uninterrupted one.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.correct: Tensor | int = 0
        self.steps = 0
        self.images = 0

    def add(self, batch: Batch, output: StepOutput) -> None:
        """Add one step's loss terms and correct predictions (no host synchronisation)."""
        with torch.no_grad():
            for name, value in output.losses.items():
                self.sums[name] = self.sums.get(name, 0) + value.detach().float()
            self.correct = self.correct + (output.logits.argmax(1) == batch.labels).sum()
        self.steps += 1
        self.images += batch.labels.shape[0]

    def record(self) -> dict[str, float]:
        """``train_<term>`` (mean over the epoch's steps), ``train_loss`` (their sum) and ``train_top1`` (%)."""
        record = {f"train_{name}": float(total) / self.steps for name, total in self.sums.items()}
        record["train_loss"] = sum(record[f"train_{name}"] for name in self.sums)
        record["train_top1"] = 100.0 * float(self.correct) / max(self.images, 1)
        return record

    def state_dict(self) -> dict[str, Any]:
        """The sums on the CPU, as the run checkpoint stores them (``epoch_sums``, ``epoch_images``)."""
        sums: dict[str, Any] = dict(self.sums)
        if self.steps:
            sums.update({CORRECT: self.correct, STEPS: self.steps})
        return {"epoch_sums": {k: torch.as_tensor(v).cpu() for k, v in sums.items()}, "epoch_images": self.images}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore what :meth:`state_dict` returned, the sums moved to ``device``."""
        sums = {k: v.to(device) for k, v in state["epoch_sums"].items()}
        self.correct = sums.pop(CORRECT, 0)
        self.steps = int(sums.pop(STEPS, 0))
        self.sums = sums
        self.images = state["epoch_images"]


class ExtrasRecorder:
    """Every step's extras of one epoch on the CPU, with the batch's labels and dataset indices."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Tensor]] = []

    def add(self, batch: Batch, output: StepOutput) -> None:
        """Keep ``output.extras`` (as float32 on the CPU), ``labels`` and, when present, ``indices``."""
        if not output.extras:
            return
        row = {name: value.detach().float().cpu() for name, value in output.extras.items()}
        row["labels"] = batch.labels.cpu()
        if batch.indices is not None:
            row["indices"] = batch.indices.cpu()
        self.rows.append(row)

    def concatenated(self) -> dict[str, Tensor]:
        """Each field of every recorded step joined along the sample axis (empty when nothing was recorded)."""
        if not self.rows:
            return {}
        return {name: torch.cat([row[name] for row in self.rows]) for name in self.rows[0]}
