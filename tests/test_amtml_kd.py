"""AMTML-KD (docs/methods.md §5.1): RKD losses, importances, the two-phase schedule, hint convs, presets and resume."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mkdlab.config import TrainConfig, load_config
from mkdlab.engine.trainer import Trainer
from mkdlab.experiment import run_experiment
from mkdlab.losses.divergences import soft_target_kl
from mkdlab.losses.relational import pairwise_distances, rkd_angle_loss, rkd_distance_loss
from mkdlab.methods.amtml_kd import AMTMLKD, AMTMLKDParams
from mkdlab.methods.base import Batch
from mkdlab.models import create
from mkdlab.teachers import TeacherPool

PRESETS = ["amtml_kd", "amtml_kd_lr_adaptive_learning", "amtml_kd_lr_adaptive_hint", "amtml_kd_lr_adaptive_kd",
           "amtml_kd_teacher_level"]


# -- independent float64 references (plain loops) ------------------------------------------------------------------
def smooth_l1(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def reference_distance(s, t) -> float:
    s, t = s.double().tolist(), t.double().tolist()
    n = len(s)

    def dists(x):
        d = [[math.dist(x[i], x[j]) for j in range(n)] for i in range(n)]
        positive = [v for row in d for v in row if v > 0]
        mean = sum(positive) / len(positive)
        return [[v / mean for v in row] for row in d]

    ds, dt = dists(s), dists(t)
    return sum(smooth_l1(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / n**2


def reference_angle(s, t) -> float:
    s, t = s.double().tolist(), t.double().tolist()
    n = len(s)

    def unit(x, i, j):
        e = [a - b for a, b in zip(x[i], x[j], strict=True)]
        norm = math.sqrt(sum(v * v for v in e))
        return [v / norm for v in e] if norm > 0 else [0.0] * len(e)

    def cos(x, i, j, k):
        return sum(a * b for a, b in zip(unit(x, i, j), unit(x, k, j), strict=True))

    total = sum(smooth_l1(cos(s, i, j, k), cos(t, i, j, k)) for i, j, k in itertools.product(range(n), repeat=3))
    return total / n**3


def test_rkd_losses_match_an_independent_float64_computation():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen) * 3
    assert rkd_distance_loss(student, teacher).item() == pytest.approx(reference_distance(student, teacher), rel=1e-5)
    assert rkd_angle_loss(student, teacher).item() == pytest.approx(reference_angle(student, teacher), rel=1e-5)
    d = pairwise_distances(student)
    torch.testing.assert_close(d, torch.cdist(student, student), atol=1e-5, rtol=1e-5)
    assert torch.equal(d.diagonal(), torch.zeros(6))


def test_rkd_losses_are_zero_for_similar_structures_and_the_teacher_side_gets_no_gradient():
    x = torch.randn(5, 4)
    # distances are scale invariant (divided by the mean), angles too
    assert rkd_distance_loss(2 * x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle_loss(3 * x + 1, x).item() == pytest.approx(0.0, abs=1e-6)
    student, teacher = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    (rkd_distance_loss(student, teacher) + rkd_angle_loss(student, teacher)).backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0


# -- the method ----------------------------------------------------------------------------------------------------
def make(**params) -> AMTMLKD:
    torch.manual_seed(0)
    teachers = [create("resnet8", num_classes=10, in_channels=1) for _ in range(3)]
    return AMTMLKD(create("resnet8", num_classes=10, in_channels=1), teachers, AMTMLKDParams(**params))


def batch(size: int = 8) -> Batch:
    gen = torch.Generator().manual_seed(1)
    return Batch(torch.randn(size, 1, 32, 32, generator=gen), torch.randint(0, 10, (size,), generator=gen))


def test_importances_lie_on_the_simplex_and_are_differentiable_wrt_theta_w_and_the_student():
    method = make()
    method.train()
    maps = method.student.forward_features(batch().images)
    scores, mu = method.importances(maps["pooled"])
    assert scores.shape == mu.shape == (8, 3)
    assert (mu >= 0).all()
    torch.testing.assert_close(mu.sum(1), torch.ones(8))
    expected = torch.stack([(maps["pooled"] * method.theta[k] * method.w).sum(1) for k in range(3)], 1)
    torch.testing.assert_close(scores, expected)
    (mu * torch.arange(3.0)).sum().backward()  # any non-constant function of the importances
    for param in (method.theta, method.w):
        assert param.grad is not None and param.grad.abs().sum() > 0
    student_grads = [p.grad for p in method.student.parameters() if p.grad is not None]
    assert student_grads and any(g.abs().sum() > 0 for g in student_grads)


def test_step_output_terms_and_extras():
    assert AMTMLKDParams().reg_weight == 0.0  # off, as the official hint notebooks run (adapter.eval())
    assert "reg" not in make().forward_train(batch(), epoch=0).losses
    method = make(reg_weight=0.1)
    method.train()
    out = method.forward_train(batch(), epoch=0)
    torch.testing.assert_close(out.losses["reg"], 0.1 * (method.w.pow(2).sum() + method.theta.pow(2).sum()))
    assert set(out.losses) == {"ce", "soft", "rkd_distance", "rkd_angle", "hint", "reg"}
    assert out.extras["teacher_weights"].shape == out.extras["theta_w_scores"].shape == (8, 3)
    assert not out.extras["teacher_weights"].requires_grad
    later = method.forward_train(batch(), epoch=5)
    assert set(later.losses) == {"ce", "soft", "rkd_distance", "rkd_angle", "hint"}
    assert not method.theta.requires_grad and not method.w.requires_grad


def test_theta_and_w_are_left_out_of_the_main_optimiser():
    method = make()
    ids = {id(p) for group in method.parameter_groups() for p in group["params"]}
    assert id(method.theta) not in ids and id(method.w) not in ids
    assert all(id(p) in ids for p in method.hint_convs.parameters())
    assert set(method.extra_optimizers()) == {"adapter"}


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_element_mean_and_batchmean_kl_differ_by_the_class_count():
    logits, target = torch.randn(4, 10), torch.softmax(torch.randn(4, 10), 1)
    ratio = soft_target_kl(logits, target, 5.0, "batchmean") / soft_target_kl(logits, target, 5.0, "mean")
    assert ratio.item() == pytest.approx(10.0, rel=1e-6)
    parity = F.kl_div(F.log_softmax(logits / 5.0, 1), target, reduction="mean") * 25.0  # KLDivLoss() default
    torch.testing.assert_close(soft_target_kl(logits, target, 5.0, "mean"), parity)


# -- the two-phase schedule through the trainer --------------------------------------------------------------------
class Loader:
    """Two fixed batches of 8 (a drop_last loader)."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(2)
        self.items = [(torch.randn(8, 1, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen))
                      for _ in range(2)]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def trainer_for(method: AMTMLKD, epochs: int, run_dir=None) -> Trainer:
    config = TrainConfig(epochs=epochs, lr=0.05, device="cpu", channels_last="off", log_every_steps=0)
    return Trainer(method, Loader(), None, config, run_dir=run_dir)


def snapshot(method: AMTMLKD) -> tuple[torch.Tensor, torch.Tensor]:
    return method.theta.detach().clone(), method.w.detach().clone()


def test_adapter_optimiser_trains_theta_w_in_phase_one_then_they_are_frozen():
    method = make(adapter_epochs=1)
    trainer = trainer_for(method, epochs=2)
    theta0, w0 = snapshot(method)
    trainer.method.on_train_start(trainer.state)
    trainer._train_epoch()  # epoch 0: the adapter phase, two steps
    theta1, w1 = snapshot(method)
    assert not torch.equal(theta0, theta1) and not torch.equal(w0, w1)
    assert method.theta.grad is None and method.w.grad is None, "after_step must zero the adapter gradients"
    trainer._end_epoch()  # phase switch
    assert not method.theta.requires_grad and not method.w.requires_grad
    trainer._train_epoch()
    assert torch.equal(theta1, method.theta.detach()) and torch.equal(w1, method.w.detach())
    out = method.forward_train(batch(), trainer.state.epoch)
    assert "reg" not in out.losses


def test_hint_convs_are_trained_by_default_and_frozen_in_parity():
    trained = make()
    frozen = make(train_hint_convs=False)
    for method, should_change in ((trained, True), (frozen, False)):
        before = [c.weight.detach().clone() for c in method.hint_convs]
        assert all(c.weight.abs().max() <= 0.005 for c in method.hint_convs)
        trainer = trainer_for(method, epochs=1)
        trainer.fit()
        for conv, old in zip(method.hint_convs, before, strict=True):
            assert conv.weight.requires_grad == should_change
            assert (not torch.equal(conv.weight.detach(), old)) == should_change
            if not should_change:
                assert conv.weight.grad is None


def test_teacher_level_phase_two_uses_the_frozen_batch_mean_importances():
    method = make(adapter_epochs=1, phase2_weights="teacher_level", rkd_phases="adapter", hint_phases="adapter")
    trainer = trainer_for(method, epochs=2)
    trainer.fit()
    out = method.forward_train(batch(), epoch=1)
    assert set(out.losses) == {"ce", "soft"}
    weights = out.extras["teacher_weights"]
    torch.testing.assert_close(weights, method.teacher_level_weights.expand(8, 3))
    torch.testing.assert_close(weights.sum(1), torch.ones(8))


def test_resume_after_the_phase_switch_restores_theta_w_and_the_adapter_optimiser(tmp_path):
    method = make(adapter_epochs=1)
    trainer = trainer_for(method, epochs=3, run_dir=tmp_path)
    trainer.method.on_train_start(trainer.state)
    for _ in range(2):  # adapter epoch, then one frozen epoch; "killed" here (last.pt written at the epoch end)
        trainer._train_epoch()
        trainer._end_epoch()
    theta, w = snapshot(method)
    momentum = {k: v["momentum_buffer"].clone() for k, v in trainer.extra_optimizers["adapter"].state_dict()
                ["state"].items()}
    resumed = make(adapter_epochs=1)
    assert resumed.theta.requires_grad
    other = trainer_for(resumed, epochs=3, run_dir=tmp_path)
    other.fit(resume=True)
    assert other.state.epoch == 3
    torch.testing.assert_close(resumed.theta.detach(), theta, rtol=0, atol=0)
    torch.testing.assert_close(resumed.w.detach(), w, rtol=0, atol=0)
    assert not resumed.theta.requires_grad and not resumed.w.requires_grad
    state = other.extra_optimizers["adapter"].state_dict()["state"]
    assert set(state) == set(momentum)
    for key, buffer in momentum.items():
        assert torch.equal(state[key]["momentum_buffer"], buffer)


# -- every preset through run_experiment -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return TeacherPool(tmp_path_factory.mktemp("pool"))


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_trains_on_cpu(name, tmp_path, pool):
    config = load_config(name, ["train.max_steps=2", "train.epochs=2", "teachers.epochs=1", "teachers.max_steps=2",
                                f"output.dir={tmp_path}", "train.device=cpu"])
    result, method = run_experiment(config, pool=pool, verbose=False, record_extras=True)
    assert isinstance(method, AMTMLKD)
    assert math.isfinite(result.last_top1)
    assert result.extras and result.extras[-1]["teacher_weights"].shape[1] == 3
