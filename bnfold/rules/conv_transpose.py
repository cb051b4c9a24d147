"""ConvTranspose then affine: weight ``[in, out/g, k...]``; output channel
``o = group*(out/g) + j`` takes ``W[i, j]`` for the input channels ``i`` of its group, so
``W'[i, j] = W[i, j] * s[group(i)*(out/g) + j]`` and ``b' = s*b + t``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.affine import ScaleShift, as_float64_vector, grouped_transpose_scale
from bnfold.foldlog import Skip
from bnfold.graph import int_attr
from bnfold.rules.base import (
    BackwardRule,
    LinearLayer,
    Writer,
    cast_like,
    group_skip,
    weight_and_bias,
    write_weight_and_bias,
)


class ConvTransposeThenAffine(BackwardRule):
    op_type = "ConvTranspose"

    def describe(self, node: ir.Node) -> LinearLayer | Skip:
        parameters = weight_and_bias(node, min_rank=3)
        if isinstance(parameters, Skip):
            return parameters
        weight, bias = parameters
        if bad_group := group_skip(node, weight):
            return bad_group
        channels = weight.shape[1] * int_attr(node, "group", 1)
        return LinearLayer(node, weight, bias, channels, 1, weight.ndim)

    def prepare(self, layer: LinearLayer, affine: ScaleShift) -> Writer:
        groups = int_attr(layer.node, "group", 1)
        weight = grouped_transpose_scale(layer.weight, affine.scale, groups)
        bias = np.zeros(layer.channels) if layer.bias is None else as_float64_vector(layer.bias)
        new_bias = cast_like(affine.scale * bias + affine.shift, layer.weight)
        new_weight = cast_like(weight, layer.weight)
        return lambda context: write_weight_and_bias(context, layer.node, new_weight, new_bias)
