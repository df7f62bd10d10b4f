"""``python -m mkdlab bench``: images/second of one multi-teacher distillation step, and where the time goes.

Two loops do the same work (K frozen teachers forward, student forward and backward, an SGD step on
CE + equal-weight KD) on the same architectures and batch size:

* **reference**: written the way the official repositories (RepDistiller, CA-MKD, MMKD) do it: a torchvision
  ``DataLoader`` with PIL transforms, fp32, the teachers called one after another with every feature map
  gathered (``is_feat=True``), the student's features gathered too;
* **mkdlab**: the real :class:`~mkdlab.engine.trainer.Trainer` running :class:`~mkdlab.methods.weighted_kd.AverKD`:
  data resident on the device and augmented there, teachers under ``inference_mode`` (batched into one vmapped call
  where that is faster), channels_last, and bf16 autocast on CUDA; measured three times on the CPU, with eager teachers
  and with frozen compiled ones (:mod:`mkdlab.methods.frozen`: BatchNorm folded, weights pre-packed for oneDNN,
  compiled once per run, during the warm-up steps: the compile time is reported apart), and with int8
  teachers (:mod:`mkdlab.methods.quantized`: an approximation, opt-in, calibrated during the warm-up).

Then the mkdlab step is split into its parts (data, teachers, student forward+backward, the rest) so the cost is
visible. Models are randomly initialised: speed does not depend on the weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mkdlab.config import TrainConfig
from mkdlab.data import dataset_info, get_dataset, make_loaders
from mkdlab.engine.device import resolve_device
from mkdlab.engine.trainer import Trainer
from mkdlab.losses import kd_loss
from mkdlab.methods.base import TrainingHooks, TrainState
from mkdlab.methods.ensemble import TeacherEnsemble
from mkdlab.methods.quantized import CALIBRATION_BATCHES
from mkdlab.methods.weighted_kd import AverKD
from mkdlab.models import create


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def _timed(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / steps


def _models(teacher: str, student: str, k: int, num_classes: int, in_channels: int,
            device: torch.device) -> tuple[list[nn.Module], nn.Module]:
    torch.manual_seed(0)
    teachers = [create(teacher, num_classes=num_classes, in_channels=in_channels).to(device).eval() for _ in range(k)]
    for t in teachers:
        t.requires_grad_(False)
    return teachers, create(student, num_classes=num_classes, in_channels=in_channels).to(device)


def reference_images_per_second(teacher: str, student: str, k: int, batch_size: int, steps: int, warmup: int,
                                device: torch.device, dataset: str, num_classes: int, workers: int = 2) -> float:
    """Images/second of the official-repository style loop."""
    info = dataset_info(dataset)
    teachers, net = _models(teacher, student, k, num_classes, info.in_channels, device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(get_dataset(dataset, train=True), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    batches = _cycle(loader)

    def step() -> None:
        images, labels = next(batches)
        images, labels = images.to(device), labels.to(device)
        with torch.no_grad():
            outputs = [t.forward_features(images) for t in teachers]  # every map, as is_feat=True does
        student_out = net.forward_features(images)
        logits = student_out["logits"]
        loss = F.cross_entropy(logits, labels)
        loss = loss + sum(kd_loss(logits, out["logits"]) for out in outputs) / k
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return batch_size / _timed(step, steps, warmup, device)


class _StepClock(TrainingHooks):
    """Trainer callback that timestamps steps after a warm-up."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.start, self.end, self.timed = warmup, device, 0.0, 0.0, 0

    def after_step(self, state: TrainState, batch: Any, output: Any) -> None:
        if state.global_step + 1 == self.warmup:
            _synchronize(self.device)
            self.start = time.perf_counter()
        elif state.global_step + 1 > self.warmup:
            self.timed += 1
            _synchronize(self.device)
            self.end = time.perf_counter()


def mkdlab_images_per_second(teacher: str, student: str, k: int, batch_size: int, steps: int, warmup: int,
                             device: torch.device, dataset: str, num_classes: int,
                             compiler: str = "off") -> tuple[float, float]:
    """Images/second of the trainer running AVER-KD on the device-resident loader, and the seconds spent compiling
    the teachers (``compiler``: ``teachers.compile`` on the CPU, compiled during the warm-up; ``int8`` calibrates on
    :data:`~mkdlab.methods.quantized.CALIBRATION_BATCHES` more warm-up steps)."""
    warmup += CALIBRATION_BATCHES if compiler == "int8" else 0
    info = dataset_info(dataset)
    teachers, net = _models(teacher, student, k, num_classes, info.in_channels, device)
    train_loader, _ = make_loaders(dataset, batch_size, device=device, loader="device", drop_last=True)
    clock = _StepClock(warmup, device)
    config = TrainConfig(epochs=10_000, max_steps=warmup + steps, device=str(device), nesterov=True,
                         log_every_steps=0)
    method = AverKD(net, teachers)
    method.ensemble.use_compiled(compiler)  # type: ignore[arg-type]
    Trainer(method, train_loader, None, config, callbacks=[clock]).fit()
    return batch_size * clock.timed / (clock.end - clock.start), method.ensemble.compile_seconds


def breakdown(teacher: str, student: str, k: int, batch_size: int, steps: int, warmup: int, device: torch.device,
              dataset: str, num_classes: int) -> dict[str, float]:
    """Images/second of each part of the mkdlab step measured alone."""
    info = dataset_info(dataset)
    teachers, net = _models(teacher, student, k, num_classes, info.in_channels, device)
    train_loader, _ = make_loaders(dataset, batch_size, device=device, loader="device", drop_last=True)
    batches = _cycle(train_loader)
    images, labels = next(batches)
    images = images.contiguous(memory_format=torch.channels_last)  # as the trainer does
    for model in (*teachers, net):
        model.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    results: dict[str, float] = {"data (device loader)": batch_size / _timed(lambda: next(batches), steps, warmup,
                                                                            device)}
    for mode in ("loop", "vmap", "compiled", "int8"):
        ensemble = TeacherEnsemble(teachers, batching="vmap" if mode == "vmap" else "loop")
        if mode == "vmap" and not ensemble.uses_vmap(device):
            continue
        if mode in ("compiled", "int8"):
            if device.type != "cpu":
                continue
            ensemble.use_compiled("auto" if mode == "compiled" else "int8")

        def teachers_forward(ensemble: TeacherEnsemble = ensemble) -> None:
            with autocast:
                ensemble.logits(images)

        calibration = CALIBRATION_BATCHES if mode == "int8" else 0
        results[f"{k} teachers forward ({mode})"] = batch_size / _timed(teachers_forward, steps, warmup + calibration,
                                                                        device)

    def student_step() -> None:
        with autocast:
            loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    results["student forward+backward+SGD"] = batch_size / _timed(student_step, steps, warmup, device)
    return results


def run_step_benchmark(teacher: str = "resnet56", student: str = "resnet20", num_teachers: int = 3,
                       batch_size: int = 64, steps: int = 20, warmup: int = 3, device: str = "auto",
                       dataset: str = "fashion_mnist_mini", num_classes: int = 100) -> dict[str, float]:
    """Print and return images/second of both loops, their ratio and the mkdlab step's breakdown."""
    target = resolve_device(device)
    args = (teacher, student, num_teachers, batch_size, steps, warmup, target, dataset, num_classes)
    print(f"{num_teachers}x {teacher} -> {student}, batch {batch_size}, {steps} timed steps after {warmup} warm-up, "
          f"{target} ({torch.get_num_threads()} threads), data {dataset}")
    reference = reference_images_per_second(*args)
    print(f"  reference loop (DataLoader+PIL, fp32, teachers one by one, all features): {reference:8.1f} img/s")
    ours, _ = mkdlab_images_per_second(*args)
    print(f"  mkdlab trainer (device data, inference_mode teachers, channels_last; bf16 on CUDA): {ours:8.1f} img/s"
          f"   {ours / reference:.2f}x the reference")
    results = {"reference": reference, "mkdlab": ours, "ratio": ours / reference}
    step_rate = ours
    if target.type == "cpu":
        compiled, seconds = mkdlab_images_per_second(*args, compiler="auto")
        print(f"  mkdlab trainer, frozen teachers compiled (BN folded, oneDNN pre-packed): "
              f"{compiled:8.1f} img/s   {compiled / reference:.2f}x the reference   (compiled once in {seconds:.1f} s, "
              f"outside the timed steps)")
        quantized, int8_seconds = mkdlab_images_per_second(*args, compiler="int8")
        print(f"  mkdlab trainer, int8 teachers (approximate, opt-in: teachers.compile=int8): "
              f"{quantized:8.1f} img/s   {quantized / reference:.2f}x the reference   (calibrated on "
              f"{CALIBRATION_BATCHES} warm-up batches, quantised in {int8_seconds:.1f} s)")
        results.update({"mkdlab_compiled": compiled, "ratio_compiled": compiled / reference, "compile_s": seconds,
                        "mkdlab_int8": quantized, "ratio_int8": quantized / reference})
        step_rate = compiled
    parts = breakdown(*args)
    print("  where the mkdlab step's time goes (each part alone):")
    for name, rate in parts.items():
        print(f"    {name:40s} {rate:10.1f} img/s   {1000 * batch_size / rate:8.2f} ms/batch")
    exact_parts = {name: rate for name, rate in parts.items() if "(int8)" not in name}
    print(where_the_time_goes(exact_parts, step_rate, batch_size, num_teachers))
    if "mkdlab_int8" in results:
        print(where_the_time_goes(parts, results["mkdlab_int8"], batch_size, num_teachers, "int8 step"))
    return {**results, **parts}


def where_the_time_goes(parts: dict[str, float], step_rate: float, batch_size: int, k: int,
                        step: str = "fastest exact step") -> str:
    """One line: the share of a mkdlab step taken by the teachers (their fastest variant in ``parts``), the
    student, the data and the rest."""
    step_ms = 1000 * batch_size / step_rate
    teacher_ms = min(1000 * batch_size / rate for name, rate in parts.items() if name.startswith(f"{k} teachers"))
    student_ms = 1000 * batch_size / parts["student forward+backward+SGD"]
    data_ms = 1000 * batch_size / parts["data (device loader)"]
    rest_ms = step_ms - teacher_ms - student_ms - data_ms
    shares = [("teachers' forward", teacher_ms), ("student forward+backward+SGD", student_ms), ("data", data_ms),
              ("the rest (KD loss and its backward, totals, hooks)", rest_ms)]
    return f"  of the {step} ({step_ms:.1f} ms): " + ", ".join(
        f"{what} {ms:.1f} ms ({100 * ms / step_ms:.0f} %)" for what, ms in shares)
