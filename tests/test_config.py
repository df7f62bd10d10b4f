"""Typed configs: presets load, overrides apply, and every bad key, type or name is refused with the choices."""

from __future__ import annotations

import pytest

from mkdlab.config import ConfigError, ExperimentConfig, apply_overrides, available_presets, load_config
from mkdlab.experiment import load_experiment, method_params
from mkdlab.methods.kd import KDParams


def test_defaults_validate():
    config = load_experiment({"method": {"name": "ce"}})
    assert isinstance(config, ExperimentConfig)
    assert config.train.milestones == [150, 180, 210]


def test_overrides_reach_nested_keys_and_parse_yaml_values():
    config = load_config(
        {"method": {"name": "kd"}, "teachers": {"arch": "resnet20"}},
        ["train.lr=0.1", "train.nesterov=true", "method.params.temperature=2", "teachers.seeds=[3, 4]"],
    )
    assert config.train.lr == 0.1 and config.train.nesterov is True
    assert config.teachers is not None and config.teachers.seeds == [3, 4]
    assert config.method.params == {"temperature": 2}


def test_weight_decay_written_as_5e_4_is_a_float():
    config = load_config({"train": {"weight_decay": "5e-4"}})
    assert config.train.weight_decay == pytest.approx(5e-4)


@pytest.mark.parametrize(
    ("data", "overrides", "needle"),
    [
        ({"trian": {}}, [], "valid keys of ExperimentConfig: name, data, student"),
        ({"train": {"lr_rate": 0.1}}, [], "train.lr_rate: unknown key; valid keys of train: epochs"),
        ({}, ["train.epochs=ten"], "train.epochs: expected int, got str"),
        ({}, ["train.nesterov=1"], "train.nesterov: expected bool"),
        ({}, ["train.amp=fp8"], "choose one of: auto, bf16, fp16, off"),
        ({}, ["student=resnet9"], "student: unknown name 'resnet9'; choose one of:"),
        ({}, ["data.dataset=imagenet"], "data.dataset: unknown name 'imagenet'; choose one of:"),
        ({}, ["method.name=kdd"], "unknown method 'kdd'; choose one of:"),
        ({"method": {"name": "kd"}, "teachers": {}}, ["method.params.temprature=2"], "method.params.temprature"),
        ({"method": {"name": "kd"}}, [], "needs teachers"),
        ({}, ["train.lr"], "must look like key=value"),
    ],
)
def test_invalid_configs_name_the_problem_and_the_choices(data, overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_experiment(data, overrides)
    assert needle in str(info.value)


def test_method_params_are_typed():
    config = load_experiment({"method": {"name": "kd", "params": {"temperature": 3}}, "teachers": {"seeds": [0]}})
    params = method_params(config)
    assert params == KDParams(temperature=3.0)


def test_every_preset_loads_and_validates():
    assert available_presets(), "no presets shipped"
    for name in available_presets():
        load_experiment(name)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets: "):
        load_config("no_such_preset")


def test_apply_overrides_does_not_mutate_its_input():
    data = {"train": {"lr": 0.05}}
    apply_overrides(data, ["train.lr=0.1"])
    assert data == {"train": {"lr": 0.05}}
