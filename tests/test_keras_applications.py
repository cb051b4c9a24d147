"""Keras Applications (ResNet50, MobileNetV2; weights=None, 64x64, randomised BN statistics)
saved as .h5 and .keras, loaded, folded on Keras and compared with Keras' own prediction.

The models are written to a temporary folder, never committed. Outputs are logits
(``classifier_activation=None``) so that the comparison is not flattened by a softmax.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
ort = pytest.importorskip("onnxruntime")
import onnx_ir  # noqa: E402

from bnfold.fold import fold_model  # noqa: E402
from bnfold.frontends import keras as frontend  # noqa: E402
from bnfold.frontends.onnx import infer_shapes  # noqa: E402

pytestmark = pytest.mark.keras
BOUND = 1e-5

APPLICATIONS = {
    # name: (builder, BN layers in the model); every BN follows a linear conv: all fold.
    "MobileNetV2": (keras.applications.MobileNetV2, 52),
    "ResNet50": (keras.applications.ResNet50, 53),
}


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope="module", params=list(APPLICATIONS))
def application(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    name = request.param
    build, batchnorms = APPLICATIONS[name]
    keras.utils.set_random_seed(0)
    model = build(input_shape=(64, 64, 3), weights=None, classifier_activation=None)
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(1))
    folder = tmp_path_factory.mktemp(name)
    paths = {suffix: folder / f"{name}{suffix}" for suffix in (".h5", ".keras")}
    for path in paths.values():
        model.save(path)
    (spec,) = frontend.keras_input_specs(model)
    feeds = {spec.name: np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)}
    return {"name": name, "paths": paths, "batchnorms": batchnorms, "feeds": feeds}


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_application_folds_every_bn_and_matches_keras(
    application: dict[str, Any], suffix: str
) -> None:
    model = frontend.load_keras_model(application["paths"][suffix])
    folded, entries = frontend.fold_keras_model(model)

    outcomes = Counter(entry.outcome.value for entry in entries)
    assert outcomes == {"folded_into_previous": application["batchnorms"]}
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    expected = frontend.predict_keras(model, application["feeds"])
    actual = frontend.predict_keras(folded, application["feeds"])
    for output, values in expected.items():
        assert relative_error(values, actual[output]) <= BOUND


@pytest.mark.slow
def test_application_through_tf2onnx_and_the_onnx_engine(application: dict[str, Any]) -> None:
    model = frontend.load_keras_model(application["paths"][".keras"])
    folded, _ = frontend.fold_keras_model(model)
    expected = frontend.predict_keras(model, application["feeds"])
    result = fold_model(infer_shapes(frontend.keras_to_onnx(folded)))
    assert result.counts()["left"] == 0
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        onnx_ir.to_proto(result.model).SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    (actual,) = session.run(None, application["feeds"])
    assert not any(node.op_type == "BatchNormalization" for node in result.model.graph)
    assert relative_error(next(iter(expected.values())), actual) <= BOUND
