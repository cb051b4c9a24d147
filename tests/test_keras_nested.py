"""Transfer-learning models as users build them: a Keras Application used as a nested base
model (MobileNetV2 in a Sequential, EfficientNetB0 called with ``training=False`` in a
functional model; weights=None, 32x32, randomised BN statistics), folded to .onnx, .keras
and .h5. The written file is read back and compared with the source model, and the BN left in
it are counted: every BN of the base folds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")
ort = pytest.importorskip("onnxruntime")

import bnfold  # noqa: E402
from bnfold.frontends import keras as frontend  # noqa: E402
from tests.test_keras_log import keras_batchnorms, onnx_batchnorms_left  # noqa: E402

pytestmark = pytest.mark.keras
L = keras.layers
BOUND = 1e-5
SHAPE = (32, 32, 3)


def mobilenet_in_sequential() -> Any:
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=SHAPE)
    head = [L.GlobalAveragePooling2D(), L.Dropout(0.2), L.Dense(10)]
    return keras.Sequential([keras.Input(SHAPE), base, *head])


def efficientnet_in_functional() -> Any:
    base = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=SHAPE)
    inputs = keras.Input(SHAPE)
    features = L.GlobalAveragePooling2D()(base(inputs, training=False))
    return keras.Model(inputs, L.Dense(10)(L.Dropout(0.2)(features)))


BASES = {
    "MobileNetV2": (mobilenet_in_sequential, 52),
    "EfficientNetB0": (efficientnet_in_functional, 49),
}


@pytest.fixture(scope="module", params=list(BASES))
def nested(request: pytest.FixtureRequest) -> dict[str, Any]:
    build, batchnorms = BASES[request.param]
    keras.utils.set_random_seed(0)
    model = build()
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(4))
    (spec,) = frontend.keras_input_specs(model)
    feeds = {spec.name: np.random.default_rng(5).normal(size=(2, *SHAPE)).astype(np.float32)}
    return {"model": model, "batchnorms": batchnorms, "feeds": feeds}


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def run_written(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    if path.suffix == ".onnx":
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, feeds)[0])
    written = frontend.load_keras_model(path)
    return next(iter(frontend.predict_keras(written, feeds).values()))


@pytest.mark.parametrize("suffix", [".onnx", ".keras", ".h5"])
def test_every_bn_of_a_nested_base_folds(
    nested: dict[str, Any], suffix: str, tmp_path: Path
) -> None:
    model, feeds = nested["model"], nested["feeds"]
    out = tmp_path / f"folded{suffix}"
    result = bnfold.fold(model, out)
    counts = result.counts()
    assert counts["found"] == nested["batchnorms"] == len(keras_batchnorms(model))
    assert counts["left"] == 0
    assert all("/" in entry.name for entry in result.entries if entry.kind == "batchnorm")
    if suffix == ".onnx":
        assert onnx_batchnorms_left(out) == 0
    else:
        assert keras_batchnorms(frontend.load_keras_model(out)) == []
    expected = next(iter(frontend.predict_keras(model, feeds).values()))
    assert relative_error(expected, run_written(out, feeds)) <= BOUND
