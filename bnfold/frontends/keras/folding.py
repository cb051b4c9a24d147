"""Fold a Keras model with the shared fold core: lower it (``lowering.py``), let
``bnfold.fold.fold_model`` decide and rewrite, then write the result back into Keras: folded
BN layers dropped from their model's config (nested ones from the nested model's), linear
layers given their folded weights, and one log entry per BatchNormalization layer of the
input, named by its path (``base/bn_Conv1``)."""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import onnx_ir as ir

from bnfold.fold import ALL_FOLDS, fold_model
from bnfold.foldlog import FoldEntry, Outcome, Reason
from bnfold.frontends.base import FoldOutcome
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
from bnfold.frontends.keras.weight_rows import keras_rows, of_folded
from bnfold.frontends.keras.write_back import RewriteError, Rewrites, apply_rewrites
from bnfold.layer_weights import WeightSnapshot
from bnfold.results import WeightRange
from bnfold.settings import FoldSettings

_LOG = logging.getLogger("bnfold")


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
        if type(layer).__name__ == BATCHNORM:  # every BN of the input has its entry
            entries.append(
                FoldEntry(
                    path,
                    [BATCHNORM],
                    Outcome.LEFT,
                    reason=Reason.UNSUPPORTED_LAYER,
                    detail="bnfold's walk from the model's outputs did not reach it",
                    stage="keras",
                )
            )
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


def _rewrites(lowered: Lowered) -> Rewrites:
    changes = Rewrites()
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
        uses_bias = bool(source.get_config().get("use_bias", True))
        if uses_bias and not has_bias and len(before) == len(after) + 1:
            # The core dropped a bias Add that a zero shift made all zeros; the layer keeps
            # its bias (zeros), or Keras would refuse the rebuilt layer's weights.
            after, has_bias = [*after, np.zeros_like(before[-1])], True
        unchanged = len(after) == len(before) and all(
            a.shape == b.shape and np.array_equal(a, b) for a, b in zip(after, before, strict=True)
        )
        if not unchanged:
            changes.weights[record.path] = after
            if has_bias and not uses_bias:
                changes.gained_bias.add(record.path)
    return changes


def _unwalkable(model: Any, why: str) -> FoldOutcome:
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
    return FoldOutcome(model, entries, weight_ranges=[])


def _decide(
    model: Any, settings: FoldSettings
) -> tuple[list[FoldEntry], Rewrites, list[WeightRange]]:
    """The log, the Keras rewrites and the weight ranges of the fold core's decisions
    (nothing is rebuilt)."""
    lowered = lower_model(model)
    graph_model = ir.Model(lowered.graph, ir_version=10)
    snapshot = WeightSnapshot(graph_model)
    result = fold_model(graph_model, settings=settings)
    rows = keras_rows(lowered, snapshot.changes(graph_model, result.entries))
    entries = _log(lowered, result.entries, model)
    changes = _rewrites(lowered)
    for entry in entries:
        gained = [t for t in entry.target if t in changes.gained_bias]
        if gained and entry.folded:
            note = "; ".join(f"'{t}' gained a bias" for t in gained)
            entry.detail = f"{entry.detail}; {note}" if entry.detail else note
    return entries, changes, of_folded(rows, entries)


def _not_rewritten(entries: list[FoldEntry], why: str) -> list[FoldEntry]:
    """The log of a model handed back unchanged: each BN the core would have folded is left
    with ``why`` (an ONNX output's own pass may still fold it)."""
    for entry in entries:
        if entry.folded:
            entry.outcome, entry.target, entry.via = Outcome.LEFT, [], []
            entry.reason, entry.detail = Reason.REBUILD_FAILED, why
    return entries


def _subclassed(model: Any) -> bool:
    try:
        config = model.get_config()
    except NotImplementedError:
        return True
    return not (isinstance(config, dict) and "layers" in config)


def fold_keras_model(model: Any, settings: FoldSettings = ALL_FOLDS) -> tuple[Any, list[FoldEntry]]:
    """``fold_keras``'s model and log."""
    outcome = fold_keras(model, settings)
    return outcome.model, outcome.entries


def fold_keras(model: Any, settings: FoldSettings = ALL_FOLDS) -> FoldOutcome:
    """A new Keras model with every BN the fold core can fold folded (into the layer before
    it, or into every layer after it), one entry per BN layer, and one weight range row per
    layer whose weights a fold changed (``weight_rows.py``). The model's inputs and
    outputs keep their names. ``settings.rebuild`` false only decides: the model comes back as it
    is, with the log (and the rows) of what a rebuild would do (``bnfold inspect``).

    The Keras-level rewrite is an optimisation: a model bnfold cannot walk or Keras cannot
    rebuild comes back unchanged, each BN left with the reason, and ``model`` is never
    changed; an ONNX output's own pass then folds what the conversion lets it."""
    if _subclassed(model):
        return _unwalkable(
            model, "the model is a subclassed keras.Model, which bnfold cannot rebuild"
        )
    try:
        entries, changes, rows = _decide(model, settings)
    except Exception as error:  # a layer Keras describes in a way bnfold did not expect
        _LOG.debug("Keras model not walkable", exc_info=True)
        return _unwalkable(model, f"bnfold cannot follow the model's graph: {first_line(error)}")
    if not settings.rebuild or (not changes.dropped and not changes.weights):
        # Nothing to rebuild (a custom class may not even rebuild).
        return FoldOutcome(model, entries, weight_ranges=rows)
    try:
        folded, renames = apply_rewrites(model, changes)
    except RewriteError as error:
        _LOG.debug("Keras rewrite not applied", exc_info=True)
        return FoldOutcome(model, _not_rewritten(entries, str(error)), weight_ranges=[])
    for entry in entries:
        producer = next((old for old, new in renames.items() if new == entry.name), None)
        if producer is not None:
            note = f"'{producer}' is renamed '{entry.name}' to keep the output name"
            entry.detail = f"{entry.detail}; {note}" if entry.detail else note
    return FoldOutcome(folded, entries, weight_ranges=rows)
