"""Every registered method: one CPU training step changes the student and its adapters and nothing else."""

from __future__ import annotations

import pytest
import torch

from mkdlab.methods import available_methods, get_method
from mkdlab.methods.base import Batch
from mkdlab.models import create


def build(name: str):
    cls = get_method(name)
    count = {"none": 0, "one": 1, "many": 3}[cls.teachers_required]
    torch.manual_seed(0)
    teachers = [create("resnet8", num_classes=10, in_channels=1) for _ in range(count)]
    for teacher in teachers:
        teacher.train()  # the method must put them in eval mode
    method = cls(create("resnet8", num_classes=10, in_channels=1), teachers)
    method.bind_train_set(8)  # what the trainer tells it: per-sample memories cover the batch's indices 0..7
    return method, teachers


def batch() -> Batch:
    gen = torch.Generator().manual_seed(1)
    return Batch(torch.randn(8, 1, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen),
                 torch.arange(8))


@pytest.mark.parametrize("name", available_methods())
def test_one_step_trains_the_student_and_leaves_the_teachers_alone(name):
    method, teachers = build(name)
    method.train()
    assert all(not t.training for t in teachers)
    teacher_state = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    before = {id(p): p.detach().clone() for group in method.parameter_groups() for p in group["params"]}
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=0.1)
    output = method.forward_train(batch(), epoch=0)
    assert output.logits.shape == (8, 10)
    assert output.losses and all(v.ndim == 0 and torch.isfinite(v) for v in output.losses.values())
    optimizer.zero_grad()
    output.total().backward()
    optimizer.step()
    changed = [not torch.equal(p.detach(), before[id(p)]) for group in method.parameter_groups()
               for p in group["params"] if p.grad is not None]
    assert changed and all(changed)
    student_params = list(method.student.parameters())
    assert all(p.grad is not None for p in student_params), "gradient must reach every student parameter"
    for teacher, state in zip(teachers, teacher_state, strict=True):
        assert not teacher.training
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, state[key]), f"teacher {key} changed"
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    if "teacher_weights" in output.extras:
        weights = output.extras["teacher_weights"]
        assert weights.shape == (8, len(teachers))
        torch.testing.assert_close(weights.sum(1), torch.ones(8))
