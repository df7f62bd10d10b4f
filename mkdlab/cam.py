r"""Class activation maps (CAM) and Grad-CAM for the model zoo: the differentiable op, pictures and a grid plot.

**CAM** (Zhou et al., CVPR 2016). A zoo model ends with global average pooling (GAP) and one linear layer, so its
logits are :math:`z_c = \sum_d W_{cd}\,\mathrm{mean}_{ij}F_{dij} + b_c` with :math:`F` the last map
(``forward_features(x)[model.taps["last_map"]]``, i.e. ``"pre_pool"``). Applying the FC as a 1×1 convolution
*before* pooling gives one map per class,

.. math:: A_{b,c,i,j} = \sum_d W_{cd}\,F_{b,d,i,j}\ (+\,b_c),\qquad z_{bc} = \mathrm{mean}_{ij}A_{b,c,i,j} + b_c

(:func:`class_activation_maps`, bias-free by default as in CAT-KD/JCS-MKD). It is an ordinary tensor op, so losses
(:mod:`mkdlab.losses.cam`) can back-propagate through it.

**Grad-CAM** (Selvaraju et al., ICCV 2017) weights the channels of a layer by the spatial mean of the gradient of
the class score. At the zoo's last map of a GAP→FC net that gradient is :math:`W_{cd}/(HW)`, so Grad-CAM equals the
CAM of the class divided by :math:`HW`: after Grad-CAM's ReLU and min-max normalisation the two pictures are the
same (``tests/test_cam.py``). :func:`grad_cam` runs the ``grad-cam`` package (``pytorch_grad_cam.GradCAM``) on any
model — a zoo model, a :class:`~mkdlab.methods.base.Distiller` (its student is explained) or a model whose forward
returns a tuple or dict (pass ``select``) — and leaves the model as it found it (modes, ``requires_grad`` flags,
``.grad`` fields).

Typical use in a notebook::

    from mkdlab.cam import cam_pictures, grad_cam, plot_cam_grid

    maps = {"teacher 0": cam_pictures(teacher, images, labels),          # N×H×W numpy, in [0, 1]
            "student": grad_cam(method, images, labels)}                  # the same normalisation
    plot_cam_grid(images, maps, labels=labels, class_names=classes, mean=info.mean, std=info.std)

For a model whose forward returns ``(logits_main, logits_branch1, …)``: ``grad_cam(model, images, select=0,
target_layer=model.backbone.last_map)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: what :class:`LogitsOf` accepts to pick the logits out of a model's output: an index, a key or a function.
Selector = int | str | Callable[[Any], Tensor]

#: the small constant of ``pytorch_grad_cam.utils.image.scale_cam_image`` (min-max normalisation).
_MINMAX_EPS = 1e-7


# -- CAM: the tensor op ----------------------------------------------------------------------------------------
def class_activation_maps(model: nn.Module, last_map: Tensor, bias: bool = False) -> Tensor:
    r"""The class activation maps of a GAP→FC model: its FC applied as a 1×1 convolution to its last map.

    .. math:: A_{b,c,i,j} = \sum_d W_{cd}\,F_{b,d,i,j}\ (+\,b_c\ \text{with}\ \texttt{bias})

    Differentiable in both the map and the FC weights. For every zoo model
    ``class_activation_maps(m, feats["pre_pool"]).mean((2, 3)) + m.fc_layer().bias == feats["logits"]``.

    Args:
        model: a zoo model (anything with ``fc_layer()`` returning the final :class:`~torch.nn.Linear`).
        last_map: B×D×H×W, the model's ``forward_features(x)[model.taps["last_map"]]``.
        bias: add the FC bias to every position (CAT-KD and JCS-MKD drop it).

    Returns:
        B×C×H×W maps, one per class.
    """
    fc = model.fc_layer()
    if last_map.ndim != 4 or last_map.shape[1] != fc.in_features:
        raise ValueError(f"the FC of {type(model).__name__} takes {fc.in_features} channels, got a map of shape "
                         f"{tuple(last_map.shape)}; pass forward_features(x)[model.taps['last_map']]")
    return F.conv2d(last_map, fc.weight[:, :, None, None], fc.bias if bias else None)


def maps_of_classes(maps: Tensor, classes: Tensor) -> Tensor:
    """The map of class ``classes[b]`` for each sample: B×C×H×W and B indices → B×H×W."""
    return maps[torch.arange(maps.shape[0], device=maps.device), classes.to(maps.device)]


def _minmax(maps: Tensor) -> Tensor:
    low = maps.flatten(1).min(1).values[:, None, None]
    shifted = maps - low
    return shifted / (_MINMAX_EPS + shifted.flatten(1).max(1).values[:, None, None])


def normalize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Grad-CAM's picture normalisation (``grad-cam`` 1.5: ``compute_cam_per_layer`` + ``aggregate_multi_layers``).

    ReLU, per-map min-max to [0, 1], bilinear resize to ``size`` (``cv2.resize``'s ``INTER_LINEAR`` =
    ``align_corners=False``), then min-max again. B×h×w → B×H×W float32.
    """
    maps = _minmax(maps.detach().float().clamp_min(0))
    maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return _minmax(maps.clamp_min(0))


# -- leaving a model as it was found ---------------------------------------------------------------------------
@contextmanager
def preserved_state(model: nn.Module) -> Iterator[nn.Module]:
    """Restore, on exit, every submodule's ``training`` flag and every parameter's ``requires_grad`` and ``.grad``.

    On entry the ``.grad`` fields are set aside (``None`` inside the block), so nothing inside can alter them.
    """
    modes = [(module, module.training) for module in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
        for p, flag, grad in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad


# -- CAM pictures ----------------------------------------------------------------------------------------------
def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def cam_pictures(model: nn.Module, images: Tensor, classes: Tensor | None = None, bias: bool = False) -> np.ndarray:
    """CAMs of a zoo model as pictures: the map of class ``classes[b]`` (default: the predicted class), divided by
    :math:`HW` (the scale of Grad-CAM's map, which matters only through the 1e-7 of the min-max), normalised and
    resized to the images like Grad-CAM (:func:`normalize_maps`): for a GAP→FC net the result equals
    :func:`grad_cam` at the default target layer. Runs in eval mode without autograd; the model's modes are
    restored.

    Args:
        model: a zoo model (for a :class:`~mkdlab.methods.base.Distiller` pass ``method.student``).
        images: N×C×H×W (moved to the model's device).
        classes: N class indices, or ``None`` for each image's predicted class.
        bias: include the FC bias (changes nothing after min-max unless the ReLU clips).

    Returns:
        N×H×W float32 numpy array in [0, 1].
    """
    with preserved_state(model), torch.no_grad():
        model.eval()
        feats = model.forward_features(images.to(_device(model)))
        maps = class_activation_maps(model, feats[model.taps["last_map"]], bias=bias)
        chosen = feats["logits"].argmax(1) if classes is None else classes
        grad_cam_scale = maps_of_classes(maps, chosen) / (maps.shape[-2] * maps.shape[-1])
        pictures = normalize_maps(grad_cam_scale, tuple(images.shape[-2:]))
    return pictures.cpu().numpy()


# -- Grad-CAM --------------------------------------------------------------------------------------------------
class LogitsOf(nn.Module):
    """A view of ``model`` whose forward returns a plain logits tensor, for models that return something else.

    ``select`` picks the logits from the output: an ``int`` (index into a tuple/list, e.g. the main head of a
    multi-branch network), a ``str`` (key of a dict) or a function ``output → logits``.
    """

    def __init__(self, model: nn.Module, select: Selector) -> None:
        super().__init__()
        self.model = model
        self.select = select

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return self.select(out) if callable(self.select) else out[self.select]


def default_target_layer(model: nn.Module) -> nn.Module:
    """The Grad-CAM target layer: the zoo's ``last_map`` identity (applied to ``"pre_pool"``, every family).

    Found among the submodules named ``last_map`` outside any ``teachers`` container, the shallowest one: the
    model's own, a wrapped model's (``LogitsOf``) or a Distiller's student's.
    """
    found = [(name, module) for name, module in model.named_modules()
             if name.split(".")[-1] == "last_map" and "teachers" not in name.split(".")]
    if not found:
        raise ValueError(f"{type(model).__name__} has no zoo 'last_map' layer outside its teachers; "
                         f"pass target_layer= explicitly")
    return min(found, key=lambda item: item[0].count("."))[1]


def grad_cam(model: nn.Module, images: Tensor, classes: Tensor | None = None, *,
             target_layer: nn.Module | None = None, select: Selector | None = None) -> np.ndarray:
    """Grad-CAM maps from the ``grad-cam`` package, resized to the images and normalised to [0, 1].

    The model runs in eval mode with its parameters frozen; the gradient comes from an input that requires it, so
    frozen teachers work too. Modes, ``requires_grad`` flags and ``.grad`` fields are restored afterwards
    (:func:`preserved_state`), also when called under ``torch.no_grad()`` or ``torch.inference_mode()``.

    Args:
        model: a zoo model, a Distiller (its student is explained) or any model; see ``select``.
        images: N×C×H×W (moved to the model's device).
        classes: N class indices to explain, or ``None`` for each image's predicted class.
        target_layer: the layer whose activations are weighted; default :func:`default_target_layer`. It must
            be *called* during the forward: every stage and block of the zoo is (``model.layer2``,
            ``model.layer3[-1]``, ``model.block3.layer[-1]``, …; ``tests/test_cam_layers.py``).
        select: when ``model``'s forward does not return the logits tensor itself: index, key or function
            choosing it (:class:`LogitsOf`).

    Returns:
        N×H×W float32 numpy array in [0, 1].
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = model if select is None else LogitsOf(model, select)
    layer = target_layer if target_layer is not None else default_target_layer(net)
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    calls: list[None] = []
    handle = layer.register_forward_hook(lambda *_: calls.append(None))
    with preserved_state(net), torch.inference_mode(False), torch.enable_grad():
        net.requires_grad_(False)
        x = images.detach().to(_device(net)).clone().requires_grad_(True)
        try:
            with GradCAM(net, [layer]) as cam:
                return cam(x, targets)
        except AttributeError as error:
            if calls:
                raise
            raise ValueError(f"the target layer {type(layer).__name__} was never called during the forward: "
                             f"choose a module of this model that its forward runs, e.g. model.layer3[-1]") from error
        finally:
            handle.remove()


# -- the grid plot ---------------------------------------------------------------------------------------------
def _displayable(images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """N×C×H×W normalised images → N×H×W×C in [0, 1] (de-normalised with mean/std, else min-max per image)."""
    images = images.detach().float().cpu()
    if mean is not None and std is not None:
        images = images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:
        low = images.flatten(1).min(1).values.view(-1, 1, 1, 1)
        high = images.flatten(1).max(1).values.view(-1, 1, 1, 1)
        images = (images - low) / (high - low).clamp_min(1e-12)
    return images.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def plot_cam_grid(images: Tensor, maps: Mapping[str, np.ndarray | Tensor], *, labels: Sequence[int] | None = None,
                  class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, alpha: float = 0.5, cmap: str = "jet",
                  cell_size: float = 1.5, title: str | None = None) -> Figure:
    """A grid of CAM / Grad-CAM maps overlaid on their images: one row per image, one column per model.

    The first column shows the image alone (titled with its class when ``labels`` and ``class_names`` are
    given); each further column is one entry of ``maps`` (e.g. ``"teacher 0"``, ``"student before"``,
    ``"student after"``), an N×H×W array of maps in [0, 1] drawn with ``cmap`` at opacity ``alpha``.

    Args:
        images: N×C×H×W normalised images.
        maps: column name → N×H×W maps (numpy or tensor), from :func:`cam_pictures` or :func:`grad_cam`.
        labels, class_names: optional class of each image and the class names.
        mean, std: the normalisation to undo for display (else each image is min-max scaled).
        alpha: opacity of the maps.
        cmap: matplotlib colour map of the maps.
        cell_size: inches per grid cell.
        title: optional figure title.
    """
    import matplotlib.pyplot as plt

    pictures = _displayable(images, mean, std)
    columns = {name: np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value)
               for name, value in maps.items()}
    for name, value in columns.items():
        if value.shape != pictures.shape[:3]:
            raise ValueError(f"maps[{name!r}] has shape {value.shape}, expected {pictures.shape[:3]} (N×H×W)")
    rows, cols = len(pictures), len(columns) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(cell_size * cols, cell_size * rows + 0.3), squeeze=False)
    for row, picture in enumerate(pictures):
        base = picture[..., 0] if picture.shape[-1] == 1 else picture
        base_cmap = "gray" if picture.shape[-1] == 1 else None
        for col, ax in enumerate(axes[row]):
            ax.imshow(base, cmap=base_cmap)
            if col:
                ax.imshow(list(columns.values())[col - 1][row], cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        if labels is not None and class_names is not None:
            axes[row, 0].set_ylabel(class_names[int(labels[row])], fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    for col, name in enumerate(columns, start=1):
        axes[0, col].set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
