"""GPU speed of a distillation step (issue #19): equal results, where the time goes, every method with the speed
levers off and on, the reference-style loop, MMKD's meta overhead and a 240-epoch DE-MKD run projected.

    python benchmarks/bench_gpu.py              # on a GPU: every section, about 8 minutes on an H100 (--budget-s)
    python benchmarks/bench_gpu.py --dry-run    # every section at tiny sizes on the CPU (the test suite runs it)

The first output line is the command. Sections, most important first (``--sections`` picks some; a section that
would start after ``--budget-s`` seconds is listed as skipped):

* ``equal``: a few steps of every method with the levers on equal the eager steps (losses within 4 bf16 roundings);
* ``profile``: per method, eager and with the levers, under ``torch.profiler``: wall and kernel time per step, the
  GPU's idle share, kernels launched and host synchronisations (``torch.cuda.set_sync_debug_mode``) per step, and
  the teachers' share of the kernel time (eager);
* ``table``: ms/step and images/s of every method at each batch size, eager and with the levers (compile aside: it
  costs a compilation per method and batch size; ``levers`` measures it);
* ``reference``: the reference-style loop of ``python -m mkdlab bench`` (DataLoader with PIL transforms, fp32,
  teachers one after another) on the same GPU, and mkdlab's ratio to it (AVER-KD does the same work);
* ``meta``: MMKD with a meta update every 5 steps against none;
* ``projection``: a 240-epoch DE-MKD run, 3×resnet32x4 → resnet8x4 on 50,000 random uint8 3×32×32 images;
* ``levers``: each lever turned off in turn from everything on (``train.compile`` included), a few methods.

"Eager" is mkdlab before these levers: no compile, no CUDA graphs, PyTorch's default SGD, a NaN check per step.
Models are randomly initialised (speed does not depend on the weights); steps run on the device-resident loader.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import _Clock, bench_column  # noqa: E402

from mkdlab.bench import reference_images_per_second  # noqa: E402
from mkdlab.config import load_config  # noqa: E402
from mkdlab.data import DeviceLoader  # noqa: E402
from mkdlab.engine.device import resolve_device  # noqa: E402
from mkdlab.engine.trainer import Trainer  # noqa: E402
from mkdlab.experiment import build_method  # noqa: E402
from mkdlab.methods import get_method  # noqa: E402
from mkdlab.methods.base import TrainingHooks, TrainState  # noqa: E402
from mkdlab.methods.ensemble import TeacherEnsemble  # noqa: E402
from mkdlab.models import create  # noqa: E402
from mkdlab.studies import StudyRow, load_study  # noqa: E402

SECTIONS = ("equal", "profile", "table", "reference", "meta", "projection", "levers")
EAGER = {"compile": "off", "cuda_graphs": "off", "fused_optimizer": "off", "sync_free": "off"}
BF16_U = 2.0 ** -8


@dataclasses.dataclass
class Plan:
    """Sizes of one benchmark run (the GPU's, or the dry run's tiny ones)."""

    device: torch.device
    study: str
    methods: list[str]
    batch_sizes: list[int]
    steps: int
    warmup: int
    equal_steps: int
    lever_methods: list[str]
    projection: dict[str, Any]
    reference_workers: int
    budget_s: float
    compile_backend: str = "inductor"
    #: the dry run: every code path once, not every variant (a single timed MMKD step, two lever variants).
    quick: bool = False
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def levers(self, compile: bool = False) -> dict[str, str]:
        """Every lever on (CUDA graphs only on CUDA), ``train.compile`` as asked."""
        return {"compile": "on" if compile else "off", "compile_backend": self.compile_backend,
                "cuda_graphs": "on" if self.device.type == "cuda" else "off", "fused_optimizer": "on",
                "sync_free": "on"}

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.dry_run:
        return Plan(torch.device("cpu"), "compare_fmnist_mini", args.methods or ["ce", "aver_kd"],
                    args.batch_sizes or [4], 1, 1, 3, ["aver_kd"],
                    {"teacher": "resnet8", "student": "resnet8", "samples": 32, "test": 16, "batch": 8},
                    0, args.budget_s, compile_backend="aot_eager", quick=True)  # aot_eager: no code generation
    device = resolve_device(args.device)
    rows = load_study("compare_fmnist", ["data.dataset=fashion_mnist_mini"])
    return Plan(device, "compare_fmnist", args.methods or [c.label for c in rows.columns],
                args.batch_sizes or [128, 64], args.steps, args.warmup, 8, ["ce", "aver_kd", "mmkd"],
                {"teacher": "resnet32x4", "student": "resnet8x4", "samples": 50_000, "test": 10_000, "batch": 64},
                min(4, os.cpu_count() or 1), args.budget_s)


def row_for(plan: Plan, batch_size: int, **params: Any) -> StudyRow:
    """The study row at ``batch_size`` (on the embedded data: the GPU needs no download), MMKD's Gram size
    matched to it; ``params`` change one column's hyper-parameters (``mmkd={"meta_freq": 0}``)."""
    row = load_study(plan.study, ["data.dataset=fashion_mnist_mini", f"data.batch_size={batch_size}"])
    for column in row.columns:
        if column.method.name == "mmkd":
            column.method.params["gram_size"] = batch_size
        column.method.params.update(params.get(column.label, {}))
    return row


def run(plan: Plan, row: StudyRow, label: str, changes: dict[str, str], steps: int | None = None,
        callbacks: tuple[TrainingHooks, ...] = ()) -> dict[str, Any]:
    """bench_column with a fresh dynamo cache (compiled steps of earlier runs would count against its limit)."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    return bench_column(row, label, plan.steps if steps is None else steps, plan.warmup, str(plan.device),
                        callbacks, **changes)


# -- sections ------------------------------------------------------------------------------------------------------
class LossRecorder(TrainingHooks):
    """Each step's total loss, read after the step (a host read: only for the equality check)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def after_step(self, state: TrainState, batch: Any, output: Any) -> None:
        self.losses.append(float(output.total().detach()))


def section_equal(plan: Plan) -> None:
    print("max relative difference of the per-step losses to eager (pass: <= 4 bf16 roundings, "
          f"{4 * BF16_U:.4f}); {plan.equal_steps} steps (2 eager warm-ups, a capture, replays)")
    print("| method | levers | eager loss first → last | max rel. diff | pass |\n|---|---|---|---:|---|")
    row = row_for(plan, plan.batch_sizes[0])
    cases = [(label, plan.levers()) for label in plan.methods]
    cases += [(label, plan.levers(compile=True)) for label in plan.lever_methods if label in plan.methods]
    for label, changes in cases:
        eager, levers = LossRecorder(), LossRecorder()
        run(plan, row, label, EAGER, plan.equal_steps - plan.warmup, (eager,))
        result = run(plan, row, label, changes, plan.equal_steps - plan.warmup, (levers,))
        diff = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(eager.losses, levers.losses, strict=True))
        print(f"| {label} | {result['levers']} | {eager.losses[0]:.4f} → {eager.losses[-1]:.4f} | {diff:.2e} | "
              f"{'yes' if diff <= 4 * BF16_U else 'NO'} |")


@contextmanager
def labelled_teachers() -> Iterator[None]:
    """Every teacher forward inside a ``mkdlab.teachers`` profiler range."""
    original = TeacherEnsemble._run

    def labelled(self: TeacherEnsemble, images: torch.Tensor, features: bool) -> Any:
        with torch.profiler.record_function("mkdlab.teachers"):
            return original(self, images, features)

    TeacherEnsemble._run = labelled  # type: ignore[method-assign]
    try:
        yield
    finally:
        TeacherEnsemble._run = original  # type: ignore[method-assign]


class Profiled(TrainingHooks):
    """Profile the steps after the warm-up and count the host synchronisations CUDA reports meanwhile."""

    def __init__(self, warmup: int, last: int, device: torch.device) -> None:
        self.warmup, self.last, self.device = warmup, last, device
        self.profiler: torch.profiler.profile | None = None
        self.syncs = 0
        self._warnings: Any = None
        self._caught: list[warnings.WarningMessage] = []

    def after_step(self, state: TrainState, batch: Any, output: Any) -> None:
        step = state.global_step + 1
        cuda = self.device.type == "cuda"
        if step == self.warmup:
            activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda
                                                                   else [])
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.start()
            if cuda:
                self._warnings = warnings.catch_warnings(record=True)
                self._caught = self._warnings.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
        elif step == self.last and self.profiler is not None:
            if cuda:
                torch.cuda.synchronize(self.device)
                torch.cuda.set_sync_debug_mode("default")
                self._warnings.__exit__(None, None, None)
                self.syncs = sum("synchroniz" in str(w.message) for w in self._caught)
            self.profiler.stop()

    def summary(self, steps: int) -> dict[str, float]:
        """Per step: kernel ms, kernels launched, host syncs, and the teachers' share of kernel (CPU) time."""
        assert self.profiler is not None
        events = self.profiler.key_averages()
        device_events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        kernel_us = sum(e.self_device_time_total for e in device_events)
        teachers = [e for e in events if e.key == "mkdlab.teachers"]
        if self.device.type == "cuda":
            share = teachers[0].device_time_total / max(kernel_us, 1e-9) if teachers else float("nan")
        else:
            total = sum(e.self_cpu_time_total for e in events)
            share = teachers[0].cpu_time_total / max(total, 1e-9) if teachers else float("nan")
        return {"kernel_ms": kernel_us / 1000 / steps, "kernels": sum(e.count for e in device_events) / steps,
                "syncs": self.syncs / steps if self.device.type == "cuda" else float("nan"), "teachers": share}


def section_profile(plan: Plan) -> None:
    batch = plan.batch_sizes[0]
    steps = max(1, min(plan.steps, 10))
    print(f"batch {batch}, {steps} profiled steps after {plan.warmup} warm-up (wall time includes the profiler's "
          "overhead; under CUDA graphs the teachers' kernels are not attributed: n/a)")
    print("| method | levers | wall ms | kernel ms | GPU idle | kernels/step | syncs/step | teachers' share |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|")
    row = row_for(plan, batch)
    for label in plan.methods:
        for changes in (EAGER, plan.levers()):
            if plan.left_s() < 0:
                print("| (time budget: the rest skipped) |")
                return
            profiled = Profiled(plan.warmup, plan.warmup + steps, plan.device)
            with labelled_teachers():
                result = run(plan, row, label, changes, steps, (profiled,))
            s = profiled.summary(steps)
            idle = 1 - s["kernel_ms"] / result["ms_per_step"]
            print(f"| {label} | {result['levers']} | {result['ms_per_step']:.2f} | {s['kernel_ms']:.2f} | "
                  f"{idle:.0%} | {s['kernels']:.0f} | {s['syncs']:.1f} | {s['teachers']:.0%} |")


def section_table(plan: Plan) -> dict[tuple[str, int], float]:
    print("| method | batch | eager ms/step | eager img/s | levers | ms/step | img/s | speed-up | × CE |\n"
          "|---|---:|---:|---:|---|---:|---:|---:|---:|")
    rates: dict[tuple[str, int], float] = {}
    for batch in plan.batch_sizes:
        row = row_for(plan, batch)
        ce = None
        for label in plan.methods:
            if plan.left_s() < 0:
                print("| (time budget: the rest skipped) |")
                return rates
            eager, fast = run(plan, row, label, EAGER), run(plan, row, label, plan.levers())
            ce = fast["ms_per_step"] if label == "ce" else ce
            rates[label, batch] = fast["images_per_s"]
            ratio = f"{fast['ms_per_step'] / ce:.2f}" if ce else "–"
            print(f"| {label} | {batch} | {eager['ms_per_step']:.2f} | {eager['images_per_s']:,.0f} | "
                  f"{fast['levers']} | {fast['ms_per_step']:.2f} | {fast['images_per_s']:,.0f} | "
                  f"{eager['ms_per_step'] / fast['ms_per_step']:.2f} | {ratio} |")
    print("goals: ce at batch 128 <= 1.5 ms/step; aver_kd <= 2× ce")
    return rates


def section_reference(plan: Plan, rates: dict[tuple[str, int], float]) -> None:
    base = row_for(plan, plan.batch_sizes[0]).base
    arch, k, student = base.teachers.architectures()[0], len(base.teachers.seeds), base.student
    print(f"{k}× {arch} → {student}, reference: DataLoader ({plan.reference_workers} workers) + PIL transforms, "
          "fp32, teachers one after another with all their maps (mkdlab.bench.reference_images_per_second)")
    print("| batch | reference img/s | mkdlab aver_kd img/s | ratio | goal |\n|---:|---:|---:|---:|---|")
    for batch in plan.batch_sizes:
        reference = reference_images_per_second(arch, student, k, batch, plan.steps, plan.warmup, plan.device,
                                                "fashion_mnist_mini", 10, plan.reference_workers)
        ours = rates.get(("aver_kd", batch)) or run(plan, row_for(plan, batch), "aver_kd", plan.levers())[
            "images_per_s"]
        print(f"| {batch} | {reference:,.0f} | {ours:,.0f} | {ours / reference:.1f}× | >= 5× |")


def section_meta(plan: Plan) -> None:
    print("| batch | levers | ms/step, no meta update | ms/step, one every 5 steps | ratio | goal |\n"
          "|---:|---|---:|---:|---:|---|")
    steps = plan.steps if plan.quick else max(plan.steps, 5)  # at least one meta update is timed
    for batch in plan.batch_sizes:
        plain, meta = row_for(plan, batch, mmkd={"meta_freq": 0}), row_for(plan, batch, mmkd={"meta_freq": 5})
        for changes in (EAGER, plan.levers()):
            a, b = run(plan, plain, "mmkd", changes, steps), run(plan, meta, "mmkd", changes, steps)
            print(f"| {batch} | {b['levers']} | {a['ms_per_step']:.2f} | {b['ms_per_step']:.2f} | "
                  f"{b['ms_per_step'] / a['ms_per_step']:.2f} | <= 1.6 |")


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    fn()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def section_projection(plan: Plan) -> None:
    p = plan.projection
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (p["samples"], 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 100, (p["samples"],), generator=gen)
    common = dict(mean=[0.5] * 3, std=[0.25] * 3, device=plan.device)
    train = DeviceLoader(images, labels, p["batch"], train=True, drop_last=True, **common)
    test = DeviceLoader(images[: p["test"]], labels[: p["test"]], 256, train=False, **common)
    print(f"DE-MKD 3×{p['teacher']} → {p['student']}, {p['samples']:,} random 3×32×32 images, batch {p['batch']}, "
          f"{len(train)} steps/epoch, evaluation on {p['test']:,} images per epoch; projected for 240 epochs")
    print("| levers | ms/step | eval s/epoch | 240 epochs (min) | goal |\n|---|---:|---:|---:|---|")
    for changes in (EAGER, plan.levers(), plan.levers(compile=True)):
        if plan.left_s() < 0:
            print("| (time budget: the rest skipped) |")
            return
        if "torch._dynamo" in sys.modules:
            torch._dynamo.reset()
        config = load_config("de_mkd", ["data.dataset=cifar100", f"student={p['student']}",
                                        f"teachers.arch={p['teacher']}", f"data.batch_size={p['batch']}"])
        torch.manual_seed(0)
        teachers = [create(p["teacher"], num_classes=100, in_channels=3).to(plan.device).eval().requires_grad_(False)
                    for _ in range(3)]
        method = build_method(config, teachers)
        clock = _Clock(plan.warmup, plan.warmup + plan.steps, plan.device)
        train_config = dataclasses.replace(config.train, device=str(plan.device), epochs=10_000, log_every_steps=0,
                                           max_steps=plan.warmup + plan.steps, **changes)
        trainer = Trainer(method, train, test, train_config, callbacks=[clock])
        trainer.fit()
        ms = 1000 * (clock.end - clock.start) / plan.steps
        eval_s = _timed(trainer.evaluate, plan.device)
        minutes = 240 * (len(train) * ms / 1000 + eval_s) / 60
        print(f"| {trainer.speed.describe()} | {ms:.2f} | {eval_s:.2f} | {minutes:.1f} | <= 15 |")


def section_levers(plan: Plan) -> None:
    batch = plan.batch_sizes[0]
    row = row_for(plan, batch)
    print(f"batch {batch}: everything on, then each lever off in turn (warm-up s: the untimed first steps, "
          "compilation included)")
    print("| method | levers | ms/step | img/s | warm-up s |\n|---|---|---:|---:|---:|")
    on = plan.levers(compile=True)
    variants = [on, {**on, "compile": "off"}, {**on, "cuda_graphs": "off"}, {**on, "fused_optimizer": "off"},
                {**on, "cuda_graphs": "off", "sync_free": "off"}]
    for label in plan.lever_methods:
        multi = get_method(row.column(label).method.name).teachers_required == "many"
        for changes in variants[:2 if plan.quick else None] + ([{**on, "teacher_batching": "loop"}] if multi else []):
            if plan.left_s() < 0:
                print("| (time budget: the rest skipped) |")
                return
            r = run(plan, row, label, changes)
            name = r["levers"] + (", teachers in a loop" if changes.get("teacher_batching") == "loop" else "")
            print(f"| {label} | {name} | {r['ms_per_step']:.2f} | {r['images_per_s']:,.0f} | {r['warmup_s']:.1f} |")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every section at tiny sizes on the CPU")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--methods", nargs="+", default=None, help="only these columns of the study row")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps first (graph capture, compilation)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="start no section after this many seconds")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    print("# python benchmarks/bench_gpu.py " + " ".join(argv))
    plan = make_plan(args)
    name = torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else "CPU (dry run)"
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.get_num_threads()} threads")
    rates: dict[tuple[str, int], float] = {}
    for section in SECTIONS:
        if section not in args.sections:
            continue
        if plan.left_s() < 0:
            print(f"\n## {section}: skipped (time budget of {plan.budget_s:.0f} s spent)")
            continue
        print(f"\n## {section}  (t = {time.perf_counter() - plan.started:.0f} s)")
        if section == "table":
            rates = section_table(plan)
        elif section == "reference":
            section_reference(plan, rates)
        else:
            {"equal": section_equal, "profile": section_profile, "meta": section_meta,
             "projection": section_projection, "levers": section_levers}[section](plan)
        sys.stdout.flush()
    print(f"\ndone in {time.perf_counter() - plan.started:.0f} s")


if __name__ == "__main__":
    main()
