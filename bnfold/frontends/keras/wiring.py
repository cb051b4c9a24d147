"""The wiring of a Sequential or Functional model, read from (a copy of) its config and
rewired in place as folded BN layers are dropped; Keras rebuilds the model from it."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


def layer_name(layer_config: dict[str, Any]) -> str:
    return str(layer_config.get("name") or layer_config["config"].get("name", "?"))


@dataclass
class GraphLayer:
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


def mutable_copy(config: Any) -> Any:
    """A deep copy with tuples turned into lists, so that wiring can be rewritten in place."""
    if isinstance(config, dict):
        return {key: mutable_copy(value) for key, value in config.items()}
    if isinstance(config, list | tuple):
        return [mutable_copy(value) for value in config]
    return copy.deepcopy(config)


def _is_history(value: Any) -> bool:
    """``[layer, node_index, tensor_index]`` (Keras 3), or with call kwargs as a fourth item
    (how Keras 2 configs list a call's inputs)."""
    return (
        isinstance(value, list | tuple)
        and len(value) in (3, 4)
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and isinstance(value[2], int)
        and (len(value) == 3 or isinstance(value[3], dict))
    )


def _histories(node: Any) -> Iterator[list[Any]]:
    """Every ``[layer, node_index, tensor_index]`` inside an inbound node: Keras 3's
    ``keras_history`` entries, and Keras 2's ``[layer, node, tensor, kwargs]`` lists."""
    if isinstance(node, list) and _is_history(node):
        yield node
        if len(node) == 4:  # a Keras 2 call's kwargs may hold inputs too (TFOpLambda's ``y``)
            yield from _histories(node[3])
    elif isinstance(node, dict):
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


class ModelGraph:
    """The wiring of a Sequential or Functional model, read from (a copy of) its config and
    rewired in place as BN layers are removed."""

    def __init__(self, config: dict[str, Any], sequential: bool) -> None:
        self.config = config
        self.sequential = sequential
        self.layers: dict[str, GraphLayer] = {}
        entries = config["layers"]
        previous: str | None = None
        for entry in entries:
            name = layer_name(entry)
            if sequential:
                inputs = [previous] if previous is not None else []
                calls = 1
            else:
                nodes = entry.get("inbound_nodes") or []
                calls = len(nodes)
                inputs = [str(h[0]) for h in _histories(nodes[:1])]
            self.layers[name] = GraphLayer(name, entry["class_name"], entry, inputs, calls)
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
                        # Where the tensor comes from changes; the consumer's call kwargs
                        # (a Keras 2 history's fourth item) stay its own.
                        found[:3] = list(history)[:3]

    def drop(self, name: str) -> str | None:
        """Drop a folded BN layer: its readers, and the model outputs it wrote, take what fed
        it. Returns the layer that now writes a model output in its place, if any."""
        layer = self.layers[name]
        history = next(_histories((layer.entry.get("inbound_nodes") or [])[:1]), None)
        source = layer.inputs[0]
        was_output = name in self.outputs
        self._reroute(name, source, history)
        self.outputs = [source if output == name else output for output in self.outputs]
        if not self.sequential and history is not None:
            for found in _output_histories(self.config["output_layers"]):
                if found[0] == name:
                    found[:] = list(history)[:3]
        return source if was_output else None

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
