"""Every laptop figure of the README in one run, as a newcomer's machine sees it: prints one Markdown table.

    python benchmarks/measure_laptop.py                       # demo, bench, notebooks (smoke, quick, rerun), suite
    python benchmarks/measure_laptop.py --only demo bench     # some of them
    python benchmarks/measure_laptop.py --only notebooks --profiles quick --notebooks 02 03

* **demo**: ``/usr/bin/time -v python -m mkdlab demo`` on a fresh ``MKDLAB_HOME`` and fresh run folders (the wall
  time and peak memory; ``/usr/bin/time`` must exist: ``apt-get install time``);
* **bench**: ``python -m mkdlab bench`` (3× resnet56 → resnet20, batch 64, 2 threads) twice: each round's ratio of
  the trainer with compiled teachers, and with eager ones, to the reference-style loop;
* **notebooks**: each notebook executed by nbval (what the test suite does) in a fresh copy of ``notebooks/`` with a
  fresh ``MKDLAB_HOME``, once per profile; then, with ``rerun``, each quick notebook again with finished runs
  reused (``MKDLAB_REUSE_RUNS=1``), as after a kernel restart;
* **suite**: the README's test command, wall time.

Run it on a quiet machine: the load average (``/proc/loadavg``) before and after each figure is in the table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBVAL = ["--nbval-lax", "-p", "no:cacheprovider", "-q"]


def load() -> str:
    """The 1-minute load average."""
    return Path("/proc/loadavg").read_text().split()[0]


def run(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, int, str]:
    """(wall seconds, exit status, output) of ``command``."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - started, done.returncode, done.stdout + done.stderr


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "MKDLAB_HOME": str(home), "PYTHONPATH": str(ROOT), **extra}
    env.pop("CI", None)
    return env


def measure_demo(scratch: Path) -> list[tuple[str, str, str]]:
    home, out = scratch / "demo_home", scratch / "demo"
    before = load()
    seconds, status, text = run(["/usr/bin/time", "-v", sys.executable, "-m", "mkdlab", "demo", "--out",
                                 str(out / "runs"), "--figures", str(out / "figures")], environment(home))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", text)
    memory = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    peak = int(memory.group(1)) // 1024 if memory else "?"
    detail = (f"`/usr/bin/time -v` wall {wall.group(1) if wall else '?'}, peak {peak} MiB"
              + ("" if status == 0 else f", FAILED ({status})"))
    if status == 0:
        table = [line for line in text.splitlines() if " student " in line or " teacher " in line
                 or "ensemble" in line]
        print("\n".join(table), file=sys.stderr)
    return [("demo (quick, fresh MKDLAB_HOME)", f"{seconds:.0f} s", f"{detail}; load {before} → {load()}")]


def measure_bench(rounds: int) -> list[tuple[str, str, str]]:
    rows = []
    for index in range(1, rounds + 1):
        before = load()
        seconds, status, text = run([sys.executable, "-m", "mkdlab", "bench", "--teacher-arch", "resnet56",
                                     "--student", "resnet20", "--num-teachers", "3", "--batch-size", "64"],
                                    environment(Path(tempfile.mkdtemp()), OMP_NUM_THREADS="2"))
        ratios = re.findall(r"([\d.]+) img/s\s+([\d.]+)x the reference", text)
        compile_s = re.search(r"compiled once in ([\d.]+) s", text)
        where = " ".join(re.findall(r"of the (?:fastest exact|int8) step.*", text))
        value = " / ".join(f"{ratio}x" for _, ratio in ratios) if status == 0 else f"FAILED ({status})"
        rows.append((f"bench round {index}: eager / compiled / int8 teachers vs reference", value,
                     f"compile {compile_s.group(1) if compile_s else '?'} s; {where}; "
                     f"load {before} → {load()}"))
    return rows


def measure_notebooks(scratch: Path, profiles: list[str], numbers: list[str],
                      rerun: bool) -> list[tuple[str, str, str]]:
    rows = []
    for profile in profiles:
        copy = Path(shutil.copytree(ROOT / "notebooks", scratch / f"notebooks_{profile}",
                                    ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints")))
        home = scratch / f"home_{profile}"
        notebooks = sorted(p for p in copy.glob("[0-9][0-9]_*.ipynb") if not numbers or p.name[:2] in numbers)
        passes = [("", "0")] + ([(" rerun (runs reused)", "1")] if rerun and profile == "quick" else [])
        for label, reuse in passes:
            for notebook in notebooks:
                before = load()
                env = environment(home, MKDLAB_PROFILE=profile, MKDLAB_REUSE_RUNS=reuse)
                seconds, status, text = run([sys.executable, "-m", "pytest", str(notebook), *NBVAL,
                                             "--nbval-sanitize-with", str(copy / "sanitize.cfg")], env)
                outcome = "passed" if status == 0 else f"FAILED: {text.strip().splitlines()[-1]}"
                rows.append((f"{notebook.stem} {profile}{label}", f"{seconds:.0f} s",
                             f"{outcome}; load {before} → {load()}"))
                print(markdown_row(rows[-1]), file=sys.stderr, flush=True)  # as it comes: a long run shows progress
    return rows


def markdown_row(row: tuple[str, str, str]) -> str:
    """One line of the printed table."""
    return "| " + " | ".join(row) + " |"


def measure_suite() -> list[tuple[str, str, str]]:
    before = load()
    seconds, status, text = run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "tests", "notebooks",
                                 "--nbval-lax", "--nbval-sanitize-with", "notebooks/sanitize.cfg", "-p",
                                 "no:cacheprovider", "--durations=30"], environment(Path(tempfile.mkdtemp())))
    summary = text.strip().splitlines()[-1] if text.strip() else ""
    return [("test suite (README's command)", f"{seconds / 60:.1f} min", f"{summary}; load {before} → {load()}")]


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["demo", "bench", "notebooks", "suite"],
                        default=["demo", "bench", "notebooks", "suite"])
    parser.add_argument("--profiles", nargs="+", choices=["smoke", "quick"], default=["smoke", "quick"])
    parser.add_argument("--notebooks", nargs="+", default=[], metavar="NN", help="numbers, e.g. 02 03 (default all)")
    parser.add_argument("--no-rerun", action="store_true", help="skip the quick notebooks' second run")
    parser.add_argument("--bench-rounds", type=int, default=2)
    args = parser.parse_args(argv)
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="mkdlab-measure-") as scratch:
        for what in args.only:
            if what == "demo":
                rows += measure_demo(Path(scratch))
            elif what == "bench":
                rows += measure_bench(args.bench_rounds)
            elif what == "notebooks":
                rows += measure_notebooks(Path(scratch), args.profiles, args.notebooks, not args.no_rerun)
            else:
                rows += measure_suite()
            print(f"[{time.strftime('%H:%M:%S')}] {what} measured", file=sys.stderr, flush=True)
    print(f"| what | figure | detail (nproc {os.cpu_count()}) |\n|---|---|---|")
    for row in rows:
        print(markdown_row(row))


if __name__ == "__main__":
    main()
