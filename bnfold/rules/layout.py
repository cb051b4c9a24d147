"""Follow a channel axis through layout ops (Identity, Transpose, Reshape, Flatten, Squeeze,
Unsqueeze) that sit between a linear layer and a BN.

Transpose moves the axis by its permutation. For the reshaping ops the mapping is proven from
the shapes on both sides: channel axis ``a`` of size ``C`` lands on output axis ``b`` when
``out[b] == C`` and the dimensions after (or before) it multiply to the same number, so every
element keeps its channel. Products are compared symbolically: a named dynamic dimension
(``N``) is a factor of its own, so ``[N, C, H, 4] -> [N, C, ?]`` keeps ``C`` on axis 1 (``N``
before it on both sides) whatever ``N`` and ``H`` are; an unnamed one proves nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import onnx_ir as ir

from bnfold.foldlog import Reason, Skip
from bnfold.graph import ints_attr, node_label, rank_of
from bnfold.rules.commuting import is_commuting, map_axis

Dim = int | str | None
_PRODUCT = re.compile(r"\w+(\*\w+)+")
Product = tuple[int, tuple[str, ...]]
"""A product of dimensions: the static factor and the named symbols, sorted."""


def symbolic_dims(value: ir.Value) -> tuple[Dim, ...] | None:
    """The value's dimensions: sizes, names of named dynamic ones, ``None`` for unnamed ones;
    ``None`` when the rank is unknown."""
    if value.shape is None:
        return None
    return tuple(dim if isinstance(dim, int) else dim.value for dim in value.shape)


def _factors(dim: int | str) -> list[int | str]:
    """A dim as factors: symbolic inference writes a product as ``32*H*W``."""
    if isinstance(dim, int) or not _PRODUCT.fullmatch(dim):
        return [dim]
    return [int(part) if part.isdigit() else part for part in dim.split("*")]


def product(dims: Sequence[Dim]) -> Product | None:
    """``dims`` multiplied, ``None`` when one is unnamed."""
    if any(dim is None for dim in dims):
        return None
    factors = [factor for dim in dims if dim is not None for factor in _factors(dim)]
    static = math.prod(factor for factor in factors if isinstance(factor, int))
    return static, tuple(sorted(factor for factor in factors if isinstance(factor, str)))


def _reshaped_axis(
    in_dims: tuple[Dim, ...], out_dims: tuple[Dim, ...], axis: int, channels: int
) -> int | None:
    after_in, before_in = product(in_dims[axis + 1 :]), product(in_dims[:axis])
    for candidate, size in enumerate(out_dims):
        if size != channels:
            continue
        after_out, before_out = product(out_dims[candidate + 1 :]), product(out_dims[:candidate])
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
        rank = rank_of(node.inputs[0]) if node.inputs[0] is not None else None
        perm = ints_attr(node, "perm")
        if perm is None:
            if rank is None:
                return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: rank unknown")
            perm = list(reversed(range(rank)))
        return perm.index(axis)
    source = node.inputs[0]
    in_dims = symbolic_dims(source) if source is not None else None
    out_dims = symbolic_dims(node.outputs[0])
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
