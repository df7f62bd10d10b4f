"""The Distiller contract every method implements (after mdistiller's ``distillers/_base.py``).

A method is an :class:`torch.nn.Module` that owns the student, its teachers (0, 1 or K) and its own adapters
(regressors, embeds, weight networks). The one :class:`~mkdlab.engine.trainer.Trainer` drives every method through
this interface:

* ``forward_train(batch, epoch)`` returns a :class:`StepOutput`: the student logits, a dict of named loss terms
  (the trainer sums them and logs each one) and extras for plots (``"teacher_weights"``: B×K, …);
* ``forward(x)`` is plain student inference;
* hooks (``on_train_start``, ``before_step``, ``after_step``, ``on_epoch_end``) let special training (meta steps,
  per-sample memories, two-phase schedules) plug in without a second copy of the loop;
* ``parameter_groups()`` and ``extra_optimizers()`` let a method add trainable adapters or its own optimisers.

Teachers are frozen: ``requires_grad=False``, kept in eval mode by :meth:`Distiller.train`, and run without
autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from mkdlab.methods.ensemble import TeacherEnsemble

if TYPE_CHECKING:
    from mkdlab.engine.trainer import Trainer


@dataclass
class Batch:
    """One training batch: images (B×C×H×W), labels (B,) and, when the loader provides them, dataset indices."""

    images: Tensor
    labels: Tensor
    indices: Tensor | None = None

    @classmethod
    def from_loader(cls, item: Sequence[Tensor], device: torch.device) -> Batch:
        """Build a batch from a loader item ``(images, labels[, indices])``, moved to ``device``."""
        images, labels, *rest = item
        indices = rest[0].to(device, non_blocking=True) if rest else None
        return cls(images.to(device, non_blocking=True), labels.to(device, non_blocking=True), indices)


@dataclass
class StepOutput:
    """What a method returns for one training batch.

    ``losses`` maps a term's name to a scalar tensor that already carries its coefficient; the trainer
    back-propagates their sum. ``extras`` holds detached tensors for plots and logs (e.g. ``"teacher_weights"``).
    """

    logits: Tensor
    losses: dict[str, Tensor]
    extras: dict[str, Tensor] = field(default_factory=dict)

    def total(self) -> Tensor:
        """The sum of every loss term."""
        return torch.stack(list(self.losses.values())).sum()


@dataclass
class ModelOutputs:
    """One batch through the student and the teachers: logits always, named maps when they were asked for."""

    logits: Tensor
    teacher_logits: Tensor
    student_maps: dict[str, Tensor] | None = None
    teacher_maps: list[dict[str, Tensor]] | None = None


@dataclass(frozen=True)
class NoParams:
    """Hyper-parameters of a method that has none."""


class Distiller(nn.Module):
    """Base class of every method: a student, frozen teachers and the method's own trainable adapters.

    Subclasses set ``Params`` (a dataclass of hyper-parameters, validated from YAML), implement
    :meth:`forward_train` and, where needed, override the hooks. Class attributes tell the trainer what the method
    needs from the data pipeline.
    """

    method_name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: how many teachers the method accepts: ``"none"``, ``"one"`` or ``"many"``.
    teachers_required: ClassVar[str] = "none"
    #: with ``"many"``: the fewest teachers the method works with (2 for weightings that compare teachers).
    min_teachers: ClassVar[int] = 1
    #: the last incomplete batch must be dropped (batch-size-tied weight networks, the CA-MKD recipe).
    needs_drop_last: ClassVar[bool] = False
    #: batches must carry dataset indices (per-sample memories).
    needs_indices: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teachers: Sequence[nn.Module] = (), params: Any = None) -> None:
        super().__init__()
        self.params = self.Params() if params is None else params
        self._check_teacher_count(len(teachers))
        self.student = student
        self.teachers = nn.ModuleList(teachers)
        self._ensemble: TeacherEnsemble | None = None
        for teacher in self.teachers:
            teacher.requires_grad_(False)
            teacher.eval()

    def _check_teacher_count(self, count: int) -> None:
        expected = {"none": count == 0, "one": count == 1, "many": count >= 1}[self.teachers_required]
        if not expected:
            raise ValueError(
                f"method {self.method_name!r} takes {self.teachers_required} teacher(s), got {count}"
            )
        if self.teachers_required == "many" and count < self.min_teachers:
            raise ValueError(f"method {self.method_name!r} weights teachers against each other and needs at least "
                             f"{'two' if self.min_teachers == 2 else self.min_teachers} teachers, got {count}")

    # -- modes -------------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Distiller:
        """Set the student and adapters to ``mode``; teachers always stay in eval mode."""
        super().train(mode)
        for teacher in self.teachers:
            teacher.eval()
        return self

    # -- inference ---------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Plain student inference: logits."""
        return self.student(x)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        """Loss terms for one batch; ``epoch`` is 0-based."""
        raise NotImplementedError

    # -- what the trainer optimises ----------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the main SGD optimiser: every trainable parameter outside the teachers.

        Methods that give some adapter its own optimiser override this to leave those parameters out.
        """
        params = [p for name, p in self.named_parameters() if not name.startswith("teachers.") and p.requires_grad]
        return [{"params": params}]

    def extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers the method steps itself (e.g. MMKD's meta-weight Adam); checkpointed by the trainer."""
        return {}

    # -- hooks -------------------------------------------------------------------------------------------------
    def bind_train_set(self, num_samples: int) -> None:
        """Told the training-set size before the method moves to its device and before a checkpoint is loaded.

        Methods with per-sample state (DTSKD's memory banks) allocate it here as buffers, so that it is saved in
        and restored from checkpoints like any other state.
        """

    def on_train_start(self, trainer: Trainer) -> None:
        """Called once before the first step (also after a resume)."""

    def before_step(self, trainer: Trainer, batch: Batch) -> None:
        """Called before ``forward_train`` of every step."""

    def after_step(self, trainer: Trainer, batch: Batch, output: StepOutput) -> None:
        """Called after the optimiser step."""

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """Called after the last step of ``epoch`` (0-based), before evaluation."""

    # -- teachers ----------------------------------------------------------------------------------------------
    @property
    def ensemble(self) -> TeacherEnsemble:
        """The teachers as one :class:`~mkdlab.methods.ensemble.TeacherEnsemble` (loop or batched call)."""
        if self._ensemble is None:
            self._ensemble = TeacherEnsemble(self.teachers)
        return self._ensemble

    def teacher_logits(self, images: Tensor) -> Tensor:
        """Logits of every teacher, stacked K×B×C, computed without autograd."""
        return self.ensemble.logits(images)

    def teacher_features(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Every named map of every teacher (``forward_features``: one dict per teacher), without autograd."""
        return self.ensemble.features(images)

    def run_models(self, images: Tensor, maps: bool = True) -> ModelOutputs:
        """Student logits (with autograd) and teacher logits K×B×C (without); with ``maps``, every named map too."""
        if not maps:
            return ModelOutputs(self.student(images), self.teacher_logits(images))
        teacher_maps = self.teacher_features(images)
        student_maps = self.student.forward_features(images)
        return ModelOutputs(student_maps["logits"], torch.stack([m["logits"] for m in teacher_maps]), student_maps,
                            teacher_maps)

    def export_student(self) -> nn.Module:
        """The network to deploy (the student without adapters or teachers)."""
        return self.student
