"""Per-epoch statistics of the teacher weights a run recorded (``--record-extras``): the mean weight of each teacher,
the mean over teachers of the per-sample standard deviation, and each teacher's share of the samples on which it
has the largest weight.

    python benchmarks/probes/teacher_weight_stats.py runs/studies/compare_fmnist_mini/amtml_kd/seed0
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main(run: Path) -> None:
    for path in sorted((run / "extras").glob("epoch_*.pt")):
        weights = torch.load(path, weights_only=True)["teacher_weights"].double()
        share = torch.bincount(weights.argmax(1), minlength=weights.shape[1]) / weights.shape[0]
        print(f"{path.stem}: mean {[round(v, 4) for v in weights.mean(0).tolist()]}, per-sample std "
              f"{weights.std(0).mean().item():.4f}, arg-max share {[round(v, 4) for v in share.tolist()]} "
              f"of {weights.shape[0]} samples")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
