"""Engine names defined once, chosen in one place; what engines build is kept on the Model and
goes with it."""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle
import weakref
from typing import Any

import pytest
import torch

from convsight.engines import (
    AUTO,
    ENGINE_CHOICES,
    ENGINE_TYPES,
    ENGINES,
    FORWARD_ENGINES,
    forward_scores,
    frozen_module,
    incremental_net,
    memory_format_for,
    score_engine,
)
from convsight.errors import ConvsightError
from convsight.models import Model
from tests.conftest import TinyNet
from tests.engines import small_card


def _model() -> Model:
    torch.manual_seed(0)
    return Model(TinyNet(), small_card())


def _fill(model: Model) -> None:
    """Build every derived copy the engines keep."""
    example = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    memory_format_for(model)
    assert frozen_module(model, example)[0] is not None
    assert incremental_net(model)[0] is not None
    assert set(model.engine_cache) == {"layout", "frozen", "incremental"}


def test_engine_names_are_defined_once_and_chosen_in_one_place():
    assert ENGINES == ("incremental", "frozen", "eager")
    assert tuple(ENGINE_TYPES) == ENGINES
    assert set(FORWARD_ENGINES) < set(ENGINES)
    assert ENGINE_CHOICES == (AUTO, *FORWARD_ENGINES)
    model = _model()
    for name in ENGINES:
        engine = score_engine(model, name)
        assert engine.name == name and engine.record()["requested_engine"] == name
    unknown: Any = "turbo"
    with pytest.raises(ConvsightError, match="unknown engine 'turbo'"):
        score_engine(model, unknown)
    occlusion_only: Any = "incremental"
    with pytest.raises(ConvsightError, match=r"unknown engine 'incremental' \(eager or frozen\)"):
        forward_scores(model, torch.rand(1, 3, 16, 16), torch.tensor([0]), engine=occlusion_only)


def test_every_engine_scores_the_same_and_says_what_ran():
    model = _model()
    pixels = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2, 3, 0])
    expected = model.module(model.normalize(pixels)).gather(1, targets[:, None]).squeeze(1)
    ran = {}
    for name in ENGINES:
        engine = score_engine(model, name)
        got = engine.scores(pixels, targets, batch_size=2)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        ran[name] = (engine.ran, engine.fallback)
    assert ran["eager"] == ("eager", None) and ran["frozen"] == ("frozen", None)
    # only occluded images run incrementally: other inputs run on the module, and it says so
    assert ran["incremental"] == ("eager", "incremental inference is for occluded images")


def test_an_engine_cache_goes_with_its_model():
    model = _model()
    _fill(model)
    model_ref, module_ref = weakref.ref(model), weakref.ref(model.module)
    del model
    gc.collect()
    # nothing outside the Model (no module-level cache) keeps the model or its network
    assert model_ref() is None and module_ref() is None


def test_replacing_the_module_or_card_or_moving_the_model_empties_its_cache():
    model = _model()
    _fill(model)
    model.module = TinyNet()
    assert model.engine_cache == {}
    _fill(model)
    model.card = dataclasses.replace(model.card, name="renamed")
    assert model.engine_cache == {}
    _fill(model)
    assert model.to("cpu") is model and model.engine_cache == {}


def test_a_cached_copy_is_rebuilt_when_a_weight_changes_and_never_copied():
    model = _model()
    example = torch.rand(1, 3, 16, 16)
    first, _ = frozen_module(model, example)
    assert frozen_module(model, example)[0] is first  # kept
    with torch.no_grad():
        model.module.classifier[1].weight.mul_(2.0)  # changed in place
    assert frozen_module(model, example)[0] is not first
    _fill(model)
    for twin in (copy.deepcopy(model), copy.copy(model), pickle.loads(pickle.dumps(model))):
        assert twin.engine_cache == {} and model.engine_cache
    assert model == dataclasses.replace(model)  # the cache takes no part in comparison
    assert "engine_cache" not in repr(model)
