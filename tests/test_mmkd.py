"""MMKD (docs/methods.md §5.3): weight networks, losses, hard buffer, the functional look-ahead and its hypergradient
(against central finite differences in float64, with and without Nesterov), the official Reverse-HG recursion, the
untouched real state after a meta update, and training through the Trainer with a kill and resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import StopAt
from torch import nn

from mkdlab.config import TrainConfig, load_config
from mkdlab.data import DeviceLoader, make_loaders
from mkdlab.engine import Trainer, TrainingInterrupted
from mkdlab.experiment import build_method
from mkdlab.losses.features import gram_matrix
from mkdlab.methods.base import Batch, TrainState
from mkdlab.methods.hard_buffer import HardBuffer
from mkdlab.methods.meta import (
    SGDSettings,
    TwiceDifferentiableBatchNorm,
    look_ahead,
    reverse_hg_hypergradient,
    sgd_update,
    unrolled_hypergradient,
)
from mkdlab.methods.meta_weights import FeatureWeight, LogitsWeight
from mkdlab.methods.mmkd import MMKD, MMKDParams
from mkdlab.models import create
from mkdlab.models.common import ZooModel, make_taps

CLASSES = 4


class Tiny(ZooModel):
    """A one-conv zoo model (conv stride ``stride`` → BN → ReLU → pool → FC): its tap map is (width, 32/stride)²."""

    feat_names = ("stem", "pooled")
    stage_names = ("stem",)
    taps = make_taps("pre_pool")

    def __init__(self, width: int = 3, stride: int = 4, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def fc_layer(self) -> nn.Linear:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = {}
        x = feats["stem"] = F.relu(self.bn1(self.conv1(x)))
        return self._head(feats, x)


def tiny_mmkd(dtype=torch.float64, batch_size: int = 6, **params) -> MMKD:
    """Student map 8×8; teachers with 8×8, 4×4 (student pooled) and 16×16 (teacher pooled) maps."""
    torch.manual_seed(0)
    teachers = [Tiny(4, 4), Tiny(5, 8), Tiny(2, 2)]
    method = MMKD(Tiny(), teachers, MMKDParams(gram_size=batch_size, **params)).to(dtype)
    method.train()
    return method


def images_and_labels(size: int = 6, dtype=torch.float64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(size, 1, 32, 32, generator=gen, dtype=dtype), torch.randint(0, CLASSES, (size,), generator=gen)


def trained_one_step(method: MMKD, nesterov: bool) -> torch.optim.SGD:
    """The main SGD after one real step (so that momentum buffers exist)."""
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=0.1, momentum=0.9, nesterov=nesterov,
                                weight_decay=5e-4)
    images, labels = images_and_labels(seed=7, dtype=next(method.parameters()).dtype)
    output = method.forward_train(Batch(images, labels), 0)
    optimizer.zero_grad()
    output.total().backward()
    optimizer.step()
    return optimizer


def scores(net: nn.Sequential, inputs: torch.Tensor) -> torch.Tensor:
    """A weight network's layers before the softmax, applied by hand."""
    return net[2](torch.relu(net[0](inputs)))


def directional(grads, direction) -> float:
    return sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True))


def outer_loss_at(method: MMKD, optimizer, images, labels, direction, step: float) -> float:
    """E(φ + step·direction), the weight networks restored afterwards."""
    phi = method.weight_net_parameters()
    with torch.no_grad():
        for p, d in zip(phi, direction, strict=True):
            p.add_(d, alpha=step)
    try:
        return float(method.meta_gradient(optimizer, images, labels, mode="reverse_hg")[0])
    finally:
        with torch.no_grad():
            for p, d in zip(phi, direction, strict=True):
                p.sub_(d, alpha=step)


# -- the functional SGD and the two hypergradients on a toy problem ---------------------------------------------------
@pytest.mark.parametrize("settings", [SGDSettings(0.1), SGDSettings(0.1, 0.9, weight_decay=5e-4),
                                      SGDSettings(0.05, 0.9, weight_decay=5e-4, nesterov=True),
                                      SGDSettings(0.2, 0.5, dampening=0.3, weight_decay=1e-3)])
def test_sgd_update_reproduces_torch_sgd_bit_for_bit(settings):
    gen = torch.Generator().manual_seed(0)
    param = torch.randn(5, 3, generator=gen)
    real = nn.Parameter(param.clone())
    optimizer = torch.optim.SGD([real], lr=settings.lr, momentum=settings.momentum, dampening=settings.dampening,
                                weight_decay=settings.weight_decay, nesterov=settings.nesterov)
    buf = None
    for _ in range(3):  # the first step creates the momentum buffer
        grad = torch.randn(5, 3, generator=gen)
        real.grad = grad.clone()
        optimizer.step()
        param, buf = sgd_update(param, grad, buf, settings)
        assert torch.equal(param, real.detach())
        if settings.momentum:
            assert torch.equal(buf, optimizer.state[real]["momentum_buffer"])
    assert sgd_update(param, None, buf, settings) == (param, buf)  # no gradient: SGD skips the parameter


def toy_problem(nesterov: bool):
    """Weighted least squares: data weights φ = softmax(a), three SGD steps on θ, outer loss on held-out data."""
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 3, generator=gen, dtype=torch.float64), torch.randn(8, generator=gen, dtype=torch.float64)
    xv, yv = torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)
    a = torch.randn(8, generator=gen, dtype=torch.float64, requires_grad=True)
    theta0 = [torch.randn(3, generator=gen, dtype=torch.float64)]
    settings = [SGDSettings(0.3, 0.9, weight_decay=1e-2, nesterov=nesterov)]

    def grad_fn(theta, create_graph):
        loss = (torch.softmax(a, 0) * (x @ theta[0] - y) ** 2).sum()
        return list(torch.autograd.grad(loss, theta, create_graph=create_graph))

    def outer(theta):
        return ((xv @ theta[0] - yv) ** 2).mean()

    def value(shift):
        with torch.no_grad():
            a.add_(shift)
        try:
            trajectory = look_ahead([grad_fn] * 3, outer, theta0, [None], settings, differentiable=False)
            return float(trajectory.outer_loss.detach())
        finally:
            with torch.no_grad():
                a.sub_(shift)

    return grad_fn, outer, theta0, settings, a, value


@pytest.mark.parametrize("nesterov", [False, True])
def test_toy_hypergradients_against_central_differences(nesterov):
    grad_fn, outer, theta0, settings, a, value = toy_problem(nesterov)
    exact = unrolled_hypergradient(look_ahead([grad_fn] * 3, outer, theta0, [None], settings, differentiable=True),
                                   [a])[0]
    trajectory = look_ahead([grad_fn] * 3, outer, theta0, [None], settings, differentiable=False)
    recursion = reverse_hg_hypergradient(trajectory, [grad_fn] * 3, settings, [a])[0]
    eps = 1e-6
    fd = torch.tensor([(value(eps * e) - value(-eps * e)) / (2 * eps) for e in torch.eye(8, dtype=torch.float64)],
                      dtype=torch.float64)
    torch.testing.assert_close(exact, fd, rtol=1e-6, atol=1e-9)
    if nesterov:  # the official recursion models heavy-ball momentum: wrong with Nesterov
        assert (recursion - fd).norm() > 0.05 * fd.norm()
    else:
        torch.testing.assert_close(recursion, exact, rtol=1e-10, atol=1e-12)


def test_twice_differentiable_batch_norm_matches_pytorch_to_second_order():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    running = [torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)]
    reference_running = [r.clone() for r in running]
    probe = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)

    def second_order(custom: bool, stats):
        if custom:
            with TwiceDifferentiableBatchNorm():
                out = F.batch_norm(x, *stats, weight, bias, True, 0.1, 1e-5)
        else:
            out = F.batch_norm(x, *stats, weight, bias, True, 0.1, 1e-5)
        grads = torch.autograd.grad((out * probe).sum() ** 2, (x, weight, bias), create_graph=True)
        return [out, *grads, *torch.autograd.grad(sum(g.square().sum() for g in grads), (x, weight, bias))]

    for mine, theirs in zip(second_order(True, running), second_order(False, reference_running), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)
    for mine, theirs in zip(running, reference_running, strict=True):  # running statistics updated as usual
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


# -- MMKD's hypergradient -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nesterov", [False, True])
def test_unrolled_hypergradient_equals_central_differences(nesterov):
    method = tiny_mmkd()
    optimizer = trained_one_step(method, nesterov)
    images, labels = images_and_labels()
    _, grads = method.meta_gradient(optimizer, images, labels)
    assert any(g.abs().sum() > 0 for g in grads[:4]) and any(g.abs().sum() > 0 for g in grads[4:])
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):  # random directions in the space of both weight networks
        direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in method.weight_net_parameters()]
        eps = 1e-6
        fd = (outer_loss_at(method, optimizer, images, labels, direction, eps)
              - outer_loss_at(method, optimizer, images, labels, direction, -eps)) / (2 * eps)
        assert directional(grads, direction) == pytest.approx(fd, rel=1e-4)


def test_reverse_hg_equals_the_unroll_with_detached_weight_inputs_only_without_nesterov():
    for nesterov in (False, True):
        method = tiny_mmkd()
        optimizer = trained_one_step(method, nesterov)
        images, labels = images_and_labels()
        _, recursion = method.meta_gradient(optimizer, images, labels, mode="reverse_hg")
        _, detached = method.meta_gradient(optimizer, images, labels, mode="unroll", follow_student=False)
        _, exact = method.meta_gradient(optimizer, images, labels, mode="unroll")
        flat = [torch.cat([g.flatten() for g in grads]) for grads in (recursion, detached, exact)]
        if nesterov:
            assert (flat[0] - flat[2]).norm() > 0.1 * flat[2].norm()
        else:
            torch.testing.assert_close(flat[0], flat[1], rtol=1e-9, atol=1e-12)
            # the detached weight inputs are the only difference left, a small one
            assert 0 < (flat[1] - flat[2]).norm() < 0.05 * flat[2].norm()


def state_of(method: MMKD, optimizer) -> dict[str, torch.Tensor]:
    state = {f"method.{k}": v.clone() for k, v in method.state_dict().items()
             if k.startswith(("student.", "embeds.", "hard_buffer."))}
    state.update({f"grad.{n}": p.grad.clone() for n, p in method.named_parameters() if p.grad is not None})
    for i, s in optimizer.state_dict()["state"].items():
        state[f"optimizer.{i}"] = s["momentum_buffer"].clone()
    return state


@pytest.mark.parametrize("mode", ["unroll", "reverse_hg"])
def test_a_meta_step_changes_only_the_weight_networks(mode):
    method = tiny_mmkd(torch.float32, hypergradient=mode)
    optimizer = trained_one_step(method, nesterov=True)
    before = state_of(method, optimizer)
    group = copy.deepcopy({k: v for k, v in optimizer.param_groups[0].items() if k != "params"})
    phi = [p.detach().clone() for p in method.weight_net_parameters()]
    images, labels = images_and_labels(dtype=torch.float32)
    outer = method.meta_step(optimizer, images, labels)
    assert math.isfinite(float(outer))
    after = state_of(method, optimizer)
    assert before.keys() == after.keys()
    for key, value in before.items():  # student, embeds, BN running statistics, gradients, momentum: bit-identical
        assert torch.equal(value, after[key]), key
    assert {k: v for k, v in optimizer.param_groups[0].items() if k != "params"} == group
    assert all(not torch.equal(a, p) for a, p in zip(phi, method.weight_net_parameters(), strict=True))
    assert all(p.grad is None for p in method.weight_net_parameters())


def test_meta_step_equals_adam_on_the_hypergradient():
    method = tiny_mmkd()
    optimizer = trained_one_step(method, nesterov=True)
    images, labels = images_and_labels()
    _, grads = method.meta_gradient(optimizer, images, labels)
    phi = [nn.Parameter(p.detach().clone()) for p in method.weight_net_parameters()]
    adam = torch.optim.Adam(phi, lr=1e-3, weight_decay=1e-4)
    for p, g in zip(phi, grads, strict=True):
        p.grad = g
    adam.step()
    method.meta_step(optimizer, images, labels)
    for mine, reference in zip(method.weight_net_parameters(), phi, strict=True):
        torch.testing.assert_close(mine, reference.detach(), rtol=0, atol=0)


# -- the student step -----------------------------------------------------------------------------------------------
def test_losses_match_an_independent_float64_recomputation():
    method = tiny_mmkd()
    images, labels = images_and_labels()
    out = method.forward_train(Batch(images, labels), 0)
    student = method.student.forward_features(images)
    teachers = [t.forward_features(images) for t in method.teachers]
    w_r, w_f = out.extras["teacher_weights"], out.extras["feature_weights"]
    t = 4.0
    kd = mse = 0.0
    for b in range(6):
        for k, (teacher, embed) in enumerate(zip(teachers, method.embeds, strict=True)):
            p_t = torch.softmax(teacher["logits"][b] / t, 0)
            kl = (p_t * (p_t.log() - torch.log_softmax(student["logits"][b] / t, 0))).sum() * t * t
            kd += w_r[b, k] * kl / 6
            f_s, f_t = student["pre_pool"], teacher["pre_pool"]
            size = min(f_s.shape[-1], f_t.shape[-1])
            f_s = F.avg_pool2d(f_s, f_s.shape[-1] // size) if f_s.shape[-1] > size else f_s
            f_t = F.avg_pool2d(f_t, f_t.shape[-1] // size) if f_t.shape[-1] > size else f_t
            mse += w_f[b, k] * ((embed(f_s)[b] - f_t[b]) ** 2).mean() / 6
    torch.testing.assert_close(out.losses["kd"], kd, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.losses["feat"], 100 * mse, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.losses["ce"], F.cross_entropy(student["logits"], labels), rtol=1e-12, atol=0)


def test_weight_networks_get_no_gradient_from_the_student_loss():
    method = tiny_mmkd()
    images, labels = images_and_labels()
    method.forward_train(Batch(images, labels), 0).total().backward()
    assert all(p.grad is None for p in method.weight_net_parameters())
    assert all(p.grad is not None for p in method.embeds.parameters())
    main = {id(p) for group in method.parameter_groups() for p in group["params"]}
    assert main == {id(p) for p in [*method.student.parameters(), *method.embeds.parameters()]}
    meta = method.extra_optimizers()["meta"]
    assert [p for g in meta.param_groups for p in g["params"]] == method.weight_net_parameters()
    assert meta.defaults["lr"] == 1e-3 and meta.defaults["weight_decay"] == 1e-4


def test_weights_lie_on_the_simplex_and_follow_the_input_order():
    method = tiny_mmkd(parity=True)
    images, labels = images_and_labels()
    out = method.forward_train(Batch(images, labels), 0)
    for name in ("teacher_weights", "feature_weights"):
        weights = out.extras[name]
        assert weights.shape == (6, 3) and (weights >= 0).all() and not weights.requires_grad
        torch.testing.assert_close(weights.sum(1), torch.ones(6, dtype=torch.float64))
    gen = torch.Generator().manual_seed(2)
    student, teachers = torch.randn(6, 4, generator=gen), torch.randn(3, 6, 4, generator=gen)
    for student_first in (True, False):
        net = LogitsWeight(4, 3, student_first)
        parts = [student, *teachers] if student_first else [*teachers, student]
        torch.testing.assert_close(net(student, teachers), torch.softmax(scores(net, torch.cat(parts, 1)), 1))
    assert method.logits_weight.student_first is False and method.feature_weight.student_first is False
    assert sum(p.numel() for p in LogitsWeight(100, 3).parameters()) == 80_803
    assert sum(p.numel() for p in FeatureWeight(64, 3).parameters()) == 33_283


def test_feature_weights_zero_pad_smaller_batches_and_refuse_larger_ones():
    net = FeatureWeight(6, 3, student_first=False)
    gen = torch.Generator().manual_seed(3)
    grams = [torch.randn(4, 4, generator=gen) for _ in range(4)]  # student, then three teachers
    padded = torch.cat([F.pad(g, (0, 2)) for g in [*grams[1:], grams[0]]], 1)
    torch.testing.assert_close(net(grams[0], grams[1:]), torch.softmax(scores(net, padded), 1))
    with pytest.raises(ValueError, match="gram_size"):
        net(torch.randn(7, 7), [torch.randn(7, 7)] * 3)
    method = tiny_mmkd()  # built for batches of 6: a last batch of 4 and a meta batch of 4 both work
    optimizer = trained_one_step(method, nesterov=True)
    images, labels = images_and_labels(4)
    assert method.forward_train(Batch(images, labels), 0).extras["feature_weights"].shape == (4, 3)
    assert math.isfinite(float(method.meta_step(optimizer, images, labels)))


def test_gram_matrices_raw_by_parity_and_row_normalised_by_default():
    gen = torch.Generator().manual_seed(4)
    maps = torch.relu(torch.randn(5, 3, 2, 2, generator=gen, dtype=torch.float64))
    raw = torch.tensor([[float((maps[i] * maps[j]).sum()) for j in range(5)] for i in range(5)], dtype=torch.float64)
    torch.testing.assert_close(gram_matrix(maps), raw)
    torch.testing.assert_close(gram_matrix(maps, "row_l2"), raw / raw.norm(dim=1, keepdim=True))
    assert MMKDParams().resolved_gram_norm() == "row_l2" and MMKDParams(parity=True).resolved_gram_norm() == "none"
    parity = MMKDParams(parity=True)
    assert (parity.resolved_hypergradient(), parity.student_first()) == ("reverse_hg", False)
    assert MMKDParams(parity=True, hypergradient="unroll").resolved_hypergradient() == "unroll"


def test_convs_builds_the_three_conv_embed_unless_parity():
    assert len(tiny_mmkd(convs=True).embeds[0]) == 9
    assert len(tiny_mmkd(convs=True, parity=True).embeds[0]) == 3
    assert len(tiny_mmkd().embeds[0]) == 3


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="lookahead"):
        tiny_mmkd(lookahead=())
    with pytest.raises(ValueError, match="lookahead"):
        tiny_mmkd(lookahead=("match", "sgd"))
    with pytest.raises(ValueError, match="meta_freq"):
        tiny_mmkd(meta_freq=-1)
    with pytest.raises(ValueError, match="at least two"):
        MMKD(Tiny(), [Tiny()])


# -- the hard buffer -------------------------------------------------------------------------------------------------
def test_hard_buffer_fills_with_whole_batches_then_keeps_only_misclassified_samples():
    buffer = HardBuffer(10, (1, 2, 2), {"teacher_logits": (3,)})
    gen = torch.Generator().manual_seed(0)

    def batch(n: int = 4):
        return torch.randn(n, 1, 2, 2, generator=gen), torch.randint(0, 5, (n,), generator=gen), torch.randn(n, 3)

    pushed = []
    for _ in range(3):  # 4 + 4 + the first 2 of the third batch, whatever the predictions
        images, labels, extra = batch()
        pushed.append((images, labels, extra))
        buffer.push(images, labels, labels.clone(), {"teacher_logits": extra})
    assert len(buffer) == 10 and buffer.full
    torch.testing.assert_close(buffer.images, torch.cat([p[0] for p in pushed])[:10])
    torch.testing.assert_close(buffer.teacher_logits, torch.cat([p[2] for p in pushed])[:10])
    before = {k: v.clone() for k, v in buffer.state_dict().items()}
    images, labels, extra = batch(6)
    predictions = labels.clone()
    predictions[[1, 4]] = (labels[[1, 4]] + 1) % 5  # two misclassified samples
    slots = buffer.push(images, labels, predictions, {"teacher_logits": extra})
    assert len(set(slots.tolist())) == 2 and len(buffer) == 10
    changed = (buffer.images != before["images"]).flatten(1).any(1).nonzero().flatten()
    assert sorted(changed.tolist()) == sorted(slots.tolist())
    for slot, row in zip(slots.tolist(), (1, 4), strict=True):
        assert torch.equal(buffer.images[slot], images[row]) and buffer.labels[slot] == labels[row]
        assert torch.equal(buffer.teacher_logits[slot], extra[row])
    for row in (0, 2, 3, 5):  # the correctly classified samples were not stored
        assert not (buffer.images == images[row]).flatten(1).all(1).any()
    assert buffer.push(images, labels, labels.clone(), {"teacher_logits": extra}).numel() == 0
    drawn, _, fields = buffer.sample(10)
    assert len({tuple(x.flatten().tolist()) for x in drawn}) == 10 and fields["teacher_logits"].shape == (10, 3)
    with pytest.raises(ValueError, match="cannot draw"):
        buffer.sample(11)
    with pytest.raises(ValueError, match="shape"):
        buffer.push(torch.zeros(2, 3, 2, 2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_meta_batch_is_the_current_batch_until_the_buffer_holds_one_then_comes_with_stored_teacher_outputs():
    method = tiny_mmkd(buffer_size=8)
    images, labels = images_and_labels()
    batch = Batch(images, labels)
    targets = method.teacher_targets(images)
    meta_images, meta_labels, meta_targets = method.meta_batch(batch, targets)
    assert meta_images is images and meta_labels is labels and meta_targets is targets
    fields = method.buffer_fields(targets)
    method.hard_buffer.push(images, labels, labels, fields)
    method.hard_buffer.push(images, labels, labels, fields)
    meta_images, meta_labels, meta_targets = method.meta_batch(batch, targets)
    assert meta_images.shape == images.shape and not torch.equal(meta_images, images)
    fresh = method.teacher_targets(meta_images)  # the stored outputs are the teachers' outputs on those images
    for stored, recomputed in zip([meta_targets.logits, *meta_targets.maps, *meta_targets.grams],
                                  [fresh.logits, *fresh.maps, *fresh.grams], strict=True):
        torch.testing.assert_close(stored, recomputed)


def test_the_buffer_takes_the_batch_before_the_meta_batch_is_drawn_as_in_the_official_loop(monkeypatch):
    """train_meta.py pushes into the hard buffer inside the student step, then samples the meta batch: with a full
    buffer and every sample misclassified, the meta batch holds samples of the batch just seen."""
    method = tiny_mmkd(buffer_size=6, meta_freq=1)
    old_images, old_labels = images_and_labels(seed=1)
    old_fields = method.buffer_fields(method.teacher_targets(old_images))
    method.hard_buffer.push(old_images, old_labels, old_labels, old_fields)
    assert method.hard_buffer.full
    images, labels = images_and_labels(seed=2)
    batch = Batch(images, labels)
    out = method.forward_train(batch, epoch=0)
    out.logits = F.one_hot((labels + 1) % CLASSES, CLASSES).to(images.dtype)  # every sample misclassified
    drawn = []
    monkeypatch.setattr(method, "meta_step", lambda optimizer, meta_images, *rest, **kw: drawn.append(meta_images))
    state = TrainState(total_epochs=1, steps_per_epoch=1, total_steps=1, optimizer=torch.optim.SGD(
        method.parameter_groups(), lr=0.1))
    method.after_step(state, batch, out)
    (meta_images,) = drawn
    from_this_batch = (meta_images[:, None] == images[None]).flatten(2).all(2).any(1)
    assert from_this_batch.all()  # all six slots were overwritten by this batch before the draw


# -- through the trainer: kill and resume -----------------------------------------------------------------------------
def loader() -> DeviceLoader:
    gen = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (24, 1, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, CLASSES, (24,), generator=gen)
    return DeviceLoader(images, labels, 6, train=True, mean=[0.5], std=[0.25], device="cpu", drop_last=True)


def run(run_dir=None, callbacks=()) -> Trainer:
    method = tiny_mmkd(torch.float32, meta_freq=2, buffer_size=9)
    config = TrainConfig(epochs=3, lr=0.05, nesterov=True, device="cpu", log_every_steps=0)
    return Trainer(method, loader(), None, config, run_dir=run_dir, callbacks=callbacks)


def test_training_through_the_trainer_with_a_kill_and_resume_is_bit_exact(tmp_path):
    reference = run()
    initial_phi = [p.detach().clone() for p in reference.method.weight_net_parameters()]
    reference.fit()
    method = reference.method
    assert len(method.hard_buffer) == 9 and all(
        not torch.equal(a, p) for a, p in zip(initial_phi, method.weight_net_parameters(), strict=True))

    interrupted = run(tmp_path, [StopAt(7)])  # in the middle of epoch 2, the buffer full and refreshed
    with pytest.raises(TrainingInterrupted):
        interrupted.fit()
    resumed = run(tmp_path)
    assert len(resumed.method.hard_buffer) == 0
    resumed.fit(resume=True)
    assert resumed.state.global_step == reference.state.global_step == 12
    for key, value in reference.method.state_dict().items():  # student, embeds, weight nets and the hard buffer
        assert torch.equal(value, resumed.method.state_dict()[key]), key
    meta, resumed_meta = (t.extra_optimizers["meta"].state_dict()["state"] for t in (reference, resumed))
    assert meta.keys() == resumed_meta.keys()
    for key, state in meta.items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[name], resumed_meta[key][name])


# -- the presets ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mmkd", "mmkd_parity"])
def test_presets_train_two_steps_on_the_data(name):
    """The preset's method and data pipeline (untrained resnet8 teachers: the pool is not needed here)."""
    config = load_config(name, ["train.max_steps=2", "train.device=cpu", "teachers.arch=resnet8"])
    teachers = [create(arch, num_classes=10, in_channels=1) for arch in config.teachers.architectures()]
    method = build_method(config, teachers)
    assert isinstance(method, MMKD) and method.params.parity == (name == "mmkd_parity")
    train_loader, _ = make_loaders(config.data.dataset, config.data.batch_size, device=torch.device("cpu"),
                                   drop_last=method.needs_drop_last)
    phi = [p.detach().clone() for p in method.weight_net_parameters()]
    trainer = Trainer(method, train_loader, None, config.train, record_extras=True)
    trainer.fit()
    assert trainer.state.global_step == 2 and len(method.hard_buffer) == 128
    assert all(not torch.equal(a, p) for a, p in zip(phi, method.weight_net_parameters(), strict=True))
    weights = trainer.extras.rows[-1]["teacher_weights"]
    assert weights.shape == (64, 3)
    torch.testing.assert_close(weights.sum(1), torch.ones(64))


def test_mmkd_is_found_with_its_default_tap():
    method = MMKD(create("resnet8", num_classes=10, in_channels=1),
                  [create("resnet8", num_classes=10, in_channels=1) for _ in range(2)])
    assert method.sizes == [(8, 8), (8, 8)]
    assert method.hard_buffer.images.shape == (256, 1, 32, 32)
    assert method.feature_weight[0].in_features == 64 * 3
