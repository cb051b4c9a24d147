"""Gemm then affine. ``Y = alpha * A' B' + beta * C`` with ``B`` of shape ``[K, N]`` (or
``[N, K]`` when ``transB=1``); the affine acts on the N axis of ``Y``:

    B' = B * s along N        C' = s * (beta * C) + t        beta' = 1

``alpha`` is untouched; an absent ``C`` becomes ``t``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.affine import ScaleShift, along_axis
from bnfold.foldlog import Reason, Skip
from bnfold.graph import float_attr, int_attr, node_label, set_constant_input
from bnfold.rules.base import (
    BackwardRule,
    FoldContext,
    LinearLayer,
    Writer,
    cast_like,
    weight_and_bias,
)


class GemmThenAffine(BackwardRule):
    op_type = "Gemm"

    def describe(self, node: ir.Node) -> LinearLayer | Skip:
        parameters = weight_and_bias(node)
        if isinstance(parameters, Skip):
            return parameters
        weight, bias = parameters
        if weight.ndim != 2:
            return Skip(Reason.UNSUPPORTED_LAYER, f"{node_label(node)}: weight is not 2-D")
        channels = weight.shape[0] if int_attr(node, "transB", 0) else weight.shape[1]
        return LinearLayer(node, weight, bias, channels, 1, 2)

    def prepare(self, layer: LinearLayer, affine: ScaleShift) -> Writer:
        node = layer.node
        n_axis = 0 if int_attr(node, "transB", 0) else 1
        weight = np.asarray(layer.weight, dtype=np.float64)
        new_weight = cast_like(weight * along_axis(affine.scale, n_axis, 2), layer.weight)
        if layer.bias is None:
            new_bias = affine.shift
        else:
            scaled = float_attr(node, "beta", 1.0) * np.asarray(layer.bias, dtype=np.float64)
            new_bias = affine.scale * scaled + affine.shift  # C broadcasts over [M, N]
        new_bias_cast = cast_like(new_bias, layer.weight)

        def write(context: FoldContext) -> None:
            label = node_label(node)
            names = context.names
            set_constant_input(context.graph, node, 1, new_weight, names, f"{label}_B_bnfold")
            set_constant_input(context.graph, node, 2, new_bias_cast, names, f"{label}_C_bnfold")
            node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)

        return write
