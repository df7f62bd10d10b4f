"""Where datasets are looked for on disk, and how Fashion-MNIST is prepared from Debian's package.

A *data folder* is what torchvision calls ``root``: the folder that contains ``cifar-100-python/``,
``cifar-10-batches-py/`` or ``FashionMNIST/raw/``. :func:`resolve_root` looks, in this order, in

1. the ``root`` argument,
2. ``$MKDLAB_DATA``,
3. the repository's ``data/`` folder (only in a source checkout, and only when it exists),
4. the user cache folder (``$XDG_CACHE_HOME/mkdlab/data``, default ``~/.cache/mkdlab/data``),
5. for Fashion-MNIST, Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/``,
   or ``$MKDLAB_FASHION_MNIST_DEB``): its ``.gz`` files are decompressed into the first writable folder
   among 1-4, where torchvision expects them; the package's files are only read,
6. a download by torchvision, only when the caller passes ``download=True``.

Nothing is ever downloaded otherwise: when nothing is found, :class:`DatasetNotFoundError` says where it
looked and how to get the data.
"""

from __future__ import annotations

import gzip
import os
import shutil
import uuid
from pathlib import Path
from typing import NamedTuple

from torchvision import datasets as tv_datasets

from mkdlab.data.registry import dataset_info

__all__ = [
    "DATA_ENV",
    "DEBIAN_FASHION_MNIST_DIR",
    "DEBIAN_FASHION_MNIST_ENV",
    "FASHION_MNIST_FILES",
    "MINI_ASSET_DIR",
    "MINI_FILENAME",
    "REPO_DATA_DIR",
    "DatasetNotFoundError",
    "debian_fashion_mnist_dir",
    "has_dataset",
    "prepare_fashion_mnist",
    "required_files",
    "resolve_root",
    "torchvision_class",
    "user_cache_dir",
]

DATA_ENV = "MKDLAB_DATA"
DEBIAN_FASHION_MNIST_ENV = "MKDLAB_FASHION_MNIST_DEB"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MINI_FILENAME = "fashion_mnist_mini.npz"
MINI_ASSET_DIR = Path(__file__).resolve().parents[1] / "assets"


def _find_repo_data_dir() -> Path | None:
    """``<repo>/data`` when mkdlab runs from a source checkout (``pyproject.toml`` next to the package)."""
    repo = Path(__file__).resolve().parents[2]
    return repo / "data" if (repo / "pyproject.toml").is_file() else None


REPO_DATA_DIR: Path | None = _find_repo_data_dir()

_REQUIRED: dict[str, tuple[str, ...]] = {
    "cifar100": tuple(f"cifar-100-python/{f}" for f in ("train", "test", "meta")),
    "cifar10": tuple(
        f"cifar-10-batches-py/{f}" for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
    ),
    "fashion_mnist": tuple(f"FashionMNIST/raw/{f}" for f in FASHION_MNIST_FILES),
    "fashion_mnist_mini": (MINI_FILENAME,),
}

_TORCHVISION_CLASSES: dict[str, type[tv_datasets.VisionDataset]] = {
    "cifar100": tv_datasets.CIFAR100,
    "cifar10": tv_datasets.CIFAR10,
    "fashion_mnist": tv_datasets.FashionMNIST,
}

_HOW_TO_GET = {
    "cifar100": (
        "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it so "
        "that data/cifar-100-python/ exists (`tar -xzf cifar-100-python.tar.gz -C data/`), or extract it "
        f"anywhere and set {DATA_ENV} to the folder that contains cifar-100-python/, or pass download=True "
        "when online"
    ),
    "cifar10": (
        "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it so "
        "that data/cifar-10-batches-py/ exists (`tar -xzf cifar-10-python.tar.gz -C data/`), or extract it "
        f"anywhere and set {DATA_ENV} to the folder that contains cifar-10-batches-py/, or pass "
        "download=True when online"
    ),
    "fashion_mnist": (
        "install Debian's package (`sudo apt-get install dataset-fashion-mnist`; it is then found and "
        "prepared automatically), or pass download=True when online"
    ),
    "fashion_mnist_mini": (
        "the file ships inside the mkdlab package; reinstall mkdlab, or rebuild it from the full set with "
        "`python scripts/build_fashion_mnist_mini.py`"
    ),
}


_NO_WRITABLE = (
    "None of the data folders above is writable to {what}; pass a writable root or set "
    f"{DATA_ENV} to a writable folder."
)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is on none of the places searched; the message lists them and says how to get the data."""


class _Place(NamedTuple):
    """One place searched: what it is, where (``None`` when unset), a note for the error message, and whether
    it may be created to receive prepared or downloaded files."""

    label: str
    path: Path | None
    note: str = ""
    creatable: bool = True


def torchvision_class(name: str) -> type[tv_datasets.VisionDataset]:
    """The torchvision dataset class that reads ``name`` (not defined for ``fashion_mnist_mini``)."""
    info = dataset_info(name)
    try:
        return _TORCHVISION_CLASSES[info.name]
    except KeyError:
        raise ValueError(f"{info.name!r} is packaged with mkdlab and has no torchvision class") from None


def required_files(name: str) -> tuple[str, ...]:
    """Paths, relative to a data folder, that must exist for the folder to have ``name``."""
    return _REQUIRED[dataset_info(name).name]


def has_dataset(name: str, folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` has every file torchvision needs to read ``name`` (checksums are not checked)."""
    folder = Path(folder)
    return all((folder / rel).is_file() for rel in required_files(name))


def debian_fashion_mnist_dir() -> Path:
    """Where Debian's ``dataset-fashion-mnist`` puts its files (``$MKDLAB_FASHION_MNIST_DEB`` overrides)."""
    override = os.environ.get(DEBIAN_FASHION_MNIST_ENV, "").strip()
    return Path(override).expanduser() if override else DEBIAN_FASHION_MNIST_DIR


def user_cache_dir() -> Path:
    """The per-user data folder: ``$XDG_CACHE_HOME/mkdlab/data``, by default ``~/.cache/mkdlab/data``."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "mkdlab" / "data"


def _data_places(root: str | os.PathLike[str] | None) -> list[_Place]:
    """The data folders searched, in order, including unset ones (their path is ``None``)."""
    env = os.environ.get(DATA_ENV, "").strip()
    repo = REPO_DATA_DIR
    cache = user_cache_dir()
    places = [_Place("root argument", Path(root).expanduser())] if root is not None else []
    places.append(_Place(f"${DATA_ENV}", Path(env).expanduser() if env else None, "" if env else "not set"))
    if repo is None:
        places.append(_Place("repository data/ folder", None, "mkdlab is not running from a source checkout"))
    else:
        note = "" if repo.is_dir() else "does not exist"
        places.append(_Place("repository data/ folder", repo, note, creatable=False))
    places.append(_Place("user cache folder", cache, "" if cache.is_dir() else "does not exist"))
    return places


def _writable_folder(places: list[_Place]) -> Path | None:
    """The first of ``places`` that is (or can be made) a writable folder.

    The repository ``data/`` folder is used only when it exists; the others are created as needed.
    """
    for place in places:
        if place.path is None or (not place.creatable and not place.path.is_dir()):
            continue
        try:
            place.path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(place.path, os.W_OK | os.X_OK):
            return place.path
    return None


def prepare_fashion_mnist(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Decompress Debian's Fashion-MNIST ``.gz`` files from ``source`` into ``target/FashionMNIST/raw/``.

    Files already present in ``target`` are kept; ``source`` is only read. Each file is written to a temporary
    name first and renamed, so an interrupted run leaves no truncated file behind.

    Returns:
        ``target``, a data folder that now has ``fashion_mnist``.
    """
    source, target = Path(source), Path(target)
    raw = target / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        out = raw / name
        if out.is_file():
            continue
        part = raw / f".{name}.{os.getpid()}.{uuid.uuid4().hex}.part"
        try:
            with gzip.open(source / f"{name}.gz", "rb") as src, open(part, "xb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            os.replace(part, out)
        finally:
            part.unlink(missing_ok=True)
    return target


def _download(name: str, target: Path) -> None:
    """Let torchvision download ``name`` into ``target`` (called only for ``download=True``)."""
    cls = torchvision_class(name)
    try:
        cls(str(target), train=True, download=True)
    except Exception as err:
        raise RuntimeError(
            f"downloading {name} into {target} failed ({err}); check the network, or get the files by hand: "
            f"{_HOW_TO_GET[name]}"
        ) from err


def _not_found(name: str, places: list[_Place], extra: list[_Place], problem: str = "") -> DatasetNotFoundError:
    lines = [f"dataset {name!r} was not found. Looked in, in this order:"]
    for i, place in enumerate([*places, *extra], start=1):
        where = "" if place.path is None else f" {place.path}"
        note = f" ({place.note})" if place.note else ""
        lines.append(f"  {i}. {place.label}:{where}{note}")
    lines.append(f"A data folder has {name!r} when it contains: {', '.join(required_files(name))}.")
    if problem:
        lines.append(problem)
    lines.append(f"To get it: {_HOW_TO_GET[name]}.")
    return DatasetNotFoundError("\n".join(lines))


def _resolve_mini(root: str | os.PathLike[str] | None) -> Path:
    places = [_Place("root argument", Path(root).expanduser())] if root is not None else []
    places.append(_Place("mkdlab package assets", MINI_ASSET_DIR))
    for place in places:
        if place.path is not None and has_dataset("fashion_mnist_mini", place.path):
            return place.path
    raise _not_found("fashion_mnist_mini", places, [])


def resolve_root(name: str, root: str | os.PathLike[str] | None = None, download: bool = False) -> Path:
    """The data folder that has ``name``, preparing or downloading it when needed (see the module docstring).

    For ``fashion_mnist_mini`` this is the package's assets folder (or ``root`` when it holds
    ``fashion_mnist_mini.npz``); nothing is searched, prepared or downloaded.

    Args:
        name: a dataset name (see :func:`~mkdlab.data.available_datasets`).
        root: a data folder to look in first; it is also where Debian's files are prepared and downloads go.
        download: when the data is nowhere on disk, let torchvision download it into the first writable
            folder.

    Raises:
        DatasetNotFoundError: the data is nowhere and ``download`` is false (or no folder is writable).
        ValueError: ``name`` is unknown.
    """
    name = dataset_info(name).name
    if name == "fashion_mnist_mini":
        return _resolve_mini(root)
    places = _data_places(root)
    for place in places:
        if place.path is not None and has_dataset(name, place.path):
            return place.path
    extra: list[_Place] = []
    if name == "fashion_mnist":
        deb = debian_fashion_mnist_dir()
        missing = [f"{f}.gz" for f in FASHION_MNIST_FILES if not (deb / f"{f}.gz").is_file()]
        note = f"missing {', '.join(missing)}" if missing else ""
        extra.append(_Place("Debian package dataset-fashion-mnist", deb, note))
        if not missing:
            target = _writable_folder(places)
            if target is None:
                raise _not_found(name, places, extra, _NO_WRITABLE.format(what="decompress Debian's files into"))
            return prepare_fashion_mnist(deb, target)
    if download:
        target = _writable_folder(places)
        if target is None:
            raise _not_found(name, places, extra, _NO_WRITABLE.format(what="download into"))
        _download(name, target)
        return target
    raise _not_found(name, places, extra)
