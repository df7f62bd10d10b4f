"""The training engine: schedule, determinism, exact resume, atomic and safe checkpoints, NaN handling."""

from __future__ import annotations

import os
import pickle
import signal

import pytest
import torch
from helpers import StopAt
from torch import nn

from mkdlab.config import TrainConfig
from mkdlab.data import DeviceLoader
from mkdlab.engine import NonFiniteLossError, Trainer, TrainingInterrupted, lr_factor
from mkdlab.engine.schedule import scale_milestones
from mkdlab.methods.ce import CrossEntropy
from mkdlab.methods.kd import KD
from mkdlab.storage import CheckpointError, load_safely, save_atomic

N, CLASSES, BATCH = 96, 4, 32  # 3 steps per epoch


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, CLASSES),
    )


def loaders(seed: int = 0) -> tuple[DeviceLoader, DeviceLoader]:
    gen = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (N, 1, 16, 16), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, CLASSES, (N,), generator=gen)
    common = dict(mean=[0.5], std=[0.25], device="cpu", seed=seed)
    return (DeviceLoader(images, labels, BATCH, train=True, **common),
            DeviceLoader(images, labels, 64, train=False, **common))


def config(**changes) -> TrainConfig:
    base = dict(epochs=3, lr=0.1, milestones=[2], milestones_of=3, device="cpu", log_every_steps=0, nesterov=True)
    base.update(changes)
    return TrainConfig(**base)


def make_trainer(run_dir=None, callbacks=(), method=None, **changes) -> Trainer:
    train, test = loaders(seed=changes.get("seed", 0))
    return Trainer(method or CrossEntropy(tiny_net()), train, test, config(**changes), run_dir=run_dir,
                   callbacks=callbacks)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.method.state_dict().items()}


def strip_times(history):
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "epoch_time_s")} for row in history]


# -- schedule -------------------------------------------------------------------------------------------------------
def test_step_schedule_of_the_cifar_recipe():
    milestones = [150, 180, 210]
    assert [lr_factor(e, milestones) for e in (0, 149, 150, 179, 180, 209, 210, 239)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert scale_milestones(milestones, of=240, total=240) == milestones
    assert scale_milestones(milestones, of=240, total=30) == [19, 23, 26]
    assert scale_milestones(milestones, of=240, total=8) == [5, 6, 7]


def test_trainer_applies_the_scaled_schedule():
    trainer = make_trainer(epochs=8, milestones=[150, 180, 210], milestones_of=240, lr=0.05)
    assert [trainer.lr_at(e) for e in range(8)] == pytest.approx(
        [0.05] * 5 + [0.005, 0.0005, 0.00005])
    result = trainer.fit()
    assert [row["lr"] for row in result.history] == pytest.approx([trainer.lr_at(e) for e in range(8)])


# -- determinism and resume -----------------------------------------------------------------------------------------
def test_same_seed_same_history_and_weights():
    a, b = make_trainer(), make_trainer()
    ha, hb = a.fit().history, b.fit().history
    assert strip_times(ha) == strip_times(hb)
    for k, v in weights(a).items():
        assert torch.equal(v, weights(b)[k]), k


def test_a_different_seed_changes_the_run():
    a, b = make_trainer(), make_trainer(seed=1)
    a.fit(), b.fit()
    assert not torch.equal(weights(a)["student.0.weight"], weights(b)["student.0.weight"])


@pytest.mark.parametrize("stop_step", [4, 6])  # 4: in the middle of epoch 2; 6: at the end of epoch 2
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, stop_step):
    reference = make_trainer()
    reference_result = reference.fit()

    interrupted = make_trainer(tmp_path, callbacks=[StopAt(stop_step)])
    with pytest.raises(TrainingInterrupted, match="resume"):
        interrupted.fit()
    assert interrupted.state.global_step == stop_step

    resumed = make_trainer(tmp_path)
    result = resumed.fit(resume=True)
    for key, value in weights(reference).items():
        assert torch.equal(value, weights(resumed)[key]), key
    assert resumed.optimizer.state_dict()["state"].keys() == reference.optimizer.state_dict()["state"].keys()
    for key, state in reference.optimizer.state_dict()["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed.optimizer.state_dict()["state"][key]["momentum_buffer"])
    assert strip_times(result.history) == strip_times(reference_result.history)


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    trainer = make_trainer(tmp_path, callbacks=[StopAt(2, use_signal=True)])
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    state = load_safely(tmp_path / "last.pt")
    assert state["global_step"] == 2 and state["epoch"] == 0 and state["step_in_epoch"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_step_budget_stops_exactly(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, epochs=10)
    result = trainer.fit()
    assert trainer.state.global_step == 4 and len(result.history) == 2
    assert (tmp_path / "best_student.pt").exists()


def test_last_and_best_accuracy_are_both_kept():
    result = make_trainer(epochs=4).fit()
    tops = [row["test_top1"] for row in result.history]
    assert result.last_top1 == tops[-1]
    assert result.best_top1 == max(tops) and tops[result.best_epoch - 1] == max(tops)


# -- checkpoints --------------------------------------------------------------------------------------------------
def test_a_crash_during_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_atomic({"value": torch.tensor(1)}, path)

    def crash(obj, handle, *args, **kwargs):
        handle.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"value": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert load_safely(path)["value"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pt"):
        load_safely(path)
    assert not marker.exists()
    with path.open("wb") as handle:  # a plain pickle, not a torch zip file
        pickle.dump(_Exploit(marker), handle)
    with pytest.raises(CheckpointError):
        load_safely(path)
    assert not marker.exists()


def test_a_truncated_checkpoint_names_the_file(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.fit()
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt or truncated"):
        make_trainer(tmp_path).fit(resume=True)


def test_a_checkpoint_of_another_model_says_what_does_not_match(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()
    other = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, CLASSES))
    trainer = make_trainer(tmp_path, method=CrossEntropy(other))
    with pytest.raises(CheckpointError, match=r"last\.pt does not match.*(missing|unexpected|shape)"):
        trainer.fit(resume=True)


def test_not_a_training_checkpoint(tmp_path):
    save_atomic({"weights": torch.zeros(2)}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="not an mkdlab training checkpoint"):
        make_trainer(tmp_path).fit(resume=True)


# -- failures and frozen teachers --------------------------------------------------------------------------------------
class ExplodingCE(CrossEntropy):
    """CE that turns into NaN at the third step."""

    calls = 0

    def forward_train(self, batch, epoch):
        out = super().forward_train(batch, epoch)
        type(self).calls += 1
        if type(self).calls == 3:
            out.losses["ce"] = out.losses["ce"] * float("nan")
        return out


def test_a_nan_loss_stops_with_advice_and_keeps_the_last_finite_state(tmp_path):
    ExplodingCE.calls = 0
    trainer = make_trainer(tmp_path, method=ExplodingCE(tiny_net()))
    with pytest.raises(NonFiniteLossError, match=r"ce.*epoch 1, step 3.*Lower train\.lr"):
        trainer.fit()
    state = load_safely(tmp_path / "last.pt")
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_teachers_stay_frozen_and_in_eval_mode():
    teacher = tiny_net(seed=5)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = make_trainer(method=KD(tiny_net(), [teacher]))
    assert not teacher.training
    trainer.fit()
    trainer.method.train()
    assert not teacher.training and trainer.method.student.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_recorded_extras_cover_every_training_sample(tmp_path):
    from mkdlab.methods.weighted_kd import AverKD

    train, test = loaders()
    trainer = Trainer(AverKD(tiny_net(), [tiny_net(1), tiny_net(2)]), train, test, config(epochs=2), run_dir=tmp_path,
                      record_extras=True)
    result = trainer.fit()
    assert len(result.extras) == 2
    weights, labels = result.extras[0]["teacher_weights"], result.extras[0]["labels"]
    assert weights.shape == (N, 2) and labels.shape == (N,)
    torch.testing.assert_close(weights.sum(1), torch.ones(N))
    saved = load_safely(tmp_path / "extras" / "epoch_002.pt")
    assert torch.equal(saved["labels"], result.extras[1]["labels"])
