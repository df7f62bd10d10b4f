"""Run profiles shared by the notebooks, the demo and the CLI.

A profile sets how much work a notebook does: ``smoke`` (seconds per cell, what CI runs), ``quick`` (minutes on a
laptop CPU) and ``full`` (the paper recipe; meant for a GPU). Notebooks read it in one parameters cell::

    PROFILE = mkdlab.current_profile()

``MKDLAB_PROFILE`` picks it; when unset, ``smoke`` is used under CI (``CI`` set) and ``quick`` otherwise.
"""

from __future__ import annotations

import os
from enum import Enum

from mkdlab.typed import ConfigError


class Profile(str, Enum):
    """How much compute a notebook or demo spends."""

    SMOKE = "smoke"
    QUICK = "quick"
    FULL = "full"


def current_profile(environ: dict[str, str] | None = None) -> Profile:
    """The profile chosen by ``MKDLAB_PROFILE`` (``smoke`` | ``quick`` | ``full``), ``smoke`` under CI."""
    env = os.environ if environ is None else environ
    name = env.get("MKDLAB_PROFILE", "").strip().lower()
    if not name:
        return Profile.SMOKE if env.get("CI") else Profile.QUICK
    try:
        return Profile(name)
    except ValueError:
        valid = ", ".join(p.value for p in Profile)
        raise ConfigError(f"MKDLAB_PROFILE={name!r} is not a profile; choose one of: {valid} (or unset it: "
                          f"quick, smoke under CI)") from None
