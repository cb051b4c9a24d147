"""Follow a channel axis through layout ops (Identity, Transpose, Reshape, Flatten, Squeeze,
Unsqueeze) that sit between a linear layer and a BN.

Transpose moves the axis by its permutation. For the reshaping ops the mapping is proven from
the static shapes on both sides: channel axis ``a`` of size ``C`` lands on output axis ``b`` when
``out[b] == C`` and the dimensions after (or before) it multiply to the same number, so every
element keeps its channel.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from bnfold.foldlog import Reason, Skip
from bnfold.graph import ints_attr, node_label, static_dims
from bnfold.rules.commuting import is_commuting, map_axis


def _product(dims: tuple[int | None, ...]) -> int | None:
    return None if any(dim is None for dim in dims) else math.prod(dims)  # type: ignore[arg-type]


def _reshaped_axis(
    in_dims: tuple[int | None, ...], out_dims: tuple[int | None, ...], axis: int, channels: int
) -> int | None:
    after_in, before_in = _product(in_dims[axis + 1 :]), _product(in_dims[:axis])
    for candidate, size in enumerate(out_dims):
        if size != channels:
            continue
        after_out, before_out = _product(out_dims[candidate + 1 :]), _product(out_dims[:candidate])
        if after_in is not None and after_in == after_out:
            return candidate
        if before_in is not None and before_in == before_out:
            return candidate
    return None


def map_channel_axis(node: ir.Node, axis: int, channels: int) -> int | Skip:
    """The channel axis at ``node``'s output, given it is ``axis`` at its data input."""
    if is_commuting(node):
        return map_axis(node, axis)
    if node.op_type == "Identity":
        return axis
    if node.op_type == "Transpose":
        in_dims = static_dims(node.inputs[0]) if node.inputs[0] is not None else None
        perm = ints_attr(node, "perm")
        if perm is None:
            if in_dims is None:
                return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: rank unknown")
            perm = list(reversed(range(len(in_dims))))
        return perm.index(axis)
    source = node.inputs[0]
    in_dims = static_dims(source) if source is not None else None
    out_dims = static_dims(node.outputs[0])
    if in_dims is None or out_dims is None:
        return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: shapes unknown")
    mapped = _reshaped_axis(in_dims, out_dims, axis, channels)
    if mapped is None:
        return Skip(
            Reason.UNPROVEN_LAYOUT,
            f"{node_label(node)} mixes the channel axis with others ({list(in_dims)} -> "
            f"{list(out_dims)})",
        )
    return mapped
