"""The main optimiser of a run: SGD, as PyTorch's default implementation or as one fused kernel
(``train.fused_optimizer``).

Both compute the update of :class:`torch.optim.SGD`: :math:`d = g + \\lambda\\theta`, :math:`m' = \\mu m + d`
(:math:`m' = d` at a parameter's first step), :math:`\\theta' = \\theta - \\eta\\,(d + \\mu m')` with Nesterov,
:math:`\\theta - \\eta m'` without. The fused kernel rounds differently (about one float32 ulp of the parameter per
step on CPU) and checkpoints are the same either way: the same ``momentum_buffer`` per parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mkdlab.config import TrainConfig


class FusedSGD(torch.optim.SGD):
    """``SGD(fused=True)`` that also takes parameters whose first gradient comes after the others' first step.

    PyTorch's fused kernel treats a step as a first step only when no parameter of the group has a momentum buffer
    yet; a parameter that starts receiving gradients later (an adapter whose loss term is off in the first epoch)
    would reach it without one and fail. Such a parameter gets a zero buffer first: with no dampening,
    :math:`\\mu\\cdot 0 + d = d` is exactly the first-step rule.
    """

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, fused=True, **kwargs)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One SGD step (see :class:`torch.optim.SGD`), after giving late starters their zero momentum buffer."""
        for group in self.param_groups:
            if not group["momentum"] or not group["fused"]:
                continue
            live = [p for p in group["params"] if p.grad is not None]
            started = [p for p in live if "momentum_buffer" in self.state.get(p, {})]
            if started and len(started) < len(live):
                if group["dampening"]:
                    raise ValueError("FusedSGD: a parameter starting late needs dampening=0 for the zero buffer")
                for p in live:
                    self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
        return super().step(closure)


def build_sgd(groups: Sequence[dict[str, Any]], config: TrainConfig, fused: bool) -> torch.optim.SGD:
    """The main SGD of a run: ``config``'s lr, momentum, Nesterov and weight decay, fused or not."""
    settings = dict(lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                    weight_decay=config.weight_decay)
    if fused:
        return FusedSGD(list(groups), **settings)
    return torch.optim.SGD(list(groups), **settings)


def keep_implementation(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """Restore the implementation flags that :meth:`~torch.optim.Optimizer.load_state_dict` copies from the
    checkpoint's groups, so that a run resumes with this run's ``train.fused_optimizer``, not the saved one's."""
    for group in optimizer.param_groups:
        group["fused"] = fused
        if fused:
            group["foreach"] = None
