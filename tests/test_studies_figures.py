"""The figures of a study are drawn from what its runs left on disk."""

from __future__ import annotations

from helpers import tiny_row_with_teachers

from mkdlab.studies import run_study


def test_study_figures_are_drawn_from_the_runs_on_disk(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from mkdlab.studies.figures import plot_teacher_weights, write_figures
    from mkdlab.teachers import TeacherPool

    row = tiny_row_with_teachers(["ce", "aver_kd", "ebkd"], steps=3)
    records = run_study(row, [0], out=tmp_path / "runs", pool=TeacherPool(tmp_path / "pool"), verbose=False,
                        record_extras=True)
    weights = plot_teacher_weights(row, tmp_path / "runs")
    assert [ax.get_title() for ax in weights.axes] == ["ebkd"]  # AVER-KD's fixed 1/K is left out
    paths = write_figures(row, records, tmp_path / "runs", tmp_path / "fig")
    assert [p.name for p in paths] == [f"tiny_{n}.png" for n in ("accuracy", "weights", "gradcam", "cost")]
    assert all(p.stat().st_size > 5_000 for p in paths)


def test_best_bars_start_at_zero_and_carry_their_values():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mkdlab.studies.figures import plot_best_bars
    from mkdlab.studies.report import ColumnSummary

    def column(label: str, best: float) -> ColumnSummary:
        return ColumnSummary(label, label, 1, best, float("nan"), best, float("nan"), 0.0, 0.0, 1.0, 1.0, None, None)

    _, ax = plt.subplots()
    plot_best_bars([column("ce", 88.4), column("kd", 89.8), column("dtskd", 86.2)], ax)
    assert ax.get_ylim()[0] == 0.0, "the bar axis must start at 0"
    assert ax.get_ylim()[1] >= 89.8
    assert [t.get_text() for t in ax.texts] == ["88.4", "89.8", "86.2"]
    plt.close("all")
