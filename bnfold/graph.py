"""Thin helpers over the onnx_ir graph: constants, sole consumers, naming, weight rewrites."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.constants import constant_value, drop_dead_producers

# Ops that only move data around: a per-channel affine can be folded through them when the
# channel mapping is proven (see bnfold/rules/layout.py).
LAYOUT_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})


def node_label(node: ir.Node) -> str:
    """A name for the user: the node's name, else its first output's name."""
    if node.name:
        return node.name
    first = node.outputs[0].name if node.outputs else None
    return f"{node.op_type}({first})" if first else node.op_type


def constant_array(value: ir.Value | None) -> npt.NDArray[np.generic] | None:
    """The value's array if it is a true constant: an initializer that is NOT also a graph
    input (those can be overridden at run time), a Constant node's output, or the output of a
    constant-only subgraph (``Reshape(Constant)``, ``Shape`` of a static shape; see
    bnfold/constants.py), computed lazily without changing the graph."""
    return constant_value(value)


# Readers of a value's shape only, which a fold keeps (tf2onnx's Flatten is
# Shape -> Gather -> Concat -> Reshape).
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})


def _reads_shape_only(node: ir.Node) -> bool:
    return node.op_type in SHAPE_ONLY_OPS and node.domain in ("", "ai.onnx")


def sole_consumer(value: ir.Value, *, shape_readers_ok: bool = False) -> ir.Node | None:
    """The one node that reads ``value``, if exactly one does and it is not a graph output;
    with ``shape_readers_ok``, Shape and Size readers do not count."""
    if value.is_graph_output():
        return None
    uses = [use for use in value.uses() if not (shape_readers_ok and _reads_shape_only(use.node))]
    if len(uses) != 1:
        return None
    consumers = {id(use.node) for use in uses}
    return uses[0].node if len(consumers) == 1 else None


def rank_of(value: ir.Value) -> int | None:
    return None if value.shape is None else value.shape.rank()


def static_dims(value: ir.Value) -> tuple[int | None, ...] | None:
    """The value's dimensions, ``None`` where a dimension is dynamic; ``None`` if rank unknown."""
    if value.shape is None:
        return None
    return tuple(dim if isinstance(dim, int) else None for dim in value.shape)


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.as_int())


def float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else float(attr.as_float())


def ints_attr(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else [int(v) for v in attr.as_ints()]


def string_attr(node: ir.Node, name: str, default: str) -> str:
    attr = node.attributes.get(name)
    return default if attr is None else str(attr.as_string())


def iter_graphs(graph: ir.Graph) -> Iterator[ir.Graph]:
    """The graph and every subgraph (If/Loop/Scan bodies) below it."""
    yield graph
    yield from graph.subgraphs()


class NameFactory:
    """Fresh value names that collide with nothing in the model."""

    def __init__(self, model: ir.Model) -> None:
        self._taken: set[str] = set()
        for graph in iter_graphs(model.graph):
            self._taken.update(graph.initializers)
            self._taken.update(v.name for v in graph.inputs if v.name)
            for node in graph:
                self._taken.update(v.name for v in node.outputs if v.name)

    def fresh(self, base: str) -> str:
        for index in itertools.count():
            candidate = base if index == 0 else f"{base}_{index}"
            if candidate not in self._taken:
                self._taken.add(candidate)
                return candidate
        raise AssertionError("unreachable")


def add_initializer(
    graph: ir.Graph, names: NameFactory, array: npt.NDArray[np.generic], name_hint: str
) -> ir.Value:
    """A new initializer holding ``array``, under a fresh name based on ``name_hint``."""
    name = names.fresh(name_hint)
    value = ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def set_constant_input(
    graph: ir.Graph,
    node: ir.Node,
    index: int,
    array: npt.NDArray[np.generic],
    names: NameFactory,
    name_hint: str,
) -> None:
    """Make input ``index`` of ``node`` the constant ``array``.

    An initializer read only by this node is rewritten in place (its name kept); one shared
    with other nodes, a Constant node's output or an absent input gets a fresh initializer, so
    a shared weight is copied before it changes and is never scaled twice.
    """
    current = node.inputs[index] if index < len(node.inputs) else None
    if (
        current is not None
        and current.const_value is not None
        and current.name is not None
        and graph.initializers.get(current.name) is current
        and not current.is_graph_input()
        and len(list(current.uses())) == 1
    ):
        current.const_value = ir.tensor(array, name=current.name)
        current.shape = ir.Shape(array.shape)
        return
    value = add_initializer(graph, names, array, name_hint)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    if current is not None:
        drop_dead_producers(graph, [current])  # a computed constant's subgraph, now unread


def bypass(graph: ir.Graph, removed_output: ir.Value, replacement: ir.Value) -> None:
    """Point every reader of ``removed_output`` at ``replacement``; when ``removed_output`` is
    a graph output, ``replacement`` takes its place and its name, so output names survive."""
    was_output = removed_output.is_graph_output()
    name = removed_output.name
    removed_output.replace_all_uses_with(replacement, replace_graph_outputs=True)
    if was_output and name is not None:
        removed_output.name = None
        replacement.name = name
        # A graph output must be typed; a model loaded without shape inference may know the
        # type only from the output's declaration (a fold keeps the shape and the dtype).
        if replacement.type is None:
            replacement.type = removed_output.type
        if replacement.shape is None:
            replacement.shape = removed_output.shape


def remove_nodes(graph: ir.Graph, nodes: list[ir.Node]) -> None:
    """Remove ``nodes`` and the constant subgraphs only they read (BN parameters written as
    ``Reshape(Constant)``)."""
    inputs = [value for node in nodes for value in node.inputs if value is not None]
    graph.remove(nodes, safe=True)
    drop_dead_producers(graph, inputs)
