"""Replaying a function of tensors as a CUDA graph (:class:`torch.cuda.CUDAGraph`), recaptured when its key changes.

A captured graph replays the same kernels on the same memory, with one launch instead of hundreds: what a small
model's training step needs on a fast GPU. The price is that everything the function does must be device work on
fixed addresses: its tensor inputs are copied into static tensors before each replay, its outputs are the static
tensors of the capture (overwritten by the next replay), and whatever it reads from Python (a learning rate, the
epoch, a schedule factor) is frozen at capture. The caller names those Python values in ``key``: a new key drops
the graph and captures again.

Used by the trainer for the whole training step (``train.cuda_graphs``) and by MMKD for its meta update.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

CallKind = Literal["eager", "capture", "replay"]
_UNSET = object()


class GraphedCall:
    """``fn(*inputs)`` replayed as a CUDA graph, captured anew whenever ``key`` changes.

    After a key change the first ``warmup`` calls run ``fn`` eagerly on a side stream (they are real calls, with
    their effects: lazy initialisations such as optimiser state happen there), the next one captures ``fn`` on
    static copies of its inputs and replays it, and later calls with the same key copy their inputs into the static
    ones and replay. :attr:`last_call` says which of the three the last call was. When a capture fails (a host
    synchronisation or an unsupported operation inside ``fn``) the call warns once, runs ``fn`` eagerly and stays
    eager for good (:attr:`disabled`).
    """

    def __init__(self, name: str, warmup: int = 2) -> None:
        self.name = name
        self.warmup = warmup
        self.key: Hashable = _UNSET
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: list[Tensor] = []
        self.outputs: Any = None
        self.eager_left = warmup
        self.disabled = False
        self.captures = 0
        self.last_call: CallKind = "eager"

    def reset(self) -> None:
        """Forget the graph (it is captured again after ``warmup`` eager calls)."""
        self.key, self.graph, self.static_inputs, self.outputs = _UNSET, None, [], None
        self.eager_left = self.warmup

    def captures_next(self, key: Hashable) -> bool:
        """Whether a call with ``key`` now would capture the graph."""
        return not self.disabled and key == self.key and self.graph is None and self.eager_left == 0

    def __call__(self, key: Hashable, fn: Callable[..., Any], inputs: Sequence[Tensor]) -> Any:
        if self.disabled:
            self.last_call = "eager"
            return fn(*inputs)
        if key != self.key:
            self.reset()
            self.key = key
        if self.eager_left > 0:
            self.eager_left -= 1
            return self._side_stream(fn, inputs)
        if self.graph is None:
            return self._capture(fn, inputs)
        for static, value in zip(self.static_inputs, inputs, strict=True):
            static.copy_(value, non_blocking=True)
        self.graph.replay()
        self.last_call = "replay"
        return self.outputs

    def _side_stream(self, fn: Callable[..., Any], inputs: Sequence[Tensor]) -> Any:
        """``fn`` eagerly on a side stream, as PyTorch's CUDA graph recipe warms up (an eager call off CUDA)."""
        self.last_call = "eager"
        device = inputs[0].device if inputs else torch.device("cpu")
        if device.type != "cuda":
            return fn(*inputs)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            out = fn(*inputs)
        torch.cuda.current_stream(device).wait_stream(stream)
        return out

    def _capture(self, fn: Callable[..., Any], inputs: Sequence[Tensor]) -> Any:
        static = [value.clone() for value in inputs]
        torch.cuda.synchronize(static[0].device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                outputs = fn(*static)
        except RuntimeError as err:
            self.disabled = True
            self.reset()
            warnings.warn(f"{self.name}: CUDA graph capture failed, running eagerly from now on ({err})",
                          RuntimeWarning, stacklevel=3)
            self.last_call = "eager"
            return fn(*inputs)
        self.graph, self.static_inputs, self.outputs = graph, static, outputs
        self.captures += 1
        graph.replay()
        self.last_call = "capture"
        return outputs
