"""Running K frozen teachers on one batch: one after another, as one batched call, or compiled for the CPU.

Teachers of the same architecture can be evaluated together: their parameters and buffers are stacked along a new
leading dimension (:func:`torch.func.stack_module_state`) and the architecture's forward is mapped over it with
:func:`torch.func.vmap`, which turns K convolutions into one grouped convolution; inside it, the global average
pool runs as a mean (:class:`GlobalPoolAsMean`), which vmap batches without its slow fallback. On the CPU, after
:meth:`TeacherEnsemble.use_compiled`, each teacher runs as a frozen graph instead (BatchNorm folded,
weights pre-packed for oneDNN: :mod:`mkdlab.methods.frozen`). Teachers run under :func:`torch.inference_mode`;
outputs are cloned out of it so that losses may save them for backward.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.overrides import TorchFunctionMode

from mkdlab.methods.frozen import Compiler, FrozenTeacher, TeacherOutputs

Batching = Literal["auto", "loop", "vmap"]


def same_architecture(models: Sequence[nn.Module]) -> bool:
    """True when every model has the same class and the same parameter/buffer names and shapes."""
    if len(models) < 2:
        return False

    def signature(m: nn.Module) -> tuple:
        return type(m), tuple((k, tuple(v.shape)) for k, v in m.state_dict().items())

    first = signature(models[0])
    return all(signature(m) == first for m in models[1:])


class TeacherEnsemble:
    """Evaluate frozen teachers on a batch, returning stacked K×B×… outputs.

    ``batching="auto"`` uses the batched (vmap) call for same-architecture teachers on CUDA, where it measures
    faster, and a plain loop otherwise (``python -m mkdlab bench`` prints both). Where vmap refuses a call (a missing
    functorch batching rule), the ensemble falls back to the loop for good. The stacked weights (and the compiled
    graphs) are a copy taken at first use; call :meth:`refresh` after changing a teacher's weights.
    """

    def __init__(self, teachers: Sequence[nn.Module], batching: Batching = "auto") -> None:
        self.teachers = list(teachers)
        self.batching = batching
        self.same_architecture = same_architecture(self.teachers)  # once: state_dict() per step is costly
        self._stacked: tuple[dict[str, Tensor], dict[str, Tensor], nn.Module] | None = None
        self.frozen: list[FrozenTeacher] | None = None
        self.compiled_features = False

    def use_compiled(self, compiler: Compiler | Literal["off"] = "auto", features: bool = True) -> None:
        """Run the teachers on the CPU as frozen compiled graphs (``"off"``: eager, as before); with
        ``features`` their maps too, else maps come from the eager modules."""
        self.frozen = None if compiler == "off" else [FrozenTeacher(t, compiler) for t in self.teachers]
        self.compiled_features = features

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling the teachers' graphs so far."""
        return sum(f.compile_seconds for f in self.frozen or ())

    def uses_vmap(self, device: torch.device) -> bool:
        """Whether a batch on ``device`` goes through the batched call."""
        if self.batching == "loop" or not self.same_architecture:
            return False
        return self.batching == "vmap" or device.type == "cuda"

    def refresh(self) -> None:
        """Forget the stacked copy of the weights and the compiled graphs (rebuilt at the next call)."""
        self._stacked = None
        for frozen in self.frozen or ():
            frozen.clear()

    def _stack(self, device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor], nn.Module]:
        if self._stacked is None or next(iter(self._stacked[0].values())).device != device:
            params, buffers = stack_module_state([TeacherOutputs(t) for t in self.teachers])
            self._stacked = (params, buffers, copy.deepcopy(self.teachers[0]).to("meta"))
        return self._stacked

    def _run(self, images: Tensor, features: bool) -> Tensor | dict[str, Tensor] | list[dict[str, Tensor]]:
        with torch.inference_mode():
            return self._run_teachers(images, features)

    def _run_teachers(self, images: Tensor, features: bool) -> Tensor | dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.frozen is not None and images.device.type == "cpu" and (self.compiled_features or not features):
            outputs = [frozen(images, features) for frozen in self.frozen]
            return outputs if features else torch.stack(outputs)  # type: ignore[arg-type, return-value]
        if self.uses_vmap(images.device):
            params, buffers, base = self._stack(images.device)
            view = TeacherOutputs(base, features)

            def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor | dict[str, Tensor]:
                return functional_call(view, (p, b), (x,))

            try:
                with GlobalPoolAsMean():
                    return vmap(one, in_dims=(0, 0, None))(params, buffers, images)
            except RuntimeError as err:
                if "vmap" not in str(err):
                    raise
                # functorch lacks a batching rule this call needs (seen on an H100 with PyTorch 2.11: fp32
                # channels_last batch norm outside autocast, "NYI: querying is_contiguous inside of vmap"): the
                # loop computes the same outputs, so use it from now on.
                self.batching = "loop"
        if not features:
            return torch.stack([t(images) for t in self.teachers])
        return [t.forward_features(images) for t in self.teachers]

    def logits(self, images: Tensor) -> Tensor:
        """Teacher logits stacked K×B×C."""
        out = self._run(images, features=False)
        assert isinstance(out, Tensor)
        return out.clone()

    def features(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Every named map of every teacher (``forward_features``), one dict per teacher."""
        out = self._run(images, features=True)
        if isinstance(out, dict):  # the batched call stacks each map along a leading K dimension
            return [{name: maps[k].clone() for name, maps in out.items()} for k in range(len(self.teachers))]
        return [{name: value.clone() for name, value in maps.items()} for maps in out]


class GlobalPoolAsMean(TorchFunctionMode):
    """Within this context ``F.adaptive_avg_pool2d(x, 1)`` runs as ``x.mean((-2, -1), keepdim=True)``: the same
    average, which vmap batches natively, while its adaptive pooling of a channels_last map falls back to a slow
    per-teacher path (functorch warns: no batching rule for ``aten::as_strided_``)."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.adaptive_avg_pool2d:
            size = kwargs.get("output_size", args[1] if len(args) > 1 else None)
            if size in (1, (1, 1), [1, 1]):
                return args[0].mean((-2, -1), keepdim=True)
        return func(*args, **kwargs)
