"""Keras models as users have them (issue 11): Keras 2 files written by tf_keras (.h5, .keras,
SavedModel), a plain tf.saved_model directory, a directory that is not a SavedModel, a
mixed_float16 model, EfficientNetB0 to ONNX, a registered custom layer.

Each folded output is loaded back (ONNX in onnxruntime, Keras with the Keras that wrote it),
compared with the source model, and its BatchNormalization layers counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")
onnxruntime = pytest.importorskip("onnxruntime")

import bnfold  # noqa: E402
from bnfold.errors import InputError, OutputError  # noqa: E402
from bnfold.foldlog import Outcome  # noqa: E402
from bnfold.frontends import keras as frontend  # noqa: E402
from bnfold.frontends.base import LoadSettings  # noqa: E402
from bnfold.testing import run_python_quietly  # noqa: E402

pytestmark = pytest.mark.keras
REPO = Path(__file__).resolve().parents[1]
FLOAT32_RTOL = 1e-5


def keras2_cnn() -> Any:
    """Conv2D -> BN -> ReLU -> DepthwiseConv2D -> BN -> GAP -> Dense -> BN, in tf_keras (what
    tf.keras of TF <= 2.15 builds): three BNs, each foldable into the layer before it."""
    layers = tf_keras.layers
    inputs = tf_keras.Input((32, 32, 3), name="image")
    hidden = layers.BatchNormalization(name="bn_conv")(layers.Conv2D(8, 3, name="conv")(inputs))
    hidden = layers.ReLU(name="relu")(hidden)
    hidden = layers.DepthwiseConv2D(3, name="dw")(hidden)
    hidden = layers.BatchNormalization(name="bn_dw")(hidden)
    hidden = layers.GlobalAveragePooling2D(name="pool")(hidden)
    outputs = layers.BatchNormalization(name="bn_dense")(layers.Dense(4, name="dense")(hidden))
    model = tf_keras.Model(inputs, outputs)
    assert frontend.randomise_batchnorm_statistics(model, np.random.default_rng(1)) == 3
    return model


@pytest.fixture(scope="module")
def keras2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keras2")
    model = keras2_cnn()
    paths = {"h5": folder / "cnn.h5", "keras": folder / "cnn.keras", "saved": folder / "cnn_sm"}
    for path in paths.values():
        model.save(str(path))
    return paths


def image_feeds(name: str = "image") -> dict[str, np.ndarray]:
    return {name: np.random.default_rng(7).normal(size=(3, 32, 32, 3)).astype(np.float32)}


def onnx_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(value) for value in session.run(None, feeds)]


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = FLOAT32_RTOL) -> None:
    scale = float(np.max(np.abs(expected)))
    assert float(np.max(np.abs(actual - expected))) <= rtol * scale + 1e-7


def batchnorm_layers(model: Any) -> int:
    return sum(
        type(layer).__name__ == "BatchNormalization"
        for layer in model._flatten_layers(include_self=False)
    )


def onnx_batchnorms(path: Path) -> int:
    import onnx

    return sum(node.op_type == "BatchNormalization" for node in onnx.load(str(path)).graph.node)


def folded_count(result: Any) -> tuple[int, int]:
    folded = sum(entry.outcome != Outcome.LEFT for entry in result.entries)
    return folded, len(result.entries) - folded


# --- Keras 2 files -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["h5", "keras", "saved"])
def test_keras2_file_loads_with_tf_keras(kind: str, keras2_files: dict[str, Path]) -> None:
    keras_frontend = frontend.KerasFrontend()
    model = keras_frontend.load(keras2_files[kind], LoadSettings())
    assert type(model).__module__.startswith("tf_keras")
    described = keras_frontend.describe(model)
    assert described.startswith("Keras 2") and "tf_keras" in described
    assert [spec.name for spec in frontend.keras_input_specs(model)] == ["image"]
    assert frontend.keras_output_names(model) == ["bn_dense"]
    expected = keras2_cnn_outputs(keras2_files["h5"])
    assert_close(frontend.predict_keras(model, image_feeds())["bn_dense"], expected)


def test_keras2_archive_without_metadata_is_told_by_its_config(
    keras2_files: dict[str, Path], tmp_path: Path
) -> None:
    """No metadata.json: Keras 2's config format (``batch_input_shape``) says Keras 2."""
    import zipfile

    path = tmp_path / "no_metadata.keras"
    with zipfile.ZipFile(keras2_files["keras"]) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            if name != "metadata.json":
                target.writestr(name, source.read(name))
    model = frontend.load_keras_model(path)
    assert type(model).__module__.startswith("tf_keras")
    assert frontend.KerasFrontend().describe(model).startswith("Keras 2 .keras, loaded with")


def keras2_cnn_outputs(path: Path) -> np.ndarray:
    return np.asarray(tf_keras.models.load_model(str(path), compile=False)(image_feeds()["image"]))


@pytest.mark.parametrize(
    ("kind", "suffix"), [("h5", ".onnx"), ("keras", ".keras"), ("saved", ".h5")]
)
def test_keras2_file_folds(
    kind: str, suffix: str, keras2_files: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / f"folded{suffix}"
    result = bnfold.fold(str(keras2_files[kind]), output=str(output))
    assert result.check is not None and result.check.passed
    expected = keras2_cnn_outputs(keras2_files["h5"])
    if suffix == ".onnx":
        (actual,) = onnx_outputs(output, image_feeds())
        assert onnx_batchnorms(output) == 0
    else:
        reloaded = tf_keras.models.load_model(str(output), compile=False)  # loads back in Keras 2
        actual = np.asarray(reloaded(image_feeds()["image"]))
        assert batchnorm_layers(reloaded) == folded_count(result)[1]
    assert_close(actual, expected)
    assert folded_count(result) == (3, 0)


def test_keras2_functional_h5_prints_no_keras_warning(keras2_files: dict[str, Path]) -> None:
    script = (
        "import sys\n"
        "from bnfold.frontends import keras as k\n"
        f"model = k.load_keras_model({str(keras2_files['h5'])!r})\n"
        "import numpy as np\n"
        "k.predict_keras(model, {'image': np.zeros((1, 32, 32, 3), np.float32)})\n"
        f"k.save_keras_model(model, __import__('pathlib').Path({str(keras2_files['h5'])!r}"
        ".replace('.h5', '_again.h5')))\n"
    )
    done = run_python_quietly(script, REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "" and done.stderr == ""


# --- SavedModel directories ----------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tf.saved_model.save`` of a tf.Module: MatMul + bias, then tf.nn.batch_normalization
    (no Keras model inside)."""
    _, tf = frontend.import_keras()
    rng = np.random.default_rng(3)

    class Classifier(tf.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.Variable(rng.normal(size=(6, 5)).astype(np.float32))
            self.bias = tf.Variable(rng.normal(size=5).astype(np.float32))
            self.mean = tf.Variable(rng.normal(size=5).astype(np.float32))
            self.variance = tf.Variable(rng.uniform(0.5, 2.0, 5).astype(np.float32))
            self.gamma = tf.Variable(rng.uniform(0.5, 1.5, 5).astype(np.float32))
            self.beta = tf.Variable(rng.normal(size=5).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec((None, 6), tf.float32, name="features")])
        def __call__(self, features: Any) -> Any:
            hidden = tf.matmul(features, self.kernel) + self.bias
            normed = tf.nn.batch_normalization(
                hidden, self.mean, self.variance, self.beta, self.gamma, 1e-3
            )
            return {"scores": tf.nn.relu(normed)}

    module = Classifier()
    folder = tmp_path_factory.mktemp("plain_sm") / "classifier"
    tf.saved_model.save(module, str(folder), signatures=module.__call__)
    return folder


def test_plain_saved_model_folds_to_onnx(plain_saved_model: Path, tmp_path: Path) -> None:
    _, tf = frontend.import_keras()
    feeds = {"features": np.random.default_rng(4).normal(size=(8, 6)).astype(np.float32)}
    expected = tf.saved_model.load(str(plain_saved_model)).signatures["serving_default"](
        features=tf.constant(feeds["features"])
    )["scores"]
    output = tmp_path / "folded.onnx"
    result = bnfold.fold(str(plain_saved_model), output=str(output))
    assert result.check is not None and result.check.passed
    (actual,) = onnx_outputs(output, feeds)
    assert_close(actual, np.asarray(expected))
    assert folded_count(result) == (1, 0)  # the BN as Mul/Add, folded into the MatMul
    # No Keras layers to count: the BN-shaped chain of the graph is the BN found.
    assert result.counts()["found"] == 1


def test_plain_saved_model_has_no_keras_output(plain_saved_model: Path, tmp_path: Path) -> None:
    model = frontend.load_keras_model(plain_saved_model)
    assert "without a Keras model" in frontend.KerasFrontend().describe(model)
    with pytest.raises(OutputError, match=r"write \.onnx instead"):
        frontend.save_keras_model(model, tmp_path / "out.keras")


def test_directory_that_is_not_a_saved_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(InputError, match="not a TensorFlow SavedModel") as caught:
        frontend.load_keras_model(tmp_path)
    assert "\n" not in str(caught.value)
    from click.testing import CliRunner

    from bnfold.cli import cli

    ran = CliRunner().invoke(cli, ["fold", str(tmp_path), "-o", str(tmp_path / "out.onnx")])
    assert ran.exit_code == 3
    assert len(ran.output.strip().splitlines()) == 1
    assert "not a TensorFlow SavedModel" in ran.output


# --- mixed precision -----------------------------------------------------------------------


@pytest.fixture
def mixed_float16_file(tmp_path: Path) -> Path:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layers = keras.layers
        inputs = keras.Input((32, 32, 3), name="image")
        hidden = layers.BatchNormalization(name="bn")(layers.Conv2D(8, 3, name="conv")(inputs))
        hidden = layers.GlobalAveragePooling2D(name="pool")(layers.ReLU(name="relu")(hidden))
        outputs = layers.Dense(4, name="head", dtype="float32")(hidden)
        model = keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(2))
    path = tmp_path / "mixed.keras"
    model.save(path)
    return path


@pytest.mark.parametrize("suffix", [".onnx", ".keras"])
def test_mixed_float16_folds_within_the_float16_gate(
    suffix: str, mixed_float16_file: Path, tmp_path: Path
) -> None:
    model = frontend.load_keras_model(mixed_float16_file)
    assert frontend.KerasFrontend().compute_dtype(model) == "float16"
    output = tmp_path / f"folded{suffix}"
    result = bnfold.fold(str(mixed_float16_file), output=str(output))
    assert result.check is not None and result.check.passed
    assert folded_count(result) == (1, 0)
    assert all(comparison.rtol >= 1e-3 for comparison in result.check.outputs)  # float16's gate
    assert result.check.gate_note == "gate of float16: the model computes in float16"
    expected = frontend.predict_keras(model, image_feeds())["head"]
    if suffix == ".onnx":
        (actual,) = onnx_outputs(output, image_feeds())
    else:
        reloaded = frontend.load_keras_model(output)
        actual = frontend.predict_keras(reloaded, image_feeds())["head"]
        assert batchnorm_layers(reloaded) == 0
    assert_close(actual, expected, rtol=1e-2)


# --- EfficientNet to ONNX ------------------------------------------------------------------


def test_efficientnet_converts_to_one_input_onnx() -> None:
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3))
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(5))
    converted = frontend.keras_to_onnx(model)
    # Keras numbers its default names per process (input_layer, input_layer_1, ...).
    (name,) = [spec.name for spec in frontend.keras_input_specs(model)]
    assert [value.name for value in converted.graph.inputs] == [name]
    import onnx_ir

    feeds = image_feeds(name)
    session = onnxruntime.InferenceSession(
        onnx_ir.serde.serialize_model(converted).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    (actual,) = session.run(None, feeds)
    expected = frontend.predict_keras(model, feeds)["predictions"]
    assert_close(np.asarray(actual), expected)


# --- a registered custom layer -------------------------------------------------------------


@pytest.fixture
def custom_layer_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any]:
    """A .keras file with a registered custom layer, then the class unregistered (as in a
    process that has not imported the package defining it); returns the path and the class."""
    from keras.src.saving import object_registration

    @keras.saving.register_keras_serializable(package="my_pkg")
    class Shift(keras.layers.Layer):  # type: ignore[misc,name-defined]
        def call(self, inputs: Any) -> Any:
            return inputs + 1.0

    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3, name="lin")(inputs))
    model = keras.Model(inputs, Shift(name="shift")(hidden))
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(6))
    path = tmp_path / "custom.keras"
    model.save(path)
    monkeypatch.delitem(object_registration.GLOBAL_CUSTOM_OBJECTS, "my_pkg>Shift")
    return path, Shift


@pytest.mark.parametrize("allow_unsafe", [False, True])
def test_unimportable_custom_layer_names_the_class_and_the_ways_out(
    allow_unsafe: bool, custom_layer_file: tuple[Path, Any]
) -> None:
    path, _ = custom_layer_file
    with pytest.raises(InputError) as caught:
        frontend.load_keras_model(path, allow_unsafe=allow_unsafe)
    message = str(caught.value)
    assert "\n" not in message
    assert "'shift' is the custom class my_pkg>Shift" in message
    assert "--allow-unsafe only runs code stored in the file" in message
    assert "import the module that registers Shift" in message and "bnfold.fold(" in message


def test_imported_custom_layer_folds_through_the_library(
    custom_layer_file: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keras.src.saving import object_registration

    path, shift = custom_layer_file
    monkeypatch.setitem(object_registration.GLOBAL_CUSTOM_OBJECTS, "my_pkg>Shift", shift)
    output = tmp_path / "folded.onnx"
    result = bnfold.fold(str(path), output=str(output))
    assert result.check is not None and result.check.passed
    # The BN folds into 'lin'; Shift's "+ 1.0" is a scalar affine in ONNX and folds into its bias.
    assert folded_count(result) == (2, 0)
    feeds = {"x": np.random.default_rng(8).normal(size=(5, 4)).astype(np.float32)}
    expected = frontend.predict_keras(frontend.load_keras_model(path), feeds)["shift"]
    (actual,) = onnx_outputs(output, feeds)
    assert_close(actual, expected)
