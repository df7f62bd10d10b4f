"""pyproject.toml and environment.yml list the same packages with the same lower bounds; the wheel ships every data
file of the package."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: PyPI name -> conda-forge name, where they differ.
CONDA_NAMES = {"torch": "pytorch", "pyyaml": "pyyaml", "ray": "ray-default"}


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


def test_package_data_ships_every_data_file_of_the_package():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mkdlab"]
    package = ROOT / "mkdlab"
    shipped = {path for pattern in globs for path in package.glob(pattern)}
    data = {path for path in package.rglob("*") if path.is_file() and path.suffix not in (".py", ".pyc")
            and not any(part.startswith((".", "__pycache__")) for part in path.relative_to(package).parts)}
    assert {p.relative_to(package).as_posix() for p in data - shipped} == set()
    assert any(p.parent.name == "base" for p in data) and any(p.parent.name == "profiles" for p in data)
