"""A visdom server whose web page works offline, on 127.0.0.1 unless a login protects it.

``python -m visdom.server`` downloads its web assets from CDNs at every start (and crashes without them). This
module starts visdom's tornado ``Application`` itself, after that download step, serving the static directory
that :func:`mkdlab.engine.visdom_assets.fetch_assets` wrote from npm packages (``python -m mkdlab visdom
--fetch-assets``, once). The CLI (``python -m mkdlab visdom``) is the entry point::

    python -m mkdlab visdom [--port 8097] [--env-path DIR] [--assets-dir DIR]
    VISDOM_USERNAME=me VISDOM_PASSWORD=… python -m mkdlab visdom --host 0.0.0.0

A bind beyond the loopback interface is refused unless ``VISDOM_USERNAME`` and ``VISDOM_PASSWORD`` are set; then
visdom's own login (``-enable_login``) guards the page and the API, with the cookie secret from
``VISDOM_COOKIE`` or a random one kept in ``~/.visdom/COOKIE_SECRET`` (where visdom reads it). ``api_only``
serves the HTTP API that training logs to without the page's assets.

Recent tornado releases refuse to version-hash ``static_url("../user/style.css")``, which visdom's ``index.html``
uses, so ``GET /`` answers 403; :func:`patch_static_urls` restores the old behaviour (an unversioned URL).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from mkdlab.engine.visdom_assets import AssetsError, assets_problem, default_assets_dir
from mkdlab.engine.visdom_logger import credentials_from_env
from mkdlab.typed import ConfigError

__all__ = ["LOOPBACK", "VisdomServerError", "default_env_path", "patch_static_urls", "serve"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class VisdomServerError(ConfigError):
    """The server cannot start as asked (one line for the CLI)."""


def default_env_path() -> Path:
    """Where visdom keeps environments by default: ``~/.visdom``."""
    return Path.home() / ".visdom"


def patch_static_urls() -> None:
    """Make visdom's app use a static handler that leaves unversionable URLs unversioned."""
    from tornado.web import HTTPError, StaticFileHandler
    from visdom.server import app

    class LenientStaticFileHandler(StaticFileHandler):
        """``StaticFileHandler`` whose ``get_version`` gives ``None`` (no ``?v=`` hash) for a
        path outside the static directory (instead of a 403) or a file that is missing (instead
        of an error line in the log for every page load)."""

        @classmethod
        def get_version(cls, settings: dict[str, Any], path: str) -> str | None:
            try:
                if not os.path.isfile(cls.get_absolute_path(settings["static_path"], path)):
                    return None
                return super().get_version(settings, path)
            except HTTPError:
                return None

    app.tornado_settings.setdefault("static_handler_class", LenientStaticFileHandler)


def _login(credentials: tuple[str, str]) -> dict[str, str]:
    """visdom's ``user_credential`` (the password hashed twice with SHA-256, as ``run_server.main`` does); makes
    sure the cookie secret visdom reads from ``~/.visdom/COOKIE_SECRET`` exists."""
    from visdom.server.defaults import DEFAULT_ENV_PATH
    from visdom.utils.server_utils import hash_password

    secret_path = Path(DEFAULT_ENV_PATH) / "COOKIE_SECRET"
    cookie = os.environ.get("VISDOM_COOKIE")
    if cookie or not secret_path.is_file():
        secret_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(cookie or secrets.token_hex(32))
    username, password = credentials
    return {"username": username, "password": hash_password(hash_password(password))}


def _check_bind(host: str, credentials: tuple[str, str] | None) -> None:
    if host not in LOOPBACK and credentials is None:
        raise VisdomServerError(
            f"--host {host} serves the dashboard beyond this machine: set VISDOM_USERNAME and VISDOM_PASSWORD "
            "(visdom's login then guards the page and the API), or keep the default 127.0.0.1")


def serve(port: int = 8097, host: str = "127.0.0.1", env_path: Path | None = None, assets_dir: Path | None = None,
          *, api_only: bool = False) -> int:
    """Serve until interrupted (Ctrl-C gives 0); raise :class:`VisdomServerError` or
    :class:`~mkdlab.engine.visdom_assets.AssetsError` before listening if the server cannot start as asked."""
    credentials = credentials_from_env()
    _check_bind(host, credentials)
    if not 0 < port < 65536:
        raise VisdomServerError(f"--port {port} is not a TCP port (1-65535)")
    static = Path(assets_dir or default_assets_dir()).expanduser().resolve()
    if not api_only and (problem := assets_problem(static)):
        raise AssetsError(f"{problem} (or start with --api-only to serve the logging API without the page)")
    env_dir = Path(env_path or default_env_path()).expanduser().resolve()
    env_dir.mkdir(parents=True, exist_ok=True)

    from tornado import ioloop
    from visdom.server import app as visdom_app

    patch_static_urls()
    # visdom turns tornado's debug mode on, whose autoreload stats every imported module twice a second and
    # restarts the server when a file changes, and whose error pages show tracebacks to any client
    visdom_app.tornado_settings.update(autoreload=False, serve_traceback=False)
    if not api_only:
        visdom_app.tornado_settings["static_path"] = str(static)
        visdom_app.tornado_settings["template_path"] = str(static)
    # base_url="" as visdom's own main() passes for the default "/": with "/" every route would start with "//"
    application = visdom_app.Application(port=port, base_url="", env_path=str(env_dir) + os.sep,
                                         user_credential=_login(credentials) if credentials else None)
    try:
        application.listen(port, address=host, max_buffer_size=1024**3)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise VisdomServerError(f"port {port} on {host} is in use (another visdom?): stop that server, or "
                                    f"pick a free one with --port and train with output.visdom_port=…") from None
        raise VisdomServerError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    page = "the HTTP API only" if api_only else "the dashboard"
    login = f", login as {credentials[0]}" if credentials else ""
    print(f"visdom: {page} on http://{host}:{port} (env path {env_dir}{login}); Ctrl-C to stop", flush=True)
    logging.getLogger("visdom").info("assets from %s", static)
    try:
        ioloop.IOLoop.current().start()
    except KeyboardInterrupt:
        pass
    return 0

