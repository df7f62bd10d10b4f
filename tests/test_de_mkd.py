"""DE-MKD (docs/methods.md §5.2): weight conventions, the KD and feature terms against independent formulas, presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mkdlab.config import load_config
from mkdlab.experiment import run_experiment
from mkdlab.losses.multi_teacher import de_mkd_kd_loss
from mkdlab.losses.weightings import de_mkd_weights
from mkdlab.methods.base import Batch
from mkdlab.methods.de_mkd import DEMKD, DEMKDParams
from mkdlab.models import create
from mkdlab.teachers import TeacherPool
from mkdlab.typed import ConfigError

K, B, C = 3, 6, 10
PRESETS = ["de_mkd", "de_mkd_ablation_a", "de_mkd_ablation_b", "de_mkd_ablation_c", "de_mkd_ablation_d"]


def logits(k: int = K, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, B, C, generator=gen, dtype=torch.float64) * 3


def labels(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, C, (B,), generator=torch.Generator().manual_seed(seed))


def method(**params) -> DEMKD:
    torch.manual_seed(0)
    teachers = [create("resnet8", num_classes=C, in_channels=1) for _ in range(K)]
    return DEMKD(create("resnet8", num_classes=C, in_channels=1), teachers, DEMKDParams(**params))


def batch() -> Batch:
    gen = torch.Generator().manual_seed(2)
    return Batch(torch.randn(B, 1, 32, 32, generator=gen), labels())


# -- weights ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("norm", "total"), [("literal", K - 1), ("per_K", (K - 1) / K), ("sum_to_one", 1.0)])
def test_weight_sums_per_convention(norm, total):
    w = method(weight_norm=norm).weights(logits().float())
    assert w.shape == (B, K)
    torch.testing.assert_close(w.sum(1), torch.full((B,), float(total)))
    assert (w >= 0).all() and (w <= total / (K - 1) + 1e-6).all()  # range compression: each ≤ S/(K−1)


def test_default_weights_have_the_printed_scale_and_ablation_b_stays_aver_kd():
    """Eq. 3-4 as printed: the default weights sum to K - 1; ablation B keeps AVER-KD's 1/K per teacher."""
    torch.testing.assert_close(method().weights(logits().float()).sum(1), torch.full((B,), K - 1.0))
    params = load_config("de_mkd_ablation_b").method.params
    weights = de_mkd_weights(logits().float(), params["weight_norm"], use_entropy=params["use_entropy_weights"])
    torch.testing.assert_close(weights, torch.full((B, K), 1.0 / K))


def test_softmax_weights_on_the_simplex_and_ordered_by_entropy():
    z = logits()
    w = de_mkd_weights(z, "softmax", rho=0.5)
    torch.testing.assert_close(w.sum(1), torch.ones(B, dtype=z.dtype))
    p = z.softmax(-1)
    entropy = -(p * p.log()).sum(-1).T  # B×K
    assert torch.equal(w.argmax(1), entropy.argmin(1))


def test_weights_follow_eq_3():
    z = logits()
    p = z.softmax(-1)
    h = -(p * p.log()).sum(-1).T  # B×K
    expected = 1 - h / h.sum(1, keepdim=True)
    torch.testing.assert_close(de_mkd_weights(z, "literal"), expected)


def test_equal_weights_keep_the_convention_sum():
    for norm, total in (("literal", K - 1), ("per_K", (K - 1) / K), ("sum_to_one", 1.0)):
        w = de_mkd_weights(logits(), norm, use_entropy=False)
        torch.testing.assert_close(w, torch.full((B, K), total / K, dtype=torch.float64))


def test_one_teacher_is_refused_at_construction():
    with pytest.raises(ValueError, match="at least two teachers"):
        DEMKD(create("resnet8", num_classes=C, in_channels=1), [create("resnet8", num_classes=C, in_channels=1)])
    with pytest.raises(ValueError, match="at least two teachers"):
        de_mkd_weights(logits(k=1))


def test_invalid_params_are_config_errors():
    with pytest.raises(ConfigError, match="dkd_warmup_epochs"):
        DEMKDParams(dkd_warmup_epochs=-1)
    with pytest.raises(ConfigError, match="weight_norm"):
        DEMKDParams(weight_norm="max")


# -- the KD term -----------------------------------------------------------------------------------------------
def independent_dkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temp: float) -> tuple[torch.Tensor, ...]:
    """Per-sample TCKD and NCKD (with T²) from the definitions: binary target/rest KL and KL over non-targets."""
    tckd, nckd = [], []
    for b in range(s.shape[0]):
        ps, pt = (s[b] / temp).softmax(0), (t[b] / temp).softmax(0)
        bs = torch.stack([ps[y[b]], 1 - ps[y[b]]])
        bt = torch.stack([pt[y[b]], 1 - pt[y[b]]])
        tckd.append((bt * (bt.log() - bs.log())).sum() * temp**2)
        keep = torch.arange(s.shape[1]) != y[b]
        qs, qt = ps[keep] / ps[keep].sum(), pt[keep] / pt[keep].sum()
        nckd.append((qt * (qt.log() - qs.log())).sum() * temp**2)
    return torch.stack(tckd), torch.stack(nckd)


def test_kd_term_equals_weighted_sum_of_independent_dkd():
    z_t, y = logits(), labels()
    z_s = torch.randn(B, C, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    w = de_mkd_weights(z_t, "literal")
    a, b, temp = 1.5, 8.0, 4.0
    per_sample = torch.zeros(B, dtype=torch.float64)
    for k in range(K):
        tckd, nckd = independent_dkd(z_s, z_t[k], y, temp)
        per_sample += w[:, k] * (a * tckd + b * nckd)
    got = de_mkd_kd_loss(z_s, z_t, y, w, temp, a, b)
    torch.testing.assert_close(got, per_sample.mean(), rtol=1e-9, atol=1e-9)


def test_vanilla_kd_when_not_decoupled():
    z_t, y = logits(), labels()
    z_s = torch.randn(B, C, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    w = de_mkd_weights(z_t, "sum_to_one", use_entropy=False)
    temp = 4.0
    ps = (z_s / temp).log_softmax(1)
    expected = sum(((z_t[k] / temp).softmax(1) * ((z_t[k] / temp).log_softmax(1) - ps)).sum(1) for k in range(K))
    got = de_mkd_kd_loss(z_s, z_t, y, w, temp, decoupled=False)
    torch.testing.assert_close(got, (expected * temp**2 / K).mean())


def test_norms_change_only_a_global_factor():
    z_t, y = logits(), labels()
    z_s = torch.randn(B, C, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kd = {norm: de_mkd_kd_loss(z_s, z_t, y, de_mkd_weights(z_t, norm)) for norm in ("literal", "per_K", "sum_to_one")}
    torch.testing.assert_close(kd["literal"], (K - 1) * kd["sum_to_one"])
    torch.testing.assert_close(kd["per_K"], (K - 1) / K * kd["sum_to_one"])


def test_method_kd_term_uses_the_warmup_factor():
    m = method(dkd_warmup_epochs=4, use_features=False)
    assert [m.warmup_factor(e) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert method(dkd_warmup_epochs=0, use_features=False).warmup_factor(0) == 1.0
    m.train()
    data = batch()
    out0 = m.forward_train(data, epoch=0)
    out9 = m.forward_train(data, epoch=9)
    assert set(out0.losses) == {"ce", "kd"}
    torch.testing.assert_close(out0.losses["kd"] * 4, out9.losses["kd"])
    z_t = m.teacher_logits(data.images)
    with torch.no_grad():
        z_s = m.student(data.images)
    expected = de_mkd_kd_loss(z_s, z_t, data.labels, m.weights(z_t))
    torch.testing.assert_close(out9.losses["kd"].detach(), expected)


# -- the feature term ------------------------------------------------------------------------------------------
def test_feature_term_is_the_weighted_per_sample_mse():
    m = method(feat_weight=2.0, weight_norm="literal").double()  # float64: the formula checked to rounding
    m.train()
    data = batch()
    data.images = data.images.double()
    torch.manual_seed(3)
    out = m.forward_train(data, epoch=0)
    teacher_maps = m.teacher_features(data.images)
    z_t = torch.stack([maps["logits"] for maps in teacher_maps]).double()
    p = z_t.softmax(-1)
    h = -(p * p.log()).sum(-1).T
    w = 1 - h / h.sum(1, keepdim=True)  # literal, B×K
    hint = m.student.forward_features(data.images)[m.student.taps["hint"]]
    expected = torch.zeros(B, dtype=torch.float64)
    for k, (reg, teacher) in enumerate(zip(m.regressors, m.teachers, strict=True)):
        diff = (reg(hint) - teacher_maps[k][teacher.taps["hint"]]).double()
        expected += w[:, k] * diff.pow(2).mean((1, 2, 3))
    # BN in train mode: a second forward on the same batch gives the same maps
    tol = {"rtol": 1e-10, "atol": 1e-12}  # float64 on both sides: only the order of operations differs
    torch.testing.assert_close(out.losses["feat"], 2.0 * expected.mean(), **tol)
    torch.testing.assert_close(out.extras["effective_teacher_weights"], w, **tol)
    torch.testing.assert_close(out.extras["teacher_weights"].sum(1), torch.ones(B, dtype=torch.float64))


def test_feature_warmup_and_switch():
    m = method(feature_warmup_epochs=1)
    m.train()
    out = m.forward_train(batch(), epoch=0)
    assert out.losses["feat"].item() == 0.0 and not out.losses["feat"].requires_grad
    assert out.losses["feat"] != m.forward_train(batch(), epoch=1).losses["feat"]
    assert "feat" not in method(use_features=False).forward_train(batch(), epoch=0).losses
    assert method(use_features=False).regressors is None


# -- presets ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> TeacherPool:
    """One teacher pool for every preset: the three 2-step teachers are trained once."""
    return TeacherPool(tmp_path_factory.mktemp("pool"))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_on_cpu(name, tmp_path, pool):
    config = load_config(name, ["train.max_steps=2", "train.epochs=1", "teachers.epochs=1", "teachers.max_steps=2",
                                "train.device=cpu"] if name != "de_mkd_ablation_a" else
                         ["train.max_steps=2", "train.epochs=1", "train.device=cpu"])
    config = dataclasses.replace(config, output=dataclasses.replace(config.output, dir=str(tmp_path / "runs")))
    result, trained = run_experiment(config, pool=pool, verbose=False)
    assert result.last_top1 >= 0.0
    assert trained.method_name == config.method.name
