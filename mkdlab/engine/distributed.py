"""One run on several processes (``torchrun``): what the trainer asks of the process group.

The trainer holds one :class:`DistributedContext` and asks it, never ``torch.distributed`` itself: which rank this
is (only rank 0 evaluates, logs and writes checkpoints), to wrap the method for training (DistributedDataParallel
around the trainable part of the method, the teachers left out), to agree on a stop, and to combine the epoch sums.
:meth:`DistributedContext.single` is a run of one process, where every answer is trivial;
:meth:`DistributedContext.from_environment` reads what ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``TORCHELASTIC_RESTART_COUNT``) and joins the process group (NCCL on CUDA, gloo on the CPU) once
per process, leaving it at exit.

What DistributedDataParallel averages: the gradients of the main optimiser's parameters. It ignores the teachers
(frozen, replicated: every rank loads the same pool files), the parameters of a method's own optimisers (the
method averages those gradients itself through :attr:`~mkdlab.methods.base.TrainState.collectives`) and every
buffer but the normalisation layers' statistics (per-sample memories are kept identical by the methods, which
gather the global batch before writing them).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mkdlab.engine.epoch_totals import EpochTotals
from mkdlab.engine.sync_batchnorm import convert_sync_batchnorm
from mkdlab.methods.base import Batch, Distiller, StepOutput
from mkdlab.methods.collectives import Collectives

TrainStepFn = Callable[[Batch, int], StepOutput]
#: the context of the process group this process joined (once: a run's teachers and its student share it).
_JOINED: DistributedContext | None = None


class ProcessGroupCollectives(Collectives):
    """:class:`~mkdlab.methods.collectives.Collectives` over the default ``torch.distributed`` process group."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_gather(self, tensor: Tensor, dim: int = 0) -> Tensor:
        """Every rank's ``tensor`` concatenated along ``dim`` in rank order; sizes along ``dim`` may differ (each
        part is padded to the largest for the collective, then trimmed)."""
        moved = tensor.movedim(dim, 0).contiguous()
        size = torch.tensor([moved.shape[0]], device=moved.device)
        sizes = [torch.empty_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        counts = [int(s) for s in sizes]
        padded = moved.new_zeros((max(counts), *moved.shape[1:]))
        padded[: moved.shape[0]] = moved
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]).movedim(0, dim)

    def all_reduce_mean(self, tensors: Sequence[Tensor]) -> None:
        """Each tensor replaced, in place, by its mean over the ranks."""
        for tensor in tensors:
            dist.all_reduce(tensor)
            tensor.div_(self.world_size)


class TrainStep(nn.Module):
    """``method.forward_train`` as a module's ``forward``, the form DistributedDataParallel wraps."""

    def __init__(self, method: Distiller) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Batch, epoch: int) -> StepOutput:
        """The method's loss terms for ``batch``."""
        return self.method.forward_train(batch, epoch)


@dataclass
class DistributedContext:
    """The process group of a run as the trainer sees it (``world_size`` 1: a run of one process).

    ``restarted`` tells that ``torchrun`` restarted this group after a failure (the run then resumes from its last
    checkpoint); ``control`` is the gloo group of the stop agreement (CPU tensors, no device synchronisation).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restarted: bool = False
    collectives: Collectives = field(default_factory=Collectives)
    control: object | None = None

    @classmethod
    def single(cls) -> DistributedContext:
        """A run of one process."""
        return cls()

    @classmethod
    def from_environment(cls, device: torch.device) -> DistributedContext:
        """The context ``torchrun`` describes in the environment, joining its process group (NCCL on CUDA, gloo on
        the CPU); a single process when ``WORLD_SIZE`` is unset or 1."""
        global _JOINED
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls.single()
        if _JOINED is not None and dist.is_initialized():
            return _JOINED
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
            atexit.register(dist.destroy_process_group)
        _JOINED = cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                      restarted=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0,
                      collectives=ProcessGroupCollectives(), control=dist.new_group(backend="gloo"))
        return _JOINED

    @property
    def distributed(self) -> bool:
        """Whether several processes train this run."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates, logs and writes the run's files."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA run of several processes, else ``device``."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    # -- training ------------------------------------------------------------------------------------------------
    def prepare(self, method: Distiller, device: torch.device, sync_batchnorm: bool) -> None:
        """Before the trainer's optimisers are built: with ``sync_batchnorm`` (and several ranks), the batch-norm
        layers of everything but the teachers normalise over the global batch."""
        if not (self.distributed and sync_batchnorm):
            return
        for name, child in method.named_children():
            if name != "teachers":
                setattr(method, name, convert_sync_batchnorm(child, device))

    def wrap(self, method: Distiller, trained: Sequence[nn.Parameter]) -> TrainStepFn:
        """The function the trainer calls for a step's loss terms: ``method.forward_train`` itself for one process;
        for several, the method inside DistributedDataParallel, which averages the gradients of ``trained`` (the
        main optimiser's parameters) over the ranks during the backward pass."""
        if not self.distributed:
            return method.forward_train
        step = TrainStep(method)
        trained_ids = {id(p) for p in trained}
        ignored = [f"method.{name}" for name, p in method.named_parameters() if id(p) not in trained_ids]
        norm_buffers = {id(b) for m in method.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                        for b in m.buffers(recurse=False)}
        ignored += [f"method.{name}" for name, b in method.named_buffers()
                    if name.startswith("teachers.") or id(b) not in norm_buffers]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, ignored)
        # find_unused_parameters: a method may leave some trained parameters out of a step (a phase's terms).
        return nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)

    def loss_weight(self, local_size: int, global_size: int) -> float:
        """What this rank's loss is multiplied by so that averaging the gradients over the ranks gives the
        gradient of the global batch's mean loss: ``local_size · world_size / global_size`` (1 when the global
        batch splits evenly)."""
        return local_size * self.world_size / global_size if self.distributed else 1.0

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (the stop agreement: every rank stops at the same step)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def combine(self, totals: EpochTotals, device: torch.device) -> EpochTotals:
        """The epoch sums averaged over the ranks: each loss term's per-step sum, the correct predictions and the
        images (with one process, ``totals`` itself). Loss means and accuracy read from them are those of the
        global batch; the images of the whole group are ``world_size`` times :attr:`EpochTotals.images`. In these
        units a checkpoint holds them: every rank of a resumed run (of any size) starts from them, and averaging
        again at the epoch's end adds the mean of what the ranks added since."""
        if not self.distributed:
            return totals
        names = sorted(totals.sums)
        values = torch.stack([torch.as_tensor(totals.sums[n], device=device).float() for n in names]
                             + [torch.as_tensor(totals.correct, device=device).float(),
                                torch.tensor(float(totals.images), device=device)])
        self.collectives.all_reduce_mean([values])
        combined = EpochTotals()
        combined.sums = dict(zip(names, values[:-2], strict=True))
        combined.correct, combined.images, combined.steps = values[-2], float(values[-1]), totals.steps
        return combined

    def barrier(self) -> None:
        """Wait for every rank (a no-op for one process)."""
        if self.distributed:
            dist.barrier(group=self.control)
