"""Plots draw what they are given (checked through the matplotlib objects, not by eye)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mkdlab import viz  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_accuracy_curves_mark_last_and_best():
    histories = {"a": [{"epoch": 1, "test_top1": 50.0}, {"epoch": 2, "test_top1": 70.0},
                       {"epoch": 3, "test_top1": 60.0}]}
    ax = viz.plot_accuracy_curves(histories)
    line, last, best = ax.lines
    assert list(line.get_ydata()) == [50.0, 70.0, 60.0]
    assert (last.get_xdata()[0], last.get_ydata()[0]) == (3, 60.0)
    assert (best.get_xdata()[0], best.get_ydata()[0]) == (2, 70.0)
    assert "last 60.00, best 70.00" in ax.get_legend().get_texts()[0].get_text()
    assert list(ax.get_xticks()) == [1, 2, 3]  # integer epochs only
    one_epoch = viz.plot_accuracy_curves({"b": [{"epoch": 1, "test_top1": 5.0}]})
    assert list(one_epoch.get_xticks()) == [1]


def test_class_heatmap_holds_the_per_class_means():
    weights = torch.tensor([[0.2, 0.8], [0.4, 0.6], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    ax = viz.plot_class_weight_heatmap(weights, labels, ["a", "b"])
    values = ax.collections[0].get_array().reshape(2, 2)
    torch.testing.assert_close(torch.as_tensor(values, dtype=torch.float32), torch.tensor([[0.3, 1.0], [0.7, 0.0]]))


@pytest.mark.parametrize("kind", ["violin", "hist"])
def test_weight_distributions_draw_one_group_per_teacher(kind):
    weights = torch.softmax(torch.randn(50, 3), 1)
    ax = viz.plot_weight_distributions(weights, teacher_names=["x", "y", "z"], kind=kind)
    labels = [t.get_text() for t in ax.get_xticklabels()] if kind == "violin" else [
        t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["x", "y", "z"]


def test_weight_vs_correctness_splits_by_right_and_wrong():
    weights = torch.softmax(torch.randn(40, 2), 1)
    correct = torch.rand(40, 2) > 0.5
    ax = viz.plot_weight_vs_correctness(weights, correct)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["right", "wrong"]


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="violin"):
        viz.plot_weight_distributions(torch.ones(2, 2) / 2, kind="pie")


def test_accuracy_curves_stay_distinct_beyond_ten_runs():
    histories = {f"run{i}": [{"epoch": 1, "test_top1": float(i)}, {"epoch": 2, "test_top1": float(i + 1)}]
                 for i in range(15)}
    ax = viz.plot_accuracy_curves(histories)
    curves = ax.lines[::3]  # each run draws its curve, then the last-epoch circle and the best-epoch star
    assert len(curves) == 15
    looks = {(matplotlib.colors.to_hex(line.get_color()), line.get_linestyle()) for line in curves}
    assert len(looks) == 15, "two of the 15 curves share colour and line style"
    assert len({matplotlib.colors.to_hex(line.get_color()) for line in curves}) == 15
    few = viz.plot_accuracy_curves(dict(list(histories.items())[:3]))
    assert {line.get_linestyle() for line in few.lines[::3]} == {"-"}
