"""Affine on the last axis of ``A``, then ``MatMul(A, B)`` with a constant 2-D ``B = [K, N]``:

    B' = B * s along axis 0 (K)        bias' = bias + t B    (t summed through B over K)

The bias is the constant of the ``Add`` that is the MatMul's only reader (tf2onnx's Dense,
PaddleOCR's ``MatMul -> Add``) when there is one, whatever the rank (unknown in exported
recognisers): ``t B`` has the MatMul's last axis, which the Add's output has already;
otherwise a new ``Add(t B)`` follows the MatMul (none when ``t == 0``). That bias ``Add`` may
start another affine chain (a BN after the Dense): the engine reads a chain's constants again
after a fold in the same pass, so the chain folds later with the merged bias.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.affine import ScaleShift, fold_before
from bnfold.foldlog import Reason, Skip
from bnfold.graph import (
    add_initializer,
    constant_array,
    node_label,
    rank_of,
    set_constant_input,
    sole_consumer,
)
from bnfold.rules.base import FoldContext, cast_like, constant_weight, weight_dtype_skip
from bnfold.rules.forward import Apply, ForwardLayer, ForwardTarget


def _bias_add(node: ir.Node, columns: int) -> tuple[ir.Node, int] | None:
    """The ``Add`` by a constant along the last axis that is the MatMul's sole reader, with
    the index of its constant input."""
    add = sole_consumer(node.outputs[0])
    if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    if len(add.inputs) != 2:
        return None
    const_index = 1 if add.inputs[0] is node.outputs[0] else 0
    const = constant_array(add.inputs[const_index])
    if const is None or not np.issubdtype(const.dtype, np.floating):
        return None
    rank = rank_of(node.outputs[0])
    if (rank is not None and const.ndim > rank) or any(size != 1 for size in const.shape[:-1]):
        return None
    if const.ndim and const.shape[-1] not in (1, columns):
        return None
    return add, const_index


def _insert_bias_add(
    context: FoldContext, node: ir.Node, bias: npt.NDArray[np.generic], label: str
) -> None:
    """``MatMul -> Add(bias)``: every reader of the MatMul (and the graph output) moves to the
    Add, which takes the output's name."""
    output = node.outputs[0]
    readers = list(output.uses())
    bias_value = add_initializer(context.graph, context.names, bias, f"{label}_bias_bnfold")
    add = ir.Node("", "Add", [output, bias_value], name=context.names.fresh(f"{label}_bias_add"))
    context.graph.insert_after(node, add)
    added = add.outputs[0]
    added.shape, added.type = output.shape, output.type
    for use in readers:
        use.node.replace_input_with(use.idx, added)
    outputs = context.graph.outputs
    for position, value in enumerate(list(outputs)):
        if value is output:
            outputs[position] = added
    if output.is_graph_output() or added.is_graph_output():
        name = output.name
        output.name = context.names.fresh(f"{name}_matmul")
        added.name = name
    else:
        added.name = context.names.fresh(f"{label}_biased")


class AffineThenMatMul(ForwardTarget):
    op_type = "MatMul"

    def describe(self, node: ir.Node) -> ForwardLayer | Skip:
        weight = constant_weight(node, 1)
        if isinstance(weight, Skip):
            return weight
        if dtype_skip := weight_dtype_skip(weight):
            return dtype_skip
        if weight.ndim != 2:
            return Skip(Reason.UNSUPPORTED_LAYER, f"{node_label(node)}: B is not 2-D")
        return ForwardLayer(node, -1, weight.shape[0])

    def plan(self, context: FoldContext, layer: ForwardLayer, affine: ScaleShift) -> Apply | Skip:
        node = layer.node
        label = node_label(node)
        weight = constant_weight(node, 1)
        assert not isinstance(weight, Skip)
        new_weight, through = fold_before(weight, None, affine, 0, 1)
        weight_cast = cast_like(new_weight, weight)
        if affine.has_zero_shift:
            return lambda: set_constant_input(
                context.graph, node, 1, weight_cast, context.names, f"{label}_bnfold"
            )
        columns = weight.shape[1]
        existing = _bias_add(node, columns)
        if existing is not None:
            add, index = existing
            const = constant_array(add.inputs[index])
            assert const is not None
            merged = cast_like(np.asarray(const, dtype=np.float64) + through, const)

            def apply_with_add() -> None:
                set_constant_input(
                    context.graph, node, 1, weight_cast, context.names, f"{label}_bnfold"
                )
                set_constant_input(
                    context.graph, add, index, merged, context.names, f"{label}_bias_bnfold"
                )

            return apply_with_add
        bias_cast = cast_like(through, weight)

        def apply_new_add() -> None:
            set_constant_input(
                context.graph, node, 1, weight_cast, context.names, f"{label}_bnfold"
            )
            _insert_bias_add(context, node, bias_cast, label)

        return apply_new_add


__all__ = ["AffineThenMatMul"]
