"""``python -m mkdlab`` under ``torchrun``, with the hooks the distributed tests need (run by test_distributed.py):

    torchrun --standalone --nproc_per_node 2 tests/torchrun_cli.py DUMP [--kill-rank-at-step K] \
        [--stop-at-step K] -- [--float64] train PRESET overrides… [-- [--float64] train PRESET overrides…]

Each ``--``-separated command goes to :func:`mkdlab.cli.main`, all of them in the same process group. Every rank
writes, when a run's ``fit`` returns, its method's state (teachers left out) to ``DUMP/<run>_rank<r>.pt``, and
after a restored checkpoint the step it resumed at to ``DUMP/<run>_resumed_rank<r>.txt``. ``--kill-rank-at-step K``
ends rank 1 with ``os._exit`` after step K on the first attempt only (``TORCHELASTIC_RESTART_COUNT`` 0): a crash for
``torchrun --max-restarts`` to recover from. ``--stop-at-step K`` asks every rank to stop after step K (the
checkpoint-and-stop of an interrupt). A command that starts with ``--float64`` builds its models and batches in
float64, where the rounding
of float32 kernels (whose summation order depends on the batch each process holds) no longer hides what the
comparison of a data-parallel run with one process is about. Without ``torchrun`` it runs the commands in one
process (rank 0).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import torch

from mkdlab.cli import main
from mkdlab.data.device_loader import DeviceLoader
from mkdlab.engine.trainer import Trainer

LOADER_INIT = DeviceLoader.__init__


def use_float64(on: bool) -> None:
    """Models (the default dtype) and the device loader's batches in float64, or back to float32."""
    torch.set_default_dtype(torch.float64 if on else torch.float32)
    DeviceLoader.__init__ = functools.partialmethod(LOADER_INIT, dtype=torch.float64) if on else LOADER_INIT


def run(command: list[str]) -> int:
    """One mkdlab command line, in float64 when it starts with ``--float64``."""
    use_float64(command[0] == "--float64")
    return main(command[1:] if command[0] == "--float64" else command)


def install_hooks(dump: Path, kill_at: int | None, stop_at: int | None) -> None:
    fit, load, step = Trainer.fit, Trainer.load_checkpoint, Trainer._step
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"

    def fit_and_dump(self: Trainer, resume: bool = False):
        result = fit(self, resume)
        state = {k: v for k, v in self.method.state_dict().items() if not k.startswith("teachers.")}
        name = self.experiment["name"].replace("/", "_")  # teachers/<entry> for a teacher the run trains first
        torch.save(state, dump / f"{name}_rank{self.dist.rank}.pt")
        return result

    def load_and_note(self: Trainer, path):
        load(self, path)
        name = self.experiment["name"].replace("/", "_")
        (dump / f"{name}_resumed_rank{self.dist.rank}.txt").write_text(str(self.state.global_step))

    def step_with_faults(self: Trainer, batch):
        output = step(self, batch)
        number = self.state.global_step + 1  # the trainer counts the step after its callbacks
        if number == kill_at and self.dist.rank == 1 and first_attempt:
            os._exit(1)
        if number == stop_at:
            self.request_stop()
        return output

    Trainer.fit, Trainer.load_checkpoint, Trainer._step = fit_and_dump, load_and_note, step_with_faults


def commands(argv: list[str]) -> list[list[str]]:
    """The ``--``-separated commands of ``argv``."""
    found: list[list[str]] = []
    for word in argv:
        if word == "--":
            found.append([])
        else:
            found[-1].append(word)
    return [command for command in found if command]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("dump", type=Path)
    parser.add_argument("--kill-rank-at-step", type=int)
    parser.add_argument("--stop-at-step", type=int)
    split = sys.argv.index("--")
    args = parser.parse_args(sys.argv[1:split])
    torch.set_num_threads(1)
    install_hooks(args.dump, args.kill_rank_at_step, args.stop_at_step)
    codes = [run(command) for command in commands(sys.argv[split:])]
    sys.exit(max(codes))
