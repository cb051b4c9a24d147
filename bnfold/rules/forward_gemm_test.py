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


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [None, (3,), (1, 3), ()])
def test_relu_batchnorm_gemm_folds_forward(rng, trans_b, bias_shape):
    """Iris-MLP style: Gemm -> Relu -> BN -> Gemm (alpha and beta not 1)."""
    weight = rng.normal(size=(5, 3)).astype(np.float32)
    inits = {
        "w1": rng.normal(size=(4, 5)).astype(np.float32),
        "w2": weight.T.copy() if trans_b else weight,
        **batchnorm_params(rng, 5),
    }
    gemm_inputs = ["n", "w2"]
    if bias_shape is not None:
        inits["c"] = rng.normal(size=bias_shape).astype(np.float32)
        gemm_inputs.append("c")
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], name="dense1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node(
            "Gemm", gemm_inputs, ["y"], name="dense2", transB=trans_b, alpha=0.5, beta=2.0
        ),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Gemm", "Relu", "Gemm"]
    [entry] = result.entries
    assert (entry.outcome, entry.target) == (Outcome.FOLDED_INTO_NEXT, ["dense2"])
    assert check.max_rel <= 1e-5


def test_flatten_batchnorm_gemm_folds_forward(rng):
    """Fashion-MNIST classifier style: Flatten -> BN over the flat features -> Gemm."""
    inits = {"w": rng.normal(size=(32, 10)).astype(np.float32), **batchnorm_params(rng, 32)}
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
        batchnorm_node("f", "n"),
        helper.make_node("Gemm", ["n", "w"], ["y"], name="classifier"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 2, 4, 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Flatten", "Gemm"]
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_NEXT
    assert check.max_rel <= 1e-5


@pytest.mark.parametrize(
    "layout", ["nchw_flatten", "nchw_reshape", "nhwc_reshape", "nchw_transpose_flatten"]
)
def test_per_channel_batchnorm_through_flatten_is_repeated_per_feature(rng, layout):
    """BN on the channel axis, then a flatten: s and t are repeated H*W times per channel
    (NCHW) or tiled (channels last)."""
    channels, height, width = 3, 2, 4
    features = channels * height * width
    inits = {
        "w": rng.normal(size=(features, 5)).astype(np.float32),
        "c": rng.normal(size=5).astype(np.float32),
        "flat": np.array([-1, features], dtype=np.int64),
        "scale": rng.uniform(0.5, 2, size=channels).astype(np.float32),
        "shift": rng.normal(size=channels).astype(np.float32),
        **batchnorm_params(rng, channels),
    }
    shape: list[int | str | None]
    if layout.startswith("nhwc"):
        shape = ["N", height, width, channels]
        affine = [
            helper.make_node("Mul", ["r", "scale"], ["m"], name="bn_mul"),
            helper.make_node("Add", ["m", "shift"], ["n"], name="bn_add"),
        ]
    else:
        shape = ["N", channels, height, width]
        affine = [batchnorm_node("r", "n")]
    if layout.endswith("flatten") and "transpose" in layout:
        layout_nodes = [
            helper.make_node("Transpose", ["n"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc"),
            helper.make_node("Flatten", ["t"], ["f"], name="flatten"),
        ]
    elif layout.endswith("flatten"):
        layout_nodes = [helper.make_node("Flatten", ["n"], ["f"], name="flatten")]
    else:
        layout_nodes = [helper.make_node("Reshape", ["n", "flat"], ["f"], name="flatten")]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        *affine,
        *layout_nodes,
        helper.make_node("Gemm", ["f", "w", "c"], ["y"], name="dense"),
    ]
    model = make_model(nodes, [("x", int(FLOAT), shape)], ["y"], inits)
    result, check, folded = fold_and_compare(model, dims={"N": 3})
    [entry] = result.entries
    assert entry.outcome is Outcome.FOLDED_INTO_NEXT
    assert entry.via == [node.name for node in layout_nodes]
    assert "Gemm" in op_types(folded) and "BatchNormalization" not in op_types(folded)
    assert "Mul" not in op_types(folded)
    assert check.max_rel <= 1e-5


@pytest.mark.parametrize(
    ("infer_shapes", "target_shape", "detail"),
    [
        (True, [-1, 8], "each sample keeps its elements"),  # mixes samples: [N,3,2,4]->[3N,8]
        (False, [-1, 24], "shape of n is unknown"),
    ],
)
def test_unproven_flatten_is_left(rng, infer_shapes, target_shape, detail):
    inits = {
        "w": rng.normal(size=(target_shape[1], 5)).astype(np.float32),
        "flat": np.array(target_shape, dtype=np.int64),
        **batchnorm_params(rng, 3),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("Reshape", ["n", "flat"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w"], ["y"], name="dense"),
    ]
    output_shape: list[int | str | None] | None = None if infer_shapes else ["N", 5]
    output = ("y", int(FLOAT), output_shape)
    model = make_model(
        nodes, [("x", FLOAT, ["N", 3, 2, 4])], [output], inits, infer_shapes=infer_shapes
    )
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.reason is Reason.UNPROVEN_LAYOUT
    assert detail in entry.detail
    assert graph_signature(folded) == graph_signature(model)
    assert check.max_abs == 0.0


def test_gemm_with_transposed_a_folds_an_affine_on_axis_0(rng):
    inits = {
        "w": rng.normal(size=(4, 6)).astype(np.float32),
        "scale": rng.uniform(0.5, 2, size=(4, 1)).astype(np.float32),
        "shift": rng.normal(size=(4, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "scale"], ["m"], name="bn_mul"),
        helper.make_node("Add", ["m", "shift"], ["n"], name="bn_add"),
        helper.make_node("Gemm", ["n", "w"], ["y"], name="dense", transA=1),
    ]
    model = make_model(nodes, [("x", FLOAT, [4, 3])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Relu", "Gemm"]
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_NEXT
    assert check.max_rel <= 1e-5


def test_batchnorm_on_the_wrong_axis_of_a_gemm_is_left(rng):
    inits = {"w": rng.normal(size=(4, 6)).astype(np.float32), **batchnorm_params(rng, 3)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),  # acts on axis 1 (M when transA=1), the Gemm sums axis 0
        helper.make_node("Gemm", ["n", "w"], ["y"], name="dense", transA=1),
    ]
    model = make_model(nodes, [("x", FLOAT, [4, 3])], ["y"], inits)
    result, check, _ = fold_and_compare(model)
    assert result.entries[0].reason is Reason.CHANNEL_MISMATCH
    assert check.max_abs == 0.0


def test_float16_overflow_is_refused(rng):
    inits = {
        "w": np.full((4, 3), 1000.0, dtype=np.float16),
        "scale": np.full(4, 100.0, dtype=np.float16),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "scale"], ["n"], name="bn_mul"),
        helper.make_node("Gemm", ["n", "w"], ["y"], name="dense"),
    ]
    model = make_model(nodes, [("x", TensorProto.FLOAT16, ["N", 4])], ["y"], inits)
    result, _, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.reason is Reason.DTYPE_RANGE
    assert "overflow float16" in entry.detail
    assert graph_signature(folded) == graph_signature(model)


def test_gemm_weight_that_is_a_graph_input_is_left(rng):
    inits = {**batchnorm_params(rng, 4)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("Gemm", ["n", "w"], ["y"], name="dense"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4]), ("w", FLOAT, [4, 3])], ["y"], inits)
    result, check, _ = fold_and_compare(model, inputs=None)
    assert result.entries[0].reason is Reason.WEIGHT_NOT_CONSTANT
    assert check.max_abs == 0.0
