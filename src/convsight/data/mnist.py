"""MNIST: the four idx files from an offline folder (gz or raw), else torchvision's download."""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, TensorDataset

from convsight.errors import ConvsightError
from convsight.models.card import ModelCard
from convsight.paths import require_folder

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
MAX_IDX_BYTES = 2**30
"""The most data bytes an idx file may claim in its header (MNIST's largest holds 47 MB)."""
_DTYPES: dict[int, npt.DTypeLike] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def data_dir_from_env() -> Path | None:
    """The folder named by ``CONVSIGHT_DATA``, if set."""
    value = os.environ.get("CONVSIGHT_DATA")
    return Path(value) if value else None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (``.gz`` or raw); a truncated, malformed or huge file raises ConvsightError.

    The header is read first: a file that claims more than :data:`MAX_IDX_BYTES` of data is
    refused before anything else is read or decompressed.
    """
    path = Path(path)
    if path.is_dir():
        raise ConvsightError(f"idx file {path} is a folder, not a file")
    try:
        with gzip.open(path) if path.suffix == ".gz" else open(path, "rb") as stream:
            return _read_idx_stream(stream, path)
    except PermissionError as exc:
        raise ConvsightError(f"cannot read idx file {path}: permission denied") from exc
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ConvsightError(f"cannot read idx file {path}: {exc}") from exc


def _read_idx_stream(stream: io.BufferedIOBase, path: Path) -> np.ndarray:
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
        raise ConvsightError(f"{path} is not an idx file (bad magic number)")
    ndim = magic[3]
    dims_raw = stream.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise ConvsightError(f"idx file {path} is truncated (header cut short)")
    dims = [int.from_bytes(dims_raw[4 * i : 4 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[magic[2]])
    expected = math.prod(dims) * dtype.itemsize
    if expected > MAX_IDX_BYTES:
        raise ConvsightError(
            f"idx file {path} claims shape {tuple(dims)} ({expected / 2**30:.1f} GiB), more than "
            f"the {MAX_IDX_BYTES / 2**30:.0f} GiB convsight reads"
        )
    data = stream.read(expected + 1)  # one byte more tells a padded file
    if len(data) != expected:
        found = f"{len(data)}" if len(data) <= expected else "more"
        raise ConvsightError(
            f"idx file {path} is truncated or padded: {found} data bytes, "
            f"expected {expected} for shape {tuple(dims)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for sub in (folder, folder / "mnist", folder / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (sub / name).is_file():
                return sub / name
    return None


def _download(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import MNIST

    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "convsight"
    try:
        dataset = MNIST(str(root), train=split == "train", download=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvsightError(
            f"could not download MNIST ({reason}); offline, pass --data-dir DIR "
            "(or set CONVSIGHT_DATA) with the four idx files"
        ) from exc
    return dataset.data, dataset.targets


def load_mnist(
    split: str = "test", data_dir: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images (N x 28 x 28, uint8) and labels (N, int64) of ``split`` ('train'/'test').

    Looks in ``data_dir`` (or ``$CONVSIGHT_DATA``), in it, ``mnist/`` or ``MNIST/raw/``,
    for the standard idx files, compressed or not; with no folder, downloads with torchvision.
    """
    if split not in ("train", "test"):
        raise ConvsightError(f"MNIST split must be 'train' or 'test', not '{split}'")
    folder = Path(data_dir) if data_dir is not None else data_dir_from_env()
    if folder is None:
        return _download(split)
    require_folder(folder, "MNIST data folder")
    found = {kind: _find(folder, FILES[(split, kind)]) for kind in ("images", "labels")}
    missing = [FILES[(split, k)] for k, p in found.items() if p is None]
    if missing:
        raise ConvsightError(f"MNIST file(s) {', '.join(missing)} not found in {folder}")
    paths = {kind: p for kind, p in found.items() if p is not None}
    images, labels = read_idx(paths["images"]), read_idx(paths["labels"])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ConvsightError(
            f"MNIST files in {folder} disagree: images {images.shape}, labels {labels.shape}"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def mnist_loaders(
    card: ModelCard,
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 128,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Shuffled train and ordered test loaders of normalized MNIST tensors for ``card``."""
    loaders = []
    for split, limit in (("train", train_limit), ("test", test_limit)):
        images, labels = load_mnist(split, data_dir)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        x = card.normalize(images.unsqueeze(1).float() / 255.0)
        generator = torch.Generator().manual_seed(seed)
        loaders.append(
            DataLoader(
                TensorDataset(x, labels),
                batch_size=batch_size,
                shuffle=split == "train",
                generator=generator,
            )
        )
    return loaders[0], loaders[1]
