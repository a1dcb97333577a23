"""convsight: see how convolutional networks see the world."""

from convsight.errors import ConvsightError
from convsight.models import Model, ModelCard, load_model

__all__ = ["ConvsightError", "Model", "ModelCard", "load_model"]
__version__ = "0.1.0"
