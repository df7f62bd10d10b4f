"""The one weighted-KD method: ``aver_kd`` and ``ebkd`` are ``weighted_kd`` with another weighting, and give the
loss terms and extras of the plain loss functions exactly; any registered weighting swaps in on one student."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mkdlab.config import load_config
from mkdlab.experiment import method_params
from mkdlab.losses.multi_teacher import weighted_kd_loss
from mkdlab.losses.weightings import (
    available_weightings,
    average_weights,
    confidence_weights,
    de_mkd_weights,
    entropy_weights,
)
from mkdlab.methods import get_method
from mkdlab.methods.base import Batch
from mkdlab.methods.weighted_kd import AverKD, AverKDParams, EBKDParams, WeightedKD, WeightedKDParams
from mkdlab.models import create
from mkdlab.typed import ConfigError

K = 3


def build(name: str, **params):
    cls = get_method(name)
    torch.manual_seed(0)
    teachers = [create("resnet8", num_classes=10, in_channels=1) for _ in range(K)]
    return cls(create("resnet8", num_classes=10, in_channels=1), teachers, cls.Params(**params)).train()


def batch() -> Batch:
    gen = torch.Generator().manual_seed(1)
    return Batch(torch.randn(8, 1, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen))


def step(method):
    """One forward_train and the logits it saw: the student's (from the output) and the teachers'."""
    b = batch()
    out = method.forward_train(b, epoch=0)
    return b, out, out.logits.detach(), method.teacher_logits(b.images)


def assert_exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.detach(), expected, rtol=0, atol=0)


def test_aver_kd_terms_and_extras_are_the_plain_averaged_kd():
    method = build("aver_kd")
    assert isinstance(method, WeightedKD) and type(method.params) is AverKDParams
    b, out, z_s, z_t = step(method)
    w = average_weights(z_t)
    assert_exact(out.losses["ce"], 1.0 * F.cross_entropy(z_s, b.labels))
    assert_exact(out.losses["kd"], 1.0 * weighted_kd_loss(z_s, z_t, w, 4.0))
    assert set(out.extras) == {"teacher_weights"}
    assert_exact(out.extras["teacher_weights"], w)


@pytest.mark.parametrize("norm", ["per_K", "literal", "softmax"])
def test_ebkd_terms_and_extras_are_the_plain_entropy_weighted_kd(norm):
    method = build("ebkd", weight_norm=norm, rho=0.5, kd_weight=2.0)
    assert isinstance(method, WeightedKD) and type(method.params) is EBKDParams
    b, out, z_s, z_t = step(method)
    w = entropy_weights(z_t.float(), 1.0, norm, 0.5)
    assert_exact(out.losses["ce"], 1.0 * F.cross_entropy(z_s, b.labels))
    assert_exact(out.losses["kd"], 2.0 * weighted_kd_loss(z_s, z_t, w, 4.0))
    assert set(out.extras) == {"teacher_weights", "effective_teacher_weights"}
    assert_exact(out.extras["effective_teacher_weights"], w)
    assert_exact(out.extras["teacher_weights"], w / w.sum(1, keepdim=True))


PLAIN = {
    "aver": lambda z, y: average_weights(z),
    "confidence": confidence_weights,
    "de_mkd": lambda z, y: de_mkd_weights(z),
    "entropy": lambda z, y: entropy_weights(z, 1.0, "per_K"),
}
PARAMS = {"entropy": {"norm": "per_K"}}


@pytest.mark.parametrize("name", available_weightings())
def test_every_registered_weighting_swaps_in_on_one_student(name):
    method = build("weighted_kd", weighting=name, weighting_params=PARAMS.get(name, {}), temperature=2.0)
    b, out, z_s, z_t = step(method)
    w = PLAIN[name](z_t, b.labels)
    assert_exact(out.losses["kd"], 1.0 * weighted_kd_loss(z_s, z_t, w, 2.0))
    assert_exact(out.extras["effective_teacher_weights"], w)
    torch.testing.assert_close(out.extras["teacher_weights"].sum(1), torch.ones(8))


def test_weighted_kd_with_ebkds_weighting_is_ebkd():
    ebkd = step(build("ebkd"))[1]
    weighted = step(build("weighted_kd", weighting="entropy", weighting_params={"norm": "per_K"}))[1]
    for name in ("ce", "kd"):
        assert_exact(weighted.losses[name], ebkd.losses[name].detach())
    for name in ("teacher_weights", "effective_teacher_weights"):
        assert_exact(weighted.extras[name], ebkd.extras[name])


def test_ca_mkd_logit_branch_is_the_weighted_kd_with_confidence_weights_and_an_extra_one_over_k():
    method = build("ca_mkd")
    b, out, z_s, z_t = step(method)
    w = confidence_weights(z_t.float(), b.labels)
    assert_exact(out.losses["kd"], 1.0 * weighted_kd_loss(z_s, z_t, w / K, 4.0))
    assert_exact(out.extras["teacher_weights"], w)


def test_presets_keep_their_names_params_and_classes():
    for preset, cls, params in (("aver_kd", AverKD, AverKDParams), ("ebkd", get_method("ebkd"), EBKDParams)):
        config = load_config(preset)
        assert config.method.name == preset and get_method(preset) is cls
        assert type(method_params(config)) is params
    assert method_params(load_config("ebkd")).build_weighting().hyper_parameters == {"temperature": 1.0,
                                                                                     "norm": "per_K", "rho": 1.0}


def test_unknown_weighting_or_hyper_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match="method.params.weighting: unknown weighting 'ebkd'; choose one of: aver"):
        WeightedKDParams(weighting="ebkd")
    with pytest.raises(ConfigError, match="no hyper-parameter 'weight_norm'; valid: temperature, norm, rho"):
        WeightedKDParams(weighting="entropy", weighting_params={"weight_norm": "per_K"})
    config = load_config("aver_kd", ["method.name=weighted_kd", "method.params.weighting=confidence"])
    assert method_params(config).build_weighting().name == "confidence"
