import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from convsight.data import load_image, load_image_tensor, load_mnist, read_idx
from convsight.errors import ConvsightError
from convsight.models import load_model


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def test_idx_reads_raw_and_gz(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = tmp_path / "x-idx3-ubyte"
    raw.write_bytes(idx_bytes(array))
    gz = tmp_path / "x-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(idx_bytes(array)))
    assert np.array_equal(read_idx(raw), array)
    assert np.array_equal(read_idx(gz), array)


def test_idx_rejects_truncated_and_bad_files(tmp_path):
    data = idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))
    cut = tmp_path / "cut"
    cut.write_bytes(data[:-10])
    with pytest.raises(ConvsightError, match="truncated"):
        read_idx(cut)
    cut_gz = tmp_path / "cut.gz"
    cut_gz.write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(ConvsightError, match="cannot read idx"):
        read_idx(cut_gz)
    header_only = tmp_path / "header"
    header_only.write_bytes(data[:6])
    with pytest.raises(ConvsightError, match="truncated"):
        read_idx(header_only)
    magic = tmp_path / "magic"
    magic.write_bytes(b"\x1f\x00" + data[2:])
    with pytest.raises(ConvsightError, match="magic"):
        read_idx(magic)


@pytest.mark.slow
def test_mnist_from_the_offline_folder(mnist_dir):
    images, labels = load_mnist("test", mnist_dir.parent)  # finds data/mnist/
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and int(labels[0]) == 7
    train, train_labels = load_mnist("train", mnist_dir)
    assert train.shape == (60000, 28, 28)
    # The rebuilt train images differ from the official ones by at most a grey level.
    assert abs(train.float().div(255).mean().item() - 0.1307) < 1e-3
    assert torch.bincount(train_labels).min() > 5000


def test_mnist_missing_files_is_a_clear_error(tmp_path):
    with pytest.raises(ConvsightError, match="not found"):
        load_mnist("test", tmp_path)


def test_mnist_raw_folder_layout(tmp_path, mnist_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw.joinpath(name).write_bytes(gzip.open(mnist_dir / f"{name}.gz").read())
    images, labels = load_mnist("test", tmp_path)
    assert images.shape == (10000, 28, 28) and int(labels[0]) == 7


def test_image_errors(tmp_path):
    with pytest.raises(ConvsightError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(ConvsightError, match="not an image"):
        load_image(text)
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), "red").save(good, quality=90)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ConvsightError, match="corrupt or truncated"):
        load_image(truncated)


def test_exact_size_models_reject_other_sizes_and_channels(tmp_path):
    card = load_model("mnist-cnn").card.updated(resize=None)  # by default photos are resized
    big = tmp_path / "big.png"
    Image.new("L", (32, 32)).save(big)
    with pytest.raises(ConvsightError, match="takes exactly 28x28"):
        load_image_tensor(big, card)
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (28, 28)).save(rgb)
    with pytest.raises(ConvsightError, match="has 3 channels"):
        load_image_tensor(rgb, card)
    ok = tmp_path / "ok.png"
    Image.new("L", (28, 28), 255).save(ok)
    assert torch.equal(load_image_tensor(ok, card), torch.ones(1, 1, 28, 28))


@pytest.mark.slow
def test_photo_models_resize_and_crop(samples, mobilenet_v2):
    x = load_image_tensor(samples[0], mobilenet_v2.card)
    assert x.shape == (1, 3, 224, 224) and 0 <= x.min() and x.max() <= 1


def test_idx_header_claiming_gigabytes_is_refused_before_reading(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (60000, 4096, 4096))
    raw = tmp_path / "huge-idx3-ubyte"
    raw.write_bytes(header + b"\x00" * 100)
    with pytest.raises(ConvsightError, match="claims shape"):
        read_idx(raw)
    gz = tmp_path / "huge-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(header + b"\x00" * 100))
    with pytest.raises(ConvsightError, match="claims shape"):
        read_idx(gz)
    padded = tmp_path / "padded"
    padded.write_bytes(idx_bytes(np.zeros((2, 3), dtype=np.uint8)) + b"\x00")
    with pytest.raises(ConvsightError, match="padded"):
        read_idx(padded)


def test_mnist_data_dir_that_is_a_file(tmp_path):
    not_a_folder = tmp_path / "mnist.gz"
    not_a_folder.write_bytes(b"x")
    with pytest.raises(ConvsightError, match="is a file, not a folder"):
        load_mnist("test", not_a_folder)
