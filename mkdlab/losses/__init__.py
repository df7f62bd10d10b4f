"""Pure loss functions: tensors and hyper-parameters in, a tensor out; methods compose them."""

from mkdlab.losses.divergences import kd_loss

__all__ = ["kd_loss"]
