"""Constants that exporters write as small subgraphs: ``Reshape(Constant)``,
``Unsqueeze(initializer)``, ``Expand(CastLike(0, x), Shape(W)[:1])``.

``constant_value`` answers, for one value, the array it always holds, or ``None``. A value is
constant when it is an initializer that is not a graph input, a Constant node's output, or the
output of a standard op whose every input is constant. ``Shape`` and ``Size`` read only the
shape of their input and ``CastLike`` only the type of its second input, so those inputs need
only a static shape (or a known type), not constant data.

The evaluation is lazy and changes nothing: the producer chain is copied into a small model
and run by ``onnx.reference.ReferenceEvaluator`` (no op is evaluated by hand here); the
result is cached on the value. A fold that uses it writes a new initializer in its place, so a
model where nothing folds keeps its subgraphs as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import onnx
import onnx_ir as ir

_CACHE_KEY = "bnfold.constant"
_NOT_CONSTANT = "not constant"
MAX_NODES = 64  # an exporter's constant subgraph is a handful of nodes
MAX_ELEMENTS = 1 << 24  # never materialise a huge computed tensor
# Different at each run, or holding subgraphs the small model cannot carry.
_NEVER = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
    | {"Bernoulli", "If", "Loop", "Scan", "Constant"}
)
# (op, input index) that is read for its shape or type only.
_SHAPE_OR_TYPE_ONLY = frozenset({("Shape", 0), ("Size", 0), ("CastLike", 1)})


def _is_standard(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def leaf_constant(value: ir.Value) -> npt.NDArray[np.generic] | None:
    """An initializer that is not a graph input (those can be overridden at run time), or a
    Constant node's output."""
    if value.is_graph_input():
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is None or producer.op_type != "Constant" or not _is_standard(producer):
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except Exception:  # an unusual Constant (sparse, string) is simply not a constant for us
        return None
    return None if tensor is None else tensor.numpy()


def _stand_in(reader: ir.Node, value: ir.Value) -> npt.NDArray[np.generic] | None:
    """An array with ``value``'s shape (Shape, Size) or type (CastLike) and no real data: a
    broadcast zero, which takes no memory. A dynamic dimension may stand as 1 when the Shape
    does not return it (``Shape(x, start=1)`` of ``[N, C, H, W]``)."""
    dtype = value.dtype.numpy() if value.dtype is not None else None
    if dtype is None:
        return None
    if reader.op_type == "CastLike":
        return np.zeros(0, dtype=dtype)
    if value.shape is None:
        return None
    dims = list(value.shape)
    read = dims
    if reader.op_type == "Shape":  # Python slicing clamps start and end as the spec does
        start, end = reader.attributes.get("start"), reader.attributes.get("end")
        read = dims[start.as_int() if start else None : end.as_int() if end else None]
    if not all(isinstance(dim, int) for dim in read):
        return None
    static = tuple(dim if isinstance(dim, int) else 1 for dim in dims)
    return np.broadcast_to(np.zeros(1, dtype=dtype), static)


@dataclass
class _Subgraph:
    """The nodes that compute a value, in data order, and the arrays they read."""

    nodes: list[ir.Node] = field(default_factory=list)
    feeds: dict[str, npt.NDArray[np.generic]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    visits: int = 0

    def name(self, value: ir.Value) -> str:
        return self.names.setdefault(id(value), f"v{len(self.names)}")


def _not_constant(value: ir.Value) -> bool:
    """Remember that ``value`` is not constant (a fold never makes it one), so each value of
    a large graph is explored once however often the rules ask."""
    value.meta[_CACHE_KEY] = _NOT_CONSTANT
    return False


def _collect(value: ir.Value, subgraph: _Subgraph) -> bool:
    """Add what computes ``value`` to ``subgraph``; False when something is not constant."""
    if id(value) in subgraph.names:
        return True
    leaf = leaf_constant(value)
    if leaf is not None:
        subgraph.feeds[subgraph.name(value)] = leaf
        return True
    if value.meta.get(_CACHE_KEY) is _NOT_CONSTANT:
        return False
    producer = value.producer()
    if value.is_graph_input() or producer is None or not _is_standard(producer):
        return _not_constant(value)
    if producer.op_type in _NEVER:
        return _not_constant(value)
    subgraph.visits += 1
    if subgraph.visits > MAX_NODES:
        return False  # too large to be an exporter's constant: not known, not remembered
    for index, source in enumerate(producer.inputs):
        if source is None:
            continue
        if (producer.op_type, index) in _SHAPE_OR_TYPE_ONLY:
            stand_in = _stand_in(producer, source)
            if stand_in is None:
                return _not_constant(value)
            subgraph.feeds[f"s{id(producer)}_{index}"] = stand_in
        elif not _collect(source, subgraph):
            if source.meta.get(_CACHE_KEY) is _NOT_CONSTANT:
                _not_constant(value)
            return False
    for output in producer.outputs:
        subgraph.name(output)
    subgraph.nodes.append(producer)
    return True


def _node_proto(node: ir.Node, subgraph: _Subgraph) -> onnx.NodeProto:
    proto = ir.serde.serialize_node(node)
    del proto.input[:]
    for index, source in enumerate(node.inputs):
        if source is None:
            proto.input.append("")
        elif (node.op_type, index) in _SHAPE_OR_TYPE_ONLY:
            proto.input.append(f"s{id(node)}_{index}")
        else:
            proto.input.append(subgraph.names[id(source)])
    del proto.output[:]
    proto.output.extend(subgraph.names[id(output)] for output in node.outputs)
    return proto


def _opset(node: ir.Node) -> int:
    imports = node.graph.opset_imports if node.graph is not None else {}
    return node.version or imports.get("", imports.get("ai.onnx", onnx.defs.onnx_opset_version()))


def _evaluate(value: ir.Value) -> npt.NDArray[np.generic] | None:
    subgraph = _Subgraph()
    if not _collect(value, subgraph) or not subgraph.nodes:
        return None
    if any(array.size > MAX_ELEMENTS for array in subgraph.feeds.values()):
        return None
    output = subgraph.names[id(value)]
    graph = onnx.helper.make_graph(
        [_node_proto(node, subgraph) for node in subgraph.nodes],
        "bnfold_constant",
        [
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
            for name in subgraph.feeds
        ],
        [onnx.helper.make_tensor_value_info(output, onnx.TensorProto.UNDEFINED, None)],
    )
    opset = _opset(subgraph.nodes[-1])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    from onnx.reference import ReferenceEvaluator  # only when a subgraph is to be computed

    try:
        [result] = ReferenceEvaluator(model).run([output], subgraph.feeds)
    except Exception:  # an op the reference cannot run, or an invalid subgraph: not constant
        return None
    array = np.asarray(result)
    return array if array.size <= MAX_ELEMENTS else None


def constant_value(value: ir.Value | None) -> npt.NDArray[np.generic] | None:
    """The array ``value`` always holds, or ``None`` (see the module docstring)."""
    if value is None:
        return None
    leaf = leaf_constant(value)
    if leaf is not None or value.producer() is None:
        return leaf
    cached = value.meta.get(_CACHE_KEY)
    if cached is None:
        computed = _evaluate(value)
        cached = _NOT_CONSTANT if computed is None else computed
        value.meta[_CACHE_KEY] = cached
    return None if isinstance(cached, str) else cached


def is_computed(value: ir.Value) -> bool:
    """Whether ``value`` is a constant computed by a subgraph (not an initializer or Constant)."""
    return leaf_constant(value) is None and constant_value(value) is not None


def drop_dead_producers(graph: ir.Graph, values: list[ir.Value]) -> None:
    """Remove the nodes that computed ``values`` (and what computed their inputs) once nothing
    reads them: a fold that replaced a computed constant leaves its subgraph unread."""
    pending = list(values)
    while pending:
        value = pending.pop()
        producer = value.producer()
        if producer is None or producer.graph is not graph or not _is_standard(producer):
            continue
        if any(list(out.uses()) or out.is_graph_output() for out in producer.outputs):
            continue
        if producer.op_type != "Constant" and constant_value(producer.outputs[0]) is None:
            continue  # only constant subgraphs
        inputs = [source for source in producer.inputs if source is not None]
        graph.remove(producer, safe=True)
        pending.extend(inputs)


__all__ = ["constant_value", "drop_dead_producers", "is_computed", "leaf_constant"]
