"""Keras files as research code ships them (issue 14): .h5 written by the standalone keras
package 2.0 to 2.4 (tf_keras writes the same format; the file's ``keras_version`` is set as
old files carry it), Sequential and functional, Conv1D/Conv2D nets with residual Adds,
Cropping, pooling and Concatenate, BN right after an input; each folded to .onnx, .h5 and
.keras, the written file read back and compared with the original, its BNs counted.

And the shapes that used to end in an internal error: a model that cannot run at the check's
default sizes (a Cropping1D of 10000 after pooling; a MaxPooling2D that cannot pool 16), and a
SavedModel whose BNs TensorFlow fused (counted from its own graph, not "found 0").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")
h5py = pytest.importorskip("h5py")

import bnfold  # noqa: E402
from bnfold.errors import InputError  # noqa: E402
from bnfold.foldlog import Outcome  # noqa: E402
from bnfold.frontends import keras as frontend  # noqa: E402
from bnfold.testing_keras import batchnorms_in_file, run_written  # noqa: E402

pytestmark = pytest.mark.keras
L = tf_keras.layers
BOUND = 1e-5


def sequential_conv1d() -> Any:
    """A 2017-style Sequential Conv1D classifier: Conv -> BN -> ReLU -> pool, twice."""
    return tf_keras.Sequential(
        [
            L.InputLayer((64, 4)),
            L.Conv1D(8, 5, padding="same"),
            L.BatchNormalization(),
            L.Activation("relu"),
            L.MaxPooling1D(2),
            L.Conv1D(8, 3),
            L.BatchNormalization(),
            L.Activation("relu"),
            L.GlobalMaxPooling1D(),
            L.Dense(3),
        ]
    )


def residual_conv1d() -> Any:
    """A genomics-style residual Conv1D net on [None, None, 4] ending in Cropping1D."""
    inputs = L.Input((None, 4))
    x = L.Activation("relu")(L.BatchNormalization()(L.Conv1D(8, 5, padding="same")(inputs)))
    for dilation in (1, 2):
        branch = L.Conv1D(8, 3, padding="same", dilation_rate=dilation)(x)
        x = L.Add()([x, L.BatchNormalization()(branch)])
    x = L.Cropping1D((300, 300))(L.MaxPooling1D(4)(x))
    return tf_keras.Model(inputs, L.Conv1D(1, 1)(x))


def two_branch_conv2d() -> Any:
    """Two inputs with BN right after each (vec -> BN -> Dense, img -> BN -> Conv2D), a
    Cropping2D, pooling and a Concatenate."""
    vec, img = L.Input((6,), name="vec"), L.Input((12, 12, 3), name="img")
    a = L.Dense(4)(L.BatchNormalization()(vec))
    b = L.Conv2D(4, 3)(L.BatchNormalization()(img))
    b = L.BatchNormalization()(b)
    b = L.AveragePooling2D()(L.Cropping2D(((1, 1), (1, 1)))(b))
    b = L.GlobalAveragePooling2D()(L.Conv2D(4, 1)(b))
    return tf_keras.Model([vec, img], L.Dense(2)(L.Concatenate()([a, b])))


BUILDERS: dict[str, tuple[Callable[[], Any], str, int]] = {
    # name: (builder, keras_version written in the file, BN layers)
    "sequential_conv1d": (sequential_conv1d, "2.0.5", 2),
    "residual_conv1d": (residual_conv1d, "2.2.4", 3),
    "two_branch_conv2d": (two_branch_conv2d, "2.4.0", 3),
}


@pytest.fixture(scope="module")
def research_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("research")
    paths = {}
    for index, (name, (build, version, _)) in enumerate(BUILDERS.items()):
        model = build()
        frontend.randomise_batchnorm_statistics(model, np.random.default_rng(index))
        path = folder / f"{name}.h5"
        model.save(str(path))
        with h5py.File(path, "r+") as stored:
            stored.attrs["keras_version"] = version  # as the standalone keras package wrote it
            stored.attrs["backend"] = "tensorflow"
        paths[name] = path
    return paths


def feeds_for(model: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    feeds = {}
    for spec in frontend.keras_input_specs(model):
        shape = [2, *(d if isinstance(d, int) else 2464 for d in spec.shape[1:])]
        feeds[spec.name] = rng.normal(size=shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("suffix", [".onnx", ".h5", ".keras"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_research_file_folds_to_every_format(
    name: str, suffix: str, research_files: dict[str, Path], tmp_path: Path
) -> None:
    source = research_files[name]
    out = tmp_path / f"folded{suffix}"
    result = bnfold.fold(source, out)
    assert result.loaded_with is not None and BUILDERS[name][1] in result.loaded_with
    counts = result.counts()
    assert counts["found"] == BUILDERS[name][2]
    assert counts["left"] == batchnorms_in_file(out) == 0
    original = frontend.load_keras_model(source)
    feeds = feeds_for(original)
    expected = frontend.predict_keras(original, feeds)
    actual = run_written(out, feeds)
    for key, value in expected.items():
        assert np.max(np.abs(actual[key] - value)) <= BOUND * np.max(np.abs(value))


def test_crop_of_10000_sizes_the_check_from_the_layer(tmp_path: Path) -> None:
    inputs = L.Input((None, 4))
    x = L.BatchNormalization()(L.Conv1D(8, 5, padding="same")(inputs))
    model = tf_keras.Model(inputs, L.Conv1D(1, 1)(L.Cropping1D((5000, 5000))(x)))
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(0))
    result = bnfold.fold(model, tmp_path / "out.onnx")
    assert result.check is not None and result.check.passed
    # 10000 cropped + 16 left after the crop; the first line says which layer asked for it.
    assert "=10016 from Cropping1D 'cropping1d" in result.check.inputs


def test_a_model_no_size_runs_is_exit_3_naming_the_sizes_tried(tmp_path: Path) -> None:
    """A Reshape to 40 frames fits none of the sizes tried: one line, the sizes, --dim."""
    inputs = L.Input((None, 2))
    x = L.Reshape((40, 3))(inputs)  # needs 60 time steps, which no default or fallback gives
    model = tf_keras.Model(inputs, L.BatchNormalization()(L.Dense(3)(x)))
    with pytest.raises(InputError) as raised:
        bnfold.fold(model, tmp_path / "out.onnx")
    message = str(raised.value)
    assert "shapes tried:" in message and "--dim" in message and "\n" not in message
    assert not (tmp_path / "out.onnx").exists()


def test_max_pooling_that_cannot_pool_16_runs_at_a_fallback_size(tmp_path: Path) -> None:
    """A tempo CNN on [None, 40, None, 1] whose two pools need a width of at least 25."""
    inputs = L.Input((40, None, 1))
    x = L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(inputs))
    x = L.MaxPooling2D((1, 5))(L.MaxPooling2D((1, 5))(L.Activation("elu")(x)))
    model = tf_keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling2D()(x)))
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(0))
    result = bnfold.fold(model, tmp_path / "out.h5")
    assert result.check is not None and result.check.passed and result.check.max_rel <= BOUND
    assert "[2, 40, 32, 1]" in result.check.inputs


def test_saved_model_counts_the_bns_tensorflow_fused(tmp_path: Path) -> None:
    import tensorflow as tf

    inputs = L.Input((16, 16, 3))
    x = L.Activation("relu")(L.BatchNormalization(name="bn_a")(L.Conv2D(8, 3)(inputs)))
    x = L.BatchNormalization(name="bn_b")(L.DepthwiseConv2D(3)(x))
    x = L.Dense(4)(L.GlobalAveragePooling2D()(x))
    model = tf_keras.Model(inputs, L.BatchNormalization(name="bn_c")(x))
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(0))
    tf.saved_model.save(model, str(tmp_path / "saved"))
    result = bnfold.fold(tmp_path / "saved", tmp_path / "out.onnx")
    outcomes = {entry.name.rsplit("/", 1)[-1]: entry.outcome for entry in result.entries}
    assert outcomes == {
        "bn_a": Outcome.REMOVED_BY_CONVERTER,
        "bn_b": Outcome.REMOVED_BY_CONVERTER,
        "bn_c": Outcome.FOLDED_INTO_PREVIOUS,
    }
    assert result.counts()["found"] == 3 and result.counts()["left"] == 0
    assert batchnorms_in_file(tmp_path / "out.onnx") == 0


def test_bn_after_concatenate_of_two_convs_folds_into_both(tmp_path: Path) -> None:
    """NASNet's adjust block: two pooled 1x1 convs concatenated, then a BN; each conv takes
    its slice of the BN (before: left, 'follows Concatenate, which no rule can fold into')."""
    import keras

    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    paths = [
        layers.Conv2D(4, 1, use_bias=False, name=f"conv_{i}")(layers.AveragePooling2D(1, 2)(inputs))
        for i in range(2)
    ]
    outputs = layers.BatchNormalization(name="bn")(layers.Concatenate()(paths))
    model = keras.Model(inputs, layers.Activation("relu")(outputs))
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(0))
    result = bnfold.fold(model, tmp_path / "out.keras")
    (entry,) = result.entries
    assert entry.outcome is Outcome.FOLDED_INTO_PREVIOUS and entry.target == ["conv_0", "conv_1"]
    assert result.check is not None and result.check.max_rel <= BOUND
    assert batchnorms_in_file(tmp_path / "out.keras") == 0


def test_op_layer_reading_a_bn_as_its_second_argument_rewires(tmp_path: Path) -> None:
    """RegNet's ``relu(x + skip_bn(skip))`` in tf_keras: the op layer lists ``x`` as its
    input and ``skip`` among its call kwargs; both BNs are found, fold, and the rebuilt
    model reads the skip convolution where it read its BN (was: 4 of RegNetX002's 44 BNs
    missing from the log, and Keras could not rebuild the model)."""
    inputs = L.Input((8, 8, 3))
    x = L.BatchNormalization(name="main_bn")(L.Conv2D(4, 3, padding="same", name="main")(inputs))
    skip = L.BatchNormalization(name="skip_bn")(L.Conv2D(4, 1, name="skip")(inputs))
    model = tf_keras.Model(inputs, L.ReLU()(x + skip))
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(0))
    for suffix in (".h5", ".onnx"):
        result = bnfold.fold(model, tmp_path / f"out{suffix}")
        assert {e.name: e.target for e in result.entries} == {
            "main_bn": ["main"],
            "skip_bn": ["skip"],
        }
        assert result.check is not None and result.check.max_rel <= BOUND
        assert batchnorms_in_file(tmp_path / f"out{suffix}") == 0


def test_exact_gelu_converts_to_onnx_erf(tmp_path: Path) -> None:
    """tf2onnx writes TensorFlow's Erfc (Keras 3's exact GELU, ConvNeXt's activation) as an
    op ONNX does not have; bnfold writes 1 - Erf in its place (was: exit 3)."""
    import keras
    import onnx

    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, activation=lambda t: keras.activations.gelu(t, approximate=False))(
        inputs
    )
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.BatchNormalization()(x)))
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(0))
    result = bnfold.fold(model, tmp_path / "out.onnx")
    assert result.check is not None and result.check.max_rel <= BOUND
    ops = {node.op_type for node in onnx.load(tmp_path / "out.onnx").graph.node}
    assert "Erf" in ops and "Erfc" not in ops
