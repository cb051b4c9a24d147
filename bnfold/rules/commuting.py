"""Ops a per-channel affine ``y = s*x + t`` travels through, one small description each.

An op ``f`` commutes with the affine when ``f(s*x + t) = s*f(x) + t`` for the BN's channels.
That holds when every output element is built from input elements of ONE channel by an
operation that commutes with ``s*x + t``:

- selection (MaxPool and ReduceMax pick one element, Slice/Split/Gather/Resize-nearest copy
  one, Dropout and Identity at inference copy all): exact for any ``s, t``, except that a
  maximum stays the maximum only under an increasing map, so MaxPool, GlobalMaxPool and
  ReduceMax need every ``s > 0`` (else ``negative_scale``);
- an average with weights that sum to 1 (AveragePool, GlobalAveragePool, ReduceMean,
  Resize linear and cubic): ``sum w_i (s*x_i + t) = s * sum w_i x_i + t``. Resize's cubic
  (Keys) weights and its antialias filter are normalised to sum to 1 as well, and borders
  clamp indices rather than read zeros, so cubic commutes too. AveragePool with
  ``count_include_pad=1`` and real padding divides by a count that includes padding zeros
  (which ``t`` never reached): exact only when ``t == 0`` (else ``padding``), as is
  ``ceil_mode=1``, whose last windows may hang past the end. Resize in
  ``tf_crop_and_resize`` mode writes ``extrapolation_value`` outside the crop, which no
  affine touches: refused (``not_commuting``).

The channel axis must be one the op keeps element for element (``mixed`` axes are those it
pools, reduces, resizes, slices or gathers along); the fold proves that from the channel map
(forward) or the channel axis (backward). Forward, Concat passes the affine on its own input
and identity on the others; Split passes it to every output. Backward, Concat splits the
affine over its inputs (bnfold/rules/concat.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.affine import ScaleShift
from bnfold.foldlog import Reason, Skip
from bnfold.graph import constant_array, int_attr, ints_attr, node_label, static_dims, string_attr

IdMap = tuple[npt.NDArray[np.int64], tuple[bool, ...]]
"""The BN channel of each element of one sample (``-1``: not from the BN) and which axes are
dynamic (size 1 in the array)."""


@dataclass(frozen=True)
class Passage:
    """How the affine crosses one op at input rank ``rank``.

    ``mixed``: axes along which an output element reads several input elements or other
    positions; ``dropped``: axes the output no longer has; ``positive_scale``: exact only when
    every scale is > 0; ``zero_shift``: why it is exact only when every shift is 0.
    """

    mixed: frozenset[int]
    dropped: tuple[int, ...] = ()
    positive_scale: bool = False
    zero_shift: str | None = None


def _not_commuting(node: ir.Node, why: str) -> Skip:
    return Skip(Reason.NOT_COMMUTING, f"{node_label(node)}: {why}")


def _spatial(rank: int) -> frozenset[int]:
    return frozenset(range(2, rank))


def _pool(node: ir.Node, rank: int) -> Passage | Skip:
    is_max = "Max" in node.op_type
    if is_max and any(list(out.uses()) or out.is_graph_output() for out in node.outputs[1:]):
        return _not_commuting(node, "its Indices output is read")
    zero_shift = None
    if node.op_type == "AveragePool" and int_attr(node, "count_include_pad", 0):
        auto_pad = string_attr(node, "auto_pad", "NOTSET")
        pads = ints_attr(node, "pads") or []
        if auto_pad in ("SAME_UPPER", "SAME_LOWER") or any(pads):
            zero_shift = f"count_include_pad=1 averages padding zeros ({auto_pad}, pads={pads})"
        elif int_attr(node, "ceil_mode", 0):
            zero_shift = "count_include_pad=1 with ceil_mode=1 may average past the end"
    return Passage(_spatial(rank), positive_scale=is_max, zero_shift=zero_shift)


def _reduce(node: ir.Node, rank: int) -> Passage | Skip:
    axes = ints_attr(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        constant = constant_array(node.inputs[1])
        if constant is None:
            return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: axes not constant")
        axes = [int(axis) for axis in constant.reshape(-1)]
    if not axes:
        if int_attr(node, "noop_with_empty_axes", 0):
            return Passage(frozenset())
        axes = list(range(rank))
    reduced = frozenset(axis % rank for axis in axes)
    dropped = () if int_attr(node, "keepdims", 1) else tuple(sorted(reduced))
    return Passage(reduced, dropped, positive_scale=node.op_type == "ReduceMax")


def _resize(node: ir.Node, rank: int) -> Passage | Skip:
    mode = string_attr(node, "mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        return _not_commuting(node, f"mode {mode}")
    if string_attr(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        return _not_commuting(node, "tf_crop_and_resize writes extrapolation_value")
    # An axis kept at its size is resized by 1, which reads each element at its own place.
    in_dims = static_dims(node.inputs[0]) if node.inputs[0] is not None else None
    out_dims = static_dims(node.outputs[0])
    if in_dims is None or out_dims is None or len(in_dims) != rank:
        return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: shapes unknown")
    kept = {a for a in range(rank) if in_dims[a] is not None and in_dims[a] == out_dims[a]}
    return Passage(frozenset(range(rank)) - kept)


def _slice(node: ir.Node, rank: int) -> Passage | Skip:
    if len(node.inputs) < 2:  # opset < 10: attributes
        axes = ints_attr(node, "axes") or list(range(len(ints_attr(node, "starts") or [])))
        return Passage(frozenset(axis % rank for axis in axes))
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        constant = constant_array(node.inputs[3])
        if constant is None:
            return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: axes not constant")
        return Passage(frozenset(int(axis) % rank for axis in constant.reshape(-1)))
    starts = node.inputs[1].shape if node.inputs[1] is not None else None
    if starts is None or starts.rank() != 1 or not isinstance(starts[0], int):
        return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: axes unknown")
    return Passage(frozenset(range(starts[0])))


def _split(node: ir.Node, rank: int) -> Passage | Skip:
    return Passage(frozenset({int_attr(node, "axis", 0) % rank}))


def _gather(node: ir.Node, rank: int) -> Passage | Skip:
    axis = int_attr(node, "axis", 0) % rank
    indices = node.inputs[1] if len(node.inputs) > 1 else None
    indices_rank = (
        indices.shape.rank() if indices is not None and indices.shape is not None else None
    )
    if indices_rank is None and (constant := constant_array(indices)) is not None:
        indices_rank = constant.ndim
    if indices_rank == 1:
        return Passage(frozenset({axis}))
    if indices_rank == 0:
        return Passage(frozenset({axis}), (axis,))
    return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: indices of rank {indices_rank}")


def _dropout(node: ir.Node, rank: int) -> Passage | Skip:
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is not None:
        flag = constant_array(training)
        if flag is None or bool(np.any(flag)):
            return _not_commuting(node, "training_mode may be true")
    return Passage(frozenset())


def _concat(node: ir.Node, rank: int) -> Passage | Skip:
    return Passage(frozenset({int_attr(node, "axis", 0) % rank}))


COMMUTING: dict[str, Callable[[ir.Node, int], Passage | Skip]] = {
    "MaxPool": _pool,
    "GlobalMaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _pool,
    "ReduceMax": _reduce,
    "ReduceMean": _reduce,
    "Resize": _resize,
    "Slice": _slice,
    "Split": _split,
    "Gather": _gather,
    "Dropout": _dropout,
    "Concat": _concat,
}

# Backward, the walk climbs from the BN to ONE layer: Concat (several inputs, each with its
# own layer: rules/concat.py) ends the walk, and Split (several outputs, which would all
# change) is forward only.
BACKWARD_COMMUTING = frozenset(COMMUTING) - {"Concat", "Split"}


def is_commuting(node: ir.Node, *, backward: bool = False) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    return node.op_type in (BACKWARD_COMMUTING if backward else COMMUTING)


def passage(node: ir.Node, rank: int | None) -> Passage | Skip:
    """The description of ``node`` at data-input rank ``rank``."""
    if rank is None:
        return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: rank unknown")
    return COMMUTING[node.op_type](node, rank)


def _data_rank(node: ir.Node) -> int | None:
    data = node.inputs[0] if node.inputs else None
    return None if data is None or data.shape is None else data.shape.rank()


def map_axis(node: ir.Node, axis: int) -> int | Skip:
    """Backward: the channel axis at ``node``'s output, given it at its data input."""
    described = passage(node, _data_rank(node))
    if isinstance(described, Skip):
        return described
    if axis in described.mixed:
        return _not_commuting(node, f"it works along the channel axis {axis}")
    return axis - sum(dropped < axis for dropped in described.dropped)


def affine_skip(node: ir.Node, affine: ScaleShift) -> Skip | None:
    """Why ``affine`` cannot cross ``node`` (its sign or shift condition), if it cannot."""
    described = passage(node, _data_rank(node) or 4)  # the conditions do not depend on rank
    if isinstance(described, Skip):
        return described
    if described.positive_scale and not np.all(affine.scale > 0.0):
        return Skip(
            Reason.NEGATIVE_SCALE,
            f"{node_label(node)} keeps the maximum, which a scale <= 0 "
            f"(min {float(affine.scale.min()):.3g}) turns into the minimum",
        )
    if described.zero_shift and not affine.has_zero_shift:
        return Skip(Reason.PADDING, f"{node_label(node)}: {described.zero_shift}")
    return None


def _other_input_ids(node: ir.Node, index: int, ndim: int) -> npt.NDArray[np.int64] | Skip:
    value = node.inputs[index]
    dims = static_dims(value) if value is not None else None
    if dims is None or len(dims) != ndim:
        return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: input {index} shape unknown")
    return np.full(tuple(1 if d is None else d for d in dims), -1, dtype=np.int64)


def _concat_ids(node: ir.Node, ids: npt.NDArray[np.int64], entry: int, axis: int) -> IdMap | Skip:
    """The BN's channels on input ``entry``, ``-1`` (identity) on the others."""
    pieces = []
    for index in range(len(node.inputs)):
        piece = ids if index == entry else _other_input_ids(node, index, ids.ndim)
        if isinstance(piece, Skip):
            return piece
        pieces.append(piece)
    try:
        joined = np.concatenate(pieces, axis=axis)
    except ValueError:
        return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: inputs of unequal shapes")
    dims = static_dims(node.outputs[0])
    dynamic = tuple(d is None for d in dims) if dims else (False,) * joined.ndim
    return joined, dynamic


def follow_ids(node: ir.Node, id_map: IdMap, entry: int, exit_: int) -> IdMap | Skip:
    """Forward: the channel map at output ``exit_`` of ``node``, given it at input ``entry``.

    Along a mixed axis every element must hold the same channel, so the op never combines two
    channels; the map then keeps one slice there, broadcast to the output's size."""
    ids, dynamic = id_map
    described = passage(node, ids.ndim)
    if isinstance(described, Skip):
        return described
    if node.op_type == "Concat":  # places elements side by side: any axis, channels included
        return _concat_ids(node, ids, entry, next(iter(described.mixed)))
    for axis in described.mixed:
        if not np.all(ids == ids.take([0], axis=axis)):
            return _not_commuting(node, f"it works along axis {axis}, which holds BN channels")
    out_dims = static_dims(node.outputs[exit_])
    kept = [a for a in range(ids.ndim) if a not in described.dropped]
    if out_dims is None or len(out_dims) != len(kept):
        return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: output shape unknown")
    for out_axis, axis in enumerate(kept):
        same = out_dims[out_axis] == (None if dynamic[axis] else ids.shape[axis])
        if axis not in described.mixed and not same:
            return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: axis {axis} changes size")
    sliced = ids
    for axis in described.mixed:
        sliced = sliced.take([0], axis=axis)
    sliced = sliced.reshape([sliced.shape[a] for a in kept])
    shape = tuple(1 if d is None else d for d in out_dims)
    return np.broadcast_to(sliced, shape).copy(), tuple(d is None for d in out_dims)


__all__ = [
    "COMMUTING",
    "IdMap",
    "Passage",
    "affine_skip",
    "follow_ids",
    "is_commuting",
    "map_axis",
    "passage",
]
