"""``convsight data subset``: a reproducible train/test split of labelled images.

Sources: an ImageNet train tree (default: the study's five synsets), any ImageFolder tree, or
the Fashion-MNIST idx files. Each class is written to ``out/train/<class>/`` and
``out/test/<class>/``, and every file to ``out/manifest.json`` (:class:`SubsetResult`).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convsight.data.folder import scan_folder, scan_imagenet, split_files
from convsight.data.mnist import load_mnist
from convsight.errors import ConvsightError
from convsight.report import atomic_path, prepare_out_dir, safe_filename, unique_names, write_json
from convsight.report.notebook import MAX_TILES, Tile, file_tile
from convsight.studies.results import Result

FASHION_CLASSES = [
    "T-shirt-top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
EXAMPLES_SHOWN = 4
"""The most training images of a class the inline view shows."""
FASHION_DEFAULT = ["Trouser", "Pullover", "Sandal", "Bag", "Ankle boot"]


def _check_out_is_new(out: Path) -> None:
    for sub in ("train", "test", "manifest.json"):
        if (out / sub).exists():
            raise ConvsightError(f"{out} already holds a subset ({sub}); choose a new --out")


@dataclass(frozen=True)
class SubsetRequest:
    """One subset: the output folder, exactly one source (``imagenet_root`` with its
    ``synsets``, None: the study's five; ``from_folder``, an ImageFolder tree; or
    ``from_fashion_mnist``, the folder of the idx files), the ``classes`` kept (None: all;
    Fashion-MNIST: five), at most ``per_class`` images of each (None: all; Fashion-MNIST:
    578), the share of each class held out for testing and the seed. The source count, the
    share and ``per_class`` are checked when made."""

    out: str | os.PathLike
    imagenet_root: str | os.PathLike | None = None
    synsets: Sequence[str] | None = None
    from_folder: str | os.PathLike | None = None
    from_fashion_mnist: str | os.PathLike | None = None
    classes: Sequence[str] | None = None
    per_class: int | None = None
    test_fraction: float = 0.2
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        """One sentence for no source or several, or a share or count that cannot work."""
        sources = (self.imagenet_root, self.from_folder, self.from_fashion_mnist)
        _check_subset_request(sources, self.test_fraction, self.per_class)


@dataclass(kw_only=True)
class SubsetResult(Result):
    """The subset written: where it came from, its classes, each class's train and test
    counts, the settings, the files left out (unreadable) and the classes missing, and one
    entry per file (split, class, source, path); ``files``: every image and
    ``manifest.json``."""

    source: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    settings: dict[str, Any]
    skipped: list[dict[str, str]]
    missing: list[str]
    entries: list[dict[str, str]]

    def to_json(self) -> dict[str, Any]:
        """What ``manifest.json`` holds (``entries`` under ``files``)."""
        return {
            "source": self.source,
            "classes": self.classes,
            "counts": self.counts,
            "settings": self.settings,
            "skipped": self.skipped,
            "missing": self.missing,
            "files": self.entries,
        }

    def tiles(self) -> list[Tile]:
        """The first :data:`EXAMPLES_SHOWN` training images of each class (fewer a class when
        there are many classes), read from the files written; the class as caption."""
        each = max(1, min(EXAMPLES_SHOWN, MAX_TILES // max(1, len(self.classes))))
        shown: dict[str, int] = {}
        tiles = []
        for entry in self.entries:
            name = entry["class"]
            if entry["split"] != "train" or shown.get(name, 0) >= each:
                continue
            tile = file_tile(entry["path"], name)
            if tile is not None:
                shown[name] = shown.get(name, 0) + 1
                tiles.append(tile)
        return tiles

    def facts(self) -> list[tuple[str, Any]]:
        """The source, then each class's train and test counts (a line each)."""
        counts = [
            (name, ", ".join(f"{n} {split}" for split, n in split_counts.items()))
            for name, split_counts in self.counts.items()
        ]
        left_out = [("left out", f"{len(self.skipped)} unreadable, {len(self.missing)} missing")]
        return [("source", self.source), *left_out, *counts]


def make_subset(request: SubsetRequest) -> SubsetResult:
    """Write ``out/train/<class>/``, ``out/test/<class>/`` and ``out/manifest.json`` from
    the request's source. Unreadable files and absent or empty classes are reported in the
    manifest and left out; the split is seeded and reproducible."""
    r = request
    out = Path(r.out)
    _check_out_is_new(out)
    if r.from_fashion_mnist is not None:
        return _fashion_subset(
            out, Path(r.from_fashion_mnist), r.classes, r.per_class or 578, r.test_fraction, r.seed
        )
    scan, source = _scan_source(
        r.imagenet_root, r.synsets, r.from_folder, r.classes, r.show_progress
    )
    if len(scan.files) < 2:
        raise ConvsightError(
            f"fewer than two usable classes in {source}: " + "; ".join(scan.missing or ["none"])
        )
    files = _sample(scan.files, r.per_class, r.seed) if r.per_class is not None else scan.files
    splits = split_files(files, r.test_fraction, r.seed)
    class_dirs(splits["train"])
    out = prepare_out_dir(out)
    entries = _write_splits(
        out, splits, lambda path: path.name, str, lambda path, tmp: shutil.copyfile(path, tmp)
    )
    settings = {
        "synsets": r.synsets,
        "per_class": r.per_class,
        "test_fraction": r.test_fraction,
        "seed": r.seed,
    }
    return _write_manifest(out, source, splits, entries, scan.skipped, scan.missing, settings)


def _check_subset_request(sources: tuple, test_fraction: float, per_class: int | None) -> None:
    if sum(source is not None for source in sources) != 1:
        raise ConvsightError(
            "give exactly one source: --imagenet-root, --from-folder or --from-fashion-mnist"
        )
    if not 0 < test_fraction < 1:
        raise ConvsightError(
            f"--test-fraction must be between 0 and 1 (exclusive), not {test_fraction}"
        )
    if per_class is not None and per_class < 2:
        raise ConvsightError("--per-class must be at least 2")


def _scan_source(imagenet_root, synsets, from_folder, classes, show_progress: bool):
    """The readable files of each class in an ImageNet tree or an image folder, and a name
    for the source; classes asked for but absent are recorded as missing."""
    if imagenet_root is not None:
        scan = scan_imagenet(imagenet_root, synsets, show_progress=show_progress)
        return scan, f"ImageNet train tree {imagenet_root}"
    scan = scan_folder(from_folder, show_progress=show_progress)
    if classes:
        unknown = [c for c in classes if c not in scan.files and c not in scan.missing]
        if unknown:
            scan.missing += [f"class '{c}' not found" for c in unknown]
        scan.files = {c: f for c, f in scan.files.items() if c in classes}
    return scan, f"image folder {from_folder}"


def _fashion_subset(
    out: Path,
    folder: Path,
    classes: Sequence[str] | None,
    per_class: int,
    test_fraction: float,
    seed: int,
) -> SubsetResult:
    classes = classes or FASHION_DEFAULT
    lowered = [c.lower() for c in FASHION_CLASSES]
    unknown = [c for c in classes if c.lower() not in lowered]
    if unknown:
        raise ConvsightError(
            f"unknown Fashion-MNIST class(es) {', '.join(unknown)}; "
            f"classes: {', '.join(FASHION_CLASSES)}"
        )
    images, labels = load_mnist("train", folder)
    by_class = {}
    for name in classes:
        label = lowered.index(name.lower())
        by_class[FASHION_CLASSES[label]] = (labels == label).nonzero().flatten().tolist()
    splits = split_files(_sample(by_class, per_class, seed), test_fraction, seed)
    out = prepare_out_dir(out)
    from PIL import Image

    entries = _write_splits(
        out,
        splits,
        lambda index: f"{index:05d}.png",
        lambda index: f"fashion-mnist train[{index}]",
        lambda index, tmp: Image.fromarray(images[index].numpy()).save(tmp, format="PNG"),
    )
    settings = {
        "classes": classes,
        "per_class": per_class,
        "test_fraction": test_fraction,
        "seed": seed,
    }
    return _write_manifest(
        out, f"Fashion-MNIST idx files in {folder}", splits, entries, [], [], settings
    )


def _sample(items: dict[str, list], per_class: int, seed: int) -> dict[str, list]:
    """At most ``per_class`` items of each class, a seeded choice."""
    return {
        c: sorted(random.Random(f"{seed}:{c}").sample(v, min(per_class, len(v))))
        for c, v in items.items()
    }


def class_dirs(classes: Iterable[str]) -> dict[str, str]:
    """The folder of each class: its name made safe (spaces and common punctuation kept, so
    the folder name is the label training reads back). Two classes that would share a folder
    are an input error."""
    dirs: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name in classes:
        folder = safe_filename(name, max_length=200, readable=True)
        other = seen.setdefault(folder.casefold(), name)
        if other != name:
            raise ConvsightError(
                f"classes '{other}' and '{name}' would share the folder '{folder}'; rename one"
            )
        dirs[name] = folder
    return dirs


def _write_splits(out: Path, splits, file_name, source, write) -> list[dict[str, str]]:
    """Write every item to ``out/<split>/<class>/<file_name(item)>`` whole (both names made
    safe, file names distinct within a folder); the manifest rows."""
    entries = []
    dirs = class_dirs(splits["train"])
    for split, by_class in splits.items():
        for name, items in by_class.items():
            names = unique_names(
                [file_name(item) for item in items], max_length=200, readable=True, extension=True
            )
            for item, file in zip(items, names, strict=True):
                dest = out / split / dirs[name] / file
                with atomic_path(dest, within=out) as tmp:
                    write(item, tmp)
                entries.append(
                    {"split": split, "class": name, "source": source(item), "path": str(dest)}
                )
    return entries


def _write_manifest(out, source, splits, entries, skipped, missing, settings) -> SubsetResult:
    counts = {
        name: {split: len(splits[split].get(name, [])) for split in splits}
        for name in splits["train"]
    }
    result = SubsetResult(
        source=source, classes=sorted(counts), counts=counts, settings=settings,
        skipped=skipped, missing=missing, entries=entries,
    )  # fmt: skip
    manifest = write_json(out / "manifest.json", result.to_json())
    result.files = [Path(entry["path"]) for entry in entries] + [manifest]
    return result
