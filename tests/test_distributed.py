"""One run on two processes (``torchrun``, gloo on the CPU): the device loader's shards, identical weights on every
rank, equality with one process, an elastic restart and a resume on another number of processes.

The comparisons with one process run in float64 (tests/torchrun_cli.py ``--float64``; AMTML-KD, whose losses compute
in float32, is compared between the ranks only). What differs between two
ranks and one process is only the order of the sums: each rank sums the gradient and the batch-norm statistics over
its 8 samples and the ranks then add their parts, where one process sums all 16 at once. In float64 that
reassociation costs a few units of 2^-53 ≈ 1.1e-16 per sum; through the 16·32·32-term sums of a convolution's
weight gradient and the cancellations of batch norm's backward it grows to the 1.6e-14 measured on the gradients
after one step, and to the 4e-14–9e-14 measured on the weights after three and six steps. ``TOLERANCE`` (1e-9)
leaves that a ten-thousandfold margin, while any real difference — a rank holding other samples, a gradient not
averaged, per-rank batch statistics (without SyncBatchNorm the weights differ by 1.3e-2 after three steps), a
memory bank missing the other rank's writes — is orders of magnitude larger. (In float32 the
same reassociation, through oneDNN kernels whose algorithm depends on the batch size, already moves the first
layer's weights by ~1e-3 relative after one step: no tolerance derived from float32 rounding would be tight.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mkdlab.data.device_loader import DeviceLoader, shard_bounds
from mkdlab.engine.distributed import DistributedContext
from mkdlab.methods.amtml_kd import AMTMLKDParams

HARNESS = Path(__file__).with_name("torchrun_cli.py")
ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-9
TINY = ["data.batch_size=16", "train.device=cpu", "train.log_every_steps=0", "train.sync_batchnorm=true"]
TEACHERS = ["teachers.arch=resnet8", "teachers.seeds=[0,1]", "teachers.epochs=1", "teachers.max_steps=2"]

pytestmark = pytest.mark.slow


def launch(dump: Path, home: Path, commands: list[list[str]], *, ranks: int = 2, flags: tuple[str, ...] = (),
           max_restarts: int = 0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The harness on ``ranks`` processes (``torchrun --standalone``, a free port) or, with ``ranks=1``, in one
    plain process; ``commands`` are mkdlab command lines."""
    dump.mkdir(parents=True, exist_ok=True)
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
              f"--max-restarts={max_restarts}", "--monitor-interval=0.2"] if ranks > 1 else [sys.executable]
    argv = [*runner, str(HARNESS), str(dump), *flags]
    for command in commands:
        argv += ["--", *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKDLAB_HOME": str(home),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if max_restarts:  # a restarted group must not read the last attempt's addresses (PyTorch issue 135712)
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def train(name: str, preset: str, out: Path, *overrides: str, float64: bool = True) -> list[str]:
    return [*(["--float64"] if float64 else []), "train", preset, f"name={name}", f"output.dir={out}", *TINY,
            *overrides]


def weights(dump: Path, name: str, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(dump / f"{name}_rank{rank}.pt", weights_only=True)


def assert_identical(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"the ranks differ in {different[:5]}"


def assert_close(distributed: dict[str, torch.Tensor], single: dict[str, torch.Tensor]) -> None:
    assert distributed.keys() == single.keys()
    for key, value in single.items():
        if value.is_floating_point():
            assert value.dtype == torch.float64, key
            gap = (distributed[key] - value).abs().max().item() if value.numel() else 0.0
            assert gap <= TOLERANCE, f"{key}: two ranks and one process differ by {gap:.3g}"
        else:
            assert torch.equal(distributed[key], value), key


# -- the device loader's shards -------------------------------------------------------------------------------------
@pytest.mark.parametrize("drop_last", [False, True])
def test_the_ranks_blocks_of_each_batch_join_into_the_batch_of_one_process(drop_last):
    images = torch.randint(0, 256, (21, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(21) % 10

    def loader(rank: int, world: int) -> DeviceLoader:
        return DeviceLoader(images, labels, 8, train=True, mean=[0.5], std=[0.25], seed=3, with_index=True,
                            drop_last=drop_last, rank=rank, world_size=world)

    for epoch in (0, 1):
        whole = list(_epoch(loader(0, 1), epoch))
        parts = [list(_epoch(loader(rank, 3), epoch)) for rank in range(3)]
        assert len(whole) == len(parts[0]) == len(loader(2, 3)) == (2 if drop_last else 3)
        for step, batch in enumerate(whole):
            for field in range(3):
                joined = torch.cat([part[step][field] for part in parts])
                assert torch.equal(joined, batch[field])
    assert [shard_bounds(16, 21, rank, 3) for rank in range(3)] == [(16, 18), (18, 20), (20, 21)]
    assert loader(0, 3).global_batch_size(2) == 5


def _epoch(loader: DeviceLoader, epoch: int):
    loader.set_epoch(epoch)
    return iter(loader)


def test_a_batch_that_cannot_give_every_rank_a_sample_is_refused():
    images = torch.zeros(17, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="cannot give each of 2 ranks"):
        DeviceLoader(images, torch.zeros(17), 8, train=True, mean=[0], std=[1], rank=0, world_size=2)
    DeviceLoader(images, torch.zeros(17), 8, train=True, mean=[0], std=[1], rank=0, world_size=2, drop_last=True)


def test_an_uneven_last_batch_weights_each_rank_by_its_share():
    context = DistributedContext(rank=0, world_size=2)
    assert context.loss_weight(3, 5) == pytest.approx(6 / 5)
    assert context.loss_weight(8, 16) == 1.0
    assert DistributedContext.single().loss_weight(5, 5) == 1.0


# -- two processes ----------------------------------------------------------------------------------------------------
def test_two_ranks_hold_identical_weights_equal_to_one_process(tmp_path):
    """ce and DTSKD (its memory banks) against one process; AMTML-KD (Θ/W and their own SGD, in float32) between
    the ranks; 3 steps of a global batch of 16."""
    home, two, one = tmp_path / "home", tmp_path / "two", tmp_path / "one"
    compared = [train("ce", "ce", two / "runs", "train.max_steps=3"),
                train("dtskd", "dtskd", two / "runs", "train.max_steps=3", "student=resnet8")]
    # with the regulariser of LR_adaptive_learning: without it Θ's gradient through the saturated importances moves
    # it by 2e-6 in 3 steps (measured), too little to tell "moved the same way on both ranks" from "did not move"
    amtml = train("amtml", "amtml_kd", two / "runs", "train.max_steps=3", "method.params.reg_weight=0.1", *TEACHERS,
                  float64=False)
    launch(two, home, [*compared, amtml])
    launch(one, home, [[word.replace(str(two), str(one)) for word in command] for command in compared], ranks=1)
    for name in ("ce", "dtskd", "amtml"):
        assert_identical(weights(two, name, 0), weights(two, name, 1))
    for name in ("ce", "dtskd"):
        assert_close(weights(two, name), weights(one, name))
    dtskd = weights(two, "dtskd")
    assert int(dtskd["seen"].sum()) == 3 * 16  # every rank wrote both ranks' samples
    theta = weights(two, "amtml")["theta"]
    initial = torch.randn(theta.shape, generator=torch.Generator().manual_seed(AMTMLKDParams().latent_seed))
    assert (theta - initial).abs().max() > 1e-4  # the adapter SGD moved Θ (the same way on both ranks)
    assert (two / "runs" / "ce" / "last.pt").exists()


@pytest.fixture(scope="module")
def six_steps_in_one_process(tmp_path_factory) -> dict[str, torch.Tensor]:
    """ce for 6 steps in one process, the reference of the resumed runs."""
    folder = tmp_path_factory.mktemp("reference")
    launch(folder, folder / "home", [train("ce", "ce", folder / "runs", "train.max_steps=6")], ranks=1)
    return weights(folder, "ce")


def test_a_killed_rank_is_restarted_by_torchrun_and_resumes_from_the_last_checkpoint(tmp_path,
                                                                                     six_steps_in_one_process):
    """Rank 1 dies after step 5; ``--max-restarts 1`` restarts the group, which resumes from the step-4
    checkpoint and ends with the weights of an uninterrupted run."""
    launch(tmp_path, tmp_path / "home", [train("ce", "ce", tmp_path / "runs", "train.max_steps=6",
                                               "train.checkpoint_every_steps=2")],
           flags=("--kill-rank-at-step", "5"), max_restarts=1)
    assert [(tmp_path / f"ce_resumed_rank{rank}.txt").read_text() for rank in (0, 1)] == ["4", "4"]
    assert_identical(weights(tmp_path, "ce", 0), weights(tmp_path, "ce", 1))
    assert_close(weights(tmp_path, "ce"), six_steps_in_one_process)


def test_a_checkpoint_of_two_ranks_resumes_in_one_process(tmp_path, six_steps_in_one_process):
    """Stopped after step 4 on two ranks (the checkpoint-and-stop of an interrupt), finished by one process: the
    checkpoint does not depend on the number of processes."""
    command = train("ce", "ce", tmp_path / "runs", "train.max_steps=6")
    stopped = launch(tmp_path / "two", tmp_path / "home", [command], flags=("--stop-at-step", "4"), check=False)
    assert stopped.returncode != 0 and "training stopped at epoch 1, step 4" in stopped.stderr
    launch(tmp_path / "one", tmp_path / "home", [[*command, "--resume"]], ranks=1)
    assert (tmp_path / "one" / "ce_resumed_rank0.txt").read_text() == "4"
    assert_close(weights(tmp_path / "one", "ce"), six_steps_in_one_process)
