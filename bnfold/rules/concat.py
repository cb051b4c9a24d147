"""Concat of linear layers on the channel axis, then affine: the affine splits per input.

``y = s * concat(z_1, ..., z_n) + t`` along the channel axis is ``concat(s_1*z_1 + t_1, ...)``
with ``s_i, t_i`` the slices of ``s, t`` over input ``i``'s channels (offsets add up the
inputs' channel counts). Each ``z_i = W_i x + b_i`` then takes its part backward:
``W_i' = W_i * s_i`` along its output-channel axis, ``b_i' = s_i*b_i + t_i``.

All or none: every input must reach its own layer (through layout ops and commuting ops, read
by nothing else) and every new array is computed before the first is written; a decline names
the input that blocks. A MatMul input has no bias to take its part of the shift: declined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx_ir as ir

from bnfold.affine import FoldArithmeticError, ScaleShift
from bnfold.foldlog import Outcome, Reason, Skip
from bnfold.graph import int_attr, node_label, rank_of, static_dims
from bnfold.rules.affines import AffineChain
from bnfold.rules.base import (
    BackwardRule,
    FoldContext,
    Folded,
    Writer,
    exclusive_path_skip,
    remove_affine_chain,
    walk_back,
    walk_back_from,
    weight_dtype_skip,
)
from bnfold.rules.commuting import affine_skip, is_commuting
from bnfold.rules.layout import map_channel_axis


@dataclass(frozen=True)
class _Part:
    """One Concat input: its channel offset and count, and the walk back to its layer."""

    index: int
    offset: int
    channels: int
    producer: ir.Node
    layout_nodes: list[ir.Node]


def _input_skip(concat: ir.Node, index: int, skip: Skip) -> Skip:
    value = concat.inputs[index]
    name = value.name if value is not None else "?"
    return Skip(skip.reason, f"{node_label(concat)} input {index} ({name}): {skip.detail}")


def _mapped_axis(nodes: list[ir.Node], axis: int, channels: int) -> int | Skip:
    for node in nodes:
        mapped = map_channel_axis(node, axis, channels)
        if isinstance(mapped, Skip):
            return mapped
        axis = mapped
    return axis


def _conditions_skip(nodes: list[ir.Node], affine: ScaleShift) -> Skip | None:
    """The sign and shift conditions of the commuting ops the affine crosses."""
    for node in nodes:
        if is_commuting(node) and (condition := affine_skip(node, affine)):
            return condition
    return None


class ConcatThenAffine:
    """Backward through a Concat on the channel axis into the layer of every input."""

    def __init__(self, rules: tuple[BackwardRule, ...]) -> None:
        self.rules: Mapping[str, BackwardRule] = {rule.op_type: rule for rule in rules}

    def fold(self, context: FoldContext, chain: AffineChain) -> Folded | Skip | None:
        walked = walk_back(chain)
        if isinstance(walked, Skip):
            return walked
        concat, after = walked
        if concat.op_type != "Concat" or concat.domain not in ("", "ai.onnx"):
            return None
        if path_skip := exclusive_path_skip(chain.ops[0].node, concat, after):
            return path_skip
        rank = rank_of(concat.outputs[0])
        if rank is None:
            return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(concat)}: rank unknown")
        axis = int_attr(concat, "axis", 0) % rank
        parts = self._parts(concat, axis)
        if isinstance(parts, Skip):
            return parts
        total = sum(part.channels for part in parts)
        chain_axis = _mapped_axis(after, axis, total)
        if isinstance(chain_axis, Skip):
            return chain_axis
        resolved = chain.resolve(rank_of(chain.input))
        if isinstance(resolved, Skip):
            return resolved
        affine, affine_axis = resolved
        if affine_axis is not None and affine_axis != chain_axis:
            return Skip(
                Reason.CHANNEL_MISMATCH,
                f"the BN acts on axis {affine_axis}, {node_label(concat)} joins channels on "
                f"axis {chain_axis}",
            )
        if affine.channels not in (1, total):
            return Skip(
                Reason.CHANNEL_MISMATCH,
                f"the BN has {affine.channels} channels, {node_label(concat)} joins {total}",
            )
        if condition := _conditions_skip(after, affine):
            return condition
        writers = self._writers(concat, parts, affine.broadcast_to(total), axis)
        if isinstance(writers, Skip):
            return writers
        for write in writers:  # nothing was written before every part was computed
            write(context)
        remove_affine_chain(context, chain)
        via = [node_label(node) for part in parts for node in part.layout_nodes]
        return Folded(
            Outcome.FOLDED_INTO_PREVIOUS,
            [node_label(part.producer) for part in parts],
            [*via, node_label(concat), *(node_label(node) for node in after)],
        )

    def _parts(self, concat: ir.Node, axis: int) -> list[_Part] | Skip:
        """Each input's channel count and the walk to its layer, or why an input blocks."""
        parts: list[_Part] = []
        offset = 0
        for index, value in enumerate(concat.inputs):
            dims = static_dims(value) if value is not None else None
            if value is None or dims is None or dims[axis] is None:
                skip = Skip(Reason.UNPROVEN_LAYOUT, "its channel count is unknown")
                return _input_skip(concat, index, skip)
            walked = walk_back_from(value)
            if isinstance(walked, Skip):
                return _input_skip(concat, index, walked)
            producer, layout_nodes = walked
            if producer.op_type not in self.rules or producer.domain not in ("", "ai.onnx"):
                skip = Skip(
                    Reason.NO_LINEAR_NEIGHBOUR,
                    f"follows {node_label(producer)}, which no rule can fold into",
                )
                return _input_skip(concat, index, skip)
            if path_skip := exclusive_path_skip(concat, producer, layout_nodes):
                return _input_skip(concat, index, path_skip)
            channels = int(dims[axis])  # type: ignore[arg-type]
            parts.append(_Part(index, offset, channels, producer, layout_nodes))
            offset += channels
        return parts

    def _writers(
        self, concat: ir.Node, parts: list[_Part], affine: ScaleShift, axis: int
    ) -> list[Writer] | Skip:
        """The rewrite of every input's layer, computed (not written) in input order."""
        writers: list[Writer] = []
        for part in parts:
            piece = slice(part.offset, part.offset + part.channels)
            own = ScaleShift(affine.scale[piece], affine.shift[piece])
            answer = self._writer(part, own, axis)
            if isinstance(answer, Skip):
                return _input_skip(concat, part.index, answer)
            writers.append(answer)
        return writers

    def _writer(self, part: _Part, affine: ScaleShift, axis: int) -> Writer | Skip:
        rule = self.rules[part.producer.op_type]
        layer = rule.describe(part.producer)
        if isinstance(layer, Skip):
            return layer
        if dtype_skip := weight_dtype_skip(layer.weight):
            return dtype_skip
        mapped = _mapped_axis(part.layout_nodes, layer.channel_axis, layer.channels)
        if isinstance(mapped, Skip):
            return mapped
        if mapped != axis or layer.channels != part.channels:
            return Skip(
                Reason.CHANNEL_MISMATCH,
                f"{node_label(part.producer)} writes {layer.channels} channels on axis "
                f"{mapped}, the Concat takes {part.channels} on axis {axis}",
            )
        if condition := _conditions_skip(part.layout_nodes, affine):
            return condition
        try:
            writer = rule.prepare(layer, affine)
        except FoldArithmeticError as error:
            return Skip(Reason.DTYPE_RANGE, str(error))
        if writer is None:
            return Skip(
                Reason.UNSUPPORTED_LAYER,
                f"{node_label(part.producer)} has no bias to take its part of the shift",
            )
        return writer


__all__ = ["ConcatThenAffine"]
