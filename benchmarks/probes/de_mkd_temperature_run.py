"""DE-MKD: one short run (shipped teachers, mini set, CPU) with a given entropy temperature and weight_norm.
usage: de_mkd_temperature_run.py ENTROPY_T WEIGHT_NORM STEPS SEED [DKD_WARMUP_EPOCHS (default 0)]"""
import sys
import tempfile
import time

from mkdlab.config import load_config
from mkdlab.experiment import run_experiment
from mkdlab.teachers import TeacherPool

t, norm, steps, seed = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
warmup = int(sys.argv[5]) if len(sys.argv) > 5 else 0
t0 = time.time()
cfg = load_config("de_mkd", [f"method.params.entropy_temperature={t}", f"method.params.weight_norm={norm}",
                             f"method.params.dkd_warmup_epochs={warmup}", "train.epochs=1", f"train.max_steps={steps}",
                             f"train.seed={seed}", "teachers.epochs=8", "train.device=cpu",
                             "output.dir=" + tempfile.mkdtemp(), "train.log_every_steps=0"])
result, method = run_experiment(cfg, pool=TeacherPool(tempfile.mkdtemp()), verbose=False, record_extras=True)
w = result.extras[-1]["teacher_weights"]  # normalised to sum 1
print(f"T_ent={t} norm={norm} warmup={warmup} steps={steps} seed={seed}: top1 {result.last_top1:.2f}; "
      "per-sample std of the "
      f"normalised weights {w.std(1).mean():.4f}, mean max-min {(w.max(1).values - w.min(1).values).mean():.4f}; "
      f"{time.time() - t0:.0f}s", flush=True)
