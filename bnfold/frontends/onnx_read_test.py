"""The reader that reads large weights straight into arrays parses to what onnx.load does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnfold.errors import InputError
from bnfold.frontends.onnx import load_onnx
from bnfold.frontends.onnx_read import READ_TENSOR_BYTES, parse_model
from bnfold.frontends.onnx_validate import read_model

LARGE = READ_TENSOR_BYTES // 4 + 8  # float32 elements: just over the threshold


def _model(tensors: list[TensorProto]) -> onnx.ModelProto:
    """A graph that outputs each tensor through Identity."""
    nodes = [helper.make_node("Identity", [t.name], [f"{t.name}_out"]) for t in tensors]
    outputs = [helper.make_tensor_value_info(f"{t.name}_out", t.data_type, t.dims) for t in tensors]
    graph = helper.make_graph(nodes, "g", [], outputs, initializer=tensors)
    graph.doc_string = "after the initializers"
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _tensors() -> list[TensorProto]:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((LARGE,)).astype(np.float32), "w")
    weight.doc_string = "kept"
    half = numpy_helper.from_array(rng.standard_normal((8, LARGE // 4)).astype(np.float16), "h")
    ints = numpy_helper.from_array(np.arange(LARGE, dtype=np.int64), "i")
    flags = numpy_helper.from_array(rng.integers(0, 2, READ_TENSOR_BYTES + 3).astype(bool), "b")
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [LARGE], [1.5] * LARGE)  # float_data
    small = numpy_helper.from_array(np.ones(4, np.float32), "small")
    return [weight, half, ints, flags, typed, small]


def test_the_reader_parses_to_what_onnx_load_parses(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_model(_tensors()), path)
    parsed = parse_model(path)
    assert sorted(parsed.arrays) == ["b", "h", "i", "w"]  # not float_data, not small ones
    expected = onnx.load(path)
    for tensor in expected.graph.initializer:
        if tensor.name in parsed.arrays:
            np.testing.assert_array_equal(parsed.arrays[tensor.name], numpy_helper.to_array(tensor))
            tensor.ClearField("raw_data")
    assert parsed.proto == expected


def test_a_loaded_model_owns_its_arrays_and_keeps_tensor_details(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_model(_tensors()), path)
    model = load_onnx(path)
    expected = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    for name, value in model.graph.initializers.items():
        assert value.const_value is not None
        np.testing.assert_array_equal(value.const_value.numpy(), expected[name])
        assert value.const_value.numpy() is value.const_value.numpy()  # no copy per call
    weight = model.graph.initializers["w"].const_value
    assert weight is not None and weight.doc_string == "kept"


def test_a_raw_size_that_disagrees_with_the_dims_is_refused_as_before(tmp_path: Path) -> None:
    tensor = numpy_helper.from_array(np.ones(LARGE, np.float32), "w")
    tensor.dims[0] = LARGE + 1
    path = tmp_path / "model.onnx"
    onnx.save(_model([tensor]), path)
    with pytest.raises(InputError, match=r"bytes of data for dims"):
        read_model(path)


def test_a_file_the_reader_cannot_walk_is_left_to_onnx_load(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x3a\xff\xff\xff\x0f" + b"\x00" * 10)  # a graph field past the end
    with pytest.raises(InputError, match="not an ONNX model"):
        read_model(path)
