"""Each method declares its options and its paper; calls, errors and the jobs read them."""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Annotated, Literal

import pytest
import torch

from convsight.attribution import (
    CAM,
    METHODS,
    GradCAM,
    IntegratedGradients,
    Method,
    Occlusion,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    register,
)
from convsight.attribution.options import Option, options_of, resolve, type_name, with_defaults
from convsight.errors import ConvsightError
from convsight.studies.attribution import method_options

Mode = Literal["fast", "exact"]  # hints name module-level types


def _pixels(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _keywords(function) -> set[str]:
    parameters = inspect.signature(function).parameters.values()
    return {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_declares_its_paper_title_and_options(name):
    cls = METHODS[name]
    arxiv, doi = r"https://arxiv\.org/abs/\d{4}\.\d{4,5}", r"https://doi\.org/10\.\d{4,9}/\S+"
    assert re.fullmatch(f"{arxiv}|{doi}", cls.paper), cls.paper
    assert cls.paper in (cls.__doc__ or ""), "the docstring links the same paper"
    assert cls.title and cls.name == name
    names = [option.name for option in cls.options]
    assert len(names) == len(set(names)), names
    for option in cls.options:
        assert option.help and option.accepts(option.default), option
        assert not option.choices or option.default in option.choices, option
    # the declaration is what the method takes: every option reaches it, nothing else does
    takes = _keywords(cls._attribute)
    if issubclass(cls, CAM):
        takes |= _keywords(cls.channel_weights)
    if set(names) != takes:  # a noise tunnel passes the rest on to the method it wraps
        wrapped = cls.wrapped.options  # type: ignore[attr-defined]
        assert set(names) == takes | {o.name for o in wrapped}, (names, takes)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHODS))
def test_defaults_alone_run_every_method(name, tiny):
    cls = METHODS[name]
    fast = {"samples": 2} if "samples" in {o.name for o in cls.options} else {}
    method = cls(tiny)
    out = method.attribute(_pixels(), [0, 1], **fast)
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    assert method.heatmap(_pixels(), [0, 1], **fast).shape == (2, 32, 32)


def test_an_unknown_option_names_what_the_method_takes(tiny):
    with pytest.raises(ConvsightError) as error:
        SmoothGrad(tiny).attribute(_pixels(), 0, n_samples=3)
    assert str(error.value) == (
        "SmoothGrad has no option(s) n_samples; it takes samples, noise_level, stdev, "
        "batch_size, generator, absolute"
    )
    with pytest.raises(ConvsightError, match="InputXGradient has no option.* it takes none"):
        METHODS["ixg"](tiny).attribute(_pixels(), 0, absolute=True)
    with pytest.raises(ConvsightError, match="takes layer, relu, upsample, batch_size, engine"):
        ScoreCAM(tiny).attribute(_pixels(), 0, steps=3)


@pytest.mark.slow
def test_wrong_types_and_choices_fail_in_one_sentence_before_any_work(tiny):
    calls = []
    handle = tiny.module.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ConvsightError, match=r"option steps takes int, not str \('8'\)"):
            IntegratedGradients(tiny).attribute(_pixels(), 0, steps="8")
        with pytest.raises(ConvsightError, match="option absolute takes bool, not int"):
            Saliency(tiny).attribute(_pixels(), 0, absolute=1)
        with pytest.raises(ConvsightError, match=r"unknown rule 'simpson' \(gausslegendre, "):
            IntegratedGradients(tiny).attribute(_pixels(), 0, rule="simpson")
        with pytest.raises(ConvsightError, match=r"takes int \| tuple\[int, int\]"):
            Occlusion(tiny).attribute(_pixels(), 0, window=(8, 8, 8))
        with pytest.raises(ConvsightError, match=r"option layer takes str \| None, not int"):
            GradCAM(tiny).attribute(_pixels(), 0, layer=3)
    finally:
        handle.remove()
    assert calls == []
    # the types a caller may give: ints for floats, lists for tuples and sequences, tensors
    Occlusion(tiny).attribute(_pixels(), 0, window=[8, 16], stride=8, baseline=[0.1, 0.2, 0.3])
    SmoothGrad(tiny).attribute(_pixels(), 0, samples=2, stdev=1, noise_level=0)


def test_option_types_read_as_written():
    assert type_name(int | None) == "int | None"
    assert type_name(int | tuple[int, int]) == "int | tuple[int, int]"
    assert type_name(Sequence[float]) == "Sequence[float]"
    option = Option("size", int | tuple[int, ...], 3, "a size")
    assert option.accepts(4) and option.accepts((1, 2, 3)) and option.accepts([5])
    assert not option.accepts(True) and not option.accepts(2.5) and not option.accepts("3")
    assert option.describe() == "size (int | tuple[int, ...], default 3): a size"
    choice = Option("engine", str, "a", "how", ("a", "b"))
    assert choice.describe() == "engine (one of a, b, default 'a'): how"
    assert resolve("M", (option, choice), {"engine": "b"}) == {"size": 3, "engine": "b"}
    (changed,) = with_defaults((option,), size=5)
    assert changed.default == 5 and option.default == 3
    with pytest.raises(ValueError, match="no option"):
        with_defaults((option,), width=2)


def test_describe_lists_the_paper_and_every_option():
    text = IntegratedGradients.describe()
    assert text.splitlines()[0] == "Integrated Gradients (ig): https://arxiv.org/abs/1703.01365"
    assert "steps (int, default 50)" in text
    assert len(text.splitlines()) == 1 + len(IntegratedGradients.options)


def test_a_method_is_offered_only_when_registered():
    class Doubled(Saliency):
        """Twice the gradient (a test method), https://arxiv.org/abs/1312.6034."""

        name = "doubled-test"
        title = "Doubled"

    class Renamed(Saliency):  # keeps its parent's name
        pass

    try:
        assert "doubled-test" not in METHODS  # defining a class registers nothing
        assert register(Doubled) is Doubled and METHODS["doubled-test"] is Doubled
        assert list(METHODS)[-1] == "doubled-test" and register(Doubled) is Doubled
        assert METHODS["saliency"] is Saliency and Renamed not in METHODS.values()
        with pytest.raises(TypeError, match="two attribution methods are called 'saliency'"):
            register(Renamed)
        with pytest.raises(TypeError, match="no short name"):
            register(type("Nameless", (Method,), {}))
    finally:
        METHODS.pop("doubled-test", None)


def test_the_registry_is_one_explicit_list_exported_by_class_name():
    import convsight.attribution as package

    order = "saliency ixg ig smoothgrad vargrad smoothgrad-sq guided deconvnet gradcam gradcam++"
    assert list(METHODS) == [*order.split(), "scorecam", "occlusion", "lrp"]
    for cls in METHODS.values():
        assert getattr(package, cls.__name__) is cls and cls.__name__ in package.__all__
    assert not hasattr(package, "__getattr__")


def test_options_are_read_from_the_keyword_only_parameters():
    def declared(
        inputs: int,
        *,
        steps: Annotated[int, "how many"] = 3,
        mode: Annotated[Mode, "how"] = "fast",
        layer: Annotated[str | None, "where"] = None,
        **rest: object,
    ) -> None: ...

    steps, mode, layer = options_of(declared)
    assert steps == Option("steps", int, 3, "how many")
    assert mode == Option("mode", str, "fast", "how", ("fast", "exact"))
    assert layer == Option("layer", str | None, None, "where")

    def no_help(*, steps: int = 3) -> None: ...

    def no_default(*, steps: Annotated[int, "how many"]) -> None: ...

    with pytest.raises(TypeError, match="option steps of .*no_help needs a hint Annotated"):
        options_of(no_help)
    with pytest.raises(TypeError, match="option steps of .*no_default needs a default"):
        options_of(no_default)


def test_the_declaration_is_read_once_per_class_and_defaults_can_be_replaced(tiny):
    class Signed(Saliency):
        """Signed gradients (a test method), https://arxiv.org/abs/1312.6034."""

        option_defaults = {"absolute": False}

    assert Signed.options is Signed.options  # kept on the class
    assert Signed.options == with_defaults(Saliency.options, absolute=False)
    assert Saliency.options[0].default is True and Signed(tiny).options == Signed.options
    x = _pixels()
    assert torch.equal(Signed(tiny).attribute(x, 0), Saliency(tiny).attribute(x, 0, absolute=False))


@pytest.mark.parametrize("name", list(METHODS))
def test_the_command_line_gives_each_method_only_what_it_declares(name):
    cls = METHODS[name]
    declared = {option.name: option for option in cls.options}
    options = method_options(cls, layer="features.3", ig_steps=5, batch_size=4, engine="auto")
    assert set(options) <= set(declared)
    if "engine" in declared:  # "auto": the method's own default engine
        assert options["engine"] == declared["engine"].default
        assert method_options(cls, engine="frozen")["engine"] == "frozen"
    if "steps" in declared:
        assert options["steps"] == 5
    if "batch_size" in declared:
        assert options["batch_size"] == 4
        assert "batch_size" not in method_options(cls)  # None: the method's own default


def test_the_options_the_jobs_recorded_before_stay_the_same():
    """What saliency.json and evaluation.json held for each method when the command line
    chose options by each method's name."""
    given = {name: method_options(cls, engine="auto") for name, cls in METHODS.items()}
    assert given["saliency"] == given["ixg"] == given["guided"] == given["deconvnet"] == {}
    assert given["smoothgrad"] == {"samples": 16}
    assert given["ig"] == {"steps": 50}
    assert given["gradcam"] == given["gradcam++"] == {"layer": None}
    assert given["scorecam"] == {"layer": None, "engine": "eager"}
    assert given["occlusion"] == {"window": 16, "stride": 8, "engine": "incremental"}
    assert list(method_options(Occlusion, batch_size=2)) == [
        "window",
        "stride",
        "engine",
        "batch_size",
    ]
