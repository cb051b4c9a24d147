"""Helpers for bnfold's tests: build small ONNX models in code, fold them, compare outputs in
onnxruntime with optimisations disabled."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from bnfold.check.equivalence import random_inputs
from bnfold.comparison import CheckResult, compare_outputs
from bnfold.fold import FoldPass, fold_model
from bnfold.frontends.onnx import input_specs
from bnfold.frontends.onnx_run import run_model

# onnxruntime 1.31 reads IR version <= 13 and onnx 1.23 writes 14 by default.
TEST_IR_VERSION = 8


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, Any, Sequence[Any] | None]],
    outputs: Sequence[tuple[str, Any, Sequence[Any] | None] | str],
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
) -> tuple[FoldPass, CheckResult, onnx.ModelProto]:
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


def pytorch_style_model(rng: np.random.Generator) -> onnx.ModelProto:
    """What torch.onnx.export keeps in training-preserving mode: BN after Conv, grouped
    ConvTranspose and Gemm, with Relu and Flatten between."""
    inits = {
        "conv_w": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "conv_b": rng.normal(size=8).astype(np.float32),
        "deconv_w": rng.normal(size=(8, 2, 2, 2)).astype(np.float32),
        "fc_w": rng.normal(size=(5, 8 * 8 * 8)).astype(np.float32),
        "fc_b": rng.normal(size=5).astype(np.float32),
        **batchnorm_params(rng, 8, "bn1"),
        **batchnorm_params(rng, 8, "bn2"),
        **batchnorm_params(rng, 5, "bn3"),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c1"], name="conv", pads=[1] * 4),
        batchnorm_node("c1", "b1", "bn1"),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node(
            "ConvTranspose", ["r1", "deconv_w"], ["d1"], name="deconv", group=4, strides=[2, 2]
        ),
        batchnorm_node("d1", "b2", "bn2"),
        helper.make_node("Relu", ["b2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g"], name="fc", transB=1),
        batchnorm_node("g", "logits", "bn3"),
    ]
    return make_model(
        nodes, [("x", TensorProto.FLOAT, ["batch", 3, 4, 4])], ["logits"], inits, opset=14
    )


LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def affine_tails_after_linear(proto: onnx.ModelProto) -> list[str]:
    """Nodes that still apply a BN-like constant scale right after a linear layer (MatMul's
    bias Add in between counts as "right after"); a fully folded model has none."""
    producers = {output: node for node in proto.graph.node for output in node.output}
    constants = {tensor.name for tensor in proto.graph.initializer} | {
        node.output[0] for node in proto.graph.node if node.op_type == "Constant"
    }
    left = []
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization":
            left.append(node.name or node.output[0])
            continue
        if node.op_type not in ("Mul", "Div") or not any(i in constants for i in node.input):
            continue
        data = next(i for i in node.input if i not in constants)
        producer = producers.get(data)
        if producer is not None and producer.op_type == "Add":
            producer = next((producers.get(i) for i in producer.input if i not in constants), None)
        if producer is not None and producer.op_type in LINEAR_OPS:
            left.append(node.name or node.output[0])
    return left


def run_python_quietly(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter with the user's TF_* and BNFOLD_* settings removed,
    so that a test sees what a user with no special environment sees on stdout and stderr."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("TF_", "BNFOLD_"))
    }
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )
