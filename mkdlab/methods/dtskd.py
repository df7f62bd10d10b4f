r"""DTSKD: dual teachers for self-knowledge distillation (Li et al., Pattern Recognition 2024; docs/methods.md §5.5).

No pretrained teacher: the student network grows light top-down branches
(:class:`~mkdlab.models.branches.TopDownBranches`) and every output is taught by two teachers made of the network
itself:

* the **historical teacher** — each output's own prediction for the same sample one epoch earlier (stored in a
  per-sample memory bank), mixed with the label by a coefficient :math:`\alpha_e` that moves from the label
  towards the history over the run;
* the **structural teacher** — the backbone's current prediction, distilled into every branch at :math:`T = 4`.

Only the backbone is deployed (:meth:`DTSKD.export_student`). The loss pieces (the smoothed KL, the α schedules,
the historical targets and loss, the structural loss) are the pure functions of
:mod:`mkdlab.losses.self_distillation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mkdlab.losses.precision import at_least_float32
from mkdlab.losses.self_distillation import (
    cosine_alpha,
    historical_loss,
    historical_targets,
    linear_alpha,
    structural_loss,
)
from mkdlab.methods.base import Batch, Distiller, StepOutput, TrainState
from mkdlab.methods.registry import register_method
from mkdlab.models.branches import MultiBranchNet, TopDownBranches, multi_branch_logits
from mkdlab.models.common import ZooModel
from mkdlab.typed import ConfigError

#: the run length E of the paper's recipe, used by the α schedule when neither ``params.epochs`` nor a trainer
#: gave one (a method driven by hand, outside :class:`~mkdlab.engine.trainer.Trainer`).
PAPER_EPOCHS = 300


@dataclass(frozen=True)
class DTSKDParams:
    r"""The official run script (docs/methods.md §5.5): ``--HSKD 1``, backbone/branch weights 3/1/1/1,
    ``ce_weight`` 0.2, ``kd_weight`` 0.8, cosine α from 0.9 to 0, T = 4.

    * ``hskd``: with the historical teacher, :math:`\mathcal L = w_{ce}\mathcal L_{hist} + w_{kd}\mathcal L_{str}`;
      without (``--HSKD 0``), :math:`\mathcal L = w_{ce}\,\mathrm{CE}(z, y) + w_{kd}\mathcal L_{str}` (the branches
      get no CE).
    * ``backbone_weight``, ``branch_weights``: the :math:`w_j` of :math:`\mathcal L_{hist}`; ``branch_weights``
      holds one value for every branch or one per branch (branch 1, fed by the first stage, first).
    * ``alpha_schedule``: ``"cos"`` (:func:`~mkdlab.losses.self_distillation.cosine_alpha` with ``cos_max``,
      ``cos_min``) or ``"linear"`` (:func:`~mkdlab.losses.self_distillation.linear_alpha`).
    * ``epochs``: the length E of the α schedule. ``None`` (default): the trainer's configured run length
      ``train.epochs`` (read in ``on_train_start``, so also after a resume) — the length the lr milestones are
      scaled to, so a step budget (``train.max_steps``) truncates a run without reshaping either schedule.
      A method driven by hand, without a trainer, uses the paper's E = 300 (:data:`PAPER_EPOCHS`).
    * ``detach_structural_teacher``: stop the structural loss's gradient into the backbone output (official: not
      detached).
    * ``parity``: the released single-GPU code never writes the memory banks (docs/methods.md §5.5 departure, §7 #6), so
      its historical targets stay one-hot: :math:`\mathcal L_{hist}` is a weighted CE (up to the :math:`10^{-7}`
      smoothing). ``parity=True`` reproduces that; the default updates the banks after every step.
    """

    temperature: float = 4.0
    ce_weight: float = 0.2
    kd_weight: float = 0.8
    backbone_weight: float = 3.0
    branch_weights: tuple[float, ...] = (1.0,)
    hskd: bool = True
    alpha_schedule: Literal["cos", "linear"] = "cos"
    cos_max: float = 0.9
    cos_min: float = 0.0
    epochs: int | None = None
    detach_structural_teacher: bool = False
    parity: bool = False

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"method.params.temperature: must be > 0, got {self.temperature}")
        if not 0.0 <= self.cos_min <= self.cos_max <= 1.0:
            raise ConfigError(f"method.params.cos_min/cos_max: need 0 <= cos_min <= cos_max <= 1, got "
                              f"{self.cos_min}, {self.cos_max}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"method.params.epochs: must be >= 1 (or null = the run's epochs), got {self.epochs}")
        if not self.branch_weights:
            raise ConfigError("method.params.branch_weights: give one weight for every branch, or one per branch")


@register_method("dtskd")
class DTSKD(Distiller):
    r"""Dual-teacher self-KD on a multi-branch student (docs/methods.md §5.5; parameters in :class:`DTSKDParams`).

    Outputs :math:`z` (backbone) and :math:`z_1..z_{N-1}` (:class:`~mkdlab.models.branches.TopDownBranches` on
    the student's stages, ``self.branches``). With :math:`q^{(j)}` =
    :func:`~mkdlab.losses.self_distillation.historical_targets` and
    :math:`\alpha_e` from the schedule:

    .. math::
        \mathcal L = w_{ce}\Big(3\,\kappa(q^{(0)}, z) + \sum_{j\ge1}\kappa(q^{(j)}, z_j)\Big)
        + w_{kd}\sum_{j\ge1}\kappa_T\big(\mathrm{softmax}(z/T), z_j\big)

    Terms ``"hist"`` (:math:`w_{ce}\mathcal L_{hist}`) or, with ``hskd=False``, ``"ce"``; and ``"structural"``.

    **Memory banks.** :meth:`bind_train_set` allocates the float32 buffer ``memory`` (J×N×C, J = outputs;
    ``memory[j]`` is :math:`M^{(j)}`) and the boolean buffer ``seen`` (N) on the method's device, so they are
    checkpointed and restored like weights. A sample that has not been seen yet uses its one-hot label as history
    (the official initialisation). :meth:`forward_train` keeps the step's detached float32 softmaxes (T = 1);
    :meth:`after_step` writes them at ``batch.indices`` and marks those samples seen — the target of a sample is
    then its prediction from when it was last seen (one epoch earlier, under another augmentation). With
    ``parity=True`` (or ``hskd=False``, which needs no history) nothing is written. Under ``torchrun`` the writes
    of every rank are gathered first (:meth:`after_step`).
    """

    Params = DTSKDParams
    teachers_required = "none"
    needs_indices = True

    def __init__(self, student: ZooModel, teachers: Sequence[nn.Module] = (),
                 params: DTSKDParams | None = None) -> None:
        super().__init__(student, teachers, params)
        self.branches = TopDownBranches.for_backbone(self.student)
        self.output_weights = self._output_weights()
        num_classes = self.branches.heads[0].out_features
        self.register_buffer("memory", torch.zeros(self.num_outputs, 0, num_classes))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))
        self.schedule_epochs = self.params.epochs

    @property
    def num_outputs(self) -> int:
        """Backbone plus branches (J)."""
        return 1 + len(self.branches.heads)

    def _output_weights(self) -> tuple[float, ...]:
        p, branches = self.params, len(self.branches.heads)
        if len(p.branch_weights) not in (1, branches):
            raise ConfigError(f"method.params.branch_weights: this student has {branches} branches; give one "
                              f"weight or {branches}, got {list(p.branch_weights)}")
        weights = p.branch_weights * branches if len(p.branch_weights) == 1 else p.branch_weights
        return (p.backbone_weight, *weights)

    # -- the network -------------------------------------------------------------------------------------------------
    def network(self) -> MultiBranchNet:
        r"""The student and its branches as one module returning :math:`[z, z_1, \dots]` (modules shared)."""
        return MultiBranchNet(self.student, self.branches)

    def outputs(self, images: Tensor) -> list[Tensor]:
        r"""Logits of the backbone and of every branch, :math:`[z, z_1, \dots, z_{N-1}]`."""
        return multi_branch_logits(self.student, self.branches, images)

    # -- the α schedule ------------------------------------------------------------------------------------------
    def alpha_at(self, epoch: int) -> float:
        r""":math:`\alpha_e` of the 0-based ``epoch`` (schedule length: see :class:`DTSKDParams` ``epochs``)."""
        p = self.params
        epochs = self.schedule_epochs or PAPER_EPOCHS
        if p.alpha_schedule == "linear":
            return linear_alpha(epoch, epochs)
        return cosine_alpha(epoch, epochs, p.cos_max, p.cos_min)

    # -- memory banks ----------------------------------------------------------------------------------------------
    def bind_train_set(self, num_samples: int) -> None:
        """Allocate the memory banks (J×N×C float32) and the ``seen`` flags (N) for ``num_samples`` samples.

        Banks already sized for ``num_samples`` are kept (a second trainer on the same method continues them).
        """
        if self.seen.numel() == num_samples:
            return
        device = self.seen.device
        self.memory = torch.zeros(self.num_outputs, num_samples, self.memory.shape[-1], device=device)
        self.seen = torch.zeros(num_samples, dtype=torch.bool, device=device)

    def _history(self, indices: Tensor | None) -> tuple[Tensor, Tensor]:
        if indices is None:
            raise ValueError("DTSKD needs the dataset index of every sample: build the training loader with "
                             "with_index=True (run_experiment does so for methods with needs_indices)")
        if self.seen.numel() == 0:
            raise RuntimeError("DTSKD's memory banks are not allocated: call bind_train_set(len(train_set)) first "
                               "(the Trainer does it)")
        return self.memory[:, indices], self.seen[indices]

    @torch.no_grad()
    def remember(self, indices: Tensor, probs: Tensor) -> None:
        """Write the softmaxes ``probs`` (J×B×C) of the samples ``indices`` into the banks and mark them seen."""
        self.memory[:, indices] = probs.to(self.memory.dtype)
        self.seen[indices] = True

    # -- hooks ---------------------------------------------------------------------------------------------------
    def on_train_start(self, state: TrainState) -> None:
        """Take the α schedule's length from the run, unless ``params.epochs`` fixes it."""
        self.schedule_epochs = self.params.epochs or state.total_epochs

    def after_step(self, state: TrainState, batch: Batch, output: StepOutput) -> None:
        """Write this step's predictions (``output.carry["probs"]``) into the memory banks (not in parity mode).

        Data parallel: every rank writes the whole global batch (the indices and predictions of all ranks,
        gathered), so the banks stay identical on every rank and equal to those of one process."""
        if "probs" in output.carry:
            gather = state.collectives.all_gather
            self.remember(gather(batch.indices), gather(output.carry["probs"], dim=1))

    # -- the loss ------------------------------------------------------------------------------------------------
    def historical_term(self, batch: Batch, outputs: Sequence[Tensor], epoch: int) -> Tensor:
        r""":math:`\mathcal L_{hist}` of the batch."""
        memory, seen = self._history(batch.indices)
        targets = historical_targets(batch.labels, memory, seen, self.alpha_at(epoch))
        return historical_loss(outputs, targets, self.output_weights)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        if p.hskd:
            self._history(batch.indices)  # fail before the forward pass when the banks or indices are missing
        outputs = self.outputs(batch.images)
        carry = {}
        if p.hskd:
            losses = {"hist": p.ce_weight * self.historical_term(batch, outputs, epoch)}
            if not p.parity:  # the softmaxes after_step writes into the memory banks
                carry["probs"] = torch.stack([F.softmax(z.detach().float(), dim=1) for z in outputs])
        else:
            losses = {"ce": p.ce_weight * F.cross_entropy(at_least_float32(outputs[0]), batch.labels)}
        losses["structural"] = p.kd_weight * structural_loss(outputs, p.temperature, p.detach_structural_teacher)
        return StepOutput(outputs[0], losses, carry=carry)
