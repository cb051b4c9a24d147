from __future__ import annotations

import numpy as np
import onnx
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


def bn_conv_model(rng, *, dims=2, groups=1, channels=4, out=6, kernel=3, bias=True, **attrs):
    """Relu -> BN -> Conv: the BN has no linear layer before it."""
    weight = rng.normal(size=(out, channels // groups, *([kernel] * dims))).astype(np.float32)
    inits = {"w": weight, **batchnorm_params(rng, channels)}
    conv_inputs = ["n", "w"]
    if bias:
        inits["b"] = rng.normal(size=out).astype(np.float32)
        conv_inputs.append("b")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n", epsilon=1e-3),
        helper.make_node("Conv", conv_inputs, ["y"], name="conv", group=groups, **attrs),
    ]
    return make_model(nodes, [("x", FLOAT, ["N", channels, *[7] * dims])], ["y"], inits)


@pytest.mark.parametrize(
    ("dims", "groups", "channels", "out", "kernel", "bias", "attrs"),
    [
        (1, 1, 4, 6, 3, True, {}),
        (2, 1, 4, 6, 3, False, {"strides": [2, 2]}),
        (3, 1, 2, 3, 2, True, {"dilations": [2, 2, 2]}),
        (2, 2, 4, 6, 3, True, {}),  # grouped
        (2, 4, 4, 8, 3, False, {}),  # depthwise, multiplier 2
        (2, 1, 4, 6, 3, True, {"auto_pad": "VALID"}),
        (2, 1, 4, 6, 1, True, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),  # 1x1: no pad
        (2, 1, 4, 6, 3, True, {"pads": [0, 0, 0, 0]}),
    ],
)
def test_batchnorm_then_unpadded_conv_folds_forward(
    rng, dims, groups, channels, out, kernel, bias, attrs
):
    model = bn_conv_model(
        rng,
        dims=dims,
        groups=groups,
        channels=channels,
        out=out,
        kernel=kernel,
        bias=bias,
        **attrs,
    )
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Relu", "Conv"]
    [entry] = result.entries
    assert entry.outcome is Outcome.FOLDED_INTO_NEXT
    assert entry.target == ["conv"]
    assert check.max_rel <= 1e-5


@pytest.mark.parametrize(
    "attrs", [{"pads": [1, 1, 1, 1]}, {"auto_pad": "SAME_UPPER"}, {"auto_pad": "SAME_LOWER"}]
)
def test_padded_conv_is_left_with_padding_reason(rng, attrs):
    model = bn_conv_model(rng, **attrs)
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.outcome is Outcome.LEFT
    assert entry.reason is Reason.PADDING
    assert "conv pads its input with zeros" in entry.detail
    assert graph_signature(folded) == graph_signature(model)
    assert check.max_abs == 0.0


def test_pure_scale_folds_into_a_padded_conv(rng):
    """With t == 0 the padding zeros stay zeros: s*0 = 0."""
    inits = {
        "w": rng.normal(size=(5, 3, 3, 3)).astype(np.float32),
        "scale": rng.uniform(0.5, 2, size=(3, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "scale"], ["m"], name="scale"),
        helper.make_node("Conv", ["m", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    model = make_model(nodes, [("x", FLOAT, [2, 3, 6, 6])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Relu", "Conv"]
    assert len(folded.graph.node[1].input) == 2  # no bias was needed
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_NEXT
    assert check.max_rel <= 1e-5


def bn_conv_transpose_model(rng, *, kernel, groups=1, scale_only=False, **attrs):
    channels, out_per_group = 4, 3
    inits = {
        "w": rng.normal(size=(channels, out_per_group, kernel, kernel)).astype(np.float32),
        "b": rng.normal(size=out_per_group * groups).astype(np.float32),
        **batchnorm_params(rng, channels),
    }
    inits["scale"] = rng.uniform(0.5, 2, size=(channels, 1, 1)).astype(np.float32)
    affine = (
        helper.make_node("Mul", ["r", "scale"], ["n"], name="bn")
        if scale_only
        else batchnorm_node("r", "n")
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        affine,
        helper.make_node(
            "ConvTranspose", ["n", "w", "b"], ["y"], name="deconv", group=groups, **attrs
        ),
    ]
    return make_model(nodes, [("x", FLOAT, ["N", channels, 5, 5])], ["y"], inits)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_batchnorm_then_pointwise_conv_transpose_folds(rng, groups):
    model = bn_conv_transpose_model(rng, kernel=1, groups=groups, pads=[1, 0, 1, 0])
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Relu", "ConvTranspose"]
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_NEXT
    assert check.max_rel <= 1e-5


@pytest.mark.parametrize(
    ("attrs", "reason", "said"),
    [
        ({"kernel": 3}, Reason.PADDING, "kernel [3, 3] with strides [1, 1]"),
        ({"kernel": 1, "strides": [2, 2]}, Reason.PADDING, "strides [2, 2]"),
        (
            {"kernel": 2, "strides": [2, 2], "output_padding": [1, 1]},
            Reason.PADDING,
            "output_padding [1, 1]",
        ),
        ({"kernel": 2, "strides": [2, 2]}, Reason.SHIFT_NOT_BIAS, "repeating every [2, 2]"),
        (
            {"kernel": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]},
            Reason.SHIFT_NOT_BIAS,
            "kernel [2, 2] = strides [2, 2]",
        ),
    ],
)
def test_conv_transpose_with_uneven_taps_is_left(rng, attrs, reason, said):
    """Border positions and stride gaps receive fewer taps (``padding``); with kernel = stride
    every position receives one tap, a different one by its offset (``shift_not_bias``)."""
    model = bn_conv_transpose_model(rng, **attrs)
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.reason is reason
    assert said in entry.detail
    assert graph_signature(folded) == graph_signature(model)
    assert check.max_abs == 0.0


def eeg_upsampling(rng: np.random.Generator, opset: int = 17) -> onnx.ModelProto:
    """The EEG detector's upsampling: Relu -> BN -> ConvTranspose1d(kernel 4, stride 4, no
    padding)."""
    inits = {
        "w": rng.normal(size=(4, 3, 4)).astype(np.float32),
        "b": rng.normal(size=3).astype(np.float32),
        **batchnorm_params(rng, 4),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("ConvTranspose", ["n", "w", "b"], ["y"], name="up", strides=[4]),
    ]
    return make_model(nodes, [("x", FLOAT, ["N", 4, "T"])], ["y"], inits, opset=opset)


def test_eeg_batchnorm_before_conv_transpose_with_kernel_equal_to_stride(rng):
    """The shift reaches output position p as ``sum_i W[i, j, p % 4] * t[i]``: a pattern with
    the stride's period, which no per-channel bias can hold."""
    model = eeg_upsampling(rng)
    result, check, folded = fold_and_compare(model, dims={"T": 6})
    [entry] = result.entries
    assert (entry.outcome, entry.reason) == (Outcome.LEFT, Reason.SHIFT_NOT_BIAS)
    assert graph_signature(folded) == graph_signature(model)
    assert check.max_abs == 0.0


def test_scale_only_batchnorm_folds_into_strided_grouped_conv_transpose(rng):
    model = bn_conv_transpose_model(rng, kernel=3, groups=2, scale_only=True, strides=[2, 2])
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Relu", "ConvTranspose"]
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_NEXT
    assert check.max_rel <= 1e-5


def test_batchnorm_read_by_two_convs_sharing_a_weight_folds_into_both(rng):
    inits = {
        "w": rng.normal(size=(5, 4, 1, 1)).astype(np.float32),
        "w3": rng.normal(size=(2, 4, 3, 3)).astype(np.float32),
        **batchnorm_params(rng, 4),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("Conv", ["n", "w"], ["y1"], name="conv_a"),
        helper.make_node("Conv", ["n", "w"], ["y2"], name="conv_b", strides=[2, 2]),
        helper.make_node("Conv", ["n", "w3"], ["y3"], name="conv_c"),
        helper.make_node("Conv", ["x", "w"], ["y4"], name="conv_raw"),  # reads the raw input
    ]
    model = make_model(nodes, [("x", FLOAT, [2, 4, 6, 6])], ["y1", "y2", "y3", "y4"], inits)
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.outcome is Outcome.FOLDED_INTO_NEXT
    assert sorted(entry.target) == ["conv_a", "conv_b", "conv_c"]
    assert check.max_rel <= 1e-5
    weights = {node.name: node.input[1] for node in folded.graph.node if node.op_type == "Conv"}
    assert weights["conv_raw"] == "w"  # the shared original is untouched for the raw reader
    assert len(set(weights.values())) == 4


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        ("relu", "other_reader (Relu) also reads it"),
        ("output", "n is a graph output"),
        ("padded", "conv_b pads its input"),
    ],
)
def test_one_blocking_reader_leaves_the_batchnorm_for_all(rng, other, expected):
    inits = {"w": rng.normal(size=(5, 4, 3, 3)).astype(np.float32), **batchnorm_params(rng, 4)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("Conv", ["n", "w"], ["y1"], name="conv_a"),
    ]
    outputs = ["y1"]
    if other == "relu":
        nodes.append(helper.make_node("Relu", ["n"], ["y2"], name="other_reader"))
        outputs.append("y2")
    elif other == "output":
        outputs.append("n")
    else:
        nodes.append(helper.make_node("Conv", ["n", "w"], ["y2"], name="conv_b", pads=[1] * 4))
        outputs.append("y2")
    model = make_model(nodes, [("x", FLOAT, [2, 4, 6, 6])], outputs, inits)
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.outcome is Outcome.LEFT
    assert entry.reason is (Reason.PADDING if other == "padded" else Reason.CONSUMER_NOT_FOLDABLE)
    assert expected in entry.detail
    assert graph_signature(folded) == graph_signature(model)
    assert check.max_abs == 0.0


def test_batchnorm_between_two_convs_folds_backward_once(rng):
    """Either way is possible: the engine prefers the layer before, and folds it once."""
    inits = {
        "w1": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "w2": rng.normal(size=(5, 4, 3, 3)).astype(np.float32),
        **batchnorm_params(rng, 4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
        batchnorm_node("c", "n"),
        helper.make_node("Conv", ["n", "w2"], ["y"], name="conv2"),
    ]
    model = make_model(nodes, [("x", FLOAT, [2, 3, 9, 9])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert (entry.outcome, entry.target) == (Outcome.FOLDED_INTO_PREVIOUS, ["conv1"])
    assert op_types(folded) == ["Conv", "Conv"]
    w2 = next(t for t in folded.graph.initializer if t.name == "w2")
    assert np.array_equal(np.frombuffer(w2.raw_data, np.float32), inits["w2"].reshape(-1))
    assert check.max_rel <= 1e-5


def test_pre_activation_block(rng):
    """BN -> Relu -> Conv(pads 0) -> BN -> Relu -> Conv: the first BN reads the graph input
    and is followed by a Relu (left); the second folds backward into the first Conv."""
    inits = {
        "w1": rng.normal(size=(6, 4, 1, 1)).astype(np.float32),
        "w2": rng.normal(size=(8, 6, 3, 3)).astype(np.float32),
        **batchnorm_params(rng, 4, "bn1"),
        **batchnorm_params(rng, 6, "bn2"),
    }
    nodes = [
        batchnorm_node("x", "n1", "bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w1"], ["c1"], name="conv1"),
        batchnorm_node("c1", "n2", "bn2"),
        helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w2"], ["y"], name="conv2"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4, 8, 8])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    outcomes = {e.name: (e.outcome, e.reason, e.target) for e in result.entries}
    assert outcomes == {
        "bn1": (Outcome.LEFT, Reason.NO_LINEAR_NEIGHBOUR, []),
        "bn2": (Outcome.FOLDED_INTO_PREVIOUS, None, ["conv1"]),
    }
    assert op_types(folded) == ["BatchNormalization", "Relu", "Conv", "Relu", "Conv"]
    assert check.max_rel <= 1e-5


def test_post_activation_block_folds_forward(rng):
    """Conv -> Relu -> BN -> Conv(pads 0): the BN folds into the Conv after it."""
    inits = {
        "w1": rng.normal(size=(6, 4, 3, 3)).astype(np.float32),
        "w2": rng.normal(size=(8, 6, 1, 1)).astype(np.float32),
        **batchnorm_params(rng, 6),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        batchnorm_node("r1", "n"),
        helper.make_node("Conv", ["n", "w2"], ["y"], name="conv2"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4, 8, 8])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert [(e.outcome, e.target) for e in result.entries] == [
        (Outcome.FOLDED_INTO_NEXT, ["conv2"])
    ]
    assert op_types(folded) == ["Conv", "Relu", "Conv"]
    assert check.max_rel <= 1e-5


def test_densenet_concat_batchnorm_relu_conv_is_left(rng):
    """DenseNet: Concat -> BN -> Relu -> Conv1x1; the BN cannot move past the Relu."""
    inits = {
        "w": rng.normal(size=(8, 6, 1, 1)).astype(np.float32),
        **batchnorm_params(rng, 6),
    }
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["cat"], name="concat", axis=1),
        batchnorm_node("cat", "n"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w"], ["y"], name="conv"),
    ]
    model = make_model(
        nodes, [("a", FLOAT, ["N", 2, 5, 5]), ("b", FLOAT, ["N", 4, 5, 5])], ["y"], inits
    )
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert (entry.outcome, entry.reason) == (Outcome.LEFT, Reason.NO_LINEAR_NEIGHBOUR)
    assert "concat" in entry.detail
    assert graph_signature(folded) == graph_signature(model)
    assert check.max_abs == 0.0
