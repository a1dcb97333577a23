"""Inputs: MNIST (torchvision or an offline folder of idx files) and image files."""

from convsight.data.images import load_image, load_image_tensor, to_model_pixels
from convsight.data.mnist import data_dir_from_env, load_mnist, mnist_loaders, read_idx

__all__ = [
    "data_dir_from_env",
    "load_image",
    "load_image_tensor",
    "load_mnist",
    "mnist_loaders",
    "read_idx",
    "to_model_pixels",
]
