r"""Hypergradients through a few virtual SGD steps (bi-level optimisation, used by MMKD; docs/methods.md §5.3).

A *look-ahead* takes :math:`M` SGD steps from the parameters :math:`\theta_0` (and momentum buffers :math:`m_0`)
on inner losses :math:`L_i(\theta;\phi)` that depend on hyper-parameters :math:`\phi` (MMKD: its weight networks),
then evaluates an outer loss :math:`E(\theta_M)`. The hypergradient is the total derivative
:math:`\mathrm dE/\mathrm d\phi`. Everything here is functional: parameters are plain tensors, nothing of the real
model or optimiser is touched, so the look-ahead is virtual by construction.

* :func:`sgd_update` reproduces one step of :class:`torch.optim.SGD` (weight decay, momentum with the first-step
  buffer, dampening, Nesterov, the group's current lr) with differentiable out-of-place operations;
* :func:`look_ahead` runs the :math:`M` steps, keeping the autograd graph (``differentiable=True``) or storing the
  states for a reverse recursion;
* :func:`unrolled_hypergradient` differentiates the kept graph: exact for plain and Nesterov momentum alike;
* :func:`reverse_hg_hypergradient` is the Reverse-HG recursion of Franceschi et al. (ICML 2017) as the official
  MMKD code runs it (heavy-ball momentum assumed): exact without Nesterov, approximate with it (docs/methods.md §7 #8);
* :class:`TwiceDifferentiableBatchNorm` makes the second-order passes through training-mode batch norm cheaper.

An inner step is given as a :data:`GradFn`: ``grad_fn(params, create_graph)`` returns the inner gradient
:math:`\nabla_\theta L_i` (``None`` for a parameter the loss does not reach; SGD then skips it), built from
``params`` and from :math:`\phi` through the caller's closure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

#: ``grad_fn(params, create_graph) -> gradients`` of one inner step (``None`` where the loss does not reach).
GradFn = Callable[[list[Tensor], bool], list[Tensor | None]]


@dataclass(frozen=True)
class SGDSettings:
    """The hyper-parameters of one :class:`torch.optim.SGD` parameter group, at the current step."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    @classmethod
    def from_group(cls, group: dict[str, Any]) -> SGDSettings:
        """The settings of an optimiser's ``param_groups`` entry (its current ``lr``)."""
        if group.get("maximize", False):
            raise ValueError("look-ahead of a maximising SGD is not supported")
        return cls(float(group["lr"]), group["momentum"], group["dampening"], group["weight_decay"],
                   group["nesterov"])


def sgd_update(param: Tensor, grad: Tensor | None, buf: Tensor | None,
               s: SGDSettings) -> tuple[Tensor, Tensor | None]:
    r"""One :class:`torch.optim.SGD` step of one parameter, out of place and differentiable.

    .. math::
        d = g + \lambda\theta,\qquad
        m' = \begin{cases} d & \text{no buffer yet}\\ \mu m + (1-\delta)\,d & \text{otherwise}\end{cases},\qquad
        \theta' = \theta - \eta\,\begin{cases} d + \mu m' & \text{Nesterov}\\ m' & \text{else}\end{cases}

    (no momentum: :math:`\theta'=\theta-\eta d`, no buffer). A parameter without gradient is left as it is, like
    :class:`torch.optim.SGD` does. The same kernels as ``_single_tensor_sgd`` are used, so the values are
    bit-identical to the optimiser's on CPU. Returns the new parameter and momentum buffer.
    """
    if grad is None:
        return param, buf
    d = grad.add(param, alpha=s.weight_decay) if s.weight_decay != 0 else grad
    if s.momentum != 0:
        buf = d if buf is None else buf.mul(s.momentum).add(d, alpha=1 - s.dampening)
        d = d.add(buf, alpha=s.momentum) if s.nesterov else buf
    return param.add(d, alpha=-s.lr), buf


@dataclass
class Trajectory:
    """The states :math:`(\\theta_i, m_i)`, :math:`i = 0..M`, of a look-ahead and its outer loss :math:`E(\\theta_M)`.

    With ``differentiable=True`` the states carry the autograd graph back to :math:`\\theta_0` and :math:`\\phi`;
    otherwise every state is a detached leaf.
    """

    params: list[list[Tensor]]
    buffers: list[list[Tensor | None]]
    outer_loss: Tensor


@dataclass
class MetaLookahead:
    """One virtual look-ahead of a meta update: the trajectory, its inner-gradient functions and SGD settings."""

    trajectory: Trajectory
    grad_fns: list[GradFn]
    settings: list[SGDSettings]


def look_ahead(grad_fns: Sequence[GradFn], outer: Callable[[list[Tensor]], Tensor], params: Sequence[Tensor],
               buffers: Sequence[Tensor | None], settings: Sequence[SGDSettings], *,
               differentiable: bool) -> Trajectory:
    """Run one SGD step per ``grad_fns`` entry from ``params``/``buffers`` (copies: the inputs are not changed),
    then the ``outer`` loss. ``settings[j]`` are the SGD settings of parameter ``j``."""
    theta = [p.detach().requires_grad_() for p in params]
    moms = [None if b is None else b.detach() for b in buffers]
    states, moments = [theta], [moms]
    for grad_fn in grad_fns:
        grads = grad_fn(theta, differentiable)
        stepped = [sgd_update(p, g, b, s) for p, g, b, s in zip(theta, grads, moms, settings, strict=True)]
        theta, moms = [p for p, _ in stepped], [b for _, b in stepped]
        if not differentiable:
            theta = [p.detach().requires_grad_() for p in theta]
            moms = [None if b is None else b.detach() for b in moms]
        states.append(theta)
        moments.append(moms)
    return Trajectory(states, moments, outer(theta))


def _zeros_for_none(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like, strict=True)]


def unrolled_hypergradient(trajectory: Trajectory, hparams: Sequence[Tensor]) -> list[Tensor]:
    r""":math:`\mathrm dE/\mathrm d\phi` by back-propagating through a differentiable :func:`look_ahead`.

    Exact for any SGD variant that :func:`sgd_update` reproduces, because the graph *is* the update rule.
    """
    grads = torch.autograd.grad(trajectory.outer_loss, list(hparams), allow_unused=True)
    return _zeros_for_none(grads, hparams)


def reverse_hg_hypergradient(trajectory: Trajectory, grad_fns: Sequence[GradFn], settings: Sequence[SGDSettings],
                             hparams: Sequence[Tensor]) -> list[Tensor]:
    r"""The official MMKD Reverse-HG recursion (Franceschi et al. 2017) over a non-differentiable
    :func:`look_ahead` (docs/methods.md §5.3, item 3.4).

    With adjoints :math:`a_0=\partial E/\partial\theta_M`, :math:`a_1=0`, for each step :math:`i` in reverse order:
    recompute :math:`g=\nabla_\theta L_i(\theta_i)` with its graph, form
    :math:`X=\langle g,\,-\eta a_0+a_1\rangle`, accumulate :math:`\partial X/\partial\phi` into the hypergradient,
    and with :math:`h=\partial X/\partial\theta_i`

    .. math::
        a_0 \leftarrow (1-\eta\lambda)\,a_0 + \lambda a_1 + h,\qquad a_1 \leftarrow \mu\,(a_1 - \eta a_0^{\text{old}})

    This is the exact adjoint of heavy-ball SGD (:math:`m'=\mu m+d`, :math:`\theta'=\theta-\eta m'`, no
    dampening); with Nesterov steps in the trajectory it is an approximation. A parameter that a step skipped (no
    gradient) keeps its adjoints.
    """
    thetas = trajectory.params
    a0 = _zeros_for_none(torch.autograd.grad(trajectory.outer_loss, thetas[-1], allow_unused=True), thetas[-1])
    a1 = [torch.zeros_like(t) for t in a0]
    total = [torch.zeros_like(h) for h in hparams]
    for i in reversed(range(len(grad_fns))):
        theta = [t.detach().requires_grad_() for t in thetas[i]]
        grads = grad_fns[i](theta, True)
        vectors = [-s.lr * x0 + x1 for x0, x1, s in zip(a0, a1, settings, strict=True)]
        terms = [(g * v).sum() for g, v in zip(grads, vectors, strict=True) if g is not None]
        x = torch.stack(terms).sum()
        # retain: a closure may share one graph of φ (e.g. softmax(φ) computed once) between the steps
        derivs = torch.autograd.grad(x, [*theta, *hparams], allow_unused=True, retain_graph=True)
        h = _zeros_for_none(derivs[:len(theta)], theta)
        total = [t + d for t, d in zip(total, _zeros_for_none(derivs[len(theta):], hparams), strict=True)]
        updated = []
        for x0, x1, hj, g, s in zip(a0, a1, h, grads, settings, strict=True):
            if g is None:
                updated.append((x0, x1))
            else:
                updated.append(((1 - s.lr * s.weight_decay) * x0 + s.weight_decay * x1 + hj,
                                s.momentum * (x1 - s.lr * x0)))
        a0, a1 = [u for u, _ in updated], [u for _, u in updated]
    return total


class _TrainingBatchNorm(torch.autograd.Function):
    r"""Training-mode batch norm: PyTorch's forward (running statistics updated as usual), and a backward written
    in differentiable operations, so that its own derivative is autograd's derivative of a short expression.

    With :math:`\hat x=(x-\mu)/\sigma`, :math:`\sigma=\sqrt{\mathrm{var}(x)+\epsilon}` per channel over
    :math:`n` values: :math:`g_\beta=\sum g`, :math:`g_\gamma=\sum g\hat x` and
    :math:`g_x=\frac{\gamma}{\sigma}\big(g-\frac1n(g_\beta+\hat x\,g_\gamma)\big)`.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor,
                bias: Tensor, momentum: float, eps: float) -> Tensor:
        ctx.eps = eps
        ctx.save_for_backward(x, weight)
        return F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - x.mean(dims, keepdim=True)  # (torch.var_mean is ~20× slower than these passes on CPU)
        invstd = torch.rsqrt((centred * centred).mean(dims, keepdim=True) + ctx.eps)
        x_hat = centred * invstd
        grad_bias = grad.sum(dims)
        grad_weight = (grad * x_hat).sum(dims)
        scale = weight.view(shape) * invstd
        n = x.numel() // x.shape[1]
        # per-channel coefficients first, then two broadcast passes: a·g + c + b·x̂
        offset, slope = -scale * grad_bias.view(shape) / n, -scale * grad_weight.view(shape) / n
        grad_x = torch.addcmul(torch.addcmul(offset, scale, grad), slope, x_hat)
        return grad_x, None, None, grad_weight, grad_bias, None, None


def _batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
                momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    if training and weight is not None and bias is not None:
        return _TrainingBatchNorm.apply(input, running_mean, running_var, weight, bias, momentum, eps)
    return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


class TwiceDifferentiableBatchNorm(TorchFunctionMode):
    """Within this context, affine training-mode ``F.batch_norm`` (every ``nn.BatchNorm*`` in train mode) runs as
    :class:`_TrainingBatchNorm`: same values, but its second derivatives are built from a dozen elementwise
    operations instead of PyTorch's batch-norm double backward, the largest single cost of a hypergradient on CPU
    (44 % of the outer backward in a profile of MMKD's unrolled meta update, resnet8 student, batch 64, one
    thread; with this context the look-ahead plus hypergradient took 1.25 s of CPU time instead of 1.66 s)."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        if func is F.batch_norm:
            return _batch_norm(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))
