from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from bnfold.foldlog import Outcome
from bnfold.testing import batchnorm_node, batchnorm_params, fold_and_compare, make_model, op_types

FLOAT = TensorProto.FLOAT


@pytest.mark.parametrize(
    ("dims", "groups", "bias", "attrs"),
    [
        (2, 1, True, {"strides": [2, 2]}),
        (2, 2, False, {"pads": [1, 1, 1, 1]}),
        (2, 3, True, {"strides": [2, 2], "output_padding": [1, 1]}),
        (1, 2, True, {}),
    ],
)
def test_conv_transpose_then_batchnorm_folds_exactly(rng, dims, groups, bias, attrs):
    in_channels, out_per_group = 6, 2
    out = out_per_group * groups
    inits = {
        "w": rng.normal(size=(in_channels, out_per_group, *([3] * dims))).astype(np.float32),
        **batchnorm_params(rng, out),
    }
    inputs = ["x", "w"]
    if bias:
        inits["b"] = rng.normal(size=out).astype(np.float32)
        inputs.append("b")
    nodes = [
        helper.make_node("ConvTranspose", inputs, ["c"], name="deconv", group=groups, **attrs),
        batchnorm_node("c", "y"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", in_channels, *([5] * dims)])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["ConvTranspose"]
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_PREVIOUS
    assert check.max_rel <= 1e-5
