"""A data loader whose whole dataset lives on the device as one uint8 tensor.

Each epoch draws every random choice up front from a CPU :class:`torch.Generator` seeded with
``(seed, epoch)``: the order (training only), one crop offset per sample and one flip bit per sample. Batches
are then cut on the device with one gather (crop and flip together), converted to float and normalised. Since
the draws happen on the CPU, a given seed gives the same samples, crops and flips on CPU and CUDA, and the
augmentation equals torchvision's ``RandomCrop(size, padding=pad)`` followed by ``RandomHorizontalFlip()``
with the same offsets and flips.

Data parallel (``torchrun``): with ``world_size`` ranks, every rank draws the same epoch and takes its contiguous
block of each global batch (:func:`shard_bounds`), so the ranks' blocks, joined in rank order, are exactly the
batch one process would serve; ``batch_size`` stays the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

__all__ = ["DeviceLoader", "EpochParams", "epoch_seed", "shard_bounds"]

_U64 = (1 << 64) - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The CPU generator seed of one epoch: ``(seed, epoch)`` hashed by :class:`numpy.random.SeedSequence`.

    The result has 32 bits because torch's CPU generator (MT19937) only uses the low 32 bits of its seed.
    """
    state = np.random.SeedSequence([seed & _U64, epoch & _U64]).generate_state(1, np.uint32)
    return int(state[0])


def shard_bounds(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """The positions ``[begin, end)`` of rank ``rank``'s block of the global batch ``[start, stop)``: contiguous
    blocks in rank order, the first ``(stop - start) % world_size`` ranks holding one sample more."""
    size, extra = divmod(stop - start, world_size)
    begin = start + rank * size + min(rank, extra)
    return begin, begin + size + (rank < extra)


@dataclass(frozen=True)
class EpochParams:
    """The random draws of one epoch (CPU tensors), position ``k`` describing the ``k``-th sample served.

    Attributes:
        order: dataset indices in the order they are served (int64, ``N``).
        offsets: ``(top, left)`` of each crop in the padded image, each in ``[0, 2 * pad]``
            (int64, ``N x 2``); ``(pad, pad)`` is the un-shifted image.
        flips: whether each crop is mirrored left-right (bool, ``N``).
    """

    order: torch.Tensor
    offsets: torch.Tensor
    flips: torch.Tensor


class DeviceLoader:
    """Batches of a uint8 image tensor kept on ``device``, augmented there without per-sample Python code.

    Yields ``(images, labels)`` or, with ``with_index``, ``(images, labels, indices)``: ``images`` are
    ``B x C x H x W`` in ``dtype`` (float32 by default), normalised with ``mean``/``std``; ``labels`` and
    ``indices`` (positions in ``images_u8``) are int64, all on ``device``.

    Epochs: every ``iter(loader)`` uses the current :attr:`epoch` and then advances it by one, so successive
    epochs differ and the sequence is reproducible from ``seed``. To resume training at epoch ``e`` (or to
    replay an epoch), call :meth:`set_epoch` before iterating. The test loader (``train=False``) serves
    samples in order without augmentation, whatever the epoch.

    Args:
        images_u8: ``N x C x H x W`` uint8 images (see :func:`~mkdlab.data.load_tensors`).
        labels: ``N`` integer labels.
        batch_size: samples per batch.
        train: shuffle and augment (random crop with zero padding ``pad``, random horizontal flip).
        mean, std: per-channel normalisation, applied to ``pixel / 255``.
        device: where the data lives and batches are produced.
        seed: seeds the per-epoch CPU generators (see :func:`epoch_seed`).
        drop_last: drop the last incomplete batch.
        with_index: also yield the dataset index of every sample.
        pad: crop padding; ``0`` disables the random crop.
        flip: random horizontal flips.
        channels_last: yield images in ``torch.channels_last`` memory format.
        dtype: floating dtype of the yielded images (normalisation is computed in float32 first).
        rank, world_size: serve rank ``rank``'s block of every global batch of ``batch_size`` (data parallel).
    """

    def __init__(
        self,
        images_u8: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        with_index: bool = False,
        pad: int = 4,
        flip: bool = True,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images_u8.dtype != torch.uint8 or images_u8.ndim != 4:
            raise ValueError(
                "images_u8 must be an N x C x H x W uint8 tensor, "
                f"got {images_u8.dtype} of shape {tuple(images_u8.shape)}"
            )
        if labels.shape != images_u8.shape[:1]:
            raise ValueError(f"labels must have shape ({len(images_u8)},), got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        channels = images_u8.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values (one per channel), got {len(mean)}, {len(std)}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        last = len(images_u8) % batch_size
        if world_size > 1 and (batch_size < world_size or (last and not drop_last and last < world_size)):
            raise ValueError(f"a global batch of {batch_size} (last batch {last or batch_size}) cannot give each of "
                             f"{world_size} ranks a sample: choose a batch size of at least {world_size} whose last "
                             f"batch also splits, or drop the last batch")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.drop_last = drop_last
        self.with_index = with_index
        self.pad = pad if train else 0
        self.flip = flip and train
        self.channels_last = channels_last
        self.dtype = dtype
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._num = len(images_u8)
        self._height, self._width = images_u8.shape[-2:]
        self._images = images_u8.to(self.device).contiguous()
        self._labels = labels.to(self.device, torch.int64)
        self._padded = F.pad(self._images, (self.pad,) * 4) if self.pad else self._images
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._rows = torch.arange(self._height, device=self.device)
        self._cols = torch.arange(self._width, device=self.device)

    @property
    def num_samples(self) -> int:
        """Number of samples in the dataset."""
        return self._num

    @property
    def dataset(self) -> TensorDataset:
        """The raw ``(uint8 image, label)`` pairs, so ``len(loader.dataset)`` works as with ``DataLoader``."""
        return TensorDataset(self._images, self._labels)

    def __len__(self) -> int:
        """Number of batches per epoch, respecting ``drop_last``."""
        return self._num // self.batch_size if self.drop_last else math.ceil(self._num / self.batch_size)

    def global_batch_size(self, index: int) -> int:
        """Samples in global batch ``index`` of an epoch (all ranks together)."""
        return min(self.batch_size, self._num - index * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` serve epoch ``epoch`` (e.g. when resuming training)."""
        self.epoch = epoch

    def draw_epoch_params(self, epoch: int) -> EpochParams:
        """The random draws of ``epoch`` (what iterating that epoch uses), on the CPU.

        They come from a CPU generator seeded with :func:`epoch_seed` ``(seed, epoch)``, in this order: the
        permutation (training only), the ``N x 2`` crop offsets, the ``N`` flip bits. Without augmentation the
        order is ``0..N-1``, offsets are ``(pad, pad)`` and flips are false.
        """
        n = self._num
        if not self.train:
            return EpochParams(
                torch.arange(n),
                torch.full((n, 2), self.pad, dtype=torch.int64),
                torch.zeros(n, dtype=torch.bool),
            )
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=gen)
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen)
        flips = torch.randint(0, 2, (n,), generator=gen).bool()
        if not self.pad:
            offsets.zero_()
        if not self.flip:
            flips.zero_()
        return EpochParams(order, offsets, flips)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        params = self.draw_epoch_params(self.epoch)
        self.epoch += 1
        return self._batches(params)

    def _batches(self, params: EpochParams) -> Iterator[tuple[torch.Tensor, ...]]:
        order = params.order.to(self.device, non_blocking=True)
        offsets = params.offsets.to(self.device, non_blocking=True)
        flips = params.flips.to(self.device, non_blocking=True)
        augment = self.train and (self.pad > 0 or self.flip)
        for i in range(len(self)):
            start = i * self.batch_size
            sl = slice(*shard_bounds(start, min(start + self.batch_size, self._num), self.rank, self.world_size))
            idx = order[sl]
            images = self._crop_flip(idx, offsets[sl], flips[sl]) if augment else self._images[idx]
            images = self._normalise(images)
            labels = self._labels[idx]
            yield (images, labels, idx) if self.with_index else (images, labels)

    def _crop_flip(self, idx: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop ``H x W`` windows at ``offsets`` from the padded images ``idx``, mirrored where ``flips``.

        One gather: output pixel ``(r, c)`` of sample ``b`` reads padded pixel
        ``(top_b + r, left_b + c)``, or ``(top_b + r, left_b + W - 1 - c)`` when flipped.
        """
        h, w = self._height, self._width
        padded = self._padded[idx]
        b, c, _, pw = padded.shape
        rows = offsets[:, :1] + self._rows
        cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - self._cols, self._cols)
        flat = (rows[:, :, None] * pw + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return torch.gather(padded.view(b, c, -1), 2, flat).view(b, c, h, w)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """``(pixel / 255 - mean) / std`` in float32 (the same operations as ``ToTensor`` + ``Normalize``)."""
        out = images.to(torch.float32).div_(255).sub_(self._mean).div_(self._std)
        if self.dtype != torch.float32:
            out = out.to(self.dtype)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(samples={self._num}, batch_size={self.batch_size}, train={self.train}, "
            f"device={self.device}, seed={self.seed}, epoch={self.epoch}, drop_last={self.drop_last}"
            + (f", rank={self.rank}/{self.world_size})" if self.world_size > 1 else ")")
        )
