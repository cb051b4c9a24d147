"""The check sizes dynamic dims from the graph: music-analysis models with no batch axis, a
constant their input is broadcast with, weights that contract a dim, a Reshape's target."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import bnfold
from bnfold.errors import InputError
from bnfold.frontends.onnx_dims import size_hints
from bnfold.settings import CheckSettings
from bnfold.testing import batchnorm_node, batchnorm_params, make_model

FLOAT = TensorProto.FLOAT


def _spectrogram_model(rng: np.random.Generator) -> onnx.ModelProto:
    """``[frames, bins, channels]``, every dim dynamic and no batch axis, multiplied at once by
    an ``[80, 3]`` constant (a per-bin, per-channel normalisation): bins and channels must be
    80 and 3. Then frames become the batch of a Conv1d over bins -> BN."""
    inits = {
        "norm": rng.uniform(0.5, 2.0, size=(80, 3)).astype(np.float32),
        "perm_w": rng.normal(size=(4, 3, 5)).astype(np.float32),
        **batchnorm_params(rng, 4),
    }
    nodes = [
        helper.make_node("Mul", ["x", "norm"], ["scaled"], name="normalise"),
        helper.make_node("Transpose", ["scaled"], ["ncw"], name="to_ncw", perm=[0, 2, 1]),
        helper.make_node("Conv", ["ncw", "perm_w"], ["c"], name="conv"),
        batchnorm_node("c", "y"),
    ]
    inputs = [("x", FLOAT, ["frames", "bins", "channels"])]
    return make_model(nodes, inputs, ["y"], inits)


def _frames_model(rng: np.random.Generator) -> onnx.ModelProto:
    """``[frames, bins]`` with no batch axis: a Conv over ``[1, 1, frames, bins]`` whose
    kernel spans 40 frames, so frames must be at least 40 (the batch guess, 2, fails)."""
    inits: dict[str, np.ndarray] = {
        "axes": np.array([0, 1], np.int64),
        "w": rng.normal(size=(4, 1, 40, 3)).astype(np.float32),
        **batchnorm_params(rng, 4),
    }
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["image"], name="as_image"),
        helper.make_node("Conv", ["image", "w"], ["c"], name="conv"),
        batchnorm_node("c", "y"),
    ]
    return make_model(nodes, [("x", FLOAT, ["frames", "bins"])], ["y"], inits)


def _hints(proto: onnx.ModelProto) -> dict[tuple[str, int], tuple[int, str]]:
    found = size_hints(ir.serde.deserialize_model(proto))
    return {key: (hint.size, hint.source) for key, hint in found.items()}


def test_a_constant_the_input_is_broadcast_with_fixes_its_dims(rng):
    hints = _hints(_spectrogram_model(rng))
    assert hints == {
        ("x", 1): (80, "Mul normalise's constant [80, 3]"),
        ("x", 2): (3, "Mul normalise's constant [80, 3]"),
    }


@pytest.mark.parametrize(
    ("op", "weight_shape", "attributes", "input_shape", "expected"),
    [
        ("MatMul", (12, 5), {}, ["N", "T", "K"], {("x", 2): 12}),
        ("Gemm", (5, 12), {"transB": 1}, ["N", "K"], {("x", 1): 12}),
        ("Gemm", (12, 5), {"transA": 1}, ["K", "N"], {("x", 0): 12}),
        ("Conv", (6, 2, 1, 1), {"group": 3}, ["N", "C", "H", "W"], {("x", 1): 6}),
        ("ConvTranspose", (6, 2, 1, 1), {}, ["N", "C", "H", "W"], {("x", 1): 6}),
    ],
)
def test_a_weight_fixes_the_dim_it_contracts(
    rng, op, weight_shape, attributes, input_shape, expected
):
    inits = {"w": rng.normal(size=weight_shape).astype(np.float32)}
    nodes = [helper.make_node(op, ["x", "w"], ["y"], name="layer", **attributes)]
    model = make_model(nodes, [("x", FLOAT, input_shape)], ["y"], inits)
    hints = _hints(model)
    assert {key: size for key, (size, _) in hints.items()} == expected
    [(_, source)] = hints.values()
    assert source == f"{op} layer's weight {list(weight_shape)}"


def test_a_reshape_to_a_constant_target_fixes_the_one_dim_it_does_not_copy(rng):
    """``[N, C, 4]`` to ``[0, 24]``: N is copied, C * 4 = 24, so C = 6."""
    inits = {"to": np.array([0, 24], np.int64)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "to"], ["y"], name="flatten"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", "C", 4])], ["y"], inits)
    assert _hints(model) == {("x", 1): (6, "Reshape flatten's target [0, 24]")}


def test_axes_are_followed_through_transpose_and_unsqueeze(rng):
    """``[frames, bins, channels]`` -> Transpose to channels first -> Unsqueeze a batch ->
    Conv with a ``[8, 3, 3, 3]`` weight: the Conv's 3 input channels are input axis 2."""
    inits: dict[str, np.ndarray] = {
        "batch_axis": np.array([0], np.int64),
        "w": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["chw"], name="channels_first", perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["chw", "batch_axis"], ["nchw"], name="add_batch"),
        helper.make_node("Conv", ["nchw", "w"], ["y"], name="conv"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["frames", "bins", "channels"])], ["y"], inits)
    assert _hints(model) == {("x", 2): (3, "Conv conv's weight [8, 3, 3, 3]")}


def test_a_named_dim_takes_its_size_in_every_input(rng):
    inits = {"w": rng.normal(size=(12, 5)).astype(np.float32)}
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["y"], name="layer"),
        helper.make_node("Add", ["b", "b"], ["z"], name="other"),
    ]
    inputs = [("a", FLOAT, ["N", "K"]), ("b", FLOAT, ["K"])]
    model = make_model(nodes, inputs, ["y", "z"], inits)
    assert {key: size for key, (size, _) in _hints(model).items()} == {("a", 1): 12, ("b", 0): 12}


def test_the_check_runs_a_spectrogram_model_at_the_sizes_its_graph_fixes(tmp_path, rng):
    """Before: 2 frames and 16 (then 32, 64, 224, 640) for bins and channels, every shape
    failed (exit 3). Now bins and channels come from the constant; the first line says so."""
    path = tmp_path / "spectrogram.onnx"
    onnx.save(_spectrogram_model(rng), path)
    result = bnfold.fold(path)
    assert result.check is not None and result.check.passed
    assert result.check.max_rel <= 1e-5
    assert result.check.inputs == (
        "random normal, seed 0: x[2, 80, 3]; sizes: x[0]=2 default batch; "
        "x[1]=80 from Mul normalise's constant [80, 3]; "
        "x[2]=3 from Mul normalise's constant [80, 3]"
    )
    assert [entry.outcome.value for entry in result.entries] == ["folded_into_previous"]


def test_the_first_dim_is_tried_at_the_fallback_sizes_too(tmp_path, rng):
    """No batch axis: frames must cover the Conv's 40-frame kernel. 2 frames fail at every
    size of the bins, then the first dim takes the sizes too: 16 and 32 fail, 64 runs."""
    path = tmp_path / "frames.onnx"
    onnx.save(_frames_model(rng), path)
    result = bnfold.fold(path)
    assert result.check is not None and result.check.passed
    assert result.check.inputs.startswith(
        "random normal, seed 0: x[64, 64]; sizes: x[0], x[1]=64 fallback size"
    )
    assert result.entries[0].outcome.value == "folded_into_previous"


def test_the_user_dim_wins_over_the_graph(tmp_path, rng):
    path = tmp_path / "spectrogram.onnx"
    onnx.save(_spectrogram_model(rng), path)
    with pytest.raises(InputError, match="onnxruntime cannot run"):
        bnfold.fold(path, check=CheckSettings(dims={"bins": 7, "frames": 2}))
