"""Affine before linear layers: fold a BN into EVERY layer that reads it (DESIGN.md section 1).

    y = W (s*x + t) + b   ->   W' = W scaled by s along the INPUT-channel axis,   b' = b + W.t

``W.t`` sums ``W * t`` over the input channels and the kernel positions, so a convolution that
pads its input with zeros is not exact at the borders (the zeros are not shifted by ``t``).

The walk goes FORWARD from the chain's output through layout ops (Identity, Transpose,
Reshape, Flatten, Squeeze, Unsqueeze) to every reader; the fold applies to all readers or to
none. A graph output, or a reader no target can fold, blocks it
(``Reason.CONSUMER_NOT_FOLDABLE``, naming the reader).

Through layout ops, the channel of every element is proven from static shapes: an array holding
each element's BN channel (one sample; a dynamic batch dimension counts as 1) is moved through
the same ops. A reshape may carry a dynamic dimension only as the leading one on both sides with
the other dimensions static and of equal product, which proves every sample keeps its elements.
At the layer, every input feature must belong to one BN channel; ``s`` and ``t`` are then
repeated in that order (each channel H*W times after an NCHW Flatten, tiled after an NHWC one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.affine import FoldArithmeticError, ScaleShift
from bnfold.foldlog import Outcome, Reason, Skip
from bnfold.graph import (
    LAYOUT_OPS,
    SHAPE_ONLY_OPS,
    constant_array,
    int_attr,
    ints_attr,
    node_label,
    rank_of,
    static_dims,
)
from bnfold.rules.affines import AffineChain
from bnfold.rules.base import FoldContext, Folded, remove_affine_chain
from bnfold.rules.commuting import affine_skip, follow_ids, is_commuting
from bnfold.rules.layout import symbolic_dims

Apply = Callable[[], None]
"""Writes a fold whose arrays are already computed; cannot fail."""


@dataclass
class ForwardLayer:
    """A linear node as the forward walk sees it: it contracts ``in_features`` features on
    axis ``input_axis`` of its data input (negative: counted from the end)."""

    node: ir.Node
    input_axis: int
    in_features: int


class ForwardTarget:
    """One kind of layer an affine can be folded into. Subclasses say where the weight is and
    how to rewrite it; ``plan`` computes every new array and returns the writes to do."""

    op_type: str = ""

    def describe(self, node: ir.Node) -> ForwardLayer | Skip:
        raise NotImplementedError

    def plan(self, context: FoldContext, layer: ForwardLayer, affine: ScaleShift) -> Apply | Skip:
        """``affine`` holds one ``(s, t)`` per input feature. May raise FoldArithmeticError."""
        raise NotImplementedError


@dataclass
class Reader:
    """A node that reads the affine's output at input ``index``, through ``layout`` nodes
    (layout ops and ops the affine commutes with); ``ports[i]`` is the (input, output) of
    ``layout[i]`` the path goes through (a Concat's second input, a Split's third output)."""

    node: ir.Node
    index: int
    layout: list[ir.Node] = field(default_factory=list)
    ports: list[tuple[int, int]] = field(default_factory=list)


def _passable(node: ir.Node, index: int) -> bool | None:
    """Whether the walk goes through ``node`` entering at input ``index``; ``None`` when the
    node is passable but not through that input (a Resize reading the BN as its scales)."""
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in LAYOUT_OPS or is_commuting(node):
        return index == 0 or node.op_type == "Concat" or None
    return False


def walk_forward(value: ir.Value) -> tuple[list[Reader], list[str]]:
    """Every non-layout reader of ``value``, looking through layout ops, and what blocks a fold
    (graph outputs, a layout op reading it other than as its data). Shape and Size readers
    are left out: the fold does not change the shape they read."""
    readers: list[Reader] = []
    blockers: list[str] = []
    pending: list[tuple[ir.Value, Reader]] = [(value, Reader(value.producer(), -1))]  # type: ignore[arg-type]
    while pending:
        current, path = pending.pop()
        if current.is_graph_output():
            blockers.append(f"{current.name} is a graph output")
        for use in sorted(current.uses(), key=lambda use: (node_label(use.node), use.idx)):
            node = use.node
            if node.op_type in SHAPE_ONLY_OPS and node.domain in ("", "ai.onnx"):
                continue
            passable = _passable(node, use.idx)
            if passable is None:
                blockers.append(f"{node_label(node)} reads it as input {use.idx}")
            elif passable:
                # Every output that carries data carries the affine (Split: each part).
                data_outputs = range(len(node.outputs)) if node.op_type == "Split" else [0]
                for exit_ in data_outputs:
                    step = Reader(node, -1, [*path.layout, node], [*path.ports, (use.idx, exit_)])
                    pending.append((node.outputs[exit_], step))
            else:
                readers.append(Reader(node, use.idx, path.layout, path.ports))
    return readers, blockers


# --------------------------------------------------------------------------- layout proof


@dataclass
class ChannelMap:
    """The BN channel of every element of one sample; dynamic dimensions have size 1."""

    ids: npt.NDArray[np.int64]
    dynamic: tuple[bool, ...]


def _unproven(node: ir.Node, why: str) -> Skip:
    return Skip(Reason.UNPROVEN_LAYOUT, f"{node_label(node)}: {why}")


def _product(dims: Sequence[int | None]) -> int | None:
    """The product of the dimensions, ``None`` when one is dynamic."""
    known = [dim for dim in dims if dim is not None]
    return math.prod(known) if len(known) == len(dims) else None


def _output_dims(node: ir.Node, in_dims: tuple[int | None, ...]) -> tuple[int | None, ...] | None:
    """The output dimensions from shape inference, else computed for Flatten and for a Reshape
    by a constant shape; one unknown dimension is resolved when the input is fully static."""
    dims = static_dims(node.outputs[0])
    if dims is None and node.op_type == "Flatten":
        axis = int_attr(node, "axis", 1)
        axis = axis + len(in_dims) if axis < 0 else axis
        dims = (_product(in_dims[:axis]), _product(in_dims[axis:]))
    elif dims is None and node.op_type == "Reshape" and len(node.inputs) > 1:
        shape = constant_array(node.inputs[1])
        if shape is None or int_attr(node, "allowzero", 0):
            return None
        dims = tuple(
            None if size == -1 else (in_dims[i] if size == 0 else int(size))
            for i, size in enumerate(shape.reshape(-1).tolist())
        )
    if dims is None:
        return None
    if None not in in_dims and dims.count(None) == 1:
        known = math.prod(d for d in dims if d is not None)
        total = _product(in_dims)
        if total is not None and known and total % known == 0:
            dims = tuple(total // known if d is None else d for d in dims)
    return dims


def _reshape(node: ir.Node, channel_map: ChannelMap) -> ChannelMap | Skip:
    """Reshape, Flatten, Squeeze, Unsqueeze: element order is kept, so the map is reshaped.

    With a dynamic dimension on either side, only ``[batch, static...] -> [batch, static...]``
    with equal static products is proven: the output's leading dimension is then the batch.
    """
    in_dims = tuple(
        None if dyn else size
        for size, dyn in zip(channel_map.ids.shape, channel_map.dynamic, strict=True)
    )
    out_dims = _output_dims(node, in_dims)
    if out_dims is None:
        return _unproven(node, "output shape unknown")
    out_dynamic = tuple(d is None for d in out_dims)
    total_out = _product(out_dims)
    if _product(in_dims) is not None and total_out is not None:
        if total_out != channel_map.ids.size:
            return _unproven(node, f"{list(in_dims)} -> {list(out_dims)} changes the size")
        static_out = tuple(d for d in out_dims if d is not None)
        return ChannelMap(channel_map.ids.reshape(static_out), out_dynamic)
    rest_in = _product(in_dims[1:]) if in_dims and in_dims[0] is None else None
    rest_out = _product(out_dims[1:]) if out_dims and out_dims[0] is None else None
    if rest_in is not None and rest_in == rest_out:
        static_rest = tuple(d for d in out_dims[1:] if d is not None)
        return ChannelMap(channel_map.ids.reshape((1, *static_rest)), out_dynamic)
    kept = _kept_prefix(node, channel_map, out_dims)
    if kept is not None:
        return kept
    return _unproven(
        node,
        f"cannot prove each sample keeps its elements ({list(in_dims)} -> {list(out_dims)})",
    )


def _kept_prefix(
    node: ir.Node, channel_map: ChannelMap, out_dims: tuple[int | None, ...]
) -> ChannelMap | None:
    """A reshape that keeps its leading dimensions, the same size or the same named symbol on
    both sides (``[N, C, H, 4] -> [N, C, ?]``), and regroups only the rest, over which every
    element holds the same channel: each element keeps its channel, whatever ``N`` and ``H``."""
    source = node.inputs[0]
    in_symbols = symbolic_dims(source) if source is not None else None
    out_symbols = symbolic_dims(node.outputs[0])
    if in_symbols is None or len(in_symbols) != channel_map.ids.ndim:
        return None
    if out_symbols is None or len(out_symbols) != len(out_dims):
        out_symbols = out_dims
    kept = 0
    for before, after in zip(in_symbols, out_symbols, strict=False):
        if before is None or before != after:
            break
        kept += 1
    head = channel_map.ids.shape[:kept]
    rest = channel_map.ids.reshape((*head, -1))
    if kept == 0 or not np.all(rest == rest[..., :1]):
        return None
    tail_dynamic = tuple(size is None for size in out_dims[kept:])
    tail = tuple(1 if size is None else size for size in out_dims[kept:])
    ids = rest[..., :1].reshape((*head, *(1,) * len(tail)))
    return ChannelMap(
        np.broadcast_to(ids, (*head, *tail)).copy(), channel_map.dynamic[:kept] + tail_dynamic
    )


def follow_layout(
    node: ir.Node, channel_map: ChannelMap, port: tuple[int, int] = (0, 0)
) -> ChannelMap | Skip:
    """The channel map at ``node``'s output ``port[1]``, given it at its input ``port[0]``."""
    if is_commuting(node):
        followed = follow_ids(node, (channel_map.ids, channel_map.dynamic), *port)
        return followed if isinstance(followed, Skip) else ChannelMap(*followed)
    if node.op_type == "Identity":
        return channel_map
    if node.op_type == "Transpose":
        perm = ints_attr(node, "perm") or list(reversed(range(channel_map.ids.ndim)))
        if sorted(perm) != list(range(channel_map.ids.ndim)):
            return _unproven(node, f"perm {perm} does not match rank {channel_map.ids.ndim}")
        dynamic = tuple(channel_map.dynamic[axis] for axis in perm)
        return ChannelMap(channel_map.ids.transpose(perm), dynamic)
    return _reshape(node, channel_map)


def initial_channel_map(chain: AffineChain, axis: int | None, channels: int) -> ChannelMap | Skip:
    """Each element's BN channel at the chain's output; a scalar chain (``axis`` None) is
    channel 0 everywhere."""
    dims = static_dims(chain.output) or static_dims(chain.input)
    if dims is None:
        return Skip(Reason.UNPROVEN_LAYOUT, f"the shape of {chain.output.name} is unknown")
    if axis is None:
        shape = tuple(1 if size is None else size for size in dims)
        return ChannelMap(np.zeros(shape, np.int64), tuple(size is None for size in dims))
    if axis >= len(dims) or dims[axis] != channels:
        return Skip(
            Reason.UNPROVEN_LAYOUT,
            f"axis {axis} of {chain.output.name} {list(dims)} is not {channels} channels",
        )
    shape = tuple(1 if size is None else size for size in dims)
    channel_index = np.arange(channels, dtype=np.int64).reshape(
        [channels if a == axis else 1 for a in range(len(dims))]
    )
    ids = np.broadcast_to(channel_index, shape).copy()
    return ChannelMap(ids, tuple(size is None for size in dims))


def features_to_channels(
    channel_map: ChannelMap, axis: int, features: int, layer: ir.Node
) -> npt.NDArray[np.int64] | Skip:
    """The BN channel of each of the layer's input features; every feature must hold one."""
    if not -channel_map.ids.ndim <= axis < channel_map.ids.ndim:
        return _unproven(layer, f"axis {axis} is outside rank {channel_map.ids.ndim}")
    if channel_map.dynamic[axis] or channel_map.ids.shape[axis] != features:
        return _unproven(layer, f"the input axis {axis} does not hold {features} static features")
    table = np.moveaxis(channel_map.ids, axis, 0).reshape(features, -1)
    if not np.all(table == table[:, :1]):
        return _unproven(layer, "an input feature mixes elements of several BN channels")
    return table[:, 0]


# --------------------------------------------------------------------------- the rule


def _broadcast_skip(chain: AffineChain) -> Skip | None:
    """An affine whose constants broadcast its input to a larger shape (``[N, 1, H, W]`` times
    ``[C, 1, 1]``) cannot be removed: its readers would see the smaller input."""
    in_dims, out_dims = static_dims(chain.input), static_dims(chain.output)
    if in_dims is None or out_dims is None:
        return None
    if len(in_dims) != len(out_dims) or any(
        a is not None and b is not None and a != b for a, b in zip(in_dims, out_dims, strict=False)
    ):
        return Skip(
            Reason.CHANNEL_MISMATCH,
            f"the affine broadcasts {list(in_dims)} to {list(out_dims)}",
        )
    return None


class AffineThenLinear:
    """Fold an affine chain forward into every linear layer that reads it (see module doc).

    Declines with ``None`` when no reader is a layer any target folds into (the engine then
    reports ``NO_LINEAR_NEIGHBOUR``), and for a lone ``Add``/``Sub`` after a MatMul: that is
    the layer's bias, not a BN.
    """

    def __init__(self, targets: Sequence[ForwardTarget]) -> None:
        self.targets = {target.op_type: target for target in targets}

    def _target(self, node: ir.Node) -> ForwardTarget | None:
        if node.domain not in ("", "ai.onnx"):
            return None
        return self.targets.get(node.op_type)

    def fold(self, context: FoldContext, chain: AffineChain) -> Folded | Skip | None:
        if not chain.has_scale and len(chain.ops) == 1:
            producer = chain.input.producer()
            if producer is not None and producer.op_type == "MatMul":
                return None
        readers, blockers = walk_forward(chain.output)
        if not any(self._target(reader.node) is not None for reader in readers):
            return None
        blockers += [
            f"{node_label(reader.node)} ({reader.node.op_type}) also reads it"
            for reader in readers
            if self._target(reader.node) is None
        ]
        blockers += [
            f"{node_label(node)} reads it inside a subgraph"
            for reader in readers
            for node in [*reader.layout, reader.node]
            if node.graph is not context.graph
        ]
        if blockers:
            return Skip(Reason.CONSUMER_NOT_FOLDABLE, "; ".join(blockers))
        if len({id(reader.node) for reader in readers}) != len(readers):
            return Skip(Reason.CONSUMER_NOT_FOLDABLE, "a layer reads the BN output twice")
        if broadcast := _broadcast_skip(chain):
            return broadcast
        resolved = chain.resolve(rank_of(chain.input) or rank_of(chain.output))
        if isinstance(resolved, Skip):
            return resolved
        affine, chain_axis = resolved
        applies: list[Apply] = []
        for reader in readers:
            answer = self._plan_reader(context, chain, reader, affine, chain_axis)
            if isinstance(answer, Skip):
                return answer
            applies.append(answer)
        for apply in applies:
            apply()
        remove_affine_chain(context, chain)
        layout = {id(node): node for reader in readers for node in reader.layout}
        return Folded(
            Outcome.FOLDED_INTO_NEXT,
            [node_label(reader.node) for reader in readers],
            [node_label(node) for node in layout.values()],
        )

    def _plan_reader(
        self,
        context: FoldContext,
        chain: AffineChain,
        reader: Reader,
        affine: ScaleShift,
        chain_axis: int | None,
    ) -> Apply | Skip:
        target = self._target(reader.node)
        assert target is not None
        label = node_label(reader.node)
        if reader.index != 0:
            return Skip(
                Reason.CONSUMER_NOT_FOLDABLE, f"{label} reads it as input {reader.index}, not data"
            )
        layer = target.describe(reader.node)
        if isinstance(layer, Skip):
            return layer
        for node in reader.layout:
            if is_commuting(node) and (condition := affine_skip(node, affine)):
                return condition
        per_feature = self._per_feature(chain, reader, layer, affine, chain_axis)
        if isinstance(per_feature, Skip):
            return per_feature
        try:
            return target.plan(context, layer, per_feature)
        except FoldArithmeticError as error:
            return Skip(Reason.DTYPE_RANGE, f"{label}: {error}")

    @staticmethod
    def _per_feature(
        chain: AffineChain,
        reader: Reader,
        layer: ForwardLayer,
        affine: ScaleShift,
        chain_axis: int | None,
    ) -> ScaleShift | Skip:
        """``(s, t)`` for each of the layer's input features."""
        features = layer.in_features
        label = node_label(layer.node)
        concat = any(node.op_type == "Concat" for node in reader.layout)
        if chain_axis is None and not concat:  # a scalar commutes with every layout op
            if affine.channels != 1:
                return Skip(Reason.CHANNEL_MISMATCH, "a per-channel affine without a known axis")
            return affine.broadcast_to(features)
        channels = affine.channels
        if not reader.layout and chain_axis is not None:
            rank = rank_of(chain.output) or rank_of(chain.input)
            layer_axis = layer.input_axis
            if layer_axis < 0 and rank is not None:
                layer_axis += rank
            if (layer_axis < 0) != (chain_axis < 0):  # rank unknown: both must count from the end
                return Skip(Reason.UNPROVEN_LAYOUT, f"{label}: the rank of its input is unknown")
            if layer_axis != chain_axis:
                return Skip(
                    Reason.CHANNEL_MISMATCH,
                    f"the BN acts on axis {chain_axis}, {label} reads features on axis {layer_axis}",
                )
            if channels not in (1, features):
                return Skip(
                    Reason.CHANNEL_MISMATCH,
                    f"the BN has {channels} channels, {label} reads {features}",
                )
            return affine.broadcast_to(features)
        channel_map = initial_channel_map(chain, chain_axis, channels)
        for node, port in zip(reader.layout, reader.ports, strict=True):
            if isinstance(channel_map, Skip):
                break
            channel_map = follow_layout(node, channel_map, port)
        if isinstance(channel_map, Skip):
            return channel_map
        channel_of_feature = features_to_channels(
            channel_map, layer.input_axis, features, layer.node
        )
        if isinstance(channel_of_feature, Skip):
            return channel_of_feature
        full = affine.broadcast_to(channels)
        # Channel -1 (another input of a Concat) takes the identity appended at the end.
        scale, shift = np.append(full.scale, 1.0), np.append(full.shift, 0.0)
        return ScaleShift(scale[channel_of_feature], shift[channel_of_feature])


__all__ = [
    "AffineThenLinear",
    "Apply",
    "ChannelMap",
    "ForwardLayer",
    "ForwardTarget",
    "Reader",
    "follow_layout",
    "walk_forward",
]
