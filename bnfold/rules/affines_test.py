from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from bnfold.foldlog import Reason
from bnfold.rules.affines import find_affine_chains
from bnfold.testing import batchnorm_node, batchnorm_params, fold_and_compare, make_model, op_types

FLOAT = TensorProto.FLOAT


def conv_then(rng, bn_params, *, bn_attrs=None, opset=13, extra_outputs=(), dtype=np.float32):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = {"w": rng.normal(size=(4, 3, 1, 1)).astype(dtype), **bn_params}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node(
            "BatchNormalization",
            ["c", "bn_gamma", "bn_beta", "bn_mean", "bn_var"],
            ["y", *extra_outputs],
            name="bn",
            **(bn_attrs or {}),
        ),
    ]
    return make_model(nodes, [("x", elem, [2, 3, 4, 4])], ["y"], inits, opset=opset)


@pytest.mark.parametrize("opset", [9, 12, 14, 15])
def test_batchnorm_of_each_opset_folds(rng, opset):
    model = conv_then(rng, batchnorm_params(rng, 4), bn_attrs={"epsilon": 0.01}, opset=opset)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Conv"]
    assert check.max_rel <= 1e-5
    assert result.entries[0].name == "bn"


def test_training_mode_batchnorm_is_left(rng):
    model = conv_then(
        rng,
        batchnorm_params(rng, 4),
        bn_attrs={"training_mode": 1},
        opset=15,
        extra_outputs=("running_mean", "running_var"),
    )
    model.graph.output.extend([helper.make_tensor_value_info("running_mean", FLOAT, [4])])
    chains = find_affine_chains(ir.serde.deserialize_model(model).graph)
    assert chains[0].skip is not None
    assert chains[0].skip.reason is Reason.TRAINING_MODE


@pytest.mark.parametrize(
    ("variance", "reason"),
    [
        (np.array([1.0, -5.0, 1.0, 1.0], np.float32), Reason.INVALID_PARAMS),
        (np.array([1.0, np.nan, 1.0, 1.0], np.float32), Reason.INVALID_PARAMS),
        (np.array([1.0, 1.0, 1.0], np.float32), Reason.INVALID_PARAMS),
    ],
)
def test_invalid_statistics_are_left(rng, variance, reason):
    params = batchnorm_params(rng, 4)
    params["bn_var"] = variance
    model = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            batchnorm_node("c", "y"),
        ],
        [("x", FLOAT, [2, 3, 4, 4])],
        [("y", FLOAT, [2, 4, 4, 4])],
        {"w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32), **params},
        infer_shapes=False,
    )
    chains = find_affine_chains(ir.serde.deserialize_model(model).graph)
    assert chains[0].skip is not None and chains[0].skip.reason is reason


def test_zero_variance_with_epsilon_folds(rng):
    params = batchnorm_params(rng, 4)
    params["bn_var"] = np.zeros(4, np.float32)
    _, check, folded = fold_and_compare(conv_then(rng, params))
    assert op_types(folded) == ["Conv"]
    assert check.max_rel <= 1e-5


def test_statistics_from_a_graph_input_are_not_constant(rng):
    params = batchnorm_params(rng, 4)
    mean = params.pop("bn_mean")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), batchnorm_node("c", "y")]
    model = make_model(
        nodes,
        [("x", FLOAT, [2, 3, 4, 4]), ("bn_mean", FLOAT, [4])],
        ["y"],
        {"w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32), **params},
    )
    result, check, _ = fold_and_compare(
        model, inputs={"x": rng.normal(size=(2, 3, 4, 4)).astype(np.float32), "bn_mean": mean}
    )
    assert result.entries[0].reason is Reason.PARAMS_NOT_CONSTANT
    assert check.max_abs == 0.0


def test_float16_fold_that_overflows_is_refused(rng):
    params = batchnorm_params(rng, 4, dtype=np.float16)
    params["bn_gamma"] = np.full(4, 60000.0, np.float16)
    params["bn_var"] = np.full(4, 1e-4, np.float16)
    model = conv_then(rng, params, dtype=np.float16)
    result, _, folded = fold_and_compare(model)
    assert result.entries[0].reason is Reason.DTYPE_RANGE
    assert "overflow" in result.entries[0].detail
    assert op_types(folded) == ["Conv", "BatchNormalization"]


def test_float16_fold_in_range_is_exact_to_half_precision(rng):
    model = conv_then(rng, batchnorm_params(rng, 4, dtype=np.float16), dtype=np.float16)
    _, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Conv"]
    assert check.passed
    assert check.max_rel <= 5e-3


def test_float64_model_folds_to_float64_precision(rng):
    """onnxruntime has no float64 Conv on CPU; MatMul shows the precision just as well."""
    params = batchnorm_params(rng, 4, dtype=np.float64)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["c"], name="dense"), batchnorm_node("c", "y")]
    model = make_model(
        nodes,
        [("x", TensorProto.DOUBLE, ["N", 3])],
        ["y"],
        {"w": rng.normal(size=(3, 4)), **params},
    )
    _, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["MatMul", "Add"]
    assert check.max_rel <= 1e-12


@pytest.mark.parametrize("opset", [7, 9, 13])
def test_old_opset_batchnorm_with_named_optional_outputs_is_training(rng, opset):
    """Before opset 14 the optional outputs alone mean training mode, read or not."""
    model = conv_then(
        rng, batchnorm_params(rng, 4), opset=opset, extra_outputs=("rmean", "rvar", "smean", "svar")
    )
    result, check, folded = fold_and_compare(model)
    assert [entry.reason for entry in result.entries] == [Reason.TRAINING_MODE]
    assert "optional outputs" in result.entries[0].detail
    assert op_types(folded) == ["Conv", "BatchNormalization"]
    assert check.max_abs == 0.0


def test_old_opset_batchnorm_with_empty_optional_outputs_is_inference(rng):
    """Empty names are absent outputs: inference mode. (Not run: onnxruntime crashes on it.)"""
    model = conv_then(rng, batchnorm_params(rng, 4), opset=9, extra_outputs=("", "", "", ""))
    [chain] = find_affine_chains(ir.serde.deserialize_model(model).graph)
    assert chain.skip is None


def _one_channel_bn(rng, dtype, *, forward):
    """BatchNorm1d(1) on [N, 1, K] before (forward) or after (backward) a MatMul by [K, 6]."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = {"w": rng.normal(size=(5, 6)).astype(dtype), **batchnorm_params(rng, 1, dtype=dtype)}
    if forward:
        nodes = [batchnorm_node("x", "n"), helper.make_node("MatMul", ["n", "w"], ["y"], name="mm")]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), batchnorm_node("m", "y")]
    return make_model(nodes, [("x", elem, ["N", 1, 5])], ["y"], inits)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("forward", [False, True])
def test_one_channel_batchnorm_is_a_scalar_that_folds_into_matmul(rng, dtype, forward):
    """Its axis (1) is not the MatMul's channel axis (2): it folds as a scalar."""
    result, check, folded = fold_and_compare(_one_channel_bn(rng, dtype, forward=forward))
    [entry] = result.entries
    assert entry.folded, entry.detail
    assert "BatchNormalization" not in op_types(folded)
    assert check.max_rel <= (1e-5 if dtype is np.float32 else 2e-3)


@pytest.mark.parametrize("forward", [False, True])
def test_one_channel_batchnorm_folds_into_gemm(rng, forward):
    """Linear(4, 1) -> BatchNorm1d(1), and BatchNorm1d(1) -> Linear(1, 3)."""
    if forward:
        inits = {"w": rng.normal(size=(3, 1)).astype(np.float32), "b": np.ones(3, np.float32)}
        nodes = [
            batchnorm_node("x", "n"),
            helper.make_node("Gemm", ["n", "w", "b"], ["y"], transB=1),
        ]
        shape = ["N", 1]
    else:
        inits = {"w": rng.normal(size=(1, 4)).astype(np.float32), "b": np.ones(1, np.float32)}
        nodes = [
            helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
            batchnorm_node("g", "y"),
        ]
        shape = ["N", 4]
    inits.update(batchnorm_params(rng, 1))
    _, check, folded = fold_and_compare(make_model(nodes, [("x", FLOAT, shape)], ["y"], inits))
    assert op_types(folded) == ["Gemm"]
    assert check.max_rel <= 1e-5
