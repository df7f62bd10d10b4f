r"""JCS-MKD: joint class-attention knowledge and self-knowledge for multi-teacher KD (Ding et al., EAAI 2025;
docs/methods.md §5.4, README seed 000).

The student learns the teachers' *class activation maps* (CAT-KD's class attention transfer, weighted per sample
with CA-MKD's confidence weights) and teaches itself with USKD's decoupled soft labels (a customised target-class
label, Zipf-shaped non-target labels and a weak auxiliary head). There is no logit-KD term.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mkdlab.cam import class_activation_maps
from mkdlab.losses.cam import cat_loss, self_knowledge_terms
from mkdlab.losses.precision import at_least_float32
from mkdlab.losses.weightings import confidence_weights
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.registry import register_method
from mkdlab.models.summary import probe_shapes
from mkdlab.typed import ConfigError


@dataclass(frozen=True)
class JCSMKDParams:
    r"""Hyper-parameters of JCS-MKD (docs/methods.md §5.4 item 4, §7 #5, #10, #11).

    Total loss :math:`\lambda_{CE}\mathrm{CE} + \lambda_{CAT}\mathcal L_{CAT} + w_{self}\,(\alpha_t\mathcal L_t
    + \beta_{nt}\mathcal L_{nt} + \mu\,\mathcal L_{weak})` with ``ce_weight`` = :math:`\lambda_{CE}`,
    ``cat_weight`` = :math:`\lambda_{CAT}`, ``self_weight`` = 0.08, ``target_weight`` = :math:`\alpha_t` = 1,
    ``nontarget_weight`` = :math:`\beta_{nt}` = 0.1, ``weak_weight`` = :math:`\mu` = 0.005 (hard-coded in the
    official code), ``weak_smoothing`` = 0.1 (the weak head's label smoothing), ``cam_resolution`` = 2.

    ``cat_weight`` and ``normalize`` come as a pair (docs/methods.md §7 #11): ``None`` picks (15, un-normalised CAMs)
    — the shipped YAML, mkdlab's default — or, with ``parity``, (400, normalised) — the code defaults the official
    run actually used. Set both explicitly to mix.

    ``weak_head_input``: ``"logits"`` (the official head, Linear(C→C) on the student logits) or ``"feature"``
    (USKD's design, Linear(D→C) on the student's pooled penultimate feature; not available with ``parity``).

    ``ranking``: the student term :math:`s` of the Zipf ranking score (:func:`~mkdlab.losses.cam.ranking_scores`):
    ``"log_probs"`` (default: :math:`s=\log p`, as USKD's own code, ``yzd-v/cls_KD`` ``uskd.py``, and JCS-MKD's
    code rank) or ``"probs"`` (:math:`s=p`, an mkdlab option; not available with ``parity``).

    ``parity=True`` reproduces the official code: teachers run in **train mode** (BN batch statistics, running
    statistics drift), the weak head stays at its random initialisation (not optimised), the ranking score uses
    log-probabilities, and the teacher logits for the confidence weights are the spatial means of the bias-free
    CAMs (the FC bias is lost in the CAM conversion).
    """

    ce_weight: float = 1.0
    cat_weight: float | None = None
    normalize: bool | None = None
    cam_resolution: int = 2
    self_weight: float = 0.08
    target_weight: float = 1.0
    nontarget_weight: float = 0.1
    weak_weight: float = 0.005
    weak_smoothing: float = 0.1
    weak_head_input: Literal["logits", "feature"] = "logits"
    ranking: Literal["log_probs", "probs"] = "log_probs"
    parity: bool = False

    def __post_init__(self) -> None:
        if self.parity and self.weak_head_input != "logits":
            raise ConfigError("method.params.weak_head_input: parity=True reproduces the official weak head on the "
                              "logits; 'feature' (USKD's design) is an mkdlab option for parity=False")
        if self.parity and self.ranking != "log_probs":
            raise ConfigError("method.params.ranking: parity=True reproduces the official ranking on "
                              "log-probabilities; 'probs' is an mkdlab option for parity=False")
        if self.cam_resolution < 1:
            raise ConfigError(f"method.params.cam_resolution: must be >= 1, got {self.cam_resolution}")

    @property
    def effective_cat_weight(self) -> float:
        """:math:`\\lambda_{CAT}`: ``cat_weight``, else 400 with ``parity`` and 15 without."""
        if self.cat_weight is not None:
            return self.cat_weight
        return 400.0 if self.parity else 15.0

    @property
    def effective_normalize(self) -> bool:
        """Per-channel L2 normalisation of the pooled CAMs: ``normalize``, else ``parity``."""
        return self.parity if self.normalize is None else self.normalize


@register_method("jcs_mkd")
class JCSMKD(Distiller):
    r"""JCS-MKD (Ding et al., EAAI 2025; docs/methods.md §5.4; parameters in :class:`JCSMKDParams`).

    CAMs (:func:`~mkdlab.cam.class_activation_maps`, bias-free) of the student :math:`A^s` and of each teacher
    :math:`A^k` at their ``taps["last_map"]``. Teacher weights (CA-MKD's, :func:`confidence_weights`):

    .. math::
        \omega_{kb} = \frac{1-\mathrm{softmax}_k(\mathrm{CE}(z^k_b,y_b))}{K-1}

    from the teachers' true logits (default) or the spatial means of their bias-free CAMs (``parity``). Class
    attention transfer (:func:`~mkdlab.losses.cam.cat_loss`), with :math:`P` = average pooling to 2×2 and
    :math:`N` = optional per-channel L2 normalisation:

    .. math::
        m_{kb}=\mathrm{mean}_{c,i,j}\big(N(P(A^s))_b-N(P(A^k))_b\big)^2,\qquad
        \mathcal L_{CAT}=\frac1{BK}\sum_{b,k}\omega_{kb}m_{kb}

    Self-knowledge (:func:`~mkdlab.losses.cam.self_knowledge_terms`), with :math:`p=\mathrm{softmax}(z^s)` and the
    weak head :math:`h` (Linear on the logits, or on the pooled feature), :math:`r=\mathrm{softmax}(h)`:

    .. math::
        t_b=\mathrm{sg}\big(p_{by}^2+1-\tfrac1B\textstyle\sum_{b'}p_{b'y}^2\big),\quad
        \mathcal L_t=-\tfrac1B\textstyle\sum_b t_b\log p_{by},\quad
        \mathcal L_{weak}=\mathrm{CE}_{\varepsilon=0.1}(h,y)

    .. math::
        \rho_{bc}=\frac{r_{bc}}{1-r_{by}+10^{-6}}+\frac{s_{bc}}{1-s_{by}+10^{-6}},\quad
        q^{nt}_{bc}\propto\frac1{\mathrm{rank}_b(c)}\ (c\ne y),\quad
        \mathcal L_{nt}=-\tfrac1B\textstyle\sum_b\sum_{c\ne y}q^{nt}_{bc}\log\mathrm{softmax}_{c\ne y}(z^s_b)

    with :math:`s=\log p` (default ``ranking``, USKD's and JCS-MKD's code) or :math:`s=p` (``ranking="probs"``). Total

    .. math::
        \mathcal L=\lambda_{CE}\mathrm{CE}(z^s,y)+\lambda_{CAT}\mathcal L_{CAT}
        +0.08\,(\alpha_t\mathcal L_t+\beta_{nt}\mathcal L_{nt}+\mu\mathcal L_{weak})

    Terms ``"ce"``, ``"cat"``, ``"target"``, ``"non_target"``, ``"weak"`` (each with its coefficients; their
    sum is the total). Extras: ``"teacher_weights"`` (:math:`\omega`, B×K, rows sum to 1). The student keeps its
    FC bias (its logits are :math:`\mathrm{mean}_{ij}A^s + b`); only the CAMs are bias-free.

    The weak head is trained by the main optimiser (default) or frozen at its random initialisation
    (``parity``; gradients still flow *through* it into the student). With ``parity`` the teachers run in train
    mode under ``torch.no_grad()`` (one after another; they are put back in eval mode afterwards), so their BN
    running statistics change in place, as in the official code; the checkpoints do not store teacher state, but
    the training forward of a train-mode BN does not read the running statistics, so resuming stays exact.
    """

    Params = JCSMKDParams
    teachers_required = "many"
    min_teachers = 2

    def __init__(self, student, teachers=(), params=None) -> None:
        super().__init__(student, teachers, params)
        student_shapes = probe_shapes(self.student)
        num_classes = student_shapes["logits"][1]
        for teacher in self.teachers:
            teacher_classes = teacher.fc_layer().out_features
            if teacher_classes != num_classes:
                raise ValueError(f"JCS-MKD matches class activation maps channel by channel: the teachers must have "
                                 f"the student's {num_classes} classes, got {teacher_classes}")
        p = self.params
        in_features = num_classes if p.weak_head_input == "logits" else student_shapes["pooled"][1]
        self.weak_head = nn.Linear(in_features, num_classes)
        self.weak_head.requires_grad_(not p.parity)

    # -- teachers ----------------------------------------------------------------------------------------------
    @contextmanager
    def _teachers_in_train_mode(self) -> Iterator[None]:
        for teacher in self.teachers:
            teacher.train()
        try:
            yield
        finally:
            for teacher in self.teachers:
                teacher.eval()

    def teacher_cams(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """Bias-free CAMs of every teacher (K maps B×C×H×W) and the teacher logits (K×B×C) for the weights.

        Default: eval-mode teachers (:meth:`teacher_features`), true logits (with the FC bias). ``parity``:
        train-mode teachers under ``torch.no_grad()``, logits = spatial mean of the bias-free CAMs.
        """
        if self.params.parity:
            with torch.no_grad(), self._teachers_in_train_mode():
                maps = [teacher.forward_features(images) for teacher in self.teachers]
        else:
            maps = self.teacher_features(images)
        with torch.no_grad():
            cams = [class_activation_maps(teacher, m[teacher.taps["last_map"]])
                    for teacher, m in zip(self.teachers, maps, strict=True)]
            if self.params.parity:
                logits = torch.stack([cam.mean((2, 3)) for cam in cams])
            else:
                logits = torch.stack([m["logits"] for m in maps])
        return cams, logits

    # -- the loss ----------------------------------------------------------------------------------------------
    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        labels = batch.labels
        maps = self.student.forward_features(batch.images)
        logits = maps["logits"]
        student_cams = class_activation_maps(self.student, maps[self.student.taps["last_map"]])
        teacher_cams, teacher_logits = self.teacher_cams(batch.images)

        weights = confidence_weights(at_least_float32(teacher_logits), labels)  # B×K, constants
        cat = cat_loss(at_least_float32(student_cams), [at_least_float32(c) for c in teacher_cams], weights,
                       p.cam_resolution, p.effective_normalize)
        head_input = logits if p.weak_head_input == "logits" else maps["pooled"]
        head_logits = self.weak_head(head_input)
        student = at_least_float32(logits)
        terms = self_knowledge_terms(student, at_least_float32(head_logits), labels,
                                     ranking=p.ranking, smoothing=p.weak_smoothing)
        losses = {
            "ce": p.ce_weight * F.cross_entropy(student, labels),
            "cat": p.effective_cat_weight * cat,
            "target": p.self_weight * p.target_weight * terms.target,
            "non_target": p.self_weight * p.nontarget_weight * terms.non_target,
            "weak": p.self_weight * p.weak_weight * terms.weak,
        }
        return StepOutput(logits, losses, {"teacher_weights": weights})
