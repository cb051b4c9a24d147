"""How many BNs bnfold folds backward and forward in real Keras architectures.

Builds ResNet50V2 and DenseNet121 (``weights=None``, 64x64x3 input, logits out so the error is
not squashed by a softmax), plus two small post-activation-BN models, randomises every BN's gamma, beta, moving mean and moving variance
with a seeded generator, converts to ONNX with ``bnfold.frontends.keras.keras_to_onnx`` and
folds with ``bnfold.fold.fold_model``. Per model it prints the BN layers in Keras, the BN-like
affines left in the ONNX graph, how many were folded backward and forward, what was left and
why, the fold time, and the max relative error ``max|folded - original| / max|original|``
against the unfolded ONNX model, both run in onnxruntime with optimisations disabled.

    python benchmarks/forward_fold_counts.py [--models ResNet50V2 DenseNet121] [--batch 4]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import onnx_ir as ir

from bnfold.check.equivalence import random_inputs
from bnfold.comparison import compare_outputs
from bnfold.fold import fold_model
from bnfold.frontends.keras import import_keras, keras_to_onnx, randomise_batchnorm_statistics
from bnfold.frontends.onnx import infer_shapes, input_specs
from bnfold.frontends.onnx_run import run_model

INPUT_SHAPE = (64, 64, 3)
SMALL_MODELS = ("MLPPostActivationBN", "CNNFlattenBN")


def small_model(name: str) -> Any:
    """Two small models where BN sits after the activation, so only a forward fold applies:
    an iris-style MLP ``Dense -> Relu -> BN -> Dense`` and a classifier
    ``Conv -> Relu -> BN (channels last) -> Flatten -> Dense``."""
    keras, _ = import_keras()
    layers = keras.layers
    if name == "MLPPostActivationBN":
        inputs = keras.Input((4,))
        x = layers.Dense(16, activation="relu")(inputs)
        x = layers.BatchNormalization()(x)
        x = layers.Dense(16, activation="relu")(x)
        x = layers.BatchNormalization()(x)
        outputs = layers.Dense(3)(x)
    else:
        inputs = keras.Input(INPUT_SHAPE)
        x = layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
        x = layers.BatchNormalization()(x)
        x = layers.Conv2D(8, 3, strides=2, activation="relu")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Flatten()(x)
        outputs = layers.Dense(10)(x)
    return keras.Model(inputs, outputs, name=name)


def measure(name: str, seed: int, batch: int) -> dict[str, Any]:
    keras, _ = import_keras()
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    if name in SMALL_MODELS:
        model = small_model(name)
    else:
        build = getattr(keras.applications, name)
        model = build(weights=None, input_shape=INPUT_SHAPE, classifier_activation=None)
    keras_batchnorms = randomise_batchnorm_statistics(model, rng)
    start = time.perf_counter()
    onnx_model = infer_shapes(keras_to_onnx(model))  # as bnfold.api does after conversion
    convert_seconds = time.perf_counter() - start
    original = ir.serde.serialize_model(onnx_model).SerializeToString()
    nodes_before = len(list(onnx_model.graph))
    start = time.perf_counter()
    result = fold_model(onnx_model)
    fold_seconds = time.perf_counter() - start
    specs = input_specs(onnx_model)
    feeds = random_inputs(
        specs,
        seed=seed,
        shapes={spec.name: (batch, *(int(d) for d in spec.shape[1:])) for spec in specs},
    )
    check = compare_outputs(run_model(original, feeds), run_model(onnx_model, feeds))
    counts = result.counts()
    return {
        "model": name,
        "keras_bn_layers": keras_batchnorms,
        "onnx_nodes_before": nodes_before,
        "onnx_nodes_after": len(list(onnx_model.graph)),
        "affines_found": counts["found"],
        "folded_backward": counts["folded_into_previous"],
        "folded_forward": counts["folded_into_next"],
        "left": counts["left"],
        "left_by_reason": counts["left_by_reason"],
        "max_rel": check.max_rel,
        "max_abs": check.max_abs,
        "convert_s": convert_seconds,
        "fold_s": fold_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet50V2", "DenseNet121", *SMALL_MODELS])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    for name in args.models:
        row = measure(name, args.seed, args.batch)
        print(f"== {row['model']}")
        print(f"  Keras BN layers              {row['keras_bn_layers']}")
        print(
            f"  ONNX nodes before -> after   {row['onnx_nodes_before']} -> {row['onnx_nodes_after']}"
        )
        print(f"  BN/affines in the ONNX graph {row['affines_found']}")
        print(f"  folded backward              {row['folded_backward']}")
        print(f"  folded forward               {row['folded_forward']}")
        print(f"  left                         {row['left']} {row['left_by_reason']}")
        print(f"  max rel error (ORT, no opt)  {row['max_rel']:.3g} (max abs {row['max_abs']:.3g})")
        print(f"  tf2onnx conversion           {row['convert_s']:.1f} s")
        print(f"  fold time                    {row['fold_s'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
