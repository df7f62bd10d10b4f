r"""AMTML-KD: adaptive multi-teacher multi-level KD (Liu, Zhang, Wang, Neurocomputing 2020; docs/methods.md §5.1).

Two insights, both on top of ordinary KD:

* **instance-level teacher importance** — each teacher :math:`k` owns a latent vector :math:`\theta_k`; combined
  with the student's pooled feature :math:`v_b` and a shared projection :math:`W` it gives one importance per
  teacher *per sample*, and the soft target is the importance-weighted mixture of the teachers' distributions;
* **multi-level knowledge** — relational (RKD distance/angle) terms on that integrated target, and "multi-group"
  hints in which different teachers supervise different student levels.

Training has two phases (the official notebooks: 80 adapter epochs, then 200): during the first ``adapter_epochs``
the latent vectors :math:`\Theta, W` are trained by their own SGD (``extra_optimizers()["adapter"]``), stepped in
:meth:`AMTMLKD.after_step`, with an L2 regulariser; afterwards they are frozen and only the student (and the hint
convs) keep training with the trainer's main optimiser.

The CIFAR zoo port (the authors only ran CIFAR-10 with ResNet32/56/110 → ResNet20) is an mkdlab design choice:
:math:`d` = channels of the student's ``"pooled"`` vector, hints from the teachers' pooled vectors broadcast as
channel-normalised 1×1 maps, the two-phase split expressed in epochs of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mkdlab.losses.divergences import soft_target_kl
from mkdlab.losses.features import normalised_hint_loss
from mkdlab.losses.multi_teacher import integrated_target
from mkdlab.losses.relational import rkd_angle_loss, rkd_distance_loss
from mkdlab.losses.weightings import importance_scores
from mkdlab.methods.base import Batch, Distiller, StepOutput, TrainState
from mkdlab.methods.registry import register_method
from mkdlab.models.summary import probe_shapes


@dataclass(frozen=True)
class AMTMLKDParams:
    r"""Hyper-parameters of AMTML-KD. The defaults are mkdlab's "full AMTML-KD" (docs/methods.md §5.1 item 2,
    [ASSUMPTION]): soft target + RKD distance/angle + multi-group hints in both phases, no regulariser (as the
    official hint notebooks run: their ``adapter.eval()`` sets ``self.val = True`` before training), batchmean KL
    and CE at T = 1 (the conventions of the other mkdlab multi-teacher methods, so that AVER-KD and CA-MKD compare
    on equal terms). The presets ``amtml_kd_*`` reproduce each official notebook (§7 #9, #10).

    Loss (``phase`` = adapter while the 0-based epoch < ``adapter_epochs``):

    * ``soft`` = ``soft_factor``·``kd_weight``·T²·KL(q‖p^s_T) with ``kl_reduction`` ``"batchmean"`` or ``"mean"``
      (element mean, 1/C of batchmean: the notebooks' ``KLDivLoss()``); the notebooks use 2·α·T² (``soft_factor=2``);
    * ``ce`` = ``ce_weight``·CE(z^s, y), or CE(z^s/T, y) with ``ce_at_temperature`` (``LR_adaptive_learning``);
    * ``rkd_distance``/``rkd_angle`` between the ``rkd_student`` vector (p^s_T, log p^s_T or z^s) and q, in the
      phases listed by ``rkd_phases`` (0 weights disable them);
    * ``hint`` (``hint_mode``, in ``hint_phases``): ``multi_group`` pairs ``"map:teacher"`` from ``hint_pairs``
      (kept while the teacher index < K), ``same_level`` the student's ``same_level_map`` with every teacher's map of
      the same name; summed over pairs, times ``hint_weight`` (1.0: the notebooks' unit weight — their hint convs
      were never trained, so no tuned value exists [ASSUMPTION]);
    * ``reg`` = ``reg_weight``·(‖W‖² + ‖Θ‖²_F) during the adapter phase. Default 0 (off): ``LR_adaptive_Hint``,
      ``LR_adaptive_KD`` and ``adaptive_FitNet_teacher-level`` call ``adapter.eval()`` before training, which
      switches it off; only ``LR_adaptive_learning`` (preset ``amtml_kd_lr_adaptive_learning``, 0.1) trains with
      it. Under the adapter SGD (lr 0.1, momentum 0.9) 0.1 shrinks Θ⊙W towards 0 within about a hundred steps and
      every importance becomes 1/K (AVER-KD plus RKD and hints); with 0 the importances vary per sample.

    ``adapter_epochs``: 1 by default for short runs (the notebooks: 80 of 280 epochs; the CIFAR-100 port suggests
    80 + 240). ``adapter_milestones`` are fractions of ``adapter_epochs`` (notebooks: epochs 40 and 70 of 80).
    ``phase2_weights="teacher_level"`` (``adaptive_FitNet_teacher-level``) replaces the instance-level importances
    in phase 2 by the batch mean of the last phase-1 batch.
    """

    temperature: float = 4.0
    kd_weight: float = 1.0
    soft_factor: float = 1.0
    kl_reduction: Literal["batchmean", "mean"] = "batchmean"
    ce_weight: float = 1.0
    ce_at_temperature: bool = False
    rkd_student: Literal["probs", "log_probs", "logits"] = "probs"
    rkd_distance_weight: float = 1.0
    rkd_angle_weight: float = 1.0
    rkd_phases: Literal["both", "adapter", "main"] = "both"
    hint_mode: Literal["multi_group", "same_level", "none"] = "multi_group"
    hint_pairs: tuple[str, ...] = ("stage2:0", "stage3:1", "pooled:2")
    same_level_map: str = "stage2"
    hint_weight: float = 1.0
    hint_phases: Literal["both", "adapter", "main"] = "both"
    train_hint_convs: bool = True
    reg_weight: float = 0.0
    adapter_epochs: int = 1
    adapter_lr: float = 0.1
    adapter_momentum: float = 0.9
    adapter_milestones: tuple[float, ...] = (0.5, 0.875)
    adapter_lr_decay: float = 0.1
    phase2_weights: Literal["instance", "teacher_level"] = "instance"
    latent_seed: int = 1


def _as_map(x: Tensor) -> Tensor:
    return x[:, :, None, None] if x.ndim == 2 else x


def _parse_pair(pair: str) -> tuple[str, int]:
    name, sep, index = pair.rpartition(":")
    if not sep or not name or not index.isdigit():
        raise ValueError(f"hint pair {pair!r} must look like 'student_map:teacher_index', e.g. 'stage2:0'")
    return name, int(index)


def _in_phase(which: str, adapter_phase: bool) -> bool:
    return which == "both" or (which == "adapter") == adapter_phase


@register_method("amtml_kd")
class AMTMLKD(Distiller):
    r"""Adaptive multi-teacher multi-level KD (docs/methods.md §5.1; parameters in :class:`AMTMLKDParams`).

    .. math::
        s_{bk}=\sum_c v_{bc}\theta_{kc}W_c,\quad \mu_{b\cdot}=\mathrm{softmax}_k(s_{b\cdot}),\quad
        q_b=\sum_k\mu_{bk}\,p^k_{T,b}

    :math:`v` = the student's ``"pooled"`` vector (no stop-gradient: the student also learns through
    :math:`\mu`), :math:`\Theta\in\mathbb R^{K\times d}`, :math:`W\in\mathbb R^d` initialised
    :math:`\mathcal N(0,1)` from ``latent_seed``. :math:`\Theta, W` are not in :meth:`parameter_groups`: they have
    their own SGD (``adapter_lr``, momentum, no weight decay), stepped and zeroed in :meth:`after_step` during the
    adapter phase and frozen (``requires_grad=False``) from epoch ``adapter_epochs`` on — re-derived from the epoch
    at every step, so a resumed run is in the right phase.

    Hint convs: one bias-free 1×1 conv per pair (student map channels → teacher map channels), initialised
    :math:`\mathcal U(-0.005, 0.005)`; trained by the main optimiser (default) or frozen at that init
    (``train_hint_convs=False``, the notebooks: never registered with an optimiser). Terms ``"ce"``, ``"soft"``,
    ``"rkd_distance"``, ``"rkd_angle"``, ``"hint"``, ``"reg"`` (only the active ones). Extras:
    ``"teacher_weights"`` (the importances actually used, B×K) and ``"theta_w_scores"`` (:math:`s`, B×K).
    """

    Params = AMTMLKDParams
    teachers_required = "many"
    needs_drop_last = True

    def __init__(self, student, teachers=(), params=None) -> None:
        super().__init__(student, teachers, params)
        p = self.params
        k = len(self.teachers)
        student_shapes = probe_shapes(self.student)
        dim = student_shapes["pooled"][1]
        gen = torch.Generator().manual_seed(p.latent_seed)
        self.theta = nn.Parameter(torch.randn(k, dim, generator=gen))
        self.w = nn.Parameter(torch.randn(dim, generator=gen))
        self.register_buffer("teacher_level_weights", torch.full((k,), 1.0 / k))
        self.hint_pairs: list[tuple[str, int, str]] = []  # (student map, teacher index, teacher map)
        if p.hint_mode == "multi_group":
            for name, index in map(_parse_pair, p.hint_pairs):
                if index < k:
                    self.hint_pairs.append((name, index, "pooled"))
        elif p.hint_mode == "same_level":
            self.hint_pairs = [(p.same_level_map, index, p.same_level_map) for index in range(k)]
        convs = []
        teacher_shapes = [probe_shapes(t) for t in self.teachers] if self.hint_pairs else []
        for name, index, teacher_map in self.hint_pairs:
            if name not in student_shapes or teacher_map not in teacher_shapes[index]:
                raise ValueError(f"hint pair {name!r} ← teacher {index} {teacher_map!r}: unknown map; the student "
                                 f"has {', '.join(student_shapes)}")
            conv = nn.Conv2d(student_shapes[name][1], teacher_shapes[index][teacher_map][1], 1, bias=False)
            nn.init.uniform_(conv.weight, -0.005, 0.005, generator=gen)
            conv.requires_grad_(p.train_hint_convs)
            convs.append(conv)
        self.hint_convs = nn.ModuleList(convs)
        self._adapter_optimizer: torch.optim.SGD | None = None

    # -- phases --------------------------------------------------------------------------------------------------
    def in_adapter_phase(self, epoch: int) -> bool:
        """Whether the 0-based ``epoch`` belongs to the adapter phase (Θ, W trained, regulariser on)."""
        return epoch < self.params.adapter_epochs

    def set_phase(self, epoch: int) -> None:
        """Θ and W trainable during the adapter phase, frozen after it (derived from the epoch, resume-safe)."""
        trainable = self.in_adapter_phase(epoch)
        for param in (self.theta, self.w):
            if param.requires_grad != trainable:
                param.requires_grad_(trainable)
                param.grad = None

    def adapter_lr_at(self, epoch: int) -> float:
        """Learning rate of the adapter SGD during 0-based ``epoch`` (×decay at each milestone fraction)."""
        p = self.params
        milestones = [max(1, round(m * p.adapter_epochs)) for m in p.adapter_milestones]
        return p.adapter_lr * p.adapter_lr_decay ** sum(1 for m in milestones if epoch >= m)

    # -- what the trainer optimises ------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """Everything trainable except the teachers, Θ and W (which have their own optimiser)."""
        own = {id(self.theta), id(self.w)}
        params = [param for name, param in self.named_parameters()
                  if not name.startswith("teachers.") and param.requires_grad and id(param) not in own]
        return [{"params": params}]

    def extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``{"adapter": SGD(Θ, W)}`` (lr ``adapter_lr``, momentum ``adapter_momentum``, no weight decay)."""
        if self._adapter_optimizer is None:
            self._adapter_optimizer = torch.optim.SGD([self.theta, self.w], lr=self.params.adapter_lr,
                                                      momentum=self.params.adapter_momentum, weight_decay=0.0)
        return {"adapter": self._adapter_optimizer}

    # -- hooks ---------------------------------------------------------------------------------------------------
    def on_train_start(self, state: TrainState) -> None:
        self.set_phase(state.epoch)

    def before_step(self, state: TrainState, batch: Batch) -> None:
        self.set_phase(state.epoch)

    def after_step(self, state: TrainState, batch: Batch, output: StepOutput) -> None:
        """Adapter phase: step Θ, W with their own SGD (unscaling fp16 gradients), then zero their gradients.

        Data parallel: Θ and W are no part of the DistributedDataParallel wrapper (their own optimiser, their phase
        switch), so their gradients are averaged over the ranks here, and the teacher-level weights are the mean
        over the gathered global batch: every rank takes the same step."""
        if not self.in_adapter_phase(state.epoch):
            return
        optimizer = self.extra_optimizers()["adapter"]
        for group in optimizer.param_groups:
            group["lr"] = self.adapter_lr_at(state.epoch)
        grads = [p.grad for p in (self.theta, self.w) if p.grad is not None]
        state.collectives.all_reduce_mean(grads)  # data parallel: the gradient of the global batch
        finite = all(torch.isfinite(g).all() for g in grads)
        if grads and finite:
            if state.grad_scale:
                for g in grads:
                    g.div_(state.grad_scale)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if "teacher_weights" in output.extras:
            weights = state.collectives.all_gather(output.extras["teacher_weights"])
            self.teacher_level_weights.copy_(weights.float().mean(0))

    def on_epoch_end(self, state: TrainState) -> None:
        """At the end of the adapter phase freeze Θ and W (the regulariser and phase-1 terms switch off)."""
        self.set_phase(state.epoch + 1)

    # -- the loss ------------------------------------------------------------------------------------------------
    def importances(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """Scores :math:`s` and importances :math:`\\mu=\\mathrm{softmax}_k(s)` (both B×K, float32, with grad)."""
        scores = importance_scores(pooled.float(), self.theta, self.w)
        return scores, F.softmax(scores, dim=1)

    def _rkd_vector(self, logits: Tensor) -> Tensor:
        t = self.params.temperature
        kind = self.params.rkd_student
        if kind == "logits":
            return logits.float()
        if kind == "log_probs":
            return F.log_softmax(logits.float() / t, dim=1)
        return F.softmax(logits.float() / t, dim=1)

    def hint_terms(self, student_maps: dict[str, Tensor], teacher_maps: list[dict[str, Tensor]]) -> Tensor:
        """Sum over the hint pairs of :func:`~mkdlab.losses.features.normalised_hint_loss` (student map
        channel-normalised, then P)."""
        total = []
        for conv, (name, index, teacher_map) in zip(self.hint_convs, self.hint_pairs, strict=True):
            student = F.normalize(_as_map(student_maps[name]), dim=1)
            total.append(normalised_hint_loss(conv(student), _as_map(teacher_maps[index][teacher_map])))
        return torch.stack(total).sum()

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        adapter_phase = self.in_adapter_phase(epoch)
        self.set_phase(epoch)
        out = self.run_models(batch.images)
        logits, teacher_logits, student_maps, teacher_maps = (out.logits, out.teacher_logits, out.student_maps,
                                                              out.teacher_maps)
        t = p.temperature

        scores, mu = self.importances(student_maps["pooled"])
        if not adapter_phase and p.phase2_weights == "teacher_level":
            weights = self.teacher_level_weights.expand_as(mu)
        else:
            weights = mu
        target = integrated_target(weights, teacher_logits, t)

        ce_input = logits.float() / t if p.ce_at_temperature else logits
        losses = {
            "ce": p.ce_weight * F.cross_entropy(ce_input, batch.labels),
            "soft": p.soft_factor * p.kd_weight * soft_target_kl(logits, target, t, p.kl_reduction),
        }
        if _in_phase(p.rkd_phases, adapter_phase):
            vector = self._rkd_vector(logits)
            if p.rkd_distance_weight:
                losses["rkd_distance"] = p.rkd_distance_weight * rkd_distance_loss(vector, target)
            if p.rkd_angle_weight:
                losses["rkd_angle"] = p.rkd_angle_weight * rkd_angle_loss(vector, target)
        if self.hint_pairs and p.hint_weight and _in_phase(p.hint_phases, adapter_phase):
            losses["hint"] = p.hint_weight * self.hint_terms(student_maps, teacher_maps)
        if adapter_phase and p.reg_weight:
            losses["reg"] = p.reg_weight * (self.w.pow(2).sum() + self.theta.pow(2).sum())
        extras = {"teacher_weights": weights.detach(), "theta_w_scores": scores.detach()}
        return StepOutput(logits, losses, extras)
