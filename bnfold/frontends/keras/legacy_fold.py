"""Folding on the Keras model (to be replaced by the shared fold core)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnfold.affine import FoldArithmeticError, ScaleShift, along_axis
from bnfold.errors import InputError
from bnfold.foldlog import FoldEntry, Outcome, Reason
from bnfold.frontends.keras.loading import _layer_name
from bnfold.frontends.keras.runtime import first_line, import_keras
from bnfold.rules.keras_layers import (
    CONV,
    CONV_TRANSPOSE,
    DENSE,
    KerasLinearRule,
    keras_batchnorm_affine,
    rule_for,
)

_BATCHNORM = "BatchNormalization"
_ACTIVATION_LAYERS = frozenset(
    {"Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU"}
)
# Layers that are the identity in inference, and layers that only move elements; a forward
# fold looks through both (the second kind with a proof of where each channel goes).
_IDENTITY_LAYERS = frozenset(
    {
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "Identity",
    }
)
_LAYOUT_LAYERS = frozenset({"Flatten", "Reshape", "Permute"})


# --------------------------------------------------------------------------- folding


@dataclass
class _GraphLayer:
    """One top-level layer of a Sequential or Functional config, with its wiring."""

    name: str
    class_name: str
    entry: dict[str, Any]  # the layer's dict inside the (copied) model config
    inputs: list[str]
    calls: int
    consumers: list[str] = field(default_factory=list)

    @property
    def layer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.entry["config"]
        return config


def _mutable_copy(config: Any) -> Any:
    """A deep copy with tuples turned into lists, so that wiring can be rewritten in place."""
    if isinstance(config, dict):
        return {key: _mutable_copy(value) for key, value in config.items()}
    if isinstance(config, list | tuple):
        return [_mutable_copy(value) for value in config]
    return copy.deepcopy(config)


def _is_history(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 3
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and isinstance(value[2], int)
    )


def _histories(node: Any) -> Iterator[list[Any]]:
    """Every ``keras_history`` ``[layer, node_index, tensor_index]`` inside an inbound node."""
    if isinstance(node, dict):
        history = node.get("keras_history")
        if isinstance(history, list) and _is_history(history):
            yield history
        for key, value in node.items():
            if key != "keras_history":
                yield from _histories(value)
    elif isinstance(node, list):
        for value in node:
            yield from _histories(value)


def _output_histories(output_layers: Any) -> Iterator[list[Any]]:
    if isinstance(output_layers, list) and _is_history(output_layers):
        yield output_layers
    elif isinstance(output_layers, list):
        for value in output_layers:
            yield from _output_histories(value)
    elif isinstance(output_layers, dict):
        for value in output_layers.values():
            yield from _output_histories(value)


class _ModelGraph:
    """The wiring of a Sequential or Functional model, read from (a copy of) its config and
    rewired in place as BN layers are removed."""

    def __init__(self, config: dict[str, Any], sequential: bool) -> None:
        self.config = config
        self.sequential = sequential
        self.layers: dict[str, _GraphLayer] = {}
        entries = config["layers"]
        previous: str | None = None
        for entry in entries:
            name = _layer_name(entry)
            if sequential:
                inputs = [previous] if previous is not None else []
                calls = 1
            else:
                nodes = entry.get("inbound_nodes") or []
                calls = len(nodes)
                inputs = [str(h[0]) for h in _histories(nodes[:1])]
            self.layers[name] = _GraphLayer(name, entry["class_name"], entry, inputs, calls)
            previous = name
        for layer in self.layers.values():
            if sequential:
                for producer in layer.inputs:
                    self.layers[producer].consumers.append(layer.name)
            else:
                for node in layer.entry.get("inbound_nodes") or []:
                    for history in _histories(node):
                        if history[0] in self.layers:
                            self.layers[history[0]].consumers.append(layer.name)
        if sequential:
            self.outputs = [previous] if previous is not None else []
        else:
            self.outputs = [str(h[0]) for h in _output_histories(config["output_layers"])]

    def _reroute(self, batchnorm: str, source: str, history: list[Any] | None) -> None:
        """Drop ``batchnorm``; its consumers read layer ``source`` instead, through the
        inbound-node ``history`` (left as it is when ``None``)."""
        bn = self.layers.pop(batchnorm)
        self.config["layers"] = [e for e in self.config["layers"] if e is not bn.entry]
        feeder = self.layers[source]
        feeder.consumers = [c for c in feeder.consumers if c != batchnorm] + bn.consumers
        for consumer in bn.consumers:
            layer = self.layers[consumer]
            layer.inputs = [source if name == batchnorm else name for name in layer.inputs]
            for node in layer.entry.get("inbound_nodes") or []:
                for found in _histories(node):
                    if found[0] == batchnorm and history is not None:
                        found[:] = list(history)

    def remove(self, batchnorm: str, producer: str) -> None:
        """Drop ``batchnorm`` and feed its consumers (and model outputs) from ``producer``
        (a backward fold: the producer now computes the BN's output)."""
        self._reroute(batchnorm, producer, [producer, 0, 0])
        self.outputs = [producer if name == batchnorm else name for name in self.outputs]
        if not self.sequential:
            for history in _output_histories(self.config["output_layers"]):
                if history[0] == batchnorm:
                    history[:] = [producer, 0, 0]

    def bypass(self, batchnorm: str) -> None:
        """Drop ``batchnorm`` and feed its consumers from what fed it (a forward fold)."""
        bn = self.layers[batchnorm]
        history = next(_histories((bn.entry.get("inbound_nodes") or [])[:1]), None)
        self._reroute(batchnorm, bn.inputs[0], history)

    def rename(self, old: str, new: str) -> None:
        """Give layer ``old`` the name ``new`` everywhere in the config."""
        layer = self.layers.pop(old)
        layer.name = new
        layer.entry["config"]["name"] = new
        if "name" in layer.entry:
            layer.entry["name"] = new
        self.layers[new] = layer
        for other in self.layers.values():
            other.inputs = [new if name == old else name for name in other.inputs]
            for node in other.entry.get("inbound_nodes") or []:
                for history in _histories(node):
                    if history[0] == old:
                        history[0] = new
        self.outputs = [new if name == old else name for name in self.outputs]
        if not self.sequential:
            for history in _output_histories(self.config["output_layers"]):
                if history[0] == old:
                    history[0] = new


@dataclass(frozen=True)
class _Declined:
    reason: Reason
    detail: str
    # Forward only: a linear layer reads the BN, so this reason (not the backward one) is news.
    near: bool = False


def _batchnorm_parameters(layer: Any) -> dict[str, np.ndarray | None]:
    def value(variable: Any) -> np.ndarray | None:
        return None if variable is None else np.asarray(variable.numpy())

    return {
        "gamma": value(getattr(layer, "gamma", None)) if layer.scale else None,
        "beta": value(getattr(layer, "beta", None)) if layer.center else None,
        "moving_mean": value(layer.moving_mean),
        "moving_variance": value(layer.moving_variance),
    }


def _input_rank(bn: _GraphLayer, live_bn: Any) -> int:
    shape = (bn.entry.get("build_config") or {}).get("input_shape")
    if shape is None:
        try:
            shape = live_bn.input.shape
        except (AttributeError, ValueError):
            return 0
    return len(shape)


def _describe(layer: _GraphLayer) -> str:
    return f"{layer.class_name} '{layer.name}'"


def _backward_neighbour(graph: _ModelGraph, bn: _GraphLayer) -> _GraphLayer | _Declined:
    """The linear layer ``bn`` can fold into, judged on the wiring alone, or why not.

    It must be a Keras linear layer with a linear activation, called once, whose output feeds
    only ``bn`` and is not a model output.
    """
    if bn.calls != 1:
        return _Declined(Reason.UNSUPPORTED_LAYER, f"is a shared layer called {bn.calls} times")
    if not bn.inputs:
        return _Declined(Reason.NO_LINEAR_NEIGHBOUR, "normalises a model input directly")
    if len(set(bn.inputs)) != 1:
        return _Declined(Reason.NO_LINEAR_NEIGHBOUR, "has no single input layer")
    producer = graph.layers[bn.inputs[0]]
    if producer.class_name == "InputLayer":
        return _Declined(Reason.NO_LINEAR_NEIGHBOUR, "normalises a model input directly")
    if producer.class_name in _ACTIVATION_LAYERS:
        return _Declined(
            Reason.NO_LINEAR_NEIGHBOUR, f"follows an activation ({_describe(producer)})"
        )
    module = str(producer.entry.get("module", "keras"))
    if (
        rule_for(producer.class_name) is None
        or producer.entry.get("registered_name")
        or not module.startswith("keras")
    ):
        return _Declined(
            Reason.NO_LINEAR_NEIGHBOUR,
            f"follows {_describe(producer)}, which is not a layer bnfold folds into",
        )
    activation = producer.layer_config.get("activation", "linear")
    if activation not in ("linear", None):
        name = activation if isinstance(activation, str) else "a custom function"
        return _Declined(
            Reason.NO_LINEAR_NEIGHBOUR,
            f"follows an activation: {_describe(producer)} applies {name}",
        )
    if producer.calls != 1:
        return _Declined(
            Reason.SHARED_OUTPUT,
            f"{_describe(producer)} is a shared layer called {producer.calls} times",
        )
    others = sorted({c for c in producer.consumers if c != bn.name})
    if others or producer.consumers.count(bn.name) != 1:
        return _Declined(
            Reason.SHARED_OUTPUT,
            f"the output of {_describe(producer)} is also used by {', '.join(others) or bn.name}",
        )
    if producer.name in graph.outputs:
        return _Declined(
            Reason.GRAPH_OUTPUT, f"the output of {_describe(producer)} is also a model output"
        )
    if producer.layer_config.get("lora_rank"):
        return _Declined(Reason.UNSUPPORTED_LAYER, f"{_describe(producer)} has LoRA weights")
    return producer


def _folded_weights(
    model: Any, bn: _GraphLayer, producer: _GraphLayer, weights: list[np.ndarray]
) -> list[np.ndarray] | _Declined:
    """``producer``'s weights with ``bn`` folded in, or why not (dtype, axis, parameters).

    The BN must normalise exactly the producer's channel axis of its output: the last axis, or
    axis 1 for ``data_format="channels_first"``.
    """
    rule = rule_for(producer.class_name)
    if rule is None:  # not reached: _backward_neighbour returns only layers with a rule
        return _Declined(Reason.UNSUPPORTED_LAYER, f"no rule for {_describe(producer)}")
    settings = producer.layer_config
    kernel = weights[rule.kernel_index]
    if settings.get("quantization_config") or not np.issubdtype(kernel.dtype, np.floating):
        return _Declined(
            Reason.UNSUPPORTED_DTYPE,
            f"{_describe(producer)} has {kernel.dtype} (quantised) weights",
        )
    live_bn = model.get_layer(bn.name)
    axes = bn.layer_config.get("axis", -1)
    axes = list(axes) if isinstance(axes, list | tuple) else [axes]
    rank = _input_rank(bn, live_bn)
    if rank == 0:
        return _Declined(Reason.UNPROVEN_LAYOUT, "its input shape is unknown")
    channel_axis = rule.channel_axis(settings.get("data_format"), rank)
    if len(axes) != 1 or int(axes[0]) % rank != channel_axis:
        return _Declined(
            Reason.CHANNEL_MISMATCH,
            f"normalises axis {axes}; {_describe(producer)} has channels on axis {channel_axis}",
        )
    parameters = _batchnorm_parameters(live_bn)
    channels = rule.output_channels(weights)
    bn_channels = np.asarray(parameters["moving_mean"]).size
    if bn_channels != channels:
        return _Declined(
            Reason.CHANNEL_MISMATCH,
            f"has {bn_channels} channels, {_describe(producer)} has {channels}",
        )
    try:
        affine = keras_batchnorm_affine(parameters, float(bn.layer_config.get("epsilon", 1e-3)))
    except FoldArithmeticError as error:
        return _Declined(Reason.INVALID_PARAMS, str(error))
    try:
        return rule.fold_after(weights, bool(settings.get("use_bias", True)), affine)
    except FoldArithmeticError as error:
        return _Declined(Reason.DTYPE_RANGE, str(error))


def _decline_or_fold(
    model: Any,
    graph: _ModelGraph,
    bn: _GraphLayer,
    new_weights: dict[str, list[np.ndarray]],
) -> tuple[str, list[np.ndarray]] | _Declined:
    """The producer's name and folded weights, or why ``bn`` stays."""
    producer = _backward_neighbour(graph, bn)
    if isinstance(producer, _Declined):
        return producer
    weights = new_weights.get(producer.name) or [
        np.asarray(w) for w in model.get_layer(producer.name).get_weights()
    ]
    folded = _folded_weights(model, bn, producer, weights)
    if isinstance(folded, _Declined):
        return folded
    return producer.name, folded


# --------------------------------------------------------------------------- forward fold


@dataclass
class _ForwardFold:
    """A forward fold of one BN, computed and not yet written: new weights per reader."""

    targets: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)
    gained_bias: list[str] = field(default_factory=list)


def _is_keras_layer(layer: _GraphLayer) -> bool:
    module = str(layer.entry.get("module", "keras"))
    return not layer.entry.get("registered_name") and module.startswith("keras")


def _walk_forward(
    graph: _ModelGraph, bn: _GraphLayer
) -> tuple[list[tuple[_GraphLayer, list[str]]], list[str], bool, bool]:
    """Every layer that reads ``bn``'s output, looking through identity (Dropout...) and
    layout (Flatten, Reshape, Permute) layers, with the layers in between; what blocks a
    forward fold; whether the only blocker is a model output; whether a linear layer reads it
    (foldable or not)."""
    readers: list[tuple[_GraphLayer, list[str]]] = []
    blockers: list[str] = []
    output_only = True
    near = False  # a linear layer reads it, foldable or not
    pending: list[tuple[_GraphLayer, list[str]]] = [(bn, [])]
    while pending:
        current, via = pending.pop(0)
        if current.name in graph.outputs:
            blockers.append(
                "its output is a model output"
                if current is bn
                else f"the output of {_describe(current)} is a model output"
            )
        for name in dict.fromkeys(current.consumers):
            consumer = graph.layers[name]
            reads = current.consumers.count(name)
            problem = None
            near = near or rule_for(consumer.class_name) is not None
            if consumer.calls != 1:
                problem = f"{_describe(consumer)} is a shared layer called {consumer.calls} times"
            elif reads != 1:
                problem = f"{_describe(consumer)} reads it {reads} times"
            elif not _is_keras_layer(consumer):
                problem = f"{_describe(consumer)} is not a Keras layer bnfold folds into"
            elif consumer.class_name in _IDENTITY_LAYERS | _LAYOUT_LAYERS:
                pending.append((consumer, [*via, consumer.name]))
            elif rule_for(consumer.class_name) is not None:
                readers.append((consumer, via))
            else:
                problem = f"{_describe(consumer)} is not a linear layer bnfold folds into"
            if problem is not None:
                blockers.append(problem)
                output_only = False
    return readers, blockers, output_only and bool(blockers), near


def _input_shape(bn: _GraphLayer, live_bn: Any) -> tuple[int | None, ...] | None:
    shape = (bn.entry.get("build_config") or {}).get("input_shape")
    if shape is None:
        try:
            shape = live_bn.input.shape
        except (AttributeError, ValueError):
            return None
    return tuple(None if dim is None else int(dim) for dim in shape)


def _feature_affine(
    model: Any,
    graph: _ModelGraph,
    bn: _GraphLayer,
    axis: int,
    affine: ScaleShift,
    reader: _GraphLayer,
    via: list[str],
) -> ScaleShift | _Declined:
    """``(s, t)`` per input channel of ``reader``. Through layout layers the channel of every
    element is proven from static shapes: an array holding each element's BN channel (one
    sample) is run through the same layers, and every input channel of ``reader`` must then
    hold one BN channel."""
    rule = rule_for(reader.class_name)
    assert rule is not None
    data_format = reader.layer_config.get("data_format")
    live_bn = model.get_layer(bn.name)
    shape = _input_shape(bn, live_bn) or ()
    layout = [name for name in via if graph.layers[name].class_name in _LAYOUT_LAYERS]
    if not layout:
        reader_axis = rule.channel_axis(data_format, len(shape))
        if axis != reader_axis:
            return _Declined(
                Reason.CHANNEL_MISMATCH,
                f"normalises axis {axis}; {_describe(reader)} reads channels on axis {reader_axis}",
                near=True,
            )
        return affine
    dims = shape[1:]
    if any(dim is None for dim in dims) or affine.channels >= 2**24:
        return _Declined(
            Reason.UNPROVEN_LAYOUT,
            f"its input shape {list(shape)} is not static, so its channels cannot be followed "
            f"through {_describe(graph.layers[layout[0]])}",
            near=True,
        )
    keras, _ = import_keras()
    static = tuple(int(dim) for dim in dims if dim is not None)
    ids = np.broadcast_to(
        along_axis(np.arange(affine.channels, dtype=np.float64), axis - 1, len(static)), static
    )
    for name in layout:
        moved = model.get_layer(name)(ids[None].astype(np.float32))
        ids = np.asarray(keras.ops.convert_to_numpy(moved), dtype=np.float64)[0]
    reader_axis = rule.channel_axis(data_format, ids.ndim + 1) - 1
    rows = np.moveaxis(ids, reader_axis, -1).reshape(-1, ids.shape[reader_axis])
    if not np.all(rows == rows[:1]):
        return _Declined(
            Reason.CHANNEL_MISMATCH,
            f"after {', '.join(layout)} an input channel of {_describe(reader)} mixes "
            "several BN channels",
            near=True,
        )
    index = rows[0].astype(np.int64)
    return ScaleShift(affine.scale[index], affine.shift[index])


def _spatial(value: Any, count: int) -> list[int]:
    if value is None:
        return [1] * count
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)] * count


def _uneven_reach(rule: KerasLinearRule, settings: dict[str, Any], kernel: np.ndarray) -> str:
    """Why the BN shift cannot become a bias of this layer (it reads padding zeros, or output
    positions get different numbers of kernel taps), or "" when it can."""
    if rule is DENSE:
        return ""
    spatial = list(kernel.shape[:-2])
    if rule is CONV_TRANSPOSE:
        strides = _spatial(settings.get("strides"), len(spatial))
        output_padding = _spatial(settings.get("output_padding") or 0, len(spatial))
        if any(k != 1 for k in spatial):
            why = f"kernel {spatial}"
        elif any(stride != 1 for stride in strides):
            why = f"strides {strides}"
        elif any(pad != 0 for pad in output_padding):
            why = f"output_padding {output_padding}"
        else:
            return ""
        return (
            f"{why}, so output positions receive different numbers of kernel taps and the BN "
            "shift cannot become a bias"
        )
    padding = str(settings.get("padding", "valid")).lower()
    dilation = _spatial(settings.get("dilation_rate"), len(spatial))
    extent = [(k - 1) * d + 1 for k, d in zip(spatial, dilation, strict=True)]
    if padding == "valid" or all(e == 1 for e in extent):
        return ""
    return (
        f"pads its input with zeros (padding='{padding}', kernel {spatial}), which the BN "
        "shift would not reach"
    )


def _forward_into(
    reader: _GraphLayer, weights: list[np.ndarray], affine: ScaleShift
) -> list[np.ndarray] | _Declined:
    """``reader``'s weights with ``affine`` (one ``(s, t)`` per input channel) folded in."""
    rule = rule_for(reader.class_name)
    assert rule is not None
    settings = reader.layer_config
    if settings.get("lora_rank"):
        return _Declined(Reason.UNSUPPORTED_LAYER, f"{_describe(reader)} has LoRA weights", True)
    kernel = weights[rule.forward_kernel_index]
    if settings.get("quantization_config") or not np.issubdtype(kernel.dtype, np.floating):
        return _Declined(
            Reason.UNSUPPORTED_DTYPE, f"{_describe(reader)} has {kernel.dtype} (quantised) weights"
        )
    groups = int(settings.get("groups") or 1) if rule is CONV else 1
    channels = rule.input_channels(weights, groups)
    if affine.channels != channels:
        return _Declined(
            Reason.CHANNEL_MISMATCH,
            f"has {affine.channels} channels, {_describe(reader)} reads {channels}",
        )
    if not affine.has_zero_shift and (why := _uneven_reach(rule, settings, kernel)):
        return _Declined(Reason.PADDING, f"{_describe(reader)} {why}")
    try:
        return rule.fold_before(weights, bool(settings.get("use_bias", True)), affine, groups)
    except FoldArithmeticError as error:
        return _Declined(Reason.DTYPE_RANGE, f"{_describe(reader)}: {error}")


def _forward_fold(
    model: Any, graph: _ModelGraph, bn: _GraphLayer, new_weights: dict[str, list[np.ndarray]]
) -> _ForwardFold | _Declined:
    """``bn`` folded into EVERY layer that reads it, or why not (``near`` when a linear layer
    reads it, so that the forward reason is the one to report)."""
    if bn.calls != 1 or len(set(bn.inputs)) != 1:
        return _Declined(Reason.UNSUPPORTED_LAYER, "is not called once on one input")
    live_bn = model.get_layer(bn.name)
    axes = bn.layer_config.get("axis", -1)
    axes = list(axes) if isinstance(axes, list | tuple) else [axes]
    rank = _input_rank(bn, live_bn)
    if rank == 0:
        return _Declined(Reason.UNPROVEN_LAYOUT, "its input shape is unknown")
    if len(axes) != 1 or int(axes[0]) % rank == 0:
        return _Declined(Reason.CHANNEL_MISMATCH, f"normalises axis {axes}")
    try:
        affine = keras_batchnorm_affine(
            _batchnorm_parameters(live_bn), float(bn.layer_config.get("epsilon", 1e-3))
        )
    except FoldArithmeticError as error:
        return _Declined(Reason.INVALID_PARAMS, str(error))
    readers, blockers, output_only, near = _walk_forward(graph, bn)
    if blockers or not readers:
        reason = Reason.GRAPH_OUTPUT if output_only else Reason.CONSUMER_NOT_FOLDABLE
        return _Declined(reason, "; ".join(blockers) or "nothing reads it", near)
    plan = _ForwardFold()
    for reader, via in readers:
        features = _feature_affine(model, graph, bn, int(axes[0]) % rank, affine, reader, via)
        if isinstance(features, _Declined):
            return features
        weights = new_weights.get(reader.name) or [
            np.asarray(w) for w in model.get_layer(reader.name).get_weights()
        ]
        folded = _forward_into(reader, weights, features)
        if isinstance(folded, _Declined):
            return _Declined(folded.reason, folded.detail, near=True)
        plan.targets.append(reader.name)
        plan.via.extend(name for name in via if name not in plan.via)
        plan.weights[reader.name] = folded
        if not reader.layer_config.get("use_bias", True):
            plan.gained_bias.append(reader.name)
    return plan


def _fold_forward(
    model: Any,
    graph: _ModelGraph,
    entries: list[FoldEntry],
    new_weights: dict[str, list[np.ndarray]],
) -> None:
    """Fold the BNs the backward pass left forward, into every layer that reads them, and
    rewrite their entries. Repeated until nothing changes: removing ``BN -> BN``'s second BN
    gives the first a linear reader."""
    pending = {
        entry.name: index
        for index, entry in enumerate(entries)
        if entry.outcome is Outcome.LEFT and entry.name in graph.layers
    }
    declined: dict[str, _Declined] = {}
    progress = True
    while pending and progress:
        progress = False
        for name, index in list(pending.items()):
            outcome = _forward_fold(model, graph, graph.layers[name], new_weights)
            if isinstance(outcome, _Declined):
                declined[name] = outcome
                continue
            for target, weights in outcome.weights.items():
                new_weights[target] = weights
                graph.layers[target].layer_config["use_bias"] = True
            graph.bypass(name)
            entries[index] = FoldEntry(
                name,
                [_BATCHNORM],
                Outcome.FOLDED_INTO_NEXT,
                target=outcome.targets,
                via=outcome.via,
                detail="; ".join(f"'{target}' gained a bias" for target in outcome.gained_bias),
            )
            del pending[name]
            progress = True
    for name, index in pending.items():
        forward, entry = declined[name], entries[index]
        if forward.near:
            entry.reason = forward.reason
            entry.detail = f"{forward.detail} (backward: {entry.detail})"
        elif forward.reason in (Reason.CONSUMER_NOT_FOLDABLE, Reason.GRAPH_OUTPUT):
            entry.detail = f"{entry.detail}; forward: {forward.detail}"


def _nested_batchnorms(model: Any) -> Iterator[tuple[str, str]]:
    """``(bn name, nested model name)`` for every BN inside a model used as a layer."""
    for layer in model.layers:
        inner = getattr(layer, "layers", None)
        if inner is None:
            continue
        for sub in _all_layers(layer):
            if type(sub).__name__ == _BATCHNORM:
                yield sub.name, layer.name


def _all_layers(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        yield layer
        if getattr(layer, "layers", None) is not None:
            yield from _all_layers(layer)


def _rebuild(model: Any, config: dict[str, Any], has_lambda: bool) -> Any:
    scope: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if has_lambda:
        # The model is already in memory (the user allowed its code); rebuilding runs no new code.
        from keras.src.saving.serialization_lib import SafeModeScope

        scope = SafeModeScope(False)
    with scope:
        return type(model).from_config(config)


def fold_keras_model(model: Any) -> tuple[Any, list[FoldEntry]]:
    """A new Keras model with every foldable BatchNormalization folded into the linear layer
    before it (or, failing that, into the linear layers after it), and one ``FoldEntry`` per BN.

    The new model has the same inputs and outputs and their names: a folded BN that was a model
    output hands its name to the layer it was folded into.
    """
    keras, _ = import_keras()
    entries: list[FoldEntry] = []
    is_sequential = isinstance(model, keras.Sequential)
    try:
        config = _mutable_copy(model.get_config())
    except NotImplementedError:
        config = None
    functional = (
        config is not None
        and "layers" in config
        and (is_sequential or ("input_layers" in config and "output_layers" in config))
    )
    if config is None or not functional:
        for layer in _all_layers(model):
            if type(layer).__name__ == _BATCHNORM:
                entries.append(
                    FoldEntry(
                        layer.name,
                        [_BATCHNORM],
                        Outcome.LEFT,
                        reason=Reason.UNSUPPORTED_LAYER,
                        detail="the model is a subclassed keras.Model, which bnfold cannot rebuild",
                    )
                )
        return model, entries

    graph = _ModelGraph(config, sequential=is_sequential)
    new_weights: dict[str, list[np.ndarray]] = {}
    renames: dict[str, str] = {}  # producer name -> BN output name it takes over
    for name in list(graph.layers):
        bn = graph.layers.get(name)
        if bn is None or bn.class_name != _BATCHNORM or bn.entry.get("registered_name"):
            continue
        outcome = _decline_or_fold(model, graph, bn, new_weights)
        if isinstance(outcome, _Declined):
            entries.append(
                FoldEntry(
                    name,
                    [_BATCHNORM],
                    Outcome.LEFT,
                    reason=outcome.reason,
                    detail=outcome.detail,
                )
            )
            continue
        producer, folded = outcome
        producer_layer = graph.layers[producer]
        gained_bias = not producer_layer.layer_config.get("use_bias", True)
        producer_layer.layer_config["use_bias"] = True
        new_weights[producer] = folded
        was_output = name in graph.outputs
        graph.remove(name, producer)
        details = []
        if gained_bias:
            details.append(f"'{producer}' gained a bias")
        if was_output:
            renames[producer] = name
            details.append(f"'{producer}' is renamed '{name}' to keep the output name")
        entries.append(
            FoldEntry(
                name,
                [_BATCHNORM],
                Outcome.FOLDED_INTO_PREVIOUS,
                target=[producer],
                detail="; ".join(details),
            )
        )
    _fold_forward(model, graph, entries, new_weights)
    for bn_name, nested in _nested_batchnorms(model):
        entries.append(
            FoldEntry(
                bn_name,
                [_BATCHNORM],
                Outcome.LEFT,
                reason=Reason.UNSUPPORTED_LAYER,
                detail=f"is inside the nested model '{nested}'; bnfold folds top-level layers",
            )
        )
    for old, new in renames.items():
        graph.rename(old, new)
        if old in new_weights:
            new_weights[new] = new_weights.pop(old)

    has_lambda = any(type(layer).__name__ == "Lambda" for layer in _all_layers(model))
    try:
        rebuilt = _rebuild(model, config, has_lambda)
    except Exception as error:
        raise InputError(f"Keras cannot rebuild the folded model: {first_line(error)}") from error
    original_names = {new: old for old, new in renames.items()}
    for layer in rebuilt.layers:
        if layer.name in new_weights:
            layer.set_weights(new_weights[layer.name])
        else:
            layer.set_weights(
                model.get_layer(original_names.get(layer.name, layer.name)).get_weights()
            )
    return rebuilt, entries
