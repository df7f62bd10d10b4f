"""Single-teacher baselines: DKD, FitNet hint and AT losses against independent float64 computations, and the
FitNet / AT / DKD methods built on them (docs/methods.md §4.2–§4.4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mkdlab.losses.divergences import dkd_loss, dkd_terms, kd_loss
from mkdlab.losses.features import at_loss, attention_map, hint_loss
from mkdlab.methods import get_method
from mkdlab.methods.base import Batch
from mkdlab.models import create
from mkdlab.typed import ConfigError

# -- DKD ---------------------------------------------------------------------------------------------------------


def manual_dkd_kls(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample binary KL of [p_y, 1 − p_y] and KL of the explicitly renormalised non-target distributions,
    *without* the T² factor, in float64 (no −1000 trick)."""
    p_s = (student.double() / temperature).softmax(1)
    p_t = (teacher.double() / temperature).softmax(1)
    rows = torch.arange(len(target))
    ps_y, pt_y = p_s[rows, target], p_t[rows, target]
    binary = pt_y * (pt_y / ps_y).log() + (1 - pt_y) * ((1 - pt_y) / (1 - ps_y)).log()
    keep = torch.ones_like(p_s, dtype=torch.bool)
    keep[rows, target] = False
    q_s = p_s[keep].view(len(target), -1) / (1 - ps_y)[:, None]
    q_t = p_t[keep].view(len(target), -1) / (1 - pt_y)[:, None]
    non_target = (q_t * (q_t.log() - q_s.log())).sum(1)
    return binary, non_target


@pytest.fixture
def logits():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(8, 10, generator=gen, dtype=torch.float64) * 3
    teacher = torch.randn(8, 10, generator=gen, dtype=torch.float64) * 3
    target = torch.randint(0, 10, (8,), generator=gen)
    return student, teacher, target


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_per_sample_and_batchmean_match_the_formulas(logits, temperature):
    student, teacher, target = logits
    binary, non_target = manual_dkd_kls(student, teacher, target, temperature)
    expected = temperature**2 * (1.0 * binary + 8.0 * non_target)
    per_sample = dkd_loss(student, teacher, target, temperature=temperature, reduction="none")
    assert per_sample.shape == (8,)
    torch.testing.assert_close(per_sample, expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(dkd_loss(student, teacher, target, temperature=temperature), expected.mean())
    torch.testing.assert_close(dkd_loss(student, teacher, target, temperature=temperature, reduction="sum"),
                               expected.sum())


def test_dkd_float32_matches_float64(logits):
    student, teacher, target = logits
    expected = dkd_loss(student, teacher, target, reduction="none")
    got = dkd_loss(student.float(), teacher.float(), target, reduction="none")
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_kd_decomposes_into_tckd_and_weighted_nckd(logits):
    """KD_b = TCKD_b + (1 − p^t_{T,y_b}) NCKD_b per sample (docs/methods.md §4.4, §7)."""
    student, teacher, target = logits
    for temperature in (1.0, 4.0):
        tckd, nckd = dkd_terms(student, teacher, target, temperature)
        pt_y = (teacher / temperature).softmax(1)[torch.arange(8), target]
        kd = kd_loss(student, teacher, temperature, reduction="none")
        torch.testing.assert_close(tckd + (1 - pt_y) * nckd, kd, rtol=0, atol=1e-6)


def test_dkd_terms_carry_the_temperature_squared(logits):
    student, teacher, target = logits
    for temperature in (1.0, 2.0, 8.0):
        binary, non_target = manual_dkd_kls(student, teacher, target, temperature)
        tckd, nckd = dkd_terms(student, teacher, target, temperature)
        torch.testing.assert_close(tckd, temperature**2 * binary)
        torch.testing.assert_close(nckd, temperature**2 * non_target)


def test_dkd_is_linear_in_alpha_and_beta(logits):
    student, teacher, target = logits
    tckd, nckd = dkd_terms(student, teacher, target, 4.0)
    for alpha, beta in [(1.0, 0.0), (0.0, 1.0), (2.0, 8.0), (0.5, 3.0)]:
        got = dkd_loss(student, teacher, target, alpha=alpha, beta=beta, reduction="none")
        torch.testing.assert_close(got, alpha * tckd + beta * nckd)
    a = dkd_loss(student, teacher, target, alpha=1.0, beta=2.0)
    b = dkd_loss(student, teacher, target, alpha=3.0, beta=5.0)
    torch.testing.assert_close(dkd_loss(student, teacher, target, alpha=4.0, beta=7.0), a + b)


def test_dkd_is_zero_when_student_equals_teacher_and_refuses_unknown_reductions(logits):
    student, _, target = logits
    assert dkd_loss(student, student, target).abs().item() < 1e-10
    with pytest.raises(ValueError, match="batchmean, sum or none"):
        dkd_loss(student, student, target, reduction="mean")


# -- hint and attention ------------------------------------------------------------------------------------------


@pytest.fixture
def maps():
    gen = torch.Generator().manual_seed(2)
    return (torch.randn(4, 6, 8, 8, generator=gen, dtype=torch.float64),
            torch.randn(4, 6, 8, 8, generator=gen, dtype=torch.float64))


def test_hint_loss_reductions(maps):
    s, t = maps
    squared = (s - t) ** 2
    torch.testing.assert_close(hint_loss(s, t), squared.mean())
    torch.testing.assert_close(hint_loss(s, t), F.mse_loss(s, t))
    per_sample = hint_loss(s, t, reduction="none")
    assert per_sample.shape == (4,)
    torch.testing.assert_close(per_sample, squared.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(hint_loss(s, t, reduction="sum"), squared.mean(dim=(1, 2, 3)).sum())
    with pytest.raises(ValueError, match="one shape"):
        hint_loss(s, t[:, :3])


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_map_is_the_normalised_channel_mean_of_the_power(maps, p):
    f = maps[0].relu()
    a = attention_map(f, p)
    assert a.shape == (4, 64)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(4, dtype=torch.float64))
    v = (f**p).sum(1).reshape(4, -1) / f.shape[1]
    torch.testing.assert_close(a, v / v.norm(dim=1, keepdim=True))


def manual_at(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    def a(f):
        v = (f**2).mean(1).reshape(f.shape[0], -1)
        return v / v.norm(dim=1, keepdim=True)

    return ((a(f_s) - a(f_t)) ** 2).sum() / (f_s.shape[0] * a(f_s).shape[1])


def test_at_loss_pools_the_larger_map_first():
    gen = torch.Generator().manual_seed(3)
    big = torch.randn(4, 5, 16, 16, generator=gen, dtype=torch.float64).relu()
    small = torch.randn(4, 7, 8, 8, generator=gen, dtype=torch.float64).relu()
    pooled = F.avg_pool2d(big, 2)  # 16×16 → 8×8, independent of adaptive pooling
    torch.testing.assert_close(at_loss([big], [small]), manual_at(pooled, small))
    torch.testing.assert_close(at_loss([small], [big]), manual_at(small, pooled))
    # pooling *after* computing the attention would give a different number
    assert not torch.allclose(at_loss([big], [small]), manual_at(big, F.interpolate(small, scale_factor=2)))


def test_at_loss_sums_over_pairs():
    gen = torch.Generator().manual_seed(4)
    shapes = [(3, 16, 16), (6, 8, 8), (12, 4, 4)]
    students = [torch.randn(2, *s, generator=gen, dtype=torch.float64).relu() for s in shapes]
    teachers = [torch.randn(2, 2 * s[0], *s[1:], generator=gen, dtype=torch.float64).relu() for s in shapes]
    expected = sum(manual_at(s, t) for s, t in zip(students, teachers, strict=True))
    torch.testing.assert_close(at_loss(students, teachers), expected)
    assert at_loss(students, students).item() == 0.0
    with pytest.raises(ValueError, match="as many student maps"):
        at_loss(students, teachers[:2])


# -- methods -----------------------------------------------------------------------------------------------------


def make_batch() -> Batch:
    gen = torch.Generator().manual_seed(1)
    return Batch(torch.randn(8, 1, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen))


def build(name: str, student: str = "resnet8", teacher: str = "resnet8", **params):
    cls = get_method(name)
    torch.manual_seed(0)
    return cls(create(student, num_classes=10, in_channels=1), [create(teacher, num_classes=10, in_channels=1)],
               cls.Params(**params))


def test_dkd_warmup_scales_the_dkd_term():
    method = build("dkd")
    batch = make_batch()
    teacher_logits = method.teacher_logits(batch.images)[0]
    for epoch, factor in [(0, 0.05), (9, 0.5), (19, 1.0), (30, 1.0)]:
        out = method.forward_train(batch, epoch)
        plain = dkd_loss(out.logits, teacher_logits, batch.labels, alpha=1.0, beta=8.0, temperature=4.0)
        torch.testing.assert_close(out.losses["dkd"] / plain, torch.tensor(factor))
        assert set(out.losses) == {"ce", "dkd"}
    off = build("dkd", warmup_epochs=0)
    assert off.warmup_factor(0) == 1.0
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build("dkd", warmup_epochs=-1)


@pytest.mark.parametrize(("teacher", "conv", "stride"), [("resnet8", torch.nn.Conv2d, (1, 1)),
                                                         ("vgg8", torch.nn.Conv2d, (2, 2))])
def test_fitnet_regressor_maps_onto_the_teacher_hint_and_trains(teacher, conv, stride):
    method = build("fitnet", teacher=teacher)
    batch = make_batch()
    assert type(method.regressor.conv) is conv and method.regressor.conv.stride == stride
    assert any(p is method.regressor.conv.weight for g in method.parameter_groups() for p in g["params"])
    out = method.forward_train(batch, 0)
    assert set(out.losses) == {"ce", "hint"}
    t_hint = method.teacher_features(batch.images)[0][method.teacher_tap]
    s_hint = method.student.forward_features(batch.images)[method.student_tap]
    assert method.regressor(s_hint).shape == t_hint.shape
    if teacher == "vgg8":
        assert tuple(s_hint.shape[1:]) == (32, 16, 16) and tuple(t_hint.shape[1:]) == (256, 8, 8)
    out.total().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.regressor.parameters())
    assert set(build("fitnet", kd_weight=0.5).forward_train(batch, 0).losses) == {"ce", "hint", "kd"}


def test_at_refuses_different_stage_counts():
    with pytest.raises(ValueError, match=r"stage lists differ.*has 3.*has 4"):
        build("at", teacher="vgg8")
    out = build("at", teacher="wrn_16_2").forward_train(make_batch(), 0)
    assert set(out.losses) == {"ce", "at"} and torch.isfinite(out.losses["at"])
