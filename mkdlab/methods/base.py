"""The Distiller contract every method implements (after mdistiller's ``distillers/_base.py``).

A method is an :class:`torch.nn.Module` that owns the student, its teachers (0, 1 or K) and its own adapters
(regressors, embeds, weight networks). The one :class:`~mkdlab.engine.trainer.Trainer` drives every method through
this interface:

* ``forward_train(batch, epoch)`` returns a :class:`StepOutput`: the student logits, a dict of named loss terms
  (the trainer sums them and logs each one) and extras for plots (``"teacher_weights"``: B×K, …);
* ``forward(x)`` is plain student inference;
* the hooks of :class:`TrainingHooks` (``on_train_start``, ``before_step``, ``after_step``, ``on_epoch_end``, …)
  let special training (meta steps, per-sample memories, two-phase schedules) plug in without a second copy of the
  loop. Hooks see a :class:`TrainState` (epoch, step, the main optimiser, the gradient scale), never the trainer;
  callbacks and loggers receive the same calls;
* ``parameter_groups()`` and ``extra_optimizers()`` let a method add trainable adapters or its own optimisers.

Teachers are frozen: ``requires_grad=False``, kept in eval mode by :meth:`Distiller.train`, and run without
autograd.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mkdlab.methods.collectives import Collectives
from mkdlab.methods.ensemble import TeacherEnsemble


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
    ``carry`` holds what the method's own :meth:`~TrainingHooks.after_step` needs from this step (DTSKD's
    predictions for its memory banks, MMKD's teacher outputs for its hard buffer); the trainer neither logs nor
    keeps it.
    """

    logits: Tensor
    losses: dict[str, Tensor]
    extras: dict[str, Tensor] = field(default_factory=dict)
    carry: dict[str, Any] = field(default_factory=dict)

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


@dataclass
class TrainState:
    """What a method, a callback or a logger may see of the run in progress; the trainer keeps it current.

    ``epoch`` is the 0-based epoch in progress, ``step_in_epoch`` the steps already done in it and ``global_step``
    the steps done in the run. ``total_epochs`` is the configured run length (``train.epochs``: what schedules
    scale to, also when a step budget ends the run early). ``optimizer`` is the main SGD; ``grad_scale`` the
    scale of the loss being back-propagated when fp16 loss scaling is on (``None`` otherwise). ``cuda_graphs``:
    the trainer replays its steps as CUDA graphs (``train.cuda_graphs``), and a method may graph its own extra
    device work too (MMKD's meta update). ``collectives`` reaches the other ranks of a data-parallel run (the
    identity for one process): a method with per-sample state or its own optimiser uses it in its hooks; steps,
    epochs and the batches count globally.
    """

    total_epochs: int
    steps_per_epoch: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    grad_scale: float | None = None
    cuda_graphs: bool = False
    stop_requested: bool = False
    collectives: Collectives = field(default_factory=Collectives)

    def request_stop(self) -> None:
        """Ask the run to checkpoint and stop at the next step boundary (what SIGINT/SIGTERM do)."""
        self.stop_requested = True


class TrainingHooks:
    """The one hook surface of a run: the method, every callback and every logger receive these calls, in that
    order. Each hook is a no-op here; override the ones you need.

    Order within a step: ``before_step`` → forward, backward, optimiser step → ``after_step`` → (every
    ``train.log_every_steps`` steps) ``on_step_metrics``. At an epoch's end: ``on_epoch_end`` (before evaluation)
    → evaluation → ``on_epoch_record`` (the history row). ``on_resume`` follows a restored checkpoint,
    ``on_train_start`` precedes the first step (also after a resume), ``on_train_end`` follows the last.
    """

    def on_train_start(self, state: TrainState) -> None:
        """Once before the first step (also after a resume)."""

    def before_step(self, state: TrainState, batch: Batch) -> None:
        """Before the forward pass of every step."""

    def after_step(self, state: TrainState, batch: Batch, output: StepOutput) -> None:
        """After the optimiser step; ``state.global_step`` still counts the steps before this one."""

    def on_step_metrics(self, state: TrainState, metrics: Mapping[str, float]) -> None:
        """Every ``train.log_every_steps`` steps: the loss terms of the step and the lr."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After the last step of epoch ``state.epoch`` (0-based), before evaluation."""

    def on_epoch_record(self, state: TrainState, record: Mapping[str, Any]) -> None:
        """The epoch's history row (train losses, test accuracy, timing), after evaluation."""

    def on_resume(self, state: TrainState) -> None:
        """After a checkpoint was restored; ``state.epoch`` is the epoch the run continues in."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last step (not when training is interrupted or fails)."""


@dataclass(frozen=True)
class NoParams:
    """Hyper-parameters of a method that has none."""


class Distiller(nn.Module, TrainingHooks):
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
    #: ``torch.compile`` can trace ``forward_train`` (``train.compile``); False where it differentiates inside.
    compilable: ClassVar[bool] = True

    def __init__(self, student: nn.Module, teachers: Sequence[nn.Module] = (), params: Any = None) -> None:
        super().__init__()
        self.params = self.Params() if params is None else params
        self.check_teacher_count(len(teachers))
        self.student = student
        self.teachers = nn.ModuleList(teachers)
        self._ensemble: TeacherEnsemble | None = None
        for teacher in self.teachers:
            teacher.requires_grad_(False)
            teacher.eval()

    @classmethod
    def check_teacher_count(cls, count: int) -> None:
        """Refuse a number of teachers the method cannot use (its ``teachers_required`` and ``min_teachers``)."""
        expected = {"none": count == 0, "one": count == 1, "many": count >= 1}[cls.teachers_required]
        if not expected:
            raise ValueError(
                f"method {cls.method_name!r} takes {cls.teachers_required} teacher(s), got {count}"
            )
        if cls.teachers_required == "many" and count < cls.min_teachers:
            raise ValueError(f"method {cls.method_name!r} weights teachers against each other and needs at least "
                             f"{'two' if cls.min_teachers == 2 else cls.min_teachers} teachers, got {count}")

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

    # -- per-sample state ------------------------------------------------------------------------------------
    def bind_train_set(self, num_samples: int) -> None:
        """Told the training-set size before the method moves to its device and before a checkpoint is loaded.

        Methods with per-sample state (DTSKD's memory banks) allocate it here as buffers, so that it is saved in
        and restored from checkpoints like any other state.
        """

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
