"""Helpers for bnfold's tests: build small ONNX models in code, fold them, compare outputs in
onnxruntime with optimisations disabled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from bnfold.check.equivalence import random_inputs, run_model
from bnfold.comparison import CheckResult, compare_outputs
from bnfold.fold import FoldResult, fold_model
from bnfold.frontends.onnx import input_specs

# onnxruntime 1.31 reads IR version <= 13 and onnx 1.23 writes 14 by default.
TEST_IR_VERSION = 8


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, int, Sequence[int | str | None] | None]],
    outputs: Sequence[tuple[str, int, Sequence[int | str | None] | None]] | Sequence[str],
    initializers: dict[str, npt.NDArray[Any]] | None = None,
    *,
    opset: int = 13,
    ir_version: int = TEST_IR_VERSION,
    infer_shapes: bool = True,
) -> onnx.ModelProto:
    """A checked model; outputs given by name alone take the first input's element type and
    get their shape from shape inference."""
    element_type = inputs[0][1]
    output_infos = [
        helper.make_tensor_value_info(item, element_type, None)
        if isinstance(item, str)
        else helper.make_tensor_value_info(*item)
        for item in outputs
    ]
    graph = helper.make_graph(
        list(nodes),
        "bnfold_test",
        [helper.make_tensor_value_info(*item) for item in inputs],
        output_infos,
        [numpy_helper.from_array(array, name) for name, array in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    if infer_shapes:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=infer_shapes)
    return model


def batchnorm_params(
    rng: np.random.Generator, channels: int, prefix: str = "bn", dtype: Any = np.float32
) -> dict[str, npt.NDArray[Any]]:
    """Non-trivial BN statistics so a fold really changes the weights."""
    return {
        f"{prefix}_gamma": rng.uniform(0.5, 2.0, channels).astype(dtype),
        f"{prefix}_beta": rng.normal(0.0, 1.0, channels).astype(dtype),
        f"{prefix}_mean": rng.normal(0.0, 1.0, channels).astype(dtype),
        f"{prefix}_var": rng.uniform(0.2, 3.0, channels).astype(dtype),
    }


def batchnorm_node(data: str, output: str, prefix: str = "bn", **attributes: Any) -> onnx.NodeProto:
    names = [f"{prefix}_{part}" for part in ("gamma", "beta", "mean", "var")]
    return helper.make_node(
        "BatchNormalization", [data, *names], [output], name=prefix, **attributes
    )


def fold_and_compare(
    proto: onnx.ModelProto,
    *,
    seed: int = 0,
    dims: dict[str, int] | None = None,
    inputs: dict[str, npt.NDArray[Any]] | None = None,
) -> tuple[FoldResult, CheckResult, onnx.ModelProto]:
    """Fold a copy of ``proto``; run both in onnxruntime (no optimisations) on the same inputs."""
    model = ir.serde.deserialize_model(proto)
    feeds = (
        inputs if inputs is not None else random_inputs(input_specs(model), seed=seed, dims=dims)
    )
    result = fold_model(model)
    folded = ir.serde.serialize_model(model)
    onnx.checker.check_model(folded, full_check=True)
    check = compare_outputs(run_model(proto.SerializeToString(), feeds), run_model(model, feeds))
    return result, check, folded


def op_types(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def graph_signature(proto: onnx.ModelProto) -> dict[str, Any]:
    """What makes two models the same model: nodes, weights, inputs, outputs, opsets,
    IR version and metadata (value_info, which only caches shapes, is left out)."""
    graph = proto.graph
    return {
        "ir_version": proto.ir_version,
        "opsets": sorted((opset.domain, opset.version) for opset in proto.opset_import),
        "metadata": sorted((entry.key, entry.value) for entry in proto.metadata_props),
        "inputs": [value.SerializeToString() for value in graph.input],
        "outputs": [value.SerializeToString() for value in graph.output],
        "nodes": [node.SerializeToString() for node in graph.node],
        "initializers": sorted(
            (tensor.name, numpy_helper.to_array(tensor).tobytes()) for tensor in graph.initializer
        ),
    }
