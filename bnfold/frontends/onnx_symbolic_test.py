"""onnxruntime's symbolic inference as a source of shapes: expressions of the input's symbols,
made-up symbols renamed apart, what it found kept past an op it does not know."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from bnfold.frontends.onnx_symbolic import ort_symbolic_dims
from bnfold.testing import make_model

FLOAT = TensorProto.FLOAT


def test_a_reshape_to_computed_sizes_is_an_expression_of_the_input_symbols():
    inits = {"start": np.array([0], np.int64), "end": np.array([2], np.int64)}
    inits["rest"] = np.array([-1], np.int64)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "start", "end"], ["nc"]),
        helper.make_node("Concat", ["nc", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    model = make_model(
        nodes, [("x", FLOAT, ["N", 4, "H", "W"])], [("y", FLOAT, ["N", 4, "L"])], inits
    )
    dims = ort_symbolic_dims(model, {"N", "H", "W"}, "made-up:")
    assert dims["y"] == ["N", 4, "H*W"]


def test_what_it_found_before_an_unknown_op_is_kept_and_nothing_is_written(tmp_path, monkeypatch):
    """``SymbolicShapeInference.infer_shapes`` would raise and write a temporary model into
    the working directory; a broadcast of two symbols is a new symbol, not a merge."""
    monkeypatch.chdir(tmp_path)
    nodes = [
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Custom", ["c"], ["d"], domain="vendor"),
    ]
    inputs = [("a", FLOAT, ["N", "H"]), ("b", FLOAT, ["N", "W"])]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info(*item) for item in inputs],
            [helper.make_tensor_value_info("d", FLOAT, None)],
        ),
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("vendor", 1)],
    )
    dims = ort_symbolic_dims(model, {"N", "H", "W"}, "made-up:")
    assert dims["c"][0] == "N"
    assert isinstance(dims["c"][1], str) and dims["c"][1].startswith("made-up:")
    assert list(tmp_path.iterdir()) == []
