"""Preset inheritance (``extends:``), the one merge of config mappings, and the profiles as overlays.

The golden file ``tests/data/resolved_presets.json`` holds every preset and demo profile as it resolved before
presets could extend each other; each must still resolve to exactly that (regenerate it on purpose with
``python tests/data/make_resolved_presets.py``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mkdlab.config import (
    apply_profile,
    available_presets,
    load_config,
    merge_config_mappings,
    read_preset,
    read_profile,
)
from mkdlab.experiment import lesson_config
from mkdlab.profiles import Profile
from mkdlab.typed import ConfigError

GOLDEN_SCRIPT = Path(__file__).parent / "data" / "make_resolved_presets.py"


def _golden_module():
    spec = importlib.util.spec_from_file_location("make_resolved_presets", GOLDEN_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOLDEN_MODULE = _golden_module()
GOLDEN = json.loads(GOLDEN_MODULE.GOLDEN.read_text())


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


# -- the golden file -------------------------------------------------------------------------------------------------
def test_the_golden_file_lists_every_shipped_preset_and_profile():
    assert sorted(GOLDEN["presets"]) == available_presets(), f"regenerate: {GOLDEN_MODULE.COMMAND}"
    assert sorted(GOLDEN["profiles"]) == sorted(p.value for p in Profile)


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_resolves_to_its_golden_config(name):
    assert GOLDEN_MODULE.resolved(load_config(name)) == GOLDEN["presets"][name]


@pytest.mark.parametrize("profile", list(Profile))
def test_every_demo_profile_resolves_to_its_golden_config(profile):
    assert GOLDEN_MODULE.resolved(lesson_config(profile)) == GOLDEN["profiles"][profile.value]


# -- merge_config_mappings -------------------------------------------------------------------------------------------
def test_mappings_merge_key_by_key_and_everything_else_is_replaced():
    base = {"train": {"lr": 0.05, "epochs": 30, "milestones": [150, 180, 210]}, "teachers": {"seeds": [0, 1, 2]}}
    update = {"train": {"lr": 0.1, "milestones": [15]}, "teachers": None, "name": "x"}
    merged = merge_config_mappings(base, update)
    assert merged == {"train": {"lr": 0.1, "epochs": 30, "milestones": [15]}, "teachers": None, "name": "x"}
    assert merge_config_mappings({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}
    assert merge_config_mappings({"a": {"b": 2}}, {"a": 1}) == {"a": 1}


def test_merge_changes_neither_input_and_shares_no_list_with_them():
    base, update = {"train": {"milestones": [150]}}, {"teachers": {"seeds": [0]}}
    merged = merge_config_mappings(base, update)
    merged["train"]["milestones"].append(1)
    merged["teachers"]["seeds"].append(1)
    assert base == {"train": {"milestones": [150]}} and update == {"teachers": {"seeds": [0]}}


# -- extends ---------------------------------------------------------------------------------------------------------
def test_a_chain_of_extends_applies_the_outermost_file_last(tmp_path):
    write(tmp_path, "a.yaml", "extends: kd\nname: a\ntrain: {lr: 0.2, epochs: 5}\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\nname: b\ntrain: {lr: 0.3}\nmethod: {params: {temperature: 2.0}}\n")
    config = load_config(tmp_path / "b.yaml")
    kd = load_config("kd")
    assert config.name == "b" and (config.train.lr, config.train.epochs) == (0.3, 5)
    assert config.method.name == "kd" and config.method.params == {"temperature": 2.0}
    assert (config.student, config.teachers, config.data) == (kd.student, kd.teachers, kd.data)


def test_a_list_of_bases_merges_left_to_right_under_the_file_itself(tmp_path):
    write(tmp_path, "left.yaml", "train: {lr: 0.2, epochs: 5}\nname: left\n")
    write(tmp_path, "right.yaml", "train: {lr: 0.3}\nname: right\n")
    write(tmp_path, "both.yaml", "extends: [ce, left.yaml, right.yaml]\nname: both\n")
    data = read_preset(tmp_path / "both.yaml")
    assert data["name"] == "both" and data["train"]["lr"] == 0.3 and data["train"]["epochs"] == 5
    assert data["method"] == {"name": "ce"} and "extends" not in data


def test_an_inherited_list_is_replaced_not_concatenated(tmp_path):
    write(tmp_path, "two.yaml", "extends: aver_kd\nteachers: {seeds: [5, 6]}\n")
    assert load_config(tmp_path / "two.yaml").teachers.seeds == [5, 6]
    assert load_config("aver_kd").teachers.seeds == [0, 1, 2]


def test_relative_extends_paths_are_relative_to_the_extending_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "shared.yaml", "train: {lr: 0.2}\n")
    write(tmp_path / "sub", "run.yaml", "extends: ../shared.yaml\n")
    monkeypatch.chdir(tmp_path / "sub")  # the working directory plays no part
    assert read_preset(tmp_path / "sub" / "run.yaml") == {"train": {"lr": 0.2}}


def test_a_cycle_is_an_error_that_names_it(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: [ce, a.yaml]\n")
    with pytest.raises(ConfigError, match=r"cycle, .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        read_preset(tmp_path / "a.yaml")
    write(tmp_path, "self.yaml", "extends: self.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle, .*self\.yaml -> .*self\.yaml"):
        load_config(tmp_path / "self.yaml")


def test_the_same_base_twice_is_not_a_cycle(tmp_path):
    write(tmp_path, "twice.yaml", "extends: [base/multi_teacher, mmkd]\n")
    assert read_preset(tmp_path / "twice.yaml") == read_preset("mmkd")


def test_an_unknown_base_names_the_file_and_the_presets(tmp_path):
    path = write(tmp_path, "bad.yaml", "extends: mmkx\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: extends 'mmkx': no preset or YAML file 'mmkx'; presets: aekd"):
        read_preset(path)
    write(tmp_path, "bad_path.yaml", "extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="extends 'missing.yaml': no preset or YAML file"):
        read_preset(tmp_path / "bad_path.yaml")


@pytest.mark.parametrize("value", ["[]", "3", "[kd, 3]", "{name: kd}", "''"])
def test_extends_must_be_names_or_paths(tmp_path, value):
    write(tmp_path, "odd.yaml", f"extends: {value}\n")
    if value == "[]":  # no base at all is allowed
        assert read_preset(tmp_path / "odd.yaml") == {}
        return
    with pytest.raises(ConfigError, match="extends must be a preset name, a relative YAML path or a list of them"):
        read_preset(tmp_path / "odd.yaml")


def test_read_preset_returns_the_inherited_method_params():
    assert read_preset("mmkd_parity")["method"] == {"name": "mmkd", "params": {"parity": True}}
    assert read_preset("de_mkd_ablation_c")["method"] == {"name": "de_mkd",
                                                          "params": {"dkd_warmup_epochs": 3, "use_features": False}}
    assert read_preset("de_mkd_ablation_a")["teachers"] is None  # a null section removes the inherited one


def test_an_override_beats_every_layer(tmp_path):
    write(tmp_path, "mine.yaml", "extends: jcs_mkd_parity\ntrain: {lr: 0.2}\nmethod: {params: {cat_weight: 300}}\n")
    config = load_config(tmp_path / "mine.yaml", ["train.lr=0.3", "train.nesterov=true",
                                                   "method.params.cat_weight=100"])
    assert (config.train.lr, config.train.nesterov, config.method.params["cat_weight"]) == (0.3, True, 100)
    smoke = lesson_config(Profile.SMOKE, overrides=["train.epochs=7", "teachers.max_steps=3"])
    assert (smoke.train.epochs, smoke.train.max_steps, smoke.teachers.max_steps) == (7, 8, 3)


# -- bases and profiles are not presets ------------------------------------------------------------------------------
def test_bases_and_profiles_are_readable_but_not_presets():
    names = available_presets()
    assert "demo" in names and not any("/" in name or name.startswith(("base", "profiles")) for name in names)
    assert read_preset("base/multi_teacher")["teachers"]["seeds"] == [0, 1, 2]
    with pytest.raises(ConfigError, match="'base/multi_teacher' is a base recipe that presets extend"):
        load_config("base/multi_teacher")
    with pytest.raises(ConfigError, match="'profiles/smoke' is a run profile's overlay"):
        load_config("profiles/smoke")


def test_profiles_are_overlays_merged_on_top():
    assert read_profile("quick") == {}
    assert read_profile(Profile.FULL) == {"teachers": {"epochs": 30}, "train": {"epochs": 30}}
    data = {"teachers": {"epochs": 4, "lr": 0.05}, "train": {"epochs": 4, "lr": 0.05}}
    assert apply_profile(data, "smoke") == {"teachers": {"epochs": 1, "max_steps": 8, "lr": 0.05},
                                            "train": {"epochs": 2, "max_steps": 8, "lr": 0.05}}
    assert apply_profile(data, Profile.QUICK) == data
    with pytest.raises(ConfigError, match="no profile 'fast'; profiles: smoke, quick, full"):
        read_profile("fast")
