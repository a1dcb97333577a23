"""Your own architecture: an ``nn.Module`` class named ``path/to/net.py:SpecNet`` or
``package.module:SpecNet``, imported because you named it (or because the card beside a
checkpoint names a file in its own folder), built with its constructor keywords.

A card records the class as ``python:net.py:SpecNet`` (the file relative to the card's folder)
or ``python:package.module:SpecNet``, and the keywords as ``arch_options``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard, card_path, identity_normalization
from convsight.models.checkpoints import input_channels, load_weights, read_state_dict
from convsight.models.model import Model
from convsight.paths import require_file

PREFIX = "python:"
"""How a card's ``arch`` says it is a Python class."""
FORMS = "FILE.py:ClassName or package.module:ClassName"
MODULE_PREFIX = "convsight_user_code_"
"""The start of the (unique) module name a file named by ``arch`` is imported under."""
EXAMPLE_ARGS = "'{\"classes\": 5}'"
CLASS_HEAD = "the keyword of its class that sets them in --arch-args (arch_options in a card)"
"""How to give a Python class another class count (see ``load_weights``)."""


@dataclass(frozen=True)
class ClassRef:
    """A class (``name``, dotted for a nested one) in a Python file or an importable module."""

    target: str
    name: str
    is_file: bool

    @property
    def arch(self) -> str:
        """As a card's ``arch``: ``python:TARGET:NAME``."""
        return f"{PREFIX}{self.target}:{self.name}"


def parse_arch(arch: str) -> ClassRef:
    """The file or module and the class an architecture names (one sentence if it names none).

    ``python:package.module.Class`` (the form of ``Model.from_module`` cards) is read too.
    """
    text = arch[len(PREFIX) :] if arch.startswith(PREFIX) else arch
    target, sep, name = text.rpartition(":")
    if not sep and not text.endswith(".py"):
        target, _, name = text.rpartition(".")
    if not target or not all(part.isidentifier() for part in name.split(".")):
        raise ConvsightError(f"architecture '{arch}' names no class: give {FORMS}")
    is_file = target.endswith(".py") or "/" in target or "\\" in target or Path(target).is_file()
    if not is_file and not all(part.isidentifier() for part in target.split(".")):
        raise ConvsightError(
            f"architecture '{arch}' names neither a .py file nor a module: give {FORMS}"
        )
    return ClassRef(target, name, is_file)


def absolute_arch(arch: str) -> str:
    """``arch`` as a card's ``python:...``, a file's path made absolute (from the working
    folder): the form for a class named on the command line."""
    ref = parse_arch(arch)
    if not ref.is_file:
        return ref.arch
    return ClassRef(str(Path(ref.target).expanduser().absolute()), ref.name, True).arch


def card_arch(arch: str, folder: Path) -> str:
    """The ``arch`` a card in ``folder`` records: a file relative to that folder. A file
    outside it is refused (a card runs only code that lives beside it)."""
    ref = parse_arch(absolute_arch(arch))
    if not ref.is_file:
        return ref.arch
    relative = _inside(Path(ref.target), folder)
    if relative is None:
        raise ConvsightError(
            f"{ref.target} is not in {folder.resolve()}, the folder of the card: a card runs "
            f"only code that lives beside it, so copy the file there and name that copy"
        )
    return ClassRef(relative.as_posix(), ref.name, True).arch


def check_card_code(arch: str, card_file: Path) -> None:
    """A card read from ``card_file`` may name a Python file only in its own folder (or
    below it): convsight runs no code a card points to elsewhere."""
    if not arch.startswith(PREFIX):
        return
    ref = parse_arch(arch)
    if not ref.is_file:
        return
    path = card_file.parent / ref.target
    if _inside(path, card_file.parent) is None:
        raise ConvsightError(
            f"model card {card_file} names code outside its folder ({ref.target}): convsight "
            "runs a card's code only from the card's own folder; move the file beside the "
            f"card, or name it yourself with --arch FILE.py:{ref.name}"
        )
    if not path.is_file():
        raise ConvsightError(
            f"model card {card_file} names the class {ref.name} in {ref.target}, which is not "
            f"in the card's folder: put the file back beside the card, or name the class "
            "with --arch FILE.py:ClassName"
        )


def card_beside(weights: Path, check_code: bool) -> ModelCard | None:
    """The card beside a weights file, if any; with ``check_code``, one that names code
    outside its own folder (see :func:`check_card_code`) is refused."""
    if not card_path(weights).is_file():
        return None
    card = ModelCard.read(card_path(weights))
    if check_code:
        check_card_code(card.arch, card_path(weights))
    return card


def _inside(path: Path, folder: Path) -> Path | None:
    """``path`` relative to ``folder``, links resolved; None when it lies outside."""
    try:
        return path.resolve().relative_to(folder.resolve())
    except ValueError:
        return None


def build_module(arch: str, options: Mapping[str, Any], folder: Path) -> nn.Module:
    """An instance of the class ``arch`` names (a relative file is read from ``folder``),
    built with the constructor keywords ``options``."""
    ref = parse_arch(arch)
    cls = import_class(ref, folder)
    call = f"{ref.name}({', '.join(f'{k}={v!r}' for k, v in options.items())})"
    try:
        module = cls(**options)
    except Exception as exc:  # the user's constructor says why in its own words
        raise ConvsightError(f"{call[:200]} failed: {_reason(exc)}") from exc
    if not isinstance(module, nn.Module):
        raise ConvsightError(f"{call[:200]} returned {type(module).__name__}, not an nn.Module")
    return module


def import_class(ref: ClassRef, folder: Path) -> type[nn.Module]:
    """The ``nn.Module`` subclass ``ref`` names (one sentence if it is not one)."""
    if ref.is_file:
        path = folder / ref.target
        module, where = _import_file(path), str(path)
    else:
        module, where = _import_module(ref.target), f"module {ref.target}"
    found: Any = module
    for part in ref.name.split("."):
        found = getattr(found, part, None)
    if found is None:
        classes = module_classes(module)
        listed = f"its nn.Module classes: {', '.join(classes)}" if classes else "it defines none"
        raise ConvsightError(f"{where} has no class '{ref.name}' ({listed})")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        what = "a class" if isinstance(found, type) else f"a {type(found).__name__}"
        raise ConvsightError(f"'{ref.name}' in {where} is {what}, not an nn.Module subclass")
    return found


def module_classes(module: ModuleType) -> list[str]:
    """The names of the ``nn.Module`` subclasses ``module`` defines itself."""
    return [
        name
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, nn.Module)
        and value.__module__ == module.__name__
    ]


def _import_file(path: Path) -> ModuleType:
    """The module of a Python file, under a name no real package has; its folder is on
    ``sys.path`` only while it runs (for its sibling imports)."""
    if not path.exists():
        raise ConvsightError(f"architecture file {path} does not exist")
    require_file(path, "architecture file")
    if path.suffix != ".py":
        raise ConvsightError(f"architecture file {path} is not a Python file (.py)")
    path = path.resolve()
    name = MODULE_PREFIX + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConvsightError(f"architecture file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    with _importing(name, module, path.parent):
        try:
            spec.loader.exec_module(module)
        except SystemExit as exc:
            raise ConvsightError(
                f"importing {path} ran a script that exited ({exc.code}): guard its script "
                "part with if __name__ == '__main__'"
            ) from exc
        except Exception as exc:
            raise ConvsightError(f"importing {path} failed: {_reason(exc)}") from exc
    return module


@contextlib.contextmanager
def _importing(name: str, module: ModuleType, folder: Path) -> Iterator[None]:
    """While inside: ``module`` in ``sys.modules`` as ``name`` and ``folder`` first on
    ``sys.path``. On exit both go, with every module imported from ``folder`` meanwhile, so
    nothing of the user's shadows a package later (the classes keep what they imported)."""
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    sys.modules[name] = module
    importlib.invalidate_caches()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))
        for key in set(sys.modules) - before:
            if key == name or _found_in(key, sys.modules[key], folder):
                del sys.modules[key]


def _found_in(key: str, module: ModuleType, folder: Path) -> bool:
    """Whether ``module`` was imported from ``folder`` itself as ``key`` (``folder/key.py``,
    ``folder/key/...``), not from a package folder that merely lies below it (a virtualenv)."""
    file = getattr(module, "__file__", None)
    relative = _inside(Path(file), folder) if file else None
    top = key.partition(".")[0]
    return relative is not None and relative.parts[0].partition(".")[0] == top


def _import_module(name: str) -> ModuleType:
    """An importable module by its dotted name (from ``sys.path`` / ``PYTHONPATH``)."""
    importlib.invalidate_caches()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConvsightError(
                f"cannot import module {name} ({exc}): put the folder that holds it on "
                "PYTHONPATH, or name its file as FILE.py:ClassName"
            ) from exc
        raise ConvsightError(f"importing module {name} failed: {_reason(exc)}") from exc
    except SystemExit as exc:
        raise ConvsightError(f"importing module {name} ran a script that exited") from exc
    except Exception as exc:
        raise ConvsightError(f"importing module {name} failed: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message``, short enough for one sentence."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def parse_arch_args(text: str) -> dict[str, Any]:
    """``--arch-args``: the constructor keywords as a JSON object (finite numbers only)."""

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):
            raise ValueError(f"{number} is not a finite number")
        return value

    try:
        value = json.loads(text, parse_float=finite, parse_constant=finite)
    except ValueError as exc:
        raise ConvsightError(
            f"--arch-args is not JSON ({exc}): give the constructor keywords as a JSON "
            f"object, e.g. {EXAMPLE_ARGS}"
        ) from exc
    if not isinstance(value, dict):
        raise ConvsightError(
            f"--arch-args must be a JSON object of constructor keywords (e.g. {EXAMPLE_ARGS}), "
            f"not {json.dumps(value)[:40]}"
        )
    bad = [key for key in value if not key.isidentifier()]
    if bad:
        raise ConvsightError(f"--arch-args key '{bad[0]}' is not a keyword argument name")
    return value


def class_checkpoint(
    path: Path, arch: str, arch_options: dict[str, Any], fields: Mapping[str, Any]
) -> Model:
    """A checkpoint of a Python class without a card: the card from the card flags (``fields``),
    the input channels (unless given) from the weights' first convolution, the class count
    from the output."""
    if "input_size" not in fields:
        raise ConvsightError(
            f"checkpoint {path} has no card beside it ({card_path(path).name}) and a Python "
            "class does not say its input size: give --input-size HxW (and --mean, --std)"
        )
    module = build_module(arch, arch_options, Path.cwd())
    state = read_state_dict(path)
    channels = fields.get("channels") or input_channels(module, state) or 3
    card = ModelCard(
        **{
            "name": path.stem,
            "arch": arch,
            "arch_options": dict(arch_options),
            "source": f"weights {path} ({arch})",
            **identity_normalization(channels, path.stem, {"mean", "std"} - set(fields)),
            **fields,
            "channels": channels,
        }
    )
    load_weights(module, state, path, False, CLASS_HEAD)
    model = Model(module, card)
    model.probe_classes()
    return model
