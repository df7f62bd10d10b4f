"""The command line, run as a user runs it (``python -m mkdlab ...`` in a subprocess) where the start of a fresh
interpreter matters (training, resuming, the demo, the environment), and in this process (``cli``: the same
``main``, the same exit code and streams, without 3 s of interpreter and torch start-up per call) for the errors
and listings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mkdlab.cli import main
from mkdlab.models import create
from mkdlab.teachers import TeacherPool

TINY = ["train.epochs=1", "train.max_steps=3", "data.batch_size=16"]


def mkdlab(*args: str, home: Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "MKDLAB_HOME": str(home), "CI": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdlab", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"mkdlab {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def cli(monkeypatch, capsys):
    """``mkdlab(...)`` in this process: ``main`` with the same environment and working directory; argparse's exit
    becomes the return code, as in a subprocess. An exception escaping ``main`` (a traceback) fails the test."""

    def run(*args: str, home: Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
        monkeypatch.setenv("MKDLAB_HOME", str(home))
        monkeypatch.setenv("CI", "1")
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as stop:
            code = stop.code
        out, err = capsys.readouterr()
        if check and code != 0:
            raise AssertionError(f"mkdlab {' '.join(args)} failed ({code}):\n{err}")
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


def test_train_then_eval_then_resume(tmp_path, home):
    out = mkdlab("train", "ce", *TINY, "output.dir=runs", home=home, cwd=tmp_path)
    assert "last top-1" in out.stdout
    run = tmp_path / "runs" / "ce-resnet8"
    assert (run / "last.pt").exists() and (run / "best_student.pt").exists()
    assert (run / "history.jsonl").exists() and (run / "history.csv").exists() and (run / "config.yaml").exists()
    metrics = json.loads(mkdlab("eval", "--run", str(run), home=home, cwd=tmp_path).stdout)
    assert 0 <= metrics["test_top1"] <= 100 and metrics["test_top5"] >= metrics["test_top1"]
    again = mkdlab("train", "ce", *TINY, "output.dir=runs", "--resume", home=home, cwd=tmp_path)
    assert "last top-1" in again.stdout
    assert len((run / "history.jsonl").read_text().splitlines()) == 1  # a finished run is not re-trained


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path, home, cli):
    result = mkdlab("train", "ce", "train.lr_rate=0.1", home=home, cwd=tmp_path, check=False)  # as a user meets it
    assert result.returncode == 2
    assert "train.lr_rate: unknown key" in result.stderr and "Traceback" not in result.stderr
    result = cli("train", "ce", "student=resnet9", home=home, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "choose one of" in result.stderr
    result = cli("demo", "--methods", "kd", "kdd", home=home, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "unknown method 'kdd'" in result.stderr


def test_missing_dataset_is_a_clear_error(tmp_path, home):
    env_data = tmp_path / "empty"
    env_data.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "mkdlab", "train", "ce", "data.dataset=cifar100", *TINY],
        cwd=tmp_path, env={**os.environ, "MKDLAB_HOME": str(home), "MKDLAB_DATA": str(env_data)},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "cifar-100-python" in result.stderr and "Traceback" not in result.stderr


def test_teachers_train_list_import(tmp_path, home, cli):
    mkdlab("teachers", "train", "demo", "teachers.arch=resnet8", "teachers.seeds=[0]", "teachers.epochs=1",
           "teachers.max_steps=3", "data.batch_size=64", "output.dir=runs", "--device", "cpu", home=home, cwd=tmp_path)
    listing = cli("list", "teachers", "--json", home=home, cwd=tmp_path)
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    shipped = sorted(TeacherPool(tmp_path / "nothing").entries())  # the teachers shipped in the package
    assert sorted(rows) == sorted([*shipped, "resnet8-fashion_mnist_mini-s0-e1-m3"])
    assert 0 <= rows["resnet8-fashion_mnist_mini-s0-e1-m3"]["top1"] <= 100
    torch.manual_seed(0)
    path = tmp_path / "resnet8_cifar.pth"
    torch.save({"model": create("resnet8").state_dict(), "epoch": 240}, path)
    cli("teachers", "import", str(path), "--arch", "resnet8", "--name", "r8", home=home, cwd=tmp_path)
    names = [row["name"] for row in json.loads(cli("list", "teachers", "--json", home=home, cwd=tmp_path).stdout)]
    assert sorted(names) == sorted(["r8", *shipped, "resnet8-fashion_mnist_mini-s0-e1-m3"])


def test_presets_are_listed_and_a_base_recipe_is_not_trained(tmp_path, home, cli):
    names = [row["preset"] for row in json.loads(cli("list", "presets", "--json", home=home, cwd=tmp_path).stdout)]
    assert "demo" in names and "mmkd_parity" in names and not [name for name in names if "/" in name]
    result = cli("train", "base/multi_teacher", home=home, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'base/multi_teacher' is a base recipe that presets extend" in result.stderr


def test_one_list_command_names_what_every_command_accepts(tmp_path, home, cli):
    methods = json.loads(cli("list", "methods", "--json", home=home, cwd=tmp_path).stdout)
    assert {"kd": "one", "ce": "none", "mmkd": "many"}.items() <= {m["method"]: m["teachers"] for m in methods}.items()
    models = [row["model"] for row in json.loads(cli("list", "models", "--json", home=home, cwd=tmp_path).stdout)]
    assert "resnet8" in models and "resnet32x4" in models
    assert "compare_fmnist" in cli("list", "studies", home=home, cwd=tmp_path).stdout.split()


@pytest.mark.parametrize(("args", "new"), [
    (["presets"], "list presets"),
    (["teachers", "list"], "list teachers"),
    (["teachers", "train", "--arch", "resnet20"], "teachers train demo teachers.arch="),
    (["reproduce", "compare_fmnist", "--methods", "kd"], "--columns"),
    (["reproduce", "--list"], "list studies"),
    (["bench", "--teacher", "resnet56"], "--teacher-arch"),
    (["bench", "--teachers", "3"], "--num-teachers"),
])
def test_old_spellings_fail_naming_the_new_one(tmp_path, home, args, new, cli):
    result = cli(*args, home=home, cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "was renamed" in result.stderr and new in result.stderr


def test_demo_on_a_tiny_budget(tmp_path, home):
    result = mkdlab("demo", "--profile", "smoke", "--out", "runs/demo", "--figures", "figs", "data.batch_size=16",
                    home=home, cwd=tmp_path)  # the default methods: one of each kind
    for needle in ("teacher", "ensemble", "ce (no teacher)", "kd (best teacher)", "ca_mkd (3 teachers)"):
        assert needle in result.stdout
    assert (tmp_path / "figs" / "demo_accuracy.png").stat().st_size > 10_000


def test_the_ray_executor_without_ray_says_how_to_install_it(monkeypatch, capsys):
    from mkdlab.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    assert main(["reproduce", "compare_fmnist_mini", "--executor", "ray"]) == 2
    assert 'mkdlab: error: --executor ray needs the ray package: pip install -e ".[ray]"' in capsys.readouterr().err
    assert main(["reproduce", "compare_fmnist_mini", "--address", "head:6379"]) == 2
    assert "add --executor ray" in capsys.readouterr().err
    assert main(["reproduce", "compare_fmnist_mini", "--executor", "ray", "--jobs", "2"]) == 2
    assert "--jobs packs runs on this machine" in capsys.readouterr().err


# -- every error a user can cause is one line (in-process: cheap) -------------------------------------------------
class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.startswith("mkdlab: error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err


def test_an_unknown_profile_names_the_valid_ones(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MKDLAB_PROFILE", "huge")
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2
    assert "MKDLAB_PROFILE='huge' is not a profile; choose one of: smoke, quick, full" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_a_checkpoint_holding_code_is_refused_saying_nothing_ran(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MKDLAB_HOME", str(tmp_path / "home"))
    marker, path = tmp_path / "pwned", tmp_path / "evil.pth"
    torch.save({"model": {"fc.weight": _Exploit(marker)}}, path)
    assert main(["teachers", "import", str(path), "--arch", "resnet8", "--dataset", "fashion_mnist_mini"]) == 2
    err = _one_line_error(capsys)
    assert "contains pickled code (it asks for posix.system)" in err and "nothing in it was run" in err
    assert "MKDLAB_DEBUG" not in err  # a refusal, not a bug
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    assert not marker.exists() and not (tmp_path / "home").exists()


@pytest.mark.parametrize(("argv", "needle"), [
    (["eval", "--run", "no/such/run"], "no/such/run/config.yaml not found"),
    (["teachers", "import", "no/such/file.pth", "--arch", "resnet8", "--dataset", "fashion_mnist_mini"],
     "no/such/file.pth"),
    (["teachers", "import", "x.pth", "--arch", "resnet9", "--dataset", "fashion_mnist_mini"], "unknown model"),
    (["bench", "--student", "resnet9", "--steps", "1"], "unknown model 'resnet9'"),
])
def test_value_and_file_errors_are_one_line(argv, needle, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MKDLAB_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert needle in _one_line_error(capsys)


def test_mkdlab_debug_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("MKDLAB_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["eval", "--run", str(tmp_path / "nowhere")])
