from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from bnfold.foldlog import Outcome, Reason
from bnfold.testing import batchnorm_node, batchnorm_params, fold_and_compare, make_model, op_types

# Channels of the Concat's inputs: they differ, so a slice at the wrong offset shows.
WIDTHS = (3, 5)


def _branch(rng, kind, index, width, dtype):
    """Input ``index`` of the Concat, reading ``x`` [N, 2, 6, 6], writing ``width`` channels."""
    name, out = f"layer{index}", f"z{index}"
    if kind == "conv":
        weight = rng.normal(size=(width, 2, 3, 3)).astype(dtype)
        bias = rng.normal(size=width).astype(dtype)
        node = helper.make_node(
            "Conv", ["x", f"{name}_w", f"{name}_b"], [out], name=name, pads=[1] * 4
        )
        return [node], {f"{name}_w": weight, f"{name}_b": bias}
    if kind == "conv_transpose":  # [in, out/g, k...] with 1 group, 1x1, no bias
        weight = rng.normal(size=(2, width, 3, 3)).astype(dtype)
        node = helper.make_node("ConvTranspose", ["x", f"{name}_w"], [out], name=name, pads=[1] * 4)
        return [node], {f"{name}_w": weight}
    if kind == "conv_maxpool":  # the affine crosses a MaxPool on this input: scales > 0 only
        weight = rng.normal(size=(width, 2, 1, 1)).astype(dtype)
        nodes = [
            helper.make_node("Conv", ["x", f"{name}_w"], [f"{out}_c"], name=name),
            helper.make_node(
                "MaxPool",
                [f"{out}_c"],
                [out],
                kernel_shape=[3, 3],
                pads=[1] * 4,
                name=f"pool{index}",
            ),
        ]
        return nodes, {f"{name}_w": weight}
    if kind == "conv_relu":
        weight = rng.normal(size=(width, 2, 1, 1)).astype(dtype)
        nodes = [
            helper.make_node("Conv", ["x", f"{name}_w"], [f"{out}_c"], name=name),
            helper.make_node("Relu", [f"{out}_c"], [out], name=f"relu{index}"),
        ]
        return nodes, {f"{name}_w": weight}
    raise AssertionError(kind)


def _model(rng, kinds, *, dtype=np.float32, gamma_sign=1.0, opset=13):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits = [], batchnorm_params(rng, sum(WIDTHS), dtype=dtype)
    inits["bn_gamma"] = (inits["bn_gamma"] * gamma_sign).astype(dtype)
    for index, (kind, width) in enumerate(zip(kinds, WIDTHS, strict=True)):
        branch, weights = _branch(rng, kind, index, width, dtype)
        nodes += branch
        inits.update(weights)
    nodes += [
        helper.make_node("Concat", ["z0", "z1"], ["cat"], axis=1, name="cat"),
        batchnorm_node("cat", "y"),
    ]
    return make_model(nodes, [("x", elem, ["N", 2, 6, 6])], ["y"], inits, opset=opset)


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(np.float32, 1e-5), (np.float16, 3e-3)], ids=["float32", "float16"]
)
@pytest.mark.parametrize(
    "kinds",
    [("conv", "conv"), ("conv", "conv_transpose"), ("conv_maxpool", "conv")],
    ids=lambda kinds: "+".join(kinds),
)
def test_batchnorm_after_concat_splits_into_every_input(rng, kinds, dtype, tolerance):
    result, check, folded = fold_and_compare(_model(rng, kinds, dtype=dtype))
    [entry] = result.entries
    assert entry.outcome is Outcome.FOLDED_INTO_PREVIOUS, entry.detail
    assert entry.target == ["layer0", "layer1"]
    assert "cat" in entry.via
    assert "BatchNormalization" not in op_types(folded)
    assert check.max_rel <= tolerance, check.max_rel


def test_a_relu_input_blocks_the_fold_and_is_named(rng):
    model = _model(rng, ("conv", "conv_relu"))
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.outcome is Outcome.LEFT
    assert entry.reason is Reason.NO_LINEAR_NEIGHBOUR
    assert entry.detail.startswith("cat input 1 (z1): follows relu1"), entry.detail
    assert op_types(folded) == op_types(model)  # neither input took its part
    assert check.max_abs == 0.0


def test_a_negative_scale_does_not_cross_the_maxpool_of_one_input(rng):
    model = _model(rng, ("conv_maxpool", "conv"), gamma_sign=-1.0)
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.reason is Reason.NEGATIVE_SCALE, entry.detail
    assert entry.detail.startswith("cat input 0 (z0): pool0")
    assert op_types(folded) == op_types(model)
    assert check.max_abs == 0.0


def test_a_float16_overflow_in_one_input_leaves_every_input_unchanged(rng):
    model = _model(rng, ("conv", "conv"), dtype=np.float16)
    inits = {tensor.name: tensor for tensor in model.graph.initializer}
    # A huge scale on channel 4 (input 1's second channel) overflows float16 there only.
    var = np.frombuffer(inits["bn_var"].raw_data, np.float16).copy()
    var[WIDTHS[0] + 1] = np.float16(1e-7)
    gamma = np.frombuffer(inits["bn_gamma"].raw_data, np.float16).copy()
    gamma[WIDTHS[0] + 1] = np.float16(6e4)
    inits["bn_var"].raw_data, inits["bn_gamma"].raw_data = var.tobytes(), gamma.tobytes()
    weights = {name: bytes(inits[name].raw_data) for name in ("layer0_w", "layer1_w")}
    result, _check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.reason is Reason.DTYPE_RANGE, entry.detail
    assert entry.detail.startswith("cat input 1 (z1)")
    assert op_types(folded) == op_types(model)
    after = {tensor.name: bytes(tensor.raw_data) for tensor in folded.graph.initializer}
    assert all(after[name] == data for name, data in weights.items())


def test_the_same_value_twice_in_the_concat_is_shared(rng):
    inits = {
        "w": rng.normal(size=(3, 2, 1, 1)).astype(np.float32),
        **batchnorm_params(rng, 6),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["z"], name="layer"),
        helper.make_node("Concat", ["z", "z"], ["cat"], axis=1, name="cat"),
        batchnorm_node("cat", "y"),
    ]
    model = make_model(nodes, [("x", TensorProto.FLOAT, [1, 2, 4, 4])], ["y"], inits)
    result, check, _ = fold_and_compare(model)
    assert result.entries[0].reason is Reason.SHARED_OUTPUT
    assert result.entries[0].detail.startswith("cat input 0 (z)")
    assert check.max_abs == 0.0


def test_concat_off_the_channel_axis_is_a_channel_mismatch(rng):
    inits = {
        "w0": rng.normal(size=(3, 2, 1, 1)).astype(np.float32),
        "w1": rng.normal(size=(3, 2, 1, 1)).astype(np.float32),
        **batchnorm_params(rng, 3),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["z0"], name="layer0"),
        helper.make_node("Conv", ["x", "w1"], ["z1"], name="layer1"),
        helper.make_node("Concat", ["z0", "z1"], ["cat"], axis=2, name="cat"),
        batchnorm_node("cat", "y"),
    ]
    model = make_model(nodes, [("x", TensorProto.FLOAT, [1, 2, 4, 4])], ["y"], inits)
    result, check, _ = fold_and_compare(model)
    assert result.entries[0].reason is Reason.CHANNEL_MISMATCH, result.entries[0].detail
    assert check.max_abs == 0.0
