"""AMTML-KD: importances after the adapter phase with reg 0.1 vs 0 (shipped teachers, mini set, CPU).

    python benchmarks/probes/amtml_collapse.py STEPS REG[,REG…] [key=value …]   # e.g. method.params.latent_seed=2
"""
import sys
import tempfile
import time

import torch

from mkdlab.config import load_config
from mkdlab.experiment import run_experiment
from mkdlab.teachers import TeacherPool

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 100
pool = TeacherPool(tempfile.mkdtemp())
regs = [float(r) for r in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0.1, 0.0]
for reg in regs:
    t0 = time.time()
    cfg = load_config("amtml_kd", [f"method.params.reg_weight={reg}", "method.params.adapter_epochs=1",
                                   "train.epochs=1", f"train.max_steps={steps}", "teachers.epochs=8",
                                   "train.device=cpu", "output.dir=" + tempfile.mkdtemp(), "train.log_every_steps=0",
                                   *sys.argv[3:]])
    result, method = run_experiment(cfg, pool=pool, verbose=False, record_extras=True)
    w = result.extras[-1]["teacher_weights"]
    for lo in (0, steps // 2, steps - 1):
        mu = w[lo * 64:(lo + 1) * 64]
        print(f"reg={reg} step {lo + 1}: per-sample std of mu {mu.std(0).mean():.4f}, max|mu-1/K| "
              f"{(mu - 1/3).abs().max():.4f}, mean mu {mu.mean(0).tolist()}")
    last = w[-64:]
    print(f"reg={reg}: last step argmax counts {torch.bincount(last.argmax(1), minlength=3).tolist()}, "
          f"median max-importance {last.max(1).values.median():.4f}, min max-importance {last.max(1).values.min():.4f}")
    tw = (method.theta * method.w).norm().item()
    print(f"reg={reg}: |Theta*W| = {tw:.4g}, top1 {result.last_top1:.2f}, {time.time()-t0:.1f}s")
