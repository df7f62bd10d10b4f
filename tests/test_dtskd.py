"""DTSKD (docs/methods.md §5.5): the branch network, the α schedules, the losses against float64 re-computations, the
memory banks (writes, parity, bf16, checkpoint/resume) and the exported backbone."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import StopAt

from mkdlab.config import TrainConfig, load_config
from mkdlab.data import DeviceLoader
from mkdlab.engine import Trainer, TrainingInterrupted
from mkdlab.experiment import method_params
from mkdlab.losses.self_distillation import cosine_alpha, linear_alpha, smoothed_kl, structural_loss
from mkdlab.methods.base import Batch
from mkdlab.methods.collectives import Collectives
from mkdlab.methods.dtskd import DTSKD, DTSKDParams
from mkdlab.models import count_parameters, create
from mkdlab.models.branches import MultiBranchNet, TopDownBranches
from mkdlab.typed import ConfigError

#: the state a hook of a one-process run sees (what after_step reads of it).
ONE_PROCESS = SimpleNamespace(collectives=Collectives())

C, B = 10, 6
F64 = torch.float64
#: float64 against a float64 re-computation: only the order of the operations differs (rounding ≈ n·2⁻⁵³ relative
#: for n ≲ 10³ operations), so 1e-10 leaves five orders of magnitude of margin and still catches any wrong term.
F64_TOL = {"rtol": 1e-10, "atol": 1e-12}


def method(student: str = "resnet8", num_samples: int = 20, **params) -> DTSKD:
    torch.manual_seed(0)
    dtskd = DTSKD(create(student, num_classes=C, in_channels=1), params=DTSKDParams(**params))
    dtskd.bind_train_set(num_samples)
    return dtskd


def batch(indices=(3, 7, 11, 12, 15, 19), seed: int = 1) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(len(indices), 1, 32, 32, generator=gen),
                 torch.randint(0, C, (len(indices),), generator=gen), torch.tensor(indices))


def fill_memory(dtskd: DTSKD, seen: list[bool]) -> None:
    """Random probability rows in every bank; ``seen`` flags for the samples of :func:`batch`."""
    gen = torch.Generator().manual_seed(5)
    dtskd.memory.copy_(torch.randn(dtskd.memory.shape, generator=gen).mul(2).softmax(-1))
    dtskd.seen[batch().indices] = torch.tensor(seen)


# -- independent float64 formulas of docs/methods.md §5.5 -------------------------------------------------------------
def kappa(q: torch.Tensor, z: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    q = q.to(F64) + 1e-7
    z = z.to(F64) / t
    log_p = z - torch.logsumexp(z, dim=1, keepdim=True)
    return t * t * (q * (q.log() - log_p)).sum() / z.shape[0]


def reference_hist(outputs, labels, memory_rows, seen, alpha, weights, w_ce=0.2):
    one_hot = torch.eye(C, dtype=F64)[labels]
    hist = 0.0
    for z, rows, w in zip(outputs, memory_rows, weights, strict=True):
        history = torch.where(seen[:, None], rows.to(F64), one_hot)
        hist = hist + w * kappa(alpha * one_hot + (1 - alpha) * history, z)
    return w_ce * hist


def reference_structural(outputs, t=4.0, w_kd=0.8):
    z0 = outputs[0].to(F64) / t
    pi = (z0 - torch.logsumexp(z0, dim=1, keepdim=True)).exp()
    return w_kd * sum(kappa(pi, z, t) for z in outputs[1:])


def sharpen(dtskd: DTSKD, factor: float = 20.0) -> DTSKD:
    """Scale every classifier so that the untrained outputs are far from uniform (losses of order 1)."""
    with torch.no_grad():
        for head in (dtskd.student.fc_layer(), *dtskd.branches.heads):
            head.weight.mul_(factor)
    return dtskd


# -- the network -----------------------------------------------------------------------------------------------
def test_resnet18_branches_have_the_official_parameter_count():
    backbone = create("resnet18", num_classes=100)
    branches = TopDownBranches.for_backbone(backbone)
    assert branches.stage_names == ("stage1", "stage2", "stage3")
    assert count_parameters(branches) == 2_751_788
    assert count_parameters(backbone) == 11_220_132
    assert count_parameters(MultiBranchNet(backbone, branches)) == 13_971_920
    assert [h.in_features for h in branches.heads] == [512] * 3


def test_cifar_resnets_get_two_branches_as_wide_as_the_last_stage():
    dtskd = method()
    assert dtskd.num_outputs == 3 and dtskd.branches.stage_names == ("stage1", "stage2")
    assert [h.in_features for h in dtskd.branches.heads] == [64, 64]
    outputs = dtskd.outputs(batch().images)
    assert [tuple(z.shape) for z in outputs] == [(B, C)] * 3


def test_branches_follow_the_top_down_equations():
    """z_j = fc_j(Φ_j([U_j(t_{j+1}) + L_j(s_j), U_j(t_{j+1})])), t_3 = GAP(s_3), recomputed as float64 matrices."""
    dtskd = method().double().eval()
    images = batch().images.double()
    maps = dtskd.student.forward_features(images)

    def block(seq, x):  # 1×1 conv (no bias) + BN (eval) + ReLU on vectors
        conv, bn = seq[0][0], seq[0][1]
        y = x @ conv.weight.to(F64)[:, :, 0, 0].T
        y = (y - bn.running_mean.to(F64)) / torch.sqrt(bn.running_var.to(F64) + bn.eps)
        return torch.relu(y * bn.weight.to(F64) + bn.bias.to(F64))

    br = dtskd.branches
    t = maps["stage3"].to(F64).mean((2, 3))
    expected = {}
    for j in (1, 0):
        u = block(br.top_downs[j], t)
        lateral = block(br.laterals[j][1], maps[f"stage{j + 1}"].to(F64).mean((2, 3)))
        t = block(br.fusions[j], torch.cat([u + lateral, u], dim=1))
        expected[j] = t @ br.heads[j].weight.to(F64).T + br.heads[j].bias.to(F64)
    outputs = dtskd.outputs(images)
    torch.testing.assert_close(outputs[0], maps["logits"])
    for j in (0, 1):
        torch.testing.assert_close(outputs[j + 1], expected[j], **F64_TOL)


def test_export_returns_the_plain_backbone():
    dtskd = method().eval()
    exported = dtskd.export_student()
    assert exported is dtskd.student and type(exported).__name__ == "ResNet"
    assert count_parameters(exported) == count_parameters(create("resnet8", num_classes=C, in_channels=1))
    images = batch().images
    torch.testing.assert_close(exported(images), dtskd.outputs(images)[0])
    torch.testing.assert_close(dtskd(images), dtskd.outputs(images)[0])
    for j in range(3):
        torch.testing.assert_close(dtskd.network().output(j)(images), dtskd.outputs(images)[j])


# -- α schedules -----------------------------------------------------------------------------------------------
def test_cosine_and_linear_alpha_at_the_first_middle_and_last_epoch():
    e = 300
    for epoch in (0, 150, 299):
        assert cosine_alpha(epoch, e) == pytest.approx(0.9 * (1 + math.cos(math.pi * epoch / e)) / 2, abs=1e-15)
        assert linear_alpha(epoch, e) == pytest.approx(1 - 0.8 * (epoch + 1) / e, abs=1e-15)
    assert cosine_alpha(0, e) == pytest.approx(0.9)
    assert cosine_alpha(150, e) == pytest.approx(0.45)
    assert cosine_alpha(299, e) == pytest.approx(0.45 * (1 - math.cos(math.pi / 300)))  # ≈ 2.5e-5
    assert linear_alpha(0, e) == pytest.approx(1 - 0.8 / 300)
    assert linear_alpha(149, e) == pytest.approx(0.6)
    assert linear_alpha(299, e) == pytest.approx(0.2)
    assert cosine_alpha(5, 10, c_max=0.8, c_min=0.2) == pytest.approx(0.5)


def test_the_schedule_length_comes_from_the_run_or_the_params():
    dtskd = method(alpha_schedule="linear")
    assert dtskd.alpha_at(0) == pytest.approx(1 - 0.8 / 300)  # no run yet: the paper's E
    dtskd.on_train_start(SimpleNamespace(total_epochs=30))
    assert dtskd.alpha_at(14) == pytest.approx(0.6)
    fixed = method(alpha_schedule="linear", epochs=10)
    fixed.on_train_start(SimpleNamespace(total_epochs=30))
    assert fixed.alpha_at(9) == pytest.approx(0.2)


# -- the losses ------------------------------------------------------------------------------------------------
def test_smoothed_kl_matches_its_formula():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, C, generator=gen, dtype=F64).softmax(1)
    z = torch.randn(B, C, generator=gen, dtype=F64) * 3
    for t in (1.0, 4.0):
        torch.testing.assert_close(smoothed_kl(q, z, t), kappa(q, z, t), rtol=1e-12, atol=0)
    assert smoothed_kl(q.float(), z.bfloat16()).dtype == torch.float32


def test_loss_matches_a_float64_recomputation_of_section_5_5():
    """resnet18 (3 branches): hist with 3/1/1/1 on label/history mixtures (two samples without history), 1e-7
    smoothing, cosine α at epoch 7 of 20, structural at T = 4, 0.2/0.8 (8×8 images keep resnet18 cheap)."""
    dtskd = sharpen(method("resnet18", epochs=20).eval()).double()  # float64: the arithmetic checked exactly
    seen = [True, False, True, True, False, True]
    fill_memory(dtskd, seen)
    b = batch()
    b.images = b.images[:, :, :8, :8].double()
    out = dtskd.forward_train(b, epoch=7)
    assert set(out.losses) == {"hist", "structural"}
    outputs = dtskd.outputs(b.images)
    hist = reference_hist(outputs, b.labels, dtskd.memory[:, b.indices], torch.tensor(seen), cosine_alpha(7, 20),
                          (3.0, 1.0, 1.0, 1.0))
    assert 0.1 < hist < 100 and 0.1 < reference_structural(outputs) < 100
    torch.testing.assert_close(out.losses["hist"], hist, **F64_TOL)
    torch.testing.assert_close(out.losses["structural"], reference_structural(outputs), **F64_TOL)


def test_hskd_off_is_ce_plus_structural():
    dtskd = sharpen(method(hskd=False, ce_weight=0.3, kd_weight=0.7).eval()).double()
    b = batch()
    b.images = b.images.double()
    out = dtskd.forward_train(b, epoch=3)
    assert set(out.losses) == {"ce", "structural"}
    outputs = [z.to(F64) for z in dtskd.outputs(b.images)]
    z0 = outputs[0]
    ce = -(z0 - torch.logsumexp(z0, 1, keepdim=True))[torch.arange(B), b.labels].mean()
    torch.testing.assert_close(out.losses["ce"], 0.3 * ce, **F64_TOL)
    torch.testing.assert_close(out.total(), 0.3 * ce + reference_structural(outputs, w_kd=0.7), **F64_TOL)
    dtskd.after_step(ONE_PROCESS, b, out)
    assert not dtskd.seen.any() and not dtskd.memory.any()


def test_detach_structural_teacher_decides_whether_the_backbone_output_gets_its_gradient():
    outputs = [torch.randn(B, C, dtype=F64, requires_grad=True) for _ in range(3)]
    structural_loss(outputs).backward()
    assert outputs[0].grad is not None and outputs[0].grad.abs().sum() > 0
    detached = [z.detach().requires_grad_() for z in outputs]
    structural_loss(detached, detach_teacher=True).backward()
    assert detached[0].grad is None and detached[1].grad.abs().sum() > 0

    for detach in (False, True):  # in the method: the backbone's classifier is reached only through z
        dtskd = method(detach_structural_teacher=detach)
        dtskd.forward_train(batch(), epoch=0).losses["structural"].backward()
        fc_grad = dtskd.student.fc.weight.grad
        assert (fc_grad is None or not fc_grad.any()) == detach
        assert dtskd.branches.heads[0].weight.grad.abs().sum() > 0


def test_branch_weights_need_one_value_or_one_per_branch():
    assert method(branch_weights=(1.0, 2.0)).output_weights == (3.0, 1.0, 2.0)
    with pytest.raises(ConfigError, match="2 branches"):
        method(branch_weights=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="cos_min"):
        DTSKDParams(cos_max=0.5, cos_min=0.6)


# -- memory banks ----------------------------------------------------------------------------------------------
def test_memory_is_written_at_the_sample_indices_and_only_there():
    dtskd = sharpen(method().eval())
    b = batch()
    out = dtskd.forward_train(b, epoch=0)
    assert not dtskd.memory.any()  # written after the optimiser step, not during the forward
    dtskd.after_step(ONE_PROCESS, b, out)
    expected = torch.stack([z.softmax(1) for z in dtskd.outputs(b.images)])
    torch.testing.assert_close(dtskd.memory[:, b.indices], expected)
    others = torch.ones(20, dtype=torch.bool)
    others[b.indices] = False
    assert not dtskd.memory[:, others].any()
    assert torch.equal(dtskd.seen, ~others)
    assert dtskd.memory.dtype == torch.float32

    # the next visit of these samples learns from that history: the targets are no longer one-hot (checked in
    # float64: the banks' float32 rows convert exactly)
    dtskd.double().on_train_start(SimpleNamespace(total_epochs=4))
    b.images = b.images.double()
    hist = dtskd.forward_train(b, epoch=2).losses["hist"]
    outputs, rows = dtskd.outputs(b.images), dtskd.memory[:, b.indices]
    with_history = reference_hist(outputs, b.labels, rows, torch.ones(B, dtype=torch.bool), cosine_alpha(2, 4),
                                  (3.0, 1.0, 1.0))
    one_hot_hist = reference_hist(outputs, b.labels, rows, torch.zeros(B, dtype=torch.bool), cosine_alpha(2, 4),
                                  (3.0, 1.0, 1.0))
    torch.testing.assert_close(hist, with_history, **F64_TOL)
    assert not torch.isclose(hist, one_hot_hist, rtol=1e-2)


def test_parity_never_writes_the_memory_so_targets_stay_one_hot():
    dtskd = sharpen(method(parity=True).eval()).double()
    b = batch()
    b.images = b.images.double()
    for epoch in range(3):
        out = dtskd.forward_train(b, epoch=epoch)
        dtskd.after_step(ONE_PROCESS, b, out)
    assert not dtskd.memory.any() and not dtskd.seen.any()
    hist = reference_hist(dtskd.outputs(b.images), b.labels, dtskd.memory[:, b.indices],
                          torch.zeros(B, dtype=torch.bool), 0.5, (3.0, 1.0, 1.0))  # one-hot: α is irrelevant
    torch.testing.assert_close(out.losses["hist"], hist, **F64_TOL)


def test_memory_stays_float32_under_bf16_autocast():
    dtskd = method()
    b = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dtskd.forward_train(b, epoch=0)
    assert out.logits.dtype == torch.bfloat16
    dtskd.after_step(ONE_PROCESS, b, out)
    assert dtskd.memory.dtype == torch.float32
    torch.testing.assert_close(dtskd.memory[0, b.indices], out.logits.float().softmax(1))


def test_forward_train_needs_indices_and_bound_banks():
    dtskd = DTSKD(create("resnet8", num_classes=C, in_channels=1))
    with pytest.raises(RuntimeError, match="bind_train_set"):
        dtskd.forward_train(batch(), epoch=0)
    dtskd.bind_train_set(20)
    with pytest.raises(ValueError, match="with_index"):
        dtskd.forward_train(Batch(batch().images, batch().labels), epoch=0)


# -- training: checkpoint and resume ---------------------------------------------------------------------------
N, BATCH = 48, 16  # 3 steps per epoch, 2 epochs


def trainer(run_dir=None, callbacks=()) -> Trainer:
    gen = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (N, 1, 16, 16), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, C, (N,), generator=gen)
    common = dict(mean=[0.5], std=[0.25], device="cpu", seed=0, with_index=True)
    train = DeviceLoader(images, labels, BATCH, train=True, **common)
    test = DeviceLoader(images, labels, 48, train=False, **common)
    torch.manual_seed(0)
    dtskd = DTSKD(create("resnet8", num_classes=C, in_channels=1))
    config = TrainConfig(epochs=2, lr=0.05, nesterov=True, milestones=[1], milestones_of=2, device="cpu",
                         log_every_steps=0)
    return Trainer(dtskd, train, test, config, run_dir=run_dir, callbacks=callbacks)


def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    reference = trainer()
    reference_result = reference.fit()
    assert reference.method.seen.all() and reference.method.schedule_epochs == 2

    interrupted = trainer(tmp_path, callbacks=[StopAt(5)])  # in the middle of epoch 2
    with pytest.raises(TrainingInterrupted):
        interrupted.fit()
    saved_memory = interrupted.method.memory.clone()

    resumed = trainer(tmp_path)
    assert not resumed.method.seen.any()
    result = resumed.fit(resume=True)
    assert resumed.method.schedule_epochs == 2
    assert not torch.equal(saved_memory, resumed.method.memory)  # the banks moved on after the resume
    for key, value in reference.method.state_dict().items():
        assert torch.equal(value, resumed.method.state_dict()[key]), key
    assert [r["test_top1"] for r in result.history] == [r["test_top1"] for r in reference_result.history]


def test_presets_load():
    small, paper = load_config("dtskd"), load_config("dtskd_cifar100")
    assert small.teachers is None and small.student == "resnet8" and small.data.dataset == "fashion_mnist_mini"
    assert small.train.nesterov and small.train.lr == 0.05 and small.train.epochs == 30
    assert paper.student == "resnet18" and paper.data.dataset == "cifar100" and paper.data.batch_size == 128
    assert (paper.train.epochs, paper.train.lr, paper.train.milestones) == (300, 0.1, [150, 225])
    assert method_params(paper) == DTSKDParams(branch_weights=(1.0, 1.0, 1.0))
