"""Study rows: every shipped row loads and validates, paper numbers are recorded, each column's run gets the teachers
its method takes, and bad input says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

import mkdlab.studies.spec as spec_module
from mkdlab.studies import Reported, available_studies, load_study, run_config
from mkdlab.typed import ConfigError


@pytest.mark.parametrize("name", available_studies())
def test_every_study_row_loads_and_validates(name):
    row = load_study(name)
    assert row.columns and row.columns[0].label == "ce"
    assert set(row.paper) <= {c.label for c in row.columns} | {"teachers", "ensemble"}


def test_paper_rows_record_the_reported_numbers():
    row = load_study("mmkd_t1_resnet32x4_vgg8")
    assert row.paper["mmkd"] == Reported(75.66, 0.18) and row.paper["ensemble"] == Reported(81.16)
    assert row.base.data.dataset == "cifar100" and row.base.train.nesterov and row.base.train.epochs == 240
    mobile = load_study("mmkd_t1_resnet32x4_mobilenetv2")
    assert mobile.base.train.lr == 0.01 and mobile.base.teachers.arch == "resnet32x4"
    mixed = load_study("mmkd_t4_vgg11_vgg13_resnet32x4_vgg8")
    assert mixed.base.teachers.architectures() == ["vgg11", "vgg13", "resnet32x4"]
    ablation = load_study("demkd_ablation_resnet32x4_vgg8")
    assert [c.label for c in ablation.columns] == ["ce", "ablation_b", "ablation_c", "ablation_d"]
    assert ablation.column("ablation_c").method.params["dkd_warmup_epochs"] == 20


def test_run_configs_give_each_method_the_teachers_it_takes():
    row = load_study("compare_fmnist_mini")
    tmp = Path("out")
    kd = run_config(row, row.column("kd"), 2, tmp)
    assert kd.teachers.architectures() == ["resnet20"] and kd.teachers.seeds == [0]
    assert kd.train.seed == 2 and kd.run_dir() == tmp / "compare_fmnist_mini" / "kd" / "seed2"
    assert run_config(row, row.column("ce"), 0, tmp).teachers is None
    assert run_config(row, row.column("ca_mkd"), 0, tmp).teachers.seeds == [0, 1, 2]


def test_bad_study_input_says_what_to_do():
    with pytest.raises(ConfigError, match="no study row 'nope'; rows: .*compare_fmnist_mini"):
        load_study("nope")
    with pytest.raises(ConfigError, match="has no column 'dtskd2'"):
        load_study("compare_fmnist_mini").column("dtskd2")
    with pytest.raises(ConfigError, match="train.epoch: unknown key; valid keys of train: epochs"):
        load_study("compare_fmnist_mini", ["train.epoch=3"])


def test_reported_numbers_parse():
    assert Reported.parse("74.08±0.09") == Reported(74.08, 0.09)
    assert Reported.parse("74.08+-0.09") == Reported(74.08, 0.09)
    assert Reported.parse(81.16) == Reported(81.16) and str(Reported(1.0, 0.5)) == "1.00 ± 0.50"


def test_a_row_changes_a_shared_column_through_column_params(monkeypatch):
    assert load_study("compare_fmnist").column("mmkd").method.params["gram_size"] == 128
    assert load_study("compare_fmnist_mini").column("mmkd").method.params.get("gram_size", 64) == 64

    files = {"broken": ("test.yaml", {"recipe": {}, "columns": {"ce": {"preset": "ce"}},
                                      "rows": {"broken": {"student": "resnet8", "column_params": {"kd": {}}}}})}
    monkeypatch.setattr(spec_module, "_read_study_files", lambda: files)
    with pytest.raises(ConfigError, match="column_params for unknown column 'kd'"):
        load_study("broken")
