"""Models: ``load_model(spec)`` returns a :class:`Model` (module + :class:`ModelCard`)."""

from convsight.models.card import CardWarning, ModelCard, card_path, imagenet_labels, read_labels
from convsight.models.checkpoints import read_state_dict, replace_head
from convsight.models.model import Model
from convsight.models.registry import build_seed, list_models, model_sources
from convsight.models.seeds import FiveClassCNN, MnistCNN
from convsight.models.zoo import load_model, make_card

__all__ = [
    "CardWarning",
    "FiveClassCNN",
    "MnistCNN",
    "Model",
    "ModelCard",
    "build_seed",
    "card_path",
    "imagenet_labels",
    "list_models",
    "load_model",
    "make_card",
    "model_sources",
    "read_labels",
    "read_state_dict",
    "replace_head",
]
