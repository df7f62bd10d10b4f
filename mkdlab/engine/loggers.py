"""Training loggers: JSON-lines/CSV history, a compact console line, optional visdom plots.

Every logger is a :class:`~mkdlab.engine.logger_base.Logger`: the trainer calls it through the training hooks,
and it can be used on its own::

    loggers = make_loggers(run_dir, visdom=True, run_name="dtskd-resnet18")
    for logger in loggers:
        logger.log_step(step, {"loss": 1.23, "loss_kd": 0.4, "lr": 0.05})
        logger.log_epoch(epoch, {"epochs": 30, "train_loss": 1.2, "test_top1": 71.2, ...})
    for logger in loggers:
        logger.close()

Record keys understood by :class:`ConsoleLogger` (the first key present wins, missing ones are
skipped): ``epochs`` (total, else ``total_epochs``), ``train_loss``/``loss``,
``test_top1``/``val_top1``/``top1`` (else ``train_top1``), ``best_top1``/``best``, ``lr``,
``images_per_s``/``img_per_s``/``throughput``. Visdom plotting lives in
:mod:`mkdlab.engine.visdom_logger`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from mkdlab.config import TrainConfig
from mkdlab.engine.logger_base import Logger
from mkdlab.engine.visdom_logger import VisdomLogger, VisdomUnavailableWarning
from mkdlab.methods.base import TrainState
from mkdlab.storage import save_atomic_text

__all__ = [
    "ConsoleLogger",
    "JsonlLogger",
    "Logger",
    "VisdomLogger",
    "VisdomUnavailableWarning",
    "make_loggers",
    "progress",
]

T = TypeVar("T")

HISTORY_JSONL = "history.jsonl"
HISTORY_CSV = "history.csv"
STEPS_JSONL = "steps.jsonl"



def _json_default(value: Any) -> Any:
    """Serialise numpy / torch scalars (anything with ``.item()``); fall back to ``str``."""
    item = getattr(value, "item", None)
    if callable(item):
        with contextlib.suppress(Exception):
            return item()
    return str(value)


def _dumps(row: Mapping[str, Any]) -> str:
    return json.dumps(dict(row), default=_json_default, separators=(",", ":"))


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Read the JSON objects of ``path``; the flag tells whether the file needs repairing.

    A file needs repairing when a line does not parse (typically the last one, cut by a crash
    mid-write) or when it does not end with a newline, which would glue the next append to it.
    """
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8")
    rows: list[dict[str, Any]] = []
    damaged = bool(text) and not text.endswith("\n")
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            damaged = True
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            damaged = True
    return rows, damaged


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run directory (its ``history.jsonl``; a damaged last line is skipped)."""
    return _read_jsonl(Path(run_dir) / HISTORY_JSONL)[0]


def completes_the_run(record: Mapping[str, Any] | None, config: TrainConfig) -> bool:
    """Whether ``record``, a run's last ``history.jsonl`` row, ends it: the last epoch, or the step budget, done."""
    if not record:
        return False
    budget = config.max_steps
    return record["epoch"] >= config.epochs or (budget is not None and record["step"] >= budget)


def _csv_cell(value: Any) -> Any:
    """Scalars as they are, ``None`` as an empty cell, lists/dicts as JSON."""
    if value is None:
        return ""
    if isinstance(value, str | int | float):
        return value
    return json.dumps(value, default=_json_default)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class JsonlLogger(Logger):
    """Append-only run history on disk.

    * ``history.jsonl``: one JSON object per epoch (``{"epoch": e, **record}``), flushed at once;
    * ``history.csv``: rewritten after each epoch, columns are the union of all keys in order of
      first appearance (``epoch`` first);
    * ``steps.jsonl``: one JSON object per :meth:`log_step` call (``{"step": s, **metrics}``).

    Opening an existing run directory (resume) appends; only :meth:`truncate_after_epoch`
    removes history rows. Step numbers only grow within a run, so logging a step that is not
    greater than the last one in ``steps.jsonl`` (a run resumed from an older checkpoint re-logs
    steps) first drops the stale rows with ``step >=`` that step.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.history_path = self.run_dir / HISTORY_JSONL
        self.csv_path = self.run_dir / HISTORY_CSV
        self.steps_path = self.run_dir / STEPS_JSONL
        self._rows, damaged = _read_jsonl(self.history_path)
        if damaged:
            self._rewrite(self.history_path, self._rows)
        steps, damaged = _read_jsonl(self.steps_path)
        if damaged:
            self._rewrite(self.steps_path, steps)
        self._last_step = max((s for s in (_as_int(row.get("step")) for row in steps) if s is not None),
                              default=None)
        self._history_fh: IO[str] | None = None
        self._steps_fh: IO[str] | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        """A copy of the epoch rows written so far (including those of earlier sessions)."""
        return [dict(row) for row in self._rows]

    @staticmethod
    def _rewrite(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
        save_atomic_text("".join(_dumps(row) + "\n" for row in rows), path)

    def _append(self, which: str, row: Mapping[str, Any]) -> None:
        fh = getattr(self, which)
        if fh is None:
            path = self.history_path if which == "_history_fh" else self.steps_path
            fh = open(path, "a", encoding="utf-8")
            setattr(self, which, fh)
        fh.write(_dumps(row) + "\n")
        fh.flush()

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append ``{"step": step, **metrics}`` to ``steps.jsonl`` (dropping stale rows, see above)."""
        step = int(step)
        if self._last_step is not None and step <= self._last_step:
            self._drop_steps(lambda row: (_as_int(row.get("step")) or 0) < step)
        self._append("_steps_fh", {"step": step, **{k: v for k, v in metrics.items() if k != "step"}})
        self._last_step = step

    def _drop_steps(self, keep: Callable[[Mapping[str, Any]], bool]) -> None:
        """Rewrite ``steps.jsonl`` with the rows ``keep`` accepts."""
        if self._steps_fh is not None:
            self._steps_fh.close()
            self._steps_fh = None
        steps, _ = _read_jsonl(self.steps_path)
        kept = [row for row in steps if keep(row)]
        if len(kept) != len(steps):
            self._rewrite(self.steps_path, kept)
        self._last_step = max((s for s in (_as_int(row.get("step")) for row in kept) if s is not None),
                              default=None)

    def log_epoch(self, epoch: int, record: Mapping[str, float | int | str]) -> None:
        """Append ``{"epoch": epoch, **record}`` to ``history.jsonl`` and rewrite ``history.csv``."""
        row: dict[str, Any] = {"epoch": int(epoch), **{k: v for k, v in record.items() if k != "epoch"}}
        self._append("_history_fh", row)
        self._rows.append(json.loads(_dumps(row)))
        self.write_csv()

    def columns(self) -> list[str]:
        """Union of the keys of all rows, ``epoch`` first, then in order of first appearance."""
        seen: dict[str, None] = {"epoch": None}
        for row in self._rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def write_csv(self) -> None:
        """Rewrite ``history.csv`` from the in-memory rows."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(), restval="", lineterminator="\n")
        writer.writeheader()
        for row in self._rows:
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})
        save_atomic_text(buf.getvalue(), self.csv_path)

    def truncate_after_epoch(self, epoch: int, *, after_step: int | None = None) -> int:
        """Drop history rows with ``epoch > epoch`` (resuming from an older checkpoint).

        Step rows are dropped too when they carry an ``epoch`` key greater than ``epoch`` or,
        if ``after_step`` is given, a ``step`` greater than ``after_step``.
        Returns the number of history rows removed.
        """
        self._close_files()
        kept = [row for row in self._rows if (_as_int(row.get("epoch")) or 0) <= epoch]
        removed = len(self._rows) - len(kept)
        if removed:
            self._rewrite(self.history_path, kept)
        self._rows = kept
        self.write_csv()

        def keep_step(row: Mapping[str, Any]) -> bool:
            row_epoch = _as_int(row.get("epoch"))
            row_step = _as_int(row.get("step"))
            if row_epoch is not None and row_epoch > epoch:
                return False
            return not (after_step is not None and row_step is not None and row_step > after_step)

        self._drop_steps(keep_step)
        return removed

    def on_resume(self, state: TrainState) -> None:
        """A run resumed at ``state.epoch``: drop the history rows of later epochs (an older checkpoint)."""
        self.truncate_after_epoch(state.epoch)

    def _close_files(self) -> None:
        for name in ("_history_fh", "_steps_fh"):
            fh = getattr(self, name)
            if fh is not None:
                fh.close()
                setattr(self, name, None)

    def close(self) -> None:
        """Close the open files (a later write reopens them in append mode)."""
        self._close_files()


def _first(record: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = record.get(key)
        if value is not None and value != "":
            return value
    return None


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


class ConsoleLogger(Logger):
    """One compact line per epoch, e.g.
    ``epoch 3/30  loss 1.234  top1 71.2  best 71.9  lr 0.05  312 img/s``; nothing per step.

    ``stream=None`` means the current ``sys.stderr``. ``every`` prints only epochs divisible by
    it (plus the first and the last one when the total is known from ``record["epochs"]`` or
    ``total_epochs``).
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        every: int = 1,
        *,
        total_epochs: int | None = None,
        prefix: str = "",
    ) -> None:
        self.stream = stream
        self.every = max(1, int(every))
        self.total_epochs = total_epochs
        self.prefix = prefix

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Ignored: the console only gets epoch lines (use :func:`progress` for a bar)."""

    def format_epoch(self, epoch: int, record: Mapping[str, Any]) -> str:
        """The line printed for ``record``."""
        total = _first(record, "epochs", "total_epochs") or self.total_epochs
        parts = [f"epoch {epoch}/{total}" if total else f"epoch {epoch}"]
        top1 = ("top1", ("test_top1", "val_top1", "top1"), ".1f")
        if _first(record, *top1[1]) is None:
            top1 = ("train top1", ("train_top1",), ".1f")
        fields = (
            ("loss", ("train_loss", "loss"), ".3f"),
            top1,
            ("best", ("best_top1", "best"), ".1f"),
            ("lr", ("lr",), ".3g"),
        )
        for label, keys, spec in fields:
            value = _first(record, *keys)
            if value is not None:
                parts.append(f"{label} {_fmt(value, spec)}")
        speed = _first(record, "images_per_s", "img_per_s", "throughput")
        if speed is not None:
            parts.append(f"{_fmt(speed, '.0f')} img/s")
        line = "  ".join(parts)
        return f"[{self.prefix}] {line}" if self.prefix else line

    def log_epoch(self, epoch: int, record: Mapping[str, float | int | str]) -> None:
        """Print the epoch line if ``epoch`` is due."""
        total = _as_int(_first(record, "epochs", "total_epochs") or self.total_epochs)
        if self.every > 1 and epoch % self.every and epoch != 1 and epoch != total:
            return
        stream = self.stream if self.stream is not None else sys.stderr
        print(self.format_epoch(epoch, record), file=stream, flush=True)

    def close(self) -> None:
        """Nothing to release."""


def _ci() -> bool:
    value = os.environ.get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def progress(
    iterable: Iterable[T], *, total: int | None, desc: str, enabled: bool | None = None
) -> Iterable[T]:
    """A ``tqdm`` bar over ``iterable`` on stderr.

    With ``enabled=None`` the bar is shown only on an interactive terminal
    (``sys.stderr.isatty()``) and when the ``CI`` environment variable is unset (or ``0``/
    ``false``); ``enabled=True``/``False`` force it. The returned object is always a ``tqdm``
    instance, so ``set_postfix`` and friends work (as no-ops) when disabled.
    """
    from tqdm import tqdm

    if enabled is None:
        isatty = getattr(sys.stderr, "isatty", None)
        enabled = bool(isatty and isatty()) and not _ci()
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def make_loggers(
    run_dir: Path,
    *,
    console: bool = True,
    visdom: bool | str = False,
    visdom_port: int = 8097,
    run_name: str = "",
    total_epochs: int | None = None,
) -> list[Logger]:
    """The loggers of one run: :class:`JsonlLogger`, then :class:`ConsoleLogger` and
    :class:`VisdomLogger` if asked.

    ``visdom`` is ``True`` for ``http://127.0.0.1:visdom_port`` or a server URL (a port in the
    URL wins over ``visdom_port``). An unreachable server or a missing visdom package gives one
    warning and a visdom logger that does nothing. ``total_epochs`` is shown by the console
    line (``epoch 3/30``) when records carry no ``epochs`` key.
    """
    loggers: list[Logger] = [JsonlLogger(Path(run_dir))]
    if console:
        loggers.append(ConsoleLogger(total_epochs=total_epochs, prefix=run_name))
    if visdom:
        server = visdom if isinstance(visdom, str) else "http://127.0.0.1"
        loggers.append(VisdomLogger(server=server, port=visdom_port, run_name=run_name))
    return loggers
