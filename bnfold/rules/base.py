"""What every fold rule shares: the context it works in, its answer, and the backward walk.

A rule answers ``Folded`` (it rewrote the graph), ``Skip`` (it matched but declined, with a
reason) or ``None`` (the pattern is not its business). Rules compute every new array before
they touch the graph, so a declined fold leaves the graph as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.affine import FoldArithmeticError, ScaleShift, cast_checked
from bnfold.foldlog import Outcome, Reason, Skip
from bnfold.graph import (
    LAYOUT_OPS,
    NameFactory,
    bypass,
    constant_array,
    int_attr,
    node_label,
    rank_of,
    remove_nodes,
    set_constant_input,
    sole_consumer,
)
from bnfold.rules.affines import AffineChain
from bnfold.rules.commuting import affine_skip, is_commuting
from bnfold.rules.layout import map_channel_axis


@dataclass
class FoldContext:
    graph: ir.Graph
    names: NameFactory


@dataclass(frozen=True)
class Folded:
    outcome: Outcome
    target: list[str]
    via: list[str] = field(default_factory=list)


Writer = Callable[[FoldContext], None]
"""Writes arrays already computed into the graph: cannot fail, so several can be applied
together once every one of them has been computed (all or none)."""


class Rule(Protocol):
    def fold(self, context: FoldContext, chain: AffineChain) -> Folded | Skip | None: ...


@dataclass
class LinearLayer:
    """A linear node as the backward walk sees it: its output has ``channels`` channels on
    axis ``channel_axis`` of a rank-``rank`` tensor."""

    node: ir.Node
    weight: npt.NDArray[np.generic]
    bias: npt.NDArray[np.generic] | None
    channels: int
    channel_axis: int
    rank: int | None


def weight_dtype_skip(weight: npt.NDArray[np.generic]) -> Skip | None:
    if weight.dtype.kind == "f" or weight.dtype.name == "bfloat16":
        return None
    return Skip(Reason.UNSUPPORTED_DTYPE, f"weights are {weight.dtype.name}, not floating point")


def group_skip(node: ir.Node, weight: npt.NDArray[np.generic]) -> Skip | None:
    """A Conv ``[out, in/g, k...]`` or ConvTranspose ``[in, out/g, k...]`` whose ``group``
    does not divide axis 0 of its weight: invalid, and the grouped arithmetic cannot split it."""
    group = int_attr(node, "group", 1)
    if group >= 1 and weight.shape[0] % group == 0:
        return None
    return Skip(
        Reason.INVALID_PARAMS,
        f"{node_label(node)}: group {group} does not divide the weight's {weight.shape[0]} "
        "channels on axis 0",
    )


def cast_like(
    array: npt.NDArray[np.float64], like: npt.NDArray[np.generic]
) -> npt.NDArray[np.generic]:
    return cast_checked(array, like.dtype)


class BackwardRule:
    """Fold an affine into the linear layer before it: ``W'`` scaled along the OUTPUT-channel
    axis, ``b' = s*b + t``. Subclasses say which op, where its weight and bias live and how
    to rewrite them; the walk through layout ops and the safety checks live here."""

    op_type: str = ""

    def describe(self, node: ir.Node) -> LinearLayer | Skip:
        raise NotImplementedError

    def prepare(self, layer: LinearLayer, affine: ScaleShift) -> Writer | None:
        """Compute the new weights now (may raise FoldArithmeticError) and return what writes
        them; ``None`` for a layer that needs the chain's place to write (MatMul's shift
        ``Add``), which therefore cannot take one part of a split affine."""
        return None

    def rewrite(
        self, context: FoldContext, layer: LinearLayer, affine: ScaleShift, chain: AffineChain
    ) -> None:
        """Compute the new weights (may raise FoldArithmeticError), then write them."""
        writer = self.prepare(layer, affine)
        if writer is None:
            raise NotImplementedError(f"{type(self).__name__} writes neither prepare nor rewrite")
        writer(context)

    def fold(self, context: FoldContext, chain: AffineChain) -> Folded | Skip | None:
        walked = walk_back(chain)
        if isinstance(walked, Skip):
            return walked
        producer, layout_nodes = walked
        if producer.op_type != self.op_type or producer.domain not in ("", "ai.onnx"):
            return None
        if not self.applies_to(chain):
            return None
        if path_skip := exclusive_path_skip(chain.ops[0].node, producer, layout_nodes):
            return path_skip
        layer = self.describe(producer)
        if isinstance(layer, Skip):
            return layer
        if dtype_skip := weight_dtype_skip(layer.weight):
            return dtype_skip
        axis = layer.channel_axis
        for layout_node in layout_nodes:
            mapped = map_channel_axis(layout_node, axis, layer.channels)
            if isinstance(mapped, Skip):
                return mapped
            axis = mapped
        resolved = chain.resolve(rank_of(chain.input) if layout_nodes else layer.rank)
        if isinstance(resolved, Skip):
            return resolved
        affine, chain_axis = resolved
        if chain_axis is not None and (chain_axis < 0) != (axis < 0):
            return Skip(Reason.UNPROVEN_LAYOUT, "the rank of the BN input is unknown")
        for layout_node in layout_nodes:
            if is_commuting(layout_node) and (condition := affine_skip(layout_node, affine)):
                return condition
        if chain_axis is not None and chain_axis != axis:
            return Skip(
                Reason.CHANNEL_MISMATCH,
                f"the BN acts on axis {chain_axis}, {node_label(producer)} writes channels on "
                f"axis {axis}",
            )
        if affine.channels not in (1, layer.channels):
            return Skip(
                Reason.CHANNEL_MISMATCH,
                f"the BN has {affine.channels} channels, {node_label(producer)} has "
                f"{layer.channels}",
            )
        try:
            self.rewrite(context, layer, affine.broadcast_to(layer.channels), chain)
        except FoldArithmeticError as error:
            return Skip(Reason.DTYPE_RANGE, str(error))
        remove_affine_chain(context, chain)
        return Folded(
            Outcome.FOLDED_INTO_PREVIOUS,
            [node_label(producer)],
            [node_label(node) for node in layout_nodes],
        )

    def applies_to(self, chain: AffineChain) -> bool:
        """Whether folding would remove something; layers with a bias slot take any chain."""
        return True


def walk_back(chain: AffineChain) -> tuple[ir.Node, list[ir.Node]] | Skip:
    """The node that produces the chain's input, looking through layout ops and the ops an
    affine commutes with (bnfold/rules/commuting.py); returns it and those ops in data order."""
    return walk_back_from(chain.input)


def walk_back_from(value: ir.Value) -> tuple[ir.Node, list[ir.Node]] | Skip:
    """``walk_back`` from any value (one input of a Concat, say)."""
    layout_nodes: list[ir.Node] = []
    while True:
        producer = value.producer()
        if producer is None:
            return Skip(Reason.NO_LINEAR_NEIGHBOUR, f"reads the graph input {value.name}")
        passable = producer.op_type in LAYOUT_OPS or is_commuting(producer, backward=True)
        if not passable or not producer.inputs or producer.inputs[0] is None:
            return producer, list(reversed(layout_nodes))
        layout_nodes.append(producer)
        value = producer.inputs[0]


def exclusive_path_skip(
    reader: ir.Node, producer: ir.Node, layout_nodes: list[ir.Node]
) -> Skip | None:
    """Every value from the linear layer to ``reader`` (the chain's first node) must be read by
    the next step alone and be no graph output, or folding would change what others see."""
    readers = [*layout_nodes, reader]
    values = [producer.outputs[0], *(node.outputs[0] for node in layout_nodes)]
    for node in layout_nodes:  # MaxPool's Indices, Dropout's mask: see the scaled data too
        for extra in node.outputs[1:]:
            if extra.name and (list(extra.uses()) or extra.is_graph_output()):
                return Skip(Reason.SHARED_OUTPUT, f"{node_label(node)} output {extra.name} is read")
    for value, reader in zip(values, readers, strict=True):
        if value.is_graph_output():
            return Skip(Reason.GRAPH_OUTPUT, f"{value.name} is a graph output")
        if sole_consumer(value, shape_readers_ok=True) is not reader:
            writer = value.producer()
            where = node_label(writer) if writer is not None else value.name
            return Skip(Reason.SHARED_OUTPUT, f"the output of {where} has other readers")
    return None


def remove_affine_chain(context: FoldContext, chain: AffineChain) -> None:
    """Drop the chain's nodes; its readers (or the graph output) now read its input."""
    output, source = chain.output, chain.input
    bypass(context.graph, output, source)
    remove_nodes(context.graph, chain.nodes)


def constant_weight(node: ir.Node, index: int) -> npt.NDArray[np.generic] | Skip:
    value = node.inputs[index] if index < len(node.inputs) else None
    array = constant_array(value)
    if array is None:
        name = value.name if value is not None else "?"
        return Skip(Reason.WEIGHT_NOT_CONSTANT, f"{node_label(node)} reads {name}, not a constant")
    return array


def optional_constant(node: ir.Node, index: int) -> npt.NDArray[np.generic] | Skip | None:
    """An optional input: ``None`` when absent, the array when constant, Skip otherwise."""
    if index >= len(node.inputs) or node.inputs[index] is None:
        return None
    return constant_weight(node, index)


def weight_and_bias(
    node: ir.Node, *, min_rank: int = 2
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.generic] | None] | Skip:
    """The constant weight (input 1, of rank ``min_rank`` at least) and optional constant
    bias (input 2) of Conv, ConvTranspose and Gemm."""
    weight = constant_weight(node, 1)
    if isinstance(weight, Skip):
        return weight
    if weight.ndim < min_rank:
        return Skip(Reason.UNSUPPORTED_LAYER, f"{node_label(node)}: weight has rank {weight.ndim}")
    bias = optional_constant(node, 2)
    if isinstance(bias, Skip):
        return bias
    return weight, bias


def write_weight_and_bias(
    context: FoldContext,
    node: ir.Node,
    weight: npt.NDArray[np.generic],
    bias: npt.NDArray[np.generic],
) -> None:
    """Conv and ConvTranspose keep the weight at input 1 and the bias at input 2."""
    label = node_label(node)
    set_constant_input(context.graph, node, 1, weight, context.names, f"{label}_weight_bnfold")
    set_constant_input(context.graph, node, 2, bias, context.names, f"{label}_bias_bnfold")
