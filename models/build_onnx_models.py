"""Build the ONNX demo models in models/: what PyTorch and tf2onnx hand to bnfold.

- pytorch_style.onnx: BatchNormalization nodes after Conv, a grouped ConvTranspose and Gemm,
  as torch.onnx.export writes them in training-preserving mode.
- tf2onnx_mlp.onnx / tf2onnx_cnn.onnx: unfolded Keras models converted by tf2onnx, where BN
  arrives as Mul/Add tails after MatMul, depthwise and transposed convolutions.

Run: .venv/bin/python models/build_onnx_models.py   (needs the keras extra)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from bnfold.testing import pytorch_style_model

HERE = Path(__file__).resolve().parent
SEED = 20261122


def keras_mlp():  # type: ignore[no-untyped-def]
    import keras

    inputs = keras.Input((4,), name="features")
    x = inputs
    for units in (16, 16):
        x = keras.layers.Dense(units)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
    x = keras.layers.Dense(3)(x)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Activation("softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="tf2onnx_mlp")


def keras_cnn():  # type: ignore[no-untyped-def]
    import keras

    layers = keras.layers
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Conv2DTranspose(6, 3, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.SeparableConv2D(8, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(5)(x)
    outputs = layers.BatchNormalization(name="scores")(x)
    return keras.Model(inputs, outputs, name="tf2onnx_cnn")


def main() -> None:
    rng = np.random.default_rng(SEED)
    ir.save(ir.serde.deserialize_model(pytorch_style_model(rng)), HERE / "pytorch_style.onnx")
    import keras

    from bnfold.frontends.keras import keras_to_onnx, randomise_batchnorm_statistics

    keras.utils.set_random_seed(SEED)
    for build in (keras_mlp, keras_cnn):
        model = build()
        randomise_batchnorm_statistics(model, rng)
        ir.save(keras_to_onnx(model), HERE / f"{model.name}.onnx")
        print(f"wrote models/{model.name}.onnx")
    print("wrote models/pytorch_style.onnx")


if __name__ == "__main__":
    main()
