"""Loss functions against independent float64 computations, and the invariants of docs/methods.md §1."""

from __future__ import annotations

import pytest
import torch

from mkdlab.losses import kd_loss


def manual_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² Σ_c p_t (log p_t − log p_s) per sample, written out in float64."""
    s, t = student.double() / temperature, teacher.double() / temperature
    p_t = torch.exp(t) / torch.exp(t).sum(1, keepdim=True)
    p_s = torch.exp(s) / torch.exp(s).sum(1, keepdim=True)
    return temperature**2 * (p_t * (p_t.log() - p_s.log())).sum(1)


@pytest.fixture
def logits():
    """float64 logits: the losses are then checked against the float64 formulas to rounding (no float32 slack)."""
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(8, 10, generator=gen, dtype=torch.float64) * 3,
            torch.randn(8, 10, generator=gen, dtype=torch.float64) * 3)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_per_sample_and_reductions(logits, temperature):
    student, teacher = logits
    expected = manual_kd(student, teacher, temperature)
    per_sample = kd_loss(student, teacher, temperature, reduction="none")
    assert per_sample.shape == (8,)
    tol = {"rtol": 1e-10, "atol": 1e-12}  # float64 on both sides: only the order of operations differs
    torch.testing.assert_close(per_sample, expected, **tol)
    torch.testing.assert_close(kd_loss(student, teacher, temperature), expected.mean(), **tol)
    torch.testing.assert_close(kd_loss(student, teacher, temperature, reduction="sum"), expected.sum(), **tol)
    torch.testing.assert_close(kd_loss(student, teacher, temperature, reduction="mean"), expected.mean() / 10, **tol)


def test_kd_temperature_squared_keeps_the_gradient_scale(logits):
    """∂ℓ/∂z_s = T (p_s − p_t): the T² factor cancels the 1/T² of the softened gradient (docs/methods.md §1)."""
    student, teacher = logits
    for temperature in (1.0, 2.0, 8.0):
        z = student.clone().requires_grad_(True)
        kd_loss(z, teacher, temperature, reduction="sum").backward()
        expected = temperature * ((student / temperature).softmax(1) - (teacher / temperature).softmax(1))
        torch.testing.assert_close(z.grad, expected, rtol=1e-4, atol=1e-6)


def test_kd_is_zero_when_student_equals_teacher(logits):
    student, _ = logits
    assert kd_loss(student, student).abs().item() < 1e-6


def test_averaged_losses_have_the_gradient_of_kd_to_the_averaged_teacher():
    """AVER-KD averages K losses; its gradient equals KD towards p̄ = mean_k p_k (docs/methods.md §1, §4.5)."""
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(6, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    teachers = torch.randn(3, 6, 10, generator=gen, dtype=torch.float64) * 2
    temperature = 4.0
    torch.stack([kd_loss(student, t, temperature) for t in teachers]).mean().backward()
    averaged = (teachers / temperature).softmax(2).mean(0)
    expected = temperature * ((student.detach() / temperature).softmax(1) - averaged) / student.shape[0]
    torch.testing.assert_close(student.grad, expected)


def test_unknown_reduction_is_refused(logits):
    with pytest.raises(ValueError, match="batchmean, mean, sum or none"):
        kd_loss(*logits, reduction="avg")
