"""How far to trust a map: faithfulness (deletion / insertion) and the randomization check."""

from convsight.metrics.faithfulness import (
    Curves,
    auc,
    deletion,
    deletion_auc,
    gaussian_blur,
    insertion,
    insertion_auc,
)
from convsight.metrics.sanity import (
    SanityResult,
    model_randomization,
    randomization_layers,
    spearman,
)

__all__ = [
    "Curves",
    "SanityResult",
    "auc",
    "deletion",
    "deletion_auc",
    "gaussian_blur",
    "insertion",
    "insertion_auc",
    "model_randomization",
    "randomization_layers",
    "spearman",
]
