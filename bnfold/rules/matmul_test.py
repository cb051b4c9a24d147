from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from bnfold.foldlog import Outcome, Reason
from bnfold.testing import (
    batchnorm_node,
    batchnorm_params,
    fold_and_compare,
    graph_signature,
    make_model,
    op_types,
)

FLOAT = TensorProto.FLOAT


@pytest.mark.parametrize("input_shape", [["N", 4], ["N", 3, 4]])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul_bias_mul_add_becomes_matmul_add(rng, input_shape, with_bias):
    """tf2onnx's Dense -> BN: MatMul, Add(bias), Mul(s), Add(t) -> MatMul, Add."""
    inits = {
        "w": rng.normal(size=(4, 6)).astype(np.float32),
        "bias": rng.normal(size=6).astype(np.float32),
        "scale": rng.uniform(0.5, 2, size=6).astype(np.float32),
        "shift": rng.normal(size=6).astype(np.float32),
    }
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="dense")]
    if with_bias:
        nodes.append(helper.make_node("Add", ["mm", "bias"], ["biased"], name="bias_add"))
    tail_input = "biased" if with_bias else "mm"
    nodes += [
        helper.make_node("Mul", [tail_input, "scale"], ["m"], name="bn_mul"),
        helper.make_node("Add", ["m", "shift"], ["y"], name="bn_add"),
    ]
    if not with_bias:
        inits.pop("bias")
    model = make_model(nodes, [("x", FLOAT, input_shape)], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["MatMul", "Add"]
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_PREVIOUS
    assert check.max_rel <= 1e-5
    assert folded.graph.output[0].name == "y"


def test_matmul_then_batchnorm_node(rng):
    inits = {"w": rng.normal(size=(4, 6)).astype(np.float32), **batchnorm_params(rng, 6)}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="dense"),
        batchnorm_node("mm", "y"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4])], ["y"], inits)
    _, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["MatMul", "Add"]
    assert check.max_rel <= 1e-5


def test_matmul_then_pure_scale_needs_no_add(rng):
    inits = {
        "w": rng.normal(size=(4, 6)).astype(np.float32),
        "scale": rng.uniform(0.5, 2, size=6).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="dense"),
        helper.make_node("Mul", ["mm", "scale"], ["y"], name="scale"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4])], ["y"], inits)
    _, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["MatMul"]
    assert check.max_rel <= 1e-5


def test_plain_bias_add_is_left_alone(rng):
    inits = {"w": rng.normal(size=(4, 6)).astype(np.float32), "b": np.ones(6, np.float32)}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["y"]),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4])], ["y"], inits)
    result, _, folded = fold_and_compare(model)
    assert result.entries == []
    assert graph_signature(folded) == graph_signature(model)


def test_matmul_with_variable_weight_is_left(rng):
    inits = {**batchnorm_params(rng, 6)}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="dense"),
        batchnorm_node("mm", "y"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4]), ("w", FLOAT, [4, 6])], ["y"], inits)
    result, check, _ = fold_and_compare(model)
    assert result.entries[0].reason is Reason.WEIGHT_NOT_CONSTANT
    assert check.max_abs == 0.0


def test_matmul_reshape_to_nchw_then_batchnorm(rng):
    """A Dense whose [N, C] output is reshaped to [N, C, 1, 1] before a BN on axis 1."""
    inits = {
        "w": rng.normal(size=(4, 6)).astype(np.float32),
        "shape": np.array([-1, 6, 1, 1], dtype=np.int64),
        **batchnorm_params(rng, 6),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="dense"),
        helper.make_node("Reshape", ["mm", "shape"], ["r"], name="to_nchw"),
        batchnorm_node("r", "y"),
    ]
    model = make_model(nodes, [("x", FLOAT, [2, 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["MatMul", "Reshape", "Add"]
    assert result.entries[0].via == ["to_nchw"]
    assert check.max_rel <= 1e-5


def test_reshape_that_mixes_channels_is_left(rng):
    inits = {
        "w": rng.normal(size=(4, 6)).astype(np.float32),
        "shape": np.array([-1, 3, 2], dtype=np.int64),
        "scale": rng.uniform(0.5, 2, size=(3, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="dense"),
        helper.make_node("Reshape", ["mm", "shape"], ["r"], name="split"),
        helper.make_node("Mul", ["r", "scale"], ["y"], name="scale"),
    ]
    model = make_model(nodes, [("x", FLOAT, [2, 4])], ["y"], inits)
    result, check, _ = fold_and_compare(model)
    assert result.entries[0].reason is Reason.UNPROVEN_LAYOUT
    assert check.max_abs == 0.0


@pytest.mark.parametrize("with_bias", [True, False])
def test_one_channel_batchnorm_after_linear_folds_as_a_scalar(rng, with_bias):
    """PyTorch's ``fuse_linear_bn_eval`` accepts ``num_features == 1``: ``Linear`` on
    ``[B, 1, K]`` then ``BatchNorm1d(1)`` normalises axis 1, of size 1, so it scales and
    shifts every output alike (the Linear's bias Add acts on axis 2)."""
    inits = {"w": rng.normal(size=(5, 6)).astype(np.float32), **batchnorm_params(rng, 1)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="linear")]
    if with_bias:
        inits["b"] = rng.normal(size=6).astype(np.float32)
        nodes.append(helper.make_node("Add", ["mm", "b"], ["lin"], name="linear_bias"))
    nodes.append(batchnorm_node("lin" if with_bias else "mm", "y"))
    model = make_model(nodes, [("x", FLOAT, ["B", 1, 5])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert (entry.outcome, entry.target) == (Outcome.FOLDED_INTO_PREVIOUS, ["linear"])
    assert op_types(folded) == ["MatMul", "Add"]
    assert check.max_rel <= 1e-5


def test_one_channel_batchnorm_after_gemm_folds(rng):
    inits = {
        "w": rng.normal(size=(1, 5)).astype(np.float32),
        "b": rng.normal(size=1).astype(np.float32),
        **batchnorm_params(rng, 1),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="linear", transB=1),
        batchnorm_node("g", "y"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["B", 5])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_PREVIOUS
    assert op_types(folded) == ["Gemm"]
    assert check.max_rel <= 1e-5
