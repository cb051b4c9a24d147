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
