r"""Teacher-weighting functions of the multi-teacher baselines (methods.md §4.5–§4.9).

The per-sample weightings share one signature so that notebooks can swap them: teacher logits stacked
``K×B×C`` in, weights ``B×K`` out (row ``b`` holds the weight of every teacher for sample ``b``):

* :func:`average_weights` — AVER (all :math:`1/K`);
* :func:`entropy_weights` — EBKD (Kwon et al., ICASSP 2020) / DE-MKD: low-entropy teachers weigh more;
* :func:`confidence_weights` — CA-MKD (Zhang, Chen, Wang, ICASSP 2022): low cross-entropy teachers weigh more.

AEKD (Du et al., NeurIPS 2020) weights whole teachers from their gradients instead: :func:`aekd_weights` takes
``K×D`` gradient vectors and returns ``K`` weights, the minimum-norm point of the capped simplex
(:func:`capped_simplex_min_norm`), with a parity mode that reproduces the official scikit-learn/libsvm call.

All functions are pure: nothing is detached, so weights computed from tensors that carry gradient (CA-MKD's
feature weights) keep it. Callers that want constants pass no-grad inputs.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

EntropyNorm = Literal["literal", "per_K", "sum_to_one", "softmax"]

#: largest K for which :func:`capped_simplex_min_norm` enumerates active sets (3**K small solves).
ENUMERATION_MAX_K = 6


def _check_logits(teacher_logits: Tensor) -> int:
    if teacher_logits.ndim != 3:
        raise ValueError(f"teacher logits must be stacked K×B×C, got shape {tuple(teacher_logits.shape)}")
    return teacher_logits.shape[0]


def average_weights(teacher_logits: Tensor) -> Tensor:
    r"""Equal weights :math:`w_{bk} = 1/K` (AVER, methods.md §4.5), shape B×K.

    Args:
        teacher_logits: K×B×C teacher logits (only the shape, dtype and device are used).
    """
    k = _check_logits(teacher_logits)
    b = teacher_logits.shape[1]
    return torch.full((b, k), 1.0 / k, dtype=teacher_logits.dtype, device=teacher_logits.device)


def entropy_weights(teacher_logits: Tensor, temperature: float = 1.0, norm: EntropyNorm = "literal",
                    rho: float = 1.0) -> Tensor:
    r"""Entropy-based teacher weights of EBKD (Kwon et al., ICASSP 2020; methods.md §4.7) and DE-MKD (§5.2).

    .. math::
        H_{kb} = -\sum_c p^k_{T,bc}\log p^k_{T,bc},\qquad
        w_{kb} = 1 - \frac{H_{kb}}{\sum_j H_{jb}}

    (natural log, :math:`p^k_T=\mathrm{softmax}(z^k/T)`), so a confident (low-entropy) teacher weighs more.
    The sum of the weights sets the effective KD coefficient (methods.md §1), hence ``norm``:

    * ``"literal"``: :math:`w` as written; :math:`\sum_k w_{kb} = K-1` (EBKD in the CA-MKD repo, DE-MKD);
    * ``"per_K"``: :math:`w/K`, sum :math:`(K-1)/K` — the *effective* weights of the CA-MKD repo's EBKD, which
      divides the weighted loss by :math:`K` again;
    * ``"sum_to_one"``: :math:`w/(K-1)`, sum 1;
    * ``"softmax"``: :math:`\mathrm{softmax}_k(-H_{kb}/\rho)`, sum 1 (a smooth alternative, not from a paper).

    The first three differ only by a global scale. If every teacher has zero entropy for a sample
    (one-hot predictions), :math:`0/0` is avoided by clamping the denominator: each weight is then 1 (literal).

    Args:
        teacher_logits: K×B×C teacher logits.
        temperature: temperature of the softmax whose entropy is taken (1 in EBKD).
        norm: sum convention, see above.
        rho: temperature of the ``"softmax"`` normalisation.

    Returns:
        B×K weights.

    Raises:
        ValueError: for K = 1: entropy weights need at least two teachers (the single weight would be
            :math:`1 - H/H = 0`, which switches distillation off).
    """
    k = _check_logits(teacher_logits)
    if k < 2:
        raise ValueError("entropy weights need at least two teachers: with K = 1 the weight 1 - H/H is 0")
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)  # K×B
    if norm == "softmax":
        return torch.softmax(-entropy / rho, dim=0).T
    total = entropy.sum(0, keepdim=True).clamp_min(torch.finfo(entropy.dtype).tiny)
    w = (1.0 - entropy / total).T  # B×K
    if norm == "literal":
        return w
    if norm == "per_K":
        return w / k
    if norm == "sum_to_one":
        return w / (k - 1)
    raise ValueError(f"unknown norm {norm!r}; choose literal, per_K, sum_to_one or softmax")


def confidence_weights(teacher_logits: Tensor, target: Tensor) -> Tensor:
    r"""Confidence-aware teacher weights of CA-MKD (Zhang, Chen, Wang, ICASSP 2022; methods.md §4.8).

    .. math::
        \mathrm{ce}_{kb} = \mathrm{CE}(z^k_b, y_b)\ (T=1),\qquad
        w_{kb} = \frac{1 - \mathrm{softmax}_k(\mathrm{ce}_{\cdot b})_k}{K-1}

    (softmax over the teacher axis; CA-MKD ``models/util.py:CalWeight``). Each row sums to 1 and every weight
    lies in :math:`[0, 1/(K-1)]`; lower cross-entropy gives a higher weight. CA-MKD then divides the weighted loss
    by :math:`K` once more — that extra :math:`1/K` belongs to the method, not to these weights. Nothing is
    detached: CA-MKD's feature weights are computed from student-dependent logits and keep their gradient.

    Args:
        teacher_logits: K×B×C logits (teacher logits, or any K heads' logits).
        target: B hard labels.

    Returns:
        B×K weights.

    Raises:
        ValueError: for K = 1 (the formula divides by K − 1).
    """
    k = _check_logits(teacher_logits)
    if k < 2:
        raise ValueError("confidence weights need at least two teachers: the formula divides by K - 1")
    ce = torch.stack([F.cross_entropy(z, target, reduction="none") for z in teacher_logits])  # K×B
    return ((1.0 - torch.softmax(ce, dim=0)) / (k - 1)).T


# -- AEKD ------------------------------------------------------------------------------------------------------


def _check_cap(k: int, cap: float) -> None:
    if not cap > 0 or cap * k < 1 - 1e-12:
        raise ValueError(
            f"the capped simplex {{a >= 0, sum a = 1, a_k <= {cap}}} is empty for K = {k}: the cap C must be "
            f">= 1/K = {1 / k:.4g}"
        )


def _project_capped_simplex(v: np.ndarray, cap: float) -> np.ndarray:
    """Euclidean projection onto {0 ≤ x ≤ cap, Σx = 1}: x = clip(v − τ, 0, cap) with the exact shift τ.

    f(τ) = Σ clip(v − τ, 0, cap) is piecewise linear and non-increasing with breakpoints v_i and v_i − cap; τ is
    found by evaluating f at every breakpoint and interpolating linearly on the segment where f crosses 1.
    """
    points = np.unique(np.concatenate([v, v - cap]))
    values = np.clip(v[None, :] - points[:, None], 0.0, cap).sum(1)  # non-increasing in points
    i = int(np.searchsorted(-values, -1.0, side="left"))  # first breakpoint with f <= 1
    if i == 0:
        tau = points[0]
    else:
        f0, f1 = values[i - 1], values[i]
        t0, t1 = points[i - 1], points[i]
        tau = t1 if f0 == f1 else t0 + (f0 - 1.0) * (t1 - t0) / (f0 - f1)
    return np.clip(v - tau, 0.0, cap)


def _min_norm_projected_gradient(gram: np.ndarray, cap: float, iterations: int = 20000) -> np.ndarray:
    """Accelerated projected gradient (FISTA) for min ½ aᵀGa on the capped simplex (used for K > 6).

    Stops early when the projected-gradient step moves the iterate by less than 1e-13 (a fixed point).
    """
    k = gram.shape[0]
    step = 1.0 / max(np.linalg.eigvalsh(gram).max(), 1e-12)
    a = _project_capped_simplex(np.full(k, 1.0 / k), cap)
    y, t = a.copy(), 1.0
    for i in range(iterations):
        a_next = _project_capped_simplex(y - step * gram @ y, cap)
        t_next = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
        y = a_next + (t - 1) / t_next * (a_next - a)
        a, t = a_next, t_next
        if i % 50 == 49 and np.abs(a - _project_capped_simplex(a - step * gram @ a, cap)).max() < 1e-13:
            break
    return a


def capped_simplex_min_norm(gram: Tensor | np.ndarray, cap: float = 0.6, ridge: float = 1e-10) -> Tensor:
    r"""Exact minimiser of :math:`\tfrac12\alpha^\top G\alpha` over the capped simplex
    :math:`\{\alpha\ge0,\ \sum_k\alpha_k=1,\ \alpha_k\le C\}`.

    The Gram matrix is first divided by its largest absolute entry (the minimiser is scale invariant), so
    batch-averaged KD gradients with :math:`\|g\|\approx10^{-3}` (entries :math:`\approx10^{-7}`) are solved as
    accurately as well-scaled ones. A ridge ``ridge·I`` (relative to that scale) makes the problem strictly convex,
    which breaks ties (e.g. identical gradients) towards the smallest :math:`\|\alpha\|`.

    Method: for :math:`K\le6`, **active-set enumeration** — every coordinate is free, at 0 or at the cap; for each
    of the :math:`3^K` patterns the KKT system of the free coordinates (a bordered linear system with the
    multiplier of :math:`\sum\alpha=1`) is solved, infeasible candidates are dropped and the candidate with the
    smallest objective is returned. The problem being strictly convex, its unique minimiser is the affine-hull
    minimiser of the face whose relative interior contains it, so the enumeration is exact (up to rounding).
    For :math:`K>6`, accelerated projected gradient (FISTA, up to 20k iterations, exact projection).

    Args:
        gram: K×K positive semi-definite Gram matrix.
        cap: the cap :math:`C` (AEKD's tolerance, 0.6); needs :math:`CK\ge1`.
        ridge: relative Tikhonov term.

    Returns:
        K weights (float64, CPU) on the capped simplex.
    """
    g = gram.detach().cpu().double().numpy() if isinstance(gram, Tensor) else np.asarray(gram, dtype=np.float64)
    k = g.shape[0]
    _check_cap(k, cap)
    scale = np.abs(g).max()
    g = g / scale if scale > 0 else g.copy()
    g = 0.5 * (g + g.T) + ridge * np.eye(k)
    if k > ENUMERATION_MAX_K:
        return torch.from_numpy(_min_norm_projected_gradient(g, cap))
    tol = 1e-9
    best, best_value = None, np.inf
    for pattern in itertools.product((0, 1, 2), repeat=k):  # 0 free, 1 at zero, 2 at the cap
        free = [i for i in range(k) if pattern[i] == 0]
        upper = [i for i in range(k) if pattern[i] == 2]
        rest = 1.0 - cap * len(upper)
        if rest < -tol or rest > cap * len(free) + tol:
            continue
        a = np.zeros(k)
        a[upper] = cap
        if free:
            n = len(free)
            system = np.zeros((n + 1, n + 1))
            system[:n, :n] = g[np.ix_(free, free)]
            system[:n, n] = -1.0
            system[n, :n] = 1.0
            rhs = np.concatenate([-g[np.ix_(free, upper)] @ a[upper], [rest]])
            try:
                solution = np.linalg.solve(system, rhs)
            except np.linalg.LinAlgError:
                continue
            a[free] = solution[:n]
        if a.min() < -tol or a.max() > cap + tol or abs(a.sum() - 1.0) > 1e-7:
            continue
        value = 0.5 * a @ g @ a
        if value < best_value:
            best, best_value = a, value
    assert best is not None, "the capped simplex is not empty, some pattern must be feasible"
    best = np.clip(best, 0.0, cap)
    return torch.from_numpy(best / best.sum())


def libsvm_capped_simplex_weights(gram: Tensor | np.ndarray, cap: float = 0.6) -> Tensor:
    r"""The official AEKD solver (CA-MKD repo ``helper/optimization.py:find_optimal_svm``): scikit-learn's
    ``OneClassSVM(kernel="precomputed", nu=1/(C·K), tol=1e-6)`` fitted on the **raw** Gram matrix.

    libsvm's one-class dual is :math:`\min_\lambda\tfrac12\lambda^\top G\lambda` s.t. :math:`0\le\lambda_k\le1`,
    :math:`\sum_k\lambda_k=\nu K`; scikit-learn returns :math:`\lambda` unscaled in ``dual_coef_`` for the support
    indices ``support_`` (checked: the coefficients sum to :math:`\nu K = 1/C`). Hence
    :math:`\alpha=\lambda/(K\nu)` lies on the simplex with :math:`\alpha_k\le C` and, on a well-scaled Gram matrix,
    equals :func:`capped_simplex_min_norm`. On tiny gradients (Gram entries below the 1e-6 tolerance) libsvm stops
    at or next to its initial point — the first :math:`\lfloor\nu K\rfloor` multipliers at the bound, the next one
    holding the rest: :math:`(0.6, 0.4, 0)` for :math:`K=3, C=0.6` (methods.md §4.9, §7 #2).

    Raises:
        ValueError: if :math:`CK\le1` (:math:`\nu\ge1`): the set is empty, or (at :math:`CK=1`) libsvm returns
            non-finite coefficients.
    """
    from sklearn.svm import OneClassSVM

    g = gram.detach().cpu().double().numpy() if isinstance(gram, Tensor) else np.asarray(gram, dtype=np.float64)
    k = g.shape[0]
    _check_cap(k, cap)
    nu = 1.0 / (cap * k)
    if nu >= 1.0:
        raise ValueError(f"libsvm needs nu = 1/(C·K) < 1, got {nu:.4g} (C = {cap}, K = {k}); use parity=False")
    svm = OneClassSVM(kernel="precomputed", nu=nu, tol=1e-6).fit(g)
    alpha = np.zeros(k)
    alpha[svm.support_] = svm.dual_coef_.ravel()
    return torch.from_numpy(alpha / (k * nu))


def aekd_weights(teacher_grads: Tensor, cap: float = 0.6, parity: bool = False, normalize: bool = False) -> Tensor:
    r"""AEKD teacher weights (Du et al., NeurIPS 2020, as in the CA-MKD repo; methods.md §4.9).

    With :math:`G_{kl}=\langle\bar g_k,\bar g_l\rangle` the Gram matrix of the teachers' (batch-averaged) loss
    gradients, the weights are the minimum-norm point of the capped convex hull:

    .. math:: \alpha = \arg\min_{\alpha\ge0,\ \sum_k\alpha_k=1,\ \alpha_k\le C}\ \tfrac12\,\alpha^\top G\,\alpha

    * ``parity=False`` (default): solved exactly (:func:`capped_simplex_min_norm`: active-set enumeration for
      :math:`K\le6`, on the Gram matrix rescaled to unit max entry);
    * ``parity=True``: the official scikit-learn ``OneClassSVM`` call on the raw Gram matrix
      (:func:`libsvm_capped_simplex_weights`), which degenerates to :math:`(0.6,0.4,0)` on realistic, tiny KD
      gradients (methods.md §7 #2).

    ``normalize=True`` is the official ``--svm_norm`` (our reading of §4.9 steps 3 and 5): the Gram matrix is built
    from unit-normalised gradients and the result is post-scaled,
    :math:`\alpha_k\leftarrow(\alpha_k/\|\bar g_k\|)/\sum_j(\alpha_j/\|\bar g_j\|)` — the combined gradient then
    points at the minimum-norm point of the normalised hull. The post-scaled weights stay on the simplex but may
    exceed the cap.

    Args:
        teacher_grads: K×D gradient vectors (already batch-averaged and flattened by the caller).
        cap: the cap :math:`C`; :math:`CK<1` raises ``ValueError`` (empty set).
        parity: use the official libsvm solver.
        normalize: unit-normalise the gradients and post-scale the weights.

    Returns:
        K weights, dtype and device of ``teacher_grads``, no autograd history.
    """
    if teacher_grads.ndim != 2:
        raise ValueError(f"teacher gradients must be K×D, got shape {tuple(teacher_grads.shape)}")
    grads = teacher_grads.detach().double().cpu()
    k = grads.shape[0]
    _check_cap(k, cap)
    norms = grads.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    if normalize:
        grads = grads / norms[:, None]
    gram = grads @ grads.T
    alpha = libsvm_capped_simplex_weights(gram, cap) if parity else capped_simplex_min_norm(gram, cap)
    if normalize:
        alpha = alpha / norms
        alpha = alpha / alpha.sum()
    return alpha.to(dtype=teacher_grads.dtype, device=teacher_grads.device)
