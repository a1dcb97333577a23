"""One list of image file endings and one way to list a folder's images."""

from __future__ import annotations

import pytest

from convsight.data.images import IMAGE_SUFFIXES, image_files
from convsight.errors import ConvsightError


def test_image_files_lists_every_known_ending_sorted(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.gif", "d.tiff", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.webp").write_bytes(b"")
    assert [p.name for p in image_files(tmp_path)] == ["a.jpg", "b.PNG", "c.gif", "d.tiff"]
    assert [p.name for p in image_files(tmp_path, recursive=True)][-1] == "e.webp"
    assert {".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp"} == IMAGE_SUFFIXES


def test_a_folder_without_images_is_one_sentence(tmp_path):
    with pytest.raises(ConvsightError, match="no images in dataset folder"):
        image_files(tmp_path, "dataset folder")
    with pytest.raises(ConvsightError):
        image_files(tmp_path / "missing")
