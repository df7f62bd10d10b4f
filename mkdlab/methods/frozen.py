r"""Frozen teachers compiled for inference on the CPU, once per run, with the eager module as the fallback.

Teachers never train, so their graphs can be specialised to constants. :func:`compile_frozen` traces a teacher's
``forward`` (logits) or ``forward_features`` (every named map) on an example batch and, with ``compiler="jit"``,

1. ``torch.jit.freeze`` inlines the weights as constants and folds each BatchNorm into the convolution before it,
   :math:`W' = W\gamma/\sqrt{\sigma^2+\epsilon}`, :math:`b' = (b-\mu)\gamma/\sqrt{\sigma^2+\epsilon}+\beta`
   (Ioffe & Szegedy 2015 give the transform; folding it is exact in real arithmetic, so only float32 rounding
   changes);
2. ``torch.jit.optimize_for_inference`` rewrites the convolutions for oneDNN with their weights pre-packed in its
   blocked layout, and keeps the activations in that layout between them. (The ReLUs and residual adds stay
   separate in-place ops: resnet56's graph has 57 ``prim::mkldnn_convolution``, 55 ``aten::relu_`` and 27
   ``aten::add_`` nodes.)

``compiler="inductor"`` is ``torch.compile`` with inductor's ``freezing`` (the same folding, then generated C++);
``"eager"`` is the module as it is. On 2 CPU threads, resnet56 at batch 64 (``python benchmarks/bench_frozen.py``)
the jit path is the faster and compiles in about a second, inductor takes minutes to compile: ``"auto"`` is ``jit``.
A graph is specialised to the input's shape, dtype and memory format, so :class:`FrozenTeacher` keeps one per kind
of batch it has seen. Anything the trace cannot handle, autocast, autograd or a non-CPU tensor goes to the eager
module, whose outputs are the same up to float32 rounding (``tests/test_frozen.py`` checks every zoo family).

``compiler="int8"`` is an approximate teacher, opt-in: its logits come from an int8 copy calibrated on the first
batches (:mod:`mkdlab.methods.quantized`), its maps from the exact ``jit`` graph.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mkdlab.methods.quantized import CALIBRATION_BATCHES, convert_int8, freeze_int8, prepare_int8

Compiler = Literal["auto", "jit", "inductor", "int8", "eager"]
#: the values of the ``teachers.compile`` config key: a compiler, or ``off`` for the eager modules.
TEACHER_COMPILERS = ("auto", "jit", "inductor", "int8", "off")
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
    run the eager ``model``. With ``compiler="int8"`` the logits of the first ``calibration_batches`` calls come
    from the float32 model with observers attached (the same outputs to float32 rounding), then from the int8 copy
    they calibrated; maps always come from the exact ``jit`` graph. :attr:`compile_seconds` adds up the time spent
    compiling (and quantising, not the calibration forwards).
    """

    def __init__(self, model: nn.Module, compiler: Compiler = "auto",
                 calibration_batches: int = CALIBRATION_BATCHES) -> None:
        self.model = model
        self.compiler = compiler
        self.calibration_batches = calibration_batches
        self.compile_seconds = 0.0
        self.failed: str | None = None
        self._graphs: dict[tuple[Any, ...], Callable[[Tensor], Outputs]] = {}
        self._observed: nn.Module | None = None
        self._calibrated = 0
        self._quantized: nn.Module | None = None

    def usable(self, images: Tensor) -> bool:
        """Whether a compiled graph may serve ``images``."""
        return (self.failed is None and images.device.type == "cpu" and not torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu") and not self.model.training)

    @property
    def quantized(self) -> bool:
        """Whether the int8 copy serves the logits now (calibration is over)."""
        return self._quantized is not None

    def __call__(self, images: Tensor, features: bool = False) -> Outputs:
        """Logits (or every named map) of ``images``: the compiled graph where usable, else the eager model."""
        if not self.usable(images):
            return self.model.forward_features(images) if features else self.model(images)
        if self.compiler == "int8" and not features and self._quantized is None:
            return self._calibrate(images)
        key = (features, *_kind(images))
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._built(lambda example: self._graph(example, features), images)
            if graph is None:
                return self(images, features)
            self._graphs[key] = graph
        return graph(images)

    def _graph(self, example: Tensor, features: bool) -> Callable[[Tensor], Outputs]:
        if self._quantized is not None and not features:
            return freeze_int8(self._quantized, example)
        compiler = "jit" if self.compiler == "int8" else self.compiler
        return compile_frozen(self.model, example, compiler, features)

    def _calibrate(self, images: Tensor) -> Outputs:
        """The float32 logits of ``images`` through the observed copy; after the last calibration batch, convert."""
        if self._observed is None:
            self._observed = self._built(lambda example: prepare_int8(self.model, example), images)
            if self._observed is None:
                return self(images)
        with torch.inference_mode(False), torch.no_grad():
            logits = self._observed(images.clone())  # observers' statistics must not become inference tensors
        self._calibrated += 1
        if self._calibrated >= self.calibration_batches:
            observed, self._observed = self._observed, None
            self._quantized = self._built(lambda _: convert_int8(observed), images)
        return logits

    def _built(self, build: Callable[[Tensor], Any], images: Tensor) -> Any:
        """``build(example)`` timed into :attr:`compile_seconds`; on any failure, warn once and stay eager."""
        started = time.perf_counter()
        try:
            # built outside inference mode: a graph's constants must not be inference tensors
            with torch.inference_mode(False):
                return build(images.clone())
        except Exception as err:  # noqa: BLE001 - any failure of the tracer or compiler means: stay eager
            self.failed = f"{type(err).__name__}: {err}"
            warnings.warn(f"compiling the frozen {type(self.model).__name__} failed ({self.failed}); its eager "
                          f"module runs instead", RuntimeWarning, stacklevel=3)
            return None
        finally:
            self.compile_seconds += time.perf_counter() - started

    def clear(self) -> None:
        """Forget the compiled graphs and the int8 copy (they copied the weights): the next call compiles (and
        calibrates) again."""
        self._graphs.clear()
        self._observed, self._calibrated, self._quantized = None, 0, None
        self.failed = None
