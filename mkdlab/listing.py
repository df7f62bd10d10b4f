"""What ``python -m mkdlab list presets|studies|methods|models|teachers`` prints: rows (for ``--json``) and an
aligned text table of each kind of name a command accepts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any


def listing(what: str) -> tuple[list[dict[str, Any]], str]:
    """The rows of ``what`` and the same as text (one line per name)."""
    rows = {"presets": _presets, "studies": _studies, "methods": _methods, "models": _models,
            "teachers": _teachers}[what]()
    if what == "teachers" and not rows:
        from mkdlab.teachers import TeacherPool

        return rows, (f"no teachers in {TeacherPool().root} yet; train some with "
                      f"`python -m mkdlab teachers train demo`")
    return rows, _table(rows)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_cell(r[k])) for r in rows)) for k in keys}
    lines = ["  ".join(f"{k:{widths[k]}s}" for k in keys)]
    lines += ["  ".join(f"{_cell(r[k]):{widths[k]}s}" for k in keys) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _presets() -> list[dict[str, Any]]:
    from mkdlab.config import available_presets, read_preset

    rows = []
    for name in available_presets():
        data = read_preset(name)
        rows.append({"preset": name, "method": (data.get("method") or {}).get("name", "ce"),
                     "student": data.get("student", ""), "dataset": (data.get("data") or {}).get("dataset", "")})
    return rows


def _studies() -> list[dict[str, Any]]:
    from mkdlab.studies import available_studies

    return [{"study": name} for name in available_studies()]


def _methods() -> list[dict[str, Any]]:
    from mkdlab.methods.registry import available_methods, get_method

    return [{"method": name, "teachers": get_method(name).teachers_required,
             "summary": (get_method(name).__doc__ or "").strip().splitlines()[0]} for name in available_methods()]


def _models() -> list[dict[str, Any]]:
    from mkdlab.models import available_models

    return [{"model": name} for name in available_models()]


def _teachers() -> list[dict[str, Any]]:
    from mkdlab.teachers import TeacherPool

    fields = ("name", "arch", "dataset", "seed", "epochs", "top1", "source")
    return [{k: asdict(entry)[k] for k in fields} for entry in TeacherPool().list()]
