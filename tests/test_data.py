"""The data layer: where datasets are found, the packaged Fashion-MNIST subset, datasets, tensors and loaders.

Everything runs offline on small fake datasets written into ``tmp_path`` (valid IDX files, a real-format
``cifar-100-python`` folder) plus the packaged ``fashion_mnist_mini``; tests that need the full Fashion-MNIST
set are marked ``full_data`` and skip when it is not installed. No test may download: torchvision's download
functions are patched to fail.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader

from mkdlab.data import (
    DatasetNotFoundError,
    DeviceLoader,
    FashionMNISTMini,
    available_datasets,
    dataset_info,
    get_dataset,
    load_tensors,
    make_loaders,
    resolve_root,
)
from mkdlab.data import sources as data_sources
from mkdlab.data.mini import build_mini_arrays, load_mini_arrays
from mkdlab.data.sources import FASHION_MNIST_FILES, MINI_ASSET_DIR, MINI_FILENAME

# --------------------------------------------------------------------------------------------- fixtures/helpers


def _refuse_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("a download was attempted")


@pytest.fixture(autouse=True)
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every torchvision download path fail loudly."""
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _refuse_download)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", _refuse_download)
    for module in (torchvision.datasets.mnist, torchvision.datasets.cifar, torchvision.datasets.utils):
        for name in ("download_url", "download_and_extract_archive"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _refuse_download)


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Isolate resolution from the machine: no $MKDLAB_DATA, fake repo data/, cache and Debian folders."""
    ns = SimpleNamespace(
        root=tmp_path / "root",
        env=tmp_path / "env",
        repo=tmp_path / "repo" / "data",
        cache_home=tmp_path / "xdg-cache",
        cache=tmp_path / "xdg-cache" / "mkdlab" / "data",
        deb=tmp_path / "debian" / "fashion-mnist",
    )
    monkeypatch.delenv("MKDLAB_DATA", raising=False)
    monkeypatch.setattr(data_sources, "REPO_DATA_DIR", ns.repo)
    monkeypatch.setenv("XDG_CACHE_HOME", str(ns.cache_home))
    monkeypatch.setenv("MKDLAB_FASHION_MNIST_DEB", str(ns.deb))
    return ns


@pytest.fixture
def cifar_without_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake CIFAR files cannot match torchvision's MD5 sums: check that they exist, as for real files."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def _idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format of MNIST files."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _fake_fashion_arrays(n_train: int = 30, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = (np.arange(n) % 10).astype(np.uint8)
    return arrays


def write_fake_debian(folder: Path) -> dict[str, np.ndarray]:
    """Debian-style gzipped IDX files of a tiny Fashion-MNIST; returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _fake_fashion_arrays()
    for name, array in arrays.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(_idx_bytes(array), mtime=0))
    return arrays


def write_fake_fashion_raw(data_folder: Path) -> None:
    """A data folder with uncompressed ``FashionMNIST/raw`` IDX files, as torchvision reads them."""
    raw = data_folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in _fake_fashion_arrays().items():
        (raw / name).write_bytes(_idx_bytes(array))


def write_fake_cifar100(data_folder: Path, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    """A ``cifar-100-python`` folder in the real pickle format; returns the HWC images and labels."""
    folder = data_folder / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        flat = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        fine = [int(i) for i in rng.integers(0, 100, n)]
        entry = {
            "filenames": [f"img_{i}.png" for i in range(n)],
            "batch_label": f"{split} batch",
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
            "data": flat,
        }
        (folder / split).write_bytes(pickle.dumps(entry))
        out[f"{split}_images"] = flat.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
        out[f"{split}_labels"] = np.array(fine)
    meta = {"fine_label_names": [f"class_{i}" for i in range(100)], "coarse_label_names": [str(i) for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return out


def touch_required(name: str, data_folder: Path) -> Path:
    """Empty files with the names torchvision needs: enough for resolution, which does not read them."""
    for rel in data_sources.required_files(name):
        (data_folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (data_folder / rel).touch()
    return data_folder


@pytest.fixture(scope="session")
def full_fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with the full Fashion-MNIST (prepared from Debian's package if needed), or skip."""
    try:
        return resolve_root("fashion_mnist", root=tmp_path_factory.mktemp("full-fashion-mnist"))
    except DatasetNotFoundError:
        pytest.skip("full Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


# --------------------------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert available_datasets() == ("cifar100", "cifar10", "fashion_mnist", "fashion_mnist_mini")
    c100 = dataset_info("cifar100")
    assert (c100.num_classes, c100.in_channels, c100.image_size) == (100, 3, 32)
    assert c100.mean == (0.5071, 0.4867, 0.4408) and c100.std == (0.2675, 0.2565, 0.2761)
    assert dataset_info("cifar10").std == (0.2470, 0.2435, 0.2616)
    mini = dataset_info("Fashion-MNIST_mini")
    assert (mini.in_channels, mini.train_size, mini.test_size) == (1, 10_000, 2_000)
    assert dataset_info("fashion_mnist").train_size == 60_000
    with pytest.raises(dataclasses.FrozenInstanceError):
        c100.num_classes = 10  # type: ignore[misc]


def test_unknown_dataset_lists_valid_names() -> None:
    for call in (dataset_info, resolve_root, lambda n: get_dataset(n, train=True)):
        with pytest.raises(ValueError, match="cifar100, cifar10, fashion_mnist, fashion_mnist_mini"):
            call("imagenet")


# --------------------------------------------------------------------------------------------- resolution


def test_resolution_order(places: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in (places.root, places.env, places.repo, places.cache):
        touch_required("cifar100", folder)
    monkeypatch.setenv("MKDLAB_DATA", str(places.env))
    assert resolve_root("cifar100", root=places.root) == places.root
    assert resolve_root("cifar100") == places.env
    assert resolve_root("cifar100", root=places.root / "empty") == places.env  # an empty root falls through
    monkeypatch.delenv("MKDLAB_DATA")
    assert resolve_root("cifar100") == places.repo
    monkeypatch.setattr(data_sources, "REPO_DATA_DIR", None)
    assert resolve_root("cifar100") == places.cache


def test_repo_data_beats_debian(places: SimpleNamespace) -> None:
    write_fake_debian(places.deb)
    write_fake_fashion_raw(places.repo)
    assert resolve_root("fashion_mnist") == places.repo
    assert not places.cache.exists()


def test_debian_is_decompressed_and_left_untouched(places: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = write_fake_debian(places.deb)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in places.deb.iterdir()}
    monkeypatch.setenv("MKDLAB_DATA", str(places.env))

    assert resolve_root("fashion_mnist") == places.env
    raw = places.env / "FashionMNIST" / "raw"
    for name in FASHION_MNIST_FILES:
        assert (raw / name).read_bytes() == gzip.decompress(before[f"{name}.gz"][0])
    assert sorted(p.name for p in raw.iterdir()) == sorted(FASHION_MNIST_FILES)  # no temporary files left
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in places.deb.iterdir()} == before

    # torchvision's own FashionMNIST reads the prepared files
    dataset = get_dataset("fashion_mnist", train=True, with_index=True)
    image, label, index = dataset[3]
    assert image.shape == (1, 32, 32) and label == 3 and index == 3
    images, labels = load_tensors("fashion_mnist", train=False)
    assert images.shape == (20, 1, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert torch.equal(images[:, 0, 2:30, 2:30], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert images[:, :, :2].sum() == 0 and images[:, :, :, 30:].sum() == 0


def test_debian_target_order(places: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's files go to the first writable folder: root, $MKDLAB_DATA, repo data/ (if it exists), cache."""
    write_fake_debian(places.deb)
    assert resolve_root("fashion_mnist") == places.cache  # repo data/ does not exist: the user cache
    places.repo.mkdir(parents=True)
    monkeypatch.setattr(data_sources, "user_cache_dir", lambda: places.cache.parent / "unused")
    assert resolve_root("fashion_mnist") == places.repo
    assert resolve_root("fashion_mnist", root=places.root) == places.repo  # already prepared there: found
    monkeypatch.setattr(data_sources, "REPO_DATA_DIR", places.repo.parent / "other")
    assert resolve_root("fashion_mnist", root=places.root) == places.root


@pytest.mark.parametrize(
    ("name", "hints"),
    [
        ("fashion_mnist", ["apt-get install dataset-fashion-mnist", "download=True", "FashionMNIST/raw/"]),
        ("cifar100", ["cifar-100-python.tar.gz", "data/cifar-100-python/", "MKDLAB_DATA", "download=True"]),
        ("cifar10", ["cifar-10-python.tar.gz", "cifar-10-batches-py/", "download=True"]),
    ],
)
def test_missing_data_error(
    places: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, name: str, hints: list[str]
) -> None:
    monkeypatch.setenv("MKDLAB_DATA", str(places.env))
    places.repo.mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as caught:
        get_dataset(name, train=True, root=places.root)
    assert isinstance(caught.value, FileNotFoundError)
    message = str(caught.value)
    looked = [places.root, places.env, places.repo, places.cache]
    looked += [places.deb] if name == "fashion_mnist" else []
    positions = [message.find(f": {p}") for p in looked]
    assert -1 not in positions and positions == sorted(positions), message
    for hint in hints:
        assert hint in message
    assert not places.root.exists() and not places.env.exists() and not places.cache.exists()  # nothing written


def test_download_only_when_asked(places: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Path]] = []
    monkeypatch.setattr(data_sources, "_download", lambda name, target: calls.append((name, target)))
    with pytest.raises(DatasetNotFoundError):
        resolve_root("cifar10", root=places.root)
    assert calls == []
    assert resolve_root("cifar10", root=places.root, download=True) == places.root
    assert calls == [("cifar10", places.root)]


def test_mini_needs_no_data_folder(places: SimpleNamespace) -> None:
    assert resolve_root("fashion_mnist_mini") == MINI_ASSET_DIR
    assert (MINI_ASSET_DIR / MINI_FILENAME).is_file()


# --------------------------------------------------------------------------------------------- mini subset


def test_mini_is_class_balanced() -> None:
    for train, per_class, full_size in ((True, 1000, 60_000), (False, 200, 10_000)):
        arrays = load_mini_arrays(train)
        images, labels, indices = arrays["images"], arrays["labels"], arrays["indices"]
        assert images.shape == (10 * per_class, 28, 28) and images.dtype == np.uint8
        assert labels.dtype == np.uint8 and indices.dtype == np.int32
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
        assert len(np.unique(indices)) == len(indices) and indices.min() >= 0 and indices.max() < full_size


def test_mini_images_look_real() -> None:
    images = load_mini_arrays(True)["images"]
    pixels = images / 255.0
    mean, std = dataset_info("fashion_mnist_mini").mean[0], dataset_info("fashion_mnist_mini").std[0]
    assert abs(pixels.mean() - mean) < 0.01 and abs(pixels.std() - std) < 0.01  # loosely: a subset
    assert (images == 0).mean() > 0.3 and (images > 200).mean() > 0.05  # dark background, bright garments
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) == len(images)


def test_mini_dataset_is_torchvision_style() -> None:
    dataset = FashionMNISTMini(train=False)
    assert isinstance(dataset, torchvision.datasets.VisionDataset) and len(dataset) == 2000
    image, label = dataset[5]
    assert image.mode == "L" and image.size == (28, 28) and label == int(dataset.targets[5])
    assert dataset.classes == torchvision.datasets.FashionMNIST.classes


@pytest.mark.full_data
def test_mini_matches_full_set(full_fashion_root: Path) -> None:
    for train in (True, False):
        full = torchvision.datasets.FashionMNIST(str(full_fashion_root), train=train)
        mini = load_mini_arrays(train)
        indices = torch.from_numpy(mini["indices"].astype(np.int64))
        assert np.array_equal(full.data[indices].numpy(), mini["images"])
        assert np.array_equal(full.targets[indices].numpy(), mini["labels"])


@pytest.mark.full_data
def test_mini_rebuild_is_reproducible(full_fashion_root: Path) -> None:
    rebuilt = build_mini_arrays(1000, 200, seed=0, root=full_fashion_root)
    with np.load(MINI_ASSET_DIR / MINI_FILENAME) as packaged:
        assert sorted(packaged.files) == sorted(rebuilt)
        for key, value in rebuilt.items():
            assert np.array_equal(packaged[key], value), key


@pytest.mark.full_data
def test_fashion_mnist_mean_std(full_fashion_root: Path) -> None:
    data = torchvision.datasets.FashionMNIST(str(full_fashion_root), train=True).data.numpy()
    counts = np.bincount(data.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = counts @ values / counts.sum()
    std = np.sqrt(counts @ values**2 / counts.sum() - mean**2)
    info = dataset_info("fashion_mnist")
    assert abs(mean - info.mean[0]) < 1e-4 and abs(std - info.std[0]) < 1e-4


# --------------------------------------------------------------------------------------------- datasets


def test_get_dataset_mini() -> None:
    dataset = get_dataset("fashion_mnist_mini", train=True, with_index=True)
    image, label, index = dataset[17]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32 and index == 17
    assert label == int(dataset.targets[17])  # the wrapper forwards attributes
    raw = get_dataset("fashion_mnist_mini", train=True, transform=None)
    assert raw[17][0].size == (28, 28) and len(raw[17]) == 2


def test_cifar100_offline(tmp_path: Path, cifar_without_md5: None) -> None:
    fake = write_fake_cifar100(tmp_path)
    train = get_dataset("cifar100", train=True, root=tmp_path, with_index=True)
    assert isinstance(train.dataset, torchvision.datasets.CIFAR100) and len(train) == 40
    image, label, index = train[4]
    assert image.shape == (3, 32, 32) and label == fake["train_labels"][4] and index == 4
    assert get_dataset("cifar100", train=False, root=tmp_path)[0][0].shape == (3, 32, 32)
    images, labels = load_tensors("cifar100", train=False, root=tmp_path)
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), fake["test_images"])
    assert labels.tolist() == fake["test_labels"].tolist()


# --------------------------------------------------------------------------------------------- loaders


def mini_subset(n: int = 300, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_tensors("fashion_mnist_mini", train=train)
    return images[:n], labels[:n]


def mini_loader(n: int = 300, batch_size: int = 64, *, train: bool = True, **options: object) -> DeviceLoader:
    """A loader over the first ``n`` mini images, yielding indices unless told otherwise."""
    info = dataset_info("fashion_mnist_mini")
    images, labels = mini_subset(n, train=train)
    kwargs: dict = {"mean": info.mean, "std": info.std, "with_index": True, **options}
    return DeviceLoader(images, labels, batch_size, train=train, **kwargs)


def batches(loader: DeviceLoader) -> list[tuple[torch.Tensor, ...]]:
    """One epoch of ``loader``, on the CPU."""
    return [tuple(t.cpu() for t in batch) for batch in loader]


def test_device_loader_shapes_and_labels() -> None:
    images, labels = mini_subset()
    loader = mini_loader()
    assert len(loader) == 5
    seen = []
    for x, y, idx in loader:
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 32, 32)
        assert y.dtype == torch.int64 and idx.dtype == torch.int64 and len(y) == len(x) == len(idx)
        assert torch.equal(y, labels[idx])
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == list(range(300))
    assert len(next(iter(mini_loader(with_index=False)))) == 2


def test_device_loader_drop_last() -> None:
    kept, dropped = mini_loader(drop_last=False), mini_loader(drop_last=True)
    assert (len(kept), len(dropped)) == (5, 4)
    assert [len(b[0]) for b in kept] == [64, 64, 64, 64, 44]
    assert [len(b[0]) for b in dropped] == [64] * 4


def x_at(loader: DeviceLoader, i: int) -> torch.Tensor:
    """Image ``i`` of an in-order loader."""
    x = batches(loader)[i // loader.batch_size][0]
    return x[i % loader.batch_size]


def test_test_loader_is_in_order_and_unaugmented() -> None:
    info = dataset_info("fashion_mnist_mini")
    images, _ = mini_subset(200, train=False)
    loader = mini_loader(200, 64, train=False, drop_last=True)
    assert len(loader) == 3  # drop_last is honoured for a test loader too
    reference = get_dataset("fashion_mnist_mini", train=False)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    served = []
    for x, _, idx in loader:
        assert torch.allclose(x, (images[idx].float() / 255 - mean) / std, atol=1e-6)
        served.append(idx)
    assert torch.cat(served).tolist() == list(range(192))
    for i in (0, 63, 130):
        assert torch.allclose(x_at(loader, i), reference[i][0], atol=1e-6)


def test_seed_and_epoch_determinism() -> None:
    first, again = batches(mini_loader(seed=1)), batches(mini_loader(seed=1))
    assert all(torch.equal(a, b) for x, y in zip(first, again, strict=True) for a, b in zip(x, y, strict=True))
    other_seed = batches(mini_loader(seed=2))
    assert not torch.equal(first[0][2], other_seed[0][2])
    loader = mini_loader(seed=1)
    epoch0, epoch1 = batches(loader), batches(loader)
    assert loader.epoch == 2 and not torch.equal(epoch0[0][2], epoch1[0][2])
    assert torch.equal(epoch0[0][0], first[0][0])
    loader.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches(loader), epoch1, strict=True))


@pytest.mark.parametrize("dataset", ["fashion_mnist_mini", "cifar100"])
def test_augmentation_matches_torchvision(dataset: str, tmp_path: Path, cifar_without_md5: None) -> None:
    """The device crop/flip equals torchvision's pad/crop/hflip applied per sample with the same draws."""
    root = tmp_path if dataset == "cifar100" else None
    if dataset == "cifar100":
        write_fake_cifar100(tmp_path)
    info = dataset_info(dataset)
    images, labels = load_tensors(dataset, train=True, root=root)
    images, labels = images[:40], labels[:40]
    raw = get_dataset(dataset, train=True, root=root, transform=None)
    loader = DeviceLoader(images, labels, 16, train=True, mean=info.mean, std=info.std, seed=3, with_index=True)
    params = loader.draw_epoch_params(0)
    assert params.offsets.min() >= 0 and params.offsets.max() <= 8
    assert 0 < params.flips.sum() < len(params.flips)
    k = 0
    for x, _, idx in loader:
        assert torch.equal(idx, params.order[k : k + len(idx)])
        for b, i in enumerate(idx.tolist()):
            pil = raw[i][0]
            if dataset == "fashion_mnist_mini":
                pil = TF.pad(pil, 2)
            top, left = params.offsets[k].tolist()
            pil = TF.crop(TF.pad(pil, 4), top, left, 32, 32)
            if params.flips[k]:
                pil = TF.hflip(pil)
            expected = TF.normalize(TF.to_tensor(pil), info.mean, info.std)
            assert torch.allclose(x[b], expected, atol=1e-6), (i, top, left, bool(params.flips[k]))
            k += 1
    assert k == 40


def test_output_options() -> None:
    plain = next(iter(mini_loader(seed=5)))[0]
    fancy = next(iter(mini_loader(seed=5, channels_last=True, dtype=torch.bfloat16)))[0]
    assert fancy.dtype == torch.bfloat16 and fancy.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fancy, plain.to(torch.bfloat16))
    with pytest.raises(ValueError, match="mean and std"):
        mini_loader(mean=(0.5, 0.5, 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_give_the_same_batches() -> None:
    on_cpu, on_cuda = batches(mini_loader(seed=9)), batches(mini_loader(seed=9, device="cuda"))
    for a, b in zip(on_cpu, on_cuda, strict=True):
        assert torch.allclose(a[0], b[0], atol=1e-6)
        assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_make_loaders() -> None:
    train, test = make_loaders("fashion_mnist_mini", 256, device="cpu", drop_last=True, with_index=True)
    assert isinstance(train, DeviceLoader) and isinstance(test, DeviceLoader)
    assert (len(train), len(test)) == (10_000 // 256, 8)  # drop_last applies to the training loader only
    x, y, idx = next(iter(test))
    assert x.shape == (256, 1, 32, 32) and torch.equal(idx, torch.arange(256))
    torch_train, torch_test = make_loaders("fashion_mnist_mini", 64, device="cpu", loader="torch", num_workers=0)
    assert isinstance(torch_train, DataLoader) and isinstance(torch_test, DataLoader)
    x, y = next(iter(torch_test))
    assert x.shape == (64, 1, 32, 32) and y.dtype == torch.int64
    assert torch.allclose(x, next(iter(test))[0][:64], atol=1e-6)  # both test loaders serve the same images
    with pytest.raises(ValueError, match="loader must be"):
        make_loaders("fashion_mnist_mini", 64, device="cpu", loader="fast")  # type: ignore[arg-type]
