"""Start a local visdom server without touching the network.

``python -m visdom.server`` (and the ``visdom`` console script) run
``visdom.server.run_server.download_scripts_and_run``, which first calls
``visdom.server.build.download_scripts()`` to fetch jQuery, React, Plotly, MathJax, ... from
CDNs; offline that fails (the MathJax part raises). Visdom 0.2.4 has no flag to skip it, so this
module calls the server entry point that comes after the download,
``visdom.server.run_server.start_server``, directly, bound to 127.0.0.1 (``bind_local=True``)::

    python -m mkdlab.engine.visdom_server [--port 8097] [--env-path DIR]

Recent tornado releases refuse to version-hash ``static_url("../user/style.css")``, which
visdom's ``index.html`` uses, so ``GET /`` answers 403; :func:`patch_static_urls` restores the
old behaviour (an unversioned URL) for the server started here.

The HTTP API (what :class:`mkdlab.engine.loggers.VisdomLogger` uses) works without the
downloaded files; the browser UI needs them (run ``python -m visdom.server`` once while online,
or ``python -c "from visdom.server.build import download_scripts; download_scripts()"``).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "patch_static_urls", "static_files_missing"]

HOST = "127.0.0.1"


def _default_env_path() -> str:
    return os.path.join(os.path.expanduser("~"), ".visdom")


def static_files_missing() -> bool:
    """Whether the JS/CSS bundles the browser UI needs were never downloaded."""
    from visdom.utils.shared_utils import get_visdom_path

    return not os.path.exists(os.path.join(get_visdom_path(), "static", "version.built"))


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mkdlab.engine.visdom_server",
        description="Start a visdom server on 127.0.0.1 without downloading any static file.",
    )
    parser.add_argument("--port", type=int, default=8097, help="port to listen on (default: 8097)")
    parser.add_argument(
        "--env-path",
        default=_default_env_path(),
        help="directory where visdom saves environments (default: ~/.visdom)",
    )
    parser.add_argument("--logging-level", default="WARNING", help="server log level (default: WARNING)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and serve until interrupted; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.logging_level.upper())
    logging.getLogger().setLevel(args.logging_level.upper())
    env_path = os.path.abspath(os.path.expanduser(args.env_path))
    os.makedirs(env_path, exist_ok=True)

    from visdom.server.run_server import start_server

    patch_static_urls()
    if static_files_missing():
        print(
            "note: visdom's browser UI files are not downloaded, so the web page may stay blank; "
            "logging through the HTTP API works regardless.",
            flush=True,
        )
    print(f"visdom server on http://{HOST}:{args.port} (env path {env_path}); Ctrl-C to stop", flush=True)
    try:
        # base_url="" as visdom's own main() passes for the default "/": with "/" every route
        # would start with "//" and the API would answer 500.
        start_server(port=args.port, hostname=HOST, base_url="", env_path=env_path + os.sep, bind_local=True)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"cannot serve on {HOST}:{args.port}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
