"""Images/second of every method of a study row: what one training step of each costs, side by side.

Each column of the row runs the real :class:`~mkdlab.engine.trainer.Trainer` (the study's student, teachers, batch
size, data loader, AMP and memory format) for ``--warmup`` + ``--steps`` steps in this one process; the clock starts
after the warm-up and the device is synchronised only at the two ends, so CPU launch and GPU execution overlap as in
training. Teachers are randomly initialised (speed does not depend on the weights), so nothing is trained first.
No evaluation, no checkpoint: only steps. MMKD's meta update runs every ``meta_freq`` steps as in training, so its
figure is the average over both kinds of step.

    python benchmarks/bench_methods.py --study compare_fmnist_mini --steps 60 --warmup 10
    python benchmarks/bench_methods.py --study compare_fmnist --device cuda --steps 200 --warmup 30
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mkdlab.data import dataset_info, make_loaders
from mkdlab.engine.device import resolve_device
from mkdlab.engine.trainer import Trainer
from mkdlab.experiment import build_method
from mkdlab.methods.base import TrainingHooks, TrainState
from mkdlab.models import create
from mkdlab.studies import StudyRow, load_study, run_config


class _Clock(TrainingHooks):
    """Trainer callback: synchronise and read the clock after the warm-up step and after the last step."""

    def __init__(self, warmup: int, last: int, device: torch.device) -> None:
        self.warmup, self.last, self.device = warmup, last, device
        self.start = self.end = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def after_step(self, state: TrainState, batch: Any, output: Any) -> None:
        if state.global_step + 1 == self.warmup:
            self.start = self._now()
        elif state.global_step + 1 == self.last:
            self.end = self._now()


def bench_column(row: StudyRow, label: str, steps: int, warmup: int, device: str,
                 callbacks: Sequence[TrainingHooks] = (), **train_changes: Any) -> dict[str, Any]:
    """Milliseconds per step and images/second of column ``label``, the peak device memory on CUDA and the speed
    levers the run resolved (``train_changes``: ``train.*`` fields such as ``cuda_graphs="off"``; ``callbacks``
    join the clock)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = run_config(row, row.column(label), 0, Path(tmp))
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, device=device, max_steps=warmup + steps, epochs=10_000, log_every_steps=0, **train_changes))
    torch_device = resolve_device(device)
    info = dataset_info(config.data.dataset)
    teachers = []
    if config.teachers is not None:
        teachers = [create(arch, num_classes=info.num_classes, in_channels=info.in_channels).to(torch_device).eval()
                    .requires_grad_(False) for arch in config.teachers.architectures()]
    method = build_method(config, teachers)
    train_loader, _ = make_loaders(config.data.dataset, config.data.batch_size, device=torch_device,
                                   root=config.data.root, loader=config.data.loader, seed=0,
                                   drop_last=method.needs_drop_last, with_index=method.needs_indices,
                                   num_workers=config.data.num_workers)
    clock = _Clock(warmup, warmup + steps, torch_device)
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    trainer = Trainer(method, train_loader, None, config.train, callbacks=[clock, *callbacks])
    started = time.perf_counter()
    trainer.fit()
    seconds = clock.end - clock.start
    peak = torch.cuda.max_memory_allocated(torch_device) / 2**20 if torch_device.type == "cuda" else float("nan")
    return {"ms_per_step": 1000 * seconds / steps, "images_per_s": config.data.batch_size * steps / seconds,
            "peak_mib": peak, "levers": trainer.speed.describe(), "warmup_s": clock.start - started}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="compare_fmnist_mini", help="a study row (its columns are benchmarked)")
    parser.add_argument("--methods", nargs="+", default=None, help="only these columns")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the row, e.g. data.batch_size=128")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    row = load_study(args.study, args.overrides)
    labels = args.methods or [column.label for column in row.columns]
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{row.name}: student {row.base.student}, batch {row.base.data.batch_size}, {name}, "
          f"torch {torch.__version__}")
    results = {label: bench_column(row, label, args.steps, args.warmup, str(device)) for label in labels}
    ce = results.get("ce", {}).get("ms_per_step")
    print("\n| method | ms/step | images/s | × CE | peak MiB |\n|---|---:|---:|---:|---:|")
    for label, r in results.items():
        ratio = f"{r['ms_per_step'] / ce:.2f}" if ce else "–"
        print(f"| {label} | {r['ms_per_step']:.2f} | {r['images_per_s']:,.0f} | {ratio} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
