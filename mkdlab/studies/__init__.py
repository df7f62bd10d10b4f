"""Studies: several methods × several seeds on the same teachers, student and data, and their report.

The study files beside these modules (``compare.yaml``, ``demkd.yaml``, ``mmkd.yaml``) hold paper tables and
comparisons as rows of (teachers, student) × method columns. A row is what ``python -m mkdlab reproduce <row>
--seeds 0 1 2`` runs: every column, every seed, the teachers taken from (or trained into) the teacher pool once and
shared by all runs. Each finished run leaves a ``result.json``, so running the same study again skips what is done
and resumes an interrupted run from its checkpoint.

* :mod:`~mkdlab.studies.spec`: the rows (:func:`load_study`) and the experiment of each run (:func:`run_config`);
* :mod:`~mkdlab.studies.records`: a run's :class:`RunRecord` and its ``result.json``;
* :mod:`~mkdlab.studies.runner`: :func:`run_study` and the executors that carry the runs out;
* :mod:`~mkdlab.studies.report`: mean ± std over seeds, gains, MMKD's ARI, the CSV and Markdown report;
* :mod:`~mkdlab.studies.figures`: the figures of a finished study (imported by name: it needs matplotlib).
"""

from mkdlab.studies.records import RunRecord, read_record, read_records, record_from_history
from mkdlab.studies.report import (
    ColumnSummary,
    ari_against_baselines,
    average_relative_improvement,
    markdown_table,
    mean_std,
    summarize,
    write_report,
)
from mkdlab.studies.runner import Executor, LocalPoolExecutor, RunJob, SequentialExecutor, StudyRunError, run_study
from mkdlab.studies.spec import Column, Reported, StudyRow, available_studies, load_study, run_config, run_dir

__all__ = [
    "Column",
    "ColumnSummary",
    "Executor",
    "LocalPoolExecutor",
    "Reported",
    "RunJob",
    "RunRecord",
    "SequentialExecutor",
    "StudyRow",
    "StudyRunError",
    "ari_against_baselines",
    "available_studies",
    "average_relative_improvement",
    "load_study",
    "markdown_table",
    "mean_std",
    "read_record",
    "read_records",
    "record_from_history",
    "run_config",
    "run_dir",
    "run_study",
    "summarize",
    "write_report",
]
