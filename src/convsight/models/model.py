"""Model: an ``nn.Module`` in eval mode together with its ModelCard."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import AUTO, ModelCard
from convsight.models.heads import SoftmaxRecorder, settle_head
from convsight.models.outputs import not_a_tensor, select_output


@dataclass
class Model:
    """A network ready for visualization: eval mode, parameters frozen, and its card.

    ``module`` takes normalized input; :meth:`normalize` maps pixel space ([0, 1]) to it.
    ``Model(module, card)`` adopts ``module`` as it is: it is put in eval mode and its
    parameters are frozen in place (``load_model`` passes modules it built itself). To
    visualize a module you keep using, call :meth:`from_module`, which leaves it as it was.
    When the card names an ``output`` (the part of a tuple, dict or object that holds the
    scores), ``module`` returns that part (see :mod:`convsight.models.outputs`), also after
    the card is replaced.

    ``engine_cache`` holds what :mod:`convsight.engines` derived from the module (memory
    layout answers, frozen and incremental copies); it is emptied when the module or card is
    replaced or the model moves (:meth:`to`), is not compared, shown, copied or pickled, and
    goes with the Model.
    """

    module: nn.Module
    card: ModelCard
    engine_cache: dict[str, Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    output_shape: tuple[int, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    """The shape of the module's output for one input (no batch dimension), once the card was
    checked against the module; None before, and again once the module or card is replaced."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("module", "card") and "module" in vars(self) and "card" in vars(self):
            parts = {"module": self.module, "card": self.card, name: value}
            card = parts["card"]
            chosen = select_output(parts["module"], card.output, card.name)  # may refuse
            super().__setattr__(name, value)  # only once the choice is made
            object.__setattr__(self, "module", chosen)
            self._forget_engines()
            return
        super().__setattr__(name, value)

    def __getstate__(self) -> dict[str, Any]:
        """What a copy or pickle holds: everything but the engines' cache (empty there)."""
        return {**vars(self), "engine_cache": {}}

    def _forget_engines(self) -> None:
        """Empty the engines' cache: what it holds was derived from another module or card."""
        vars(self).get("engine_cache", {}).clear()
        object.__setattr__(self, "output_shape", None)

    def _adopt(self, module: nn.Module) -> None:
        """Hold ``module`` (its output already chosen), forgetting what engines derived from
        another one."""
        if module is not vars(self).get("module"):
            self._forget_engines()
        object.__setattr__(self, "module", module)

    def _select_output(self) -> None:
        """Make the module return the part of its output the card names (if any)."""
        self._adopt(select_output(self.module, self.card.output, self.card.name))

    def __post_init__(self) -> None:
        self.module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        for tensor in self.module.parameters():
            return tensor.device
        return torch.device("cpu")

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel space ([0, 1], N x C x H x W) to the model's input space."""
        return self.card.normalize(pixels)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input space back to pixel space (not clipped)."""
        return self.card.denormalize(x)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A zero tensor of the model's input shape (normalized space)."""
        h, w = self.card.input_size
        return torch.zeros(batch, self.card.channels, h, w, device=self.device)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        input_size: int | Sequence[int] = 224,
        channels: int = 3,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        labels: Sequence[str] | Literal["imagenet"] | None = None,
        num_classes: int | None = None,
        name: str | None = None,
        resize: int | None | Literal["auto"] = AUTO,
        interpolation: str = "bilinear",
        arch: str | None = None,
        source: str = "",
        output: int | str | None = None,
    ) -> Model:
        """Any ``nn.Module`` with a card built from these arguments, checked against it.

        Defaults: 224x224 RGB input, identity normalization (the module takes pixels in
        [0, 1]), the usual resize for the size, and the number of classes probed from the
        module's output for one input (an N x K output has K classes, named by their
        numbers; another output shape means no class scores). ``input_size`` is one side
        (a square) or (height, width); ``mean``/``std`` one number or one per channel.
        ``output`` picks the scores from a forward that returns a tuple, list, dict or
        object (``0``, ``"logits"``); such an output without it is refused.

        ``module`` itself is left as it was (train/eval mode, ``requires_grad``, device): the
        Model holds a copy of its structure that shares its weights (see :func:`shared_copy`;
        no tensor is copied, so weights changed in place show through). A module that
        cannot be copied (TorchScript, uninitialized lazy layers) is adopted as it is (with
        ``output``, a Python one is itself made to return that part; TorchScript is wrapped).
        """
        card = ModelCard(
            name=name or type(module).__name__,
            arch=arch or f"python:{type(module).__module__}:{type(module).__qualname__}",
            input_size=input_size,  # type: ignore[arg-type]
            channels=channels,
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            labels=labels,  # type: ignore[arg-type]
            num_classes=num_classes,
            resize=resize,
            interpolation=interpolation,
            source=source or f"Model.from_module({type(module).__name__})",
            output=output,
        )
        model = cls(shared_copy(module), card)
        model.probe_classes()
        return model

    def probe_classes(self) -> None:
        """Run the card's example input once: a card that names no classes takes K from an
        N x K output (unless ``features_only``); then the card is checked as by
        :meth:`check_card` (an output that is not one tensor needs the card's ``output``)."""
        out = self._example_output()
        card = self.card
        if card.num_classes is None and not card.features_only:
            if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] >= 1:
                card.num_classes = int(out.shape[1])
                card.validate()
        self._check_output(out)

    def _example_output(self) -> Any:
        """The module's output for the card's example input (one sentence if it fails); a
        softmax head is cut first (see :func:`~convsight.models.heads.settle_head`), and the
        card's ``head`` says what was done."""
        card = self.card
        self._select_output()  # the card may have been changed in place
        example, recorder = self.example_input(), SoftmaxRecorder()
        try:
            with torch.no_grad(), recorder:
                out = self.module(example)
        except ConvsightError:  # the output the card names is not there
            raise
        except Exception as exc:  # the module says why in its own words
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ConvsightError(
                f"model '{card.name}' does not run on the input its card describes "
                f"({card.channels} channel{'s' if card.channels > 1 else ''}, "
                f"{card.input_size[0]}x{card.input_size[1]} pixels, height x width): {reason}"
            ) from exc
        if not card.features_only:
            module, card.head = settle_head(self.module, example, out, recorder.last, card.name)
            self._adopt(module)  # the output is chosen already
        return out

    def check_card(self) -> None:
        """Run the card's example input once; refuse a card that does not fit the module.

        The module must run on a batch of the card's input size and channels and, unless the
        card is ``features_only`` or names no classes, return one score per class the card
        names (N x num_classes).
        """
        self._check_output(self._example_output())

    def _check_output(self, out: Any) -> None:
        card = self.card
        if not isinstance(out, torch.Tensor):
            raise not_a_tensor(card.name, out)
        object.__setattr__(self, "output_shape", tuple(out.shape[1:]))
        if card.features_only or card.num_classes is None:
            return
        if out.ndim == 4 and out.shape[1] == card.num_classes:
            return  # class scores per pixel (a segmentation net): N x K x H x W
        if out.ndim != 2:
            got = "x".join(map(str, out.shape)) + " tensor"
            raise ConvsightError(
                f"model '{card.name}' returns a {got} for one input, not one row of "
                f"{card.num_classes} class scores as its card says"
            )
        if out.shape[1] != card.num_classes:
            named = "labels" if card.labels is not None else "num_classes"
            raise ConvsightError(
                f"model card '{card.name}' names {card.num_classes} classes ({named}) but the "
                f"model returns {out.shape[1]} scores per input"
            )

    def class_index(self, target: int | str) -> int:
        """A class given by index or by label (case-insensitive), checked against the card."""
        n = self.card.num_classes
        if self.card.features_only or n is None:
            why = (
                "its weights are a feature stack only"
                if self.card.features_only
                else "its output is not one row of scores per image (N x K)"
            )
            raise ConvsightError(f"model '{self.card.name}' has no class scores ({why})")
        if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
            wanted = target.strip().lower().replace("_", " ")
            labels = [label.lower() for label in self.card.labels or []]
            if wanted in labels:
                return labels.index(wanted)
            import difflib

            close = difflib.get_close_matches(wanted, labels, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConvsightError(f"unknown class '{target}' for model '{self.card.name}'{hint}")
        index = int(target)
        if not 0 <= index < n:
            raise ConvsightError(
                f"class {index} is out of range: model '{self.card.name}' "
                f"has {n} classes (0-{n - 1})"
            )
        return index

    def to(self, device: str | torch.device) -> Model:
        """Move the module to ``device`` (in place); the engines' cache is emptied."""
        self.module.to(device)
        self._forget_engines()
        return self


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s structure whose parameters and buffers share its tensors.

    The copy has its own modules, so its mode, ``requires_grad`` flags (off) and device can
    change without touching ``module``; it costs no memory for weights. A TorchScript
    module, one with uninitialized lazy parameters, or one that cannot be copied is
    returned as it is.
    """
    parameters = list(module.parameters())
    lazy = any(nn.parameter.is_lazy(p) for p in parameters)
    if lazy or isinstance(module, torch.jit.ScriptModule):
        return module
    memo: dict[int, Any] = {id(b): b for b in module.buffers()}
    for p in parameters:
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False)
    try:
        return copy.deepcopy(module, memo)
    except Exception:  # an attribute that cannot be copied (a lock, a file, a C++ object)
        return module
