"""The GPU benchmark script's dry run (every section at tiny sizes on the CPU), so that it cannot rot before it
runs on a GPU. Its speeds are not asserted: only that every section runs and prints its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.mark.slow
def test_the_dry_run_prints_every_section(capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    module.main(["--dry-run", "--budget-s", "900"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "# python benchmarks/bench_gpu.py --dry-run --budget-s 900"
    for section in module.SECTIONS:
        assert f"\n## {section}  (t = " in out, section
    assert "skipped" not in out and "| NO |" not in out
    assert out.count("| aver_kd |") >= 4 and "| mmkd |" not in out.split("## meta")[0]
    assert len(out) < 8000  # a few KB, as the GPU run must stay
