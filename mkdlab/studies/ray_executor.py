"""A study's runs as tasks on a Ray cluster (``reproduce ROW --executor ray [--address HOST:PORT]``).

:class:`RayExecutor` is an :class:`~mkdlab.studies.runner.Executor`: the missing teachers first, one task each, then
every pending (column, seed) run as a task with its resources — ``num_cpus`` and a *fraction* of a GPU, so that
small CIFAR runs share one (15 AVER-KD runs side by side on an H100 trained 4.9× faster than one, README). Each task
calls the same :func:`~mkdlab.studies.runner.run_job` as the local executors and leaves the same ``result.json`` in
the run folder, which must therefore be shared by the cluster's nodes (as the teacher pool, ``MKDLAB_HOME``). A task
whose worker is lost (a node going away, a process killed) is retried ``max_retries`` times and resumes from the
run's last checkpoint (``train.checkpoint_every_steps`` makes those frequent); a run that fails with an error is not
retried, and the failures are reported together, as the process pool does.

``ray`` is an optional extra (``pip install -e ".[ray]"``); without it the executor says how to install it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from mkdlab.studies.runner import RunJob, StudyRunError, collect, missing_teachers, run_job, train_teacher
from mkdlab.typed import ConfigError

if TYPE_CHECKING:
    from mkdlab.teachers import TeacherPool

#: the GPU share of one run when the cluster has GPUs and none was given: eight small runs per GPU.
DEFAULT_GPUS_PER_RUN = 0.125
INSTALL_HINT = 'pip install -e ".[ray]" (or pip install "ray>=2.9")'


def import_ray() -> Any:
    """The ``ray`` module; a :class:`~mkdlab.typed.ConfigError` that says how to install it when it is missing."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs the ray package: {INSTALL_HINT}") from None
    return ray


def call_with_threads(function: Callable[..., Any], threads: int, *args: Any) -> Any:
    """``function(*args)`` with ``threads`` intra-op threads (what a task runs: PyTorch would otherwise use every
    core of the node beside the other tasks)."""
    torch.set_num_threads(threads)
    return function(*args)


class RayExecutor:
    """The runs of a study as Ray tasks (see the module docstring).

    ``address``: the cluster to join (``HOST:PORT`` of its head, ``"auto"`` for the one this node belongs to);
    ``None`` joins the Ray instance already started in this process or starts a local one. ``cpus_per_run`` also
    sets each task's PyTorch threads; ``gpus_per_run`` (``None``: :data:`DEFAULT_GPUS_PER_RUN` when the cluster has
    GPUs, else 0) may be a fraction. ``job_function`` is what each run's task calls (``run_job``; tests wrap it).
    """

    def __init__(self, address: str | None = None, *, cpus_per_run: float = 1.0, gpus_per_run: float | None = None,
                 max_retries: int = 3, job_function: Callable[..., Any] = run_job) -> None:
        if cpus_per_run <= 0 or (gpus_per_run is not None and gpus_per_run < 0) or max_retries < 0:
            raise ConfigError(f"Ray resources: need cpus_per_run > 0, gpus_per_run >= 0 and max_retries >= 0, got "
                              f"{cpus_per_run}, {gpus_per_run}, {max_retries}")
        self.ray = import_ray()
        self.address = address
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.max_retries = max_retries
        self.job_function = job_function

    def run(self, jobs: Sequence[RunJob], pool: TeacherPool | None, *, record_extras: bool, verbose: bool) -> None:
        """Train the missing teachers, then every job, as Ray tasks (see
        :meth:`~mkdlab.studies.runner.Executor.run`); progress lines are printed when ``verbose``."""
        from mkdlab.teachers import TeacherPool

        ray = self.ray
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, log_to_driver=verbose)
        try:
            pool = pool or TeacherPool()  # the driver's pool: the workers must see the same folder
            task = ray.remote(call_with_threads).options(**self.resources())
            failures: list[str] = []
            teachers = missing_teachers((job.config for job in jobs), pool)
            collect(self._submit(task, {f"teacher {name}": (train_teacher, config, pool)
                                        for name, config in teachers.items()}), failures, verbose)
            if failures:
                raise StudyRunError(f"training the teachers failed: {'; '.join(failures)}")
            collect(self._submit(task, {job.name: (self.job_function, job, pool, record_extras, False)
                                        for job in jobs}), failures, verbose)
        finally:
            if started:
                ray.shutdown()
        if failures:
            raise StudyRunError(f"{len(failures)} of {len(jobs)} runs failed: {'; '.join(failures)}. The others are "
                               "finished; run the same study again to resume the failed ones")

    def resources(self) -> dict[str, Any]:
        """The options of every task: CPUs, the GPU share and the retries after a lost worker."""
        gpus = self.gpus_per_run
        if gpus is None:
            gpus = DEFAULT_GPUS_PER_RUN if self.ray.cluster_resources().get("GPU", 0) else 0.0
        return {"num_cpus": self.cpus_per_run, "num_gpus": gpus, "max_retries": self.max_retries}

    def _submit(self, task: Any, calls: Mapping[str, tuple[Any, ...]]) -> dict[Any, str]:
        """Start one task per call (name → function and arguments); their futures → the names."""
        threads = max(1, int(self.cpus_per_run))
        return {task.remote(function, threads, *args).future(): name for name, (function, *args) in calls.items()}
