"""The lessons' shared setup: one call gives the teachers, the test batch and the teachers' logits on it."""

from __future__ import annotations

import torch

from mkdlab.experiment import lesson_config
from mkdlab.lesson import lesson_setup
from mkdlab.profiles import Profile
from mkdlab.teachers import TeacherPool


def test_lesson_setup_builds_the_teachers_and_their_logits_on_the_first_test_batch(tmp_path):
    base = lesson_config(Profile.SMOKE, device="cpu",
                         overrides=["teachers.max_steps=2", f"output.dir={tmp_path / 'runs'}"])
    pool = TeacherPool(tmp_path / "pool", shipped=None)
    lesson = lesson_setup(base, batch_size=32, pool=pool, verbose=False)
    assert lesson.pool is pool and len(lesson.teachers) == len(base.teachers.seeds) == 3
    assert lesson.names == ["seed 0", "seed 1", "seed 2"]
    assert len(lesson.classes) == lesson.info.num_classes == 10
    assert lesson.images.shape[0] == lesson.labels.shape[0] == 32
    assert lesson.teacher_logits.shape == (3, 32, 10)
    with torch.no_grad():
        expected = torch.stack([t.eval()(lesson.images) for t in lesson.teachers])
    torch.testing.assert_close(lesson.teacher_logits, expected)
    assert not lesson.teacher_logits.requires_grad
    first_images, _ = next(iter(lesson.test_loader))
    torch.testing.assert_close(first_images, lesson.images)  # the test loader serves the split in order
    again = lesson_setup(base, batch_size=32, pool=pool, verbose=False)  # the second call loads, trains nothing
    torch.testing.assert_close(again.teacher_logits, lesson.teacher_logits)
