"""What an atlas renders, checked before anything is written: :class:`AtlasJob`."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from convsight.data.images import ImageStream, image_files, load_image_tensor, load_readable_images
from convsight.errors import ConvsightError
from convsight.layers import check_layers, forward_to, map_layer_names
from convsight.models import Model, ModelCard
from convsight.optvis.budget import RenderRequest, check_render, render_cost
from convsight.optvis.objectives import channel
from convsight.optvis.render import parse_channels, settings_for
from convsight.optvis.settings import RenderSettings, cheap_settings
from convsight.runtime import bf16_is_fast, seed_everything

if TYPE_CHECKING:
    from convsight.studies.atlas.request import AtlasRequest, Compression


@dataclass
class AtlasDataset:
    """The images an atlas finds top examples in, never all held at once: the readable files
    (image ``i`` is ``files[i]``), their names (paths relative to the dataset folder), the
    files left out as unreadable, the card that decodes them and a fingerprint of the names
    and pixels (``digest``, taken as the files were checked). :meth:`batches` and
    :meth:`load` decode images when they are needed."""

    path: str | os.PathLike
    files: list[Path]
    names: list[str]
    skipped: list
    card: ModelCard
    digest: str

    def __len__(self) -> int:
        return len(self.files)

    def sha256(self) -> str:
        """A fingerprint of the names and pixels."""
        return self.digest

    def load(self, indices: Sequence[int]) -> torch.Tensor:
        """The pixels of images ``indices`` (k x C x H x W), decoded now."""
        return torch.cat([load_image_tensor(self.files[i], self.card) for i in indices])

    def batches(
        self, start: int = 0, stop: int | None = None, size: int = 16
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Images ``start`` to ``stop``, ``size`` at a time: their indices and pixels."""
        stop = len(self) if stop is None else stop
        for first in range(start, stop, size):
            indices = list(range(first, min(first + size, stop)))
            yield torch.tensor(indices), self.load(indices)


@dataclass
class AtlasJob:
    """One atlas run with every input checked: the model, the channels of each layer, the
    render settings of each preset and the dataset (if any)."""

    model: Model
    spec: str | None
    weights: str | os.PathLike | None
    layers: list[str]
    chosen: dict[str, list[int]]
    selection: str | None
    """The channels as recorded (``"0-7,9"``); None: every channel."""
    presets: list[str]
    settings: dict[str, RenderSettings]
    steps: int | None
    size: int | None
    seed: int
    top_k: int
    batch: int
    dataset: AtlasDataset | None
    invariances: float = 0.0
    """Softplus beta of each channel's first invariance (0: none)."""
    compression: Compression | None = None
    cheap: bool = False
    """Channels rendered the cheap way (:func:`convsight.optvis.settings.cheap_settings`)."""
    cheap_note: str = ""
    """What of the cheap way did not apply here, and why."""
    class_relevance: bool = True
    """The dataset pass also sums each channel's relevance per predicted class (models with
    class scores)."""

    @property
    def names(self) -> list[str]:
        """The names of the dataset images (none without a dataset)."""
        return self.dataset.names if self.dataset is not None else []


def check_inputs(model: Model, request: AtlasRequest) -> AtlasJob:
    """The job :func:`convsight.studies.atlas.build_atlas` runs; a bad input fails in one
    sentence (the model is run once, the dataset read)."""
    r = request
    layers, presets = _distinct(r.layers), _distinct(r.presets)
    if not layers:
        raise ConvsightError("give at least one layer (--layers)")
    if not presets:
        raise ConvsightError("give at least one preset (--presets paper,robust)")
    if r.top_k < 1 or r.batch < 1:
        raise ConvsightError("--top-k and --batch must be at least 1")
    settings = {p: settings_for(p, steps=r.steps, size=r.size) for p in presets}
    cheap_note = ""
    if r.cheap:
        native = bf16_is_fast(model.device)
        for p in presets:
            settings[p], cheap_note = cheap_settings(settings[p], native)
    seed_everything(r.seed)
    if [name.lower() for name in layers] == ["all"]:
        layers = map_layer_names(model.module, model.example_input())
        if not layers:
            raise ConvsightError(
                f"model '{model.card.name}' has no convolution, activation or pooling layer "
                "that outputs channel maps (--layers all)"
            )
    selection, chosen = _channels_of_layers(model, layers, r.channels)
    given = [*(["size"] if r.size is not None else []), *(["steps"] if r.steps else []), "batch"]
    check_atlas_memory(model, chosen, settings, r.batch, given)
    _check_render_size(model, layers, {s.size for s in settings.values()})
    _check_extras(model, r.invariances, r.compression, r.seed)
    return AtlasJob(
        model=model,
        spec=r.model_spec,
        weights=r.weights,
        layers=layers,
        chosen=chosen,
        selection=selection,
        presets=presets,
        settings=settings,
        steps=r.steps,
        size=r.size,
        seed=r.seed,
        top_k=r.top_k,
        batch=r.batch,
        dataset=_read_dataset(model, r.dataset) if r.dataset is not None else None,
        invariances=r.invariances,
        compression=r.compression,
        cheap=r.cheap,
        cheap_note=cheap_note,
        class_relevance=r.class_relevance,
    )


def check_atlas_memory(
    model: Model,
    chosen: dict[str, list[int]],
    settings: dict[str, RenderSettings],
    batch: int,
    given: Sequence[str] = (),
) -> None:
    """The atlas's heaviest render (a chunk of up to ``batch`` channels of one layer, with one
    preset) must fit in the memory available; else one sentence naming the largest of the
    ``given`` knobs (size, steps, batch) that fits (:func:`convsight.optvis.budget.check_render`).
    One forward pass per layer at the model's input size."""
    first = next(iter(settings.values()))
    worst = None
    for name, chans in chosen.items():
        rows = min(batch, len(chans))
        objective = channel(name, chans[:rows])
        cost = render_cost(model, objective, first)
        for preset, s in settings.items():
            each = dataclasses.replace(cost, pad=s.pad, chunk=s.chunk)
            peak = RenderRequest.of(model, s, rows, given).peak(each)
            if worst is None or peak > worst[0]:
                worst = (peak, f"{name}, preset {preset}", objective, s, rows, each)
    if worst is not None:
        _, what, objective, s, rows, cost = worst
        check_render(model, objective, s, rows, what, given, "--batch", "channels", cost)


def _check_extras(
    model: Model, invariances: float, compression: Compression | None, seed: int
) -> None:
    """The invariances need a surrogate (a beta above 0 and a ReLU to replace); the
    compression trials need data labelled with the model's classes."""
    if invariances:
        from convsight.analysis.surrogate import softplus_surrogate

        softplus_surrogate(model, invariances)
    if compression is not None:
        from convsight.studies.compression import check_compression

        c = compression
        check_compression(model, c.data, c.finetune_images, c.test_images, seed)


def _channels_of_layers(
    model: Model, layers: list[str], channels: str | Sequence[int] | None
) -> tuple[str | None, dict[str, list[int]]]:
    """The layers' channels to render (see :func:`chosen_channels`); each layer must exist
    and output channel maps."""
    check_layers(model.module, layers)
    with torch.no_grad():
        outputs = forward_to(model.module, model.example_input(), list(layers))
    for name, value in outputs.items():
        if value.dim() != 4:
            raise ConvsightError(f"layer '{name}' outputs {tuple(value.shape[1:])}, not channels")
    return chosen_channels(channels, {name: int(value.shape[1]) for name, value in outputs.items()})


def _read_dataset(model: Model, dataset: str | os.PathLike) -> AtlasDataset:
    """The readable images of the dataset folder, for the model: every file decoded once to
    check it and take the fingerprint, a chunk at a time (none kept)."""
    root, digest = Path(dataset), hashlib.sha256()
    stream = ImageStream(dataset_images(dataset), model.card, 16, "image of the dataset")
    for chunk in stream:
        for path, pixels in zip(chunk.files, chunk.pixels, strict=True):
            digest.update(f"{path.relative_to(root)}\n".encode())
            digest.update(pixels.contiguous().numpy().tobytes())
    names = [str(path.relative_to(root)) for path in stream.kept]
    return AtlasDataset(dataset, stream.kept, names, stream.skipped, model.card, digest.hexdigest())


def dataset_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder`` (flat or one level of class folders), sorted."""
    return image_files(folder, "dataset folder", recursive=True)


def load_dataset(
    model: Model, files: Sequence[Path], root: Path
) -> tuple[torch.Tensor, list[str], list]:
    """Pixels of every readable file for the model; unreadable ones are reported and left out.

    Names are paths relative to ``root`` (so a class folder shows as ``class/file``).
    """
    pixels, kept, skipped = load_readable_images(files, model.card, "image of the dataset")
    return pixels, [str(path.relative_to(root)) for path in kept], skipped


def chosen_channels(
    channels: str | Sequence[int] | None, counts: dict[str, int]
) -> tuple[str | None, dict[str, list[int]]]:
    """The channels to render of each layer (every one when ``channels`` is None) and the
    selection as recorded (``"0-7,9"``); a channel a layer lacks fails in one sentence."""
    if channels is None:
        return None, {name: list(range(count)) for name, count in counts.items()}
    text = channels if isinstance(channels, str) else ",".join(str(int(c)) for c in channels)
    chosen = {}
    for name, count in counts.items():
        try:
            chosen[name] = sorted(parse_channels(text, limit=count))
        except ConvsightError as exc:
            raise ConvsightError(f"{exc} (--channels, layer '{name}')") from None
    first = next(iter(chosen.values()))
    runs: list[list[int]] = []
    for c in first:
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs), chosen


def _distinct(values: Sequence[str]) -> list[str]:
    """Stripped, blank ones dropped, each once, in the order given."""
    return list(dict.fromkeys(v.strip() for v in values if v and v.strip()))


def _check_render_size(model: Model, layers: Sequence[str], sizes: set[int | None]) -> None:
    """Every layer must give a channel map at every render size (one small forward each)."""
    for size in sorted(s for s in sizes if s is not None and (s, s) != model.card.input_size):
        x = torch.zeros(1, model.card.channels, size, size, device=model.device)
        try:
            with torch.no_grad():
                outputs = forward_to(model.module, x, list(layers))
        except ConvsightError:
            raise
        except Exception as exc:  # the module says why in its own words
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise ConvsightError(
                f"model '{model.card.name}' does not run on {size}x{size} images up to the "
                f"atlas layers ({reason}); give another --size"
            ) from exc
        for name, value in outputs.items():
            if value.dim() != 4 or min(value.shape[-2:]) < 1:
                raise ConvsightError(f"layer '{name}' has no channel map at --size {size}")
