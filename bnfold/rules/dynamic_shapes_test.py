"""Graphs whose rank is unknown (a recogniser exported with symbolic dimensions) and Shape
readers, which read only the shape a fold keeps."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from bnfold.foldlog import Outcome, Reason
from bnfold.testing import batchnorm_node, batchnorm_params, fold_and_compare, make_model, op_types

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


def _inputs(rng, shape):
    return {"x": rng.normal(size=shape).astype(np.float32)}


def _symbolic(rank, last):
    return [f"d{axis}" for axis in range(rank - 1)] + [last]


def _last_axis_affine(rng, *, forward, shape_reader, rank):
    """Mul/Add by 1-D constants on the last axis before (forward) or after (backward) a MatMul
    by a constant ``[8, 6]``; no shape is known past the input's Relu (as when shape inference
    stops at an unknown op), so the rank there is unknown. A Shape may read the affine's input."""
    inits = {
        "w": rng.normal(size=(8, 6)).astype(np.float32),
        "s": rng.uniform(0.5, 2.0, size=8 if forward else 6).astype(np.float32),
        "t": rng.normal(size=8 if forward else 6).astype(np.float32),
    }
    if forward:
        nodes = [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Mul", ["r", "s"], ["m"], name="scale"),
            helper.make_node("Add", ["m", "t"], ["a"], name="shift"),
            helper.make_node("MatMul", ["a", "w"], ["y"], name="mm"),
        ]
        read = "a"
    else:
        nodes = [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("MatMul", ["r", "w"], ["mm_out"], name="mm"),
            helper.make_node("Mul", ["mm_out", "s"], ["m"], name="scale"),
            helper.make_node("Add", ["m", "t"], ["y"], name="shift"),
        ]
        read = "mm_out"
    outputs = [("y", FLOAT, _symbolic(rank, 6))]
    if shape_reader:
        nodes.append(helper.make_node("Shape", [read], ["shape"]))
        outputs.append(("shape", INT64, [rank]))
    inputs = [("x", FLOAT, _symbolic(rank, 8))]
    return make_model(nodes, inputs, outputs, inits, infer_shapes=False)


@pytest.mark.parametrize("shape_reader", [False, True])
@pytest.mark.parametrize("forward", [False, True])
@pytest.mark.parametrize("input_shape", [(2, 8), (2, 3, 8), (2, 3, 5, 8)])
def test_last_axis_affine_folds_into_matmul_whatever_the_rank(
    rng, forward, shape_reader, input_shape
):
    model = _last_axis_affine(
        rng, forward=forward, shape_reader=shape_reader, rank=len(input_shape)
    )
    result, check, folded = fold_and_compare(model, inputs=_inputs(rng, input_shape))
    [entry] = result.entries
    assert entry.outcome is (Outcome.FOLDED_INTO_NEXT if forward else Outcome.FOLDED_INTO_PREVIOUS)
    assert entry.target == ["mm"]
    assert "Mul" not in op_types(folded)
    assert check.max_rel <= 1e-5


def test_batchnorm_on_axis_1_of_unknown_rank_is_unproven_before_matmul(rng):
    """A BN's channels count from the front: with the rank unknown, nothing proves they are
    the MatMul's last axis."""
    inits = {"w": rng.normal(size=(4, 6)).astype(np.float32), **batchnorm_params(rng, 4)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        batchnorm_node("r", "n"),
        helper.make_node("MatMul", ["n", "w"], ["y"], name="mm"),
    ]
    outputs = [("y", FLOAT, ["a", "b"])]
    model = make_model(nodes, [("x", FLOAT, ["a", "c"])], outputs, inits, infer_shapes=False)
    result, check, _ = fold_and_compare(model, inputs=_inputs(rng, (2, 4)))
    assert result.entries[0].reason is Reason.UNPROVEN_LAYOUT
    assert check.max_abs == 0.0


def test_shape_reader_of_the_conv_output_does_not_block_the_backward_fold(rng):
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32), **batchnorm_params(rng, 4)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Shape", ["c"], ["shape"]),
        batchnorm_node("c", "y"),
    ]
    outputs: list = ["y", ("shape", INT64, None)]
    model = make_model(nodes, [("x", FLOAT, ["N", 3, 6, 6])], outputs, inits)
    result, check, folded = fold_and_compare(model)
    assert result.entries[0].target == ["conv"]
    assert op_types(folded) == ["Conv", "Shape"]
    assert check.max_rel <= 1e-5
