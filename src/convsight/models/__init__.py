"""Models: ``load_model(spec)`` returns a :class:`Model` (module + :class:`ModelCard`) from one
of the sources in :data:`SOURCES` (each a :class:`Source`: matches, load, describe)."""

from convsight.models.card import CardWarning, ModelCard, card_path, imagenet_labels, read_labels
from convsight.models.checkpoints import read_state_dict, replace_head
from convsight.models.loading import load_model, make_card
from convsight.models.model import Model
from convsight.models.seed_source import build_seed
from convsight.models.seeds import FiveClassCNN, MnistCNN
from convsight.models.source import Source
from convsight.models.sources import SOURCES, list_models, model_sources

__all__ = [
    "SOURCES",
    "CardWarning",
    "FiveClassCNN",
    "MnistCNN",
    "Model",
    "ModelCard",
    "Source",
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
