"""``python -m mkdlab visdom``: the asset fetch (from a local stand-in for the npm registry) and the refusals, each
one line ``mkdlab: error: …`` with exit code 2. The browser check is tests/test_visdom_offline.py."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import tarfile
from pathlib import Path

import pytest
from helpers import free_port, visdom_process

from mkdlab.cli import main
from mkdlab.engine import visdom_assets
from mkdlab.engine.visdom_assets import FETCH_COMMAND, STAMP, AssetsError, NpmPackage, assets_problem, fetch_assets

pytest.importorskip("visdom")
REPO = Path(__file__).resolve().parents[1]


def _tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A ``file://`` registry holding two packages (one a tree with a skipped folder) that stand for PACKAGES."""
    root = tmp_path / "registry"
    lib = _tarball({"dist/lib.min.js": b"var lib = 1;", "README.md": b"not taken"})
    tree = _tarball({"MathJax.js": b"var MathJax;", "config/a.js": b"a", "unpacked/MathJax.js": b"big",
                     "../evil.js": b"outside"})
    for name, data in (("lib", lib), ("tree", tree)):
        (root / name / "-").mkdir(parents=True)
        (root / name / "-" / f"{name}-1.0.0.tgz").write_bytes(data)
    packages = (NpmPackage("lib", "1.0.0", _integrity(lib), {"dist/lib.min.js": "js/lib.min.js"}),
                NpmPackage("tree", "1.0.0", _integrity(tree), tree="js/tree/1", skip=("unpacked/",)))
    monkeypatch.setattr(visdom_assets, "PACKAGES", packages)
    return root.as_uri(), root


def test_fetch_assets_builds_a_complete_static_dir(tmp_path: Path, registry: tuple[str, Path]) -> None:
    target = tmp_path / "assets"
    assert FETCH_COMMAND in (assets_problem(target) or "")
    fetch_assets(target, registry=registry[0], log=False)
    assert assets_problem(target) is None
    assert (target / "js" / "lib.min.js").read_bytes() == b"var lib = 1;"
    assert (target / "js" / "tree" / "1" / "config" / "a.js").read_bytes() == b"a"
    assert not (target / "js" / "tree" / "1" / "unpacked").exists() and not (tmp_path / "evil.js").exists()
    assert (target / "index.html").is_file() and (target / "js" / "main.js").is_file()  # visdom's own files
    stamp = json.loads((target / STAMP).read_text())
    assert stamp["packages"] == ["lib@1.0.0", "tree@1.0.0"]
    stamp["visdom"] = "0.0.0"
    (target / STAMP).write_text(json.dumps(stamp))
    assert "fetched for another visdom" in (assets_problem(target) or "")


def test_fetch_refuses_a_tampered_tarball_and_keeps_the_old_dir(tmp_path: Path, registry: tuple[str, Path]) -> None:
    target = tmp_path / "assets"
    fetch_assets(target, registry=registry[0], log=False)
    tarball = registry[1] / "lib" / "-" / "lib-1.0.0.tgz"
    tarball.write_bytes(_tarball({"dist/lib.min.js": b"var lib = 'evil';"}))
    assert fetch_assets(target, registry=registry[0], log=False) == target.resolve()  # up to date: kept
    with pytest.raises(AssetsError, match="does not match its pinned sha512"):
        fetch_assets(target, registry=registry[0], log=False, force=True)
    assert (target / "js" / "lib.min.js").read_bytes() == b"var lib = 1;" and assets_problem(target) is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".visdom-static-")] == []


def test_fetch_refuses_a_foreign_folder_and_an_unreachable_registry(tmp_path: Path,
                                                                    registry: tuple[str, Path]) -> None:
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(AssetsError, match="not empty"):
        fetch_assets(foreign, registry=registry[0], log=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(AssetsError, match="MKDLAB_NPM_REGISTRY"):
        fetch_assets(tmp_path / "new", registry=(tmp_path / "nowhere").as_uri(), log=False)


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["visdom", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("mkdlab: error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


def test_public_bind_needs_a_login(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISDOM_USERNAME", raising=False)
    monkeypatch.setenv("VISDOM_PASSWORD", "secret")  # a password alone is no login
    err = _error(capsys, "--host", "0.0.0.0", "--api-only")
    assert "VISDOM_USERNAME and VISDOM_PASSWORD" in err and "127.0.0.1" in err


def test_missing_assets_name_the_fetch_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _error(capsys, "--assets-dir", str(tmp_path / "none"), "--env-path", str(tmp_path / "envs"))
    assert f"`{FETCH_COMMAND}`" in err and "missing" in err


def test_port_in_use(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = _error(capsys, "--api-only", "--port", str(port), "--env-path", str(tmp_path / "envs"))
    assert f"port {port} on 127.0.0.1 is in use" in err and "--port" in err


@pytest.mark.slow
def test_login_guards_the_server_and_training_logs_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With VISDOM_USERNAME/VISDOM_PASSWORD the server asks for visdom's login (here on the loopback; the same
    holds for ``--host 0.0.0.0``), and the training logger logs in with the same variables."""
    import urllib.error
    import urllib.request

    from mkdlab.engine.visdom_logger import VisdomLogger, VisdomUnavailableWarning

    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path), "VISDOM_USERNAME": "ada", "VISDOM_PASSWORD": "s3cret",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log_path = tmp_path / "server.log"
    with visdom_process("--api-only", "--env-path", str(tmp_path / "envs"), port=port, log_path=log_path, env=env):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert b'type="password"' in page.read()  # the login form, not the dashboard
        with pytest.raises(urllib.error.HTTPError, match="400"):
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/win_exists", data=b"{}"),
                                   timeout=10)
        assert (tmp_path / ".visdom" / "COOKIE_SECRET").stat().st_mode & 0o077 == 0
        monkeypatch.setenv("VISDOM_USERNAME", "ada")
        monkeypatch.setenv("VISDOM_PASSWORD", "s3cret")
        vis = VisdomLogger(port=port, env="login_test", timeout=5.0, run_name="r")
        vis.log_epoch(1, {"epoch": 1, "test_top1": 42.0})
        vis.close()
        assert vis.dropped == 0 and not vis._warned  # sent, never disabled
        assert vis._vis.win_exists("r/top1", env="login_test")
        monkeypatch.setenv("VISDOM_PASSWORD", "wrong")
        with pytest.warns(VisdomUnavailableWarning, match="refused the login of 'ada'"):
            refused = VisdomLogger(port=port, env="login_test", timeout=5.0, run_name="r")
        assert not refused.enabled
    assert "Traceback" not in log_path.read_text()
