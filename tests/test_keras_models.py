"""The seed models in models/ (trained by models/build_models.py) through the whole Keras path:
load -> fold on Keras -> tf2onnx -> shape inference -> ONNX fold engine, compared with Keras' own prediction."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
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
MODELS = Path(__file__).resolve().parents[1] / "models"
BOUND = 1e-5  # max relative error, float32; tf2onnx alone measures 1e-7 .. 1e-6 on these

# What the Keras pass does with each model's BNs: (folded backward, folded forward).
KERAS_STAGE = {
    "iris_mlp": (0, 5),  # every BN follows Dense(relu): forward into the next Dense
    "swish_regressor": (3, 0),
    "swish_classifier": (3, 0),
    "flatten_bn_classifier": (0, 3),  # Flatten -> BN, then BNs after Dense(elu)
    "flatten_bn_nobias_classifier": (2, 1),
    "small_cnn": (4, 0),
}
FILES = [f"{name}{suffix}" for name in KERAS_STAGE for suffix in (".h5", ".keras")]


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def run_onnx(model: onnx_ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        onnx_ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def test_demo_model_file_exists() -> None:
    assert (MODELS / "iris_mlp.h5").is_file()
    assert sum(path.stat().st_size for path in MODELS.iterdir()) < 5.5e6


@pytest.mark.parametrize("filename", FILES)
def test_seed_model_folds_and_matches_keras(filename: str) -> None:
    model = frontend.load_keras_model(MODELS / filename)
    rng = np.random.default_rng(0)
    feeds = {
        spec.name: rng.normal(size=(4, *spec.shape[1:])).astype(spec.dtype)
        for spec in frontend.keras_input_specs(model)
    }
    expected = frontend.predict_keras(model, feeds)

    folded, entries = frontend.fold_keras_model(model)
    outcomes = Counter(entry.outcome.value for entry in entries)
    backward, forward = KERAS_STAGE[filename.rsplit(".", 1)[0]]
    expected_outcomes = {"folded_into_previous": backward, "folded_into_next": forward}
    assert outcomes == Counter(expected_outcomes) - Counter()
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    for output, values in frontend.predict_keras(folded, feeds).items():
        assert relative_error(expected[output], values) <= BOUND

    # Nothing is left for the ONNX engine.
    result = fold_model(infer_shapes(frontend.keras_to_onnx(folded)))
    assert result.counts()["left"] == 0
    actual = run_onnx(result.model, feeds)
    assert list(actual) == list(expected)
    for output, values in expected.items():
        assert relative_error(values, actual[output]) <= BOUND


def test_iris_table_is_the_150_row_iris_data() -> None:
    import sys

    sys.path.insert(0, str(MODELS))
    try:
        import build_models
    finally:
        sys.path.remove(str(MODELS))
    features, labels = build_models.load_iris()
    assert features.shape == (150, 4)
    assert np.bincount(labels).tolist() == [50, 50, 50]
    np.testing.assert_allclose(features[0], [5.1, 3.5, 1.4, 0.2])
    np.testing.assert_allclose(features.mean(axis=0), [5.8433, 3.0573, 3.758, 1.1993], atol=1e-4)
    images, classes = build_models.synthetic_digits(10, seed=1)
    again, _ = build_models.synthetic_digits(10, seed=1)
    assert images.shape == (10, 28, 28) and classes.max() < 10
    np.testing.assert_array_equal(images, again)
