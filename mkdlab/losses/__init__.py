"""Pure loss functions: tensors and hyper-parameters in, a tensor out; methods compose them.

* divergences: :func:`kd_loss`, :func:`weighted_kd_loss`, :func:`dkd_loss`, :func:`dkd_terms`;
* features: :func:`hint_loss`, :func:`attention_map`, :func:`at_loss`;
* teacher weights (K×B×C teacher logits in, B×K weights out): :func:`average_weights`, :func:`entropy_weights`,
  :func:`confidence_weights`; and :func:`aekd_weights` (K gradients in, K weights out).
"""

from mkdlab.losses.divergences import dkd_loss, dkd_terms, kd_loss, weighted_kd_loss
from mkdlab.losses.features import at_loss, attention_map, hint_loss
from mkdlab.losses.weights import aekd_weights, average_weights, confidence_weights, entropy_weights

__all__ = [
    "aekd_weights",
    "at_loss",
    "attention_map",
    "average_weights",
    "confidence_weights",
    "dkd_loss",
    "dkd_terms",
    "entropy_weights",
    "hint_loss",
    "kd_loss",
    "weighted_kd_loss",
]
