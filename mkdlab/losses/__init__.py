"""Pure loss functions: tensors and hyper-parameters in, a tensor out; methods compose them.

* divergences (one student, one target): :func:`kd_loss`, :func:`soft_target_kl`, :func:`dkd_loss`,
  :func:`dkd_terms`;
* multi_teacher (K×B×C teacher logits): :func:`weighted_kd_loss`, :func:`weighted_kd`, :func:`per_teacher_kd`,
  :func:`de_mkd_kd_loss`, :func:`integrated_target`;
* weightings (K×B×C teacher logits and labels in, B×K weights out): :func:`average_weights`,
  :func:`entropy_weights`, :func:`confidence_weights`, :func:`de_mkd_weights`, :data:`WEIGHT_SUMS`; the registry
  :func:`get_weighting`, :func:`available_weightings`; AMTML-KD's :func:`importance_scores`;
* aekd_solver (K gradients in, K weights out): :func:`aekd_weights`, :func:`capped_simplex_min_norm`,
  :func:`libsvm_capped_simplex_weights`;
* features: :func:`hint_loss`, :func:`per_sample_mse`, :func:`weighted_feature_loss`, :func:`normalised_hint_loss`,
  :func:`attention_map`, :func:`at_loss`, :func:`resize_to`, :func:`gram_matrix`;
* relational (RKD): :func:`pairwise_distances`, :func:`rkd_distance_loss`, :func:`rkd_angle_loss`;
* self_distillation (DTSKD): :func:`smoothed_kl`, :func:`cosine_alpha`, :func:`linear_alpha`,
  :func:`historical_targets`, :func:`historical_loss`, :func:`structural_loss`;
* cam, class attention and self-knowledge (JCS-MKD): :func:`cat_loss`, :func:`cat_distances`, :func:`pooled_cams`,
  :func:`customised_target_label`, :func:`target_loss`, :func:`ranking_scores`, :func:`zipf_nontarget_labels`,
  :func:`nontarget_loss`, :func:`weak_loss`, :func:`self_knowledge_terms`;
* precision: :func:`at_least_float32`.
"""

from mkdlab.losses.aekd_solver import aekd_weights, capped_simplex_min_norm, libsvm_capped_simplex_weights
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
from mkdlab.losses.divergences import dkd_loss, dkd_terms, kd_loss, soft_target_kl
from mkdlab.losses.features import (
    at_loss,
    attention_map,
    gram_matrix,
    hint_loss,
    normalised_hint_loss,
    per_sample_mse,
    resize_to,
    weighted_feature_loss,
)
from mkdlab.losses.multi_teacher import (
    de_mkd_kd_loss,
    integrated_target,
    per_teacher_kd,
    weighted_kd,
    weighted_kd_loss,
)
from mkdlab.losses.precision import at_least_float32
from mkdlab.losses.relational import pairwise_distances, rkd_angle_loss, rkd_distance_loss
from mkdlab.losses.self_distillation import (
    cosine_alpha,
    historical_loss,
    historical_targets,
    linear_alpha,
    smoothed_kl,
    structural_loss,
)
from mkdlab.losses.weightings import (
    WEIGHT_SUMS,
    available_weightings,
    average_weights,
    confidence_weights,
    de_mkd_weights,
    entropy_weights,
    get_weighting,
    importance_scores,
)

__all__ = [
    "WEIGHT_SUMS",
    "aekd_weights",
    "at_least_float32",
    "at_loss",
    "attention_map",
    "available_weightings",
    "average_weights",
    "capped_simplex_min_norm",
    "cat_distances",
    "cat_loss",
    "confidence_weights",
    "cosine_alpha",
    "customised_target_label",
    "de_mkd_kd_loss",
    "de_mkd_weights",
    "dkd_loss",
    "dkd_terms",
    "entropy_weights",
    "get_weighting",
    "gram_matrix",
    "hint_loss",
    "historical_loss",
    "historical_targets",
    "importance_scores",
    "integrated_target",
    "kd_loss",
    "libsvm_capped_simplex_weights",
    "linear_alpha",
    "nontarget_loss",
    "normalised_hint_loss",
    "pairwise_distances",
    "per_sample_mse",
    "per_teacher_kd",
    "pooled_cams",
    "ranking_scores",
    "resize_to",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "self_knowledge_terms",
    "smoothed_kl",
    "soft_target_kl",
    "structural_loss",
    "target_loss",
    "weak_loss",
    "weighted_feature_loss",
    "weighted_kd",
    "weighted_kd_loss",
    "zipf_nontarget_labels",
]
