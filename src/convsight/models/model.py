"""Model: an ``nn.Module`` in eval mode together with its ModelCard."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard


@dataclass
class Model:
    """A network ready for visualization: eval mode, parameters frozen, and its card.

    ``module`` takes normalized input; :meth:`normalize` maps pixel space ([0, 1]) to it.
    """

    module: nn.Module
    card: ModelCard

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

    def check_card(self) -> None:
        """Run the card's example input once; refuse a card that does not fit the module.

        The module must run on a batch of the card's input size and channels and, unless the
        card is ``features_only`` or names no classes, return one score per class the card
        names (N x num_classes).
        """
        card = self.card
        x = self.example_input()
        try:
            with torch.no_grad():
                out = self.module(x)
        except Exception as exc:  # the module says why in its own words
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise ConvsightError(
                f"model '{card.name}' does not run on the input its card describes "
                f"({card.channels} channel{'s' if card.channels > 1 else ''}, "
                f"{card.input_size[1]}x{card.input_size[0]} pixels): {reason}"
            ) from exc
        if card.features_only or card.num_classes is None:
            return
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            got = (
                "x".join(map(str, out.shape)) + " tensor"
                if isinstance(out, torch.Tensor)
                else type(out).__name__
            )
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
            raise ConvsightError(
                f"model '{self.card.name}' has no class scores "
                "(its weights are a feature stack only)"
            )
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
        self.module.to(device)
        return self
