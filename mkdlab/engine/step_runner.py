"""The device work of one training step — the method's forward (teachers and student), the loss, backward and the
optimiser step — run eagerly, through :func:`torch.compile` (``train.compile``) and/or replayed as one CUDA graph
(``train.cuda_graphs``). The trainer calls the method's hooks around it.

Every path computes the same step: eager and ``aot_eager``-compiled steps are bit-identical on CPU; the inductor
backend may reorder float arithmetic; a replayed graph runs the eager kernels. A method whose forward cannot be
traced (``Distiller.compilable = False``, or a tracing error at the first call) runs eagerly, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from mkdlab.cuda_graphs import GraphedCall
from mkdlab.engine.finite_watch import FiniteWatch
from mkdlab.engine.speed import SpeedOptions
from mkdlab.methods.base import Batch, Distiller, StepOutput

ForwardFn = Callable[[Batch, int], tuple[StepOutput, Tensor]]


class StepRunner:
    """Run the device part of a step for :class:`~mkdlab.engine.trainer.Trainer`.

    ``forward_train`` is the method's (under ``torchrun``: its DistributedDataParallel-wrapped) forward;
    ``on_non_finite(output)`` is called before backward when a loss is not finite and no ``watch`` records it
    (the per-step, synchronising check: it raises). With a ``watch`` the step only records it on the device.
    With CUDA graphs the step is captured per (epoch, learning rates, batch layout): whatever else the method reads
    from Python must not change between steps. Outputs of a replayed step live in the graph's memory until the next
    step; gradients are re-attached to their parameters after each replay, so hooks that set ``.grad = None`` do not
    detach them from the graph.
    """

    def __init__(self, method: Distiller, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 autocast: Callable[[], AbstractContextManager[Any]], options: SpeedOptions,
                 watch: FiniteWatch | None, on_non_finite: Callable[[StepOutput], None], *,
                 forward_train: Callable[[Batch, int], StepOutput] | None = None,
                 loss_weight: Callable[[Batch], float] | None = None) -> None:
        self.method, self.optimizer, self.scaler, self.autocast = method, optimizer, scaler, autocast
        self.forward_train = forward_train or method.forward_train
        self.loss_weight = loss_weight
        self.watch, self.on_non_finite = watch, on_non_finite
        self.compiled: ForwardFn | None = None
        if options.compile and method.compilable:
            if len(method.teachers):
                _ = method.ensemble  # built now: built inside the first trace, it would force a second one
            self.compiled = torch.compile(self.eager_forward, backend=options.compile_backend)
        elif options.compile:
            warnings.warn(f"train.compile: method {method.method_name!r} cannot be traced, it runs eagerly",
                          RuntimeWarning, stacklevel=2)
        self.graph = GraphedCall(f"training step of {method.method_name or type(method).__name__}") \
            if options.cuda_graphs else None
        self._graph_grads: list[tuple[torch.nn.Parameter, Tensor]] = []

    def eager_forward(self, batch: Batch, epoch: int) -> tuple[StepOutput, Tensor]:
        """The method's loss terms under the run's autocast, and their sum (times ``loss_weight(batch)``: a rank's
        share of a data-parallel global batch)."""
        with self.autocast():
            output = self.forward_train(batch, epoch)
        loss = output.total()
        return output, loss if self.loss_weight is None else loss * self.loss_weight(batch)

    def forward(self, batch: Batch, epoch: int) -> tuple[StepOutput, Tensor]:
        """:meth:`eager_forward`, compiled when ``train.compile`` is on; a tracing error switches to eager for good."""
        if self.compiled is None:
            return self.eager_forward(batch, epoch)
        try:
            return self.compiled(batch, epoch)
        except torch._dynamo.exc.TorchDynamoException as err:  # raised while tracing, before any work ran
            warnings.warn(f"train.compile: tracing {self.method.method_name!r} failed, it runs eagerly from now on "
                          f"({type(err).__name__}: {str(err).splitlines()[0]})", RuntimeWarning, stacklevel=2)
            self.compiled = None
            return self.eager_forward(batch, epoch)

    def device_step(self, batch: Batch, epoch: int) -> StepOutput:
        """Forward, the NaN check or record, zero_grad, (scaled) backward and the optimiser step."""
        output, loss = self.forward(batch, epoch)
        if self.watch is not None:
            self.watch.observe(output.losses)
        elif not torch.isfinite(loss):
            self.on_non_finite(output)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return output

    def run(self, batch: Batch, epoch: int) -> StepOutput:
        """One step on ``batch`` during 0-based ``epoch``: eagerly, or through the CUDA graph."""
        if self.graph is None:
            return self.device_step(batch, epoch)
        indices = batch.indices is not None
        key = (epoch, tuple(group["lr"] for group in self.optimizer.param_groups), indices,
               tuple(batch.images.shape), batch.images.dtype, batch.images.stride())
        inputs = [batch.images, batch.labels, *([batch.indices] if indices else [])]

        def step(images: Tensor, labels: Tensor, *rest: Tensor) -> StepOutput:
            return self.device_step(Batch(images, labels, rest[0] if rest else None), epoch)

        if self.graph.captures_next(key):
            self.method.zero_grad(set_to_none=True)  # the capture must allocate the gradients in its own memory
        output = self.graph(key, step, inputs)
        if self.graph.last_call == "capture":
            self._graph_grads = [(p, p.grad) for p in self.method.parameters() if p.grad is not None]
        if self.graph.last_call in ("capture", "replay"):
            for param, grad in self._graph_grads:
                param.grad = grad
        return output
