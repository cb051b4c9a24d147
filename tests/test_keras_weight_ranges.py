"""Weight ranges of Keras folds: one row per Keras layer whose weights a fold changed, named by
the layer's path, its numbers those of the kernel as written back in Keras layout (output
channels per layer kind as docs/arithmetic.md lays them out), and the quantization line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import bnfold  # noqa: E402
from bnfold.frontends.keras import write_back  # noqa: E402

pytestmark = pytest.mark.keras
L = keras.layers
LOUD = 100.0  # the scale of BN channel 3: past both limits, alone


def loud_batchnorms(model: Any) -> None:
    """Every BN an exact per-channel scale (mean 0, var 1 - eps): channel 3 by ``LOUD``, the
    others by 0.5 .. 1.5, and a shift (which no weight range sees)."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = (np.asarray(w) for w in layer.get_weights())
            scale = rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32)
            scale[3] = LOUD
            shift = rng.normal(0, 0.1, beta.shape).astype(np.float32)
            var = np.full_like(var, 1 - layer.epsilon)
            layer.set_weights([scale, shift, np.zeros_like(mean), var])


def conv_bn(layer: Any, shape: tuple[int, ...]) -> Any:
    """``layer`` -> BN -> ReLU: the folded layer keeps its name (a BN that is the model's
    output would hand its name to the layer it folds into)."""
    inputs = keras.Input(shape)
    model = keras.Model(inputs, L.ReLU(name="out")(L.BatchNormalization(name="bn")(layer(inputs))))
    loud_batchnorms(model)
    return model


def bn_dense() -> Any:
    """A forward fold: the BN scales the Dense's input channels."""
    inputs = keras.Input((8,))
    model = keras.Model(inputs, L.Dense(6, name="lin")(L.BatchNormalization(name="bn")(inputs)))
    loud_batchnorms(model)
    return model


def expected(before: np.ndarray, after: np.ndarray, channels_of: Callable) -> dict[str, float]:
    """max|W| and the channel spread (largest over median channel max|W|), by numpy on the
    Keras kernels; ``channels_of`` puts the output channels on the last axis."""

    def spread(kernel: np.ndarray) -> float:
        channels = channels_of(kernel.astype(np.float64))
        ranges = np.abs(channels).reshape(-1, channels.shape[-1]).max(axis=0)
        return float(ranges.max() / np.median(ranges))

    return {
        "before_max": float(np.abs(before).max()),
        "after_max": float(np.abs(after).max()),
        "spread_before": spread(before),
        "spread_after": spread(after),
        "channels": channels_of(after).shape[-1],
    }


def _rows(result: bnfold.FoldResult) -> list[tuple[str, str]]:
    return [(row.layer, row.op) for row in result.weight_ranges or []]


# (model, layer, op, index of the kernel in get_weights(), output channels onto the last axis)
CASES = {
    "Conv2D": (
        lambda: conv_bn(L.Conv2D(8, 3, name="lin"), (6, 6, 3)),
        "Conv2D",
        0,
        lambda k: k,  # [kh, kw, in, out]
    ),
    "Dense": (lambda: conv_bn(L.Dense(8, name="lin"), (5,)), "Dense", 0, lambda k: k),
    "Dense3D": (lambda: conv_bn(L.Dense(8, name="lin"), (4, 5)), "Dense", 0, lambda k: k),
    "DepthwiseConv2D": (
        lambda: conv_bn(L.DepthwiseConv2D(3, depth_multiplier=2, name="lin"), (6, 6, 4)),
        "DepthwiseConv2D",
        0,
        lambda k: k.reshape(*k.shape[:-2], -1),  # [kh, kw, in, mult]: channel in*mult + m
    ),
    "Conv2DTranspose": (
        lambda: conv_bn(L.Conv2DTranspose(8, 3, name="lin"), (5, 5, 3)),
        "Conv2DTranspose",
        0,
        lambda k: np.moveaxis(k, -2, -1),  # [kh, kw, out, in]
    ),
    "SeparableConv2D": (
        lambda: conv_bn(L.SeparableConv2D(8, 3, name="lin"), (6, 6, 3)),
        "SeparableConv2D",
        1,  # the pointwise kernel [1, 1, in*mult, out]
        lambda k: k,
    ),
    "BN->Dense": (bn_dense, "Dense", 0, lambda k: k),  # forward: outputs mix every input
}


@pytest.mark.parametrize("case", list(CASES))
def test_rows_equal_numpy_on_the_written_kernels(case: str, tmp_path: Path) -> None:
    build, op, index, channels_of = CASES[case]
    model = build()
    before = np.asarray(model.get_layer("lin").get_weights()[index])
    result = bnfold.fold(model, tmp_path / "out.keras")
    assert result.check is not None and result.check.passed
    [entry] = result.entries
    assert entry.folded and entry.target == ["lin"]
    after = np.asarray(result.model.get_layer("lin").get_weights()[index])
    [row] = result.weight_ranges or []
    assert (row.layer, row.op) == ("lin", op)
    numbers = {key: getattr(row, key) for key in ("before_max", "after_max", "spread_before")}
    numbers |= {"spread_after": row.spread_after, "channels": row.channels}
    assert numbers == pytest.approx(expected(before, after, channels_of), rel=1e-12)
    assert row.growth == pytest.approx(row.after_max / row.before_max, rel=1e-12)


def test_a_loud_bn_channel_gives_the_quantization_line() -> None:
    result = bnfold.fold(conv_bn(L.Conv2D(8, 3, name="conv"), (6, 6, 3)))
    [row] = result.weight_ranges or []
    assert row.flagged and row.growth > 8 and row.spread_after > 16 > row.spread_before
    assert result.weight_range_warning.startswith("Quantization: the fold widened 1 layer(s)")
    assert "conv (range" in result.weight_range_warning


def test_depthwise_kernel_of_a_separable_layer_is_its_own_row() -> None:
    inputs = keras.Input((6, 6, 4))
    x = L.BatchNormalization(name="bn")(inputs)
    model = keras.Model(inputs, L.SeparableConv2D(5, 1, name="sep")(x))
    loud_batchnorms(model)
    result = bnfold.fold(model)
    assert result.check is not None and result.check.passed
    assert _rows(result) == [("sep", "SeparableConv2D (depthwise)")]


def test_inspect_onnx_output_and_a_refused_rebuild(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = conv_bn(L.Conv2D(8, 3, name="conv"), (6, 6, 3))
    assert _rows(bnfold.inspect(model)) == [("conv", "Conv2D")]  # what the fold would do
    as_onnx = bnfold.fold(model, tmp_path / "out.onnx")
    assert _rows(as_onnx) == [("conv", "Conv2D")] and as_onnx.weight_range_warning

    def refuse(model: Any, config: Any) -> Any:
        raise TypeError("too many positional arguments")

    monkeypatch.setattr(write_back, "_rebuild", refuse)
    assert bnfold.fold(model, tmp_path / "out.keras").weight_ranges == []  # nothing written
    # For .onnx output the ONNX pass folds the Dense's BN, its row named as its target is.
    refused = bnfold.fold(conv_bn(L.Dense(8, name="fc"), (5,)), tmp_path / "refused.onnx")
    [entry] = refused.entries
    assert entry.stage == "onnx" and entry.target[0].endswith("/fc_1/MatMul")
    assert _rows(refused) == [(entry.target[0], "MatMul")] and refused.weight_range_warning
