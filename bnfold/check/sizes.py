"""How big a model is, before and after a fold: nodes, parameters, weight bytes, BN/affines.
It computes (it finds the affine chains the fold engine sees), so it lives with the other
measurements of a fold, not with the plain data of ``bnfold.results``.

``affine_nodes`` counts the nodes of every BN-like affine chain the fold engine sees (a
``BatchNormalization`` node, or a per-channel ``Mul``/``Div`` with its ``Add``/``Sub``): what is
left of them after a fold is what a fold could not remove.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.frontends.onnx import OnnxSource, as_ir
from bnfold.graph import iter_graphs
from bnfold.results import ModelSizes, SizeComparison
from bnfold.rules.affines import find_affine_chains


def _tensor_size(tensor: ir.TensorProtocol | None) -> tuple[int, int]:
    if tensor is None:
        return 0, 0
    elements = int(np.prod(tensor.shape.numpy())) if tensor.shape is not None else 0
    return elements, int(tensor.nbytes)


def model_sizes(model: OnnxSource) -> ModelSizes:
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


def compare_sizes(before: OnnxSource, after: OnnxSource) -> SizeComparison:
    return SizeComparison(model_sizes(before), model_sizes(after))


__all__ = ["ModelSizes", "SizeComparison", "compare_sizes", "model_sizes"]
