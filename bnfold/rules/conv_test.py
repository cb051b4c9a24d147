from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from bnfold.foldlog import Outcome, Reason
from bnfold.testing import batchnorm_node, batchnorm_params, fold_and_compare, make_model, op_types

FLOAT = TensorProto.FLOAT


def conv_bn_model(rng, *, dims=2, groups=1, channels=4, out=6, bias=True, **conv_attrs):
    spatial = [7] * dims
    weight = rng.normal(size=(out, channels // groups, *([3] * dims))).astype(np.float32)
    inits = {"w": weight, **batchnorm_params(rng, out)}
    conv_inputs = ["x", "w"]
    if bias:
        inits["b"] = rng.normal(size=out).astype(np.float32)
        conv_inputs.append("b")
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", group=groups, **conv_attrs),
        batchnorm_node("c", "y", epsilon=1e-3),
    ]
    return make_model(nodes, [("x", FLOAT, ["N", channels, *spatial])], ["y"], inits)


@pytest.mark.parametrize(
    ("dims", "groups", "channels", "out", "bias", "attrs"),
    [
        (1, 1, 4, 6, True, {}),
        (2, 1, 4, 6, True, {"pads": [1, 1, 1, 1]}),
        (3, 1, 2, 3, False, {}),
        (2, 2, 4, 6, True, {"strides": [2, 2]}),
        (2, 4, 4, 8, False, {"dilations": [2, 2]}),  # depthwise, multiplier 2
    ],
)
def test_conv_then_batchnorm_folds_exactly(rng, dims, groups, channels, out, bias, attrs):
    model = conv_bn_model(
        rng, dims=dims, groups=groups, channels=channels, out=out, bias=bias, **attrs
    )
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Conv"]
    assert [entry.outcome for entry in result.entries] == [Outcome.FOLDED_INTO_PREVIOUS]
    assert result.entries[0].target == ["conv"]
    assert check.max_rel <= 1e-5
    assert folded.graph.output[0].name == "y"


def test_conv_then_mul_add_tail_folds(rng):
    """tf2onnx writes a BN as Mul/Add by [C,1,1] constants; both shapes of constant fold."""
    inits = {
        "w": rng.normal(size=(5, 3, 3, 3)).astype(np.float32),
        "scale": rng.uniform(0.5, 2, size=(5, 1, 1)).astype(np.float32),
        "shift": rng.normal(size=(1, 5, 1, 1)).astype(np.float32),
        "unit": np.array(2.0, dtype=np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "scale"], ["m"], name="mul"),
        helper.make_node("Add", ["shift", "m"], ["a"], name="add"),
        helper.make_node("Div", ["a", "unit"], ["y"], name="div"),
    ]
    model = make_model(nodes, [("x", FLOAT, [2, 3, 8, 8])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Conv"]
    assert result.entries[0].ops == ["Mul", "Add", "Div"]
    assert check.max_rel <= 1e-5


def test_conv_then_transpose_then_channels_last_affine(rng):
    """NCHW conv, transposed to NHWC, then a per-channel affine on the last axis."""
    inits = {
        "w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
        "scale": rng.uniform(0.5, 2, size=4).astype(np.float32),
        "shift": rng.normal(size=4).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Mul", ["t", "scale"], ["m"], name="mul"),
        helper.make_node("Sub", ["m", "shift"], ["y"], name="sub"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 3, 6, 6])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Conv", "Transpose"]
    assert result.entries[0].via == ["to_nhwc"]
    assert check.max_rel <= 1e-5


def test_affine_on_the_wrong_axis_is_left(rng):
    inits = {
        "w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32),
        "rows": rng.uniform(0.5, 2, size=(5, 1)).astype(np.float32),  # varies along height
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "rows"], ["y"], name="row_scale"),
    ]
    model = make_model(nodes, [("x", FLOAT, [1, 3, 5, 5])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Conv", "Mul"]
    assert result.entries[0].reason is Reason.CHANNEL_MISMATCH
    assert check.max_abs == 0.0


def test_shared_weight_is_copied_not_scaled_twice(rng):
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32)}
    inits.update(batchnorm_params(rng, 4, "bn1"))
    inits.update(batchnorm_params(rng, 4, "bn2"))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2"),
        batchnorm_node("c1", "y1", "bn1"),
        batchnorm_node("c2", "y2", "bn2"),
    ]
    model = make_model(nodes, [("x", FLOAT, [2, 3, 6, 6])], ["y1", "y2"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Conv", "Conv"]
    assert len(result.folded) == 2
    assert check.max_rel <= 1e-5
    weights = {node.input[1] for node in folded.graph.node}
    assert len(weights) == 2


def test_skip_reasons_leave_the_graph_unchanged(rng):
    """Each guard of DESIGN.md section 1, and the reason the log gives for it."""
    inits = {
        "w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "w_in": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
    }
    for prefix in ("after_relu", "shared", "output", "weight_input", "from_input"):
        inits.update(batchnorm_params(rng, 4 if prefix != "from_input" else 3, prefix))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        batchnorm_node("r1", "y1", "after_relu"),
        helper.make_node("Conv", ["x", "w"], ["c2"], name="conv2"),
        batchnorm_node("c2", "y2", "shared"),
        helper.make_node("Relu", ["c2"], ["y3"], name="other_reader"),
        helper.make_node("Conv", ["x", "w"], ["c4"], name="conv4"),
        batchnorm_node("c4", "y4", "output"),
        helper.make_node("Conv", ["x", "w_in"], ["c5"], name="conv5"),
        batchnorm_node("c5", "y5", "weight_input"),
        batchnorm_node("x", "y6", "from_input"),
    ]
    model = make_model(
        nodes,
        [("x", FLOAT, [1, 3, 6, 6]), ("w_in", FLOAT, [4, 3, 3, 3])],
        ["y1", "y2", "y3", "c4", "y4", "y5", "y6"],
        inits,
    )
    result, check, folded = fold_and_compare(model)
    reasons = {entry.name: entry.reason for entry in result.entries}
    assert reasons == {
        "after_relu": Reason.NO_LINEAR_NEIGHBOUR,
        "shared": Reason.SHARED_OUTPUT,
        "output": Reason.GRAPH_OUTPUT,
        "weight_input": Reason.WEIGHT_NOT_CONSTANT,
        "from_input": Reason.NO_LINEAR_NEIGHBOUR,
    }
    assert op_types(folded) == op_types(model)
    assert check.max_abs == 0.0
