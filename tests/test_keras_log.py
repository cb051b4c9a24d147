"""The log is true of the file written: every BN of the input once, and its count of what
is left equal to what is really left in the output (BN layers in Keras output, BN nodes and
BN-shaped Mul/Add chains in ONNX output).

The cases are the models issue 9 found a wrong log on: nested base models (Sequential and
functional), a Dense called twice, TimeDistributed BN and TimeDistributed Dense -> BN,
Conv1D bias Adds, and a custom layer's constant multiply.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import onnx_ir  # noqa: E402

import bnfold  # noqa: E402
from bnfold.foldlog import Outcome  # noqa: E402
from bnfold.frontends import keras as frontend  # noqa: E402
from bnfold.rules.affines import find_affine_chains  # noqa: E402

pytestmark = pytest.mark.keras
L = keras.layers


@keras.saving.register_keras_serializable(package="bnfold_tests")
class TimesTwo(L.Layer):
    """A custom layer whose constant multiply tf2onnx writes as a Mul: not a BN."""

    def call(self, inputs: Any) -> Any:
        return inputs * 2.0


def small_base(name: str = "base") -> Any:
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.BatchNormalization()(x)
    return keras.Model(inputs, L.ReLU()(x), name=name)


def nested_sequential() -> Any:
    head = [keras.Input((8, 8, 3)), small_base(), L.GlobalAveragePooling2D(), L.Dropout(0.2)]
    return keras.Sequential([*head, L.Dense(5), L.BatchNormalization()])


def nested_functional() -> Any:
    inputs = keras.Input((8, 8, 3))
    x = small_base()(inputs, training=False)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.BatchNormalization()(L.Dense(5)(x)))


def shared_dense() -> Any:
    dense = L.Dense(6, name="shared")
    inputs = keras.Input((6,))
    first = L.BatchNormalization(name="bn_a")(dense(inputs))
    return keras.Model(inputs, L.BatchNormalization(name="bn_b")(dense(L.ReLU()(first))))


def shared_conv() -> Any:
    """A Conv2D called twice: the Keras pass leaves both BNs (one kernel serves both calls);
    TensorFlow folds each into its call's convolution while tf2onnx converts."""
    conv = L.Conv2D(4, 3, padding="same", use_bias=False, name="conv")
    inputs = keras.Input((8, 8, 4))
    first = L.BatchNormalization(name="bn_a")(conv(inputs))
    return keras.Model(inputs, L.BatchNormalization(name="bn_b")(conv(L.ReLU()(first))))


def time_distributed() -> Any:
    inputs = keras.Input((5, 4))
    x = L.TimeDistributed(L.Dense(3))(inputs)
    x = L.TimeDistributed(L.BatchNormalization())(x)
    x = L.TimeDistributed(L.Dense(3))(L.ReLU()(x))
    return keras.Model(inputs, L.BatchNormalization()(x))


def conv1d_with_bias() -> Any:
    layers: list[Any] = [keras.Input((12, 3))]
    for filters in (4, 5, 6):
        layers += [L.Conv1D(filters, 3), L.BatchNormalization(), L.ReLU()]
    return keras.Sequential(layers)


def custom_multiply() -> Any:
    inputs = keras.Input((6,))
    x = TimesTwo()(L.Dense(5, activation="relu")(inputs))
    return keras.Model(inputs, L.Dense(3)(L.BatchNormalization()(x)))


CASES: dict[str, tuple[Callable[[], Any], int]] = {
    # name: (builder, BN layers in the input, nested and wrapped ones once each)
    "nested_sequential": (nested_sequential, 3),
    "nested_functional": (nested_functional, 3),
    "shared_dense": (shared_dense, 2),
    "shared_conv": (shared_conv, 2),
    "time_distributed": (time_distributed, 2),
    "conv1d_with_bias": (conv1d_with_bias, 3),
    "custom_multiply": (custom_multiply, 1),
}


def keras_batchnorms(model: Any) -> list[str]:
    return [
        layer.name
        for layer in model._flatten_layers(include_self=False)
        if type(layer).__name__ == "BatchNormalization"
    ]


def onnx_batchnorms_left(path: Path) -> int:
    """BN nodes and BN-shaped Mul/Add chains in an ONNX file, as the engine finds them."""
    model = onnx_ir.load(path)
    return sum(chain.is_bn_like for chain in find_affine_chains(model.graph))


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    keras.utils.set_random_seed(3)
    built = {}
    for index, (name, (build, _)) in enumerate(CASES.items()):
        model = build()
        frontend.randomise_batchnorm_statistics(model, np.random.default_rng(index))
        built[name] = model
    return built


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("suffix", [".onnx", ".keras"])
def test_found_and_left_are_true_of_the_output(
    name: str, suffix: str, models: dict[str, Any], tmp_path: Path
) -> None:
    model, expected_found = models[name], CASES[name][1]
    assert len(keras_batchnorms(model)) == expected_found
    out = tmp_path / f"folded{suffix}"
    result = bnfold.fold(model, out)
    counts = result.counts()
    assert counts["found"] == expected_found
    assert len([e for e in result.entries if e.kind == "batchnorm"]) == expected_found
    assert result.check is not None and result.check.passed
    assert result.check.max_rel <= 1e-5
    if suffix == ".onnx":
        assert onnx_batchnorms_left(out) == counts["left"]
    else:
        written = frontend.load_keras_model(out)
        left = [e for e in result.entries if e.kind == "batchnorm" and e.outcome is Outcome.LEFT]
        assert len(keras_batchnorms(written)) == counts["left"] == len(left)
        # Every BN left is named by its path; its last part is the layer's name in the output.
        assert sorted(e.name.rsplit("/", 1)[-1] for e in left) == sorted(keras_batchnorms(written))


def test_nested_base_folds_every_bn_and_names_it_by_path(models: dict[str, Any]) -> None:
    result = bnfold.inspect(models["nested_sequential"])
    names = [entry.name for entry in result.entries]
    assert all(entry.folded for entry in result.entries)
    assert sum(name.startswith("base/") for name in names) == 2


def test_shared_dense_is_left_in_keras_and_folded_into_copies_in_onnx(
    models: dict[str, Any], tmp_path: Path
) -> None:
    as_keras = bnfold.fold(models["shared_dense"], tmp_path / "out.keras")
    assert {e.name: e.outcome for e in as_keras.entries} == {
        "bn_a": Outcome.LEFT,
        "bn_b": Outcome.LEFT,
    }
    assert all("called 2 times" in e.detail for e in as_keras.entries)
    as_onnx = bnfold.fold(models["shared_dense"], tmp_path / "out.onnx")
    # In ONNX each call has its own MatMul: the weight is copied per call, so both fold.
    assert all(e.folded and e.stage == "onnx" for e in as_onnx.entries if e.kind == "batchnorm")
    assert onnx_batchnorms_left(tmp_path / "out.onnx") == 0


def test_conv1d_bias_adds_are_listed_apart(models: dict[str, Any], tmp_path: Path) -> None:
    result = bnfold.fold(models["conv1d_with_bias"], tmp_path / "out.onnx")
    assert result.counts()["found"] == 3
    assert all(e.kind == "affine" and e.folded for e in result.entries[3:])


def test_bns_tensorflow_folds_during_conversion_are_removed_by_the_converter(
    models: dict[str, Any], tmp_path: Path
) -> None:
    """tf2onnx names Transposes after the BN's scope; they are not the BN, and the log must
    not call the BN left because of them."""
    result = bnfold.fold(models["shared_conv"], tmp_path / "out.onnx")
    assert {e.name: e.outcome for e in result.entries} == {
        "bn_a": Outcome.REMOVED_BY_CONVERTER,
        "bn_b": Outcome.REMOVED_BY_CONVERTER,
    }
    assert result.counts()["left"] == 0
    assert onnx_batchnorms_left(tmp_path / "out.onnx") == 0
    assert "the Keras pass had left it" in result.entries[0].detail
