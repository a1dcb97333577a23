"""The study end to end: every part its inputs allow, as an HTML report with the numbers.

Parts: 2, the MNIST CNN (accuracy, conv outputs of a 7); 3, VGG16 channels and class models
(paper preset beside the robust one); 4, the five-class study (an ImageNet subset when given,
else Fashion-MNIST as a labelled stand-in); and the related work made concrete (saliency,
DeconvNet, Grad-CAM). A part whose inputs are missing is skipped with a note saying why.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import convsight
from convsight.errors import ConvsightError
from convsight.models import load_model
from convsight.report import prepare_out_dir, write_json, write_text
from convsight.report.html import environment, write_page
from convsight.runtime import seed_everything

STUDY_CLASSES = ["ostrich", "goldfish", "lemon"]
FIVE_PHOTOS = ["goldfish", "ostrich", "green_snake", "Siberian_husky", "lemon"]


@dataclass
class Fig:
    src: str
    title: str
    caption: str
    settings: str = ""


@dataclass
class Section:
    id: str
    title: str
    text: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[Fig] = field(default_factory=list)


@dataclass
class Plan:
    """How much work each part does: the full study or a quick look."""

    mnist_epochs: int
    channels: int
    robust_steps: int | None
    robust_size: int | None
    class_steps: int | None
    subset_epochs: int
    subset_size: int
    backbone_size: int
    paper_size: int | None = None  # image side of the paper preset (None: the model's)
    class_size: int | None = None  # image side of the class models (None: the model's)
    mnist_train_limit: int | None = None


FULL = Plan(10, 16, None, None, None, 5, 224, 224)
QUICK = Plan(3, 8, 128, 160, 128, 3, 64, 96)


def _short(settings: dict[str, Any]) -> str:
    keys = (
        "preset",
        "steps",
        "size",
        "param",
        "decorrelate",
        "optimizer",
        "lr",
        "views",
        "l1",
        "jitter",
        "seed",
    )
    return ", ".join(f"{k}={settings[k]}" for k in keys if k in settings)


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
    from convsight.models.card import imagenet_labels
    from convsight.optvis.means import IMAGE_SUFFIXES

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


def _check_classifier(classifier: str, weights: str | os.PathLike | None) -> None:
    """A classifier given with local weights (or as a checkpoint) loads now and knows the
    study's classes; a name alone must be one ``load_model`` accepts (its download is tried
    only when needed)."""
    from convsight.models.zoo import list_models

    if weights is None and not Path(classifier).is_file():
        if classifier not in list_models():
            raise ConvsightError(
                f"unknown --classifier '{classifier}' (`convsight models` lists the names)"
            )
        return
    model = load_model(classifier, weights)
    for name in [*STUDY_CLASSES, *FIVE_PHOTOS]:
        model.class_index(name.replace("_", " "))


def _check_subset(subset: Path) -> None:
    from convsight.data.folder import IMAGE_SUFFIXES, class_folders

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
    from convsight.studies.five_class import FASHION_CLASSES, FASHION_DEFAULT

    _, labels = load_mnist("train", folder)
    present = set(labels.tolist())
    missing = [c for c in FASHION_DEFAULT if FASHION_CLASSES.index(c) not in present]
    if missing:
        raise ConvsightError(
            f"--fashion-mnist {folder} has no images of class(es) {', '.join(missing)}"
        )


def check_paper_inputs(
    data_dir: str | os.PathLike | None = None,
    vgg16_weights: str | os.PathLike | None = None,
    classifier: str = "mobilenet_v2",
    classifier_weights: str | os.PathLike | None = None,
    photos: str | os.PathLike | None = None,
    fashion_mnist: str | os.PathLike | None = None,
    subset: str | os.PathLike | None = None,
) -> None:
    """Check every given input before any work: paths exist and can be read, weights load
    (``weights_only=True``) and fit, folders hold what the parts read, photo names parse.

    An input that is not given makes its part skip (with the reason in the report); an input
    that is given but bad is an error here.
    """
    from convsight.data import load_mnist

    folders = {"data_dir": data_dir, "photos": photos, "fashion_mnist": fashion_mnist}
    files = {"vgg16_weights": vgg16_weights, "classifier_weights": classifier_weights}
    for name, path in {**folders, "subset": subset}.items():
        if path is not None:
            _require(name, path, folder=True)
    for name, path in files.items():
        if path is not None:
            _require(name, path, folder=False)
    if data_dir is not None:
        for split in ("train", "test"):
            load_mnist(split, data_dir)
    if vgg16_weights is not None:
        load_model("vgg16", vgg16_weights)
    _check_classifier(classifier, classifier_weights)
    if photos is not None:
        _check_photos(photos)
    if subset is not None:
        _check_subset(Path(subset))
    if fashion_mnist is not None:
        _check_fashion(Path(fashion_mnist))


def run_paper(
    out: Path,
    quick: bool = False,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    vgg16_weights: str | os.PathLike | None = None,
    classifier: str = "mobilenet_v2",
    classifier_weights: str | os.PathLike | None = None,
    photos: str | os.PathLike | None = None,
    fashion_mnist: str | os.PathLike | None = None,
    subset: str | os.PathLike | None = None,
    show_progress: bool = True,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """Run the study; write ``out/index.html``, the figures and ``out/results.json``.

    ``plan`` overrides how much work each part does (default: ``QUICK`` or ``FULL``).
    """
    check_paper_inputs(
        data_dir=data_dir,
        vgg16_weights=vgg16_weights,
        classifier=classifier,
        classifier_weights=classifier_weights,
        photos=photos,
        fashion_mnist=fashion_mnist,
        subset=subset,
    )
    plan = plan or (QUICK if quick else FULL)
    _classifier.cache_clear()
    out = prepare_out_dir(out)
    seed_everything(seed)
    start = time.perf_counter()
    ctx = _Context(out, plan, seed, show_progress)
    results: dict[str, Any] = {"settings": {"quick": quick, "seed": seed, **asdict(plan)}}
    sections = [
        _part2(ctx, results, data_dir),
        _part3_channels(ctx, results, vgg16_weights),
        _part3_classes(ctx, results, classifier, classifier_weights, photos),
        _part4(ctx, results, subset, fashion_mnist, classifier, classifier_weights),
        _related(ctx, results, classifier, classifier_weights, photos),
    ]
    seconds = time.perf_counter() - start
    results["seconds"] = seconds
    write_text(out / "style.css", environment().get_template("style.css").render())
    write_page(
        out / "index.html",
        "paper.html",
        root="",
        version=convsight.__version__,
        quick=quick,
        seed=seed,
        seconds=seconds,
        table=_table(results),
        sections=sections,
    )
    write_json(out / "results.json", results)
    return results


@dataclass
class _Context:
    out: Path
    plan: Plan
    seed: int
    show_progress: bool

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.out))


def _skip(section: Section, results: dict, key: str, exc: Exception) -> Section:
    section.notes.append(f"Skipped: {exc}")
    results[key] = {"skipped": str(exc)}
    return section


def _part2(ctx: _Context, results: dict, data_dir) -> Section:
    from convsight.studies.mnist import STUDY_ACCURACY, train_mnist, write_activations

    section = Section("part2", "Part 2 — the MNIST CNN and its conv outputs for a 7")
    folder = ctx.out / "part2"
    try:
        run = train_mnist(
            folder / "mnist",
            stride=2,
            padding="same",
            epochs=ctx.plan.mnist_epochs,
            train_limit=ctx.plan.mnist_train_limit,
            data_dir=data_dir,
            seed=ctx.seed,
            show_progress=ctx.show_progress,
        )
    except ConvsightError as exc:
        return _skip(section, results, "mnist", exc)
    written = write_activations(
        str(folder / "mnist" / "model.pt"),
        data_dir=data_dir,
        out=folder / "activations",
        seed=ctx.seed,
    )
    acc = run["test_accuracy"]
    results["mnist"] = {
        "test_accuracy": acc,
        "study": STUDY_ACCURACY,
        "history": run["history"],
        "settings": run["settings"],
        "seconds": run["seconds"],
    }
    settings = (
        f"mnist-cnn stride 2, padding same, Adam lr 1e-3, batch 128, "
        f"{ctx.plan.mnist_epochs} epochs, seed {ctx.seed}"
    )
    section.text.append(
        f"The study's network (conv 32 → pool → conv 64 → pool → dense 128 + dropout 0.3 → "
        f"dense 10, Adam, cross-entropy) reaches test accuracy {acc:.4f}; the study reports 0.982."
    )
    section.figures.append(
        Fig(
            ctx.rel(folder / "mnist" / "training_curves.png"),
            "Training curves",
            "Accuracy and loss per epoch.",
            settings,
        )
    )
    for path in written:
        if path.suffix == ".png" and path.stem.startswith("features"):
            section.figures.append(
                Fig(
                    ctx.rel(path),
                    f"Figure 2.2: outputs of {path.stem} for a 7",
                    "One tile per channel, each scaled to its own range "
                    "(the first 7 of the MNIST test set).",
                    settings,
                )
            )
    return section


def _part3_channels(ctx: _Context, results: dict, vgg16_weights) -> Section:
    from convsight.studies.optvis import maximize

    section = Section("part3-channels", "Part 3 — what VGG16's channels want (figures 3.2.1–3.2.3)")
    try:
        model = load_model("vgg16", vgg16_weights)
    except ConvsightError as exc:
        return _skip(section, results, "vgg16_channels", exc)
    section.text.append(
        "For each channel, gradient ascent on the input maximizes the channel's mean activation. "
        "Paper preset: start from N(0,1) noise, 20 steps of plain gradient ascent (step 0.5, "
        "L1 0.1), as the study. Robust preset: Fourier parameterization with decorrelated "
        "colour, jitter/scale/rotate, Adam."
    )
    section.notes.append(f"VGG16 weights used: {model.card.source or model.card.name}.")
    rows = {}
    channels = list(range(ctx.plan.channels))
    for layer, name in (("features.0", "first"), ("features.2", "second"), ("features.28", "last")):
        for preset in ("paper", "robust"):
            flags = (
                {"size": ctx.plan.paper_size}
                if preset == "paper"
                else {"steps": ctx.plan.robust_steps, "size": ctx.plan.robust_size}
            )
            folder = ctx.out / "part3" / f"{layer}-{preset}"
            summary = maximize(
                "vgg16",
                layer,
                channels,
                weights=vgg16_weights,
                preset=preset,
                flags=flags,
                out=folder,
                seed=ctx.seed,
                show_progress=ctx.show_progress,
            )
            rows[f"{layer}/{preset}"] = {
                "dead_channels": summary["dead_channels"],
                "objective": [c["objective"] for c in summary["channels"]],
                "seconds": summary["seconds"],
                "settings": summary["settings"],
            }
            dead = summary["dead_channels"]
            section.figures.append(
                Fig(
                    ctx.rel(folder / "grid.png"),
                    f"{layer} ({name} conv layer), {preset} preset",
                    f"Channels {channels[0]}–{channels[-1]}; dead (activation stays 0, skipped): "
                    f"{', '.join(map(str, dead)) or 'none'}.",
                    f"model {model.card.name}; layer {layer}; {_short(summary['settings'])}",
                )
            )
    results["vgg16_channels"] = rows
    return section


@functools.cache
def _classifier(classifier: str, weights) -> tuple[str, Any, str | None]:
    """The model for class scores: VGG16 with its ImageNet classifier, else ``classifier``."""
    try:
        load_model("vgg16")
        return "vgg16", None, None
    except ConvsightError:
        load_model(classifier, weights)
        return (
            classifier,
            weights,
            (
                "VGG16's ImageNet classifier weights are unavailable here (download failed), "
                f"so the class models use {classifier}"
                + (f" with weights {Path(weights).name}" if weights else "")
                + " instead."
            ),
        )


def _part3_classes(ctx: _Context, results: dict, classifier, weights, photos) -> Section:
    from convsight.studies.optvis import classviz

    section = Section(
        "part3-classes",
        "Part 3 — class models of ostrich, goldfish and lemon (figures 3.3.1–3.3.3)",
    )
    try:
        spec, spec_weights, note = _classifier(classifier, weights)
    except ConvsightError as exc:
        return _skip(section, results, "class_models", exc)
    if note:
        section.notes.append(note)
    section.text.append(
        "Each image maximizes the class score before softmax (minus an L1 penalty in the paper "
        "preset: step 0.5, alpha 0.1), from random noise or from the class-mean image."
    )
    inits = ["random"] + (["mean"] if photos is not None else [])
    if photos is None:
        section.notes.append("No --photos folder given: mean initialization skipped.")
    else:
        section.notes.append(
            "The class mean here is the mean of the photos of that class in "
            f"{Path(photos).name}: a single photo per class, not the study's mean over a dataset."
        )
    rows = {}
    for init in inits:
        for preset in ("paper", "robust"):
            folder = ctx.out / "part3" / f"classes-{init}-{preset}"
            flags = {"size": ctx.plan.class_size}
            if preset != "paper":
                flags["steps"] = ctx.plan.class_steps
            summary = classviz(
                spec,
                STUDY_CLASSES,
                weights=spec_weights,
                init=init,
                dataset=photos if init == "mean" else None,
                preset=preset,
                flags=flags,
                out=folder,
                seed=ctx.seed,
                show_progress=ctx.show_progress,
            )
            rows[f"{init}/{preset}"] = {
                c["name"]: {"probability": c["probability"], "model_top1": c["model_top1"]}
                for c in summary["classes"]
            }
            recognised = sum(c["model_top1"] == c["name"] for c in summary["classes"])
            section.figures.append(
                Fig(
                    ctx.rel(folder / "grid.png"),
                    f"Class models, {init} initialization, {preset} preset",
                    f"Titles give the model's softmax probability of the class; "
                    f"{recognised}/{len(STUDY_CLASSES)} are the model's top-1 class.",
                    f"model {spec}; {_short(summary['settings'])}",
                )
            )
            if init == "mean" and (folder / "start.png").exists() and preset == "paper":
                section.figures.append(
                    Fig(
                        ctx.rel(folder / "start.png"),
                        "Mean-initialization start images",
                        "What the mean initialization starts from.",
                        "",
                    )
                )
    results["class_models"] = {"model": spec, "note": note, "runs": rows}
    return section


def _part4(ctx: _Context, results: dict, subset, fashion, classifier, weights) -> Section:
    from convsight.studies.five_class import STUDY, make_subset, train_subset
    from convsight.studies.optvis import classviz

    section = Section("part4", "Part 4 — a self-built five-class CNN (figure 4.2)")
    folder = ctx.out / "part4"
    if subset is not None:
        data, label = Path(subset), "the given ImageNet subset"
        size = ctx.plan.subset_size
    elif fashion is not None:
        data, label = folder / "data", "five classes of Fashion-MNIST"
        make_subset(data, from_fashion_mnist=fashion, seed=ctx.seed, show_progress=False)
        size = ctx.plan.subset_size
        section.notes.append(
            "Stand-in: there is no ImageNet on this machine, so the five-class study runs on five "
            "Fashion-MNIST classes (real photos of products, 28x28 grey, ~578 images per class "
            "like the study's subset) instead of goldfish, Siberian husky, lemon, ostrich and "
            "green snake. The pipeline is the same; the numbers are not comparable to the study's."
        )
    else:
        return _skip(
            section,
            results,
            "five_class",
            ConvsightError("no --subset and no --fashion-mnist folder given"),
        )
    self_built = train_subset(
        data,
        folder / "self-built",
        epochs=ctx.plan.subset_epochs,
        image_size=size,
        seed=ctx.seed,
        show_progress=ctx.show_progress,
    )
    entry: dict[str, Any] = {"data": label, "self_built": _accuracies(self_built), "study": STUDY}
    section.text.append(
        f"The self-built CNN (4 conv blocks 32/64/128/128 with batch norm and max pooling, dense "
        f"128 + dropout 0.3, dense 5) trained {ctx.plan.subset_epochs} epochs on {label}: "
        f"train {self_built['train_accuracy']:.3f}, test {self_built['test_accuracy']:.3f} "
        "(the study: 0.879 and 0.801)."
    )
    try:
        spec, spec_weights, _ = _classifier(classifier, weights)
        tuned = train_subset(
            data,
            folder / "fine-tuned",
            model=spec,
            finetune=True,
            weights=spec_weights,
            epochs=ctx.plan.subset_epochs,
            image_size=ctx.plan.backbone_size,
            seed=ctx.seed,
            show_progress=ctx.show_progress,
        )
        entry["fine_tuned"] = {"model": spec, **_accuracies(tuned)}
        section.text.append(
            f"A pretrained {spec} with a new 5-way head (features frozen): test "
            f"{tuned['test_accuracy']:.3f} (the study's fine-tuned VGG16: 0.927)."
        )
    except ConvsightError as exc:
        section.notes.append(f"No pretrained backbone for the comparison: {exc}")
    for run in ("self-built", "fine-tuned"):
        if (folder / run / "confusion_matrix.png").exists():
            section.figures.append(
                Fig(
                    ctx.rel(folder / run / "confusion_matrix.png"),
                    f"Confusion matrix, {run}",
                    f"Test split of {label}.",
                    "",
                )
            )
    for preset in ("paper", "robust"):
        out = folder / f"classes-{preset}"
        flags = {} if preset == "paper" else {"steps": ctx.plan.class_steps}
        summary = classviz(
            str(folder / "self-built" / "model.pt"),
            ["all"],
            preset=preset,
            flags=flags,
            out=out,
            seed=ctx.seed,
            show_progress=ctx.show_progress,
        )
        section.figures.append(
            Fig(
                ctx.rel(out / "grid.png"),
                f"Figure 4.2: class models of the self-built CNN, {preset} preset",
                "From random initialization; titles give the model's probability.",
                f"model five-class-cnn ({label}); {_short(summary['settings'])}",
            )
        )
    results["five_class"] = entry
    return section


def _accuracies(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "train_accuracy": run["train_accuracy"],
        "test_accuracy": run["test_accuracy"],
        "per_class_accuracy": run["per_class_accuracy"],
        "settings": run["settings"],
    }


def _related(ctx: _Context, results: dict, classifier, weights, photos) -> Section:
    from convsight.studies.attribution import write_saliency

    section = Section("related", "Related work made concrete — saliency, DeconvNet, Grad-CAM")
    if photos is None:
        return _skip(section, results, "attribution", ConvsightError("no --photos folder given"))
    by_label = photo_files(photos)
    labels = {name: name.replace("_", " ").lower() for name in FIVE_PHOTOS}
    found = [(name, by_label[labels[name]][0]) for name in FIVE_PHOTOS if labels[name] in by_label]
    absent = [name.replace("_", " ") for name in FIVE_PHOTOS if labels[name] not in by_label]
    if not found:
        return _skip(
            section,
            results,
            "attribution",
            ConvsightError(f"none of the five classes' photos is in {photos}"),
        )
    if absent:
        section.notes.append(f"No photo of {', '.join(absent)} in {Path(photos).name}: not shown.")
    try:
        spec, spec_weights, note = _classifier(classifier, weights)
    except ConvsightError as exc:
        return _skip(section, results, "attribution", exc)
    if note:
        section.notes.append(note.replace("class models", "maps"))
    methods = ["saliency", "deconvnet", "guided", "gradcam"]
    folder = ctx.out / "related"
    write_saliency(
        spec,
        [f for _, f in found],
        weights=spec_weights,
        target=[n.replace("_", " ") for n, _ in found],
        methods=methods,
        out=folder,
        seed=ctx.seed,
        show_progress=ctx.show_progress,
    )
    summary = json.loads((folder / "saliency.json").read_text())
    section.text.append(
        "Image-specific class saliency (Simonyan et al. 2014: the largest absolute gradient of "
        "the class score over the colour channels), DeconvNet (Zeiler & Fergus 2014), guided "
        "backpropagation and Grad-CAM for the photo of each of the five classes, with the true "
        "class as target."
    )
    section.figures.append(
        Fig(
            ctx.rel(folder / "saliency.png"),
            "Attribution maps for the five classes",
            "Rows: photos (with the model's probability of the true class); columns: methods.",
            f"model {spec}; "
            + "; ".join(
                f"{m}: {summary['methods'][m]['options']}"
                for m in methods
                if m in summary["methods"]
            ),
        )
    )
    results["attribution"] = {
        "model": spec,
        "images": summary["images"],
        "target_probability": summary["target_probability"],
        "methods": list(summary["methods"]),
    }
    return section


def _table(results: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    mnist = results.get("mnist", {})
    if "test_accuracy" in mnist:
        rows.append(
            {
                "what": "MNIST CNN test accuracy",
                "study": "0.982",
                "measured": f"{mnist['test_accuracy']:.4f}",
                "how": f"stride 2, same padding, {mnist['settings']['epochs']} epochs",
            }
        )
    five = results.get("five_class", {})
    if "self_built" in five:
        rows.append(
            {
                "what": "self-built CNN train accuracy",
                "study": "0.879",
                "measured": f"{five['self_built']['train_accuracy']:.3f}",
                "how": five["data"],
            }
        )
        rows.append(
            {
                "what": "self-built CNN test accuracy",
                "study": "0.801",
                "measured": f"{five['self_built']['test_accuracy']:.3f}",
                "how": five["data"],
            }
        )
    if "fine_tuned" in five:
        rows.append(
            {
                "what": "pretrained network test accuracy",
                "study": "0.927 (VGG16)",
                "measured": f"{five['fine_tuned']['test_accuracy']:.3f}",
                "how": f"{five['fine_tuned']['model']}, new head, {five['data']}",
            }
        )
    channels = results.get("vgg16_channels", {})
    for key, row in channels.items() if isinstance(channels, dict) else []:
        if key.endswith("/paper") and isinstance(row, dict) and "dead_channels" in row:
            rows.append(
                {
                    "what": f"VGG16 {key.split('/')[0]}: dead channels (paper preset)",
                    "study": "some channels stay at 0 and are skipped",
                    "measured": f"{len(row['dead_channels'])} of {len(row['objective'])}",
                    "how": "activation exactly 0 during the first steps",
                }
            )
    for key, value in results.items():
        if isinstance(value, dict) and "skipped" in value:
            rows.append({"what": key, "study": "–", "measured": "skipped", "how": value["skipped"]})
    return rows
