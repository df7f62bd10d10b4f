"""Rebuild ``mkdlab/assets/fashion_mnist_mini.npz`` from the full Fashion-MNIST set.

The full set is found as everywhere in mkdlab (``--root``, ``$MKDLAB_DATA``, the repository ``data/``
folder, the user cache, Debian's ``dataset-fashion-mnist``); nothing is downloaded. Example::

    python scripts/build_fashion_mnist_mini.py --per-class-train 1000 --per-class-test 200 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mkdlab.data.mini import build_mini_arrays
from mkdlab.data.sources import MINI_ASSET_DIR, MINI_FILENAME


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, draw the subset and write it with ``numpy.savez_compressed``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class-train", type=int, default=1000, help="training images per class")
    parser.add_argument("--per-class-test", type=int, default=200, help="test images per class")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the numpy generator that draws the subset"
    )
    parser.add_argument("--root", type=Path, default=None, help="data folder searched first for the full set")
    parser.add_argument("--out", type=Path, default=MINI_ASSET_DIR / MINI_FILENAME, help="output .npz file")
    args = parser.parse_args(argv)

    arrays = build_mini_arrays(args.per_class_train, args.per_class_test, args.seed, root=args.root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    sizes = ", ".join(f"{split}: {len(arrays[f'{split}_labels'])}" for split in ("train", "test"))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB; {sizes} images)")


if __name__ == "__main__":
    main()
