r"""Int8 teachers for the CPU: post-training static quantisation, calibrated on a run's first batches.

An *approximation* of the teacher, not the teacher: every weight and activation is rounded to 8 bits,

.. math::
    q(x) = \mathrm{clamp}\big(\mathrm{round}(x/s) + z,\ 0,\ 255\big),\qquad \hat x = s\,(q(x) - z),

with per-output-channel scales for the convolution weights and one scale :math:`s` and zero point :math:`z` per
activation tensor, chosen from the values the observers saw during calibration (PyTorch's default qconfig for
the CPU's quantised engine, ``torch.backends.quantized.engine``: a histogram observer for activations, per-channel
min/max for weights). The convolutions then run as 8-bit × 8-bit → int32 products (fbgemm/oneDNN), which on an AVX2
CPU do about twice the multiply-adds per instruction of float32 FMAs: resnet56's logits at batch 64 on 2 threads
took 74.5 ms against the frozen float32 graph's 110.4 ms (``python benchmarks/bench_frozen.py --compilers eager
jit int8``, median of 5 interleaved rounds).

On this project's three shipped resnet20 teachers (Fashion-MNIST subset, 2,000 test images), each calibrated three
times (on the first batches of epochs 0, 1, 2), the int8 copies agree with the float32 teachers' top-1 on
97.05–98.75 % of the images, their accuracies differ from the float32 ones by −0.40 to +0.40 points, and the KL
divergence between the two at the KD temperature T = 4 is 0.0005–0.0073 per image (``python
benchmarks/bench_frozen.py --fidelity``; the worst of the nine is seed 2 calibrated on epoch 0). So
``teachers.compile: int8`` is opt-in (docs/methods.md §2): it changes the targets a student distils, slightly; the
exact compiled path is ``jit`` (:mod:`mkdlab.methods.frozen`).

Calibration costs nothing in fidelity: :func:`prepare_int8` returns the float32 model with observers attached (and,
as the model is in eval mode, each BatchNorm folded into its convolution, as the ``jit`` graph does), which computes
the model's outputs to float32 rounding, so the first :data:`CALIBRATION_BATCHES` training batches are distilled
from the teacher itself while the observers record them.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

#: how many batches the observers see before the teacher is converted to int8.
CALIBRATION_BATCHES = 8


def prepare_int8(model: nn.Module, example: Tensor) -> nn.Module:
    """A copy of ``model`` (logits) with quantisation observers inserted and BatchNorms folded; it computes
    ``model``'s outputs to float32 rounding."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    engine = torch.backends.quantized.engine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prepare_fx's notices about observers it does not need
        return prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping(engine), (example,))


def convert_int8(prepared: nn.Module) -> nn.Module:
    """The int8 model of a calibrated :func:`prepare_int8` copy (its outputs dequantised to float32)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared)


def freeze_int8(quantized: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    """``quantized`` traced on batches like ``example`` and frozen (packed int8 weights become constants)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.jit.freeze(torch.jit.trace(quantized, example, check_trace=False))
        graph(example)  # the profiling executor's first-run passes
    return graph
