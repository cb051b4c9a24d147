from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from bnfold.constants import constant_value
from bnfold.fold import fold_model
from bnfold.testing import (
    batchnorm_node,
    batchnorm_params,
    fold_and_compare,
    graph_signature,
    make_model,
    op_types,
)

FLOAT = TensorProto.FLOAT


def _constant(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def _values(model):
    values = {value.name: value for value in model.graph.inputs}
    for node in model.graph:
        values.update((value.name, value) for value in node.outputs)
    return values


def test_shape_of_a_static_activation_and_a_reshaped_constant_are_constants(rng):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["r"], ["shape"], start=1, end=2),
        _constant("c", np.arange(6, dtype=np.float32)),
        helper.make_node("Reshape", ["c", "to"], ["reshaped"]),
        helper.make_node("Mul", ["r", "reshaped"], ["y"]),
    ]
    inits = {"to": np.array([6, 1, 1], np.int64)}
    proto = make_model(
        nodes,
        [("x", FLOAT, ["N", 6, 2, 2])],
        ["y", ("shape", TensorProto.INT64, None)],
        inits,
        opset=15,
    )
    values = _values(ir.serde.deserialize_model(proto))
    shape = constant_value(values["shape"])
    assert shape is not None and shape.tolist() == [6]
    reshaped = constant_value(values["reshaped"])
    assert reshaped is not None and reshaped.shape == (6, 1, 1)
    assert constant_value(values["r"]) is None  # reads the graph input
    assert constant_value(values["y"]) is None


def test_a_subgraph_of_an_overridable_initializer_is_not_constant(rng):
    nodes = [
        helper.make_node("Unsqueeze", ["s", "axes"], ["u"]),
        helper.make_node("Mul", ["x", "u"], ["y"]),
    ]
    inits: dict[str, np.ndarray] = {
        "s": np.ones(3, np.float32),
        "axes": np.array([1, 2], np.int64),
    }
    proto = make_model(nodes, [("x", FLOAT, [1, 3, 2, 2])], ["y"], inits)
    proto.graph.input.append(helper.make_tensor_value_info("s", FLOAT, [3]))
    assert constant_value(_values(ir.serde.deserialize_model(proto))["u"]) is None


def test_conv_bias_add_of_a_reshaped_constant_folds_and_its_subgraph_goes(rng):
    """paddle2onnx: Conv -> Add(Reshape(Constant bias, [1, C, 1, 1]))."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        _constant("bias", rng.normal(size=4).astype(np.float32)),
        helper.make_node("Reshape", ["bias", "to"], ["bias4"]),
        helper.make_node("Add", ["c", "bias4"], ["y"], name="bias_add"),
    ]
    inits = {
        "w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "to": np.array([1, 4, 1, 1], np.int64),
    }
    _result, check, folded = fold_and_compare(
        make_model(nodes, [("x", FLOAT, ["N", 3, 6, 6])], ["y"], inits)
    )
    assert op_types(folded) == ["Conv"]
    assert [init.name for init in folded.graph.initializer if init.name == "to"] == []
    assert check.max_rel <= 1e-6


def test_mul_add_by_unsqueezed_initializers_fold_into_the_conv(rng):
    """onnxruntime's FuseConvMulNoBias / FuseConvAddNoBias: Mul/Add by Unsqueeze(initializer)."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Unsqueeze", ["s", "axes"], ["s3"]),
        helper.make_node("Unsqueeze", ["t", "axes"], ["t3"]),
        helper.make_node("Mul", ["c", "s3"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "t3"], ["y"], name="add"),
    ]
    inits = {
        "w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32),
        "s": rng.uniform(0.5, 2, size=4).astype(np.float32),
        "t": rng.normal(size=4).astype(np.float32),
        "axes": np.array([1, 2], np.int64),
    }
    model = make_model(nodes, [("x", FLOAT, [2, 3, 5, 5])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert [entry.target for entry in result.entries if entry.folded] == [["conv"]]
    assert op_types(folded) == ["Conv"]
    assert {"s", "t", "axes"}.isdisjoint(init.name for init in folded.graph.initializer)
    assert check.max_rel <= 1e-6


def test_expand_castlike_shape_bias_of_the_dynamo_exporter(rng):
    """Conv bias = Expand(CastLike(Constant 0, x), Shape(W)[:1]), then a BN."""
    nodes = [
        _constant("zero", np.array(0.0, np.float32)),
        helper.make_node("CastLike", ["zero", "x"], ["zero_like"]),
        helper.make_node("Shape", ["w"], ["w_out"], start=0, end=1),
        helper.make_node("Expand", ["zero_like", "w_out"], ["bias"]),
        helper.make_node("Conv", ["x", "w", "bias"], ["c"], name="conv", pads=[1] * 4),
        batchnorm_node("c", "y"),
    ]
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32), **batchnorm_params(rng, 4)}
    model = make_model(nodes, [("x", FLOAT, ["N", 3, 6, 6])], ["y"], inits, opset=15)
    result, check, folded = fold_and_compare(model)
    assert result.entries[0].target == ["conv"]
    assert op_types(folded) == ["Conv"]
    assert check.max_rel <= 1e-5


def test_a_model_with_nothing_to_fold_keeps_its_constant_subgraphs(rng):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Unsqueeze", ["s", "axes"], ["s3"]),
        helper.make_node("Mul", ["r", "s3"], ["y"], name="mul"),
    ]
    inits = {
        "s": rng.uniform(0.5, 2, size=3).astype(np.float32),
        "axes": np.array([1, 2], np.int64),
    }
    proto = make_model(nodes, [("x", FLOAT, [1, 3, 2, 2])], ["y"], inits)
    model = ir.serde.deserialize_model(proto)
    result = fold_model(model)
    assert not result.changed
    assert result.entries[0].folded is False
    assert graph_signature(ir.serde.serialize_model(model)) == graph_signature(proto)
