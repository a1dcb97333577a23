"""FolderImages: a split read a batch at a time, equal to load_folder, headers checked first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import convsight.data.folder as folder_module
from convsight.data.folder import FolderImages, load_folder
from convsight.data.images import image_header_problem, load_image_tensor
from convsight.errors import ConvsightError
from tests.data.test_images import bomb_header, card


@pytest.fixture
def photo_split(tmp_path, samples) -> Path:
    """Two classes of sample photos, a text file named .png, a huge header, a truncated JPEG."""
    for name, photos in (("a", samples[:4]), ("b", samples[4:7])):
        (tmp_path / name).mkdir()
        for photo in photos:
            (tmp_path / name / photo.name).write_bytes(photo.read_bytes())
    (tmp_path / "a" / "notes.png").write_text("not an image")
    bomb_header(tmp_path / "b" / "bomb.png", 20000, 20000)
    return tmp_path


def _counting(monkeypatch) -> list[Path]:
    """Every file FolderImages decodes, in order."""
    decoded: list[Path] = []
    real = folder_module.load_image

    def load(path):
        decoded.append(Path(path))
        return real(path)

    monkeypatch.setattr(folder_module, "load_image", load)
    return decoded


def test_a_batch_decodes_only_its_own_files(photo_split, monkeypatch):
    decoded = _counting(monkeypatch)
    images = FolderImages(photo_split, card((32, 32), 3, resize=36))
    assert decoded == [] and len(images) == 7  # the headers only; the two bad files left out
    held = [v for v in vars(images).values() if isinstance(v, torch.Tensor) and v.dim() > 1]
    assert held == []  # no pixels of the split are kept
    x, y = next(iter(DataLoader(images, batch_size=3, shuffle=False)))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist() == [0, 0, 0]
    assert decoded == images.paths[:3]


def test_items_equal_load_folder(photo_split):
    photo = card((32, 32), 3, resize=36)
    held, lazy = load_folder(photo_split, photo), FolderImages(photo_split, photo)
    assert lazy.paths == held.paths and torch.equal(lazy.labels, held.labels)
    assert torch.equal(torch.stack([lazy[i][0] for i in range(len(lazy))]), held.pixels)
    assert lazy.skipped == held.skipped  # the same files, the same sentences
    assert {Path(s["path"]).name for s in lazy.skipped} == {"notes.png", "bomb.png"}


def test_a_file_corrupt_past_its_header_fails_when_its_batch_is_read(photo_split):
    good = next((photo_split / "a").glob("*.JPEG")).read_bytes()
    (photo_split / "a" / "zz_cut.jpg").write_bytes(good[: len(good) // 3])
    images = FolderImages(photo_split, card((32, 32), 3, resize=36))
    assert images.paths[4].name == "zz_cut.jpg"  # the header is fine
    with pytest.raises(ConvsightError, match="corrupt or truncated.*found when its batch"):
        images[4]
    assert "zz_cut.jpg" in {
        Path(s["path"]).name for s in load_folder(photo_split, images.card).skipped
    }


def test_a_split_with_no_usable_header_fails_before_any_decode(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_text("text")
    Image.new("L", (40, 40)).save(tmp_path / "a" / "big.png")
    decoded = _counting(monkeypatch)
    with pytest.raises(ConvsightError, match=r"none of the 2 images .* can be used \(e.g. "):
        FolderImages(tmp_path, card((28, 28), 1))
    with pytest.raises(ConvsightError, match="class folder\\(s\\) c missing"):
        FolderImages(tmp_path, card((28, 28), 1), classes=["a", "c"])
    assert decoded == []


@pytest.mark.parametrize(
    "size, mode, photo, fragment",
    [
        ((40, 28), "L", None, "exactly 28x28"),
        ((28, 28), "RGB", None, "has 3 channels"),
        ((600, 20), "RGB", 28, "aspect ratio of 30:1"),
        ((28, 28), "L", None, None),
        ((50, 30), "RGB", 28, None),
    ],
)
def test_header_problem_is_the_decoders_sentence(tmp_path, size, mode, photo, fragment):
    path = tmp_path / "image.png"
    Image.new(mode, size).save(path)
    grey = card((28, 28), 1, resize=photo)
    problem = image_header_problem(path, grey)
    try:
        load_image_tensor(path, grey)
        decoded = None
    except ConvsightError as exc:
        decoded = str(exc)
    assert problem == decoded
    assert (problem is None) if fragment is None else (fragment in problem)


def test_header_problem_sees_a_sideways_photo_as_it_is_shown(tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees: shown 28 wide, 40 high
    Image.new("L", (40, 28)).save(path, exif=exif)
    assert "is 28x40 pixels" in image_header_problem(path, card((28, 28), 1))
    assert image_header_problem(path, card((40, 28), 1)) is None
