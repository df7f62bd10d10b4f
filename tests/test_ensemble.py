"""Batched (vmap) teacher evaluation computes what the plain loop computes."""

from __future__ import annotations

import pytest
import torch

from mkdlab.methods.ensemble import TeacherEnsemble, same_architecture
from mkdlab.models import create


def teachers(arch: str = "resnet8", count: int = 3):
    torch.manual_seed(0)
    return [create(arch, num_classes=10, in_channels=1).eval() for _ in range(count)]


def test_vmap_equals_loop_for_logits_and_features():
    models = teachers()
    x = torch.randn(4, 1, 32, 32)
    loop, batched = TeacherEnsemble(models, "loop"), TeacherEnsemble(models, "vmap")
    assert batched.uses_vmap(x.device) and not loop.uses_vmap(x.device)
    torch.testing.assert_close(batched.logits(x), loop.logits(x), rtol=1e-5, atol=1e-5)
    for a, b in zip(loop.features(x), batched.features(x), strict=True):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-5)


def test_outputs_can_be_saved_for_backward():
    """Teachers run under inference_mode; their outputs must still be usable as loss targets."""
    models = teachers(count=2)
    x = torch.randn(2, 1, 32, 32)
    target = TeacherEnsemble(models).features(x)[0]["stage2"]
    student_map = torch.randn_like(target, requires_grad=True)
    torch.nn.functional.mse_loss(student_map, target).backward()
    assert student_map.grad is not None


def test_mixed_architectures_fall_back_to_the_loop():
    models = teachers("resnet8", 1) + teachers("resnet20", 1)
    assert not same_architecture(models)
    ensemble = TeacherEnsemble(models, "vmap")
    assert not ensemble.uses_vmap(torch.device("cpu"))
    assert ensemble.logits(torch.randn(2, 1, 32, 32)).shape == (2, 2, 10)


def test_a_call_vmap_refuses_falls_back_to_the_loop(monkeypatch):
    """A missing functorch batching rule (an H100 run hit one) must not stop training: the loop takes over."""
    import mkdlab.methods.ensemble as ensemble_module

    models = teachers()
    x = torch.randn(4, 1, 32, 32)
    reference = TeacherEnsemble(models, "loop").logits(x)

    def refusing_vmap(*args, **kwargs):
        def call(*inputs):
            raise RuntimeError("NYI: querying is_contiguous inside of vmap for memory_format other than ...")
        return call

    monkeypatch.setattr(ensemble_module, "vmap", refusing_vmap)
    batched = TeacherEnsemble(models, "vmap")
    torch.testing.assert_close(batched.logits(x), reference)
    assert batched.batching == "loop" and not batched.uses_vmap(x.device)

    def failing_vmap(*args, **kwargs):
        def call(*inputs):
            raise RuntimeError("CUDA out of memory")
        return call

    monkeypatch.setattr(ensemble_module, "vmap", failing_vmap)
    with pytest.raises(RuntimeError, match="out of memory"):  # other errors are not swallowed
        TeacherEnsemble(models, "vmap").logits(x)


def test_the_batched_call_of_channels_last_teachers_needs_no_vmap_fallback():
    """vmap has no batching rule for the as_strided_ that adaptive pooling of a channels_last map needs: inside the
    batched call the global pool runs as a mean, which vmap batches. The outputs equal the loop's at the tolerance
    of test_vmap_equals_loop_for_logits_and_features (the grouped convolutions before it sum in another order)."""
    import warnings

    models = [m.to(memory_format=torch.channels_last) for m in teachers()]
    x = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batched = TeacherEnsemble(models, "vmap").features(x)
    assert not [w for w in caught if "performance drop" in str(w.message)]
    for a, b in zip(TeacherEnsemble(models, "loop").features(x), batched, strict=True):
        torch.testing.assert_close(b["pooled"], a["pooled"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b["logits"], a["logits"], rtol=1e-5, atol=1e-5)
