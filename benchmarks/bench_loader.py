"""Images per second of one training epoch: :class:`mkdlab.data.DeviceLoader` vs torchvision's ``DataLoader``.

Both loaders serve the same augmented training split (random crop with padding 4, horizontal flip, normalise);
the ``DataLoader`` runs the PIL transforms in ``--workers`` processes and its batches are moved to ``--device``.
Each loader is timed for ``--epochs`` epochs; the best epoch counts (the first one of the ``DataLoader``
includes starting its workers). Example::

    python benchmarks/bench_loader.py --dataset fashion_mnist_mini --batch-size 128 --epochs 2 --device cpu
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

import torch

from mkdlab.data import make_loaders


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epochs(loader: Iterable, epochs: int, device: torch.device) -> list[float]:
    """Images per second of each of ``epochs`` passes over ``loader``, batches moved to ``device``."""
    rates = []
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        count = 0
        for images, _labels in loader:
            images = images.to(device, non_blocking=True)
            count += images.shape[0]
        _sync(device)
        rates.append(count / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, time both loaders and print images/second and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion_mnist_mini", help="dataset name")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed per loader")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--root", default=None, help="data folder searched first")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    print(
        f"dataset={args.dataset} batch_size={args.batch_size} device={device} torch threads={torch.get_num_threads()}"
    )
    results = {}
    for kind in ("device", "torch"):
        start = time.perf_counter()
        train, _ = make_loaders(
            args.dataset, args.batch_size, device=device, root=args.root, loader=kind, num_workers=args.workers
        )
        setup = time.perf_counter() - start
        rates = time_epochs(train, args.epochs, device)
        results[kind] = max(rates)
        label = "DeviceLoader" if kind == "device" else f"DataLoader (PIL, {args.workers} workers)"
        epochs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{label:<32} setup {setup:6.2f} s   images/s per epoch: {epochs}   best: {max(rates):,.0f}")
        del train
    print(f"ratio DeviceLoader / DataLoader: {results['device'] / results['torch']:.1f}x")


if __name__ == "__main__":
    main()
