"""Multi-teacher baselines (AVER-FitNet, EBKD, CA-MKD, AEKD): one CPU step, parity switches and the losses
against independent recomputations of the formulas in docs/methods.md §4.6–§4.9."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mkdlab.methods import get_method
from mkdlab.methods.base import Batch
from mkdlab.models import create


def model(arch: str = "resnet8"):
    return create(arch, num_classes=10, in_channels=1)


def build(name: str, teacher_archs=("resnet8", "resnet8", "resnet8"), seed: int = 0, **params):
    cls = get_method(name)
    torch.manual_seed(seed)
    teachers = [model(arch) for arch in teacher_archs]
    for teacher in teachers:
        teacher.train()  # the method must put them back in eval mode
    return cls(model(), teachers, cls.Params(**params)), teachers


def batch(seed: int = 1) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(8, 1, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen))


def connectors(method) -> list[torch.nn.Module]:
    return [m for name in ("regressors", "embeds") if getattr(method, name, None) is not None
            for m in getattr(method, name)]


CASES = [
    ("aver_fitnet", {}),
    ("ebkd", {}),
    ("ca_mkd", {}),
    ("aekd", {}),
    ("aekd", {"variant": "feature"}),
    ("aekd", {"parity": True}),
]


@pytest.mark.parametrize(("name", "params"), CASES)
def test_one_step_trains_student_and_connectors_and_leaves_teachers_alone(name, params):
    method, teachers = build(name, **params)
    method.train()
    assert all(not t.training for t in teachers)
    teacher_state = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    trainable = [p for group in method.parameter_groups() for p in group["params"]]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=0.1)
    output = method.forward_train(batch(), epoch=1)  # after the one-epoch feature warm-up
    optimizer.zero_grad()
    output.total().backward()
    optimizer.step()
    assert all(p.grad is not None for p in trainable), "every student and connector parameter gets a gradient"
    assert all(not torch.equal(p.detach(), b) for p, b in zip(trainable, before, strict=True))
    connector_params = [p for m in connectors(method) for p in m.parameters()]
    assert (len(connector_params) > 0) == (name in ("aver_fitnet", "ca_mkd") or params.get("variant") == "feature")
    assert {id(p) for p in connector_params} <= {id(p) for p in trainable}
    for teacher, state in zip(teachers, teacher_state, strict=True):
        assert not teacher.training
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, state[key]), f"teacher {key} changed"
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    weights = output.extras["teacher_weights"]
    assert weights.shape == (8, 3) and not weights.requires_grad
    torch.testing.assert_close(weights.sum(1), torch.ones(8))


WARMUP_CASES = [("aver_fitnet", "hint", {}), ("ca_mkd", "feat", {}), ("aekd", "hint", {"variant": "feature"})]


@pytest.mark.parametrize(("name", "term", "params"), WARMUP_CASES)
def test_feature_term_is_off_during_the_first_epoch(name, term, params):
    method, _ = build(name, **params)
    method.train()
    output = method.forward_train(batch(), epoch=0)
    assert float(output.losses[term]) == 0.0 and not output.losses[term].requires_grad
    output.total().backward()
    assert all(p.grad is None for m in connectors(method) for p in m.parameters())
    method, _ = build(name, feature_warmup_epochs=0, **params)
    assert float(method.forward_train(batch(), epoch=0).losses[term].detach()) > 0


# -- AVER-FitNet -----------------------------------------------------------------------------------------------


def test_aver_fitnet_parity_detaches_the_hint_term():
    default, _ = build("aver_fitnet")
    parity, _ = build("aver_fitnet", parity=True)
    default.train()
    parity.train()
    out_default = default.forward_train(batch(), epoch=1)
    out_parity = parity.forward_train(batch(), epoch=1)
    torch.testing.assert_close(out_parity.losses["hint"], out_default.losses["hint"].detach())  # same value
    assert out_default.losses["hint"].requires_grad and not out_parity.losses["hint"].requires_grad
    out_default.total().backward()
    out_parity.total().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in default.regressors.parameters())
    assert all(p.grad is None or not p.grad.any() for p in parity.regressors.parameters())
    # the hint term is β·mean_k MSE_mean(r_k(F^s_hint), F^k_hint)
    b = batch()
    with torch.no_grad():
        s_hint = default.student.forward_features(b.images)["stage2"]
        mses = [F.mse_loss(r(s_hint), t.forward_features(b.images)["stage2"])
                for r, t in zip(default.regressors, default.teachers, strict=True)]
    torch.testing.assert_close(out_default.losses["hint"].detach(), 100.0 * torch.stack(mses).mean())


# -- EBKD ------------------------------------------------------------------------------------------------------


def per_sample_kl(student_logits, teacher_logits, t=4.0):
    p_t = torch.softmax(teacher_logits / t, 1)
    return t * t * (p_t * (torch.log(p_t) - torch.log_softmax(student_logits / t, 1))).sum(1)


def test_ebkd_loss_is_the_literal_weights_over_bk():
    method, teachers = build("ebkd")
    method.train()
    b = batch()
    out = method.forward_train(b, epoch=0)
    with torch.no_grad():
        z_t = torch.stack([t(b.images) for t in teachers])
        p = torch.softmax(z_t, -1)
        h = -(p * torch.log(p)).sum(-1)  # K×B
        w = 1 - h / h.sum(0)
        z_s = method.student(b.images)
        kl = torch.stack([per_sample_kl(z_s, z) for z in z_t])
        k, bsz = w.shape
        expected = (w * kl).sum() / (bsz * k)
    torch.testing.assert_close(out.losses["kd"], expected)
    torch.testing.assert_close(out.losses["ce"], F.cross_entropy(z_s, b.labels))
    torch.testing.assert_close(out.extras["effective_teacher_weights"].sum(1), torch.full((8,), 2 / 3))


# -- CA-MKD ----------------------------------------------------------------------------------------------------


def camkd_reference(method, b: Batch, epoch: int, cumulative: bool = False) -> torch.Tensor:
    """CA-MKD's total loss recomputed from docs/methods.md §4.8 (shares the method's student, teachers and embeds)."""
    labels = b.labels
    with torch.no_grad():
        t_feats = [t.forward_features(b.images) for t in method.teachers]
    s_feats = method.student.forward_features(b.images)
    z_s = s_feats["logits"]
    k, bsz = len(t_feats), z_s.shape[0]

    def weights(logits_list):  # (1 − softmax_k(CE_kb)) / (K − 1), K×B
        ce = torch.stack([-torch.log_softmax(z, 1).gather(1, labels[:, None])[:, 0] for z in logits_list])
        return (1 - torch.softmax(ce, 0)) / (k - 1)

    w = weights([f["logits"] for f in t_feats])
    kl = torch.stack([per_sample_kl(z_s, f["logits"]) for f in t_feats])
    total = F.cross_entropy(z_s, labels) + (w * kl).sum() / bsz / k
    if epoch == 0:
        return total
    g = s_feats["stage3"]
    current, u, mse = g, [], []
    for teacher, embed, f in zip(method.teachers, method.embeds, t_feats, strict=True):
        target = f[teacher.taps["penultimate_camkd"]]
        source = current if cumulative else g
        size = target.shape[-2:]
        if source.shape[-2] > size[0]:
            resized = F.adaptive_avg_pool2d(source, size)
        elif source.shape[-2] < size[0]:
            resized = F.interpolate(source, size=size, mode="bilinear", align_corners=False)
        else:
            resized = source
        current = resized
        embedded = embed(resized)
        fc = teacher.fc_layer()
        u.append(embedded.mean((2, 3)) @ fc.weight.T + fc.bias)
        mse.append(((embedded - target) ** 2).mean((1, 2, 3)))
    v = weights(u)
    return total + 50.0 * (v * torch.stack(mse)).sum() / bsz / k


@pytest.mark.parametrize("epoch", [0, 1])
def test_ca_mkd_loss_matches_an_independent_recomputation(epoch):
    method, _ = build("ca_mkd")
    method.train()
    b = batch()
    out = method.forward_train(b, epoch=epoch)
    torch.testing.assert_close(out.total(), camkd_reference(method, b, epoch))
    assert ("feature_weights" in out.extras) == (epoch > 0)
    if epoch == 0:
        assert float(out.losses["feat"]) == 0.0


def test_ca_mkd_feature_weights_carry_gradient_but_teacher_heads_do_not_accumulate():
    method, teachers = build("ca_mkd")
    method.train()
    out = method.forward_train(batch(), epoch=1)
    feature_weights = out.extras["feature_weights"]
    torch.testing.assert_close(feature_weights.sum(1), torch.ones(8))
    assert (feature_weights >= 0).all() and (feature_weights <= 0.5 + 1e-6).all()
    # gradient through v: the feat term's gradient differs from the one with v held constant
    grad_full = torch.autograd.grad(out.losses["feat"], method.embeds[0][0].weight, retain_graph=True)[0]
    b = batch()
    with torch.no_grad():
        t_feats = [t.forward_features(b.images) for t in teachers]
    g = method.student.forward_features(b.images)["stage3"]
    targets = [f["stage3"] for f in t_feats]
    embedded = method.embedded_maps(g, targets)
    mse = torch.stack([((e - t) ** 2).mean((1, 2, 3)) for e, t in zip(embedded, targets, strict=True)])
    detached = 50.0 * (feature_weights.T * mse).sum() / 24
    grad_detached = torch.autograd.grad(detached, method.embeds[0][0].weight)[0]
    assert not torch.allclose(grad_full, grad_detached)
    out.total().backward()
    assert all(p.grad is None for t in teachers for p in t.parameters())


def test_ca_mkd_cumulative_resize_parity_only_matters_for_heterogeneous_teachers():
    def feat_losses(archs, b):
        values = []
        for parity in (False, True):
            method, _ = build("ca_mkd", teacher_archs=archs, parity=parity)
            method.train()
            out = method.forward_train(b, epoch=1)
            torch.testing.assert_close(out.total(), camkd_reference(method, b, 1, cumulative=parity))
            values.append(out.losses["feat"])
        return values

    b = batch()
    default, parity = feat_losses(("vgg8", "resnet8"), b)  # 8×8 student pooled to 4×4, then upsampled to 8×8
    assert not torch.allclose(default, parity)
    default, parity = feat_losses(("resnet8", "vgg8"), b)  # identity first, then pooled: same maps
    torch.testing.assert_close(default, parity)
    default, parity = feat_losses(("resnet8", "resnet8"), b)
    torch.testing.assert_close(default, parity)


def test_ca_mkd_wrn_teacher_head_is_pool_and_fc_and_mobilenet_teacher_is_refused():
    method, _ = build("ca_mkd", teacher_archs=("wrn_16_2", "resnet8"))
    method.train()
    b = batch()
    torch.testing.assert_close(method.forward_train(b, epoch=1).total(), camkd_reference(method, b, 1))
    with pytest.raises(ValueError, match="FC takes 1280 inputs"):
        build("ca_mkd", teacher_archs=("mobilenetv2", "resnet8"))


# -- AEKD ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{}, {"parity": True}, {"variant": "feature"}])
def test_aekd_weights_are_on_the_capped_simplex_and_weight_the_kd_losses(params):
    method, teachers = build("aekd", **params)
    method.train()
    b = batch()
    out = method.forward_train(b, epoch=1)
    alpha = out.extras["teacher_weights"][0]
    torch.testing.assert_close(out.extras["teacher_weights"], alpha.expand(8, 3))
    assert abs(float(alpha.sum()) - 1) < 1e-6 and (alpha >= 0).all() and (alpha <= 0.6 + 1e-6).all()
    with torch.no_grad():
        z_s = method.student(b.images)
        per_teacher = torch.stack([per_sample_kl(z_s, t(b.images)).mean() for t in teachers])
    torch.testing.assert_close(out.losses["kd"], (alpha * per_teacher).sum())
    if params.get("variant") == "feature":
        beta = out.extras["feature_weights"][0]
        assert abs(float(beta.sum()) - 1) < 1e-6 and (beta >= 0).all()


def test_aekd_cap_below_one_over_k_is_refused():
    with pytest.raises(ValueError, match="below 1/K"):
        build("aekd", cap=0.3)
