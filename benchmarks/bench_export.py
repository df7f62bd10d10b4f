"""File size and CPU latency per image of the exported student against a shipped teacher (issue #17).

For the best student of a run (``--run DIR``; without it a 3-step ce run of resnet8 on the mini Fashion-MNIST set
is trained into a temporary folder: latency does not depend on the weights) and for a shipped teacher (resnet20 by
default), each BN-folded by :func:`mkdlab.export.fold_batchnorms` and written by :func:`mkdlab.export.write_model`:

* file size of the ONNX and TorchScript files;
* median CPU latency per image at batch 1 and batch 64 of eager PyTorch (the unfolded model under
  ``torch.inference_mode``), onnxruntime (CPUExecutionProvider) and TorchScript (frozen trace), all on one thread.

    python benchmarks/bench_export.py [--run runs/ce-resnet8] [--teacher NAME] [--repeats 30] [--threads 1]

The machine's load average is printed with the table: on a shared machine the numbers vary with it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch
from torch import nn

from mkdlab.cli import main as mkdlab_main
from mkdlab.data import dataset_info
from mkdlab.evaluation import load_run_student
from mkdlab.export import fold_batchnorms, write_model
from mkdlab.teachers import TeacherPool

DEFAULT_TEACHER = "resnet20-fashion_mnist_mini-s0-e8"


def per_image_ms(run: Callable[[], object], batch: int, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls (after 3 warm-up calls), in ms per image."""
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch * 1e3


def measure(label: str, model: nn.Module, input_size: list[int], folder: Path, repeats: int,
            threads: int) -> list[str]:
    """Table rows (markdown) of one model: sizes and latencies of eager, onnxruntime and TorchScript."""
    model = model.float().eval()
    folded, _ = fold_batchnorms(copy.deepcopy(model), torch.zeros(2, *input_size))
    meta = {"input_size": input_size, "model": label}
    onnx_file = write_model(folded, "onnx", folder / f"{label}.onnx", meta).path
    ts_file = write_model(folded, "torchscript", folder / f"{label}.pt", meta).path
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(ts_file))
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for batch in (1, 64):
        x = torch.randn(batch, *input_size)
        x_np = x.numpy()
        with torch.inference_mode():
            eager = per_image_ms(lambda x=x: model(x), batch, repeats)
            script = per_image_ms(lambda x=x: scripted(x), batch, repeats)
        onnx_ms = per_image_ms(lambda x_np=x_np: session.run(None, {"images": x_np}), batch, repeats)
        rows.append(f"| {label} | {params / 1e6:.2f}M | {onnx_file.stat().st_size / 1e3:.0f} | "
                    f"{ts_file.stat().st_size / 1e3:.0f} | {batch} | {eager:.3f} | {onnx_ms:.3f} | {script:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="a finished run (default: a 3-step resnet8 run)")
    parser.add_argument("--teacher", default=DEFAULT_TEACHER, help=f"teacher-pool entry (default {DEFAULT_TEACHER})")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every runtime (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = args.run
        if run is None:
            assert mkdlab_main(["train", "ce", "train.epochs=1", "train.max_steps=3", "data.batch_size=16",
                                f"output.dir={folder / 'runs'}", "--device", "cpu"]) == 0
            run = folder / "runs" / "ce-resnet8"
        student, config = load_run_student(run)
        info = dataset_info(config.data.dataset)
        size = [info.in_channels, info.image_size, info.image_size]
        teacher = TeacherPool().load(args.teacher)
        rows = measure(f"student {config.student}", student, size, folder, args.repeats, args.threads)
        rows += measure(f"teacher {args.teacher.split('-')[0]}", teacher, size, folder, args.repeats, args.threads)
    print(f"CPU, {args.threads} thread(s), median of {args.repeats}; load average "
          f"{Path('/proc/loadavg').read_text().split()[:3] if Path('/proc/loadavg').exists() else 'n/a'}")
    print("| model | params | ONNX kB | TorchScript kB | batch | eager ms/img | onnxruntime ms/img "
          "| TorchScript ms/img |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
