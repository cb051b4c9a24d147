"""How big a model is, before and after a fold: nodes, parameters, weight bytes, BN/affines.

``affine_nodes`` counts the nodes of every BN-like affine chain the fold engine sees (a
``BatchNormalization`` node, or a per-channel ``Mul``/``Div`` with its ``Add``/``Sub``): what is
left of them after a fold is what a fold could not remove.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir

from bnfold.graph import iter_graphs
from bnfold.results import ModelSizes, SizeComparison
from bnfold.rules.affines import find_affine_chains

SizedModel = ir.Model | onnx.ModelProto | bytes | str | os.PathLike[str]


def as_ir(model: SizedModel) -> ir.Model:
    """``model`` in memory: a file is loaded (and validated), bytes and protos parsed."""
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, bytes):
        return ir.serde.deserialize_model(onnx.ModelProto.FromString(model))
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    from bnfold.frontends.onnx import load_onnx

    return load_onnx(model)


def _tensor_size(tensor: ir.TensorProtocol | None) -> tuple[int, int]:
    if tensor is None:
        return 0, 0
    elements = int(np.prod(tensor.shape.numpy())) if tensor.shape is not None else 0
    return elements, int(tensor.nbytes)


def model_sizes(model: SizedModel) -> ModelSizes:
    """Count ``model``'s nodes, parameters, weight bytes and BN-like affines (reads no data)."""
    ir_model = as_ir(model)
    nodes = parameters = weight_bytes = batchnorms = affines = 0
    for graph in iter_graphs(ir_model.graph):
        for value in graph.initializers.values():
            elements, size = _tensor_size(value.const_value)
            parameters += elements
            weight_bytes += size
        for node in graph:
            nodes += 1
            batchnorms += node.op_type == "BatchNormalization"
            if node.op_type == "Constant" and "value" in node.attributes:
                attribute = node.attributes["value"]
                if attribute.type == ir.AttributeType.TENSOR:
                    elements, size = _tensor_size(attribute.as_tensor())
                    parameters += elements
                    weight_bytes += size
        affines += sum(len(chain.ops) for chain in find_affine_chains(graph) if chain.is_bn_like)
    return ModelSizes(nodes, parameters, weight_bytes, batchnorms, affines)


def compare_sizes(before: SizedModel, after: SizedModel) -> SizeComparison:
    return SizeComparison(model_sizes(before), model_sizes(after))


__all__ = ["ModelSizes", "SizeComparison", "as_ir", "compare_sizes", "model_sizes"]
