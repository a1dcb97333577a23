"""The one registry of model sources: SOURCES drives loading, listing and help."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from convsight.models import SOURCES, Source, list_models, load_model, model_sources, sources
from convsight.models.file_sources import KERAS, ONNX, TORCHSCRIPT
from convsight.models.seed_source import SEED, SEEDS
from convsight.models.source import FileSource, LoadRequest, NamedSource
from convsight.models.timm_source import TIMM
from convsight.models.torchvision_source import TORCHVISION, torchvision_models


def test_sources_are_one_ordered_tuple_of_sources():
    names = [source.name for source in SOURCES]
    assert names == [
        "seed",
        "torchvision",
        "timm",
        "checkpoint",
        "your class",
        "TorchScript",
        "ONNX",
        "Keras",
    ]
    assert model_sources() is SOURCES
    assert all(isinstance(source, Source) for source in SOURCES)
    assert [s for s in SOURCES if s.listable] == [SEED, TORCHVISION, TIMM]


def test_list_models_reads_the_named_sources():
    assert list_models() == list(SEEDS) + torchvision_models()
    assert SEED.count() == len(SEEDS) and TORCHVISION.count() == len(torchvision_models())
    assert sources.CHECKPOINT.count() is None and ONNX.count() is None


def test_each_spec_finds_its_source():
    assert sources.named_source("mnist-cnn") is SEED
    assert sources.named_source("vgg16") is TORCHVISION
    assert sources.named_source("timm:resnet18") is TIMM
    assert sources.named_source("net.pt") is None and not sources.is_model_name("nope")
    assert (
        sources.file_source("a/net.PT") is sources.CHECKPOINT
        and sources.file_source("net.bin") is sources.CHECKPOINT
    )
    assert (
        sources.file_source("net.ts") is TORCHSCRIPT
        and sources.file_source(Path("net.onnx")) is ONNX
    )
    assert sources.file_source("net.keras") is KERAS
    assert sources.names_file("net.safetensors") and not sources.names_file("net.bin")
    assert sources.arch_of("mnist-cnn") == "convsight:mnist-cnn"
    assert sources.arch_of("vgg16") == "torchvision:vgg16"
    assert sources.arch_of("timm:resnet18") == "timm:resnet18"


@pytest.mark.parametrize(
    ("arch", "is_class"),
    [
        ("net.py:Net", True),
        ("pkg.mod:Net", True),
        ("python:net.py:Net", True),
        ("net.py", True),
        ("resnet18", False),
        ("timm:resnet18", False),
        ("torchvision:vgg16", False),
        ("onnx:net.onnx", False),
    ],
)
def test_your_class_matches_arch_values_that_name_a_class(arch, is_class):
    assert sources.YOUR_CLASS.matches(arch) is is_class


def test_describe_names_the_missing_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "onnx2torch" else real(name)
    )
    assert ONNX.describe() == "converted to PyTorch; needs pip install 'convsight[onnx]'"
    assert SEED.describe() == SEED.note


def test_arch_help_reads_the_sources():
    assert sources.ARCH_HELP == (
        "a torchvision name, timm:NAME, a seed network, or your nn.Module class as "
        "FILE.py:ClassName or package.module:ClassName"
    )


def test_a_source_loads_as_load_model_does():
    torch.manual_seed(0)
    direct = SEED.load("mnist-cnn", options={"stride": 1}, labels=list("abcdefghij"))
    torch.manual_seed(0)
    loaded = load_model("mnist-cnn", card_fields={"labels": list("abcdefghij")}, stride=1)
    assert direct.card.to_dict() == loaded.card.to_dict()
    ours, theirs = direct.module.state_dict(), loaded.module.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs) and ours.keys() == theirs.keys()


def test_load_request_reaches_open():
    seen = []

    class Echo(NamedSource):
        def open(self, request):
            seen.append(request)
            return load_model("mnist-cnn")

    echo = Echo(name="echo", spec="ECHO", note="for the test")
    echo.load("x", Path("w.pt"), card=None, options={"a": 1}, labels=["a"])
    assert seen == [LoadRequest("x", Path("w.pt"), None, {"a": 1}, {"labels": ["a"]})]
    assert isinstance(sources.CHECKPOINT, FileSource) and not sources.CHECKPOINT.matches("net.ts")
