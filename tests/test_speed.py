"""The speed levers (issue #19): what ``auto`` resolves to, and that every path trains the same run.

On CPU: the sync-free NaN record equals the per-step check bit for bit for every method, the compiled step
(``aot_eager``) equals the eager one bit for bit for a method of each family (inductor to float32 rounding), the
fused SGD equals PyTorch's loop to float32 rounding, and the last finite state is what NonFiniteLossError says.
CUDA graphs are checked against eager steps on a GPU only (skipped here; ``benchmarks/bench_gpu.py`` runs them too).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mkdlab.config import TrainConfig, load_config
from mkdlab.data import DeviceLoader
from mkdlab.engine import NonFiniteLossError, Trainer
from mkdlab.engine.optimizer import FusedSGD
from mkdlab.engine.speed import SpeedOptions, resolve_speed
from mkdlab.methods import available_methods, get_method
from mkdlab.methods.ce import CrossEntropy
from mkdlab.models import create
from mkdlab.storage import load_safely
from mkdlab.typed import ConfigError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
N, BATCH, CLASSES = 16, 8, 10  # two steps per epoch
EPS32 = torch.finfo(torch.float32).eps  # 2**-23: one ulp of 1.0; a rounding is off by at most half of it, relatively
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch (dynamo's cache is per process and caps recompilations)."""
    yield
    if "torch._dynamo" in __import__("sys").modules:
        torch._dynamo.reset()


def build(name: str, device: torch.device = CPU) -> torch.nn.Module:
    """``name`` with a resnet8 student and 0, 1 or 2 resnet8 teachers on 1×32×32 images, 10 classes."""
    cls = get_method(name)
    count = {"none": 0, "one": 1, "many": 2}[cls.teachers_required]
    torch.manual_seed(0)
    teachers = [create("resnet8", num_classes=CLASSES, in_channels=1).to(device) for _ in range(count)]
    return cls(create("resnet8", num_classes=CLASSES, in_channels=1), teachers)


def loader(device: torch.device = CPU) -> DeviceLoader:
    gen = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (N, 1, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, CLASSES, (N,), generator=gen)
    return DeviceLoader(images, labels, BATCH, train=True, mean=[0.5], std=[0.25], device=device, seed=0,
                        drop_last=True, with_index=True)


def train(name: str, device: torch.device = CPU, **levers) -> Trainer:
    config = TrainConfig(epochs=2, lr=0.05, nesterov=True, milestones=[1], milestones_of=2, device=str(device),
                         log_every_steps=1, **levers)
    trainer = Trainer(build(name, device), loader(device), None, config)
    trainer.fit()
    return trainer


def state_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in trainer.method.state_dict().items()}


def history(trainer: Trainer) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "epoch_time_s")} for row in trainer.history]


# -- what auto means ----------------------------------------------------------------------------------------------
def test_auto_is_eager_on_cpu_and_every_lever_on_cuda():
    assert resolve_speed(TrainConfig(), CPU, None) == SpeedOptions()
    on_cuda = resolve_speed(TrainConfig(), CUDA, torch.bfloat16)
    assert on_cuda == SpeedOptions(compile=True, cuda_graphs=True, fused_optimizer=True, sync_free=True)
    fp16 = resolve_speed(TrainConfig(), CUDA, torch.float16)
    assert not fp16.cuda_graphs and fp16.sync_free and fp16.compile


def test_levers_can_be_forced_and_impossible_ones_are_refused():
    forced = resolve_speed(TrainConfig(compile="on", fused_optimizer="on", sync_free="on"), CPU, None)
    assert forced.compile and forced.fused_optimizer and forced.sync_free and not forced.cuda_graphs
    assert resolve_speed(TrainConfig(cuda_graphs="on"), CUDA, torch.bfloat16).sync_free  # graphs imply it
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_speed(TrainConfig(cuda_graphs="on"), CPU, None)
    with pytest.raises(ConfigError, match="fp16"):
        resolve_speed(TrainConfig(cuda_graphs="on"), CUDA, torch.float16)
    with pytest.raises(ConfigError, match="sync_free"):
        resolve_speed(TrainConfig(cuda_graphs="on", sync_free="off"), CUDA, torch.bfloat16)
    assert not resolve_speed(TrainConfig(sync_free="off"), CUDA, torch.bfloat16).cuda_graphs  # auto yields


def test_on_and_off_survive_yaml():
    """YAML 1.1 reads ``off`` as False: the command line ``train.compile=off`` must still mean "off"."""
    train_config = load_config(None, ["train.compile=off", "train.sync_free=on", "train.channels_last=off"]).train
    assert (train_config.compile, train_config.sync_free, train_config.channels_last) == ("off", "on", "off")


# -- sync-free NaN record ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", available_methods())
def test_the_sync_free_record_trains_the_same_run_as_the_per_step_check(name):
    checked, sync_free = train(name, sync_free="off"), train(name, sync_free="on")
    assert sync_free.watch is not None and checked.watch is None
    reference = state_of(checked)
    for key, value in state_of(sync_free).items():
        assert torch.equal(value, reference[key]), key
    assert history(sync_free) == history(checked)


class _NoHostReads:
    """Inside this context, reading a tensor's value into Python (``item``, ``bool``, ``float``, ``int``,
    ``tolist``) raises: the host would wait for the device there."""

    NAMES = ("item", "__bool__", "__float__", "__int__", "tolist")

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in self.NAMES}

        def refuse(self_tensor, *args, **kwargs):
            raise AssertionError("a host read of a tensor inside the step")

        for name in self.NAMES:
            setattr(torch.Tensor, name, refuse)

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)


#: methods whose own hooks read device values on the host: AMTML-KD's adapter step checks its gradients are
#: finite, MMKD's hard buffer reads its fill count and selects the misclassified samples.
HOST_READS_IN_HOOKS = {"amtml_kd", "mmkd"}


@pytest.mark.parametrize("name", sorted(set(available_methods()) - HOST_READS_IN_HOOKS))
def test_a_sync_free_step_reads_nothing_back_from_the_device(name, monkeypatch):
    config = TrainConfig(epochs=1, device="cpu", log_every_steps=0, sync_free="on")
    trainer = Trainer(build(name), loader(), None, config)
    step = trainer._step

    def guarded(batch):
        with _NoHostReads():
            return step(batch)

    monkeypatch.setattr(trainer, "_step", guarded)
    trainer.fit()
    assert trainer.state.global_step == N // BATCH


class ExplodingCE(CrossEntropy):
    """CE whose loss is NaN at the third step of the run."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def forward_train(self, batch, epoch):
        out = super().forward_train(batch, epoch)
        self.calls += 1
        if self.calls == 3:
            out.losses["ce"] = out.losses["ce"] * float("nan")
        return out


def exploding_trainer(run_dir, samples: int = N, **changes) -> Trainer:
    """ExplodingCE on ``samples`` random images (``samples / 8`` steps per epoch), sync-free, no log points."""
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (samples, 1, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, CLASSES, (samples,), generator=gen)
    train_loader = DeviceLoader(images, labels, BATCH, train=True, mean=[0.5], std=[0.25], drop_last=True)
    config = TrainConfig(**{"epochs": 3, "device": "cpu", "log_every_steps": 0, "sync_free": "on", **changes})
    return Trainer(ExplodingCE(create("resnet8", num_classes=CLASSES, in_channels=1)), train_loader, None, config,
                   run_dir=run_dir)


def test_sync_free_nan_keeps_the_last_checkpoint_as_the_last_finite_state(tmp_path):
    """NaN at step 3 (epoch 2, step 1), noticed at the end of epoch 2: the checkpoint of epoch 1 is kept."""
    trainer = exploding_trainer(tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"ce became non-finite at epoch 2, step 1 .*after epoch 1, step 2: "
                                                 r"the last checkpoint.*Lower train\.lr"):
        trainer.fit()
    assert trainer.state.global_step == 4  # the record was read at the end of epoch 2
    state = load_safely(tmp_path / "last.pt")
    assert state["global_step"] == 2 and state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_sync_free_nan_is_noticed_at_the_next_log_point(tmp_path):
    trainer = exploding_trainer(tmp_path, log_every_steps=1)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 1"):
        trainer.fit()
    assert trainer.state.global_step == 3


def test_sync_free_nan_is_noticed_before_a_checkpoint_is_written(tmp_path):
    trainer = exploding_trainer(tmp_path, samples=4 * BATCH, epochs=1, checkpoint_every_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3 .*after epoch 1, step 2: the last checkpoint"):
        trainer.fit()
    assert load_safely(tmp_path / "last.pt")["global_step"] == 2


def test_sync_free_nan_before_any_checkpoint_keeps_the_start(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3 .*after the start of the run"):
        exploding_trainer(tmp_path, samples=4 * BATCH, epochs=1).fit()
    assert load_safely(tmp_path / "last.pt")["global_step"] == 0
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1 \(lr [0-9.e-]+\)\. Lower"):  # nothing to save
        exploding_trainer(None).fit()


# -- fused SGD ----------------------------------------------------------------------------------------------------
def _sgd_steps(optimizer_cls, steps: int, late: int | None, **kwargs) -> tuple[list[torch.Tensor], float]:
    """Parameters after ``steps`` SGD steps on fixed random gradients (parameter ``late`` gets none in the first
    two), and the largest gradient."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(64, 3, 3, generator=gen).requires_grad_() for _ in range(3)]
    grads = [[torch.randn(64, 3, 3, generator=gen) for _ in params] for _ in range(steps)]
    optimizer = optimizer_cls(params, lr=LR, momentum=MU, nesterov=True, weight_decay=5e-4, **kwargs)
    for step, step_grads in enumerate(grads):
        for i, (param, grad) in enumerate(zip(params, step_grads, strict=True)):
            param.grad = None if i == late and step < 2 else grad.clone()
        optimizer.step()
    return [p.detach() for p in params], max(g.abs().max().item() for row in grads for g in row)


LR, MU = 0.1, 0.9


@pytest.mark.parametrize("late", [None, 2])
def test_fused_sgd_equals_the_loop_to_float32_rounding(late):
    """Fused and looped SGD do the same five operations per element and step (weight decay, momentum, Nesterov,
    lr, update) in another order and with fused multiply-adds; each rounds to half an ulp of its result, so a step
    differs by at most 5·eps·(|θ| + η(|d| + 2μ|m|)) with |m| ≤ max|d|/(1−μ). The gradients do not depend on θ
    here, so the differences of n steps add up (an error of m carries on, damped by μ: another 1/(1−μ))."""
    steps = 6
    loop, gmax = _sgd_steps(torch.optim.SGD, steps, late, foreach=False)
    fused, _ = _sgd_steps(FusedSGD, steps, late)
    for a, b in zip(loop, fused, strict=True):
        dmax = gmax + 5e-4 * a.abs().max()
        per_step = 5 * EPS32 * (a.abs().max() + LR * dmax * (1 + 2 * MU / (1 - MU)) / (1 - MU))
        assert (a - b).abs().max() <= steps * per_step


def test_a_fused_run_resumes_from_a_plain_checkpoint_and_keeps_its_own_implementation(tmp_path):
    config = TrainConfig(epochs=2, device="cpu", log_every_steps=0, fused_optimizer="off")
    Trainer(build("kd"), loader(), None, config, run_dir=tmp_path).fit()
    plain_state = load_safely(tmp_path / "last.pt")["optimizer"]
    fused = Trainer(build("kd"), loader(), None, dataclasses.replace(config, epochs=3, fused_optimizer="on"),
                    run_dir=tmp_path)
    assert isinstance(fused.optimizer, FusedSGD)
    fused.load_checkpoint(tmp_path / "last.pt")
    assert all(group["fused"] for group in fused.optimizer.param_groups)
    assert fused.optimizer.state_dict()["state"].keys() == plain_state["state"].keys()
    fused.fit(resume=True)
    assert fused.state.global_step == 3 * N // BATCH


# -- torch.compile ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ce", "de_mkd", "dtskd"])  # one model; K teachers with maps; a memory bank
def test_a_compiled_step_equals_the_eager_step(name):
    """aot_eager traces the same aten operations as eager mode, without fusing them: bit-identical on CPU, also
    across the epoch boundary (epoch-dependent factors) and with the methods' hooks in between."""
    eager = train(name)
    compiled = train(name, compile="on", compile_backend="aot_eager")
    assert compiled.runner.compiled is not None  # it did not fall back to eager
    reference = state_of(eager)
    for key, value in state_of(compiled).items():
        assert torch.equal(value, reference[key]), key
    assert history(compiled) == history(eager)


@pytest.mark.slow
def test_the_inductor_step_equals_the_eager_step_to_float32_rounding():
    """Inductor fuses and reorders the float32 arithmetic. Two orders of a sum of n terms differ by at most
    (n−1)·eps·Σ|terms| (Higham); resnet8's longest reductions are the 3·3·64 = 576 products of its last convolutions,
    and the relative error of each of its ~10 layers carries into the loss: at most 10·576·eps relative."""
    from mkdlab.methods.base import Batch

    batch = Batch(*next(iter(loader())))
    trainer = Trainer(build("ce"), loader(), None, TrainConfig(device="cpu", compile="on", channels_last="off"))
    _, loss = trainer.runner.forward(batch, 0)
    reference = build("ce").forward_train(batch, 0).total()
    assert trainer.runner.compiled is not None
    assert (loss - reference).abs() <= 10 * 576 * EPS32 * reference.abs()


def test_a_method_that_cannot_be_traced_runs_eagerly_with_a_warning():
    with pytest.warns(RuntimeWarning, match="'aekd' cannot be traced"):
        trainer = Trainer(build("aekd"), loader(), None, TrainConfig(epochs=1, device="cpu", compile="on"))
    assert trainer.runner.compiled is None


def test_a_tracing_error_switches_to_eager_for_good():
    import torch._dynamo.exc

    trainer = Trainer(build("ce"), loader(), None, TrainConfig(epochs=1, device="cpu", compile="on",
                                                                log_every_steps=0))

    def failing(batch, epoch):
        raise torch._dynamo.exc.InternalTorchDynamoError("BooleanAtom not allowed in this context.")

    trainer.runner.compiled = failing
    with pytest.warns(RuntimeWarning, match="tracing 'ce' failed"):
        trainer.fit()
    assert trainer.runner.compiled is None and trainer.state.global_step == N // BATCH


# -- CUDA graphs (GPU only) ---------------------------------------------------------------------------------------
BF16_U = 2.0 ** -8  # bf16 unit roundoff


@needs_cuda
@pytest.mark.parametrize("name", available_methods())
def test_graphed_steps_equal_eager_steps_to_bf16_rounding(name):
    """The replayed graph runs the kernels of the eager step; what may differ is cuDNN's choice of algorithm per
    call, so the losses of every step agree to a few bf16 roundings (4u relative)."""
    eager = train(name, CUDA, cuda_graphs="off", compile="off")
    graphed = train(name, CUDA, cuda_graphs="on", compile="off")
    assert graphed.runner.graph is not None and graphed.runner.graph.captures >= 1
    for row_e, row_g in zip(eager.history, graphed.history, strict=True):
        for key in row_e:
            if key.startswith("train_") and key != "train_top1":
                assert abs(row_g[key] - row_e[key]) <= 4 * BF16_U * max(abs(row_e[key]), 1e-3), (key, row_e, row_g)


@needs_cuda
def test_a_graphed_call_replays_on_new_inputs_and_recaptures_on_a_new_key():
    from mkdlab.cuda_graphs import GraphedCall

    weight = torch.ones(3, device=CUDA)
    call = GraphedCall("test", warmup=1)
    kinds, results = [], []
    for key, x in [(1, 1.0), (1, 2.0), (1, 3.0), (2, 4.0), (2, 5.0), (2, 6.0)]:
        scale = float(key)  # a Python value frozen at capture: named in the key
        out = call(key, lambda t, s=scale: (t * weight * s).sum(), [torch.full((3,), x, device=CUDA)])
        kinds.append(call.last_call)
        results.append(out.item())
    assert kinds == ["eager", "capture", "replay", "eager", "capture", "replay"]
    assert results == [3.0, 6.0, 9.0, 24.0, 30.0, 36.0] and call.captures == 2


@needs_cuda
def test_the_graphed_meta_gradient_equals_the_eager_one():
    """The meta gradient is a pure function of the meta batch and the current parameters: replayed, it runs the
    kernels of the eager call on the same values (float32: cuDNN's algorithm choice may differ, a few ulps)."""
    from mkdlab.methods.base import Batch
    from mkdlab.methods.mmkd_graph import graphed_meta_gradient

    method = build("mmkd", CUDA).to(CUDA)
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=0.05, momentum=0.9, nesterov=True)
    images, labels = (t.to(CUDA) for t in next(iter(loader()))[:2])
    output = method.forward_train(Batch(images, labels), 0)
    output.total().backward()
    optimizer.step()
    targets = output.carry["targets"]
    for _ in range(4):  # two warm-up calls, the capture, a replay
        graphed = graphed_meta_gradient(method, optimizer, images, labels, targets)
        eager = method.meta_gradient(optimizer, images, labels, targets)
        torch.testing.assert_close(graphed[0], eager[0], rtol=64 * EPS32, atol=0)
        for a, b in zip(graphed[1], eager[1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert method._meta_graph.captures == 1
