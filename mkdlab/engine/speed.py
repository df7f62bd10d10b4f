"""The speed levers of a run (``train.compile``, ``cuda_graphs``, ``fused_optimizer``, ``sync_free``,
``teacher_batching``) resolved for its device: what ``auto`` means and which combinations are refused.

``auto`` turns on, on CUDA, every lever expected to be faster there: kernel launches and host round trips, not
arithmetic, bound a small model's step on an H100 (``figures/compare_fmnist/bench_methods_h100.txt``: a resnet8
CE step costs 5.65 ms at batch 128 and about the same at 64). None of these choices has been measured yet: they stay
unverified until ``python benchmarks/bench_gpu.py`` has run on a GPU (it prints each lever on and off). On CPU
``auto`` keeps the eager path: compile time dominates short CPU runs, a fused SGD rounds differently without being
faster here, and a host sync costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mkdlab.config import TrainConfig
from mkdlab.typed import ConfigError


@dataclass(frozen=True)
class SpeedOptions:
    """The levers of one run, resolved: each a plain on/off (``teacher_batching``: ``loop``/``vmap``/``auto``)."""

    compile: bool = False
    compile_backend: str = "inductor"
    cuda_graphs: bool = False
    fused_optimizer: bool = False
    sync_free: bool = False
    teacher_batching: str = "auto"

    def describe(self) -> str:
        """One line naming the levers that are on (for benchmark tables)."""
        on = [name for name in ("compile", "cuda_graphs", "fused_optimizer", "sync_free") if getattr(self, name)]
        return ", ".join(on) or "eager"


def _switch(value: str, auto: bool) -> bool:
    return auto if value == "auto" else value == "on"


def resolve_speed(config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None) -> SpeedOptions:
    """The :class:`SpeedOptions` of ``config`` on ``device`` with autocast ``amp_dtype``.

    CUDA graphs need CUDA, no fp16 loss scaling (its skipped steps and scale updates are host decisions) and the
    sync-free NaN check (a per-step check cannot be captured); asking for them otherwise is a
    :class:`~mkdlab.typed.ConfigError`, and ``auto`` leaves them off there.
    """
    cuda = device.type == "cuda"
    fp16 = amp_dtype == torch.float16
    graphs = _switch(config.cuda_graphs, cuda and not fp16 and config.sync_free != "off")
    if graphs and not cuda:
        raise ConfigError(f"train.cuda_graphs=on needs a CUDA device, this run uses {device}")
    if graphs and fp16:
        raise ConfigError("train.cuda_graphs=on cannot capture fp16 loss scaling: use train.amp=bf16 (or auto)")
    if graphs and config.sync_free == "off":
        raise ConfigError("train.cuda_graphs=on needs train.sync_free on (a per-step NaN check syncs the host)")
    return SpeedOptions(
        compile=_switch(config.compile, cuda),
        compile_backend=config.compile_backend,
        cuda_graphs=graphs,
        fused_optimizer=_switch(config.fused_optimizer, cuda),
        sync_free=graphs or _switch(config.sync_free, cuda),
        teacher_batching=config.teacher_batching,
    )
