"""A Keras model as a graph the fold core reads: every layer call written as ONNX nodes
(``layers.py``), nested models inlined at any depth, TimeDistributed unwrapped.

The walk follows the live graph (each tensor's ``_keras_history``) from the model outputs,
so Sequential and Functional models, nested ones and shared layers look alike; Keras 2
(``tf_keras``) models expose the same attributes. Every node carries the path of the Keras
layer it came from (``base/conv1``), which is how folds are written back and logged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from bnfold.affine import FoldArithmeticError
from bnfold.foldlog import Reason, Skip
from bnfold.frontends.keras import batchnorm
from bnfold.frontends.keras.emit import OPAQUE_DOMAIN, Call, Emitter, ir_shape
from bnfold.frontends.keras.layers import LOWERINGS, lower_layout

BATCHNORM = "BatchNormalization"
OPSET = 17


@dataclass
class LayerRecord:
    """One Keras layer as lowered: where its config lives (``owner`` is the path of the
    model that lists it, "" for the top level) and the nodes of its first call by role."""

    path: str
    layer: Any
    class_name: str  # of the layer itself, or of the layer a TimeDistributed wraps
    owner: str
    calls: int = 0
    nodes: dict[str, ir.Node] = field(default_factory=dict)
    skip: Skip | None = None  # a BN the front end cannot describe (axis, parameters)
    chained_to: str | None = None  # a BN reading another BN directly
    # The inputs (and their tensors) of each node as lowered, held so that a rewrite in
    # place (a new tensor on the same value) is seen too.
    inputs_before: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_batchnorm(self) -> bool:
        return self.class_name == BATCHNORM

    def rewritten(self) -> bool:
        """Whether the fold core replaced (or rewrote in place) an input of one of the
        layer's nodes."""
        for role, node in self.nodes.items():
            before = self.inputs_before.get(role, [])
            now = input_snapshot(node)
            if len(now) != len(before):
                return True
            if any(a is not c or b is not d for (a, b), (c, d) in zip(now, before, strict=True)):
                return True
        return False


def input_snapshot(node: ir.Node) -> list[tuple[Any, Any]]:
    return [(value, getattr(value, "const_value", None)) for value in node.inputs]


@dataclass
class Lowered:
    graph: ir.Graph
    records: dict[str, LayerRecord] = field(default_factory=dict)
    _owners: dict[str, tuple[LayerRecord, str]] = field(default_factory=dict)

    def owner_of(self, node_name: str) -> tuple[LayerRecord, str] | None:
        """The layer a node was written for and the node's role in it (lowering is done
        when the log asks, so the index is built once, on the first question)."""
        if not self._owners:
            self._owners = {
                node.name: (record, role)
                for record in self.records.values()
                for role, node in record.nodes.items()
                if node.name
            }
        return self._owners.get(node_name)


def _node_inputs(node: Any) -> list[Any]:
    """Every Keras tensor a layer call read: tf_keras' ``input_tensors`` holds only the first
    argument of an op layer (``x + skip`` lists ``x``), its ``keras_inputs`` all of them."""
    every = getattr(node, "keras_inputs", None)
    return list(every) if isinstance(every, list | tuple) else _flatten(node.input_tensors)


def _flatten(structure: Any) -> list[Any]:
    if isinstance(structure, dict):
        return [leaf for value in structure.values() for leaf in _flatten(value)]
    if isinstance(structure, list | tuple):
        return [leaf for value in structure for leaf in _flatten(value)]
    return [] if structure is None else [structure]


def _shape(tensor: Any) -> tuple[int | None, ...] | None:
    try:
        return tuple(None if d is None else int(d) for d in tuple(tensor.shape))
    except (TypeError, ValueError):
        return None


def is_model(layer: Any) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "outputs") and hasattr(layer, "inputs")


class _Walk:
    """Lowers each (scope, tensor) once; ``env`` maps ``id(tensor)`` per nested scope."""

    def __init__(self, graph: ir.Graph) -> None:
        self.lowered = Lowered(graph)

    def value(self, tensor: Any, env: dict[int, ir.Value], prefix: str) -> ir.Value:
        """The ir value of ``tensor``, lowering its producers first (an explicit stack: a
        DenseNet is deeper than Python's recursion limit)."""
        stack = [tensor]
        while stack:
            current = stack[-1]
            if id(current) in env:
                stack.pop()
                continue
            operation, node_index, _ = current._keras_history
            node = operation._inbound_nodes[node_index]
            # tf_keras holds a single input as the tensor itself, which has no truth value.
            feeding = _node_inputs(node)
            missing = [t for t in feeding if id(t) not in env]
            if not feeding:
                raise ValueError(f"tensor of '{operation.name}' is not fed by the model inputs")
            if missing:
                stack.extend(missing)
                continue
            self._call(operation, node, env, prefix)
            stack.pop()
        return env[id(tensor)]

    def _call(self, operation: Any, node: Any, env: dict[int, ir.Value], prefix: str) -> None:
        inputs = [env[id(t)] for t in _node_inputs(node)]
        out_tensors = _flatten(node.output_tensors)
        path = f"{prefix}{operation.name}"
        if is_model(operation):
            outputs = self._nested(operation, inputs, path)
        else:
            outputs = self._layer(operation, node, inputs, out_tensors, path, prefix)
        for tensor, value in zip(out_tensors, outputs, strict=True):
            env[id(tensor)] = value

    def _nested(self, model: Any, inputs: list[ir.Value], path: str) -> list[ir.Value]:
        inner = {id(t): v for t, v in zip(_flatten(model.inputs), inputs, strict=True)}
        return [self.value(t, inner, f"{path}/") for t in _flatten(model.outputs)]

    def _record(self, operation: Any, path: str, prefix: str) -> LayerRecord:
        record = self.lowered.records.get(path)
        if record is None:
            inner = getattr(operation, "layer", None)
            wrapped = type(operation).__name__ == "TimeDistributed" and inner is not None
            class_name = type(inner if wrapped else operation).__name__
            record = LayerRecord(path, operation, class_name, prefix.rstrip("/"))
            self.lowered.records[path] = record
        record.calls += 1
        return record

    def _layer(
        self,
        operation: Any,
        node: Any,
        inputs: list[ir.Value],
        out_tensors: list[Any],
        path: str,
        prefix: str,
    ) -> list[ir.Value]:
        record = self._record(operation, path, prefix)
        node_path = path if record.calls == 1 else f"{path}#{record.calls}"
        emit = Emitter(self.lowered.graph, node_path, path)
        in_tensors = _node_inputs(node)
        output = None
        described = len(inputs) == 1 or type(operation).__name__ == "Concatenate"
        if described and len(out_tensors) == 1:
            output = self._describe(operation, record, emit, inputs, in_tensors, out_tensors)
        if output is None:
            return self._opaque(emit, record, inputs, out_tensors)
        if record.calls == 1:
            record.nodes = {n.metadata_props["keras_role"]: n for n in emit.nodes}
            record.inputs_before = {role: input_snapshot(n) for role, n in record.nodes.items()}
        return [output]

    def _describe(
        self,
        operation: Any,
        record: LayerRecord,
        emit: Emitter,
        inputs: list[ir.Value],
        in_tensors: list[Any],
        out_tensors: list[Any],
    ) -> ir.Value | None:
        source = getattr(operation, "layer", operation)
        if record.class_name != type(operation).__name__ and record.class_name not in (
            "Dense",
            BATCHNORM,
        ):
            return None  # TimeDistributed(anything but Dense or BN) stays opaque
        if str(type(source).__module__).split(".")[0] not in ("keras", "tf_keras"):
            return None  # a custom subclass of a Keras layer may compute anything
        if not hasattr(source, "get_weights"):
            return None  # an op called on a tensor (Keras 3's ``x + 3.0``), not a layer
        call = Call(
            record.class_name,
            source.get_config(),
            _weights_in_keras_order(source),
            inputs,
            _shape(in_tensors[0]),
            _shape(out_tensors[0]),
        )
        if record.is_batchnorm:
            return self._batchnorm(record, emit, call)
        lowering = LOWERINGS.get(record.class_name)
        if lowering is not None:
            if call.config.get("lora_rank"):
                return None
            return lowering(emit, call)
        return lower_layout(emit, call)

    def _batchnorm(self, record: LayerRecord, emit: Emitter, call: Call) -> ir.Value | None:
        rank = len(call.input_shape) if call.input_shape is not None else 0
        wrapped = record.class_name != type(record.layer).__name__
        # A wrapped BN counts its axes without TimeDistributed's time axis.
        axis = batchnorm.batchnorm_axis(call.config, rank - wrapped)
        if axis is not None and wrapped:
            axis += 1
        if axis is None or axis == 0:
            record.skip = Skip(
                Reason.UNPROVEN_LAYOUT if rank == 0 else Reason.CHANNEL_MISMATCH,
                "its input shape is unknown"
                if rank == 0
                else f"normalises axis {call.config.get('axis')}",
            )
            return None
        try:
            affine = batchnorm.batchnorm_affine(call.config, call.weights)
        except FoldArithmeticError as error:
            record.skip = Skip(Reason.INVALID_PARAMS, str(error))
            return None
        feeder = call.inputs[0].producer()
        if feeder is not None and feeder.metadata_props.get("keras_role") == "shift":
            record.chained_to = feeder.metadata_props["keras_layer"]
        return batchnorm.lower_batchnorm(emit, call, affine, axis)

    def _opaque(
        self, emit: Emitter, record: LayerRecord, inputs: list[ir.Value], out_tensors: list[Any]
    ) -> list[ir.Value]:
        op = ir.Node(
            OPAQUE_DOMAIN, record.class_name, inputs, name=emit.path, num_outputs=len(out_tensors)
        )
        op.metadata_props["keras_layer"] = record.path
        op.metadata_props["keras_role"] = "opaque"
        for index, (value, tensor) in enumerate(zip(op.outputs, out_tensors, strict=True)):
            value.name = f"{emit.path}:{index}"
            value.shape = ir_shape(_shape(tensor))
            value.type = ir.TensorType(ir.DataType.FLOAT)
        self.lowered.graph.append(op)
        if record.calls == 1:
            record.nodes = {"opaque": op}
        return list(op.outputs)


def _weights_in_keras_order(layer: Any) -> list[np.ndarray]:
    """``get_weights()``, with a quantised layer's integer kernel first as the descriptions
    expect (Keras lists a quantised Dense as bias, int8 kernel, scale); the fold core then
    declines its integer weights with ``unsupported_dtype``."""
    weights = [np.asarray(w) for w in layer.get_weights()]
    integer = [w for w in weights if w.dtype.kind in "iu"]
    if not integer:
        return weights
    return [integer[0], *(w for w in weights if w.dtype.kind == "f" and w.ndim == 1)]


def _freeze_shared(lowered: Lowered) -> None:
    """A layer called more than once has one set of weights for all its calls: its constants
    become graph inputs, which the fold core never treats as constants."""
    graph = lowered.graph
    shared = {path for path, record in lowered.records.items() if record.calls > 1}
    for node in list(graph):
        if node.metadata_props.get("keras_layer") not in shared:
            continue
        for value in node.inputs:
            if value is not None and value.const_value is not None and not value.is_graph_input():
                graph.inputs.append(value)


def lower_model(model: Any) -> Lowered:
    """The model's graph, ready for ``bnfold.fold.fold_model``. Raises ``ValueError`` when
    the model cannot be walked (a subclassed model without a functional graph)."""
    graph = ir.Graph(
        [], [], nodes=[], opset_imports={"": OPSET, OPAQUE_DOMAIN: 1}, name=str(model.name)
    )
    walk = _Walk(graph)
    env: dict[int, ir.Value] = {}
    model_inputs = _flatten(getattr(model, "inputs", None))
    model_outputs = _flatten(getattr(model, "outputs", None))
    if not model_inputs or not model_outputs:
        raise ValueError("the model has no functional graph")
    for tensor in model_inputs:
        operation = tensor._keras_history[0]
        value = ir.Value(
            name=str(operation.name),
            shape=ir_shape(_shape(tensor)),
            type=ir.TensorType(ir.DataType.FLOAT),
        )
        graph.inputs.append(value)
        env[id(tensor)] = value
    for tensor in model_outputs:
        graph.outputs.append(walk.value(tensor, env, ""))
    _freeze_shared(walk.lowered)
    return walk.lowered


def all_layers(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, layer)`` for every layer, nested models' layers included, in model order."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        yield path, layer
        if is_model(layer):
            yield from all_layers(layer, f"{path}/")


def hidden_batchnorms(layer: Any) -> list[str]:
    """Names of BN layers held inside a layer bnfold cannot look into (a custom layer)."""
    found: list[str] = []
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is None:
        return found
    for sub in flatten(include_self=False):
        if type(sub).__name__ == BATCHNORM:
            found.append(str(sub.name))
    return found
