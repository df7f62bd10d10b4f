"""Frozen-teacher inference on the CPU: eager, eager with BatchNorm folded, TorchScript freeze +
optimize_for_inference, inductor with freezing, and int8; milliseconds per batch and compile seconds; and how far
the int8 teachers are from the float32 ones.

    python benchmarks/bench_frozen.py --arch resnet56 --batch-size 64 --threads 2 --steps 20
    python benchmarks/bench_frozen.py --fidelity      # the shipped teachers in int8 vs float32, on the test set

Each variant computes the logits (and, with ``--features``, every named map) of a randomly initialised teacher
in eval mode on a channels_last batch, as the trainer feeds it. The first call (compile, first-run optimisation)
is timed apart from the steady-state calls. ``--compilers`` picks the variants (inductor compiles for minutes on
2 cores). The int8 variant (logits only) is calibrated on random batches here: speed does not depend on the values.

``--fidelity`` calibrates each shipped resnet20 teacher on the first
:data:`~mkdlab.methods.quantized.CALIBRATION_BATCHES` augmented training batches of the Fashion-MNIST subset, as a
run with ``teachers.compile: int8`` does (three times: the first batches of epochs 0, 1 and 2), and prints, over
the subset's test set, how often the int8 copy's top-1 agrees with the float32 teacher's, both accuracies, and the
KL divergence between their softened outputs at the KD temperature T = 4 (per image).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mkdlab.data import make_loaders
from mkdlab.methods.frozen import FrozenTeacher, TeacherOutputs, compile_frozen
from mkdlab.methods.quantized import CALIBRATION_BATCHES
from mkdlab.models import create
from mkdlab.teachers import TeacherPool


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Conv2d→BatchNorm2d pairs (as torch.fx traces them) are folded into the conv."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval())


def first_call(call, images: torch.Tensor) -> float:
    """Seconds of the first call (compilation, first-run optimisation), then one more untimed call."""
    with torch.inference_mode():
        start = time.perf_counter()
        call(images)
        first = time.perf_counter() - start
        call(images)
    return first


def interleaved_ms(calls: dict[str, Callable[[], object]], steps: int, rounds: int) -> dict[str, float]:
    """Median milliseconds per call of each variant over ``rounds`` rounds of ``steps`` calls, the variants taking
    turns within each round (so that a change in the machine's speed hits them all alike)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                for _ in range(steps):
                    call()
                times[name].append(1000 * (time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}


def int8_variant(model: nn.Module, images: torch.Tensor) -> FrozenTeacher:
    """``model``'s logits in int8 as a run gets them (:class:`FrozenTeacher`), calibrated on random batches shaped
    like ``images``; its int8 graph is built at the next call."""
    frozen = FrozenTeacher(model, "int8")
    with torch.inference_mode():
        for _ in range(CALIBRATION_BATCHES):
            frozen(torch.randn_like(images))
    assert frozen.quantized, frozen.failed
    return frozen


def fidelity(draws: int = 3, temperature: float = 4.0) -> None:
    """Print, for each shipped teacher and each of ``draws`` calibrations (on the first batches of training epochs
    0, 1, …), the int8 copy's agreement with the float32 teacher on the test set."""
    with tempfile.TemporaryDirectory() as home:  # an empty pool home: only the shipped teachers
        pool = TeacherPool(home)
        teachers = [(entry.name, pool.load(entry.name).eval().requires_grad_(False)) for entry in pool.list()]
    train, test = make_loaders("fashion_mnist_mini", 64, device="cpu", loader="device", drop_last=True)
    print(f"int8 vs float32 teachers, calibrated on the first {CALIBRATION_BATCHES} augmented training batches of "
          f"64 of an epoch, KL at T = {temperature:g}, engine {torch.backends.quantized.engine}")
    for name, model in teachers:
        for epoch in range(draws):
            frozen = FrozenTeacher(model, "int8")
            train.set_epoch(epoch)
            with torch.inference_mode():
                for images, _ in itertools.islice(train, CALIBRATION_BATCHES):
                    frozen(images)
                assert frozen.quantized, frozen.failed
                agree = correct_fp32 = correct_int8 = seen = 0
                kl = 0.0
                for images, labels in test:
                    exact, approx = model(images), frozen(images)
                    agree += int((exact.argmax(1) == approx.argmax(1)).sum())
                    correct_fp32 += int((exact.argmax(1) == labels).sum())
                    correct_int8 += int((approx.argmax(1) == labels).sum())
                    kl += F.kl_div(F.log_softmax(approx / temperature, 1), F.softmax(exact / temperature, 1),
                                   reduction="sum").item()
                    seen += len(labels)
            print(f"  {name}, calibrated on epoch {epoch}: top-1 agreement {100 * agree / seen:.2f} %, accuracy "
                  f"float32 {100 * correct_fp32 / seen:.2f} % / int8 {100 * correct_int8 / seen:.2f} %, "
                  f"KL {kl / seen:.5f} per image ({seen} test images)")


def multiply_adds(model: nn.Module, images: torch.Tensor) -> int:
    """Multiply-adds of ``model``'s convolutions and linear layers on ``images`` (what bounds its speed)."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return total


def matmul(size: int = 2048) -> Callable[[], object]:
    """A float32 product of two ``size``² matrices: about this CPU's float32 peak on these threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return lambda: a @ b


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and print one line per variant."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet56")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed calls per variant, over all rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--features", action="store_true", help="every named map, not only the logits")
    parser.add_argument("--compilers", nargs="+", default=["eager", "folded", "jit", "inductor", "int8"])
    parser.add_argument("--fidelity", action="store_true", help="int8 vs float32 shipped teachers, on test data")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.fidelity:
        fidelity()
        return
    torch.manual_seed(0)
    model = create(args.arch, num_classes=args.num_classes, in_channels=args.in_channels).eval()
    model.requires_grad_(False).to(memory_format=torch.channels_last)
    images = torch.randn(args.batch_size, args.in_channels, 32, 32).contiguous(memory_format=torch.channels_last)
    what = "maps" if args.features else "logits"
    print(f"{args.arch} {what}, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    flop = 2 * multiply_adds(model, images)
    calls: dict[str, Callable[[], object]] = {}
    for name in args.compilers:
        started = time.perf_counter()
        if name == "folded":
            call = TeacherOutputs(fold_batch_norms(model), args.features)
        elif name == "int8":
            call = int8_variant(model, images)
        else:
            with torch.no_grad():
                call = compile_frozen(model, images, name, args.features)  # type: ignore[arg-type]
        built = time.perf_counter() - started + first_call(call, images)
        print(f"  {name:9s} compiled in {built:6.1f} s")
        calls[name] = lambda call=call: call(images)
    size = 2048
    calls["matmul"] = matmul(size)
    per_call = interleaved_ms(calls, max(1, args.steps // args.rounds), args.rounds)
    print(f"  median of {args.rounds} interleaved rounds; {flop / 1e9:.1f} GFLOP per batch")
    for name in args.compilers:
        rate = "GOP/s (int8)" if name == "int8" else "GFLOP/s"
        print(f"  {name:9s} {per_call[name]:8.1f} ms/batch   {flop / per_call[name] / 1e6:6.0f} {rate}")
    print(f"  float32 matmul {size}²: {2 * size**3 / per_call['matmul'] / 1e6:6.0f} GFLOP/s (this CPU's float32 "
          f"peak on {torch.get_num_threads()} threads, roughly)")

if __name__ == "__main__":
    main()
