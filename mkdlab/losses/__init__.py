"""Pure loss functions: tensors and hyper-parameters in, a tensor out; methods compose them.

* divergences: :func:`kd_loss`, :func:`weighted_kd_loss`, :func:`dkd_loss`, :func:`dkd_terms`;
* features: :func:`hint_loss`, :func:`attention_map`, :func:`at_loss`;
* teacher weights (K×B×C teacher logits in, B×K weights out): :func:`average_weights`, :func:`entropy_weights`,
  :func:`confidence_weights`; and :func:`aekd_weights` (K gradients in, K weights out).
* class attention and self-knowledge (JCS-MKD): :func:`cat_loss`, :func:`cat_distances`, :func:`pooled_cams`,
  :func:`customised_target_label`, :func:`target_loss`, :func:`ranking_scores`, :func:`zipf_nontarget_labels`,
  :func:`nontarget_loss`, :func:`weak_loss`, :func:`self_knowledge_terms`.
"""

from mkdlab.losses.cam import (
    cat_distances,
    cat_loss,
    customised_target_label,
    nontarget_loss,
    pooled_cams,
    ranking_scores,
    self_knowledge_terms,
    target_loss,
    weak_loss,
    zipf_nontarget_labels,
)
from mkdlab.losses.divergences import dkd_loss, dkd_terms, kd_loss, weighted_kd_loss
from mkdlab.losses.features import at_loss, attention_map, hint_loss
from mkdlab.losses.weights import aekd_weights, average_weights, confidence_weights, entropy_weights

__all__ = [
    "aekd_weights",
    "at_loss",
    "attention_map",
    "average_weights",
    "cat_distances",
    "cat_loss",
    "confidence_weights",
    "customised_target_label",
    "dkd_loss",
    "dkd_terms",
    "entropy_weights",
    "hint_loss",
    "kd_loss",
    "nontarget_loss",
    "pooled_cams",
    "ranking_scores",
    "self_knowledge_terms",
    "target_loss",
    "weak_loss",
    "weighted_kd_loss",
    "zipf_nontarget_labels",
]
