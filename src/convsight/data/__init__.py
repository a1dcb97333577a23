"""Inputs: MNIST (torchvision or an offline folder of idx files) and image files (checked)."""

from convsight.data.images import (
    MAX_ASPECT_RATIO,
    MAX_IMAGE_PIXELS,
    check_image_size,
    exif_orientation,
    load_image,
    load_image_tensor,
    to_model_pixels,
)
from convsight.data.mnist import data_dir_from_env, load_mnist, mnist_loaders, read_idx

__all__ = [
    "MAX_ASPECT_RATIO",
    "MAX_IMAGE_PIXELS",
    "check_image_size",
    "data_dir_from_env",
    "exif_orientation",
    "load_image",
    "load_image_tensor",
    "load_mnist",
    "mnist_loaders",
    "read_idx",
    "to_model_pixels",
]
