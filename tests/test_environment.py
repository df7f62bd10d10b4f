"""pyproject.toml and environment.yml list the same packages with the same lower bounds."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: PyPI name -> conda-forge name, where they differ.
CONDA_NAMES = {"torch": "pytorch", "pyyaml": "pyyaml"}


def parse(requirement: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", requirement)
    assert match, requirement
    return match.group(1).lower(), match.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = dict(parse(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"])
    pip_side = {CONDA_NAMES.get(name, name): spec for name, spec in pip_side.items()}
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_side = dict(parse(d) for d in environment["dependencies"] if isinstance(d, str))
    conda_side.pop("python")
    conda_side.pop("pip")
    assert conda_side == pip_side


def test_python_floor_agrees():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert f"python{project['requires-python']}" in environment["dependencies"]
