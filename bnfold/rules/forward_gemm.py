"""Affine before a Gemm. ``Y = alpha * A' B' + beta * C``; the affine acts on the K axis of
``A`` (axis 1, or axis 0 when ``transA=1``), ``B`` is ``[K, N]`` (``[N, K]`` when ``transB=1``):

    B' = B * s along K        C' = beta * C + alpha * (t B)        beta' = 1

``t B`` sums ``t`` through ``B`` over K; an absent ``C`` becomes ``alpha * t B`` (none when
``t == 0``). ``alpha`` is untouched.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.affine import ScaleShift, fold_before
from bnfold.foldlog import Reason, Skip
from bnfold.graph import float_attr, int_attr, node_label, set_constant_input
from bnfold.rules.base import (
    FoldContext,
    cast_like,
    weight_and_bias,
    weight_dtype_skip,
)
from bnfold.rules.forward import Apply, ForwardLayer, ForwardTarget


class AffineThenGemm(ForwardTarget):
    op_type = "Gemm"

    def describe(self, node: ir.Node) -> ForwardLayer | Skip:
        parameters = weight_and_bias(node)
        if isinstance(parameters, Skip):
            return parameters
        weight = parameters[0]
        if dtype_skip := weight_dtype_skip(weight):
            return dtype_skip
        if weight.ndim != 2:
            return Skip(Reason.UNSUPPORTED_LAYER, f"{node_label(node)}: B is not 2-D")
        k_axis = 1 if int_attr(node, "transB", 0) else 0
        input_axis = 0 if int_attr(node, "transA", 0) else 1
        return ForwardLayer(node, input_axis, weight.shape[k_axis])

    def plan(self, context: FoldContext, layer: ForwardLayer, affine: ScaleShift) -> Apply | Skip:
        node = layer.node
        parameters = weight_and_bias(node)
        assert not isinstance(parameters, Skip)
        weight, bias = parameters
        k_axis = 1 if int_attr(node, "transB", 0) else 0
        new_weight, through = fold_before(weight, None, affine, k_axis, 1 - k_axis)
        alpha, beta = float_attr(node, "alpha", 1.0), float_attr(node, "beta", 1.0)
        new_bias: np.ndarray | None = None
        if bias is not None:
            # C broadcasts to [M, N]; adding the [N] vector keeps that true.
            new_bias = beta * np.asarray(bias, dtype=np.float64) + alpha * through
        elif not affine.has_zero_shift:
            new_bias = alpha * through
        weight_cast = cast_like(new_weight, weight)
        bias_cast = None if new_bias is None else cast_like(new_bias, weight)
        label = node_label(node)

        def apply() -> None:
            set_constant_input(
                context.graph, node, 1, weight_cast, context.names, f"{label}_B_bnfold"
            )
            if bias_cast is not None:
                set_constant_input(
                    context.graph, node, 2, bias_cast, context.names, f"{label}_C_bnfold"
                )
                node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)

        return apply


__all__ = ["AffineThenGemm"]
