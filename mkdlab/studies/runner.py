"""Running a study: every (column, seed) run of a row, the teachers shared, finished runs skipped.

:func:`run_study` turns a row into :class:`RunJob` s, leaves out the finished ones (their ``result.json`` exists)
and hands the rest to an :class:`Executor`: the :class:`SequentialExecutor` runs them one after the other in this
process, the :class:`LocalPoolExecutor` on worker processes of this machine, and
:class:`~mkdlab.studies.ray_executor.RayExecutor` as tasks on a Ray cluster. Any object with the executor's one
``run`` method can stand in for them: it gets the pending jobs, trains the teachers they need, runs every job and
leaves its ``result.json``, and reports the failures together as a :class:`StudyRunError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from mkdlab.config import ExperimentConfig
from mkdlab.studies.records import RESULT_FILE, RunRecord, is_finished, read_record, record_from_history, write_record
from mkdlab.studies.spec import Column, StudyRow, run_config

if TYPE_CHECKING:
    from mkdlab.teachers import TeacherPool


class StudyRunError(RuntimeError):
    """Runs of a parallel study failed (the others finished; running the study again resumes the failed ones)."""


@dataclass(frozen=True)
class RunJob:
    """One (column, seed) run of a study and the experiment it trains."""

    column: Column
    seed: int
    config: ExperimentConfig

    @property
    def name(self) -> str:
        """How progress lines and failures name the run."""
        return f"{self.column.label} seed {self.seed}"


class Executor(Protocol):
    """Carries out the pending runs of a study."""

    def run(self, jobs: Sequence[RunJob], pool: TeacherPool | None, *, record_extras: bool, verbose: bool) -> None:
        """Train the teachers ``jobs`` need into ``pool`` (once each), then every job, leaving each run's
        ``result.json``; with ``record_extras`` each run also keeps its per-sample extras under ``extras/``.

        Interrupted runs resume from their checkpoints. Failures of jobs run side by side are raised together, after
        the others finished, as a :class:`StudyRunError`.
        """
        ...


def run_study(row: StudyRow, seeds: Sequence[int], *, out: str | Path = "runs/studies",
              labels: Sequence[str] | None = None, pool: TeacherPool | None = None, verbose: bool = True,
              record_extras: bool = False, jobs: int = 1, executor: Executor | None = None) -> list[RunRecord]:
    """Run every column (or ``labels``) with every seed; finished runs are read back, interrupted ones resumed.

    With ``record_extras`` each run also keeps its per-sample extras (teacher weights …) under ``extras/``.
    With ``jobs`` > 1 the runs go to that many worker processes (small models leave a GPU, or the cores of a CPU,
    mostly idle in one process): the missing teachers are trained first, in parallel, then every pending run;
    each worker gets ``cpu_count // jobs`` threads. ``executor`` replaces that choice (``jobs`` must then stay 1).
    Records come back in column × seed order either way.
    """
    from mkdlab.data import resolve_root

    if executor is not None and jobs != 1:
        raise ValueError(f"give jobs ({jobs}) or an executor, not both")
    resolve_root(row.base.data.dataset, row.base.data.root, download=row.base.data.download)  # fail before training
    columns = [row.column(label) for label in labels] if labels else row.columns
    runs = [RunJob(column, seed, run_config(row, column, seed, Path(out))) for column in columns for seed in seeds]
    pending = [job for job in runs if not is_finished(job.config.run_dir())]
    if pending:
        executor = executor or (LocalPoolExecutor(jobs) if jobs > 1 else SequentialExecutor())
        executor.run(pending, pool, record_extras=record_extras, verbose=verbose)
    return [read_record(job.config.run_dir() / RESULT_FILE) for job in runs]


def run_job(job: RunJob, pool: TeacherPool | None, record_extras: bool, verbose: bool) -> RunRecord:
    """Train one (column, seed) run (resuming it if interrupted) and write its ``result.json``."""
    from mkdlab.experiment import run_experiment

    result, _ = run_experiment(job.config, pool=pool, resume=True, verbose=verbose, record_extras=record_extras)
    record = record_from_history(job.column, job.seed, result.history)
    write_record(record, job.config.run_dir())
    return record


class SequentialExecutor:
    """The runs one after the other in this process; each trains the teachers it is the first to need.

    A failure stops the study at once and is raised as it is (a run interrupted by a signal stays resumable).
    """

    def run(self, jobs: Sequence[RunJob], pool: TeacherPool | None, *, record_extras: bool, verbose: bool) -> None:
        """Run ``jobs`` in order (see :meth:`Executor.run`)."""
        for job in jobs:
            run_job(job, pool, record_extras, verbose)


class LocalPoolExecutor:
    """The runs on ``workers`` processes of this machine, after the teachers they share (also in parallel).

    Each worker gets ``cpu_count // workers`` threads. A failed run does not stop the others; the failures are
    reported together at the end, and running the same study again resumes them.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a process pool needs at least one worker, got {workers}")
        self.workers = workers

    def run(self, jobs: Sequence[RunJob], pool: TeacherPool | None, *, record_extras: bool, verbose: bool) -> None:
        """Run ``jobs`` side by side (see :meth:`Executor.run`); progress lines are printed when ``verbose``."""
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // self.workers)
        failures: list[str] = []
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(threads,)) as processes:
            teachers = missing_teachers((job.config for job in jobs), pool)
            futures = {processes.submit(train_teacher, config, pool): f"teacher {name}"
                       for name, config in teachers.items()}
            collect(futures, failures, verbose)
            if failures:
                raise StudyRunError(f"training the teachers failed: {'; '.join(failures)}")
            futures = {processes.submit(run_job, job, pool, record_extras, False): job.name for job in jobs}
            collect(futures, failures, verbose)
        if failures:
            raise StudyRunError(f"{len(failures)} of {len(jobs)} runs failed: {'; '.join(failures)}. The others are "
                               "finished; run the same study again to resume the failed ones")


def missing_teachers(configs: Iterable[ExperimentConfig], pool: TeacherPool | None) -> dict[str, ExperimentConfig]:
    """Pool name → a single-teacher config, for each distinct teacher the runs need that the pool does not hold."""
    from mkdlab.teachers import TeacherPool, entry_name

    pool = pool or TeacherPool()
    wanted: dict[str, ExperimentConfig] = {}
    for config in configs:
        teachers = config.teachers
        if teachers is None or teachers.entries:
            continue
        for arch, seed in zip(teachers.architectures(), teachers.seeds, strict=True):
            name = entry_name(arch, config.data.dataset, seed, teachers.epochs, teachers.max_steps)
            if name not in pool and name not in wanted:
                wanted[name] = dataclasses.replace(config, teachers=dataclasses.replace(
                    teachers, arch=[arch], seeds=[seed]))
    return wanted


def train_teacher(config: ExperimentConfig, pool: TeacherPool | None) -> None:
    """Train the one teacher of ``config`` (one of :func:`missing_teachers`) into the pool, returning nothing (a
    worker process sends no model back to the parent)."""
    from mkdlab.experiment import load_teachers

    load_teachers(config, pool, verbose=False)


def collect(futures: Mapping[Any, str], failures: list[str], verbose: bool) -> None:
    """Wait for ``futures`` (future → what it runs), printing each outcome; failures are appended, not raised.

    Any :class:`concurrent.futures.Future` will do: a process pool's, or a Ray task's (``ObjectRef.future()``)."""
    from concurrent.futures import as_completed

    for done, future in enumerate(as_completed(futures), 1):
        what = futures[future]
        try:
            record = future.result()
        except Exception as err:  # noqa: BLE001 - one failed run must not stop the others
            failures.append(f"{what}: {type(err).__name__}: {err}")
            print(f"[{done}/{len(futures)}] {what} FAILED: {err}", flush=True)
            continue
        if verbose:
            detail = (f": best {record.best_top1:.2f} (epoch {record.best_epoch}), last {record.last_top1:.2f}, "
                      f"{record.train_time_s:.0f} s" if isinstance(record, RunRecord) else ": done")
            print(f"[{done}/{len(futures)}] {what}{detail}", flush=True)
