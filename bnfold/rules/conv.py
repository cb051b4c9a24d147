"""Conv then affine: ``W' = W * s`` along axis 0 of ``[out, in/g, k...]``, ``b' = s*b + t``.

Any group count, dilation and stride: every output channel owns exactly one slice of axis 0.
"""

from __future__ import annotations

import onnx_ir as ir

from bnfold.affine import ScaleShift, fold_after
from bnfold.foldlog import Skip
from bnfold.rules.base import (
    BackwardRule,
    LinearLayer,
    Writer,
    cast_like,
    group_skip,
    weight_and_bias,
    write_weight_and_bias,
)


class ConvThenAffine(BackwardRule):
    op_type = "Conv"

    def describe(self, node: ir.Node) -> LinearLayer | Skip:
        parameters = weight_and_bias(node, min_rank=3)
        if isinstance(parameters, Skip):
            return parameters
        weight, bias = parameters
        if bad_group := group_skip(node, weight):
            return bad_group
        return LinearLayer(node, weight, bias, weight.shape[0], 1, weight.ndim)

    def prepare(self, layer: LinearLayer, affine: ScaleShift) -> Writer:
        weight, bias = fold_after(layer.weight, layer.bias, affine, output_axis=0)
        new_weight = cast_like(weight, layer.weight)
        new_bias = cast_like(bias, layer.weight)
        return lambda context: write_weight_and_bias(context, layer.node, new_weight, new_bias)
