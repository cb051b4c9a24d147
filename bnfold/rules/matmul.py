"""MatMul by a constant 2-D ``B = [K, N]``, then affine on the last axis:

    B' = B * s along axis 1      the chain becomes one ``Add(t)`` (none when ``t == 0``)

The usual ``MatMul -> Add(bias)`` is part of the chain, so ``t`` already holds ``s*b + t``.
A chain of a single ``Add`` is the canonical bias and is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.affine import ScaleShift, along_axis
from bnfold.foldlog import Reason, Skip
from bnfold.graph import add_initializer, node_label, rank_of, set_constant_input
from bnfold.rules.affines import AffineChain
from bnfold.rules.base import (
    BackwardRule,
    FoldContext,
    LinearLayer,
    cast_like,
    constant_weight,
)


class MatMulThenAffine(BackwardRule):
    op_type = "MatMul"

    def applies_to(self, chain: AffineChain) -> bool:
        return chain.has_scale or len(chain.ops) > 1

    def describe(self, node: ir.Node) -> LinearLayer | Skip:
        weight = constant_weight(node, 1)
        if isinstance(weight, Skip):
            return weight
        if weight.ndim != 2:
            return Skip(Reason.UNSUPPORTED_LAYER, f"{node_label(node)}: weight is not 2-D")
        data = node.inputs[0]
        rank = rank_of(node.outputs[0]) or (rank_of(data) if data is not None else None)
        if rank is None:  # the channels are last whatever the rank: axis -1
            return LinearLayer(node, weight, None, weight.shape[1], -1, None)
        if rank < 2:
            return Skip(Reason.UNSUPPORTED_LAYER, f"{node_label(node)}: 1-D input")
        return LinearLayer(node, weight, None, weight.shape[1], rank - 1, rank)

    def rewrite(
        self, context: FoldContext, layer: LinearLayer, affine: ScaleShift, chain: AffineChain
    ) -> None:
        weight = np.asarray(layer.weight, dtype=np.float64)
        new_weight = cast_like(weight * along_axis(affine.scale, 1, 2), layer.weight)
        chain_rank = rank_of(chain.input) or layer.rank
        # The shift goes back where the chain was, shaped along the chain's channel axis.
        resolved = chain.resolve(chain_rank)
        assert not isinstance(resolved, Skip)
        if resolved[1] is None:
            # Scalars only: the shift is one number. Layout ops may have moved the channels
            # off the last axis (a Reshape to [..., N, 1]), so it must not be shaped [N].
            shift = cast_like(affine.shift[:1], layer.weight)
        else:
            # e.g. [C, 1, 1] for axis 1 of a rank-4 tensor.
            axis = resolved[1]
            from_end = -axis if axis < 0 or chain_rank is None else chain_rank - axis
            shift = cast_like(along_axis(affine.shift, 0, from_end), layer.weight)
        label = node_label(layer.node)
        set_constant_input(
            context.graph, layer.node, 1, new_weight, context.names, f"{label}_bnfold"
        )
        if np.all(affine.shift == 0.0):
            return
        last = chain.ops[-1].node
        bias = add_initializer(context.graph, context.names, shift, f"{label}_bias_bnfold")
        add = ir.Node("", "Add", [chain.input, bias], name=context.names.fresh(f"{label}_bias_add"))
        context.graph.insert_after(last, add)
        # Readers of the chain now read the Add; remove_affine_chain then drops the chain.
        output = chain.output
        output.replace_all_uses_with(add.outputs[0], replace_graph_outputs=True)
        name, output.name = output.name, None
        add.outputs[0].name = name
        add.outputs[0].shape = output.shape
        add.outputs[0].type = output.type
