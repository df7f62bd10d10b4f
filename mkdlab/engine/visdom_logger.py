"""Optional visdom plots that can never stall training.

The server is probed with a hard deadline before the client is built, every HTTP request carries a timeout, and
plots are sent by a daemon thread through a bounded queue that drops points when full. Any failure turns the
logger into a no-op after a single :class:`VisdomUnavailableWarning`. A server with visdom's login is logged
into with ``VISDOM_USERNAME``/``VISDOM_PASSWORD``. ``<split>_<curve>`` keys (split in
train/test/val/best, curve in loss/top1/top5) are trace ``<split>`` of window ``<curve>``; other ``train_*``/
``test_*`` keys are traces of the ``loss terms`` window; any other numeric key gets its own window.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from mkdlab.engine.logger_base import Logger

__all__ = ["VisdomLogger", "VisdomUnavailableWarning", "credentials_from_env", "probe_http"]

_SPLITS = frozenset({"train", "test", "val"})
_CURVES = frozenset({"loss", "top1", "top5"})
_NOT_PLOTTED = frozenset({"epoch", "epochs", "step", "best_epoch"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class VisdomUnavailableWarning(RuntimeWarning):
    """Visdom cannot be used; training goes on with the file logger."""


def _split_server(server: str, port: int) -> tuple[str, str, int]:
    """``("http", host, port)`` from a server URL that may carry its own port."""
    parts = urlsplit(server if "://" in server else f"http://{server}")
    return parts.scheme or "http", parts.hostname or "127.0.0.1", parts.port or port


def probe_http(host: str, port: int, timeout: float, *, tls: bool = False) -> None:
    """Raise ``OSError`` unless an HTTP server at ``host:port`` answers ``GET /`` within ``timeout``.

    The whole exchange (connect, TLS handshake if ``tls``, send, read of the status line) shares
    one deadline, so a port that accepts connections but never answers costs at most ``timeout``
    seconds.
    """
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no HTTP answer within {timeout:g} s")
        return left

    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection((host, port), timeout=remaining()))
        sock.settimeout(remaining())
        if tls:
            sock = stack.enter_context(ssl.create_default_context().wrap_socket(sock, server_hostname=host))
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head and len(head) < 4096:
            sock.settimeout(remaining())
            chunk = sock.recv(1024)
            if not chunk:
                break
            head += chunk
    if not head.startswith(b"HTTP/"):
        raise ConnectionError("the server did not answer with HTTP")


class _DropVisdomChatter(logging.Filter):
    """Silence visdom's own set-up warnings (new session, no incoming socket)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def credentials_from_env() -> tuple[str, str] | None:
    """``(VISDOM_USERNAME, VISDOM_PASSWORD)`` when both are set and non-empty (visdom's login), else ``None``."""
    username, password = os.environ.get("VISDOM_USERNAME", ""), os.environ.get("VISDOM_PASSWORD", "")
    return (username, password) if username and password else None


def _credentials() -> dict[str, str]:
    found = credentials_from_env()
    return {"username": found[0], "password": found[1]} if found else {}


def _make_client(
    server: str, port: int, env: str, timeout: float, bypass_proxy: bool
) -> Any:
    """Build a ``visdom.Visdom`` whose every request is bounded by ``timeout``."""
    import requests
    import visdom

    class _BoundedVisdom(visdom.Visdom):  # type: ignore[misc]
        """``visdom.Visdom`` with a timeout on each request and no silent error swallowing."""

        def __init__(self, **kwargs: Any) -> None:
            self._request_timeout = timeout
            self._bounded_session: requests.Session | None = None
            super().__init__(**kwargs)

        @property
        def session(self) -> requests.Session:
            if self._bounded_session is None:
                sess = requests.Session()
                if bypass_proxy:
                    sess.trust_env = False
                if self.username:  # visdom's login: its client posts the SHA-256 of the password to "/"
                    reply = sess.post(f"{self.server}:{self.port}{self.base_url}", timeout=self._request_timeout,
                                      json={"username": self.username, "password": self.password})
                    if reply.status_code != requests.codes.ok:
                        raise ConnectionError(f"visdom refused the login of {self.username!r} "
                                              "(VISDOM_USERNAME/VISDOM_PASSWORD)")
                self._bounded_session = sess
            return self._bounded_session

        def _handle_post(self, url: str, data: Any = None) -> str:
            reply = self.session.post(url, data={} if data is None else data, timeout=self._request_timeout)
            reply.raise_for_status()
            return reply.text

        def win_exists(self, win: str, env: str | None = None) -> bool | None:
            answer = self._win_exists_wrap(win, env)
            return {"true": True, "false": False}.get(answer)

    vis_logger = logging.getLogger("visdom")
    quiet = _DropVisdomChatter()
    vis_logger.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            client = _BoundedVisdom(
                server=server,
                port=port,
                env=env,
                raise_exceptions=True,
                use_incoming_socket=False,
                **_credentials(),
            )
            check = getattr(client, "check_connection", None)
            if check is not None and not check(timeout_seconds=0):
                raise ConnectionError("the server does not look like a visdom server")
    finally:
        vis_logger.removeFilter(quiet)
    return client


_STOP = object()


class VisdomLogger(Logger):
    """Live line plots in a visdom server; a no-op when the server cannot be used.

    Windows (ids prefixed by ``run_name`` when given): per epoch, one window per metric, with
    ``train``/``test``/``val`` traces for prefixed keys (``loss``, ``top1``, ...) and ``lr``;
    per step, ``step/lr`` for ``lr`` and ``step/loss`` with one trace per other key (loss terms).
    See the module docstring for the epoch grouping.

    The constructor probes the server (at most ``timeout`` s; visdom is imported only if it
    answers). Points are queued (``queue_size``, dropped when full) and sent by a daemon thread
    whose requests each time out after ``timeout`` s; :meth:`close` waits at most
    ``flush_timeout`` s for the queue to drain.
    """

    def __init__(
        self,
        server: str = "http://127.0.0.1",
        port: int = 8097,
        env: str = "mkdlab",
        timeout: float = 1.0,
        run_name: str = "",
        *,
        queue_size: int = 1024,
        flush_timeout: float = 10.0,
    ) -> None:
        scheme, host, port = _split_server(server, port)
        self.url = f"{scheme}://{host}:{port}"
        self.env = env
        self.run_name = run_name
        self.timeout = float(timeout)
        self.flush_timeout = float(flush_timeout)
        self.enabled = False
        self.dropped = 0
        self._warned = False
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._thread: threading.Thread | None = None
        self._vis: Any = None
        try:
            probe_http(host, port, self.timeout, tls=scheme == "https")
            self._vis = _make_client(f"{scheme}://{host}", port, env, self.timeout, host in _LOOPBACK)
        except ImportError as exc:
            self._disable(f"the visdom package cannot be imported ({exc})", unreachable=False)
            return
        except Exception as exc:
            self._disable(f"{type(exc).__name__}: {exc}")
            return
        self.enabled = True
        self._thread = threading.Thread(target=self._worker, name="mkdlab-visdom", daemon=True)
        self._thread.start()

    def _disable(self, reason: str, *, unreachable: bool = True) -> None:
        """Turn every later call into a no-op, warning once."""
        with self._lock:
            self.enabled = False
            if self._warned:
                return
            self._warned = True
        what = f"visdom is unreachable at {self.url}" if unreachable else "visdom is unavailable"
        warnings.warn(
            f"{what} ({reason}); training continues with the file logger only. "
            f"Start a local server with `python -m mkdlab visdom --port {urlsplit(self.url).port}`.",
            VisdomUnavailableWarning,
            stacklevel=3,
        )

    def _window(self, name: str) -> str:
        return f"{self.run_name}/{name}" if self.run_name else name

    def _enqueue(self, x: float, xlabel: str, groups: dict[str, dict[str, float]]) -> None:
        if not self.enabled or not groups:
            return
        try:
            self._queue.put_nowait((x, xlabel, groups))
        except queue.Full:
            self.dropped += 1

    @staticmethod
    def _numeric(metrics: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
        for key, value in metrics.items():
            if key in _NOT_PLOTTED or isinstance(value, bool | str) or value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                yield key, number

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Queue step metrics: ``lr`` goes to ``step/lr``, the loss terms share ``step/loss``."""
        groups: dict[str, dict[str, float]] = {}
        for key, value in self._numeric(metrics):
            window = "step/lr" if key == "lr" else "step/loss"
            groups.setdefault(window, {})[key] = value
        self._enqueue(float(step), "step", groups)

    def log_epoch(self, epoch: int, record: Mapping[str, float | int | str]) -> None:
        """Queue epoch metrics, grouped into windows as described in the module docstring."""
        groups: dict[str, dict[str, float]] = {}
        for key, value in self._numeric(record):
            split, _, metric = key.partition("_")
            if metric in _CURVES and (split in _SPLITS or split == "best"):
                groups.setdefault(metric, {})[split] = value
            elif split in _SPLITS and metric:
                groups.setdefault("loss terms", {})[key] = value
            else:
                groups.setdefault(key, {})[key] = value
        self._enqueue(float(epoch), "epoch", groups)

    def _send(self, x: float, xlabel: str, groups: dict[str, dict[str, float]]) -> None:
        import numpy as np

        for name, traces in groups.items():
            title = f"{name} ({self.run_name})" if self.run_name else name
            opts = {"title": title, "xlabel": xlabel, "ylabel": name, "showlegend": True}
            if xlabel == "epoch":  # a line of one point is invisible: mark each epoch, so the first one shows
                opts.update(markers=True, markersize=6)
            for trace, value in traces.items():
                self._vis.line(
                    Y=np.array([value]),
                    X=np.array([x]),
                    win=self._window(name),
                    env=self.env,
                    name=trace,
                    update="append",
                    opts=dict(opts),
                )

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self.enabled:
                    try:
                        self._send(*item)
                    except Exception as exc:
                        self._disable(f"sending failed: {type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()

    def close(self) -> None:
        """Send what is queued (waiting at most ``flush_timeout`` s), then stop the sender."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=self.flush_timeout)
        except queue.Full:
            self.enabled = False
            return
        thread.join(self.flush_timeout)
        self.enabled = False
