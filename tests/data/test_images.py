"""Image files decoded safely: bit depth, colour modes, size limits, clear messages."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from convsight.data import (
    MAX_IMAGE_PIXELS,
    load_image,
    load_image_tensor,
    to_model_pixels,
)
from convsight.data.folder import load_folder, scan_folder
from convsight.errors import ConvsightError
from convsight.models import ModelCard
from convsight.paths import require_folder


def png(path: Path, array: np.ndarray, color_type: int, bit_depth: int = 16) -> Path:
    """A minimal PNG encoder (Pillow cannot write 48/64-bit colour): rows of big-endian samples.

    ``color_type``: 0 grey, 2 RGB, 4 grey + alpha, 6 RGBA.
    """
    h, w = array.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + array[y].astype(dtype).tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(png_bytes(header, zlib.compress(raw)))
    return path


def png_bytes(ihdr: bytes, idat: bytes) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb_header(path: Path, width: int, height: int) -> Path:
    """A 100-byte PNG whose header claims ``width`` x ``height`` grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(png_bytes(ihdr, zlib.compress(b"\x00" * 64)))
    return path


def card(size: tuple[int, int], channels: int, resize: int | None = None) -> ModelCard:
    return ModelCard(
        name="test",
        arch="test:net",
        input_size=size,
        channels=channels,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        resize=resize,
    )


GRADIENT = np.linspace(0, 65535, 64).round().astype(np.uint16)[None].repeat(8, 0)  # 8 x 64


def test_16bit_grey_png_is_read_at_its_real_range(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(GRADIENT).save(path)
    assert Image.open(path).mode.startswith("I;16")  # a real 16-bit file
    x = load_image_tensor(path, card((8, 64), 1))
    expected = torch.from_numpy(GRADIENT.astype(np.float32) / 65535)
    assert x.shape == (1, 1, 8, 64)
    assert (x[0, 0] - expected).abs().max() <= 1 / 255
    assert x.min() == 0 and x.max() == 1 and abs(x.mean().item() - 0.5) < 0.01  # not all white


def test_16bit_grey_png_written_by_hand_on_a_photo_model(tmp_path):
    path = png(tmp_path / "g16.png", GRADIENT, color_type=0)
    x = load_image_tensor(path, card((8, 8), 3, resize=8))  # the middle 8 x 8 of 8 x 64
    assert x.shape == (1, 3, 8, 8)
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])
    middle = GRADIENT[0, 28:36].astype(np.float32) / 65535
    assert np.abs(x[0, 0, 0].numpy() - middle).max() <= 1 / 255


def test_48bit_rgb_and_64bit_rgba_pngs_decode_right(tmp_path):
    g = GRADIENT
    rgb = np.stack([g, 65535 - g, np.full_like(g, 32768)], axis=-1)
    rgba = np.concatenate([rgb, np.full_like(g, 65535)[..., None]], axis=-1)
    expected = torch.from_numpy(rgb.astype(np.float32) / 65535).permute(2, 0, 1)
    for path in (png(tmp_path / "rgb48.png", rgb, 2), png(tmp_path / "rgba64.png", rgba, 6)):
        x = load_image_tensor(path, card((8, 64), 3, resize=8))
        assert x.shape == (1, 3, 8, 64)
        assert (x[0] - expected).abs().max() <= 1 / 255, path.name


def test_16bit_grey_with_alpha_decodes_right(tmp_path):
    la = np.stack([GRADIENT, np.full_like(GRADIENT, 65535)], axis=-1)
    x = load_image_tensor(png(tmp_path / "la32.png", la, 4), card((8, 8), 1, resize=8))
    expected = torch.from_numpy(GRADIENT[:, 28:36].astype(np.float32) / 65535)
    assert x.shape == (1, 1, 8, 8) and (x[0, 0] - expected).abs().max() <= 1 / 255


def test_32bit_integer_and_float_images(tmp_path):
    grey = card((8, 64), 1)
    expected = torch.from_numpy(GRADIENT.astype(np.float32) / 65535)
    as_int = tmp_path / "i32.tiff"
    Image.fromarray(GRADIENT.astype(np.int32)).save(as_int)
    assert Image.open(as_int).mode == "I"
    assert (load_image_tensor(as_int, grey)[0, 0] - expected).abs().max() <= 1 / 255
    as_float = tmp_path / "f.tiff"
    Image.fromarray(GRADIENT.astype(np.float32) / 65535).save(as_float)
    assert (load_image_tensor(as_float, grey)[0, 0] - expected).abs().max() <= 1e-6

    wide = tmp_path / "wide.tiff"
    Image.fromarray(GRADIENT.astype(np.int32) * 4).save(wide)
    with pytest.raises(ConvsightError, match="from 0 to 262140"):
        load_image_tensor(wide, grey)
    bright = tmp_path / "bright.tiff"
    Image.fromarray(GRADIENT.astype(np.float32)).save(bright)
    with pytest.raises(ConvsightError, match=r"only when they lie in \[0, 1\]"):
        load_image_tensor(bright, grey)
    nan = GRADIENT.astype(np.float32) / 65535
    nan[0, 0] = np.nan
    with pytest.raises(ConvsightError, match="NaN"):
        to_model_pixels(Image.fromarray(nan), grey)


@pytest.mark.parametrize(
    ("mode", "colour", "rgb"),
    [
        ("RGB", (200, 100, 50), (200, 100, 50)),
        ("RGBA", (200, 100, 50, 128), (200, 100, 50)),  # alpha dropped, not composited
        ("P", 0, (200, 100, 50)),  # palette entry 0
        ("CMYK", (0, 128, 192, 55), None),  # as Pillow converts CMYK to RGB
        ("L", 123, (123, 123, 123)),
        ("LA", (123, 64), (123, 123, 123)),  # alpha dropped
        ("1", 1, (255, 255, 255)),
    ],
)
def test_8bit_colour_modes_keep_working(tmp_path, mode, colour, rgb):
    image = Image.new(mode, (40, 30), colour)
    if mode == "P":
        image.putpalette([200, 100, 50] + [0, 0, 0] * 255)
    path = tmp_path / f"x.{'tiff' if mode == 'CMYK' else 'png'}"
    image.save(path)
    assert Image.open(path).mode == mode
    expected = rgb or tuple(int(v) for v in Image.open(path).convert("RGB").getpixel((0, 0)))
    x = load_image_tensor(path, card((16, 16), 3, resize=20))
    assert x.shape == (1, 3, 16, 16)
    pixels = x[0].mul(255).flatten(1).t()  # every pixel the same colour (within rounding)
    assert (pixels - torch.tensor(expected, dtype=torch.float32)).abs().max() <= 1.01


def test_mode_that_cannot_become_rgb_is_a_clear_error():
    image = Image.new("RGBA", (16, 16)).convert("La")
    with pytest.raises(ConvsightError, match="colour mode La"):
        to_model_pixels(image, card((16, 16), 3, resize=16))


def test_header_larger_than_the_pixel_limit_is_refused_before_decoding(tmp_path):
    side = int(MAX_IMAGE_PIXELS**0.5) + 16
    path = bomb_header(tmp_path / "bomb.png", side, side)
    assert path.stat().st_size < 200
    with pytest.raises(ConvsightError, match="megapixels convsight decodes"):
        load_image(path)
    huge = bomb_header(tmp_path / "huge.png", 30000, 30000)  # over Pillow's own limit too
    with pytest.raises(ConvsightError, match="decompression bomb|megapixels"):
        load_image(huge)


def test_elongated_image_is_refused_before_any_resize(tmp_path, monkeypatch):
    path = tmp_path / "line.png"
    Image.new("L", (10000, 1), 200).save(path)
    assert path.stat().st_size < 500
    photo = card((224, 224), 3, resize=256)
    sizes = []
    original = Image.Image.resize

    def recording_resize(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    with pytest.raises(ConvsightError, match="aspect ratio of 10000:1"):
        load_image_tensor(path, photo)
    assert sizes == []
    # A panorama within the limit is taken; only the crop is ever resampled.
    wide = tmp_path / "wide.png"
    Image.new("RGB", (4000, 400), (10, 20, 30)).save(wide)
    x = load_image_tensor(wide, photo)
    assert x.shape == (1, 3, 224, 224) and sizes == [(224, 224)]


def test_resizing_only_the_crop_matches_resize_then_crop(samples):
    photo = card((224, 224), 3, resize=256)
    for path in samples[:5]:
        image = load_image(path)
        scale = 256 / min(image.size)
        size = (max(224, round(image.width * scale)), max(224, round(image.height * scale)))
        big = image.resize(size, Image.BILINEAR)
        left, top = (big.width - 224) // 2, (big.height - 224) // 2
        reference = np.asarray(big.crop((left, top, left + 224, top + 224)), dtype=np.float32)
        x = to_model_pixels(image, photo).permute(1, 2, 0).numpy() * 255
        assert np.abs(x - reference).max() <= 1.0 + 1e-4, path.name


def test_permission_denied_is_not_called_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    Image.new("L", (28, 28)).save(path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ConvsightError) as info:
        load_image(path)
    assert "cannot read image" in str(info.value) and "permission denied" in str(info.value)
    assert "corrupt" not in str(info.value)


def test_folder_given_for_a_file_and_file_for_a_folder(tmp_path):
    with pytest.raises(ConvsightError, match="is a folder, not a file"):
        load_image(tmp_path)
    image = tmp_path / "a.png"
    Image.new("L", (28, 28)).save(image)
    with pytest.raises(ConvsightError, match="is a file, not a folder"):
        require_folder(image, "image folder")
    with pytest.raises(ConvsightError, match="is a file, not a folder"):
        scan_folder(image)
    with pytest.raises(ConvsightError, match="is a file, not a folder"):
        load_folder(image, card((28, 28), 1))
    with pytest.raises(ConvsightError, match="does not exist"):
        require_folder(tmp_path / "nope", "image folder")


def test_load_folder_skips_and_reports_bad_files(tmp_path):
    grey = card((28, 28), 1)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    Image.new("L", (28, 28), 255).save(tmp_path / "a" / "good.png")
    Image.new("L", (28, 28), 0).save(tmp_path / "b" / "good.png")
    (tmp_path / "a" / "cut.png").write_bytes((tmp_path / "a" / "good.png").read_bytes()[:40])
    bomb_header(tmp_path / "a" / "bomb.png", 20000, 20000)
    Image.new("L", (40, 40)).save(tmp_path / "b" / "big.png")
    data = load_folder(tmp_path, grey)
    assert data.pixels.shape == (2, 1, 28, 28) and data.labels.tolist() == [0, 1]
    assert [p.name for p in data.paths] == ["good.png", "good.png"]
    assert data.pixels[0].min() == 255 and data.pixels[1].max() == 0
    reasons = {Path(s["path"]).name: s["reason"] for s in data.skipped}
    assert set(reasons) == {"cut.png", "bomb.png", "big.png"}
    assert "megapixels" in reasons["bomb.png"] and "exactly 28x28" in reasons["big.png"]
    for good in tmp_path.glob("*/good.png"):
        good.unlink()
    with pytest.raises(ConvsightError, match="none of the 3 images"):
        load_folder(tmp_path, grey)


def test_cli_refuses_a_decompression_bomb_in_one_line(tmp_path):
    from convsight.cli import app
    from convsight.models import load_model
    from convsight.report import write_checkpoint

    model = load_model("mnist-cnn")
    ckpt = write_checkpoint(tmp_path / "m.pt", model.module, model.card)
    bomb = bomb_header(tmp_path / "bomb.png", 20000, 20000)
    out = tmp_path / "out"
    args = ["activations", str(ckpt), "--image", str(bomb), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "megapixels" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) <= 2
    assert not out.exists()


def test_photos_are_resized_with_the_cards_interpolation():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (90, 120), dtype=np.uint8), "L")
    values = set(np.asarray(photo).ravel().tolist())
    nearest = card((32, 32), 1, resize=40).updated(interpolation="nearest")
    bilinear = card((32, 32), 1, resize=40)
    near = (to_model_pixels(photo, nearest) * 255).round().int()
    assert set(near.ravel().tolist()) <= values  # nearest only copies pixels
    smooth = to_model_pixels(photo, bilinear)
    assert not torch.equal((smooth * 255).round().int(), near)
