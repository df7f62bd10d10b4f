r"""Batch normalisation over the global batch of a data-parallel run, on CUDA and on the CPU.

On CUDA :class:`torch.nn.SyncBatchNorm` does it; PyTorch has no CPU kernels for it (``batch_norm_stats``), so on
the CPU (the gloo backend) :class:`AllReduceBatchNorm` computes the same statistics with two differentiable
all-reduces: with :math:`N=\sum_r n_r` values per channel over the ranks,

.. math::
    \mu = \frac1N\sum_r\sum_{i\in r} x_i,\qquad \sigma^2 = \frac1N\sum_r\sum_{i\in r}(x_i-\mu)^2,\qquad
    y = \gamma\,\frac{x-\mu}{\sqrt{\sigma^2+\epsilon}} + \beta,

the running statistics move by ``momentum`` towards :math:`\mu` and the unbiased :math:`\sigma^2 N/(N-1)`, as
:func:`torch.nn.functional.batch_norm` does for one process holding the whole batch. Gradients flow through both
reductions (the backward of a sum over the ranks sums the incoming gradients over the ranks), so the backward pass
is that of one process as well.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """The sum over the ranks, differentiable: the gradient of every rank's input is the sum of the ranks'
    incoming gradients (each rank's output is the same sum). The backward is this sum again, so second derivatives
    (MMKD's look-ahead) go through it too."""

    @staticmethod
    def forward(ctx: object, tensor: Tensor) -> Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad)


def all_reduce(tensor: Tensor) -> Tensor:
    """:class:`_AllReduceSum` of ``tensor``."""
    return _AllReduceSum.apply(tensor)


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A batch-norm layer whose training statistics are those of the global batch (any input rank ≥ 2)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        """Global-batch statistics in training mode across several ranks; plain batch norm otherwise."""
        self._check_input_dim(input)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() // input.shape[1]], dtype=input.dtype, device=input.device)
        sums = all_reduce(torch.cat([input.sum(dims), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centred = input - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / total
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), total.detach())
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, total: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        unbiased = var * total / (total - 1).clamp_min(1)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every batch-norm layer replaced by one over the global batch: :class:`torch.nn.SyncBatchNorm`
    on CUDA, :class:`AllReduceBatchNorm` elsewhere (parameters and running statistics carried over)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        converted = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                       module.track_running_stats, device=_device_of(module), dtype=_dtype_of(module))
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        if module.affine:
            converted.requires_grad_(module.weight.requires_grad)
        return converted
    for name, child in module.named_children():
        replaced = _convert(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def _device_of(module: nn.Module) -> torch.device | None:
    tensor = next(iter(module.state_dict().values()), None)
    return tensor.device if tensor is not None else None


def _dtype_of(module: nn.Module) -> torch.dtype | None:
    tensor = module.running_mean if module.running_mean is not None else module.weight
    return tensor.dtype if tensor is not None else None

