"""Each seed method's distinguishing mechanism is at work in a short real run of its shipped preset.

The runs use the mini set, the CPU, the three resnet20 teachers shipped in the package (``teachers.epochs=8``: no
teacher is trained) and a handful of steps, without evaluation. Each assertion is one that the mechanism switched
off (or scaled away) would fail: AMTML-KD with the old regulariser 0.1 is run too and must collapse to 1/K.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mkdlab.config import load_config
from mkdlab.data import make_loaders
from mkdlab.engine import Trainer
from mkdlab.experiment import build_method, load_teachers, teachers_for
from mkdlab.methods.base import TrainingHooks
from mkdlab.teachers import TeacherPool

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> TeacherPool:
    """An empty home pool: the shipped teachers are the only entries."""
    return TeacherPool(tmp_path_factory.mktemp("pool"))


def train(preset: str, overrides: list[str], pool: TeacherPool, callbacks=(),
          before=None) -> tuple[Trainer, torch.nn.Module]:
    """``preset`` with ``overrides`` trained on the CPU (no test set), with its extras recorded; ``before(method)``
    runs on the built method before training."""
    config = load_config(preset, ["teachers.epochs=8", "train.device=cpu", "train.log_every_steps=0", *overrides])
    config = dataclasses.replace(config, teachers=teachers_for(config.method.name, config.teachers))
    teachers = load_teachers(config, pool, verbose=False) if config.teachers is not None else []
    method = build_method(config, teachers)
    train_loader, _ = make_loaders(config.data.dataset, config.data.batch_size, device=CPU,
                                   drop_last=method.needs_drop_last, with_index=method.needs_indices,
                                   seed=config.train.seed)
    if before is not None:
        before(method)
    trainer = Trainer(method, train_loader, None, config.train, record_extras=True, callbacks=callbacks)
    trainer.fit()
    return trainer, method


def probe_images(n: int = 128) -> torch.Tensor:
    loader, _ = make_loaders("fashion_mnist_mini", n, device=CPU, seed=7)
    return next(iter(loader))[0]


# -- AMTML-KD ----------------------------------------------------------------------------------------------------
AMTML_ADAPTER_STEPS = ["data.batch_size=16", "train.epochs=1", "train.max_steps=80", "method.params.adapter_epochs=1"]


@pytest.fixture(scope="module")
def amtml_importances(pool) -> dict[str, torch.Tensor]:
    """Importances (B×K) on probe images with Θ, W as 80 adapter steps of the ``amtml_kd`` preset left them: with
    the default (no regulariser) and with the former default 0.1 (‖W‖² + ‖Θ‖²)."""
    found = {}
    for label, extra in (("default", []), ("reg 0.1", ["method.params.reg_weight=0.1"])):
        _, method = train("amtml_kd", AMTML_ADAPTER_STEPS + extra, pool)
        method.eval()
        with torch.no_grad():
            found[label] = method.importances(method.student.forward_features(probe_images())["pooled"])[1]
    return found


@pytest.mark.slow
def test_amtml_importances_do_not_collapse_to_uniform_without_the_old_regulariser(amtml_importances):
    k = 3
    assert (amtml_importances["default"] - 1 / k).abs().max() > 0.2  # far from AVER-KD's 1/K
    assert (amtml_importances["reg 0.1"] - 1 / k).abs().max() < 0.02  # the former default: every μ is 1/K


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured (i14): without the regulariser the adapter SGD saturates the softmax "
                                       "on one teacher (0.9999 for every probe sample after 80 steps, per-teacher "
                                       "std 0.0004): not uniform, but not per-sample either")
def test_amtml_importances_vary_per_sample_after_the_adapter_phase(amtml_importances):
    assert amtml_importances["default"].std(0).max() > 0.01


# -- DE-MKD and EBKD ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["de_mkd", "ebkd"])
def test_entropy_weights_vary_per_sample(preset, pool):
    trainer, _ = train(preset, ["train.epochs=1", "train.max_steps=2"], pool)
    weights = trainer.extras_history[-1]["teacher_weights"]  # normalised to sum 1 per sample
    assert weights.shape[1] == 3
    torch.testing.assert_close(weights.sum(1), torch.ones(weights.shape[0]))
    spread = weights.max(1).values - weights.min(1).values
    assert spread.mean() > 0.05  # at the entropy temperature τ = 4 this is about 0.02 on these teachers
    assert weights.std(0).min() > 0.01  # each teacher's weight changes from sample to sample


# -- MMKD --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mmkd_meta_steps_move_the_weight_networks(pool):
    probe = probe_images(64)
    captured = {}

    def before(method) -> None:
        with torch.no_grad():
            targets = method.teacher_targets(probe)
            logits, feature_map, _ = method.student_view()(probe)
            captured["inputs"] = (logits, feature_map, targets)
            captured["before"] = method.teacher_weights(logits, feature_map, targets)

    _, method = train("mmkd", ["train.epochs=1", "train.max_steps=6"], pool, before=before)
    with torch.no_grad():
        after = method.teacher_weights(*captured["inputs"])
    for name, old, new in zip(("logit weights", "feature weights"), captured["before"], after, strict=True):
        assert (new - old).abs().max() > 1e-4, name  # the meta steps after batches 0 and 5 changed φ's output


# -- DTSKD -------------------------------------------------------------------------------------------------------
def test_dtskd_memory_banks_hold_the_students_past_predictions(pool):
    written = {}

    class Record(TrainingHooks):
        def after_step(self, state, batch, output) -> None:
            written[state.global_step] = (batch.indices.clone(), output.carry["probs"].clone())

    _, method = train("dtskd", ["train.epochs=1", "train.max_steps=3"], pool, callbacks=[Record()])
    assert len(written) == 3
    seen = torch.cat([indices for indices, _ in written.values()])
    assert int(method.seen.sum()) == seen.numel() == seen.unique().numel()
    for indices, probs in written.values():
        torch.testing.assert_close(method.memory[:, indices], probs)  # what the student predicted at that step
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))


# -- JCS-MKD -----------------------------------------------------------------------------------------------------
def uskd_zipf_labels(student_logits: torch.Tensor, head_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """USKD's non-target labels, transcribed from ``yzd-v/cls_KD`` ``mmcls/models/dis_losses/uskd.py``
    (lines 53-87: ranking on ``log_softmax`` of the student, softmax of the weak head, Zipf 1/rank)."""
    n, c = student_logits.shape
    label = labels.view(n, 1)
    s_i = F.log_softmax(student_logits, dim=1)
    s_t = torch.gather(s_i, 1, label)
    w_i = F.softmax(head_logits, dim=1)
    w_t = torch.gather(w_i, 1, label)
    rank = w_i / (1 - w_t.sum(1, True) + 1e-6) + s_i / (1 - s_t.sum(1, True) + 1e-6)
    _, rank = torch.sort(rank, descending=True, dim=-1)
    z_i = (1 / torch.arange(1, c + 1, dtype=student_logits.dtype)).repeat(n, 1)
    z_i = torch.gather(z_i, dim=1, index=torch.argsort(rank))
    mask = torch.ones_like(student_logits).scatter_(1, label, 0).bool()
    nz_i = z_i[mask].reshape(n, -1)
    return nz_i / nz_i.sum(dim=1, keepdim=True)


def test_jcs_mkd_non_target_labels_follow_the_uskd_ranking(pool):
    from mkdlab.losses.cam import ranking_scores, zipf_nontarget_labels

    _, method = train("jcs_mkd", ["train.epochs=1", "train.max_steps=2"], pool)
    method.eval()
    probe = probe_images(64)
    labels = torch.arange(64) % 10
    with torch.no_grad():
        z = method.student(probe)
        h = method.weak_head(z)
        ours = zipf_nontarget_labels(ranking_scores(h, z, labels, method.params.ranking), labels)
    mask = torch.ones_like(z).scatter_(1, labels[:, None], 0).bool()
    torch.testing.assert_close(ours[mask].reshape(64, -1), uskd_zipf_labels(z, h, labels))
    probs_variant = zipf_nontarget_labels(ranking_scores(h, z, labels, "probs"), labels)
    assert not torch.allclose(probs_variant, ours)  # the option ranks differently on the same outputs
