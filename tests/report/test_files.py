"""The writers: safe names from data, nothing outside --out, own temporaries only, umask,
a full disk, strict JSON."""

import errno
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from convsight.errors import ConvsightError
from convsight.report import (
    TEMP_PREFIX,
    TEMP_SUFFIX,
    atomic_path,
    out_file,
    remove_own_temporaries,
    safe_filename,
    unique_names,
    write_checkpoint,
    write_json,
    write_npz,
    write_text,
)
from convsight.report.images import write_image

HOSTILE = [
    "x/../../../../tmp/ESCAPED",
    "../../etc/passwd",
    "..",
    ".",
    "",
    "/abs/path",
    "C:\\Windows\\evil",
    "a\x00b\nc",
    "\u202egnp.exe",  # right-to-left override
    "\uff0fetc",  # fullwidth solidus
    ".hidden",
    "CON",
    "x" * 400,
    "猫" * 200 + ".png",
]


def strict_loads(text: str):
    """json.loads that refuses NaN and infinities, as a strict parser does."""

    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("text", HOSTILE)
def test_safe_filename_is_one_plain_name(text):
    name = safe_filename(text)
    assert name and "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert len(name.encode()) <= 80
    assert all(ch.isprintable() for ch in name)
    assert Path(name).name == name
    assert name.split(".")[0].upper() not in ("CON", "NUL", "AUX", "PRN")


def test_safe_filename_keeps_ordinary_names():
    assert safe_filename("features.0") == "features.0"
    assert safe_filename("layer4.1.conv2") == "layer4.1.conv2"
    assert safe_filename("Siberian husky") == "Siberian_husky"
    assert safe_filename("café") == "café"  # letters of any script are kept
    assert safe_filename("red circle", readable=True) == "red circle"
    assert safe_filename("jack-o'-lantern", readable=True) == "jack-o'-lantern"
    assert safe_filename("a/b", readable=True) == "a_b"
    long = safe_filename("y" * 300 + ".png")
    assert long.endswith(".png") and len(long) == 80  # the extension survives the cut


def test_unique_names_are_distinct_and_deterministic():
    names = ["a/b", "a_b", "A_B", "x.png", "X.png"]
    first = unique_names(names, extension=True)
    assert first == unique_names(names, extension=True)
    assert len({n.casefold() for n in first}) == len(names)
    assert first[:2] == ["a_b", "a_b-2"] and first[4] == "X-2.png"
    assert unique_names(["index.html"], taken=["index.html"]) == ["index.html-2"]
    # a longer list keeps the names of its start
    assert unique_names([*names, "a_b"], extension=True)[: len(names)] == first


def test_out_file_stays_inside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for text in HOSTILE:
        path = out_file(out, "img", text)
        assert path.parent == out / "img"
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(ConvsightError, match="outside the output folder"):
        out_file(out, "link", "x.png")


def test_atomic_path_refuses_dotdot_and_paths_outside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConvsightError, match=r"'\.\.'"):
        write_text(out / "sub" / ".." / ".." / "escaped.txt", "x")
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(ConvsightError, match="outside the output folder"):
        write_text(out / "link" / "escaped.txt", "x", within=out)
    assert not (tmp_path / "escaped.txt").exists()
    assert all_files(tmp_path) == {out, out / "link"}
    # subfolders of the output folder are still made
    write_image(out / "img" / "deep" / "a.png", torch.rand(3, 4, 4), within=out)
    assert (out / "img" / "deep" / "a.png").is_file()


def test_temporary_names_and_cleanup_of_own_files_only(tmp_path):
    seen = []
    with atomic_path(tmp_path / "result.json") as tmp:
        seen.append(tmp.name)
        tmp.write_text("{}")
    assert seen[0].startswith(TEMP_PREFIX + "result.json.") and seen[0].endswith(TEMP_SUFFIX)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]

    user = [tmp_path / ".movie.mkv.part", tmp_path / "sub" / ".movie.mkv.part"]
    user.append(tmp_path / ".convsight-notes.part")  # not one of our names
    user[1].parent.mkdir()
    for path in user:
        path.write_text("user data")
    ours = tmp_path / f"{TEMP_PREFIX}c3.json.0a1b2c3d{TEMP_SUFFIX}"
    ours.write_text("half")
    nested = tmp_path / "sub" / f"{TEMP_PREFIX}c4.json.0a1b2c3d{TEMP_SUFFIX}"
    nested.write_text("half")
    assert remove_own_temporaries(tmp_path) == 1
    assert not ours.exists()
    assert all(p.read_text() == "user data" for p in user)
    assert nested.exists()  # never recursing into other folders
    assert remove_own_temporaries(tmp_path / "missing") == 0


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        written = [
            write_text(tmp_path / "a.txt", "x"),
            write_json(tmp_path / "a.json", {"a": 1}),
            write_npz(tmp_path / "a.npz", x=np.zeros(2)),
            write_image(tmp_path / "img" / "a.png", torch.rand(3, 4, 4)),
        ]
    finally:
        os.umask(old)
    for path in written:
        assert path.stat().st_mode & 0o777 == mode, path


def test_full_disk_is_one_sentence_and_leaves_the_target(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text('{"old": true}\n')

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(ConvsightError) as info:
        write_json(target, {"new": True})
    message = str(info.value)
    assert message.startswith("no space left on ") and "while writing" in message
    assert str(target) in message and "\n" not in message
    monkeypatch.undo()
    assert target.read_text() == '{"old": true}\n'  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # temporary gone


def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch):
    from convsight.models import ModelCard
    from tests.conftest import TinyNet

    card = ModelCard(
        name="tiny",
        arch="test:tiny",
        input_size=(8, 8),
        channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        labels=list("abcd"),
    )

    def full(path, data):  # the disk fills while the serialized checkpoint is written
        with open(path, "wb") as handle:
            handle.write(bytes(data)[:7])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(ConvsightError, match="no space left on"):
        write_checkpoint(tmp_path / "m.pt", TinyNet(), card)
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(ConvsightError, match="permission denied while writing") as error:
        with atomic_path(tmp_path / "x.txt"):
            raise PermissionError(errno.EACCES, "denied")
    assert "space" not in str(error.value)
    with pytest.raises(OSError) as other:  # an I/O error is not bad input: it stays itself
        with atomic_path(tmp_path / "y.txt"):
            raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(other.value, ConvsightError)
    assert list(tmp_path.iterdir()) == []


def test_json_is_strict_nan_and_infinity_become_null(tmp_path):
    data = {
        "nan": float("nan"),
        "inf": float("inf"),
        "list": [1.0, -math.inf, np.float32("nan")],
        "tensor": torch.tensor([0.5, float("nan")]),
        "array": np.array([np.inf, 2.0]),
        "np": np.float64("nan"),
        "ok": 1.5,
    }
    path = write_json(tmp_path / "x.json", data)
    parsed = strict_loads(path.read_text())
    assert parsed == {
        "nan": None,
        "inf": None,
        "list": [1.0, None, None],
        "tensor": [0.5, None],
        "array": [None, 2.0],
        "np": None,
        "ok": 1.5,
    }


def test_histogram_leaves_out_nan_and_infinity():
    from convsight.report.html import histogram_svg

    svg = str(histogram_svg([1.0, float("nan"), float("inf"), 2.0]))
    assert svg.count("<rect") == 2 and "nan" not in svg and "inf" not in svg
    assert str(histogram_svg([float("nan")])) == ""
