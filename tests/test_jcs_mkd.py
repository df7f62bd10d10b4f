"""JCS-MKD (docs/methods.md §5.4): the loss pieces and the whole step against independent float64 re-computations,
teacher modes (eval by default, train with parity), the weak head (trained / frozen) and the presets."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from helpers import StopAt
from torch import nn

from mkdlab.config import TrainConfig, load_config
from mkdlab.data import DeviceLoader
from mkdlab.engine import Trainer, TrainingInterrupted
from mkdlab.experiment import method_params
from mkdlab.losses import (
    cat_distances,
    cat_loss,
    customised_target_label,
    nontarget_loss,
    ranking_scores,
    self_knowledge_terms,
    target_loss,
    weak_loss,
    zipf_nontarget_labels,
)
from mkdlab.methods.base import Batch
from mkdlab.methods.jcs_mkd import JCSMKD, JCSMKDParams
from mkdlab.models import create
from mkdlab.typed import ConfigError

K, B, C = 3, 6, 10
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labels(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, C, (B,), generator=gen(seed))


# -- independent references (loops over samples, teachers and classes, float64) --------------------------------
def ref_pool(cam: torch.Tensor, r: int) -> torch.Tensor:
    """Average pooling of one C×H×W map to r×r by explicit block means (H, W divisible by r)."""
    c, h, w = cam.shape
    out = torch.zeros(c, r, r, dtype=cam.dtype)
    for i in range(r):
        for j in range(r):
            out[:, i, j] = cam[:, i * h // r:(i + 1) * h // r, j * w // r:(j + 1) * w // r].mean((1, 2))
    return out


def ref_cat(student: torch.Tensor, teachers: list[torch.Tensor], weights: torch.Tensor, r: int,
            normalize: bool) -> torch.Tensor:
    total = torch.zeros((), dtype=F64)
    for k, teacher in enumerate(teachers):
        for b in range(student.shape[0]):
            s, t = ref_pool(student[b], r), ref_pool(teacher[b], r)
            if normalize:
                s = s / s.pow(2).sum((1, 2), keepdim=True).sqrt()
                t = t / t.pow(2).sum((1, 2), keepdim=True).sqrt()
            total = total + weights[b, k] * (s - t).pow(2).mean()
    return total / (student.shape[0] * len(teachers))


def ref_ca_weights(teacher_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    k_count, b_count, _ = teacher_logits.shape
    w = torch.zeros(b_count, k_count, dtype=F64)
    for b in range(b_count):
        ce = [-(teacher_logits[k, b, y[b]] - torch.logsumexp(teacher_logits[k, b], 0)) for k in range(k_count)]
        exps = [math.exp(v) for v in ce]
        for k in range(k_count):
            w[b, k] = (1 - exps[k] / sum(exps)) / (k_count - 1)
    return w


def ref_zipf(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    q = torch.zeros_like(scores)
    for b in range(scores.shape[0]):
        ranked = sorted(range(scores.shape[1]), key=lambda c: -scores[b, c].item())
        for position, c in enumerate(ranked, start=1):
            if c != y[b]:
                q[b, c] = 1.0 / position
        q[b] /= q[b].sum()
    return q


def ref_self(z: torch.Tensor, h: torch.Tensor, y: torch.Tensor, log_ranking: bool) -> tuple[torch.Tensor, ...]:
    """L_t, L_nt, L_weak of §5.4 written out per sample."""
    b_count, c_count = z.shape
    p = [z[b].softmax(0) for b in range(b_count)]
    mean_sq = sum(p[b][y[b]] ** 2 for b in range(b_count)) / b_count
    lt = -sum((p[b][y[b]] ** 2 + 1 - mean_sq) * p[b][y[b]].log() for b in range(b_count)) / b_count
    rho = torch.zeros(b_count, c_count, dtype=F64)
    for b in range(b_count):
        r = h[b].softmax(0)
        s = p[b].log() if log_ranking else p[b]
        rho[b] = r / (1 - r[y[b]] + 1e-6) + s / (1 - s[y[b]] + 1e-6)
    q = ref_zipf(rho, y)
    lnt = torch.zeros((), dtype=F64)
    weak = torch.zeros((), dtype=F64)
    for b in range(b_count):
        others = [c for c in range(c_count) if c != y[b]]
        log_soft = z[b, others] - torch.logsumexp(z[b, others], 0)
        lnt = lnt - (q[b, others] * log_soft).sum() / b_count
        smooth = torch.full((c_count,), 0.1 / c_count, dtype=F64)
        smooth[y[b]] += 0.9
        weak = weak - (smooth * h[b].log_softmax(0)).sum() / b_count
    return lt, lnt, weak


# -- the pieces ------------------------------------------------------------------------------------------------
def test_zipf_labels_sum_to_one_over_non_targets_with_the_ranks_of_the_loop():
    scores = torch.randn(B, C, generator=gen(0), dtype=F64)
    y = labels()
    q = zipf_nontarget_labels(scores, y)
    torch.testing.assert_close(q, ref_zipf(scores, y))
    torch.testing.assert_close(q.sum(1), torch.ones(B, dtype=F64))
    assert (q.gather(1, y[:, None]) == 0).all() and (q > 0).sum(1).eq(C - 1).all()


def test_zipf_ranks_include_the_target():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0]], dtype=F64)
    y = torch.tensor([0, 3])
    q = zipf_nontarget_labels(scores, y)
    first = torch.tensor([0, 1 / 2, 1 / 3, 1 / 4], dtype=F64)  # target ranked 1st: the others get 1/2, 1/3, 1/4
    second = torch.tensor([1 / 4, 1, 1 / 2, 0], dtype=F64)  # target ranked 3rd: ranks 1, 2, 4 remain
    torch.testing.assert_close(q, torch.stack([first / first.sum(), second / second.sum()]))


@pytest.mark.parametrize("normalize", [False, True])
def test_cat_loss_against_the_independent_computation(normalize):
    student = torch.randn(B, C, 8, 8, generator=gen(0), dtype=F64)
    teachers = [torch.randn(B, C, 8, 8, generator=gen(k + 1), dtype=F64) * (k + 1) for k in range(K - 1)]
    teachers.append(torch.randn(B, C, 4, 4, generator=gen(9), dtype=F64))  # another native size (e.g. vgg)
    weights = torch.rand(B, K, generator=gen(5), dtype=F64)
    for r in (1, 2):
        torch.testing.assert_close(cat_loss(student, teachers, weights, r, normalize),
                                   ref_cat(student, teachers, weights, r, normalize))
    ones = torch.ones(B, K, dtype=F64)
    torch.testing.assert_close(cat_loss(student, teachers, None, 2, normalize),
                               ref_cat(student, teachers, ones, 2, normalize))
    assert cat_distances(student, teachers, 2, normalize).shape == (K, B)


def test_cat_loss_with_one_teacher_is_the_mean_squared_error_of_the_pooled_maps():
    student = torch.randn(B, C, 8, 8, generator=gen(0), dtype=F64)
    teacher = torch.randn(B, C, 8, 8, generator=gen(1), dtype=F64)
    pooled = torch.nn.functional.adaptive_avg_pool2d
    torch.testing.assert_close(cat_loss(student, [teacher]),
                               torch.nn.functional.mse_loss(pooled(student, 2), pooled(teacher, 2)))
    with pytest.raises(ValueError, match="B×K"):
        cat_loss(student, [teacher], torch.ones(B, 2, dtype=F64))


@pytest.mark.parametrize("ranking", ["probs", "log_probs"])
def test_self_knowledge_terms_against_the_definitions(ranking):
    z = torch.randn(B, C, generator=gen(0), dtype=F64, requires_grad=True)
    h = torch.randn(B, C, generator=gen(1), dtype=F64)
    y = labels()
    terms = self_knowledge_terms(z, h, y, ranking)
    lt, lnt, weak = ref_self(z.detach(), h, y, ranking == "log_probs")
    torch.testing.assert_close(terms.target, lt)
    torch.testing.assert_close(terms.non_target, lnt)
    torch.testing.assert_close(terms.weak, weak)
    torch.testing.assert_close(target_loss(z, y), lt)
    torch.testing.assert_close(weak_loss(h, y), weak)
    torch.testing.assert_close(nontarget_loss(z, terms.nontarget_labels, y), lnt)
    p_y = z.detach().softmax(1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(customised_target_label(z, y), p_y**2 + 1 - (p_y**2).mean())


def test_the_two_rankings_differ_and_labels_carry_no_gradient():
    z = torch.randn(B, C, generator=gen(0), dtype=F64, requires_grad=True) * 3
    h = torch.randn(B, C, generator=gen(1), dtype=F64, requires_grad=True)
    y = labels()
    probs, log_probs = ranking_scores(h, z, y, "probs"), ranking_scores(h, z, y, "log_probs")
    assert not probs.requires_grad and not customised_target_label(z, y).requires_grad
    assert not torch.equal(zipf_nontarget_labels(probs, y), zipf_nontarget_labels(log_probs, y))
    # the gradient of L_t treats t_b as a constant: d/dz of -mean t_b log p_by
    z_leaf = z.detach().requires_grad_(True)
    target_loss(z_leaf, y).backward()
    t = customised_target_label(z, y)
    expected = (z.detach().softmax(1) - torch.nn.functional.one_hot(y, C)) * t[:, None] / B
    torch.testing.assert_close(z_leaf.grad, expected)
    # the non-target softmax excludes the target: no gradient reaches the target logit
    z_leaf.grad = None
    nontarget_loss(z_leaf, zipf_nontarget_labels(probs, y), y).backward()
    assert (z_leaf.grad.gather(1, y[:, None]) == 0).all()


# -- the method ------------------------------------------------------------------------------------------------
def build(**params) -> JCSMKD:
    torch.manual_seed(0)
    teachers = [create("resnet8", num_classes=C, in_channels=1) for _ in range(K)]
    return JCSMKD(create("resnet8", num_classes=C, in_channels=1), teachers, JCSMKDParams(**params))


def batch(dtype: torch.dtype = torch.float32) -> Batch:
    return Batch(torch.randn(B, 1, 32, 32, generator=gen(2), dtype=dtype), labels())


def cams_and_maps(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    maps = model.forward_features(images)
    return torch.einsum("cd,bdhw->bchw", model.fc_layer().weight, maps["pre_pool"]), maps


@pytest.mark.parametrize(("parity", "ranking"), [(False, "log_probs"), (False, "probs"), (True, "log_probs")])
def test_total_matches_an_independent_recomputation_of_section_5_4(parity, ranking):
    method = build(parity=parity, ranking=ranking).double().train()
    # teachers as they will run inside the step: eval (default) or train mode (parity); copies, since a train-mode
    # forward moves the BN running statistics
    teachers = [copy.deepcopy(t).train(parity) for t in method.teachers]
    data = batch(F64)
    y = data.labels
    with torch.no_grad():
        teacher_cams, teacher_maps = zip(*(cams_and_maps(t, data.images) for t in teachers), strict=True)
        if parity:  # the CAM model's logits: the spatial mean of the bias-free CAMs
            teacher_logits = torch.stack([cam.mean((2, 3)) for cam in teacher_cams])
        else:
            teacher_logits = torch.stack([m["logits"] for m in teacher_maps])
        student_cams, student_maps = cams_and_maps(copy.deepcopy(method.student), data.images)
        z = student_maps["logits"]
        head = method.weak_head
        h = z @ head.weight.T + head.bias
    weights = ref_ca_weights(teacher_logits, y)
    lam, normalize = (400.0, True) if parity else (15.0, False)
    cat = ref_cat(student_cams, list(teacher_cams), weights, 2, normalize)
    lt, lnt, weak = ref_self(z, h, y, log_ranking=ranking == "log_probs")
    ce = torch.nn.functional.cross_entropy(z, y)
    expected = {"ce": ce, "cat": lam * cat, "target": 0.08 * lt, "non_target": 0.08 * 0.1 * lnt,
                "weak": 0.08 * 0.005 * weak}

    out = method.forward_train(data, epoch=0)
    assert set(out.losses) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(out.losses[name], value, rtol=1e-9, atol=1e-12, msg=name)
    torch.testing.assert_close(out.total(), ce + lam * cat + 0.08 * (lt + 0.1 * lnt + 0.005 * weak))
    torch.testing.assert_close(out.extras["teacher_weights"], weights)
    torch.testing.assert_close(out.extras["teacher_weights"].sum(1), torch.ones(B, dtype=F64))
    torch.testing.assert_close(out.logits, z)


def test_explicit_weight_and_normalisation_override_the_parity_pair():
    p = JCSMKDParams(parity=True, cat_weight=15.0, normalize=False)
    assert (p.effective_cat_weight, p.effective_normalize) == (15.0, False)
    assert (JCSMKDParams().effective_cat_weight, JCSMKDParams().effective_normalize) == (15.0, False)
    q = JCSMKDParams(parity=True)
    assert (q.effective_cat_weight, q.effective_normalize) == (400.0, True)


def record_modes(method: JCSMKD) -> list[list[bool]]:
    """The mode each teacher's first BN layer is called in (forward_features bypasses the teacher's own hooks)."""
    seen: list[list[bool]] = [[] for _ in method.teachers]
    for k, teacher in enumerate(method.teachers):
        teacher.bn1.register_forward_pre_hook(lambda module, args, k=k: seen[k].append(module.training))
    return seen


@pytest.mark.parametrize("parity", [False, True])
def test_teacher_modes_and_running_statistics(parity):
    method = build(parity=parity).train()
    seen = record_modes(method)
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in method.teachers]
    out = method.forward_train(batch(), epoch=0)
    out.total().backward()
    assert seen == [[parity]] * K  # each teacher ran once, in train mode only with parity
    for teacher, state in zip(method.teachers, before, strict=True):
        assert not teacher.training  # back in eval mode after the step
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        for key, value in teacher.state_dict().items():
            moved = "running_" in key or "num_batches_tracked" in key
            assert torch.equal(value, state[key]) != (parity and moved), key


@pytest.mark.parametrize("parity", [False, True])
def test_the_weak_head_trains_by_default_and_stays_at_its_initialisation_with_parity(parity):
    method = build(parity=parity).train()
    grouped = {id(p) for group in method.parameter_groups() for p in group["params"]}
    head = list(method.weak_head.parameters())
    assert all((id(p) in grouped) != parity for p in head)
    initial = [p.detach().clone() for p in head]
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        method.forward_train(batch(), epoch=0).total().backward()
        optimizer.step()
    changed = [not torch.equal(p, q) for p, q in zip(head, initial, strict=True)]
    assert all(changed) if not parity else not any(changed)
    # with parity the frozen head still passes the weak loss's gradient to the student
    method.student.zero_grad()
    method.forward_train(batch(), epoch=0).losses["weak"].backward()
    assert method.student.fc_layer().weight.grad.abs().sum() > 0


def test_the_weak_head_on_the_pooled_feature():
    method = build(weak_head_input="feature")
    assert method.weak_head.in_features == 64  # resnet8's pooled vector
    out = method.forward_train(batch(), epoch=0)
    assert torch.isfinite(out.total())
    with pytest.raises(ConfigError, match="weak_head_input"):
        JCSMKDParams(parity=True, weak_head_input="feature")
    with pytest.raises(ConfigError, match="ranking"):
        JCSMKDParams(parity=True, ranking="probs")
    with pytest.raises(ConfigError, match="cam_resolution"):
        JCSMKDParams(cam_resolution=0)


def test_teacher_count_and_classes_are_checked():
    student = create("resnet8", num_classes=C, in_channels=1)
    with pytest.raises(ValueError, match="at least two teachers"):
        JCSMKD(student, [create("resnet8", num_classes=C, in_channels=1)])
    with pytest.raises(ValueError, match="student's 10 classes"):
        JCSMKD(student, [create("resnet8", num_classes=5, in_channels=1) for _ in range(2)])


def test_heterogeneous_teachers_with_other_map_sizes():
    torch.manual_seed(0)
    teachers = [create("resnet8", num_classes=C, in_channels=1), create("vgg8", num_classes=C, in_channels=1)]
    method = JCSMKD(create("resnet8", num_classes=C, in_channels=1), teachers)  # 8×8 and 4×4 CAMs, pooled to 2×2
    cams, logits = method.teacher_cams(batch().images)
    assert [tuple(c.shape[-2:]) for c in cams] == [(8, 8), (4, 4)] and logits.shape == (2, B, C)
    assert torch.isfinite(method.forward_train(batch(), epoch=0).total())


# -- in the trainer, and the presets -----------------------------------------------------------------------------
def parity_trainer(run_dir=None, callbacks=()) -> Trainer:
    """JCS-MKD with parity in the real trainer: 48 random 16×16 images, 3 steps per epoch, 2 epochs."""
    images = torch.randint(0, 256, (48, 1, 16, 16), dtype=torch.uint8, generator=gen(3))
    targets = torch.randint(0, C, (48,), generator=gen(4))
    common = dict(mean=[0.5], std=[0.25], device="cpu", seed=0)
    train = DeviceLoader(images, targets, 16, train=True, **common)
    test = DeviceLoader(images, targets, 48, train=False, **common)
    config = TrainConfig(epochs=2, lr=0.1, device="cpu", log_every_steps=0)
    return Trainer(build(parity=True), train, test, config, run_dir=run_dir, callbacks=callbacks,
                   record_extras=True)


def own_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.method.state_dict().items() if not k.startswith("teachers.")}


def test_parity_in_the_trainer_frozen_head_drifting_teachers_and_exact_resume(tmp_path):
    reference = parity_trainer()
    head = {k: v.clone() for k, v in reference.method.weak_head.state_dict().items()}
    teacher_stats = reference.method.teachers[0].bn1.running_mean.clone()
    result = reference.fit()
    assert len(result.extras) == 2 and result.extras[-1]["teacher_weights"].shape == (48, K)
    for key, value in reference.method.weak_head.state_dict().items():
        assert torch.equal(value, head[key]), key
    assert all(not t.training for t in reference.method.teachers)
    assert not torch.equal(reference.method.teachers[0].bn1.running_mean, teacher_stats)
    # the checkpoint leaves the teachers out, yet a train-mode BN never reads its running statistics: exact resume
    with pytest.raises(TrainingInterrupted):
        parity_trainer(tmp_path, callbacks=[StopAt(4)]).fit()
    resumed = parity_trainer(tmp_path)
    resumed.fit(resume=True)
    expected = own_state(reference)
    for key, value in own_state(resumed).items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("name", ["jcs_mkd", "jcs_mkd_parity"])
def test_presets_follow_the_ca_mkd_setup_with_the_jcs_recipe(name):
    config, ca_mkd = load_config(name), load_config("ca_mkd")
    assert (config.student, config.teachers, config.data) == (ca_mkd.student, ca_mkd.teachers, ca_mkd.data)
    assert config.train == dataclasses.replace(ca_mkd.train, nesterov=False)
    params = method_params(config)
    parity = name == "jcs_mkd_parity"
    assert params.parity == parity and params.effective_cat_weight == (400.0 if parity else 15.0)
    assert params.effective_normalize == parity
    defaults = JCSMKDParams(parity=parity)
    assert params == dataclasses.replace(defaults, cat_weight=params.cat_weight, normalize=params.normalize)
