r"""MMKD's meta-weight networks (Zhang, Chen, Wang, ICME 2023, Eqs. 1–5): per-sample teacher weights from the
student's and the teachers' logits (:class:`LogitsWeight`) or Gram matrices (:class:`FeatureWeight`), trained only
by the meta update of :class:`~mkdlab.methods.mmkd.MMKD`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WeightNet(nn.Sequential):
    r"""MMKD's meta-weight network: :math:`\mathrm{softmax}\big(W_2\,\mathrm{ReLU}(W_1 x)\big)`, hidden width half
    the input width (official ``models/meta_util.py``), one output per teacher."""

    def __init__(self, in_features: int, num_teachers: int) -> None:
        hidden = max(in_features // 2, 1)
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_teachers),
                         nn.Softmax(dim=1))


class LogitsWeight(WeightNet):
    r"""Logit weights :math:`\omega^r_b=\mathrm{softmax}(W^r_2\,\mathrm{ReLU}(W^r_1[z^s_b,z^1_b,\dots,z^K_b]))`
    (paper Eq. 1–2; raw logits as in the code, ``student_first=False``: :math:`[z^1_b,\dots,z^K_b,z^s_b]`, the
    code's order). Linear(C(K+1) → C(K+1)/2) → ReLU → Linear(→ K): 80,803 parameters for C = 100, K = 3."""

    def __init__(self, num_classes: int, num_teachers: int, student_first: bool = True) -> None:
        super().__init__(num_classes * (num_teachers + 1), num_teachers)
        self.num_classes = num_classes
        self.student_first = student_first

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """B×K weights from B×C student logits and K×B×C teacher logits."""
        teachers = list(teacher_logits)
        parts = [student_logits, *teachers] if self.student_first else [*teachers, student_logits]
        return super().forward(torch.cat(parts, dim=1))


class FeatureWeight(WeightNet):
    r"""Feature weights :math:`\omega^f_b=\mathrm{softmax}(W^f_2\,\mathrm{ReLU}(W^f_1[G^s_b,G^1_b,\dots,G^K_b]))`
    (paper Eq. 3–5; :math:`G_b` = row :math:`b` of a B×B Gram matrix; ``student_first=False``: student last).

    The input width :math:`(K+1)N` is tied to a batch size :math:`N` = ``gram_size``: rows of a batch of
    :math:`B<N` are zero-padded to :math:`N` columns (with :math:`B=N` this is exactly the official network),
    :math:`B>N` is refused. Linear(N(K+1) → N(K+1)/2) → ReLU → Linear(→ K): 33,283 parameters for N = 64, K = 3.
    """

    def __init__(self, gram_size: int, num_teachers: int, student_first: bool = True) -> None:
        super().__init__(gram_size * (num_teachers + 1), num_teachers)
        self.gram_size = gram_size
        self.student_first = student_first

    def forward(self, student_gram: Tensor, teacher_grams: Sequence[Tensor]) -> Tensor:
        """B×K weights from the B×B Gram matrices of the student and of each teacher."""
        batch = student_gram.shape[0]
        if batch > self.gram_size:
            raise ValueError(f"MMKD's feature weight network was built for batches of at most {self.gram_size} "
                             f"(method.params.gram_size) but got a batch of {batch}; set gram_size to the batch size")
        grams = [student_gram, *teacher_grams] if self.student_first else [*teacher_grams, student_gram]
        return super().forward(torch.cat([F.pad(g, (0, self.gram_size - batch)) for g in grams], dim=1))
