r"""MMKD: adaptive multi-teacher KD with meta-learning (Zhang, Chen, Wang, ICME 2023; docs/methods.md §5.3).

Two small *meta-weight networks* give every sample its own teacher weights, one set for the logits and one for the
features. They are not trained by the student's loss but by a bi-level update: every ``meta_freq`` steps a virtual
copy of the student takes a few SGD steps on a batch from the *hard buffer* (recently misclassified training
images), and the weight networks move to lower the cross-entropy of that looked-ahead student on the batch.

mkdlab computes the hypergradient exactly, for plain and Nesterov momentum alike, by differentiating through a
functional copy of the SGD steps (:mod:`mkdlab.methods.meta`); the official Reverse-HG recursion is the parity
option. The look-ahead never touches the real student, embeds, optimiser state or BN statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mkdlab.losses.divergences import kd_loss
from mkdlab.losses.features import gram_matrix, per_sample_mse, resize_to
from mkdlab.methods.adapters import Embed
from mkdlab.methods.base import Batch, Distiller, StepOutput, TrainState
from mkdlab.methods.collectives import Collectives
from mkdlab.methods.feature_terms import tap_shape
from mkdlab.methods.hard_buffer import HardBuffer
from mkdlab.methods.meta import (
    GradFn,
    MetaLookahead,
    SGDSettings,
    TwiceDifferentiableBatchNorm,
    look_ahead,
    reverse_hg_hypergradient,
    unrolled_hypergradient,
)
from mkdlab.methods.meta_weights import FeatureWeight, LogitsWeight
from mkdlab.methods.mmkd_graph import graphed_meta_gradient
from mkdlab.methods.mmkd_parts import TAP, StudentView, TeacherTargets
from mkdlab.methods.registry import register_method

#: images of the zoo are 32×32 (the hard buffer's storage is allocated with this size).
IMAGE_SIZE = 32
StepKind = Literal["match", "ce", "full"]


@dataclass(frozen=True)
class MMKDParams:
    r"""Hyper-parameters of MMKD; defaults are the official code/README (``-r 1 -a 1 -b 100 --hard_buffer``).

    * Loss of the student step: ``ce_weight``·CE + ``kd_weight``·:math:`\mathcal L_r` + ``feat_weight``
      (:math:`\beta`)·:math:`\mathcal L_f`, :math:`T` = ``temperature``. (The paper's Eq. 9 swaps the names
      :math:`\alpha,\beta`; the code's :math:`\beta` weights the features, docs/methods.md §7 #14.)
    * ``lookahead``: the kinds of the virtual steps of a meta update, ``"match"``
      (``kd_weight``·:math:`\mathcal L_r` + ``feat_weight``·:math:`\mathcal L_f`, no CE), ``"ce"``
      (``ce_weight``·CE) or ``"full"`` (the student loss); official: two matching steps then one CE step.
    * ``meta_freq``: a meta update after the batches with index 0, ``meta_freq``, 2·``meta_freq``, … of each epoch
      (0 disables meta updates: the weight networks stay at their initialisation). Adam (``meta_lr``,
      ``meta_weight_decay``), never decayed.
    * ``hard_buffer``/``buffer_size``: the meta batch comes from the hard buffer once it holds a full batch,
      otherwise (and always with ``hard_buffer=False``) it is the current training batch.
    * ``gram_size``: the feature weight network's input is :math:`(K+1)\cdot` ``gram_size`` wide (its Gram rows are
      tied to the batch size): smaller batches are zero-padded to it, larger ones refused. Set it to the
      training batch size (64 in the presets).
    * ``gram_norm``: ``"row_l2"`` (each Gram row L2-normalised, as in similarity-preserving KD) or ``"none"``
      (raw Gram matrices, the official code). Raw entries of post-ReLU maps run into the thousands (notebook 06): the
      feature weight network's softmax is saturated from its initialisation on — nearly one-hot rows, one teacher
      per sample picked by the random initial weights, and Adam turns the tiny but input-amplified
      hypergradients into full-size steps. Where the saturation underflows to exact 0/1 the embeds of the
      teachers weighted 0 get no gradient at all. Hence the normalised default.
    * ``convs``: the three-conv :class:`~mkdlab.methods.adapters.Embed` (the official ``--convs`` flag has no
      effect, docs/methods.md §7 #7).
    * ``hypergradient``: ``"unroll"`` (exact) or ``"reverse_hg"`` (the official recursion, §7 #8);
      ``input_order``: weight-network inputs ``"student_first"`` (paper Eq. 1, 4) or ``"teachers_first"``
      (official code). For these and ``gram_norm``, ``None`` follows ``parity``.
    * ``parity=True``: the official code's choices — Reverse-HG, teachers-first inputs, raw Gram matrices,
      ``convs`` ignored.
    """

    temperature: float = 4.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    feat_weight: float = 100.0
    lookahead: tuple[StepKind, ...] = ("match", "match", "ce")
    meta_freq: int = 5
    meta_lr: float = 1e-3
    meta_weight_decay: float = 1e-4
    hard_buffer: bool = True
    buffer_size: int = 256
    gram_size: int = 64
    gram_norm: Literal["none", "row_l2"] | None = None
    convs: bool = False
    hypergradient: Literal["unroll", "reverse_hg"] | None = None
    input_order: Literal["student_first", "teachers_first"] | None = None
    parity: bool = False

    def resolved_hypergradient(self) -> Literal["unroll", "reverse_hg"]:
        """``hypergradient``, or the one ``parity`` implies."""
        return self.hypergradient or ("reverse_hg" if self.parity else "unroll")

    def resolved_gram_norm(self) -> Literal["none", "row_l2"]:
        """``gram_norm``, or the one ``parity`` implies (raw with parity, row-normalised otherwise)."""
        return self.gram_norm or ("none" if self.parity else "row_l2")

    def student_first(self) -> bool:
        """Whether the student's block comes first in the weight networks' inputs."""
        return (self.input_order or ("teachers_first" if self.parity else "student_first")) == "student_first"

    def embed_convs(self) -> bool:
        """Whether the embeds are the three-conv variant (never with ``parity``, as in the official code)."""
        return self.convs and not self.parity


@register_method("mmkd")
class MMKD(Distiller):
    r"""Adaptive multi-teacher KD with meta-learning (docs/methods.md §5.3; parameters in :class:`MMKDParams`).

    **Student step** (``forward_train``), on the student's and teachers' ``taps["penultimate_mmkd"]`` maps
    :math:`F^s, F^k` (MMKD's ``feat[-2]``):

    .. math::
        \omega^r_b = \mathrm{LogitsWeight}(z^s_b, z^1_b..z^K_b),\qquad
        \mathcal L_r = \frac1B\sum_b\sum_k \omega^r_{bk}\,\ell^{KL}_T(z^s,z^k)_b

        \omega^f_b = \mathrm{FeatureWeight}(G^s_b, G^1_b..G^K_b),\qquad
        \mathcal L_f = \frac1B\sum_b\sum_k \omega^f_{bk}\,\mathrm{mean}_{chw}\big(\mathrm{Embed}_k(P(F^s))_b
        - P(F^k)_b\big)^2

        \mathcal L = \gamma\,\mathrm{CE} + \alpha\,\mathcal L_r + \beta\,\mathcal L_f

    where :math:`P` average-pools the larger of the two maps to the smaller size and :math:`\mathrm{Embed}_k` is
    Conv1×1 + BN + ReLU (:math:`c_s\to c_k`). The weights are computed without autograd: the weight networks get
    no gradient from :math:`\mathcal L` (nor are they in :meth:`parameter_groups`). Terms ``"ce"``, ``"kd"``,
    ``"feat"``; extras ``"teacher_weights"`` (:math:`\omega^r`) and ``"feature_weights"`` (:math:`\omega^f`).

    **Meta update** (:meth:`after_step`, after the student step of the batches 0, ``meta_freq``, … of each
    epoch): a batch :math:`\mathcal H` of the training batch's size from the hard buffer (the training batch itself
    while the buffer holds fewer samples, as the official code without ``--hard_buffer``), virtual SGD steps
    :math:`\theta_{i+1}=O_i(\theta_i;\phi)` of the student and embeds on :math:`\mathcal H` with the main
    optimiser's current settings and momentum (``lookahead``), then
    :math:`\phi \leftarrow \mathrm{Adam}\big(\mathrm dE(\theta_M)/\mathrm d\phi\big)`, :math:`E` = CE on
    :math:`\mathcal H`, :math:`\phi` = the weight networks (paper Eq. 10). The look-ahead is functional
    (:func:`torch.func.functional_call` on copies of the parameters, BN buffers and momentum), in float32 outside
    autocast, with BN in training mode as in the official code; the real student, embeds, optimiser state and BN
    statistics are never touched. In a matching step the weights are computed from the current virtual student, so
    with ``"unroll"`` the hypergradient also follows how :math:`\phi` moves the weight networks' student inputs;
    the official recursion treats those inputs as constants (it detaches them), which is the second reason,
    besides Nesterov momentum, why it is not exact. The teacher outputs of a meta batch are those stored in the hard
    buffer with its images (computed once, by the student step that saw them). The hard buffer takes the batch
    (whole while filling, then its misclassified samples) *before* the meta batch is drawn, as in the official
    loop.

    **Data parallel** (``torchrun``): the meta update and the hard buffer work on the global batch, gathered from
    every rank (:meth:`global_batch`), so they are those of one process, repeated on every rank. The student step's
    weights come from each rank's block: its Gram matrices are of the rank's ``B / world_size`` samples
    (zero-padded to ``gram_size``), not of the global batch.
    """

    Params = MMKDParams
    teachers_required = "many"
    min_teachers = 2
    needs_drop_last = True

    def __init__(self, student, teachers=(), params=None) -> None:
        super().__init__(student, teachers, params)
        p = self.params
        if p.meta_freq < 0:
            raise ValueError(f"meta_freq must be 0 (no meta updates) or positive, got {p.meta_freq}")
        if not p.lookahead or not set(p.lookahead) <= {"match", "ce", "full"}:
            raise ValueError(f"lookahead must list one or more steps 'match', 'ce' or 'full' (official: "
                             f"['match', 'match', 'ce']), got {list(p.lookahead)}")
        student_shape = tap_shape(self.student, TAP)
        teacher_shapes = [tap_shape(t, TAP) for t in self.teachers]
        self.sizes = [tuple(s[-2:]) if s[-2] < student_shape[-2] else tuple(student_shape[-2:])
                      for s in teacher_shapes]
        self.embeds = nn.ModuleList(Embed(student_shape[1], s[1], convs=p.embed_convs()) for s in teacher_shapes)
        k = len(self.teachers)
        self.logits_weight = LogitsWeight(self.student.fc_layer().out_features, k, p.student_first())
        self.feature_weight = FeatureWeight(p.gram_size, k, p.student_first())
        in_channels = next(m for m in self.student.modules() if isinstance(m, nn.Conv2d)).in_channels
        teacher_fields = {"teacher_logits": (k, self.logits_weight.num_classes),
                          **{f"teacher_map_{i}": tuple(s[1:]) for i, s in enumerate(teacher_shapes)}}
        self.hard_buffer = HardBuffer(p.buffer_size, (in_channels, IMAGE_SIZE, IMAGE_SIZE), teacher_fields) \
            if p.hard_buffer else None
        self._meta_optimizer: torch.optim.Adam | None = None

    # -- what the optimisers see -----------------------------------------------------------------------------------
    def weight_net_parameters(self) -> list[nn.Parameter]:
        r""":math:`\phi`: the parameters of the two weight networks (trained only by the meta update)."""
        return [*self.logits_weight.parameters(), *self.feature_weight.parameters()]

    def parameter_groups(self) -> list[dict]:
        """The student and the embeds (the weight networks have their own Adam)."""
        return [{"params": [*self.student.parameters(), *self.embeds.parameters()]}]

    def extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``{"meta": Adam(φ, meta_lr, weight_decay=meta_weight_decay)}``."""
        if self._meta_optimizer is None:
            self._meta_optimizer = torch.optim.Adam(self.weight_net_parameters(), lr=self.params.meta_lr,
                                                    weight_decay=self.params.meta_weight_decay)
        return {"meta": self._meta_optimizer}

    # -- the pieces of the loss ------------------------------------------------------------------------------------
    def student_view(self) -> StudentView:
        """The student with its embeds, for plain or functional calls."""
        return StudentView(self.student, self.embeds, self.sizes)

    def make_targets(self, logits: Tensor, maps: Sequence[Tensor]) -> TeacherTargets:
        """:class:`TeacherTargets` from the teachers' logits (K×B×C) and tap maps."""
        return TeacherTargets(logits, list(maps), [resize_to(m, s) for m, s in zip(maps, self.sizes, strict=True)],
                              [gram_matrix(m, self.params.resolved_gram_norm()) for m in maps])

    def teacher_targets(self, images: Tensor) -> TeacherTargets:
        """The teachers' :class:`TeacherTargets` for ``images`` (one forward of every teacher, without autograd)."""
        features = self.teacher_features(images)
        return self.make_targets(torch.stack([m["logits"] for m in features]),
                                 [m[t.taps[TAP]] for t, m in zip(self.teachers, features, strict=True)])

    def teacher_weights(self, student_logits: Tensor, student_map: Tensor,
                        targets: TeacherTargets) -> tuple[Tensor, Tensor]:
        r""":math:`(\omega^r, \omega^f)`, each B×K, rows on the simplex; differentiable in :math:`\phi` and in the
        student inputs given (pass detached ones for constants)."""
        logit_weights = self.logits_weight(student_logits, targets.logits)
        student_gram = gram_matrix(student_map, self.params.resolved_gram_norm())
        feature_weights = self.feature_weight(student_gram, targets.grams)
        return logit_weights, feature_weights

    def matching_values(self, student_logits: Tensor, embedded: Sequence[Tensor],
                        targets: TeacherTargets) -> tuple[Tensor, Tensor]:
        r"""Per-teacher, per-sample terms (K×B each): :math:`\ell^{KL}_T(z^s,z^k)_b` and the per-sample MSE of
        :math:`\mathrm{Embed}_k` against the pooled teacher map."""
        t = self.params.temperature
        kd = torch.stack([kd_loss(student_logits, z, t, reduction="none") for z in targets.logits])
        mse = torch.stack([per_sample_mse(e, m) for e, m in zip(embedded, targets.maps, strict=True)])
        return kd, mse

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        targets = self.teacher_targets(batch.images)
        logits, feature_map, embedded = self.student_view()(batch.images)
        with torch.no_grad():
            logit_weights, feature_weights = self.teacher_weights(logits, feature_map, targets)
        kd, mse = self.matching_values(logits, embedded, targets)
        batch_size = logits.shape[0]
        losses = {
            "ce": p.ce_weight * F.cross_entropy(logits, batch.labels),
            "kd": p.kd_weight * (logit_weights.T * kd).sum() / batch_size,
            "feat": p.feat_weight * (feature_weights.T * mse).sum() / batch_size,
        }
        return StepOutput(logits, losses, {"teacher_weights": logit_weights, "feature_weights": feature_weights},
                          carry={"targets": targets})  # after_step's meta batch and hard buffer reuse them

    # -- the meta update -------------------------------------------------------------------------------------------
    def _inner_grad_fn(self, kind: StepKind, images: Tensor, labels: Tensor, targets: TeacherTargets,
                       names: list[str], buffers: dict[str, Tensor], follow_student: bool) -> GradFn:
        r"""The gradient of one virtual step's loss (``kind``) with respect to the looked-ahead parameters.

        The weights enter as the cotangents of the per-sample terms
        (:math:`\nabla_\theta\sum_{bk}\omega_{bk}\ell_{bk}=J_\ell^\top\omega`): the step's gradient holds the
        weights fixed, as the student step does, while the result stays differentiable in :math:`\phi` and —
        with ``follow_student`` — in the student inputs of the weight networks.
        """
        p = self.params
        view = self.student_view()

        def grad_fn(theta: list[Tensor], create_graph: bool) -> list[Tensor | None]:
            with TwiceDifferentiableBatchNorm():
                logits, feature_map, embedded = functional_call(view, ({**dict(zip(names, theta, strict=True)),
                                                                        **buffers}), (images, kind != "ce"))
            outputs, cotangents = [], []
            if kind in ("ce", "full"):
                ce = F.cross_entropy(logits, labels)
                outputs.append(ce)
                cotangents.append(torch.full_like(ce, p.ce_weight))
            if kind in ("match", "full"):
                inputs = (logits, feature_map) if follow_student else (logits.detach(), feature_map.detach())
                logit_weights, feature_weights = self.teacher_weights(*inputs, targets)
                kd, mse = self.matching_values(logits, embedded, targets)
                outputs += [kd, mse]
                scale = 1.0 / len(labels)
                cotangents += [p.kd_weight * scale * logit_weights.T, p.feat_weight * scale * feature_weights.T]
            return list(torch.autograd.grad(outputs, theta, cotangents, create_graph=create_graph,
                                            allow_unused=True))

        return grad_fn

    def _optimizer_state(self, optimizer: torch.optim.Optimizer) -> tuple[list[str], list[Tensor],
                                                                           list[Tensor | None], list[SGDSettings]]:
        """Names, parameters, momentum buffers and SGD settings of every parameter of the main optimiser."""
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"MMKD's look-ahead reproduces torch.optim.SGD, got {type(optimizer).__name__}")
        name_of = {id(param): name for name, param in self.named_parameters()}
        names, params, buffers, settings = [], [], [], []
        for group in optimizer.param_groups:
            group_settings = SGDSettings.from_group(group)
            for param in group["params"]:
                name = name_of.get(id(param), "")
                if not name.startswith(("student.", "embeds.")):
                    raise ValueError(f"MMKD's look-ahead covers the student and the embeds; the optimiser also holds "
                                     f"{name or 'a foreign parameter'}")
                names.append(name)
                params.append(param)
                buffers.append(optimizer.state.get(param, {}).get("momentum_buffer"))
                settings.append(group_settings)
        return names, params, buffers, settings

    def look_ahead(self, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor, targets: TeacherTargets,
                   *, differentiable: bool, follow_student: bool) -> MetaLookahead:
        """The virtual SGD steps of ``lookahead`` on ``(images, labels)`` from the current parameters and the state
        of ``optimizer`` (the main SGD), then the outer CE. BN layers run in the current mode on copies of their
        buffers; nothing real changes."""
        names, params, momenta, settings = self._optimizer_state(optimizer)
        view = self.student_view()
        buffers = {name: b.clone() for name, b in view.named_buffers()}
        grad_fns = [self._inner_grad_fn(kind, images, labels, targets, names, buffers, follow_student)
                    for kind in self.params.lookahead]

        def outer(theta: list[Tensor]) -> Tensor:
            call = functional_call(view, ({**dict(zip(names, theta, strict=True)), **buffers}), (images, False))
            return F.cross_entropy(call[0], labels)

        trajectory = look_ahead(grad_fns, outer, params, momenta, settings, differentiable=differentiable)
        return MetaLookahead(trajectory, grad_fns, settings)

    def hypergradient(self, lookahead: MetaLookahead, mode: Literal["unroll", "reverse_hg"]) -> list[Tensor]:
        r""":math:`\mathrm dE/\mathrm d\phi` (one tensor per :meth:`weight_net_parameters` entry)."""
        phi = self.weight_net_parameters()
        if mode == "unroll":
            return unrolled_hypergradient(lookahead.trajectory, phi)
        return reverse_hg_hypergradient(lookahead.trajectory, lookahead.grad_fns, lookahead.settings, phi)

    def meta_gradient(self, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
                      targets: TeacherTargets | None = None, mode: Literal["unroll", "reverse_hg"] | None = None,
                      follow_student: bool | None = None) -> tuple[Tensor, list[Tensor]]:
        """The outer loss and its hypergradient for a meta batch (``targets`` default: a teacher forward;
        ``mode`` default: the configured one; ``follow_student`` default: True for the unroll, False — the
        official detach — for Reverse-HG)."""
        mode = mode or self.params.resolved_hypergradient()
        follow = mode == "unroll" if follow_student is None else follow_student
        targets = self.teacher_targets(images) if targets is None else targets
        with torch.enable_grad():
            lookahead = self.look_ahead(optimizer, images, labels, targets, differentiable=mode == "unroll",
                                        follow_student=follow)
            grads = self.hypergradient(lookahead, mode)
        return lookahead.trajectory.outer_loss.detach(), grads

    def meta_step(self, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
                  targets: TeacherTargets | None = None, graphed: bool = False) -> Tensor:
        """One meta update of the weight networks (Adam on the hypergradient); returns the outer loss. ``graphed``:
        the hypergradient is replayed from a CUDA graph (:mod:`mkdlab.methods.mmkd_graph`; needs ``targets``)."""
        outer, grads = (graphed_meta_gradient(self, optimizer, images, labels, targets) if graphed and targets
                        is not None else self.meta_gradient(optimizer, images, labels, targets))
        meta = self.extra_optimizers()["meta"]
        for param, grad in zip(self.weight_net_parameters(), grads, strict=True):
            param.grad = grad
        meta.step()
        meta.zero_grad(set_to_none=True)
        return outer

    def meta_batch(self, batch: Batch, targets: TeacherTargets) -> tuple[Tensor, Tensor, TeacherTargets]:
        """The meta batch and its teacher targets: as many samples as ``batch`` drawn from the hard buffer (images
        in the memory format of the training images, e.g. channels_last; the teacher outputs stored with them), or
        ``batch`` itself with its ``targets`` while the buffer holds fewer samples (or is disabled)."""
        size = batch.labels.shape[0]
        if self.hard_buffer is None or len(self.hard_buffer) < size:
            return batch.images, batch.labels, targets
        images, labels, fields = self.hard_buffer.sample(size)
        maps = [fields[f"teacher_map_{i}"] for i in range(len(self.teachers))]
        targets = self.make_targets(fields["teacher_logits"].transpose(0, 1), maps)
        return torch.empty_like(batch.images).copy_(images), labels, targets

    @staticmethod
    def buffer_fields(targets: TeacherTargets) -> dict[str, Tensor]:
        """The per-sample teacher outputs the hard buffer stores with each image: ``teacher_logits`` (B×K×C) and
        ``teacher_map_k`` (each teacher's tap map)."""
        return {"teacher_logits": targets.logits.transpose(0, 1),
                **{f"teacher_map_{i}": m for i, m in enumerate(targets.raw_maps)}}

    def after_step(self, state: TrainState, batch: Batch, output: StepOutput) -> None:
        """The hard-buffer refresh (storing each image with the teacher outputs of this step,
        ``output.carry["targets"]``: a meta batch never runs the teachers again), then the meta update after the
        batches 0, ``meta_freq``, … of the epoch — the official order: ``train_meta.py`` refreshes the buffer inside
        the student step's ``inner_objective`` and only then calls ``hardBuffer.sample()`` for the meta step, so
        a meta batch can hold samples of the batch just seen."""
        targets = output.carry.get("targets")
        if targets is None:
            raise RuntimeError("MMKD.after_step needs the teacher outputs of forward_train on the same batch")
        batch, predictions, targets = self.global_batch(state.collectives, batch, output.logits.detach().argmax(1),
                                                        targets)
        if self.hard_buffer is not None:
            self.hard_buffer.push(batch.images, batch.labels, predictions, self.buffer_fields(targets))
        if self.params.meta_freq and state.step_in_epoch % self.params.meta_freq == 0:
            self.meta_step(state.optimizer, *self.meta_batch(batch, targets), graphed=state.cuda_graphs)

    def global_batch(self, collectives: Collectives, batch: Batch, predictions: Tensor,
                     targets: TeacherTargets) -> tuple[Batch, Tensor, TeacherTargets]:
        """The step's batch, the student's predictions and the teacher targets of all ranks of a data-parallel run
        (gathered in rank order: the global batch one process would see); for one process, as given.

        Every rank then pushes the same samples into its hard buffer and draws the same meta batch from it (the
        global generators advance alike on every rank), so the weight networks take the same meta step everywhere
        and the buffer a checkpoint saves is the one of every rank."""
        if not collectives.distributed:
            return batch, predictions, targets
        gather = collectives.all_gather
        images = gather(batch.images)
        if batch.images.is_contiguous(memory_format=torch.channels_last):
            images = images.contiguous(memory_format=torch.channels_last)
        targets = self.make_targets(gather(targets.logits, dim=1), [gather(m) for m in targets.raw_maps])
        return Batch(images, gather(batch.labels)), gather(predictions), targets
