"""AEKD's gradient-space solvers (mkdlab.losses.aekd_solver) against a brute-force QP and the official libsvm call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from mkdlab.losses import kd_loss
from mkdlab.losses.aekd_solver import aekd_weights, capped_simplex_min_norm, libsvm_capped_simplex_weights


def brute_force_qp(gram: np.ndarray, cap: float, starts: int = 30, seed: int = 0) -> np.ndarray:
    """min ½aᵀGa on the capped simplex with SLSQP from many random starts (G rescaled to unit max entry)."""
    g = gram / np.abs(gram).max()
    k = len(g)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(starts):
        result = minimize(lambda a: 0.5 * a @ g @ a, rng.dirichlet(np.ones(k)), jac=lambda a: g @ a,
                          bounds=[(0, cap)] * k, method="SLSQP",
                          constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1, "jac": lambda a: np.ones(k)}],
                          options={"ftol": 1e-16, "maxiter": 1000})
        if best is None or result.fun < best.fun:
            best = result
    return best.x


def random_gradients(k: int, d: int, seed: int, norm: float = 1.0) -> torch.Tensor:
    """K correlated gradient vectors of length ≈ ``norm`` (a shared component makes the cap and zeros matter)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(k, d)) + rng.normal(size=(1, d)) * rng.uniform(0, 2)
    g = g / np.linalg.norm(g, axis=1, keepdims=True) * rng.uniform(0.5, 1.5, size=(k, 1))
    return torch.from_numpy(g * norm)


def realistic_kd_gradients(seed: int, k: int = 3, b: int = 64, c: int = 100) -> torch.Tensor:
    """Batch-averaged gradients of batchmean KD (T = 4) w.r.t. random student logits: ‖g‖ ≈ 8e-4."""
    gen = torch.Generator().manual_seed(seed)
    student = (torch.randn(b, c, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    teachers = torch.randn(k, b, c, generator=gen, dtype=torch.float64) * 3
    return torch.stack([torch.autograd.grad(kd_loss(student, t, 4.0), student)[0].mean(0) for t in teachers])


def on_capped_simplex(alpha: np.ndarray, cap: float) -> bool:
    return bool(abs(alpha.sum() - 1) < 1e-9 and (alpha >= -1e-12).all() and (alpha <= cap + 1e-9).all())


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("norm", [1.0, 1e-3])
def test_aekd_exact_solver_matches_a_brute_force_qp(k, norm):
    for seed in range(8):
        cap = max(1 / k + 0.02, [0.6, 0.4, 0.9, 0.3][seed % 4])
        g = random_gradients(k, 20, seed + 100 * k, norm)
        alpha = aekd_weights(g, cap).numpy()
        gram = (g @ g.T).numpy()
        reference = brute_force_qp(gram, cap, seed=seed)
        assert on_capped_simplex(alpha, cap)
        np.testing.assert_allclose(alpha, reference, atol=2e-5)
        assert 0.5 * alpha @ gram @ alpha <= 0.5 * reference @ gram @ reference + 1e-12 * np.abs(gram).max()


def test_aekd_is_scale_invariant_and_exact_on_tiny_kd_gradients():
    for seed in range(5):
        g = realistic_kd_gradients(seed)
        assert g.norm(dim=1).max() < 2e-3 and (g @ g.T).abs().max() < 2e-6
        alpha = aekd_weights(g)
        assert on_capped_simplex(alpha.numpy(), 0.6)
        torch.testing.assert_close(alpha, aekd_weights(g * 1e4), rtol=0, atol=1e-9)
        np.testing.assert_allclose(alpha.numpy(), brute_force_qp((g @ g.T).numpy(), 0.6), atol=2e-5)


def test_aekd_more_than_six_teachers_uses_projected_gradient():
    g = random_gradients(7, 30, seed=5)
    alpha = aekd_weights(g, cap=0.3).numpy()
    assert on_capped_simplex(alpha, 0.3)
    np.testing.assert_allclose(alpha, brute_force_qp((g @ g.T).numpy(), 0.3), atol=1e-5)


def test_aekd_identical_gradients_break_ties_uniformly():
    g = torch.ones(3, 5, dtype=torch.float64)
    torch.testing.assert_close(aekd_weights(g), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_aekd_parity_reproduces_libsvm_on_well_scaled_gradients():
    for seed in range(6):
        g = random_gradients(3, 20, seed)
        exact = aekd_weights(g).numpy()
        official = aekd_weights(g, parity=True).numpy()
        assert on_capped_simplex(official, 0.6)
        np.testing.assert_allclose(official, exact, atol=1e-4)


def test_aekd_parity_returns_the_libsvm_initial_point_on_tiny_kd_gradients():
    """Gram entries ≈ 7e-7, below libsvm's tolerance 1e-6: the solver stops at its initial point — the first
    ⌊νK⌋ = 1 multiplier at the bound (α = C = 0.6), the next holding the rest (0.4), the last 0 — whatever the
    gradients, while the exact answer varies (docs/methods.md §4.9)."""
    for seed in range(5):
        g = realistic_kd_gradients(seed)
        official = aekd_weights(g, parity=True)
        torch.testing.assert_close(official, torch.tensor([0.6, 0.4, 0.0], dtype=torch.float64), rtol=0, atol=1e-12)
        assert (aekd_weights(g) - official).abs().max() > 0.05
        # rescaling the gradients recovers the exact solution
        np.testing.assert_allclose(aekd_weights(g * 1e4, parity=True).numpy(), aekd_weights(g).numpy(), atol=1e-4)


def test_aekd_normalize_post_scales_the_normalised_solution():
    g = random_gradients(3, 20, seed=7) * torch.tensor([[1.0], [3.0], [0.2]], dtype=torch.float64)
    norms = g.norm(dim=1)
    unit = g / norms[:, None]
    base = capped_simplex_min_norm(unit @ unit.T, 0.6)
    expected = (base / norms) / (base / norms).sum()
    torch.testing.assert_close(aekd_weights(g, normalize=True), expected)
    assert abs(float(aekd_weights(g, normalize=True).sum()) - 1) < 1e-12


@pytest.mark.parametrize("parity", [False, True])
def test_aekd_empty_capped_simplex_raises(parity):
    with pytest.raises(ValueError, match="empty"):
        aekd_weights(random_gradients(3, 5, seed=0), cap=0.3, parity=parity)


def test_libsvm_needs_nu_below_one():
    g = random_gradients(2, 5, seed=0)
    with pytest.raises(ValueError, match="nu"):
        libsvm_capped_simplex_weights(g @ g.T, cap=0.5)
    torch.testing.assert_close(aekd_weights(g, cap=0.5), torch.full((2,), 0.5, dtype=torch.float64))
