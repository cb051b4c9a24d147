from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from bnfold.foldlog import Reason
from bnfold.rules.affines import find_affine_chains
from bnfold.rules.base import weight_dtype_skip
from bnfold.rules.layout import _reshaped_axis, product
from bnfold.testing import batchnorm_node, batchnorm_params, fold_and_compare, make_model, op_types

FLOAT = TensorProto.FLOAT


def test_conv_identity_squeeze_then_batchnorm(rng):
    """A 1x1-output Conv squeezed to [N, C] before a rank-2 BN (a classifier head)."""
    inits = {
        "w": rng.normal(size=(6, 3, 4, 4)).astype(np.float32),
        "axes": np.array([2, 3], dtype=np.int64),
        **batchnorm_params(rng, 6),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="head"),
        helper.make_node("Identity", ["c"], ["i"], name="identity"),
        helper.make_node("Squeeze", ["i", "axes"], ["s"], name="squeeze"),
        batchnorm_node("s", "y"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 3, 4, 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Conv", "Identity", "Squeeze"]
    assert result.entries[0].via == ["identity", "squeeze"]
    assert check.max_rel <= 1e-5


def test_gemm_unsqueeze_then_batchnorm(rng):
    inits = {
        "b": rng.normal(size=(4, 6)).astype(np.float32),
        "axes": np.array([2, 3], dtype=np.int64),
        **batchnorm_params(rng, 6),
    }
    nodes = [
        helper.make_node("Gemm", ["a", "b"], ["g"], name="fc"),
        helper.make_node("Unsqueeze", ["g", "axes"], ["u"], name="unsqueeze"),
        batchnorm_node("u", "y"),
    ]
    model = make_model(nodes, [("a", FLOAT, ["N", 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Gemm", "Unsqueeze"]
    assert result.entries[0].via == ["unsqueeze"]
    assert check.max_rel <= 1e-5


def test_unknown_shapes_leave_a_reshape_unproven(rng):
    inits = {
        "b": rng.normal(size=(4, 6)).astype(np.float32),
        "shape": np.array([0, 6, 1, 1], dtype=np.int64),
        **batchnorm_params(rng, 6),
    }
    nodes = [
        helper.make_node("Gemm", ["a", "b"], ["g"], name="fc"),
        helper.make_node("Reshape", ["g", "shape"], ["r"], name="reshape"),
        batchnorm_node("r", "y"),
    ]
    model = make_model(
        nodes, [("a", FLOAT, ["N", 4])], [("y", FLOAT, ["N", 6, 1, 1])], inits, infer_shapes=False
    )
    result, check, _ = fold_and_compare(model)
    assert result.entries[0].reason is Reason.UNPROVEN_LAYOUT
    assert check.max_abs == 0.0


def test_spatial_zero_batchnorm_is_not_per_channel(rng):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        batchnorm_node("c", "y", spatial=0),
    ]
    model = make_model(
        nodes,
        [("x", FLOAT, [1, 3, 2, 2])],
        [("y", FLOAT, [1, 4, 2, 2])],
        {"w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32), **batchnorm_params(rng, 4)},
        opset=8,
        infer_shapes=False,
    )
    chains = find_affine_chains(ir.serde.deserialize_model(model).graph)
    assert chains[0].skip is not None and chains[0].skip.reason is Reason.UNSUPPORTED_LAYER


def test_matmul_by_a_vector_is_unsupported(rng):
    inits = {"v": rng.normal(size=4).astype(np.float32), "s": np.array([2.0], dtype=np.float32)}
    nodes = [
        helper.make_node("MatMul", ["x", "v"], ["m"], name="dot"),
        helper.make_node("Mul", ["m", "s"], ["y"], name="scale"),
    ]
    model = make_model(nodes, [("x", FLOAT, [3, 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["MatMul", "Mul"]
    assert check.max_abs == 0.0
    # A scalar Mul is no BN: it is not logged when left.
    assert result.entries == []


def test_integer_weights_are_refused():
    skip = weight_dtype_skip(np.ones(3, np.int32))
    assert skip is not None and skip.reason is Reason.UNSUPPORTED_DTYPE
    assert weight_dtype_skip(np.ones(3, np.float16)) is None


def test_products_compare_named_dims_and_the_expressions_inference_writes():
    """``[N, C, H, 4]`` and ``[N, C, 4*H]``: the same elements after C; an unnamed dim (None)
    and a symbol another inference made up prove nothing."""
    assert product(["H", 4]) == product(["4*H"]) == (4, ("H",))
    assert product(["N", 32, "H", "W"]) == product(["N", "32*H*W"])
    assert product(["H", None]) is None
    assert product(["bnfold?onnx:unk__1"]) != product(["bnfold?ort:unk__1"])
    assert _reshaped_axis(("N", 4, "H", 4), ("N", 4, None), 1, 4) == 1
    assert _reshaped_axis((None, 4, "H", 4), (None, 4, None), 1, 4) is None
