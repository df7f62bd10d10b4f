"""Rebuild the teachers shipped in ``mkdlab/assets/teachers/``: resnet20 on the Fashion-MNIST subset, seeds 0, 1, 2.

Each teacher is the CE-only run of the lesson config (:func:`mkdlab.experiment.lesson_config`, the ``demo``
preset: batch 64, SGD lr 0.05, momentum 0.9, weight decay 5e-4, lr ×0.1 at the CIFAR milestones scaled to the
epochs, the device loader's augmentation) with ``teachers.epochs`` epochs. For each one the script writes

* ``<name>.pt``: the state dict, float32, saved weights-only (what :meth:`mkdlab.teachers.TeacherPool.load`
  reads with ``torch.load(weights_only=True)``);
* ``<name>.json``: the pool entry (its sha256 among it) and how it was made: this command, the recipe, the
  per-epoch test accuracy, the wall time, torch's version and thread count;

and rebuilds ``manifest.json`` from every sidecar in the folder, so seeds can be trained in separate processes.
Example (the shipped files; two seeds side by side, one thread each, then the third)::

    python scripts/train_shipped_teachers.py --epochs 15 --seeds 0 --threads 1 &
    python scripts/train_shipped_teachers.py --epochs 15 --seeds 1 --threads 1; wait
    python scripts/train_shipped_teachers.py --epochs 15 --seeds 2 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from mkdlab.data import dataset_info
from mkdlab.experiment import lesson_config, run_experiment, teacher_config
from mkdlab.storage import save_atomic, save_atomic_text
from mkdlab.teachers import SHIPPED_TEACHERS, TeacherEntry, entry_name, sha256_of, write_shipped_manifest


def train_one(arch: str, seed: int, epochs: int, out: Path, runs: Path) -> TeacherEntry:
    """Train one teacher, store its weights and sidecar in ``out``; returns its pool entry."""
    base = lesson_config("quick", "cpu", [f"teachers.arch={arch}", f"teachers.seeds=[{seed}]",
                                          f"teachers.epochs={epochs}", f"output.dir={runs}"])
    config = teacher_config(base, arch, seed)
    started = time.perf_counter()
    result, method = run_experiment(config, verbose=True)
    seconds = time.perf_counter() - started
    model = method.export_student().cpu().float()
    name = entry_name(arch, base.data.dataset, seed, epochs)
    path = save_atomic({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"{name}.pt")
    info = dataset_info(base.data.dataset)
    entry = TeacherEntry(name, arch, base.data.dataset, info.num_classes, info.in_channels, seed, epochs,
                         round(result.last_top1, 2), sha256_of(path), path.name, "shipped",
                         time.strftime("%Y-%m-%dT%H:%M:%S"))
    recipe = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "train": dataclasses.asdict(config.train), "data": dataclasses.asdict(config.data),
        "test_top1_per_epoch": [round(row["test_top1"], 2) for row in result.history if "test_top1" in row],
        "best_top1": round(result.best_top1, 2), "best_epoch": result.best_epoch,
        "wall_time_s": round(seconds, 1), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(), "machine": platform.machine(),
    }
    save_atomic_text(json.dumps({"entry": dataclasses.asdict(entry), "recipe": recipe}, indent=2) + "\n",
                     out / f"{name}.json")
    return entry


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, train the teachers and rebuild the manifest."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=SHIPPED_TEACHERS, help="folder of the shipped teachers")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mkdlab-shipped-") as runs:
        for seed in args.seeds:
            entry = train_one(args.arch, seed, args.epochs, args.out, Path(runs))
            print(f"{entry.name}: test top-1 {entry.top1:.2f} %, sha256 {entry.sha256[:12]}…", flush=True)
    manifest = write_shipped_manifest(args.out)
    print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
