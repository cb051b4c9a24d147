"""Write the usual transfer-learning model, a nested base model, to one file (docs/keras.md).

    python models/build_nested_example.py nested.keras    # a few seconds; .keras or .h5

``Sequential([MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3)),
GlobalAveragePooling2D(), Dropout(0.2), Dense(10)])``: the 52 BatchNormalization layers sit
inside the nested model ``mobilenetv2_1.00_32`` (their paths in bnfold's log start with it).
Weights are random and BN statistics randomised (fixed seed), so that a wrong fold would show:
an untrained BN is an identity.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from bnfold.frontends.keras import import_keras, randomise_batchnorm_statistics

keras, _ = import_keras()  # TensorFlow's start-up lines silenced, as bnfold does
SEED = 7


def nested_model() -> Any:
    keras.utils.set_random_seed(SEED)
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3), name="image"),
            base,
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dropout(0.2, name="dropout"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    randomise_batchnorm_statistics(model, np.random.default_rng(SEED))
    return model


def main(argv: list[str]) -> int:
    if len(argv) != 1 or Path(argv[0]).suffix not in (".keras", ".h5"):
        print("usage: python models/build_nested_example.py OUT.keras|OUT.h5", file=sys.stderr)
        return 2
    model = nested_model()
    model.save(argv[0])
    print(f"Wrote {argv[0]}: {model.layers[0].name} nested in a Sequential")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
