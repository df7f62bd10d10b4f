"""The setting of tests/test_mechanisms.py's AMTML fixture: 80 adapter steps (batch 16) of the amtml_kd preset,
importances on 128 probe training images with the final Theta, W; default (reg 0) vs reg 0.1. Run from the repo root."""
import sys
import tempfile

import torch

sys.path.insert(0, "tests")
from test_mechanisms import AMTML_ADAPTER_STEPS, probe_images, train

from mkdlab.teachers import TeacherPool

pool = TeacherPool(tempfile.mkdtemp())
for label, extra in (("default", []), ("reg 0.1", ["method.params.reg_weight=0.1"])):
    _, method = train("amtml_kd", AMTML_ADAPTER_STEPS + extra, pool)
    method.eval()
    with torch.no_grad():
        mu = method.importances(method.student.forward_features(probe_images())["pooled"])[1]
    print(f"{label}: max|mu-1/K| {(mu - 1/3).abs().max():.4f}, max per-teacher std over samples {mu.std(0).max():.5f}, "
          f"mean {mu.mean(0).tolist()}, argmax counts {mu.argmax(1).bincount(minlength=3).tolist()}", flush=True)
