"""Training images/second of zoo models in contiguous (NCHW) vs channels_last memory format.

Usage: ``python benchmarks/bench_memory_format.py --models resnet8 resnet20 mobilenetv2 --device cpu``.
It motivates the trainer's default (channels_last on every device): on CPU, oneDNN's channels_last kernels are
faster for every family of the zoo.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mkdlab.models import create


def images_per_second(name: str, channels_last: bool, batch_size: int, steps: int, device: torch.device) -> float:
    """Forward + backward + SGD step throughput of one model on random data."""
    torch.manual_seed(0)
    model = create(name, num_classes=100).to(device)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (batch_size,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet8", "resnet20", "wrn_16_2", "vgg8", "mobilenetv2",
                                                        "ShuffleV2", "resnet8x4"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"train img/s, batch {args.batch_size}, {device} ({torch.get_num_threads()} threads)")
    print(f"{'model':12s} {'contiguous':>11s} {'channels_last':>14s} {'ratio':>6s}")
    for name in args.models:
        plain = images_per_second(name, False, args.batch_size, args.steps, device)
        last = images_per_second(name, True, args.batch_size, args.steps, device)
        print(f"{name:12s} {plain:11.1f} {last:14.1f} {last / plain:6.2f}")


if __name__ == "__main__":
    main()
