"""MMKD's meta gradient replayed as a CUDA graph (with ``train.cuda_graphs``).

A meta update is hundreds of small kernels (three virtual SGD steps of the student, their second-order backward);
replayed as one graph it costs one launch. What the look-ahead reads from Python is frozen at capture, so the graph
is keyed by it: the SGD settings of every parameter group (the lr changes at the milestones), the momentum buffers
(replaced when a checkpoint is loaded) and the meta batch's shapes. The parameters, momentum buffers, BN buffers and
weight networks are read in place, and the Adam step of the weight networks stays outside the graph.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from mkdlab.cuda_graphs import GraphedCall
from mkdlab.methods.meta import SGDSettings


class MetaGradientSource(Protocol):
    """What is graphed: :meth:`MMKD.meta_gradient <mkdlab.methods.mmkd.MMKD.meta_gradient>` (typed here without
    importing MMKD, which imports this module)."""

    def meta_gradient(self, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
                      targets: Any = None) -> tuple[Tensor, list[Tensor]]: ...


def _key(optimizer: torch.optim.Optimizer, inputs: list[Tensor]) -> tuple[Any, ...]:
    settings = tuple(SGDSettings.from_group(group) for group in optimizer.param_groups)
    buffers = tuple(optimizer.state[p]["momentum_buffer"].data_ptr() if "momentum_buffer" in optimizer.state.get(p, {})
                    else 0 for group in optimizer.param_groups for p in group["params"])
    return settings, buffers, tuple((tuple(x.shape), x.dtype, x.stride()) for x in inputs)


def graphed_meta_gradient(method: MetaGradientSource, optimizer: torch.optim.Optimizer, images: Tensor,
                          labels: Tensor, targets: Any) -> tuple[Tensor, list[Tensor]]:
    """``method.meta_gradient`` of the meta batch and its :class:`~mkdlab.methods.mmkd.TeacherTargets`, replayed
    from a CUDA graph (its outputs live in the graph's memory until the next meta update)."""
    graph: GraphedCall | None = getattr(method, "_meta_graph", None)
    if graph is None:
        graph = GraphedCall("MMKD meta update")
        method._meta_graph = graph  # type: ignore[attr-defined]
    k = len(targets.raw_maps)
    inputs = [images, labels, targets.logits, *targets.raw_maps, *targets.maps, *targets.grams]

    def meta_gradient(images: Tensor, labels: Tensor, logits: Tensor, *maps: Tensor) -> tuple[Tensor, list[Tensor]]:
        static = type(targets)(logits, list(maps[:k]), list(maps[k:2 * k]), list(maps[2 * k:]))
        return method.meta_gradient(optimizer, images, labels, static)

    return graph(_key(optimizer, inputs), meta_gradient, inputs)
