"""What a method may ask of the other processes of a data-parallel run (``torchrun``), through
:attr:`~mkdlab.methods.base.TrainState.collectives`.

A method whose state is per sample (DTSKD's memory banks, MMKD's hard buffer) or that steps its own optimiser
(AMTML-KD's Θ/W) must see every rank's part of the global batch, or average its gradients over the ranks, to stay
identical on every rank and equal to one process. This class is the single-process case, where each operation is
the identity; :class:`mkdlab.engine.distributed.ProcessGroupCollectives` is the ``torch.distributed`` one. The
methods only ever see this interface (they never import the engine).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


class Collectives:
    """The collective operations of one process alone: ``rank`` 0 of a world of 1, every operation the identity."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """Whether other processes take part (``world_size > 1``)."""
        return self.world_size > 1

    def all_gather(self, tensor: Tensor, dim: int = 0) -> Tensor:
        """Every rank's ``tensor`` concatenated along ``dim`` in rank order (the ranks' sizes along ``dim`` may
        differ; the other dimensions must agree). One process: ``tensor`` itself."""
        return tensor

    def all_reduce_mean(self, tensors: Sequence[Tensor]) -> None:
        """Replace each tensor, in place, by its mean over the ranks (gradients of a parameter that no
        DistributedDataParallel wrapper averages). One process: nothing to do."""
