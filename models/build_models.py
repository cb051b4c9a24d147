"""Train the seed models in models/ and save each as .h5 and .keras.

    python models/build_models.py            # rewrites every model file next to this script

Every model is trained for real (a few seconds each, fixed seeds) on data shipped in the
repository (iris.csv) or generated here from a fixed seed (small synthetic image sets), so that
their BatchNormalization moving statistics are those of real training, not the initial 0 and 1.
The files are saved without optimizer state to keep models/ small.

iris.csv is Fisher's 1936 iris data (public domain), 150 rows, as bundled with scikit-learn.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import absl.logging
import keras
from keras import layers

absl.logging.set_verbosity(absl.logging.ERROR)  # Keras' "HDF5 is legacy" notice on every save

MODELS = Path(__file__).resolve().parent
IRIS_CSV = MODELS / "iris.csv"
IRIS_SPECIES = ("setosa", "versicolor", "virginica")
SEED = 20241122


def load_iris() -> tuple[np.ndarray, np.ndarray]:
    """Iris features (150x4, cm) and species index (0..2), from models/iris.csv."""
    features, labels = [], []
    with IRIS_CSV.open(newline="") as handle:
        for row in csv.DictReader(handle):
            features.append([float(row[key]) for key in list(row)[:4]])
            labels.append(IRIS_SPECIES.index(row["species"]))
    return np.asarray(features, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def standardised(features: np.ndarray) -> np.ndarray:
    return ((features - features.mean(axis=0)) / features.std(axis=0)).astype(np.float32)


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 28x28 grey images of 10 classes: a fixed random smooth template per class,
    shifted by up to 2 pixels, plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 1.0, size=(10, 7, 7))
    templates = np.kron(coarse, np.ones((4, 4)))  # 10 x 28 x 28, blocky strokes
    labels = rng.integers(0, 10, size=count)
    shifts = rng.integers(-2, 3, size=(count, 2))
    images = np.stack(
        [
            np.roll(templates[label], tuple(shift), axis=(0, 1))
            for label, shift in zip(labels, shifts, strict=True)
        ]
    )
    images += rng.normal(0.0, 0.25, size=images.shape)
    return images.astype(np.float32), labels.astype(np.int64)


def synthetic_patterns(count: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``count`` size x size RGB images of 4 classes: horizontal stripes, vertical stripes,
    checkerboard, a centred blob; random phase and colour, plus noise."""
    rng = np.random.default_rng(seed)
    grid = np.arange(size)
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    labels = rng.integers(0, 4, size=count)
    images = np.empty((count, size, size, 3), dtype=np.float32)
    for index, label in enumerate(labels):
        phase = rng.integers(0, 4)
        if label == 0:
            plane = ((rows + phase) // 2) % 2
        elif label == 1:
            plane = ((cols + phase) // 2) % 2
        elif label == 2:
            plane = (((rows + phase) // 2) + ((cols + phase) // 2)) % 2
        else:
            centre = size / 2 + rng.uniform(-2, 2, size=2)
            plane = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / 12.0)
        colour = rng.uniform(0.3, 1.0, size=3)
        images[index] = plane[..., None] * colour + rng.normal(0.0, 0.2, size=(size, size, 3))
    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------- architectures


def iris_mlp() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((4,), name="iris_features"),
            layers.Dense(64, activation="relu"),
            layers.BatchNormalization(),
            layers.Dense(128, activation="relu"),
            layers.BatchNormalization(),
            layers.Dense(128, activation="relu"),
            layers.BatchNormalization(),
            layers.Dense(64, activation="relu"),
            layers.BatchNormalization(),
            layers.Dense(64, activation="relu"),
            layers.BatchNormalization(momentum=0.95, epsilon=0.005),
            layers.Dense(3, activation="softmax"),
        ],
        name="iris_mlp",
    )


def swish_stack(inputs: int, head: layers.Layer, name: str) -> keras.Model:
    """Functional Dense(8) -> BN -> swish, three times, then ``head``."""
    features = keras.Input((inputs,), name="features")
    hidden = features
    for block in range(3):
        hidden = layers.Dense(8, name=f"dense_{block}")(hidden)
        hidden = layers.BatchNormalization(name=f"bn_{block}")(hidden)
        hidden = layers.Activation("swish", name=f"swish_{block}")(hidden)
    return keras.Model(features, head(hidden), name=name)


def flatten_bn_classifier(use_bias: bool) -> keras.Model:
    stack: list[Any] = [
        keras.Input((28, 28), name="image"),
        layers.Flatten(),
        layers.BatchNormalization(),
    ]
    for units, initializer in ((300, "he_normal"), (100, "glorot_uniform")):
        if use_bias:
            stack += [
                layers.Dense(units, activation="elu", kernel_initializer=initializer),
                layers.BatchNormalization(),
            ]
        else:
            stack += [
                layers.Dense(units, use_bias=False, kernel_initializer=initializer),
                layers.BatchNormalization(),
                layers.Activation("elu"),
            ]
    stack.append(layers.Dense(10, activation="softmax"))
    name = "flatten_bn_classifier" if use_bias else "flatten_bn_nobias_classifier"
    return keras.Sequential(stack, name=name)


def small_cnn() -> keras.Model:
    """Conv2D, DepthwiseConv2D, SeparableConv2D and Conv2DTranspose, each -> BN -> ReLU."""
    image = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv")(image)
    x = layers.BatchNormalization(name="conv_bn")(x)
    x = layers.ReLU(name="conv_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="depthwise")(x)
    x = layers.BatchNormalization(name="depthwise_bn")(x)
    x = layers.ReLU(name="depthwise_relu")(x)
    x = layers.SeparableConv2D(16, 3, strides=2, padding="same", name="separable")(x)
    x = layers.BatchNormalization(name="separable_bn")(x)
    x = layers.ReLU(name="separable_relu")(x)
    x = layers.Conv2DTranspose(8, 3, strides=2, padding="same", name="transpose")(x)
    x = layers.BatchNormalization(name="transpose_bn")(x)
    x = layers.ReLU(name="transpose_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    probabilities = layers.Dense(4, activation="softmax", name="classes")(x)
    return keras.Model(image, probabilities, name="small_cnn")


# --------------------------------------------------------------------------- training


def train(
    model: keras.Model,
    features: np.ndarray,
    targets: np.ndarray,
    *,
    loss: str,
    epochs: int,
    batch_size: int = 16,
) -> float:
    """Fit, and return the final training metric (accuracy, or MAE for regression)."""
    metric = "mae" if loss == "mse" else "accuracy"
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, metrics=[metric])
    history = model.fit(
        features, targets, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0
    )
    return float(history.history[metric][-1])


def save_both(model: keras.Model, name: str) -> list[Path]:
    """Save without optimizer state: a fresh copy from the config carries only the weights."""
    fresh = type(model).from_config(model.get_config())
    fresh.set_weights(model.get_weights())
    paths = [MODELS / f"{name}.keras", MODELS / f"{name}.h5"]
    for path in paths:
        fresh.save(path)
    return paths


def assert_trained_statistics(model: keras.Model) -> None:
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            variance = np.asarray(layer.moving_variance.numpy())
            mean = np.asarray(layer.moving_mean.numpy())
            if np.allclose(variance, 1.0) and np.allclose(mean, 0.0):
                raise RuntimeError(f"{model.name}: {layer.name} still has its initial statistics")


def build_all() -> dict[str, tuple[str, float]]:
    iris_features, iris_labels = load_iris()
    iris_inputs = standardised(iris_features)
    digits, digit_labels = synthetic_digits(1500, SEED)
    patterns, pattern_labels = synthetic_patterns(800, SEED + 1)

    recipes: dict[str, tuple[Callable[[], keras.Model], np.ndarray, np.ndarray, str, int]] = {
        "iris_mlp": (iris_mlp, iris_inputs, iris_labels, "sparse_categorical_crossentropy", 60),
        "swish_regressor": (
            lambda: swish_stack(3, layers.Dense(1, name="petal_length"), "swish_regressor"),
            iris_inputs[:, [0, 1, 3]],
            iris_features[:, 2:3],
            "mse",
            80,
        ),
        "swish_classifier": (
            lambda: swish_stack(
                4, layers.Dense(3, activation="softmax", name="species"), "swish_classifier"
            ),
            iris_inputs,
            iris_labels,
            "sparse_categorical_crossentropy",
            60,
        ),
        "flatten_bn_classifier": (
            lambda: flatten_bn_classifier(use_bias=True),
            digits,
            digit_labels,
            "sparse_categorical_crossentropy",
            4,
        ),
        "flatten_bn_nobias_classifier": (
            lambda: flatten_bn_classifier(use_bias=False),
            digits,
            digit_labels,
            "sparse_categorical_crossentropy",
            4,
        ),
        "small_cnn": (small_cnn, patterns, pattern_labels, "sparse_categorical_crossentropy", 6),
    }
    results = {}
    for name, (build, features, targets, loss, epochs) in recipes.items():
        keras.utils.set_random_seed(SEED)
        model = build()
        score = train(model, features, targets, loss=loss, epochs=epochs)
        assert_trained_statistics(model)
        save_both(model, name)
        results[name] = ("mae" if loss == "mse" else "accuracy", score)
    return results


def main() -> int:
    for name, (metric, score) in build_all().items():
        print(f"{name:30s} training {metric} {score:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
