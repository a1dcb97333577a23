"""Keras 3 ``.keras`` files: the study's MNIST CNN trained in Keras, rebuilt in PyTorch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported, as the loader does

from convsight.data import load_mnist  # noqa: E402
from convsight.errors import ConvsightError  # noqa: E402
from convsight.layers import capture, conv_layer_names, describe_layers, layer_names  # noqa: E402
from convsight.models import ModelCard  # noqa: E402
from convsight.models.convert.keras import load_keras  # noqa: E402

keras = pytest.importorskip("keras")
layers = keras.layers


def study_cnn() -> keras.Model:
    """The study's Keras MNIST CNN: Conv2D 32/64 with stride 2, MaxPool, Dense 128, Dropout 0.3."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(32, 3, strides=2, activation="relu"),
            layers.Conv2D(64, 3, strides=2, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(10),
        ]
    )


def as_keras_input(images: torch.Tensor) -> np.ndarray:
    """uint8 N x 28 x 28 MNIST images as float N x 28 x 28 x 1 in [0, 1]."""
    return (images.numpy().astype(np.float32) / 255.0)[..., None]


@pytest.fixture(scope="module")
def mnist_test(shared: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_mnist("test", shared / "data")
    return images[:200], labels[:200]


@pytest.fixture(scope="module")
def trained(shared: Path, tmp_path_factory) -> tuple[keras.Model, Path]:
    """The study CNN trained briefly on 800 real MNIST images, saved as a .keras file."""
    keras.backend.clear_session()  # Keras's own layer names: conv2d, conv2d_1, ...
    keras.utils.set_random_seed(0)
    images, labels = load_mnist("train", shared / "data")
    model = study_cnn()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        as_keras_input(images[:800]), labels[:800].numpy(), epochs=2, batch_size=100, verbose=0
    )
    path = tmp_path_factory.mktemp("keras") / "mnist_cnn.keras"
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def loaded(trained):
    return load_keras(trained[1], None)


@pytest.mark.slow
def test_study_cnn_predictions_equal_keras(trained, loaded, mnist_test):
    keras_model, _ = trained
    images, labels = mnist_test
    expected = keras_model.predict(as_keras_input(images), verbose=0)
    pixels = images[:, None].float() / 255.0  # N x 1 x 28 x 28, what convsight gives
    with torch.no_grad():
        got = loaded.module(loaded.normalize(pixels)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    accuracy = float((got.argmax(1) == labels.numpy()).mean())
    assert accuracy > 0.6, f"briefly trained CNN should beat chance by far, got {accuracy:.2f}"

    card = loaded.card
    assert (card.arch, card.input_size, card.channels, card.num_classes) == (
        "keras:mnist_cnn.keras",
        (28, 28),
        1,
        10,
    )
    assert card.arch_options["keras_max_abs_diff"] <= card.arch_options["keras_tolerance"]
    assert "Keras check" in card.source


@pytest.mark.slow
def test_keras_layer_names_address_the_same_outputs_as_keras(trained, loaded, mnist_test):
    keras_model, _ = trained
    names = layer_names(loaded.module)
    keras_names = ["conv2d", "conv2d_1", "max_pooling2d", "flatten", "dense", "dropout", "dense_1"]
    assert [layer.name for layer in keras_model.layers] == keras_names
    assert [name for name in names if "." not in name] == keras_names
    # A layer with an activation is its op then the activation; its own name is the output.
    assert conv_layer_names(loaded.module) == ["conv2d.conv", "conv2d_1.conv"]
    assert {"conv2d.activation", "dense.linear"} <= set(names)

    example = loaded.example_input()
    rows = {row.name: row.output_shape for row in describe_layers(loaded.module, example)}
    assert rows["conv2d_1"] == (64, 6, 6) and rows["flatten"] == (576,)

    images = mnist_test[0][:8]
    x = as_keras_input(images)
    pixels = images[:, None].float() / 255.0
    for layer in (keras_model.layers[1], keras_model.layers[3]):  # conv2d_1 (after ReLU), flatten
        probe = keras.Model(keras_model.inputs[0], layer.output)
        expected = keras.ops.convert_to_numpy(probe(x, training=False))
        with capture(loaded.module, [layer.name]) as outputs, torch.no_grad():
            loaded.module(pixels)
        got = outputs[layer.name].numpy()
        if got.ndim == 4:
            got = got.transpose(0, 2, 3, 1)  # convsight's maps are channels-first
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert not loaded.module.get_submodule("conv2d_1")._forward_hooks


def test_lambda_layer_is_refused_without_running_it(tmp_path):
    ran = []
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Lambda(lambda x: (ran.append(True), x * 2)[1]),
            layers.Flatten(),
            layers.Dense(2),
        ]
    )
    path = tmp_path / "lambda.keras"
    model.save(path)
    ran.clear()  # building the model ran it once, symbolically
    with pytest.raises(ConvsightError, match="safe_mode=True") as info:
        load_keras(path, None)
    assert "\n" not in str(info.value) and not ran

    def double(x):
        return x * 2

    named = keras.Sequential([keras.Input((8, 8, 1)), layers.Lambda(double), layers.Flatten()])
    named.save(tmp_path / "named.keras")
    with pytest.raises(ConvsightError, match="not part of Keras"):
        load_keras(tmp_path / "named.keras", None)


@pytest.mark.slow
def test_functional_model_with_same_padding_batch_norm_and_merges(tmp_path):
    """Asymmetric 'same' padding (stride 2), depthwise conv, batch norm with real statistics,
    Add, Concatenate, 'same' average pooling, global pooling and Rescaling all rebuild exactly."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((15, 16, 3), name="image")
    x = layers.Rescaling(2.0, offset=-1.0)(inputs)
    a = layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(x)
    a = layers.BatchNormalization(name="stem_bn")(a)
    a = layers.ReLU(max_value=6.0)(a)
    b = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=1, activation="relu")(a)
    c = layers.Add()([a, b])
    d = layers.AveragePooling2D(3, strides=2, padding="same")(c)
    e = layers.MaxPooling2D(2, strides=2, padding="same")(c)
    merged = layers.Concatenate()([d, e])
    pooled = layers.GlobalAveragePooling2D()(merged)
    outputs = layers.Dense(4, activation="softmax", name="head")(pooled)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("stem_bn")
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 8).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 8).astype("float32"))
    path = tmp_path / "functional.keras"
    model.save(path)

    loaded = load_keras(path, None)
    assert loaded.card.input_size == (15, 16) and loaded.card.channels == 3
    pixels = torch.rand(5, 3, 15, 16, generator=torch.Generator().manual_seed(2))
    expected = keras.ops.convert_to_numpy(model(pixels.permute(0, 2, 3, 1).numpy()))
    with torch.no_grad():  # the softmax head is cut: its scores give Keras's probabilities
        got = loaded.module(pixels).softmax(1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert loaded.card.head == "softmax cut"
    assert {"stem", "stem.conv", "stem.pad", "stem_bn", "concatenate", "head"} <= set(
        layer_names(loaded.module)
    )


@pytest.mark.slow
def test_card_describes_the_channels_first_input(trained):
    card = ModelCard(
        name="digits",
        arch="keras",
        input_size=(28, 28),
        channels=1,
        mean=[0.1307],
        std=[0.3081],
        labels=[str(i) for i in range(10)],
    )
    model = load_keras(trained[1], card)
    assert model.card.arch == "keras:mnist_cnn.keras" and model.card.labels[7] == "7"
    assert model.example_input().shape == (1, 1, 28, 28)
    wrong = ModelCard(name="big", arch="keras", input_size=(32, 32), channels=1, mean=0, std=1)
    with pytest.raises(ConvsightError, match="takes only 28x28"):
        load_keras(trained[1], wrong)


def test_unsupported_layers_and_broken_files_are_refused(tmp_path):
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), layers.Conv2DTranspose(2, 3, name="up"), layers.Flatten()]
    )
    path = tmp_path / "transpose.keras"
    model.save(path)
    with pytest.raises(ConvsightError, match="layer 'up' is a Conv2DTranspose"):
        load_keras(path, None)

    legacy = tmp_path / "model.h5"
    legacy.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ConvsightError, match="not a Keras 3 .keras file"):
        load_keras(legacy, None)

    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ConvsightError, match="broken.keras") as info:
        load_keras(broken, None)
    assert "\n" not in str(info.value)
