r"""AEKD's teacher weights in gradient space (Du et al., NeurIPS 2020, as in the CA-MKD repo; docs/methods.md §4.9).

AEKD weights whole teachers from the **gradients** of their KD losses, not from their logits: :func:`aekd_weights`
takes ``K×D`` batch-averaged gradient vectors and returns ``K`` weights for the batch, the minimum-norm point of the
capped simplex (:func:`capped_simplex_min_norm`), with a parity mode that reproduces the official
scikit-learn/libsvm call (:func:`libsvm_capped_simplex_weights`).

These solvers are deliberately **not** in the weighting registry of :mod:`mkdlab.losses.weightings`: a registered
weighting maps ``K×B×C`` teacher logits and the labels to per-sample ``B×K`` weights, whereas AEKD needs the
student's gradients (one backward pass per teacher, taken by the method) and gives one weight per teacher for the
whole batch.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

#: largest K for which :func:`capped_simplex_min_norm` enumerates active sets (3**K small solves).
ENUMERATION_MAX_K = 6


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
    holding the rest: :math:`(0.6, 0.4, 0)` for :math:`K=3, C=0.6` (docs/methods.md §4.9, §7 #2).

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
    r"""AEKD teacher weights (Du et al., NeurIPS 2020, as in the CA-MKD repo; docs/methods.md §4.9).

    With :math:`G_{kl}=\langle\bar g_k,\bar g_l\rangle` the Gram matrix of the teachers' (batch-averaged) loss
    gradients, the weights are the minimum-norm point of the capped convex hull:

    .. math:: \alpha = \arg\min_{\alpha\ge0,\ \sum_k\alpha_k=1,\ \alpha_k\le C}\ \tfrac12\,\alpha^\top G\,\alpha

    * ``parity=False`` (default): solved exactly (:func:`capped_simplex_min_norm`: active-set enumeration for
      :math:`K\le6`, on the Gram matrix rescaled to unit max entry);
    * ``parity=True``: the official scikit-learn ``OneClassSVM`` call on the raw Gram matrix
      (:func:`libsvm_capped_simplex_weights`), which degenerates to :math:`(0.6,0.4,0)` on realistic, tiny KD
      gradients (docs/methods.md §7 #2).

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


__all__ = ["ENUMERATION_MAX_K", "aekd_weights", "capped_simplex_min_norm", "libsvm_capped_simplex_weights"]
