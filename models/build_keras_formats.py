"""Write one small CNN in every Keras format bnfold reads, into a folder (docs/keras.md uses it).

    python models/build_keras_formats.py formats     # a few seconds; writes formats/...

- ``keras2_cnn.h5``, ``keras2_cnn.keras``, ``keras2_cnn_savedmodel/``: Keras 2 files, written
  by ``tf_keras`` (what ``tf.keras`` of TensorFlow <= 2.15 writes);
- ``keras3_cnn.h5``, ``keras3_cnn.keras``: the same network in Keras 3;
- ``keras3_cnn_export/``: Keras 3 ``model.export`` (a SavedModel without a Keras model in it);
- ``tf_module_savedmodel/``: ``tf.saved_model.save`` of a ``tf.Module`` (MatMul, bias, BN);
- ``mixed_float16_cnn.keras``: the Keras 3 CNN under the ``mixed_float16`` policy.

Weights are random (fixed seed), BN statistics too, so that a wrong fold would show.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import absl.logging
import keras
import tensorflow as tf
import tf_keras

absl.logging.set_verbosity(absl.logging.ERROR)
tf.get_logger().setLevel("ERROR")
warnings.filterwarnings("ignore")  # tf_keras' "HDF5 is legacy" advice on every .h5 save
SEED = 11


def cnn(package: Any) -> Any:
    """Conv2D -> BN -> ReLU -> DepthwiseConv2D -> BN -> GAP -> Dense -> BN (3 BNs)."""
    layers = package.layers
    inputs = package.Input((32, 32, 3), name="image")
    hidden = layers.BatchNormalization(name="bn_conv")(layers.Conv2D(8, 3, name="conv")(inputs))
    hidden = layers.ReLU(name="relu")(hidden)
    hidden = layers.BatchNormalization(name="bn_dw")(layers.DepthwiseConv2D(3, name="dw")(hidden))
    hidden = layers.GlobalAveragePooling2D(name="pool")(hidden)
    outputs = layers.Dense(4, name="head", dtype="float32")(hidden)
    outputs = layers.BatchNormalization(name="bn_head", dtype="float32")(outputs)
    model = package.Model(inputs, outputs)
    rng = np.random.default_rng(SEED)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            channels = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
            layer.beta.assign(rng.normal(0.0, 0.5, channels).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0.0, 0.5, channels).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype(np.float32))
    return model


class TfModule(tf.Module):
    """A model written with TensorFlow ops only: MatMul + bias, then batch normalisation."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(SEED)
        self.kernel = tf.Variable(rng.normal(size=(6, 5)).astype(np.float32))
        self.bias = tf.Variable(rng.normal(size=5).astype(np.float32))
        self.mean = tf.Variable(rng.normal(size=5).astype(np.float32))
        self.variance = tf.Variable(rng.uniform(0.5, 2.0, 5).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec((None, 6), tf.float32, name="features")])
    def __call__(self, features: Any) -> Any:
        hidden = tf.matmul(features, self.kernel) + self.bias
        normed = tf.nn.batch_normalization(hidden, self.mean, self.variance, None, None, 1e-3)
        return {"scores": tf.nn.relu(normed)}


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    keras2 = cnn(tf_keras)
    for name in ("keras2_cnn.h5", "keras2_cnn.keras", "keras2_cnn_savedmodel"):
        keras2.save(str(folder / name))
    keras3 = cnn(keras)
    keras3.save(folder / "keras3_cnn.h5")
    keras3.save(folder / "keras3_cnn.keras")
    keras3.export(str(folder / "keras3_cnn_export"), verbose=False)
    module = TfModule()
    tf.saved_model.save(module, str(folder / "tf_module_savedmodel"), signatures=module.__call__)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        cnn(keras).save(folder / "mixed_float16_cnn.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "formats"))
