"""Fold a Keras model with the shared fold core: lower it (``lowering.py``), let
``bnfold.fold.fold_model`` decide and rewrite, then write the result back into Keras: folded
BN layers dropped from their model's config (nested ones from the nested model's), linear
layers given their folded weights, and one log entry per BatchNormalization layer of the
input, named by its path (``base/bn_Conv1``)."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from bnfold.errors import InputError
from bnfold.fold import fold_model
from bnfold.foldlog import FoldEntry, Outcome, Reason
from bnfold.frontends.keras.emit import LINEAR_LAYERS
from bnfold.frontends.keras.lowering import (
    BATCHNORM,
    LayerRecord,
    Lowered,
    all_layers,
    hidden_batchnorms,
    is_model,
    lower_model,
)
from bnfold.frontends.keras.read_back import read_back
from bnfold.frontends.keras.runtime import first_line
from bnfold.frontends.keras.wiring import ModelGraph, mutable_copy


@dataclass
class _Rewrites:
    """What the fold changed, in Keras terms."""

    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)
    gained_bias: set[str] = field(default_factory=set)
    dropped: list[LayerRecord] = field(default_factory=list)


def _keras_paths(lowered: Lowered, labels: list[str], linear_only: bool) -> list[str]:
    """Node labels of the core's log as Keras layer paths (inserted Transposes dropped)."""
    paths: list[str] = []
    for label in labels:
        owner = lowered.owner_of(label)
        if owner is None or owner[1] in ("nchw", "nhwc"):  # Transposes bnfold inserted
            continue
        record = owner[0]
        if linear_only and record.class_name not in LINEAR_LAYERS:
            continue
        if record.path not in paths:
            paths.append(record.path)
    return paths


_ACTIVATIONS = frozenset({"Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax"})
# A node name, and the "(OpType)" the core may write after it.
_TOKEN = re.compile(r"([\w/#.:-]+)( \(\w+\))?")


def _in_keras_words(detail: str, lowered: Lowered) -> str:
    """The core's reason with node names said as Keras layers ("an activation (relu of Dense
    'lin')" instead of "lin/activation")."""

    def describe(match: re.Match[str]) -> str:
        token = match.group(1)
        node_name = re.sub(r":\d+$", "", token.rstrip(".,"))
        owner = lowered.owner_of(node_name)
        if owner is None:
            return match.group(0)
        record, role = owner
        tail = re.sub(r"^:\d+", "", token[len(node_name) :])
        layer = f"{record.class_name} '{record.path}'"
        if role == "activation":
            config = getattr(record.layer, "layer", record.layer).get_config()
            return f"an activation ({config.get('activation')} of {layer}){tail}"
        if record.class_name in _ACTIVATIONS:
            return f"an activation ({layer}){tail}"
        return layer + tail

    return _TOKEN.sub(describe, detail).replace("a graph output", "a model output")


def _shared_layer_in(lowered: Lowered, core: FoldEntry) -> LayerRecord | None:
    """The shared layer whose weights the core found not constant (they are graph inputs
    because one set of weights serves every call)."""
    if core.reason is not Reason.WEIGHT_NOT_CONSTANT:
        return None
    for record in lowered.records.values():
        if record.calls > 1 and any(f"{record.path}{c}" in core.detail for c in "/#"):
            return record
    return None


def _entry_for(record: LayerRecord, lowered: Lowered, by_name: dict[str, FoldEntry]) -> FoldEntry:
    entry = FoldEntry(record.path, [BATCHNORM], Outcome.LEFT, stage="keras")
    if record.skip is not None:
        entry.reason, entry.detail = record.skip.reason, record.skip.detail
        return entry
    if record.calls > 1:
        entry.reason = Reason.UNSUPPORTED_LAYER
        entry.detail = f"is a shared layer called {record.calls} times"
        return entry
    core = by_name.get(record.nodes[""].name or "") if "" in record.nodes else None
    if core is None and record.chained_to is not None:
        core = by_name.get(record.chained_to)
        if core is not None:
            entry.detail = f"together with '{record.chained_to}'; "
    if core is None:
        entry.reason = Reason.NO_LINEAR_NEIGHBOUR
        entry.detail = "no rule matched it"
        return entry
    entry.outcome, entry.reason = core.outcome, core.reason
    shared = _shared_layer_in(lowered, core)
    if shared is not None:
        feeder = record.nodes[""].inputs[0]
        writer = feeder.producer() if feeder is not None else None
        before = writer is not None and writer.metadata_props.get("keras_layer") == shared.path
        entry.reason = Reason.SHARED_OUTPUT if before else Reason.CONSUMER_NOT_FOLDABLE
        entry.detail = (
            f"{shared.class_name} '{shared.path}' is a shared layer called {shared.calls} "
            "times: one set of weights serves every call"
        )
        return entry
    entry.target = _keras_paths(lowered, core.target, linear_only=True)
    entry.via = _keras_paths(lowered, core.via, linear_only=False)
    entry.detail += _in_keras_words(core.detail, lowered)
    return entry


def _log(lowered: Lowered, core_entries: list[FoldEntry], model: Any) -> list[FoldEntry]:
    """One entry per BN layer of the input, in model order; BNs inside layers the front end
    cannot look into (custom layers, wrappers of other layers) are left with that reason."""
    by_name = {entry.name: entry for entry in core_entries}
    entries = []
    for path, layer in all_layers(model):
        record = lowered.records.get(path)
        if record is not None and record.is_batchnorm:
            entries.append(_entry_for(record, lowered, by_name))
            continue
        if type(layer).__name__ == BATCHNORM:  # not reached from the outputs
            continue
        for name in hidden_batchnorms(layer) if not is_model(layer) else []:
            entries.append(
                FoldEntry(
                    f"{path}/{name}",
                    [BATCHNORM],
                    Outcome.LEFT,
                    reason=Reason.UNSUPPORTED_LAYER,
                    detail=f"is inside {type(layer).__name__} '{path}', which bnfold cannot "
                    "look into",
                    stage="keras",
                )
            )
    return entries


def _rewrites(lowered: Lowered) -> _Rewrites:
    changes = _Rewrites()
    for record in lowered.records.values():
        if record.is_batchnorm and "" in record.nodes and record.nodes[""].graph is None:
            changes.dropped.append(record)
        if record.class_name not in LINEAR_LAYERS or record.calls != 1:
            continue
        if "" not in record.nodes or not record.rewritten():
            continue
        source = getattr(record.layer, "layer", record.layer)
        before = [np.asarray(w) for w in source.get_weights()]
        after, has_bias = read_back(record.class_name, record.nodes, before)
        unchanged = len(after) == len(before) and all(
            a.shape == b.shape and np.array_equal(a, b) for a, b in zip(after, before, strict=True)
        )
        if not unchanged:
            changes.weights[record.path] = after
            if has_bias and not source.get_config().get("use_bias", True):
                changes.gained_bias.add(record.path)
    return changes


class _Configs:
    """The model's config and the wiring of each (nested) model in it, by path."""

    def __init__(self, model: Any) -> None:
        self.config = mutable_copy(model.get_config())
        self.graphs = {"": ModelGraph(self.config, sequential=_is_sequential(model))}

    def graph(self, owner: str) -> ModelGraph:
        if owner not in self.graphs:
            parent, _, name = owner.rpartition("/")
            layer = self.graph(parent).layers[name]
            sequential = layer.class_name == "Sequential"
            self.graphs[owner] = ModelGraph(layer.layer_config, sequential=sequential)
        return self.graphs[owner]

    def layer_config(self, path: str) -> dict[str, Any]:
        owner, _, name = path.rpartition("/")
        config = self.graph(owner).layers[name].layer_config
        inner = config.get("layer")  # TimeDistributed
        return inner["config"] if isinstance(inner, dict) and "config" in inner else config


def _is_sequential(model: Any) -> bool:
    return type(model).__name__ == "Sequential"


def _apply(model: Any, changes: _Rewrites) -> tuple[Any, dict[str, str]]:
    """The folded model, rebuilt from the rewired config with the new weights."""
    configs = _Configs(model)
    for path in changes.gained_bias:
        configs.layer_config(path)["use_bias"] = True
    renames: dict[str, str] = {}
    for record in changes.dropped:
        source = configs.graph(record.owner).drop(record.name)
        if source is not None and record.owner == "" and source in configs.graphs[""].layers:
            renames[source] = record.name  # the output keeps its name
    root = configs.graphs[""]
    for old, new in renames.items():
        root.rename(old, new)
    try:
        rebuilt = _rebuild(model, configs.config)
    except Exception as error:
        raise InputError(f"Keras cannot rebuild the folded model: {first_line(error)}") from error
    _copy_weights(model, rebuilt, changes)
    return rebuilt, renames


def _copy_weights(model: Any, rebuilt: Any, changes: _Rewrites) -> None:
    """Each rebuilt layer gets the folded weights of its original, or the original's own.
    Layers are paired by position (the rebuilt model lists the original's layers in order,
    less the BNs dropped): a renamed output layer, or a custom layer Keras renames on
    rebuilding, still finds its original."""
    dropped = {record.path for record in changes.dropped}
    before = [(p, layer) for p, layer in all_layers(model) if p not in dropped]
    after = list(all_layers(rebuilt))
    if len(before) != len(after):
        raise InputError(
            f"Keras rebuilt the folded model with {len(after)} layers, expected {len(before)}"
        )
    for (path, layer), (_, new_layer) in zip(before, after, strict=True):
        if not is_model(layer):
            weights = changes.weights.get(path)
            new_layer.set_weights(weights if weights is not None else layer.get_weights())


def _rebuild(model: Any, config: dict[str, Any]) -> Any:
    scope: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if any(type(layer).__name__ == "Lambda" for _, layer in all_layers(model)):
        # The model is in memory already (the user allowed its code): no new code runs.
        from keras.src.saving.serialization_lib import SafeModeScope

        scope = SafeModeScope(False)
    with scope:
        return type(model).from_config(config)


def _unwalkable(model: Any, why: str) -> tuple[Any, list[FoldEntry]]:
    entries = [
        FoldEntry(
            path,
            [BATCHNORM],
            Outcome.LEFT,
            reason=Reason.UNSUPPORTED_LAYER,
            detail=why,
            stage="keras",
        )
        for path, layer in all_layers(model)
        if type(layer).__name__ == BATCHNORM
    ]
    return model, entries


def fold_keras_model(model: Any) -> tuple[Any, list[FoldEntry]]:
    """A new Keras model with every BN the fold core can fold folded (into the layer before
    it, or into every layer after it), and one entry per BN layer. The model's inputs and
    outputs keep their names."""
    try:
        config_ok = isinstance(model.get_config(), dict) and "layers" in model.get_config()
    except NotImplementedError:
        config_ok = False
    if not config_ok:
        return _unwalkable(
            model, "the model is a subclassed keras.Model, which bnfold cannot rebuild"
        )
    try:
        lowered = lower_model(model)
    except (ValueError, AttributeError, IndexError) as error:
        return _unwalkable(model, f"bnfold cannot follow the model's graph: {first_line(error)}")
    result = fold_model(ir.Model(lowered.graph, ir_version=10))
    entries = _log(lowered, result.entries, model)
    changes = _rewrites(lowered)
    for entry in entries:
        gained = [t for t in entry.target if t in changes.gained_bias]
        if gained and entry.folded:
            note = "; ".join(f"'{t}' gained a bias" for t in gained)
            entry.detail = f"{entry.detail}; {note}" if entry.detail else note
    if not changes.dropped and not changes.weights:
        return model, entries  # nothing to rebuild (a custom class may not even rebuild)
    folded, renames = _apply(model, changes)
    for entry in entries:
        producer = next((old for old, new in renames.items() if new == entry.name), None)
        if producer is not None:
            note = f"'{producer}' is renamed '{entry.name}' to keep the output name"
            entry.detail = f"{entry.detail}; {note}" if entry.detail else note
    return folded, entries
