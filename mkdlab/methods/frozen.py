r"""Frozen teachers compiled for inference on the CPU, once per run, with the eager module as the fallback.

Teachers never train, so their graphs can be specialised to constants. :func:`compile_frozen` traces a teacher's
``forward`` (logits) or ``forward_features`` (every named map) on an example batch and, with ``compiler="jit"``,

1. ``torch.jit.freeze`` inlines the weights as constants and folds each BatchNorm into the convolution before it,
   :math:`W' = W\gamma/\sqrt{\sigma^2+\epsilon}`, :math:`b' = (b-\mu)\gamma/\sqrt{\sigma^2+\epsilon}+\beta`
   (Ioffe & Szegedy 2015 give the transform; folding it is exact in real arithmetic, so only float32 rounding
   changes);
2. ``torch.jit.optimize_for_inference`` rewrites the convolutions for oneDNN with their weights pre-packed in its
   blocked layout and the following ReLU (and residual add) fused into them.

``compiler="inductor"`` is ``torch.compile`` with inductor's ``freezing`` (the same folding, then generated C++);
``"eager"`` is the module as it is. On 2 CPU threads, resnet56 at batch 64 (``python benchmarks/bench_frozen.py``)
the jit path is the faster and compiles in about a second, inductor takes minutes to compile: ``"auto"`` is ``jit``.
A graph is specialised to the input's shape, dtype and memory format, so :class:`FrozenTeacher` keeps one per kind
of batch it has seen. Anything the trace cannot handle, autocast, autograd or a non-CPU tensor goes to the eager
module, whose outputs are the same up to float32 rounding (``tests/test_frozen.py`` checks every zoo family).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

Compiler = Literal["auto", "jit", "inductor", "eager"]
#: the values of the ``teachers.compile`` config key: a compiler, or ``off`` for the eager modules.
TEACHER_COMPILERS = ("auto", "jit", "inductor", "off")
Outputs = Tensor | dict[str, Tensor]
#: what ``compiler="auto"`` picks on the CPU (the faster in ``benchmarks/bench_frozen.py``).
AUTO_COMPILER = "jit"
#: ``teachers.compile=auto`` compiles for runs of at least this many steps: compiling a teacher's two graphs costs
#: about as much as 10-30 of its eager forward passes, so shorter runs (smoke runs, tests) stay eager.
AUTO_MIN_STEPS = 50


def compiler_for_run(setting: str, steps: int) -> str:
    """What a run of ``steps`` optimiser steps uses for ``teachers.compile=setting``: a compiler or ``off``."""
    return "off" if setting == "auto" and steps < AUTO_MIN_STEPS else setting


class TeacherOutputs(nn.Module):
    """A model whose ``forward`` returns its logits, or all its named maps (``forward_features``)."""

    def __init__(self, model: nn.Module, features: bool = False) -> None:
        super().__init__()
        self.model = model
        self.features = features

    def forward(self, x: Tensor) -> Outputs:
        return self.model.forward_features(x) if self.features else self.model(x)


def compile_frozen(model: nn.Module, example: Tensor, compiler: Compiler = "auto",
                   features: bool = False) -> Callable[[Tensor], Outputs]:
    """``model``'s logits (or, with ``features``, its maps) as a frozen graph for batches like ``example``.

    The model must be in eval mode; its weights are copied into the graph (later changes are not seen).
    """
    compiler = AUTO_COMPILER if compiler == "auto" else compiler
    view = TeacherOutputs(model, features).eval()
    if compiler == "eager":
        return view
    if compiler == "inductor":
        compiled = torch.compile(view, dynamic=False, options={"freezing": True})
        with torch.no_grad():
            compiled(example)  # compile now, not in the first timed step
        return compiled
    if compiler != "jit":
        raise ValueError(f"unknown teacher compiler {compiler!r}; choose auto, jit, inductor or eager")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice: the API is still the fastest here
        traced = torch.jit.trace(view, example, strict=False, check_trace=False)
        graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        graph(example)  # the first call runs the profiling executor's optimisation passes
    return graph


def _kind(images: Tensor) -> tuple[Any, ...]:
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    return tuple(images.shape), images.dtype, channels_last


class FrozenTeacher:
    """One teacher's compiled graphs (logits and maps), built at first use for each kind of batch.

    Calls that a graph cannot serve (not on the CPU, under autocast, with autograd on, or after a failed compile)
    run the eager ``model``. :attr:`compile_seconds` adds up the time spent compiling.
    """

    def __init__(self, model: nn.Module, compiler: Compiler = "auto") -> None:
        self.model = model
        self.compiler = compiler
        self.compile_seconds = 0.0
        self.failed: str | None = None
        self._graphs: dict[tuple[Any, ...], Callable[[Tensor], Outputs]] = {}

    def usable(self, images: Tensor) -> bool:
        """Whether a compiled graph may serve ``images``."""
        return (self.failed is None and images.device.type == "cpu" and not torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu") and not self.model.training)

    def __call__(self, images: Tensor, features: bool = False) -> Outputs:
        """Logits (or every named map) of ``images``: the compiled graph where usable, else the eager model."""
        if not self.usable(images):
            return self.model.forward_features(images) if features else self.model(images)
        key = (features, *_kind(images))
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._compile(images, features)
            if graph is None:
                return self(images, features)
            self._graphs[key] = graph
        return graph(images)

    def _compile(self, images: Tensor, features: bool) -> Callable[[Tensor], Outputs] | None:
        started = time.perf_counter()
        try:
            # traced outside inference mode: a graph's constants must not be inference tensors
            with torch.inference_mode(False):
                graph = compile_frozen(self.model, images.clone(), self.compiler, features)
        except Exception as err:  # noqa: BLE001 - any failure of the tracer or compiler means: stay eager
            self.failed = f"{type(err).__name__}: {err}"
            warnings.warn(f"compiling the frozen {type(self.model).__name__} failed ({self.failed}); its eager "
                          f"module runs instead", RuntimeWarning, stacklevel=3)
            return None
        finally:
            self.compile_seconds += time.perf_counter() - started
        return graph

    def clear(self) -> None:
        """Forget the compiled graphs (they copied the weights): the next call compiles again."""
        self._graphs.clear()
        self.failed = None
