"""Noticing a NaN or infinite loss without a host synchronisation per step (``train.sync_free``).

``bool(torch.isfinite(loss))`` waits for the GPU to finish the step. :class:`FiniteWatch` instead keeps, on the
device, the index of the first step whose loss terms were not all finite and which terms those were; the trainer
reads it once per check (every ``train.log_every_steps`` steps, before every checkpoint, at every epoch end) and,
when a check finds one, stops the run with the state of the last check that found none (the *last finite state*).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class NonFiniteStep:
    """The first step of the run with a non-finite loss: its 0-based global index and the terms that were."""

    global_step: int
    terms: list[str]


class FiniteWatch:
    """Device-side record of the first non-finite step: :meth:`observe` is pure device work (capturable in a CUDA
    graph), :meth:`check` reads the record with one synchronisation.

    The step index is a device counter, set by :meth:`start` and advanced by :meth:`observe`, so that a replayed
    graph counts its steps too. Every loss term seen gets a device flag; a term first seen while a CUDA graph is
    being captured is refused (its flag would live in the graph's memory), which the capture reports.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.counter = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_terms: dict[str, Tensor] = {}

    def start(self, global_step: int) -> None:
        """Count from ``global_step`` (the steps already done) with a clean record."""
        self.counter.fill_(global_step)
        self.first_bad.fill_(-1)
        for flag in self.bad_terms.values():
            flag.fill_(False)

    def observe(self, losses: Mapping[str, Tensor]) -> None:
        """Record one step's loss terms: if they are not all finite and no earlier step was bad, this step becomes
        the first bad one."""
        for name in losses:
            if name not in self.bad_terms:
                if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                    raise RuntimeError(f"loss term {name!r} first appeared during a CUDA graph capture")
                self.bad_terms[name] = torch.zeros((), dtype=torch.bool, device=self.device)
        finite = torch.stack([torch.isfinite(value.detach()).all() for value in losses.values()])
        newly_bad = (self.first_bad < 0) & ~finite.all()
        self.first_bad.copy_(torch.where(newly_bad, self.counter, self.first_bad))
        for name, ok in zip(losses, finite.unbind(), strict=True):
            self.bad_terms[name].logical_or_(newly_bad & ~ok)
        self.counter.add_(1)

    def check(self) -> NonFiniteStep | None:
        """``None`` while every observed step was finite, else the first bad step (one host synchronisation)."""
        names = list(self.bad_terms)
        values = torch.stack([self.first_bad, *(self.bad_terms[n].long() for n in names)]).tolist()
        if values[0] < 0:
            return None
        return NonFiniteStep(values[0], [n for n, bad in zip(names, values[1:], strict=True) if bad])
