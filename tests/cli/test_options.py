"""The command line's shared options: declared once, their lists read from the registries."""

from __future__ import annotations

import pytest
from typer.main import get_command

from convsight.attribution import METHODS
from convsight.cli import app
from convsight.cli.options import CARD_FLAGS, RENDER_FLAGS, method_flags, one_of, render_flags
from convsight.engines import ENGINE_CHOICES
from convsight.optvis.settings import OPTIMIZERS, PARAMS, PRECISIONS, PRESETS
from convsight.studies.attribution import METRICS

ROOT = get_command(app)


def option(command: str, flag: str):
    params = {opt: p for p in ROOT.commands[command].params for opt in p.opts}
    return params[flag]


@pytest.mark.parametrize(
    ("command", "flag", "names"),
    [
        ("maximize", "--param", PARAMS),
        ("classviz", "--param", PARAMS),
        ("maximize", "--optimizer", OPTIMIZERS),
        ("maximize", "--precision", PRECISIONS),
        ("classviz", "--preset", list(PRESETS)),
        ("saliency", "--methods", list(METHODS)),
        ("evaluate", "--methods", list(METHODS)),
        ("evaluate", "--metrics", METRICS),
        ("saliency", "--engine", ENGINE_CHOICES),
    ],
)
def test_help_lists_every_name_of_the_registry(command, flag, names):
    text = option(command, flag).help
    assert all(name in text for name in names), (flag, text)


def test_maximize_and_classviz_share_one_declaration_of_the_render_flags():
    for command in ("maximize", "classviz"):
        given = {opt for p in ROOT.commands[command].params for opt in p.opts}
        assert {"--set", "--steps", "--param", "--decorrelate", "--preset"} <= given
    assert option("maximize", "--param").help == option("classviz", "--param").help
    assert option("maximize", "--preset").default == "robust"
    assert len(RENDER_FLAGS) == 12
    card = {"input_size", "input_channels", "mean", "std", "labels", "num_classes", "resize"}
    assert card | {"output", "arch", "arch_args"} <= set(CARD_FLAGS)


def test_card_flag_yields_to_a_command_flag_of_the_same_name():
    # atlas has its own --channels (which channels to render): the card flag keeps only
    # --input-channels there; layers has none, so --channels means input channels
    assert option("atlas", "--channels").name == "channels"
    assert option("atlas", "--input-channels").name == "input_channels"
    assert option("layers", "--channels").name == "input_channels"


def test_render_flags_keep_only_what_was_given():
    flags = render_flags(preset="paper", steps=4, lr=None, set_=["jitter=2"])
    assert (flags.preset, flags.flags, flags.extra) == ("paper", {"steps": 4}, ["jitter=2"])
    assert one_of(["a"]) == "a" and one_of(["a", "b", "c"]) == "a, b or c"


def test_render_flags_say_the_settings_and_what_the_user_chose():
    flags = render_flags(preset="paper", steps=4, set_=["jitter=2", "steps=9"])
    settings, chosen = flags.settings()
    assert (settings.preset, settings.steps, settings.jitter, settings.l1) == ("paper", 4, 2, 0.1)
    assert chosen == {"steps", "jitter"}  # a flag wins over --set of the same setting
    settings, chosen = render_flags(preset="robust").settings("class")
    assert settings.class_objective == "cossim" and chosen == frozenset()


def test_saliency_and_evaluate_share_the_method_flags():
    for flag in ("--methods", "--layer", "--batch-size", "--engine", "--composite"):
        assert option("saliency", flag).help == option("evaluate", flag).help
    assert option("evaluate", "--methods").default == "saliency,guided,ig,gradcam"
    assert method_flags("ig, gradcam", "features.3") == {
        "methods": ["ig", "gradcam"],
        "layer": "features.3",
        "batch_size": None,
        "engine": "auto",
        "composite": None,
    }
