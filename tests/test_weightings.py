"""Teacher weightings (mkdlab.losses.weightings) against independent NumPy/SciPy computations, and their registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from mkdlab.losses.weightings import (
    available_weightings,
    average_weights,
    confidence_weights,
    de_mkd_weights,
    entropy_weights,
    get_weighting,
)


def random_logits(k: int = 3, b: int = 16, c: int = 10, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, b, c, generator=gen, dtype=torch.float64) * 3


def entropy_reference(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """H_kb (K×B) with natural log."""
    log_p = log_softmax(logits / temperature, axis=-1)
    return -(np.exp(log_p) * log_p).sum(-1)


# -- AVER / EBKD -----------------------------------------------------------------------------------------------


def test_average_weights_are_uniform():
    w = average_weights(random_logits(k=4))
    assert w.shape == (16, 4)
    torch.testing.assert_close(w, torch.full((16, 4), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_entropy_weights_match_the_formula_and_their_sums(temperature):
    k = 3
    logits = random_logits(k=k)
    h = entropy_reference(logits.numpy(), temperature)
    literal = (1 - h / h.sum(0, keepdims=True)).T
    got = {norm: entropy_weights(logits, temperature, norm).numpy()
           for norm in ("literal", "per_K", "sum_to_one", "softmax")}
    np.testing.assert_allclose(got["literal"], literal, rtol=1e-12)
    np.testing.assert_allclose(got["literal"].sum(1), k - 1, rtol=1e-12)
    np.testing.assert_allclose(got["per_K"].sum(1), (k - 1) / k, rtol=1e-12)
    np.testing.assert_allclose(got["sum_to_one"].sum(1), 1.0, rtol=1e-12)
    # the three 1 - H/ΣH forms differ by a global scale only: identical relative ratios
    for norm in ("per_K", "sum_to_one"):
        ratio = got[norm] / got["literal"]
        np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-12)
    np.testing.assert_allclose(got["softmax"], softmax(-h, axis=0).T, rtol=1e-12)
    assert (got["softmax"] >= 0).all()
    np.testing.assert_allclose(got["softmax"].sum(1), 1.0, rtol=1e-12)
    # confident (low-entropy) teachers weigh more
    assert (np.argsort(got["literal"], axis=1) == np.argsort(-h.T, axis=1)).all()


def test_entropy_softmax_rho():
    logits = random_logits()
    h = entropy_reference(logits.numpy())
    got = entropy_weights(logits, norm="softmax", rho=0.5).numpy()
    np.testing.assert_allclose(got, softmax(-h / 0.5, axis=0).T, rtol=1e-12)


@pytest.mark.parametrize("fn", [lambda z: entropy_weights(z), lambda z: confidence_weights(z, torch.zeros(16).long())])
def test_one_teacher_raises(fn):
    with pytest.raises(ValueError, match="at least two teachers"):
        fn(random_logits(k=1))


# -- CA-MKD ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 5])
def test_confidence_weights_match_the_formula(k):
    logits = random_logits(k=k, b=32)
    target = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(3))
    z = logits.numpy()
    ce = -np.take_along_axis(log_softmax(z, axis=-1), target.numpy()[None, :, None], axis=-1)[..., 0]  # K×B
    reference = ((1 - softmax(ce, axis=0)) / (k - 1)).T
    w = confidence_weights(logits, target).numpy()
    np.testing.assert_allclose(w, reference, rtol=1e-12)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-12)  # before CA-MKD's extra 1/K
    assert (w >= 0).all() and (w <= 1 / (k - 1) + 1e-15).all()
    # lower cross-entropy ⇒ higher weight, sample by sample
    assert (np.argsort(w, axis=1) == np.argsort(-ce.T, axis=1)).all()


def test_confidence_weights_keep_the_gradient():
    logits = random_logits().requires_grad_()
    w = confidence_weights(logits, torch.arange(16) % 10)
    (w[:, 0] * torch.arange(16.0, dtype=torch.float64)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_half_precision_logits_are_weighted_in_float32():
    logits = random_logits().float().bfloat16()
    target = torch.arange(16) % 10
    w = entropy_weights(logits, norm="per_K")
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, entropy_weights(logits.float(), norm="per_K"), rtol=0, atol=0)
    torch.testing.assert_close(confidence_weights(logits, target), confidence_weights(logits.float(), target),
                               rtol=0, atol=0)


# -- the registry ----------------------------------------------------------------------------------------------

K = 3
#: (name, hyper-parameters, the plain function's call, the row sum of its weights for K teachers)
REGISTRY_CASES = [
    ("aver", {}, lambda z, y: average_weights(z), 1.0),
    ("entropy", {}, lambda z, y: entropy_weights(z), K - 1.0),
    ("entropy", {"temperature": 2.0, "norm": "per_K"}, lambda z, y: entropy_weights(z, 2.0, "per_K"), (K - 1) / K),
    ("entropy", {"norm": "sum_to_one"}, lambda z, y: entropy_weights(z, norm="sum_to_one"), 1.0),
    ("entropy", {"norm": "softmax", "rho": 0.5}, lambda z, y: entropy_weights(z, norm="softmax", rho=0.5), 1.0),
    ("confidence", {}, lambda z, y: confidence_weights(z, y), 1.0),
    ("de_mkd", {}, lambda z, y: de_mkd_weights(z), K - 1.0),  # the printed scale of Eq. 3-4
    ("de_mkd", {"norm": "per_K", "entropy_temperature": 4.0}, lambda z, y: de_mkd_weights(z, "per_K", 4.0),
     (K - 1) / K),
    ("de_mkd", {"norm": "literal", "use_entropy": False}, lambda z, y: de_mkd_weights(z, "literal", use_entropy=False),
     K - 1.0),
]


def test_the_registry_lists_every_weighting_and_the_cases_cover_it():
    assert available_weightings() == ["aver", "confidence", "de_mkd", "entropy"]
    assert {case[0] for case in REGISTRY_CASES} == set(available_weightings())


@pytest.mark.parametrize(("name", "params", "plain", "row_sum"), REGISTRY_CASES)
def test_a_registered_weighting_is_its_plain_function_with_bk_rows_of_the_convention_sum(name, params, plain,
                                                                                            row_sum):
    logits = random_logits(k=K, b=16)
    labels = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(4))
    weighting = get_weighting(name, **params)
    w = weighting(logits, labels)
    assert w.shape == (16, K) and w.dtype == torch.float64
    torch.testing.assert_close(w, plain(logits, labels), rtol=0, atol=0)  # the same computation, bit for bit
    np.testing.assert_allclose(w.sum(1).numpy(), row_sum, rtol=1e-12)
    assert (w >= 0).all()


def test_get_weighting_binds_every_hyper_parameter_with_its_default():
    assert get_weighting("entropy", norm="per_K").hyper_parameters == {"temperature": 1.0, "norm": "per_K",
                                                                        "rho": 1.0}
    assert get_weighting("de_mkd").hyper_parameters == {"norm": "literal", "entropy_temperature": 1.0, "rho": 1.0,
                                                        "use_entropy": True}
    assert get_weighting("aver").hyper_parameters == {} and get_weighting("confidence").hyper_parameters == {}


def test_unknown_weightings_hyper_parameters_and_choices_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown weighting 'ebkd'; choose one of: aver, confidence, de_mkd, entropy"):
        get_weighting("ebkd")
    with pytest.raises(ValueError, match="no hyper-parameter 'tau'; valid: temperature, norm, rho"):
        get_weighting("entropy", tau=1.0)
    with pytest.raises(ValueError, match="no hyper-parameter 'norm'; valid: none"):
        get_weighting("aver", norm="per_K")
    with pytest.raises(ValueError, match="norm='per_k' is not valid; choose one of: literal, per_K, sum_to_one"):
        get_weighting("de_mkd", norm="per_k")
