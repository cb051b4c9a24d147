"""The streamed serialisation parses to exactly the ModelProto that onnx_ir would write."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.frontends import onnx_bytes
from bnfold.frontends.onnx_bytes import model_bytes, write_model


def _model() -> onnx.ModelProto:
    """Large and small initializers of several dtypes and storages, one also a graph input,
    a string tensor, and a subgraph with its own initializer."""
    rng = np.random.default_rng(0)
    large32 = numpy_helper.from_array(rng.standard_normal((64, 300)).astype(np.float32), "w32")
    large16 = numpy_helper.from_array(rng.standard_normal((64, 600)).astype(np.float16), "w16")
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [4, 8], rng.random(32).tolist())
    small = numpy_helper.from_array(np.arange(3, dtype=np.int64), "small")
    text = helper.make_tensor("text", TensorProto.STRING, [2], [b"a", b"b"])
    branch = helper.make_graph(
        [helper.make_node("Identity", ["inner"], ["branch_out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "inner")],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w32"], ["y"]),
        helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("w16", TensorProto.FLOAT16, [64, 600]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 300]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2]),
        ],
        [large32, large16, typed, small, text],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(autouse=True)
def _stream_small_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_bytes, "STREAM_TENSOR_BYTES", 100)


def test_bytes_parse_to_the_proto_onnx_ir_writes() -> None:
    model = ir.serde.deserialize_model(_model())
    model.graph.initializers["w32"].const_value = ir.tensor(
        np.full((64, 300), 0.5, np.float32), name="w32"
    )  # a folded weight: a numpy tensor, not a TensorProtoTensor
    expected = ir.serde.serialize_model(model)
    written = onnx.ModelProto.FromString(model_bytes(model))
    assert written == expected
    assert [tensor.name for tensor in written.graph.initializer] == [
        "w32",
        "w16",
        "typed",
        "small",
        "text",
    ]
    assert numpy_helper.to_array(written.graph.initializer[0]).sum() == 0.5 * 64 * 300


def test_the_model_keeps_its_tensors_and_the_file_is_the_same() -> None:
    model = ir.serde.deserialize_model(_model())
    before = {name: value.const_value for name, value in model.graph.initializers.items()}
    buffer = io.BytesIO()
    write_model(model, buffer)
    after = {name: value.const_value for name, value in model.graph.initializers.items()}
    assert all(after[name] is tensor for name, tensor in before.items())
    assert buffer.getvalue() == model_bytes(model)
    onnx.checker.check_model(onnx.ModelProto.FromString(buffer.getvalue()))


def test_a_failed_serialisation_puts_the_tensors_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model = ir.serde.deserialize_model(_model())
    before = {name: value.const_value for name, value in model.graph.initializers.items()}

    def broken(_: ir.Model) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(onnx_bytes.ir.serde, "serialize_model", broken)
    with pytest.raises(RuntimeError):
        model_bytes(model)
    assert {name: v.const_value for name, v in model.graph.initializers.items()} == before
