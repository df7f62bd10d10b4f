"""Study runs as Ray tasks on a local Ray instance (2 CPUs) started by the tests: the records equal the local
executor's, and a task whose worker dies in the middle of a run is retried and resumes from its checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import tiny_row_with_teachers

from mkdlab.studies import run_study
from mkdlab.studies.ray_executor import RayExecutor
from mkdlab.teachers import TeacherPool

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # a test sends nothing beyond this machine
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield
        ray.shutdown()


def outcome(records) -> list[tuple]:
    """What a run's record says about training (its wall time and speed left out)."""
    return [(r.label, r.method, r.seed, r.last_top1, r.best_top1, r.best_epoch, r.epochs) for r in records]


def in_one_thread(function, *args, **kwargs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task (one CPU) runs
    try:
        return function(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def test_a_tiny_row_on_ray_gives_the_records_of_the_local_executor(tmp_path, local_ray):
    row = tiny_row_with_teachers(["ce", "aver_kd"], steps=3)
    pool = TeacherPool(tmp_path / "pool", shipped=None)
    on_ray = run_study(row, [0, 1], out=tmp_path / "ray", pool=pool, executor=RayExecutor(), verbose=False)
    pool = TeacherPool(tmp_path / "pool", shipped=None)  # the manifest as the teacher tasks left it
    assert sorted(pool.entries()) == ["resnet8-fashion_mnist_mini-s0-e1-m3", "resnet8-fashion_mnist_mini-s1-e1-m3"]
    files = {name: entry.sha256 for name, entry in pool.entries().items()}
    local = in_one_thread(run_study, row, [0, 1], out=tmp_path / "local", pool=pool, verbose=False)
    assert outcome(on_ray) == outcome(local)
    assert {name: entry.sha256 for name, entry in pool.entries().items()} == files  # nothing retrained
    assert [(r.label, r.seed) for r in on_ray] == [("ce", 0), ("ce", 1), ("aver_kd", 0), ("aver_kd", 1)]
    assert (tmp_path / "ray" / "tiny" / "aver_kd" / "seed1" / "result.json").exists()


def test_a_task_whose_worker_dies_is_retried_and_resumes_from_its_checkpoint(tmp_path, local_ray):
    row = tiny_row_with_teachers(["ce"], steps=5)
    row.base = dataclasses.replace(row.base, teachers=None,
                                   train=dataclasses.replace(row.base.train, checkpoint_every_steps=2))
    marker, resumed = tmp_path / "killed", tmp_path / "resumed"

    def dies_after_step_3_once(job, pool, record_extras, verbose):
        """The run of a worker that dies (``os._exit``) after step 3 on its first attempt."""
        import os

        from mkdlab.engine.trainer import Trainer
        from mkdlab.studies.runner import run_job

        step, load = Trainer._step, Trainer.load_checkpoint

        def step_then_die(self, batch):
            output = step(self, batch)
            if self.state.global_step + 1 == 3 and not marker.exists():
                marker.touch()
                os._exit(1)
            return output

        def load_and_note(self, path):
            load(self, path)
            resumed.write_text(str(self.state.global_step))

        Trainer._step, Trainer.load_checkpoint = step_then_die, load_and_note
        return run_job(job, pool, record_extras, verbose)

    executor = RayExecutor(max_retries=1, job_function=dies_after_step_3_once)
    pool = TeacherPool(tmp_path / "pool", shipped=None)
    on_ray = run_study(row, [0], out=tmp_path / "ray", pool=pool, executor=executor, verbose=False)
    assert marker.exists() and resumed.read_text() == "2"  # the first attempt died; the retry resumed at step 2
    local = in_one_thread(run_study, row, [0], out=tmp_path / "local", pool=pool, verbose=False)
    assert outcome(on_ray) == outcome(local)
