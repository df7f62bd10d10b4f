"""The teacher pool: manifest, hash verification, load-if-present-else-train, external import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mkdlab.models import create
from mkdlab.teachers import TeacherPool, TeacherPoolError, entry_name


@pytest.fixture
def pool(tmp_path):
    return TeacherPool(tmp_path / "home", shipped=None)  # the home pool alone: the shipped teachers are tested apart


def add_resnet8(pool: TeacherPool, name: str = "t0", seed: int = 0):
    torch.manual_seed(seed)
    model = create("resnet8", num_classes=10, in_channels=1)
    entry = pool.add(name, model, arch="resnet8", dataset="fashion_mnist_mini", num_classes=10, in_channels=1,
                     seed=seed, epochs=3, top1=81.5)
    return model, entry


def test_add_writes_a_manifest_entry_with_the_file_hash(pool):
    model, entry = add_resnet8(pool)
    rows = json.loads(pool.manifest_path.read_text())
    assert [row["name"] for row in rows] == ["t0"]
    assert rows[0]["sha256"] == entry.sha256 and len(entry.sha256) == 64
    assert rows[0]["arch"] == "resnet8" and rows[0]["seed"] == 0 and rows[0]["epochs"] == 3
    assert rows[0]["top1"] == 81.5 and rows[0]["dataset"] == "fashion_mnist_mini"
    loaded = pool.load("t0")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    assert torch.equal(loaded(x), model(x))


def test_a_modified_file_fails_the_hash_check(pool):
    add_resnet8(pool)
    path = pool.root / "t0.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TeacherPoolError, match="sha256.*changed or is corrupt"):
        pool.load("t0")


def test_unknown_teacher_says_how_to_get_one(pool):
    with pytest.raises(TeacherPoolError, match="teachers train"):
        pool.load("nope")


def test_get_or_train_trains_once_then_loads(pool):
    calls = []

    def train(arch, dataset, seed, epochs):
        calls.append(seed)
        torch.manual_seed(seed)
        return create(arch, num_classes=10, in_channels=1), 50.0 + seed

    first = pool.get_or_train("resnet8", "fashion_mnist_mini", 1, 2, train, num_classes=10, in_channels=1)
    second = pool.get_or_train("resnet8", "fashion_mnist_mini", 1, 2, train, num_classes=10, in_channels=1)
    assert calls == [1]
    name = entry_name("resnet8", "fashion_mnist_mini", 1, 2)
    assert pool.entries()[name].top1 == 51.0
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_list_is_sorted_and_survives_several_adds(pool):
    add_resnet8(pool, "b", 1)
    add_resnet8(pool, "a", 2)
    assert [e.name for e in pool.list()] == ["a", "b"]


def test_import_external_repdistiller_checkpoint(pool, tmp_path):
    torch.manual_seed(3)
    source = create("resnet8", num_classes=100)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 240,
                "best_acc": torch.tensor(59.3)}, path)
    entry = pool.import_external(path, arch="resnet8", dataset="cifar100", name="r8-imported")
    assert entry.top1 == pytest.approx(59.3) and entry.epochs == 240 and entry.source.startswith("imported:")
    loaded = pool.load("r8-imported")
    source.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded(x), source(x))


def test_a_corrupt_manifest_is_reported(pool):
    add_resnet8(pool)
    pool.manifest_path.write_text("{not json")
    with pytest.raises(TeacherPoolError, match="not valid JSON"):
        pool.list()


def _add_many(home, names):
    pool = TeacherPool(home)
    for name in names:
        add_resnet8(pool, name)


def test_concurrent_writers_keep_every_entry(tmp_path):
    import multiprocessing

    home = tmp_path / "home"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_add_many, args=(home, [f"w{w}-{i}" for i in range(4)])) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert sorted(TeacherPool(home, shipped=None).entries()) == sorted(f"w{w}-{i}" for w in range(2) for i in range(4))


# -- the teachers shipped in the package ------------------------------------------------------------------------------
def test_the_shipped_teachers_enter_the_pool_verified_and_small():
    from mkdlab.teachers import SHIPPED_TEACHERS

    pool = TeacherPool(SHIPPED_TEACHERS.parent / "no-home-here")
    shipped = {name: e for name, e in pool.entries().items() if e.source == "shipped"}
    assert sorted(shipped) == [entry_name("resnet20", "fashion_mnist_mini", seed, 8) for seed in (0, 1, 2)]
    for name, entry in shipped.items():
        sidecar = json.loads((SHIPPED_TEACHERS / f"{name}.json").read_text())
        assert sidecar["entry"]["sha256"] == entry.sha256
        assert "train_shipped_teachers.py" in sidecar["recipe"]["command"]
        assert entry.top1 > 85 and (SHIPPED_TEACHERS / entry.file).stat().st_size < 2_000_000
        teacher = pool.load(name)
        assert all(p.dtype == torch.float32 for p in teacher.parameters())


def copy_of_the_shipped_teachers(tmp_path):
    import shutil

    from mkdlab.teachers import SHIPPED_TEACHERS

    return Path(shutil.copytree(SHIPPED_TEACHERS, tmp_path / "shipped"))


def test_a_changed_shipped_teacher_is_refused(tmp_path):
    shipped = copy_of_the_shipped_teachers(tmp_path)
    pool = TeacherPool(tmp_path / "home", shipped=shipped)
    name = entry_name("resnet20", "fashion_mnist_mini", 0, 8)
    path = shipped / pool.entries()[name].file
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TeacherPoolError, match="sha256.*changed or is corrupt"):
        pool.load(name)


def test_a_home_entry_overrides_a_shipped_one_and_stays_out_of_the_shipped_manifest(tmp_path):
    shipped = copy_of_the_shipped_teachers(tmp_path)
    pool = TeacherPool(tmp_path / "home", shipped=shipped)
    name = entry_name("resnet20", "fashion_mnist_mini", 1, 8)
    before = (shipped / "manifest.json").read_text()
    model = create("resnet20", num_classes=10, in_channels=1)
    pool.add(name, model, arch="resnet20", dataset="fashion_mnist_mini", num_classes=10, in_channels=1, seed=1,
             epochs=8, top1=12.5)
    assert pool.entries()[name].top1 == 12.5 and pool.path_of(name) == pool.root / f"{name}.pt"
    home_rows = json.loads(pool.manifest_path.read_text())
    assert [row["name"] for row in home_rows] == [name]  # the shipped entries are not copied into the home pool
    assert (shipped / "manifest.json").read_text() == before
    assert name in TeacherPool(tmp_path / "home", shipped=None) and len(TeacherPool(tmp_path / "home",
                                                                                   shipped=None).entries()) == 1


def test_the_shipped_manifest_is_rebuilt_from_the_sidecars(tmp_path):
    from mkdlab.teachers import write_shipped_manifest

    shipped = copy_of_the_shipped_teachers(tmp_path)
    expected = json.loads((shipped / "manifest.json").read_text())
    (shipped / "manifest.json").unlink()
    write_shipped_manifest(shipped)
    assert json.loads((shipped / "manifest.json").read_text()) == expected
