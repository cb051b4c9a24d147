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


@pytest.mark.parametrize("bias_shape", [None, (6,), (1, 6), (1,)])
def test_relu_batchnorm_matmul_folds_forward(rng, bias_shape):
    """tf2onnx's Dense is MatMul (+ Add): t B goes into that Add, or into a new one."""
    inits = {"w": rng.normal(size=(4, 6)).astype(np.float32), **batchnorm_params(rng, 4)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("MatMul", ["n", "w"], ["mm"], name="dense"),
    ]
    if bias_shape is None:
        nodes.append(helper.make_node("Identity", ["mm"], ["y"], name="out"))
    else:
        inits["b"] = rng.normal(size=bias_shape).astype(np.float32)
        nodes.append(helper.make_node("Add", ["b", "mm"], ["y"], name="bias_add"))
    model = make_model(nodes, [("x", FLOAT, ["N", 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    expected = (
        ["Relu", "MatMul", "Add", "Identity"] if bias_shape is None else ["Relu", "MatMul", "Add"]
    )
    assert op_types(folded) == expected
    [entry] = result.entries
    assert (entry.outcome, entry.target) == (Outcome.FOLDED_INTO_NEXT, ["dense"])
    assert check.max_rel <= 1e-5


def test_matmul_whose_output_is_the_graph_output_keeps_the_name(rng):
    inits = {"w": rng.normal(size=(4, 6)).astype(np.float32), **batchnorm_params(rng, 4)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("MatMul", ["n", "w"], ["y"], name="dense"),
        helper.make_node("Relu", ["y"], ["z"], name="after"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4])], ["y", "z"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Relu", "MatMul", "Add", "Relu"]
    assert [value.name for value in folded.graph.output] == ["y", "z"]
    assert folded.graph.node[3].input[0] == "y"  # the Relu reads the biased value
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_NEXT
    assert check.max_rel <= 1e-5


def test_affine_on_the_last_axis_of_a_rank_3_matmul(rng):
    inits = {
        "w": rng.normal(size=(4, 6)).astype(np.float32),
        "scale": rng.uniform(0.5, 2, size=4).astype(np.float32),
        "shift": rng.normal(size=(1, 1, 4)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "scale"], ["m"], name="bn_mul"),
        helper.make_node("Sub", ["m", "shift"], ["n"], name="bn_sub"),
        helper.make_node("MatMul", ["n", "w"], ["y"], name="dense"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 5, 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Relu", "MatMul", "Add"]
    assert result.entries[0].ops == ["Mul", "Sub"]
    assert check.max_rel <= 1e-5


def test_nchw_batchnorm_flatten_matmul_repeats_per_channel(rng):
    inits = {
        "w": rng.normal(size=(18, 5)).astype(np.float32),
        "b": rng.normal(size=5).astype(np.float32),
        **batchnorm_params(rng, 2),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("Flatten", ["n"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w"], ["mm"], name="dense"),
        helper.make_node("Add", ["mm", "b"], ["y"], name="bias_add"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 2, 3, 3])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Relu", "Flatten", "MatMul", "Add"]
    assert result.entries[0].via == ["flatten"]
    assert check.max_rel <= 1e-5


def test_matmul_and_gemm_reading_one_batchnorm_with_a_shared_weight(rng):
    inits = {"w": rng.normal(size=(4, 6)).astype(np.float32), **batchnorm_params(rng, 4)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("MatMul", ["n", "w"], ["y1"], name="dense_a"),
        helper.make_node("Gemm", ["n", "w"], ["y2"], name="dense_b"),
        helper.make_node("MatMul", ["x", "w"], ["y3"], name="raw"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4])], ["y1", "y2", "y3"], inits)
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.outcome is Outcome.FOLDED_INTO_NEXT
    assert sorted(entry.target) == ["dense_a", "dense_b"]
    assert check.max_rel <= 1e-5
    weights = {node.name: node.input[1] for node in folded.graph.node if len(node.input) > 1}
    assert weights["raw"] == "w"
    assert len({weights["dense_a"], weights["dense_b"], weights["raw"]}) == 3


def test_matmul_followed_by_its_own_batchnorm(rng):
    """BN1 -> MatMul -> Add(b) -> Mul -> Add: the second affine folds backward first, then
    BN1 folds forward into the MatMul's new bias on the engine's next pass."""
    inits = {
        "w": rng.normal(size=(4, 6)).astype(np.float32),
        "b": rng.normal(size=6).astype(np.float32),
        "scale": rng.uniform(0.5, 2, size=6).astype(np.float32),
        "shift": rng.normal(size=6).astype(np.float32),
        **batchnorm_params(rng, 4),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("MatMul", ["n", "w"], ["mm"], name="dense"),
        helper.make_node("Add", ["mm", "b"], ["biased"], name="bias_add"),
        helper.make_node("Mul", ["biased", "scale"], ["m"], name="bn2_mul"),
        helper.make_node("Add", ["m", "shift"], ["y"], name="bn2_add"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    outcomes = sorted((entry.name, entry.outcome) for entry in result.entries)
    # The chain Add(b) -> Mul -> Add is named by its BN-shaped scale, not by the bias Add.
    assert outcomes == [
        ("bn", Outcome.FOLDED_INTO_NEXT),
        ("bn2_mul", Outcome.FOLDED_INTO_PREVIOUS),
    ]
    assert op_types(folded) == ["Relu", "MatMul", "Add"]
    assert check.max_rel <= 1e-5


def test_plain_dense_bias_is_not_moved_into_the_next_layer(rng):
    inits = {
        "w1": rng.normal(size=(4, 6)).astype(np.float32),
        "b": rng.normal(size=6).astype(np.float32),
        "w2": rng.normal(size=(6, 3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["mm"], name="dense1"),
        helper.make_node("Add", ["mm", "b"], ["h"], name="bias_add"),
        helper.make_node("Gemm", ["h", "w2"], ["y"], name="dense2"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4])], ["y"], inits)
    result, _, folded = fold_and_compare(model)
    assert result.entries == []
    assert graph_signature(folded) == graph_signature(model)


@pytest.mark.parametrize("case", ["variable_weight", "read_as_weight", "weight_3d"])
def test_matmul_refusals(rng, case):
    inits = {**batchnorm_params(rng, 4)}
    inputs: list[tuple[str, int, list[int | str | None]]] = [("x", FLOAT, ["N", 4])]
    matmul_inputs = ["n", "w"]
    if case == "variable_weight":
        inputs.append(("w", FLOAT, [4, 6]))
    elif case == "read_as_weight":
        inits["w"] = rng.normal(size=(3, 5)).astype(np.float32)
        inputs = [("x", FLOAT, [4, 4]), ("a", FLOAT, [3, 4])]
        matmul_inputs = ["a", "n"]
    else:
        inits["w"] = rng.normal(size=(2, 4, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("MatMul", matmul_inputs, ["y"], name="dense"),
    ]
    model = make_model(nodes, inputs, ["y"], inits)
    result, check, folded = fold_and_compare(model)
    expected = {
        "variable_weight": Reason.WEIGHT_NOT_CONSTANT,
        "read_as_weight": Reason.CONSUMER_NOT_FOLDABLE,
        "weight_3d": Reason.UNSUPPORTED_LAYER,
    }[case]
    assert result.entries[0].reason is expected
    assert graph_signature(folded) == graph_signature(model)
    assert check.max_abs == 0.0


def _layer_norm_then_linear(rng, *, infer_shapes: bool):
    """PaddleOCR's LayerNorm written out as ops, its scale ``Mul`` and shift ``Add`` on the
    last axis, then the Linear as ``MatMul`` and its bias ``Add``; exported recognisers leave
    the shapes unknown past the input (``infer_shapes=False``)."""
    channels, features = 8, 6
    inits = {
        "axes": np.array([-1], np.int64),
        "two": np.array(2.0, np.float32),
        "eps": np.array(1e-5, np.float32),
        "gamma": rng.uniform(0.5, 2, channels).astype(np.float32),
        "beta": rng.normal(size=channels).astype(np.float32),
        "w": rng.normal(size=(channels, features)).astype(np.float32),
        "b": rng.normal(size=features).astype(np.float32),
    }
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mu"], name="mean"),
        helper.make_node("Sub", ["x", "mu"], ["xc"], name="center"),
        helper.make_node("Pow", ["xc", "two"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq", "axes"], ["var"], name="variance"),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="var_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="std"),
        helper.make_node("Div", ["xc", "sd"], ["xn"], name="normalise"),
        helper.make_node("Mul", ["xn", "gamma"], ["xs"], name="p2o.Mul.1"),
        helper.make_node("Add", ["xs", "beta"], ["xb"], name="p2o.Add.1"),
        helper.make_node("MatMul", ["xb", "w"], ["mm"], name="p2o.MatMul.0"),
        helper.make_node("Add", ["mm", "b"], ["y"], name="p2o.Add.2"),
    ]
    inputs = [("x", FLOAT, ["N", "T", channels])]
    outputs = [("y", FLOAT, ["N", "T", features])]
    return make_model(nodes, inputs, outputs, inits, opset=18, infer_shapes=infer_shapes)


@pytest.mark.parametrize("infer_shapes", [True, False])
def test_layer_norm_scale_and_shift_fold_into_matmul_and_its_bias(rng, infer_shapes):
    """The MatMul and its bias Add are one linear layer: ``t B`` joins the bias, whatever the
    rank (before: left ``consumer_not_foldable``, waiting for the bias Add to fold first)."""
    model = _layer_norm_then_linear(rng, infer_shapes=infer_shapes)
    result, check, folded = fold_and_compare(model, dims={"N": 2, "T": 3})
    [entry] = result.entries
    assert (entry.name, entry.ops) == ("p2o.Mul.1", ["Mul", "Add"])
    assert (entry.outcome, entry.target) == (Outcome.FOLDED_INTO_NEXT, ["p2o.MatMul.0"])
    assert op_types(folded)[-3:] == ["Div", "MatMul", "Add"]
    assert check.max_rel <= 1e-5


@pytest.mark.parametrize("with_bias", [True, False])
def test_batchnorm_matmul_batchnorm_fold_both(rng, with_bias):
    """A BN before and a BN after one MatMul: the first joins the bias (or a new Add), the
    chain after is read again and folds backward with that bias in the next pass."""
    inits = {
        "w": rng.normal(size=(4, 6)).astype(np.float32),
        **batchnorm_params(rng, 4, "bn1"),
        "s2": rng.uniform(0.5, 2, 6).astype(np.float32),
        "t2": rng.normal(size=6).astype(np.float32),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n", "bn1"),
        helper.make_node("MatMul", ["n", "w"], ["mm"], name="dense"),
    ]
    after = "mm"
    if with_bias:
        inits["b"] = rng.normal(size=6).astype(np.float32)
        nodes.append(helper.make_node("Add", ["mm", "b"], ["biased"], name="dense_bias"))
        after = "biased"
    nodes += [
        helper.make_node("Mul", [after, "s2"], ["m2"], name="bn2_mul"),
        helper.make_node("Add", ["m2", "t2"], ["y"], name="bn2_add"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    outcomes = {entry.name: (entry.outcome, entry.target) for entry in result.entries}
    assert outcomes == {
        "bn1": (Outcome.FOLDED_INTO_NEXT, ["dense"]),
        "bn2_mul": (Outcome.FOLDED_INTO_PREVIOUS, ["dense"]),
    }
    assert op_types(folded) == ["Relu", "MatMul", "Add"]
    assert check.max_rel <= 1e-5
