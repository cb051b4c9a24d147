from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from bnfold.foldlog import Outcome
from bnfold.testing import batchnorm_node, batchnorm_params, fold_and_compare, make_model, op_types

FLOAT = TensorProto.FLOAT


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [None, (6,), (1, 6), (3, 6), ()])
def test_gemm_then_batchnorm_folds_exactly(rng, trans_a, trans_b, bias_shape):
    k, n, m = 5, 6, 3
    inits = {
        "b": rng.normal(size=(n, k) if trans_b else (k, n)).astype(np.float32),
        **batchnorm_params(rng, n),
    }
    inputs = ["a", "b"]
    if bias_shape is not None:
        inits["c"] = rng.normal(size=bias_shape).astype(np.float32)
        inputs.append("c")
    nodes = [
        helper.make_node(
            "Gemm",
            inputs,
            ["g"],
            name="gemm",
            transA=trans_a,
            transB=trans_b,
            alpha=0.7,
            beta=1.3,
        ),
        batchnorm_node("g", "y"),
    ]
    model = make_model(nodes, [("a", FLOAT, [k, m] if trans_a else [m, k])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Gemm"]
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_PREVIOUS
    assert check.max_rel <= 1e-5


def test_gemm_then_flatten_then_mul_add(rng):
    """Gemm output [N, C] through Flatten (a no-op on rank 2) into a tf2onnx-style tail."""
    inits = {
        "b": rng.normal(size=(4, 5)).astype(np.float32),
        "scale": rng.uniform(0.5, 2, size=5).astype(np.float32),
        "shift": rng.normal(size=5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["a", "b"], ["g"], name="gemm"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Mul", ["f", "scale"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "shift"], ["y"], name="add"),
    ]
    model = make_model(nodes, [("a", FLOAT, ["N", 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Gemm", "Flatten"]
    assert result.entries[0].via == ["flatten"]
    assert check.max_rel <= 1e-5
