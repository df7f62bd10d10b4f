"""Write ``tests/data/resolved_presets.json``: every preset and demo profile, fully resolved.

The golden file of ``tests/test_presets.py``. Each preset (``load_config(name)``) and each demo profile
(``lesson_config(profile)``) is stored as ``to_dict(config)`` with ``method.params`` replaced by the method's typed
``Params`` with every default filled in, so the test sees any change to what a preset means, not only to how it is
written. A change of a preset or a default made on purpose regenerates it with one command, from the repository
root::

    python tests/data/make_resolved_presets.py
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mkdlab.config import ExperimentConfig, available_presets, load_config
from mkdlab.experiment import lesson_config, method_params
from mkdlab.profiles import Profile
from mkdlab.typed import to_dict

GOLDEN = Path(__file__).with_name("resolved_presets.json")
COMMAND = "python tests/data/make_resolved_presets.py"


def resolved(config: ExperimentConfig) -> dict[str, Any]:
    """``config`` as JSON data, its method parameters resolved to the typed ``Params`` (tuples as lists)."""
    data = to_dict(config)
    data["method"]["params"] = dataclasses.asdict(method_params(config))
    return json.loads(json.dumps(data))


def resolve_all() -> dict[str, Any]:
    """Every shipped preset and every demo profile, resolved (what the golden file holds)."""
    return {
        "regenerate": COMMAND,
        "presets": {name: resolved(load_config(name)) for name in available_presets()},
        "profiles": {profile.value: resolved(lesson_config(profile)) for profile in Profile},
    }


def main() -> None:
    """Write the golden file."""
    GOLDEN.write_text(json.dumps(resolve_all(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
