"""mkdlab: multi-teacher and self knowledge distillation, taught in notebooks and benchmarked.

The package backs the notebook series: a CIFAR model zoo (:mod:`mkdlab.models`), datasets that work offline
(:mod:`mkdlab.data`), pure loss functions (:mod:`mkdlab.losses`), distillation methods (:mod:`mkdlab.methods`),
one training engine (:mod:`mkdlab.engine`), the teacher pool (:mod:`mkdlab.teachers`) and plots
(:mod:`mkdlab.viz`).
"""

from mkdlab.profiles import Profile, current_profile

__version__ = "0.1.0"

__all__ = ["Profile", "__version__", "current_profile"]
