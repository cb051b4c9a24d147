"""float16 and bfloat16 models: the fold is computed in float64 and cast back once; a fold
whose result overflows or underflows the dtype is refused with ``dtype_range``; the check's
default tolerances follow the output dtype.

onnxruntime 1.31 has float16 Conv, Gemm, MatMul and BatchNormalization kernels on the CPU, so
float16 folds are checked end to end. It has no bfloat16 kernel for any of them on the CPU:
bfloat16 folds are tested on their arithmetic and their log, and the command line says that
the check cannot run them and suggests ``--no-check``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from bnfold.affine import batchnorm_scale_shift
from bnfold.cli import cli
from bnfold.comparison import default_tolerances
from bnfold.fold import fold_model
from bnfold.foldlog import Outcome, Reason
from bnfold.testing import batchnorm_node, batchnorm_params, fold_and_compare, make_model, op_types

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT16 = np.dtype(np.float16)


def linear_then_bn(
    rng: np.random.Generator, op: str, dtype: Any, params: dict[str, Any] | None = None
) -> onnx.ModelProto:
    """``op`` (Conv, Gemm or MatMul) followed by a BN of 4 channels, all in ``dtype``."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    opset, ir_version = (22, 10) if np.dtype(dtype) == BFLOAT16 else (15, 8)
    params = params or batchnorm_params(rng, 4, dtype=dtype)
    if op == "Conv":
        weight = rng.normal(size=(4, 3, 3, 3))
        shape: list[Any] = [2, 3, 6, 6]
        node = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 4)
    elif op == "Gemm":
        weight = rng.normal(size=(4, 8))
        shape = [2, 8]
        node = helper.make_node("Gemm", ["x", "w"], ["c"], name="gemm", transB=1)
    else:
        weight = rng.normal(size=(8, 4))
        shape = [2, 8]
        node = helper.make_node("MatMul", ["x", "w"], ["c"], name="matmul")
    inits = {"w": (weight / np.sqrt(weight[0].size)).astype(dtype), **params}
    return make_model(
        [node, batchnorm_node("c", "y")],
        [("x", elem, shape)],
        ["y"],
        inits,
        opset=opset,
        ir_version=ir_version,
    )


def folded_weight(model: ir.Model) -> np.ndarray:
    node = next(node for node in model.graph if node.op_type in ("Conv", "Gemm", "MatMul"))
    value = node.inputs[1]
    assert value is not None and value.const_value is not None
    return value.const_value.numpy()


def expected_weight(proto: onnx.ModelProto, axis: int) -> np.ndarray:
    """The fold done by hand in float64, cast to the model's dtype once."""
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    affine = batchnorm_scale_shift(
        arrays["bn_gamma"], arrays["bn_beta"], arrays["bn_mean"], arrays["bn_var"], 1e-5
    )
    weight = arrays["w"].astype(np.float64)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return (weight * affine.scale.reshape(shape)).astype(arrays["w"].dtype)


def test_default_tolerances_follow_the_dtype():
    assert default_tolerances(np.dtype(np.float32)) == (1e-4, 1e-5)
    assert default_tolerances(FLOAT16) == (1e-2, 1e-3)
    assert default_tolerances(BFLOAT16) == (5e-2, 1e-2)
    # Each gate is well above the dtype's rounding step (float16: 2**-11, bfloat16: 2**-8),
    # so one rounding of each folded weight cannot fail it.
    assert default_tolerances(FLOAT16)[0] > 10 * 2.0**-11
    assert default_tolerances(BFLOAT16)[0] > 10 * 2.0**-8


@pytest.mark.parametrize(("op", "axis"), [("Conv", 0), ("Gemm", 0), ("MatMul", 1)])
def test_float16_fold_runs_in_onnxruntime_within_the_float16_gate(rng, op, axis):
    proto = linear_then_bn(rng, op, np.float16)
    result, check, folded = fold_and_compare(proto)
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_PREVIOUS
    assert "BatchNormalization" not in op_types(folded)
    assert check.passed and check.outputs[0].dtype == "float16"
    assert check.outputs[0].rtol == 1e-2
    # A float16 fold is exact to a few float16 rounding steps, not to float32's 1e-6.
    assert check.max_rel <= 4e-3
    model = ir.serde.deserialize_model(proto)
    fold_model(model)
    weight = folded_weight(model)
    assert weight.dtype == np.float16
    np.testing.assert_array_equal(weight, expected_weight(proto, axis))


@pytest.mark.parametrize(
    ("gamma", "var", "word"),
    [(60000.0, 1e-4, "overflow"), (6e-5, 6e4, "underflow")],
    ids=["overflow", "underflow"],
)
@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_float16_fold_out_of_range_is_refused(rng, op, gamma, var, word):
    params = batchnorm_params(rng, 4, dtype=np.float16)
    params["bn_gamma"] = np.full(4, gamma, np.float16)
    params["bn_var"] = np.full(4, var, np.float16)
    params["bn_beta"] = np.zeros(4, np.float16)
    params["bn_mean"] = np.zeros(4, np.float16)
    proto = linear_then_bn(rng, op, np.float16, params)
    result, check, folded = fold_and_compare(proto)
    entry = result.entries[0]
    assert entry.reason is Reason.DTYPE_RANGE
    assert word in entry.detail and "float16" in entry.detail
    assert op_types(folded) == [op, "BatchNormalization"]
    assert check.max_abs == 0.0  # nothing changed


@pytest.mark.parametrize(("op", "axis"), [("Conv", 0), ("Gemm", 0), ("MatMul", 1)])
def test_bfloat16_fold_arithmetic(rng, op, axis):
    """No bfloat16 kernels in onnxruntime's CPU provider: the arithmetic is checked instead."""
    proto = linear_then_bn(rng, op, BFLOAT16)
    model = ir.serde.deserialize_model(proto)
    result = fold_model(model)
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_PREVIOUS
    weight = folded_weight(model)
    assert weight.dtype == BFLOAT16
    np.testing.assert_array_equal(
        weight.astype(np.float64), expected_weight(proto, axis).astype(np.float64)
    )
    saved = ir.serde.serialize_model(model)
    assert {t.data_type for t in saved.graph.initializer} == {TensorProto.BFLOAT16}
    onnx.checker.check_model(saved, full_check=True)


@pytest.mark.parametrize(
    ("gamma", "var", "word"),
    [(3e38, 1e-30, "overflow"), (1e-38, 1e8, "underflow")],
    ids=["overflow", "underflow"],
)
def test_bfloat16_fold_out_of_range_is_refused(rng, gamma, var, word):
    params = batchnorm_params(rng, 4, dtype=BFLOAT16)
    params["bn_gamma"] = np.full(4, gamma).astype(BFLOAT16)
    params["bn_var"] = np.full(4, var).astype(BFLOAT16)
    params["bn_beta"] = np.zeros(4, BFLOAT16)
    params["bn_mean"] = np.zeros(4, BFLOAT16)
    proto = linear_then_bn(rng, "Gemm", BFLOAT16, params)
    model = ir.serde.deserialize_model(proto)
    before = folded_weight(model).copy()
    entry = fold_model(model).entries[0]
    assert entry.reason is Reason.DTYPE_RANGE
    assert word in entry.detail and "bfloat16" in entry.detail
    assert [node.op_type for node in model.graph] == ["Gemm", "BatchNormalization"]
    np.testing.assert_array_equal(folded_weight(model), before)


def test_bfloat16_on_the_command_line(rng, tmp_path: Path):
    source = tmp_path / "bf16.onnx"
    onnx.save(linear_then_bn(rng, "Conv", BFLOAT16), source)
    out = tmp_path / "out.onnx"
    runner = CliRunner()
    checked = runner.invoke(cli, [str(source), "-o", str(out)])
    assert checked.exit_code == 3
    assert "--no-check" in checked.stderr and len(checked.stderr.strip().splitlines()) == 1
    assert not out.exists()
    unchecked = runner.invoke(cli, [str(source), "-o", str(out), "--no-check"])
    assert unchecked.exit_code == 0, unchecked.stderr
    assert "folded into previous conv" in unchecked.stdout
    assert op_types(onnx.load(out)) == ["Conv"]


def test_float16_on_the_command_line_uses_the_float16_gate(rng, tmp_path: Path):
    source = tmp_path / "f16.onnx"
    onnx.save(linear_then_bn(rng, "Conv", np.float16), source)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(cli, [str(source), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    import json

    document = json.loads(result.stdout)
    output = document["check"]["outputs"][0]
    assert output["dtype"] == "float16" and output["rtol"] == 1e-2 and output["passed"]
