"""Frozen-teacher inference on the CPU: eager, eager with BatchNorm folded, TorchScript freeze +
optimize_for_inference, and inductor with freezing; milliseconds per batch and compile seconds.

    python benchmarks/bench_frozen.py --arch resnet56 --batch-size 64 --threads 2 --steps 20

Each variant computes the logits (and, with ``--features``, every named map) of a randomly initialised teacher
in eval mode on a channels_last batch, as the trainer feeds it. The first call (compile, first-run optimisation)
is timed apart from the steady-state calls. ``--compilers`` picks the variants (inductor compiles for minutes on
2 cores).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from mkdlab.methods.frozen import TeacherOutputs, compile_frozen
from mkdlab.models import create


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Conv2d→BatchNorm2d pairs (as torch.fx traces them) are folded into the conv."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval())


def time_variant(call, images: torch.Tensor, steps: int) -> tuple[float, float]:
    """(seconds of the first call, milliseconds per call after it)."""
    with torch.inference_mode():
        start = time.perf_counter()
        call(images)
        first = time.perf_counter() - start
        call(images)
        start = time.perf_counter()
        for _ in range(steps):
            call(images)
    return first, 1000 * (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and print one line per variant."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet56")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--features", action="store_true", help="every named map, not only the logits")
    parser.add_argument("--compilers", nargs="+", default=["eager", "folded", "jit", "inductor"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create(args.arch, num_classes=args.num_classes, in_channels=args.in_channels).eval()
    model.requires_grad_(False).to(memory_format=torch.channels_last)
    images = torch.randn(args.batch_size, args.in_channels, 32, 32).contiguous(memory_format=torch.channels_last)
    what = "maps" if args.features else "logits"
    print(f"{args.arch} {what}, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for name in args.compilers:
        started = time.perf_counter()
        if name == "folded":
            call = TeacherOutputs(fold_batch_norms(model), args.features)
        else:
            with torch.no_grad():
                call = compile_frozen(model, images, name, args.features)  # type: ignore[arg-type]
        built = time.perf_counter() - started
        first, per_call = time_variant(call, images, args.steps)
        print(f"  {name:9s} {per_call:8.1f} ms/batch   compile {built + first:6.1f} s")


if __name__ == "__main__":
    main()
