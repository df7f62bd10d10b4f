"""What MMKD's meta updates cost: training time per step with and without them, and where a meta update's time goes.

Usage: ``python benchmarks/bench_mmkd_meta.py --teacher resnet20 --student resnet8 --steps 25 --batch-size 64``.

Two runs of the same :class:`~mkdlab.engine.trainer.Trainer` on random 1×32×32 images (10 classes by default), one
with ``meta_freq=0`` (plain distillation steps, the hard buffer still refreshed) and one with ``--meta-freq``,
alternating for ``--rounds`` epochs of ``--steps`` steps each; the least wall-clock and process-CPU ms/step of each
are kept (the CPU time is the steadier figure on a shared machine; with ``--threads 1`` it is the work done). Their
ratio is the per-epoch overhead of the meta updates. Then ``--repeats`` meta updates are timed piece by piece
(least wall-clock time of each piece): drawing the meta batch with its stored teacher outputs, the look-ahead (the
virtual SGD steps and the outer loss), the outer backward (the hypergradient) and the Adam step; and, for reference,
the teacher forward that the stored outputs save. Teachers are randomly initialised: their weights do not change the
cost.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mkdlab.config import TrainConfig
from mkdlab.engine.device import resolve_device
from mkdlab.engine.trainer import Trainer
from mkdlab.methods.base import Batch
from mkdlab.methods.mmkd import MMKD, MMKDParams
from mkdlab.models import create


class RandomLoader:
    """``steps`` fixed batches of random images and labels (a drop-last loader)."""

    def __init__(self, steps: int, batch_size: int, in_channels: int, num_classes: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.items = [(torch.randn(batch_size, in_channels, 32, 32, generator=gen),
                       torch.randint(0, num_classes, (batch_size,), generator=gen)) for _ in range(steps)]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.items)


def build(args: argparse.Namespace, meta_freq: int) -> MMKD:
    """The MMKD method of the benchmark with ``meta_freq``."""
    torch.manual_seed(0)
    teachers = [create(args.teacher, num_classes=args.num_classes, in_channels=args.in_channels)
                for _ in range(args.teachers)]
    student = create(args.student, num_classes=args.num_classes, in_channels=args.in_channels)
    params = MMKDParams(meta_freq=meta_freq, gram_size=args.batch_size, hypergradient=args.hypergradient)
    return MMKD(student, teachers, params)


def epoch_ms_per_step(args: argparse.Namespace, meta_freq: int) -> tuple[float, float, Trainer]:
    """Wall-clock and process-CPU ms/step of one epoch of ``args.steps`` steps, and the trainer."""
    loader = RandomLoader(args.steps, args.batch_size, args.in_channels, args.num_classes)
    config = TrainConfig(epochs=1, lr=0.05, nesterov=True, device=args.device, log_every_steps=0)
    trainer = Trainer(build(args, meta_freq), loader, None, config)
    cpu = time.process_time()
    result = trainer.fit()
    cpu = time.process_time() - cpu
    return 1000.0 * result.history[-1]["epoch_time_s"] / args.steps, 1000.0 * cpu / args.steps, trainer


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``fn()`` and its wall time in ms (synchronising CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, 1000.0 * (time.perf_counter() - start)


def meta_split(trainer: Trainer, repeats: int) -> dict[str, float]:
    """Least wall-clock ms of each piece of a meta update over ``repeats`` updates on hard-buffer batches."""
    method: MMKD = trainer.method  # type: ignore[assignment]
    device = trainer.device
    mode = method.params.resolved_hypergradient()
    times: dict[str, list[float]] = {"teacher forward": [], "meta batch": [], "look-ahead": [], "outer backward": [],
                                     "Adam step": []}
    images, labels = trainer.train_loader.items[0]  # type: ignore[attr-defined]
    batch = Batch(images.to(device), labels.to(device))
    optimizer = method.extra_optimizers()["meta"]
    method.train()
    for _ in range(repeats):
        with trainer.autocast():  # as in training: the teachers run inside the step's autocast
            step_targets, ms = timed(lambda: method.teacher_targets(batch.images), device)
        times["teacher forward"].append(ms)
        (images, labels, targets), ms = timed(lambda t=step_targets: method.meta_batch(batch, t), device)
        times["meta batch"].append(ms)
        with torch.enable_grad():
            lookahead, ms = timed(lambda i=images, y=labels, t=targets: method.look_ahead(
                trainer.optimizer, i, y, t, differentiable=mode == "unroll", follow_student=mode == "unroll"), device)
            times["look-ahead"].append(ms)
            grads, ms = timed(lambda la=lookahead: method.hypergradient(la, mode), device)
            times["outer backward"].append(ms)
        for param, grad in zip(method.weight_net_parameters(), grads, strict=True):
            param.grad = grad
        _, ms = timed(optimizer.step, device)
        optimizer.zero_grad(set_to_none=True)
        times["Adam step"].append(ms)
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--teachers", type=int, default=3, help="number of teachers")
    parser.add_argument("--steps", type=int, default=25, help="steps of each measured epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--meta-freq", type=int, default=5)
    parser.add_argument("--hypergradient", choices=["unroll", "reverse_hg"], default="unroll")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain/meta epochs; the least is kept")
    parser.add_argument("--repeats", type=int, default=5, help="meta updates timed piece by piece")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"MMKD {args.teachers}×{args.teacher} → {args.student}, batch {args.batch_size}, {args.steps} steps/epoch, "
          f"{device} ({torch.get_num_threads()} threads), hypergradient {args.hypergradient}")
    runs: dict[int, list[tuple[float, float]]] = {0: [], args.meta_freq: []}
    for _ in range(args.rounds):
        for freq in runs:
            wall, cpu, trainer = epoch_ms_per_step(args, meta_freq=freq)
            runs[freq].append((wall, cpu))
    (plain, plain_cpu), (meta, meta_cpu) = ((min(w for w, _ in r), min(c for _, c in r)) for r in runs.values())
    print(f"{'':34s} {'wall ms/step':>12s} {'CPU ms/step':>12s}")
    print(f"{'without meta updates':34s} {plain:12.1f} {plain_cpu:12.1f}")
    print(f"{f'with a meta update every {args.meta_freq} steps':34s} {meta:12.1f} {meta_cpu:12.1f}")
    print(f"{'epoch-time ratio':34s} {meta / plain:12.2f} {meta_cpu / plain_cpu:12.2f}")
    split = meta_split(trainer, args.repeats)
    teacher = split.pop("teacher forward")
    print(f"one meta update: {sum(split.values()):.1f} ms = "
          + ", ".join(f"{name} {ms:.1f}" for name, ms in split.items()))
    print(f"(the teacher forward that the outputs stored in the hard buffer save: {teacher:.1f} ms)")


if __name__ == "__main__":
    main()
