"""What the ``saliency`` and ``evaluate`` jobs share: the methods asked for, checked, and the
options the command line gives each (read from what each method declares).

The jobs themselves are :func:`convsight.studies.saliency.write_saliency` and
:func:`convsight.studies.evaluation.write_evaluation` (also importable from here, with their
requests and results).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from convsight.attribution import CAM, METHODS, Method, cam_layer, method_class
from convsight.budget import (
    BACKWARD,
    USABLE,
    available_memory,
    describe_available,
    readable_bytes,
    saved_bytes,
)
from convsight.engines import (
    AUTO,
    DEFAULT_ENGINE,
    ENGINE_CHOICES,
    FORWARD_ENGINES,
    ForwardEngine,
)
from convsight.errors import ConvsightError, substituted
from convsight.layers import check_map_layers, get_layer
from convsight.models import Model

DEFAULT_METHODS = ("saliency", "guided", "ig", "gradcam")
METRICS = ("deletion", "insertion", "sanity")
_JOBS = {
    "write_saliency": "saliency",
    "SaliencyRequest": "saliency",
    "SaliencyResult": "saliency",
    "panel_names": "saliency",
    "evaluate_methods": "evaluation",
    "write_evaluation": "evaluation",
    "EvaluationRequest": "evaluation",
    "EvaluationResult": "evaluation",
    "image_files": "evaluation",
}


def __getattr__(name: str) -> Any:
    """The jobs, importable from here as before they had modules of their own."""
    if name not in _JOBS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"convsight.studies.{_JOBS[name]}"), name)


def method_options(
    cls: type[Method],
    layer: str | None = None,
    ig_steps: int = 50,
    smoothgrad_samples: int = 16,
    occlusion_window: int = 16,
    occlusion_stride: int = 8,
    batch_size: int | None = None,
    engine: str = AUTO,
    composite: str | None = None,
) -> dict[str, Any]:
    """The options the command line gives a method: each of these settings that the method
    declares, under the option's name (``ig_steps`` is ``steps``, ``smoothgrad_samples`` is
    ``samples``: every noise tunnel takes it; ``composite``: LRP's rules, None its default).
    ``engine`` "auto" is the method's own default engine (incremental inference for occlusion,
    eager for Score-CAM); ``batch_size`` None leaves each method its own default."""
    settings = {
        "layer": layer,
        "steps": ig_steps,
        "samples": smoothgrad_samples,
        "window": occlusion_window,
        "stride": occlusion_stride,
        "engine": engine,
        "batch_size": batch_size,
        "composite": composite,
    }
    declared = {option.name: option for option in cls.options}
    options: dict[str, Any] = {}
    for name, value in settings.items():
        if name not in declared or (name in ("batch_size", "composite") and value is None):
            continue
        auto = name == "engine" and value == AUTO
        options[name] = declared[name].default if auto else value
    return options


def notice_engine(what: str, run: Mapping[str, Any] | None) -> None:
    """A notice (one line on the command line) when ``run``, the record of how ``what`` ran,
    says that the engine asked for did not run, and why."""
    if run and run.get("fallback"):
        asked = run.get("requested_engine")
        instead = f" instead of {asked}" if asked and asked != run.get("engine") else ""
        substituted(f"{what} ran on the {run.get('engine')} engine{instead}: {run['fallback']}")


def notice_engines(result: dict[str, Any], curves: Iterable[str]) -> None:
    """One line for each method of an evaluation, and each of its ``curves``, that ran on
    another engine than asked (after the progress bar)."""
    for name, entry in result["methods"].items():
        notice_engine(name, entry.get("run"))
        for kind in curves:
            notice_engine(f"{name}'s {kind} curve", entry.get(f"{kind}_run"))


def forward_engine(engine: str) -> ForwardEngine:
    """The engine for plain forward passes (deletion / insertion curves)."""
    if engine == AUTO:
        return DEFAULT_ENGINE
    for name in FORWARD_ENGINES:
        if engine == name:
            return name
    raise ConvsightError(f"unknown engine '{engine}' ({', '.join(ENGINE_CHOICES)})")


def check_methods(model: Model, methods: Sequence[str], layer: str | None) -> list[type[Method]]:
    """The method classes named (each once), after checking ``layer`` and that the model has
    class scores to attribute."""
    if not methods:
        raise ConvsightError(f"no method given; methods: {', '.join(METHODS)}")
    classes = [method_class(m) for m in methods]
    if len({c.name for c in classes}) != len(classes):
        raise ConvsightError("a method is given twice")
    if layer is not None:
        get_layer(model.module, layer)
        if not any(issubclass(c, CAM) for c in classes):
            cams = [name for name, c in METHODS.items() if issubclass(c, CAM)]
            raise ConvsightError(f"--layer is for the CAM methods ({', '.join(cams)})")
        check_map_layers(
            model.module, [layer], model.example_input(), "; a CAM needs a conv layer (--layer)"
        )
    if model.card.features_only or not model.card.num_classes:
        raise ConvsightError(f"model '{model.card.name}' has no class scores to attribute")
    if layer is None and any(issubclass(c, CAM) for c in classes):
        cam_layer(model)  # a model without a layer of maps fails here, before any work
    return classes


def check_settings(batch_size: int | None, ig_steps: int, samples: int, engine: str) -> None:
    """Fail on a batch size, step or sample count below 1, or an unknown engine."""
    if (batch_size is not None and batch_size < 1) or ig_steps < 1 or samples < 1:
        raise ConvsightError("batch size, IG steps and SmoothGrad samples must be at least 1")
    if engine not in ENGINE_CHOICES:
        raise ConvsightError(f"unknown engine '{engine}' ({', '.join(ENGINE_CHOICES)})")


def check_batch_memory(model: Model, batch_size: int | None, rows: int) -> None:
    """``batch_size`` images a pass (at most ``rows``, all the job has), through the whole
    model with their gradients, must fit in the memory available: one sentence naming the
    largest ``--batch-size`` that fits otherwise. None (each method's own small default) and
    a machine whose memory cannot be told are not checked."""
    free = available_memory(model.device)
    if batch_size is None or free is None:
        return
    x = model.example_input().requires_grad_()
    fixed = [*model.module.parameters(), *model.module.buffers()]
    kept = saved_bytes(lambda: model.module(x), exclude=fixed)
    per_image = BACKWARD * kept + 8 * x.numel() * x.element_size()
    need, budget = min(batch_size, rows) * per_image, free * USABLE
    if need <= budget:
        return
    fit = int(budget // per_image)
    h, w = model.card.input_size
    raise ConvsightError(
        f"--batch-size {batch_size} needs about {readable_bytes(need)} for "
        f"{min(batch_size, rows)} images of {h}x{w} px through {model.card.name} with their "
        f"gradients; {describe_available(model.device, free)}; "
        + (f"the largest --batch-size that fits is {fit}" if fit else "not even one image fits")
    )
