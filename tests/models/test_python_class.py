"""The user's own nn.Module class from the command line: `--arch FILE.py:Class` or
`--arch package.module:Class` with `--arch-args JSON`, recorded in the card, loaded from the card
alone by every command, and refused in one sentence where it cannot be."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from convsight.cli import app
from convsight.errors import ConvsightError
from convsight.models import load_model
from convsight.models.python_class import MODULE_PREFIX, build_module

runner = CliRunner()

NET = '''
import torch
from torch import nn

from blocks import Block  # a sibling module: its folder is on sys.path while importing


class SpecNet(nn.Module):
    """A grey 1x40x120 spectrogram CNN."""

    def __init__(self, classes: int = 3, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            Block(1, width), nn.MaxPool2d(2), Block(width, 2 * width), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


class Renamed(SpecNet):
    """Same shapes, another name for its head: the weights miss and add keys."""

    def __init__(self, classes: int = 3):
        super().__init__(classes)
        self.classifier = self.head
        del self.head

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        raise RuntimeError("no GPU here")


def helper():
    return 1
'''

BLOCKS = """
from torch import nn


class Block(nn.Sequential):
    def __init__(self, a, b):
        super().__init__(nn.Conv2d(a, b, 3, padding=1), nn.ReLU())
"""

CARD_FLAGS = [
    "--input-size",
    "40x120",
    "--input-channels",
    "1",
    "--mean",
    "0.5",
    "--std",
    "0.25",
]


def run(*args: object, cwd: Path | None = None):
    here = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(here)


def one_line_error(result, fragment: str) -> str:
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def write_net(folder: Path, classes: int = 5) -> dict[str, torch.Tensor]:
    """net.py and its sibling blocks.py in ``folder``, and spec.pt: a SpecNet's state dict."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.py").write_text(NET)
    (folder / "blocks.py").write_text(BLOCKS)
    (folder / "labels.txt").write_text("\n".join("abcdefg"[:classes]) + "\n")
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        import net  # type: ignore[import-not-found]

        torch.manual_seed(0)
        state = net.SpecNet(classes=classes).state_dict()
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("net", None)
        sys.modules.pop("blocks", None)
    torch.save(state, folder / "spec.pt")
    return state


@pytest.fixture(scope="module")
def carded(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """spec.pt with the card `convsight card --arch net.py:SpecNet` wrote beside it."""
    folder = tmp_path_factory.mktemp("spec")
    state = write_net(folder)
    result = run(
        "card",
        f"{folder.name}/spec.pt",  # paths relative to the working folder, as typed
        "--arch",
        f"{folder.name}/net.py:SpecNet",
        "--arch-args",
        '{"classes": 5}',
        "--labels",
        f"{folder.name}/labels.txt",
        *CARD_FLAGS,
        cwd=folder.parent,
    )
    assert result.exit_code == 0, result.output
    assert "python:net.py:SpecNet" in result.stdout
    return folder / "spec.pt", state


def assert_same_weights(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = module.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_card_records_the_class_and_its_keywords(carded):
    spec, state = carded
    card = json.loads(spec.with_suffix(".json").read_text())
    assert card["arch"] == "python:net.py:SpecNet"  # relative to the card's folder
    assert card["arch_options"] == {"classes": 5}
    assert card["input"]["size"] == [40, 120] and card["input"]["channels"] == 1
    assert card["num_classes"] == 5 and card["labels"] == list("abcde")
    model = load_model(spec)
    assert type(model.module).__name__ == "SpecNet" and model.card.num_classes == 5
    assert_same_weights(model.module, state)
    # nothing of the user's code is left where it could shadow a package
    assert "blocks" not in sys.modules and "net" not in sys.modules
    assert not [name for name in sys.modules if name.startswith(MODULE_PREFIX)]
    assert str(spec.parent) not in sys.path


@pytest.mark.slow
def test_layers_and_maximize_from_the_card_alone(carded, tmp_path):
    spec, _ = carded
    layers = run("layers", spec)
    assert layers.exit_code == 0, layers.output
    assert "features.2.0" in layers.stdout and "head" in layers.stdout
    assert "16x20x60" in layers.stdout  # the second block's output, 1x40x120 pooled once
    out = tmp_path / "max"
    result = run(
        "maximize",
        spec,
        "--layer",
        "features.2.0",
        "--channels",
        "0-1",
        "--steps",
        "2",
        "--preset",
        "paper",
        "--out",
        out,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert (out / "channel_0001.png").is_file() and (out / "summary.json").is_file()


def test_a_card_moved_with_its_checkpoint_and_code_still_loads(carded, tmp_path):
    spec, state = carded
    moved = tmp_path / "elsewhere" / "spec"
    shutil.copytree(spec.parent, moved)
    assert_same_weights(load_model(moved / "spec.pt").module, state)
    (moved / "net.py").unlink()
    with pytest.raises(ConvsightError, match="net.py, which is not in the card's folder"):
        load_model(moved / "spec.pt")


@pytest.mark.slow
def test_a_card_runs_no_code_outside_its_folder(carded, tmp_path):
    spec, _ = carded
    folder = tmp_path / "outside"
    folder.mkdir()
    shutil.copy(spec, folder / "spec.pt")
    card = json.loads(spec.with_suffix(".json").read_text())
    card["arch"] = f"python:../{spec.parent.name}/net.py:SpecNet"
    (folder / "spec.json").write_text(json.dumps(card))
    one_line_error(run("layers", folder / "spec.pt"), "names code outside its folder")
    card["arch"] = f"python:{spec.parent / 'net.py'}:SpecNet"  # an absolute path
    (folder / "spec.json").write_text(json.dumps(card))
    one_line_error(run("layers", folder / "spec.pt"), "names code outside its folder")
    # named on the command line, the same file runs: the user named it
    named = run("layers", folder / "spec.pt", "--arch", f"{spec.parent / 'net.py'}:SpecNet")
    assert named.exit_code == 0, named.output
    # and `convsight card` does not record a file that the card could not run
    (folder / "spec.json").unlink()
    refused = run("card", folder / "spec.pt", "--arch", f"{spec.parent / 'net.py'}:SpecNet")
    one_line_error(refused, "a card runs only code that lives beside it")
    assert not (folder / "spec.json").exists()


def test_only_modules_imported_from_the_files_folder_are_forgotten(tmp_path, monkeypatch):
    write_net(tmp_path / "proj")
    site = tmp_path / "proj" / "venv" / "site"  # a package folder below the user's folder
    site.mkdir(parents=True)
    (site / "own_arch_dependency.py").write_text("VALUE = 3\n")
    (tmp_path / "proj" / "net.py").write_text("import own_arch_dependency\n" + NET)
    monkeypatch.syspath_prepend(str(site))
    path_before = list(sys.path)
    try:
        module = build_module(f"{tmp_path / 'proj' / 'net.py'}:SpecNet", {"classes": 5}, tmp_path)
        assert module.head.out_features == 5
        assert "own_arch_dependency" in sys.modules  # found on sys.path, as an import would
        assert "blocks" not in sys.modules and sys.path == path_before
    finally:
        sys.modules.pop("own_arch_dependency", None)


def test_without_a_card_the_flags_say_the_input_and_the_weights_the_channels(tmp_path):
    state = write_net(tmp_path / "bare", classes=4)
    fields = {
        "arch": str(tmp_path / "bare" / "net.py") + ":SpecNet",
        "arch_options": {"classes": 4},
        "input_size": (40, 120),
        "mean": 0.5,
        "std": 0.25,
    }
    model = load_model(tmp_path / "bare" / "spec.pt", card_fields=fields)
    assert model.card.channels == 1 and model.card.num_classes == 4  # from weights and output
    assert model.card.arch_options == {"classes": 4}
    assert_same_weights(model.module, state)
    del fields["input_size"]
    with pytest.raises(ConvsightError, match="give --input-size"):
        load_model(tmp_path / "bare" / "spec.pt", card_fields=fields)


@pytest.mark.slow
def test_a_class_in_a_package_on_the_python_path(tmp_path, monkeypatch):
    state = write_net(tmp_path / "code", classes=5)
    package = tmp_path / "lib" / "specpkg_own_arch"
    (package / "nets").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets" / "__init__.py").write_text(
        (tmp_path / "code" / "blocks.py").read_text() + NET.replace("from blocks import Block", "")
    )
    spec = tmp_path / "code" / "spec.pt"

    def forget_package() -> None:
        for name in [n for n in sys.modules if n.startswith("specpkg_own_arch")]:
            del sys.modules[name]

    with monkeypatch.context() as path:
        path.syspath_prepend(str(tmp_path / "lib"))  # as PYTHONPATH would
        made = run(
            "card", spec, "--arch", "specpkg_own_arch.nets:SpecNet", "--arch-args",
            '{"classes": 5}', "--input-size", "40", "--mean", "0.5", "--std", "0.5",
        )  # fmt: skip
        assert made.exit_code == 0, made.output
        forget_package()
        model = load_model(spec)  # from the card alone: the package is imported again
        assert type(model.module).__module__ == "specpkg_own_arch.nets"
        assert_same_weights(model.module, state)
        forget_package()
    card = json.loads(spec.with_suffix(".json").read_text())
    assert card["arch"] == "python:specpkg_own_arch.nets:SpecNet" and card["num_classes"] == 5
    assert card["arch_options"] == {"classes": 5} and card["input"]["channels"] == 1
    one_line_error(run("layers", spec), "cannot import module specpkg_own_arch.nets")


@pytest.mark.parametrize(
    ("arch", "args", "fragment"),
    [
        ("missing.py:SpecNet", None, "missing.py does not exist"),
        ("labels.txt:SpecNet", None, "is not a Python file (.py)"),
        ("net.py:SpecNt", None, "has no class 'SpecNt' (its nn.Module classes: SpecNet, Renamed"),
        ("net.py:helper", None, "'helper' in"),
        ("net.py", None, "names no class: give FILE.py:ClassName"),
        ("net.py:Broken", None, "Broken() failed: RuntimeError: no GPU here"),
        ("net.py:SpecNet", '{"clases": 5}', "unexpected keyword argument 'clases'"),
        ("net.py:SpecNet", "[5]", "--arch-args must be a JSON object"),
        ("net.py:SpecNet", "{5", "--arch-args is not JSON"),
        ("net.py:SpecNet", '{"classes": NaN}', "NaN is not a finite number"),
        ("net.py:SpecNet", '{"classes": 7}', "head.weight: (5, 16) vs (7, 16)"),
        ("net.py:Renamed", '{"classes": 5}', "2 missing (e.g. classifier.weight); 2 unexpected"),
        ("no_such_package_xyz.nets:SpecNet", None, "cannot import module no_such_package_xyz"),
        ("resnet18", '{"classes": 5}', "--arch-args gives the constructor keywords of a Python"),
    ],
)
def test_refusals_are_one_sentence(carded, tmp_path, arch, args, fragment):
    spec, _ = carded
    folder = tmp_path / "bare"
    folder.mkdir()
    for name in ("spec.pt", "net.py", "blocks.py", "labels.txt"):  # no card here
        shutil.copy(spec.parent / name, folder / name)
    extra = ["--arch-args", args] if args is not None else []
    result = run("layers", "spec.pt", "--arch", arch, *extra, *CARD_FLAGS, cwd=folder)
    message = one_line_error(result, fragment)
    if arch == "net.py:helper":
        assert "is a function, not an nn.Module subclass" in message
    if arch == "net.py:SpecNet" and args == '{"classes": 7}':
        assert "their head has 5 classes" in message and "--arch-args" in message


def test_refusals_of_where_arch_goes(carded, tmp_path):
    spec, _ = carded
    one_line_error(
        run("layers", "resnet18", "--arch", "net.py:SpecNet"), "'resnet18' names one already"
    )
    one_line_error(
        run("layers", spec, "--arch-args", '{"classes": 7}'), "head.weight: (5, 16) vs (7, 16)"
    )
    (tmp_path / "boom.py").write_text("import torch\n1 / 0\n")
    one_line_error(
        run("layers", spec, "--arch", f"{tmp_path / 'boom.py'}:Net"),
        "failed: ZeroDivisionError: division by zero",
    )


def test_every_command_with_the_card_flags_takes_arch_and_its_arguments():
    from typer.main import get_command

    commands = get_command(app).commands
    carded = {
        name
        for name, command in commands.items()
        if "--input-size" in {opt for p in command.params for opt in p.opts}
    }
    assert {"card", "layers", "maximize", "classviz", "saliency", "atlas"} <= carded
    for name in carded:
        flags = {opt for p in commands[name].params for opt in p.opts}
        assert {"--arch", "--arch-args"} <= flags, name
