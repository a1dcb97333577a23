"""What the study reads: its inputs, checked before any work.

An input that is not given makes the parts that need it skip (with the reason in the report); an
input that is given but bad is an error before the output folder is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convsight.errors import ConvsightError

if TYPE_CHECKING:
    from convsight.models import Model

STUDY_CLASSES = ["ostrich", "goldfish", "lemon"]
FIVE_PHOTOS = ["goldfish", "ostrich", "green_snake", "Siberian_husky", "lemon"]

PathLike = str | os.PathLike


@dataclass
class PaperModels:
    """The models the parts share, each loaded once per run (None: not loaded yet): VGG16
    with ``--vgg16-weights`` and ``--classifier`` with its weights."""

    vgg16: Model | None = None
    classifier: Model | None = None


@dataclass(frozen=True)
class PaperInputs:
    """Everything ``convsight paper`` reads; each field is the flag of the same name."""

    data_dir: PathLike | None = None
    vgg16_weights: PathLike | None = None
    classifier: str = "mobilenet_v2"
    classifier_weights: PathLike | None = None
    photos: PathLike | None = None
    fashion_mnist: PathLike | None = None
    subset: PathLike | None = None

    @classmethod
    def of(cls, inputs: PaperInputs | None = None, **given: Any) -> PaperInputs:
        """``inputs``, or the inputs named by keyword (the flags' names)."""
        if inputs is not None and given:
            raise TypeError("pass a PaperInputs or keyword inputs, not both")
        return inputs if inputs is not None else cls(**given)

    def check(self) -> PaperModels:
        """Check every given input before any work: paths exist and can be read, weights load
        (``weights_only=True``) and fit, folders hold what the parts read, photo names parse.
        Returns the models loaded to check them, for the parts to share."""
        from convsight.data import load_mnist
        from convsight.models import load_model

        for name in ("data_dir", "photos", "fashion_mnist", "subset"):
            if getattr(self, name) is not None:
                _require(name, getattr(self, name), folder=True)
        for name in ("vgg16_weights", "classifier_weights"):
            if getattr(self, name) is not None:
                _require(name, getattr(self, name), folder=False)
        if self.data_dir is not None:
            for split in ("train", "test"):
                load_mnist(split, self.data_dir)
        models = PaperModels()
        if self.vgg16_weights is not None:
            models.vgg16 = load_model("vgg16", self.vgg16_weights)
        models.classifier = _check_classifier(self.classifier, self.classifier_weights)
        if self.photos is not None:
            _check_photos(self.photos)
        if self.subset is not None:
            _check_subset(Path(self.subset))
        if self.fashion_mnist is not None:
            _check_fashion(Path(self.fashion_mnist))
        return models


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _require(name: str, path: str | os.PathLike, folder: bool) -> Path:
    """``path`` of flag ``name`` exists, is a folder (or a file) and can be read."""
    path, flag = Path(path), _flag(name)
    if not path.exists():
        raise ConvsightError(f"{flag} {path} does not exist")
    if folder and not path.is_dir():
        raise ConvsightError(f"{flag} {path} is not a folder")
    if not folder and not path.is_file():
        raise ConvsightError(f"{flag} {path} is not a file")
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        raise ConvsightError(f"{flag} {path} cannot be read (permission denied)")
    return path


def photo_files(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """The photos of a ``--photos`` folder by lower-case ImageNet label; every image file must
    be named ``<synset>_<class name>.<ext>`` and the folder must hold no sub-folders."""
    from convsight.data.imagenet import imagenet_class_of
    from convsight.data.images import IMAGE_SUFFIXES
    from convsight.models.card import imagenet_labels

    folder = Path(folder)
    entries = sorted(folder.iterdir())
    subfolders = [p.name for p in entries if p.is_dir()]
    if subfolders:
        raise ConvsightError(
            f"--photos {folder} holds sub-folders ({', '.join(subfolders[:3])}); it takes a flat "
            "folder of ImageNet photos named <synset>_<class name>.JPEG"
        )
    labels = imagenet_labels()
    photos: dict[str, list[Path]] = {}
    for path in entries:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            index = imagenet_class_of(path)
        except ConvsightError:
            raise ConvsightError(
                f"photo {path.name} in --photos {folder} is not named <synset>_<class name>"
                f"{path.suffix} (e.g. n01443537_goldfish.JPEG)"
            ) from None
        photos.setdefault(labels[index].lower(), []).append(path)
    if not photos:
        raise ConvsightError(f"--photos {folder} holds no photos (.JPEG, .jpg, .png ...)")
    return photos


def _check_photos(photos: str | os.PathLike) -> None:
    from convsight.data import load_image

    found = photo_files(photos)
    missing = [c for c in STUDY_CLASSES if c.lower() not in found]
    if missing:
        raise ConvsightError(
            f"--photos {photos} has no photo of {', '.join(missing)} (the class means need "
            f"{', '.join(STUDY_CLASSES)})"
        )
    for name in {*STUDY_CLASSES, *FIVE_PHOTOS}:
        for path in found.get(name.replace("_", " ").lower(), []):
            load_image(path)  # a photo that cannot be decoded fails now, not after minutes


def _check_classifier(classifier: str, weights: str | os.PathLike | None) -> Model | None:
    """A classifier given with local weights (or as a checkpoint) loads now (returned) and
    knows the study's classes; a name alone must be one ``load_model`` accepts (its download
    is tried only when needed)."""
    from convsight.models import list_models, load_model

    if weights is None and not Path(classifier).is_file():
        if classifier not in list_models():
            raise ConvsightError(
                f"unknown --classifier '{classifier}' (`convsight models` lists the names)"
            )
        return None
    model = load_model(classifier, weights)
    for name in [*STUDY_CLASSES, *FIVE_PHOTOS]:
        model.class_index(name.replace("_", " "))
    return model


def _check_subset(subset: Path) -> None:
    from convsight.data.folder import class_folders
    from convsight.data.images import IMAGE_SUFFIXES

    for split in ("train", "test"):
        if not (subset / split).is_dir():
            raise ConvsightError(
                f"--subset {subset} has no {split}/ folder (make one with convsight data subset)"
            )
    classes = {split: class_folders(subset / split) for split in ("train", "test")}
    train, test = ([d.name for d in classes[split]] for split in ("train", "test"))
    if len(train) < 2 or train != test:
        raise ConvsightError(
            f"train/ and test/ of --subset {subset} must hold the same classes (at least two): "
            f"{train} vs {test}"
        )
    for folder in classes["train"] + classes["test"]:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            raise ConvsightError(f"--subset class folder {folder} holds no images")


def _check_fashion(folder: Path) -> None:
    from convsight.data import load_mnist
    from convsight.studies.subset import FASHION_CLASSES, FASHION_DEFAULT

    _, labels = load_mnist("train", folder)
    present = set(labels.tolist())
    missing = [c for c in FASHION_DEFAULT if FASHION_CLASSES.index(c) not in present]
    if missing:
        raise ConvsightError(
            f"--fashion-mnist {folder} has no images of class(es) {', '.join(missing)}"
        )
