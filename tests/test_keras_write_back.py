"""The Keras write-back pairs by name and cannot crash (issue 14): a rebuilt model whose layer
order differs from the original's, a Keras rebuild that fails (the model is handed on
unchanged, and for .onnx output the ONNX pass folds the BNs), pairs whose shapes differ, and
``inspect``, which never rebuilds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import bnfold  # noqa: E402
from bnfold.foldlog import Outcome, Reason  # noqa: E402
from bnfold.frontends import keras as frontend  # noqa: E402
from bnfold.frontends.keras import write_back  # noqa: E402
from bnfold.testing_keras import batchnorms_in_file  # noqa: E402

pytestmark = pytest.mark.keras
L = keras.layers


def residual_with_pool() -> Any:
    """Xception's pattern: a residual Add of a strided 1x1 conv and a pooled branch; dropping
    the BNs moves the pooling layer in Keras' rebuilt layer order."""
    inputs = keras.Input((8, 8, 3))
    shortcut = L.BatchNormalization(name="bn_short")(
        L.Conv2D(4, 1, strides=2, name="short")(inputs)
    )
    x = L.BatchNormalization(name="bn_a")(L.Conv2D(4, 3, padding="same", name="conv_a")(inputs))
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool")(L.ReLU()(x))
    x = L.Dense(2, name="head")(L.Add()([x, shortcut]))
    model = keras.Model(inputs, L.BatchNormalization(name="bn_head")(x))
    frontend.randomise_batchnorm_statistics(model, np.random.default_rng(0))
    return model


def test_rebuilt_layers_pair_with_their_originals_by_name(tmp_path: Path) -> None:
    model = residual_with_pool()
    result = bnfold.fold(model, tmp_path / "out.keras")
    assert {e.name: e.target for e in result.entries} == {
        "bn_short": ["short"],
        "bn_a": ["conv_a"],
        "bn_head": ["head"],
    }
    assert result.check is not None and result.check.max_rel <= 1e-6
    written = frontend.load_keras_model(tmp_path / "out.keras")
    pool = written.get_layer("pool")  # no weights: paired by position, it took two before
    assert pool.get_weights() == [] and len(written.get_layer("conv_a").get_weights()) == 2


def test_a_rebuild_keras_refuses_hands_the_model_on_unchanged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def refuse(model: Any, config: Any) -> Any:
        raise TypeError("too many positional arguments")

    monkeypatch.setattr(write_back, "_rebuild", refuse)
    model = residual_with_pool()
    as_keras = bnfold.fold(model, tmp_path / "out.keras")
    assert {e.reason for e in as_keras.entries} == {Reason.REBUILD_FAILED}
    assert all(
        "Keras cannot rebuild the folded model: too many" in e.detail for e in as_keras.entries
    )
    assert batchnorms_in_file(tmp_path / "out.keras") == as_keras.counts()["left"] == 3
    # For .onnx output the Keras rewrite is only an optimisation: TensorFlow folds the convs'
    # BNs while converting, the ONNX pass the Dense's.
    as_onnx = bnfold.fold(model, tmp_path / "out.onnx")
    assert {e.name: (e.outcome, e.stage) for e in as_onnx.entries if e.kind == "batchnorm"} == {
        "bn_short": (Outcome.REMOVED_BY_CONVERTER, "keras"),
        "bn_a": (Outcome.REMOVED_BY_CONVERTER, "keras"),
        "bn_head": (Outcome.FOLDED_INTO_PREVIOUS, "onnx"),
    }
    assert as_onnx.counts()["left"] == 0
    assert as_onnx.check is not None and as_onnx.check.max_rel <= 1e-5


def test_pairs_whose_shapes_differ_fail_before_any_weight_is_set() -> None:
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="fc")])
    other = keras.Sequential([keras.Input((4,)), L.Dense(5, name="fc")])
    pairs = write_back.pair_layers(model, other, set(), {})
    with pytest.raises(write_back.RewriteError, match=r"layer 'fc' has weights of shapes"):
        write_back._copy_weights(pairs, {})


def test_a_rebuilt_layer_without_an_original_is_named() -> None:
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="fc")])
    other = keras.Sequential([keras.Input((4,)), L.Dense(3, name="fc"), L.Dense(2, name="x")])
    with pytest.raises(write_back.RewriteError, match=r"rebuilt layer 'x' \(Dense\) pairs with no"):
        write_back.pair_layers(model, other, set(), {})


def test_inspect_decides_and_rebuilds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(model: Any, changes: Any) -> Any:
        raise AssertionError("inspect rebuilt the model")

    monkeypatch.setattr("bnfold.frontends.keras.folding.apply_rewrites", forbidden)
    result = bnfold.inspect(residual_with_pool())
    assert {e.name: (e.outcome, e.stage) for e in result.entries} == {
        "bn_short": (Outcome.FOLDED_INTO_PREVIOUS, "keras"),
        "bn_a": (Outcome.FOLDED_INTO_PREVIOUS, "keras"),
        "bn_head": (Outcome.FOLDED_INTO_PREVIOUS, "keras"),
    }
    assert result.counts()["affines_folded"] == 0  # the BNs' own Mul/Add are not "other affines"
    # One weight-range row per Keras layer a fold changes; the ONNX pass over the unfolded
    # conversion folds the head's BN again, which adds no second row.
    assert sorted(row.layer for row in result.weight_ranges) == ["conv_a", "head", "short"]


def test_a_dense_whose_bias_a_zero_shift_emptied_keeps_its_bias(tmp_path: Path) -> None:
    """Dense (bias) on a 3-D input, then a BN whose folded shift is exactly zero (a freshly
    built BN): the core drops the all-zero bias Add; the rebuilt Dense keeps a zero bias
    (was: Keras refused the rebuild, every BN of the model left rebuild_failed)."""
    inputs = keras.Input((4, 5))
    model = keras.Model(inputs, L.BatchNormalization(name="bn")(L.Dense(8, name="lin")(inputs)))
    result = bnfold.fold(model, tmp_path / "out.keras")
    (entry,) = result.entries
    assert entry.outcome is Outcome.FOLDED_INTO_PREVIOUS and entry.target == ["lin"]
    written = frontend.load_keras_model(tmp_path / "out.keras")
    kernel, bias = written.get_layer("bn").get_weights()  # 'lin' keeps the output's name
    assert kernel.shape == (5, 8) and np.array_equal(bias, np.zeros(8, np.float32))
