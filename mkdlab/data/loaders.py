"""Train and test loaders for a dataset name: the device-resident loader or torchvision's ``DataLoader``."""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch.utils.data import DataLoader

from mkdlab.data.datasets import get_dataset, load_tensors
from mkdlab.data.device_loader import DeviceLoader
from mkdlab.data.registry import dataset_info

__all__ = ["Loader", "default_num_workers", "make_loaders"]

Loader = DeviceLoader | DataLoader


def default_num_workers() -> int:
    """Worker processes for the ``"torch"`` loader: the CPU count, at most 4."""
    return min(4, os.cpu_count() or 1)


def make_loaders(
    name: str,
    batch_size: int,
    *,
    device: str | torch.device,
    root: str | os.PathLike[str] | None = None,
    loader: Literal["auto", "device", "torch"] = "auto",
    seed: int = 0,
    drop_last: bool = False,
    with_index: bool = False,
    num_workers: int | None = None,
    download: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Loader, Loader]:
    """``(train_loader, test_loader)`` for dataset ``name``.

    ``"device"``: two :class:`DeviceLoader` holding the splits on ``device`` (batches come out on ``device``).
    ``"torch"``: two :class:`~torch.utils.data.DataLoader` over :func:`get_dataset` with the PIL transforms,
    shuffling with a generator seeded with ``seed`` (batches come out on the CPU, pinned when ``device`` is
    CUDA). With ``num_workers > 0`` the augmentation is reproducible too (worker seeds derive from that
    generator); with ``num_workers=0`` it uses the global torch RNG. ``"auto"`` is ``"device"`` on every
    device: even on a 2-core CPU it serves augmented Fashion-MNIST batches about 40x faster than the
    ``DataLoader`` with 2 workers (still 5x or more when other jobs share the cores; see
    ``benchmarks/bench_loader.py``).

    ``drop_last`` applies to the training loader; the test loader always serves every sample, in order.
    ``num_workers`` (default :func:`default_num_workers`) is used by the ``"torch"`` loader only.
    With ``world_size`` > 1 (a ``torchrun`` run) the training loader serves rank ``rank``'s block of every global
    batch of ``batch_size`` (the device loader only); the test loader serves the whole split.
    """
    info = dataset_info(name)
    device = torch.device(device)
    if loader == "auto":
        loader = "device"
    if world_size > 1 and loader != "device":
        raise ValueError(f"a run of several processes needs data.loader=device (got {loader!r}): only the device "
                         f"loader shards each epoch's global order over the ranks")
    if loader == "device":
        made = []
        for train in (True, False):
            images, labels = load_tensors(info.name, train, root, download=download)
            made.append(
                DeviceLoader(
                    images,
                    labels,
                    batch_size,
                    train=train,
                    mean=info.mean,
                    std=info.std,
                    device=device,
                    seed=seed,
                    drop_last=drop_last and train,
                    with_index=with_index,
                    rank=rank if train else 0,
                    world_size=world_size if train else 1,
                )
            )
        return made[0], made[1]
    if loader == "torch":
        workers = default_num_workers() if num_workers is None else num_workers
        made_torch = []
        for train in (True, False):
            dataset = get_dataset(info.name, train, root, download=download, with_index=with_index)
            made_torch.append(
                DataLoader(
                    dataset,
                    batch_size=batch_size,
                    shuffle=train,
                    drop_last=drop_last and train,
                    num_workers=workers,
                    pin_memory=device.type == "cuda",
                    persistent_workers=workers > 0,
                    generator=torch.Generator().manual_seed(seed),
                )
            )
        return made_torch[0], made_torch[1]
    raise ValueError(f"loader must be 'auto', 'device' or 'torch', not {loader!r}")
