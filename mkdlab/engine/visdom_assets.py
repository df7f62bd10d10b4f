"""The visdom web page's third-party files, fetched once from the npm registry instead of CDNs.

``visdom.server.build.download_scripts`` (visdom 0.2.4) downloads jQuery, Bootstrap, React, react-modal, Plotly,
sjcl, d3, MathJax, … from unpkg.com, cdn.plot.ly, d3js.org and cdnjs at every server start; a machine without
those CDNs gets a blank page. :func:`fetch_assets` takes the same files, at the same versions, from the npm
packages of the same names (``registry.npmjs.org``, or the mirror named by ``MKDLAB_NPM_REGISTRY``), checks each
tarball against the sha512 pinned in :data:`PACKAGES`, and writes a complete static directory: visdom's own
``static`` files plus the fetched ones at the paths visdom's ``index.html`` asks for. The server
(:mod:`mkdlab.engine.visdom_server`) serves that directory::

    python -m mkdlab visdom --fetch-assets      # once, online or through a registry mirror

Where visdom's list departs from what a browser requests, the fixed name is used: the Bootstrap SVG font is
``glyphicons-halflings-regular.svg`` (visdom saves it under a name ending in ``#glyphicons_halflingsregular``,
which no URL reaches), and MathJax is the whole 2.7.5 package (visdom takes 8 files; its TeX config then
requests more, which 404), less its unpacked sources and PNG fonts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mkdlab.typed import ConfigError

__all__ = ["PACKAGES", "AssetsError", "NpmPackage", "assets_problem", "default_assets_dir", "fetch_assets"]

FETCH_COMMAND = "python -m mkdlab visdom --fetch-assets"
STAMP = "mkdlab-assets.json"
DEFAULT_REGISTRY = "https://registry.npmjs.org"


class AssetsError(ConfigError):
    """The web assets cannot be fetched or are not there (one line for the CLI)."""


@dataclass(frozen=True)
class NpmPackage:
    """One npm tarball: its pinned ``integrity`` (the registry's ``dist.integrity``) and what to take from it.

    ``files`` maps a path inside the package to a path under the static directory; ``tree`` copies a whole
    package under that static path, leaving out members whose path contains one of ``skip``.
    """

    name: str
    version: str
    integrity: str
    files: dict[str, str] = field(default_factory=dict)
    tree: str = ""
    skip: tuple[str, ...] = ()

    def tarball_url(self, registry: str) -> str:
        return f"{registry.rstrip('/')}/{self.name}/-/{self.name.split('/')[-1]}-{self.version}.tgz"


_BOOTSTRAP_FONTS = {f"dist/fonts/glyphicons-halflings-regular.{ext}": f"fonts/glyphicons-halflings-regular.{ext}"
                    for ext in ("eot", "woff2", "woff", "ttf", "svg")}

#: every file of visdom 0.2.4's ``download_scripts``, from the npm package of the same name and version.
PACKAGES: tuple[NpmPackage, ...] = (
    NpmPackage("jquery", "3.1.1",
               "sha512-zuiWRmx65Kd1oFGdWLvAjbsumdOBFvs3r1vuqCyKFF79R7exBHNbiNEJ8LR+xkzgfxqBznMD/4Cv6PHXS6mvEw==",
               {"dist/jquery.min.js": "js/jquery.min.js"}),
    NpmPackage("bootstrap", "3.3.7",
               "sha512-qcFaisBrcBhTFkz1IUnGDYnX6ZWfFzH8zOixUDtHW9Ip+r+7MfMFav2rzy7cIHc7rgIg7xjhWBoo1mS/U26j4g==",
               {"dist/js/bootstrap.min.js": "js/bootstrap.min.js",
                "dist/css/bootstrap.min.css": "css/bootstrap.min.css", **_BOOTSTRAP_FONTS}),
    NpmPackage("react", "16.2.0",
               "sha512-ZmIomM7EE1DvPEnSFAHZn9Vs9zJl5A9H7el0EGTE6ZbW9FKe/14IYAlPbC8iH25YarEQxZL+E8VW7Mi7kfQrDQ==",
               {"umd/react.production.min.js": "js/react-react.min.js"}),
    NpmPackage("react-dom", "16.2.0",
               "sha512-zpGAdwHVn9K0091d+hr+R0qrjoJ84cIBFL2uU60KvWBPfZ7LPSrfqviTxGHWN0sjPZb2hxWzMexwrvJdKePvjg==",
               {"umd/react-dom.production.min.js": "js/react-dom.min.js"}),
    NpmPackage("react-modal", "3.1.10",
               "sha512-7b77AGWCkdg0YOf/qcYIGCpuwbxRwOA8P3UrUovk4grUNv+idOmHovJAx/Dcd3fuwHtgixxVjpcjVG60985MSA==",
               {"dist/react-modal.min.js": "js/react-modal.min.js"}),
    # cdn.plot.ly/plotly-2.11.1.min.js is this package's plotly.min.js
    NpmPackage("plotly.js-dist-min", "2.11.1",
               "sha512-F9WWNht0D3yBLZGHbLoJNfvplXvy+GUPSsA/lCbMuYd/UwzSu6Vmyprxlps9Einw1LDS1hYBrJeioK0lE3ieXA==",
               {"plotly.min.js": "js/plotly-plotly.min.js"}),
    NpmPackage("sjcl", "1.0.7",
               "sha512-xQbiwKfiAj6vyk44ANJ5RRymALRdRZOuRoKNYkWUU404p/RFXmMaay1Z5vRn30GJjkD+psox4Jd38jZojSuNYA==",
               {"sjcl.js": "js/sjcl.js"}),
    NpmPackage("layout-bin-packer", "1.4.0",
               "sha512-dQOZnajbOBGIcS9YlzKrkRtMCGa2oEpyf1zGRn93suphSvPclJe54Sbgtb053GJ21DUk84IBzaeQvjn+Gb10fA==",
               {"dist/layout-bin-packer.js": "js/layout_bin_packer.js",
                "dist/layout-bin-packer.js.map": "js/layout-bin-packer.js.map"}),
    # d3js.org/d3.v3.min.js is the last v3 release, 3.5.17; d3-selection-multi.v1.js is 1.0.1
    NpmPackage("d3", "3.5.17",
               "sha512-yFk/2idb8OHPKkbAL8QaOaqENNoMhIaSHZerk3oQsECwkObkCpJyjYwCe+OHiq6UEdhe1m8ZGARRRO3ljFjlKg==",
               {"d3.min.js": "js/d3.v3.min.js"}),
    NpmPackage("d3-selection-multi", "1.0.1",
               "sha512-mEnRkJ6A+Otd1LuRPV3az+s/RLDmIEhuz/MnT21O2nPcWNH7wZotdIlRjMA4Wpr+n7AESQ5fD8v1J3nL2Mnw9g==",
               {"build/d3-selection-multi.js": "js/d3-selection-multi.v1.js"}),
    NpmPackage("save-svg-as-png", "1.4.17",
               "sha512-7QDaqJsVhdFPwviCxkgHiGm9omeaMBe1VKbHySWU6oFB2LtnGCcYS13eVoslUgq6VZC6Tjq/HddBd1K6p2PGpA==",
               {"lib/saveSvgAsPng.js": "js/saveSvgAsPng.js"}),
    NpmPackage("react-resizable", "1.4.6",
               "sha512-4zLORO51u0/mlDsrVCAA4p266d+3mb2ZMNdiWOotAh/PdnfrRzZhgePmKE08PSQatXVIfMjmyD+Sapay8tmxdQ==",
               {"css/styles.css": "css/react-resizable-styles.css"}),
    NpmPackage("react-grid-layout", "0.16.3",
               "sha512-ytP92EqUjqcFhGzvdeKrK610dQ04GdFwRCWtD6PoeL5wR3liETcFISO7k8RBqnosV86JtXf/DwIfrL0COLs0gg==",
               {"css/styles.css": "css/react-grid-layout-styles.css"}),
    # unpkg.com/classnames@2.2.5 is the package's main file; visdom stores it as fonts/classnames
    NpmPackage("classnames", "2.2.5",
               "sha512-DTt3GhOUDKhh4ONwIJW4lmhyotQmV2LjNlGK/J2hkwUcqcbKkCLAdJPtxQnxnlc7SR3f1CEXCyMmc7WLUsWbNA==",
               {"index.js": "fonts/classnames"}),
    NpmPackage("mathjax", "2.7.5",
               "sha512-OzsJNitEHAJB3y4IIlPCAvS0yoXwYjlo2Y4kmm9KQzyIBZt2d8yKRalby3uTRNN4fZQiGL2iMXjpdP1u2Rq2DQ==",
               tree="js/mathjax/2.7.5", skip=("unpacked/", "/png/", "test/", "docs/")),
)


def default_assets_dir() -> Path:
    """``$MKDLAB_VISDOM_ASSETS``, else ``$XDG_CACHE_HOME/mkdlab/visdom-static`` (``~/.cache`` by default)."""
    if os.environ.get("MKDLAB_VISDOM_ASSETS"):
        return Path(os.environ["MKDLAB_VISDOM_ASSETS"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mkdlab" / "visdom-static"


def _visdom_static() -> Path:
    from visdom.utils.shared_utils import get_visdom_path

    return Path(get_visdom_path("static"))


def _visdom_version() -> str:
    import visdom

    return str(visdom.__version__)


def _stamp() -> dict[str, object]:
    return {"visdom": _visdom_version(), "packages": [f"{p.name}@{p.version}" for p in PACKAGES]}


def assets_problem(assets_dir: Path) -> str | None:
    """Why ``assets_dir`` cannot serve the page (missing, or fetched for another visdom), or ``None``."""
    stamp_path = Path(assets_dir) / STAMP
    if not stamp_path.is_file():
        return f"the visdom web assets are missing in {assets_dir}: fetch them once with `{FETCH_COMMAND}`"
    try:
        found = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        found = None
    if found != _stamp():
        return (f"the visdom web assets in {assets_dir} were fetched for another visdom or package list: "
                f"fetch them again with `{FETCH_COMMAND}`")
    return None


def _download(package: NpmPackage, registry: str, timeout: float) -> bytes:
    url = package.tarball_url(registry)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "mkdlab"}),
                                    timeout=timeout) as answer:
            data: bytes = answer.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AssetsError(f"cannot download {url} ({reason}): check the network, or set MKDLAB_NPM_REGISTRY "
                          "to an npm registry mirror you can reach") from None
    algorithm, _, expected = package.integrity.partition("-")
    if base64.b64encode(hashlib.new(algorithm, data).digest()).decode() != expected:
        raise AssetsError(f"{url} does not match its pinned {algorithm} checksum: nothing was installed; "
                          "check that MKDLAB_NPM_REGISTRY serves the genuine npm packages")
    return data


def _members(package: NpmPackage, archive: tarfile.TarFile) -> dict[tarfile.TarInfo, str]:
    """Each regular member to extract and its path under the static directory."""
    chosen: dict[tarfile.TarInfo, str] = {}
    for member in archive.getmembers():
        inner = PurePosixPath(member.name)
        if not member.isfile() or inner.is_absolute() or ".." in inner.parts or len(inner.parts) < 2:
            continue
        inside = PurePosixPath(*inner.parts[1:]).as_posix()  # drop the tarball's top folder ("package/")
        if inside in package.files:
            chosen[member] = package.files[inside]
        elif package.tree and not any(part in inside for part in package.skip):
            chosen[member] = f"{package.tree}/{inside}"
    missing = set(package.files.values()) - set(chosen.values())
    if missing:
        raise AssetsError(f"{package.name}@{package.version} lacks {sorted(missing)}: the registry served "
                          "another package under that name")
    return chosen


def _extract(package: NpmPackage, data: bytes, static: Path) -> int:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        chosen = _members(package, archive)
        for member, target in chosen.items():
            path = static / target
            path.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None  # a regular file
            path.write_bytes(source.read())
    return len(chosen)


def fetch_assets(assets_dir: Path | None = None, *, registry: str | None = None, timeout: float = 60.0,
                 log: bool = True, force: bool = False) -> Path:
    """Write the complete static directory to ``assets_dir`` (default :func:`default_assets_dir`); a directory
    already fetched for this visdom and package list is kept unless ``force``.

    It is built in a sibling temporary folder and moved into place at the end, so an interrupted or failed fetch
    leaves the previous directory (or none) and never a half-filled one.
    """
    target = Path(assets_dir or default_assets_dir()).expanduser().resolve()
    if not force and assets_problem(target) is None:
        if log:
            print(f"  already fetched for this visdom (delete {target} to fetch again)", flush=True)
        return target
    registry = registry or os.environ.get("MKDLAB_NPM_REGISTRY") or DEFAULT_REGISTRY
    if target.exists() and any(target.iterdir()) and not (target / STAMP).is_file():
        raise AssetsError(f"{target} is not empty and holds no earlier fetch ({STAMP}): name an empty or new "
                          "folder (MKDLAB_VISDOM_ASSETS or --assets-dir); nothing was changed")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".visdom-static-", dir=target.parent))
    try:
        static = work / "static"
        shutil.copytree(_visdom_static(), static)
        for package in PACKAGES:
            count = _extract(package, _download(package, registry, timeout), static)
            if log:
                print(f"  {package.name}@{package.version}: {count} file(s)", flush=True)
        (static / STAMP).write_text(json.dumps(_stamp(), indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        static.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
