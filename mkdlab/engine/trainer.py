"""The one training loop of mkdlab.

Teachers, single-teacher KD, multi-teacher KD, meta-learning and self-distillation all run through
:class:`Trainer`; methods change its behaviour only through the :class:`~mkdlab.methods.base.Distiller` contract
(loss terms, parameter groups, extra optimisers, the :class:`~mkdlab.methods.base.TrainingHooks`). Callbacks and
loggers receive the same hooks. The trainer owns what every run needs: SGD with the step schedule, mixed precision
on CUDA, channels_last, evaluation (top-1/top-5, last and best), history, atomic checkpoints with exact resume
(also from the middle of an epoch), and a clean stop on SIGINT/SIGTERM. Under ``torchrun`` it asks its
:class:`~mkdlab.engine.distributed.DistributedContext` what differs (the wrapped step, rank 0's files, the epoch sums
of the global batch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mkdlab.config import TrainConfig
from mkdlab.engine.checkpoint import FORMAT, VERSION, load_run_checkpoint, load_state_strict
from mkdlab.engine.device import resolve_device
from mkdlab.engine.distributed import DistributedContext
from mkdlab.engine.epoch_totals import EpochTotals, ExtrasRecorder
from mkdlab.engine.evaluation import evaluate_model
from mkdlab.engine.finite_watch import FiniteWatch, NonFiniteStep
from mkdlab.engine.optimizer import build_sgd, keep_implementation
from mkdlab.engine.schedule import lr_factor, scale_milestones
from mkdlab.engine.seeding import rng_state, seed_everything, set_rng_state
from mkdlab.engine.signals import stop_on_signals
from mkdlab.engine.speed import resolve_speed
from mkdlab.engine.step_runner import StepRunner
from mkdlab.methods.base import Batch, Distiller, StepOutput, TrainingHooks, TrainState
from mkdlab.storage import CheckpointError, save_atomic

LAST = "last.pt"
BEST_STUDENT = "best_student.pt"


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the last finite state was saved before raising.

    The *last finite state*: without ``train.sync_free`` every step is checked before its backward pass, and the
    state saved is the one after the step before the bad one. With it, a device record is read every
    ``train.log_every_steps`` steps, at every epoch end and before every checkpoint, so every checkpoint is written
    only after a check found all losses so far finite; the last finite state is the last checkpoint written (a run
    writes one at its start, so there always is one), left as it is. The message names the bad step and the step
    of the state saved.
    """


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM (or a stop request) ended training; a checkpoint to resume from was written."""


@dataclass
class FitResult:
    """Summary of a finished run: last-epoch and best-epoch test accuracy and the history rows."""

    last_top1: float
    best_top1: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0
    #: per epoch, the method's extras of every step concatenated (with ``labels`` and ``indices``), when recorded.
    extras: list[dict[str, Tensor]] = field(default_factory=list)


class Trainer:
    """Train ``method`` on ``train_loader``, evaluating its student on ``test_loader`` after each epoch.

    ``run_dir`` receives ``last.pt`` (a full checkpoint), ``best_student.pt`` (the best student's weights) and the
    per-epoch extras when ``record_extras``; with ``run_dir=None`` nothing is written. ``callbacks`` (loggers
    among them) receive every :class:`~mkdlab.methods.base.TrainingHooks` call after the method. Loaders that
    define ``set_epoch(epoch)`` are told the epoch before iterating, which makes their order and augmentation a
    function of (seed, epoch) and lets a resumed run replay the exact same batches. :attr:`state` is the run's
    :class:`~mkdlab.methods.base.TrainState`; :attr:`speed` the run's resolved speed levers
    (:mod:`mkdlab.engine.speed`), whose device work :class:`~mkdlab.engine.step_runner.StepRunner` does.

    ``distributed`` (default: one process) is the process group of a data-parallel run: every rank trains on its
    block of each global batch, only rank 0 evaluates and writes files, and a checkpoint holds what one process
    would hold, so a run resumes on any number of ranks.
    """

    def __init__(
        self,
        method: Distiller,
        train_loader: Iterable[Sequence[Tensor]],
        test_loader: Iterable[Sequence[Tensor]] | None,
        config: TrainConfig,
        *,
        run_dir: str | Path | None = None,
        callbacks: Sequence[TrainingHooks] = (),
        experiment: dict[str, Any] | None = None,
        record_extras: bool = False,
        progress: Callable[..., Iterable[Any]] | None = None,
        distributed: DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.dist = distributed or DistributedContext.single()
        self.device = self.dist.device(resolve_device(config.device))
        dataset = getattr(train_loader, "dataset", None)
        if dataset is not None:
            method.bind_train_set(len(dataset))  # type: ignore[arg-type]
        self.method = method.to(self.device)
        self.dist.prepare(self.method, self.device, config.sync_batchnorm)
        # channels_last pays on CUDA and, through oneDNN, on CPU too (30-80 % faster training measured on 2 cores)
        self.channels_last = config.channels_last != "off"
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.amp_dtype = self._amp_dtype(config.amp)
        self.speed = resolve_speed(config, self.device, self.amp_dtype)
        if self.speed.teacher_batching != "auto" and len(method.teachers):
            method.ensemble.batching = self.speed.teacher_batching
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.hooks: list[TrainingHooks] = [method, *callbacks]
        self.experiment = experiment or {}
        self.record_extras = record_extras
        self.progress = progress
        self.optimizer = build_sgd(method.parameter_groups(), config, self.speed.fused_optimizer)
        self.extra_optimizers = method.extra_optimizers()
        self.train_step = self.dist.wrap(self.method, [p for g in self.optimizer.param_groups for p in g["params"]])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.watch = FiniteWatch(self.device) if self.speed.sync_free else None
        self._saved_step = -1  # global step of the last run_dir/last.pt written
        self.runner = StepRunner(self.method, self.optimizer, self.scaler, self.autocast, self.speed, self.watch,
                                 self._fail_non_finite, forward_train=self.train_step,
                                 loss_weight=self._loss_weight if self.dist.distributed else None)
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
        if steps_per_epoch == 0:
            raise ValueError("the training loader yields no batch (dataset smaller than one batch with drop_last?)")
        total_steps = config.epochs * steps_per_epoch
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)
        self.state = TrainState(total_epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                                total_steps=total_steps, optimizer=self.optimizer, cuda_graphs=self.speed.cuda_graphs,
                                collectives=self.dist.collectives)
        self.epochs = math.ceil(total_steps / steps_per_epoch)
        self.milestones = scale_milestones(config.milestones, config.milestones_of, config.epochs)
        self.totals = EpochTotals()
        self.extras = ExtrasRecorder()
        self.history: list[dict[str, Any]] = []
        self.best_top1 = -1.0
        self.best_epoch = -1
        self.extras_history: list[dict[str, Tensor]] = []
        self._epoch_started = time.perf_counter()

    # -- configuration helpers ----------------------------------------------------------------------------------
    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        if amp == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else None
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]

    def autocast(self) -> Any:
        """The autocast context of this run (a no-op in fp32; without its weight-cast cache under CUDA graphs, as
        PyTorch's graph recipe requires)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=not self.speed.cuda_graphs)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of the main optimiser during 0-based ``epoch``."""
        return self.config.lr * lr_factor(epoch, self.milestones, self.config.lr_decay)

    def _set_lr(self, epoch: int) -> None:
        factor = lr_factor(epoch, self.milestones, self.config.lr_decay)
        for group in self.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor

    def request_stop(self) -> None:
        """Ask the loop to checkpoint and stop at the next step boundary (what SIGINT/SIGTERM do)."""
        self.state.request_stop()

    def _call(self, hook: str, *args: Any) -> None:
        for target in self.hooks:
            getattr(target, hook)(self.state, *args)

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> FitResult:
        """Train to the end (or resume the run in ``run_dir`` when ``resume`` and a checkpoint exists)."""
        if resume and self.run_dir is not None and (self.run_dir / LAST).exists():
            self.load_checkpoint(self.run_dir / LAST)
        else:
            seed_everything(self.config.seed, self.config.deterministic)
        start = time.perf_counter()
        state = self.state
        if self.watch is not None:
            self.watch.start(state.global_step)
            if self.run_dir is not None:
                self.save_checkpoint()
        self._call("on_train_start")
        with stop_on_signals(self.request_stop):
            while state.global_step < state.total_steps:
                self._train_epoch()
                if state.step_in_epoch == state.steps_per_epoch or state.global_step >= state.total_steps:
                    self._end_epoch()
        self._call("on_train_end")
        last = self.history[-1].get("test_top1", float("nan")) if self.history else float("nan")
        return FitResult(last, self.best_top1, self.best_epoch, list(self.history), time.perf_counter() - start,
                         list(self.extras_history))

    def _batches(self) -> Iterator[Sequence[Tensor]]:
        state = self.state
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(state.epoch)
        iterator: Iterable[Sequence[Tensor]] = self.train_loader
        if state.step_in_epoch:
            iterator = islice(iterator, state.step_in_epoch, None)
        if self.progress is not None:
            iterator = self.progress(iterator, total=state.steps_per_epoch - state.step_in_epoch,
                                     desc=f"epoch {state.epoch + 1}/{self.epochs}")
        return iter(iterator)

    def _train_epoch(self) -> None:
        state = self.state
        self.method.train()
        self._set_lr(state.epoch)
        if not state.step_in_epoch:
            self._epoch_started = time.perf_counter()
            self.totals = EpochTotals()
            self.extras = ExtrasRecorder()
        for item in self._batches():
            if state.global_step >= state.total_steps:
                break
            batch = Batch.from_loader(item, self.device)
            if self.channels_last:
                batch.images = batch.images.contiguous(memory_format=torch.channels_last)
            output = self._step(batch)
            self.totals.add(batch, output)
            if self.record_extras:
                self.extras.add(batch, output)
            state.step_in_epoch += 1
            state.global_step += 1
            if self.config.log_every_steps and state.global_step % self.config.log_every_steps == 0:
                self._verify_finite()
                self._call("on_step_metrics", self._metrics(output))
            if self.dist.any(state.stop_requested):
                self._save_verified()
                raise TrainingInterrupted(
                    f"training stopped at epoch {state.epoch + 1}, step {state.step_in_epoch}; "
                    f"resume with the same command and --resume"
                    + (f" (checkpoint {self.run_dir / LAST})" if self.run_dir else "")
                )
            every = self.config.checkpoint_every_steps
            if every and state.global_step % every == 0 and state.step_in_epoch < state.steps_per_epoch:
                self._save_verified()

    def _step(self, batch: Batch) -> StepOutput:
        self.state.grad_scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self._call("before_step", batch)
        output = self.runner.run(batch, self.state.epoch)
        self._call("after_step", batch, output)
        return output

    def _loss_weight(self, batch: Batch) -> float:
        """This rank's share of the global batch's mean loss (the ranks' blocks may differ in the last batch)."""
        return self.dist.loss_weight(len(batch.labels), self.train_loader.global_batch_size(self.state.step_in_epoch))

    def _metrics(self, output: StepOutput) -> dict[str, float]:
        """The step's loss terms as floats (read in one transfer) and the main lr."""
        values = torch.stack([value.detach().double() for value in output.losses.values()]).tolist()
        metrics = dict(zip(output.losses, values, strict=True))
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        return metrics

    def _where(self, global_step: int) -> str:
        epoch, step = divmod(global_step, self.state.steps_per_epoch)
        return f"epoch {epoch + 1}, step {step + 1}"

    def _fail_non_finite(self, output: StepOutput) -> None:
        """The per-step check (no ``sync_free``): save the state before this step and raise."""
        bad = [name for name, value in output.losses.items() if not torch.isfinite(value)]
        saved = ""
        if self.run_dir is not None and not self.dist.distributed:  # the other ranks may not have failed
            self.save_checkpoint()
            saved = f" The last finite state is saved in {self.run_dir / LAST}."
        self._raise_non_finite(bad, self.state.global_step, saved)

    def _raise_non_finite(self, terms: list[str], global_step: int, saved: str) -> None:
        raise NonFiniteLossError(
            f"loss term(s) {', '.join(terms)} became non-finite at {self._where(global_step)} "
            f"(lr {self.optimizer.param_groups[0]['lr']:g}).{saved} Lower train.lr, check the data normalisation, "
            f"or try train.amp=off."
        )

    def _verify_finite(self) -> None:
        """With ``sync_free``: read the device record of non-finite losses (one host synchronisation) and, when a
        step was bad, raise :class:`NonFiniteLossError`, leaving the last checkpoint (the last finite state)."""
        bad: NonFiniteStep | None = None if self.watch is None else self.watch.check()
        if bad is None:
            return
        saved = ""
        if self.run_dir is not None and self._saved_step >= 0:
            when = self._where(self._saved_step - 1) if self._saved_step else "the start of the run"
            saved = f" The last finite state (after {when}: the last checkpoint) is in {self.run_dir / LAST}."
        self._raise_non_finite(bad.terms, bad.global_step, saved)

    def _save_verified(self) -> None:
        """Check the losses (with ``sync_free``), then write ``last.pt``."""
        self._verify_finite()
        self.save_checkpoint()

    def _end_epoch(self) -> None:
        state = self.state
        self._verify_finite()
        self._call("on_epoch_end")
        extras = self._gathered(self.extras.concatenated())
        if extras:
            self.extras_history.append(extras)
            if self.run_dir is not None and self.dist.is_main:
                save_atomic(extras, self.run_dir / "extras" / f"epoch_{state.epoch + 1:03d}.pt")
        elapsed = time.perf_counter() - self._epoch_started
        record: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.global_step, "lr": self.lr_at(state.epoch)}
        totals = self.dist.combine(self.totals, self.device)
        record.update(totals.record())
        record["images_per_s"] = self.dist.world_size * totals.images / max(elapsed, 1e-9)
        record["epoch_time_s"] = elapsed
        last_epoch = state.global_step >= state.total_steps
        if self.test_loader is not None and self.dist.is_main and (
                (state.epoch + 1) % self.config.eval_every == 0 or last_epoch):
            record.update(self.evaluate())
            if record["test_top1"] > self.best_top1:
                self.best_top1, self.best_epoch = record["test_top1"], state.epoch + 1
                if self.run_dir is not None:
                    save_atomic(self.method.export_student().state_dict(), self.run_dir / BEST_STUDENT)
            record["best_top1"], record["best_epoch"] = self.best_top1, self.best_epoch
        self.history.append(record)
        self._call("on_epoch_record", record)
        state.epoch += 1
        state.step_in_epoch = 0
        self.totals = EpochTotals()
        if self.run_dir is not None:
            self.save_checkpoint()

    def _gathered(self, extras: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every rank's extras of the epoch, rank after rank (this process's alone for one process)."""
        if not (extras and self.dist.distributed):
            return extras
        return {name: self.dist.collectives.all_gather(value.to(self.device)).cpu() for name, value in extras.items()}

    def evaluate(self, loader: Iterable[Sequence[Tensor]] | None = None) -> dict[str, float]:
        """Test loss, top-1 and top-5 accuracy (%) of the student on ``loader`` (default: the test loader)."""
        loader = self.test_loader if loader is None else loader
        if loader is None:
            raise ValueError("no test loader to evaluate on")
        return evaluate_model(self.method, loader, self.device, channels_last=self.channels_last,
                              amp_dtype=self.amp_dtype)

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the run is now."""
        method_state = {k: v for k, v in self.method.state_dict().items() if not k.startswith("teachers.")}
        state = self.state
        return {
            "format": FORMAT, "version": VERSION,
            "method": method_state,
            "optimizer": self.optimizer.state_dict(),
            "extra_optimizers": {name: opt.state_dict() for name, opt in self.extra_optimizers.items()},
            "scaler": self.scaler.state_dict(),
            "scheduler": {"milestones": self.milestones, "decay": self.config.lr_decay, "base_lr": self.config.lr},
            "rng": rng_state(),
            "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
            **self.dist.combine(self.totals, self.device).state_dict(),
            "history": self.history, "best_top1": self.best_top1, "best_epoch": self.best_epoch,
            "config": self.experiment,
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the full training state atomically (default ``run_dir/last.pt``); every rank of a data-parallel
        run calls it, rank 0 writes."""
        if path is None:
            if self.run_dir is None:
                raise ValueError("no run_dir: pass a path to save_checkpoint")
            path = self.run_dir / LAST
        state = self.state_dict()  # on every rank: it combines the ranks' epoch sums
        if not self.dist.is_main:
            return Path(path)
        saved = save_atomic(state, path)
        if self.run_dir is not None and Path(path) == self.run_dir / LAST:
            self._saved_step = self.state.global_step
        return saved

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a state written by :meth:`save_checkpoint`; a mismatch names the file and the keys."""
        checkpoint = load_run_checkpoint(path)
        load_state_strict(self.method, checkpoint["method"], path, skip_prefixes=("teachers.",))
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            keep_implementation(self.optimizer, self.speed.fused_optimizer)
            for name, optimizer in self.extra_optimizers.items():
                optimizer.load_state_dict(checkpoint["extra_optimizers"][name])
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"checkpoint {path}: optimiser state does not match this method ({err})") from None
        self.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        state = self.state
        state.epoch, state.step_in_epoch = checkpoint["epoch"], checkpoint["step_in_epoch"]
        state.global_step = checkpoint["global_step"]
        self.totals.load_state_dict(checkpoint, self.device)
        self._epoch_started = time.perf_counter()
        self.history = list(checkpoint["history"])
        self.best_top1, self.best_epoch = checkpoint["best_top1"], checkpoint["best_epoch"]
        self._call("on_resume")
