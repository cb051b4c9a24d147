"""The log of a Keras model written as ONNX, made true of that ONNX file.

The fold core runs once more on the converted graph: tf2onnx writes some BNs the Keras pass
left as Mul/Add it can now reach (a shared Dense's weight is copied per call in ONNX), and
TensorFlow's graph optimiser folds others into a convolution during conversion. tf2onnx names
nodes by TensorFlow name scope, the Keras layer name plus a suffix that keeps scopes unique
(``bn`` may become ``bn_1``), which is how an ONNX node is traced to its Keras layer.
"""

from __future__ import annotations

import glob
import json
import re

import onnx_ir as ir

from bnfold.fold import ALL_FOLDS
from bnfold.foldlog import AFFINE, FoldEntry, Outcome, count_entries
from bnfold.frontends.base import FoldOutcome
from bnfold.settings import FoldSettings


def _scope_patterns(path: str) -> list[re.Pattern[str]]:
    layer = re.escape(path.rsplit("/", 1)[-1])
    return [re.compile(rf"(^|/){layer}_\d+(/|$)"), re.compile(rf"(^|/){layer}(/|$)")]


def _matches(path: str, names: list[str]) -> list[int]:
    """Indices of ``names`` in layer ``path``'s scope: the suffixed scope when it matches
    anything, else the bare name."""
    for pattern in _scope_patterns(path):
        found = [index for index, name in enumerate(names) if pattern.search(name)]
        if found:
            return found
    return []


def _converted(entry: FoldEntry) -> FoldEntry:
    entry.outcome, entry.reason, entry.target, entry.via = (
        Outcome.REMOVED_BY_CONVERTER,
        None,
        [],
        [],
    )
    entry.detail = f"the Keras pass had left it: {entry.detail}"
    return entry


def merge_stage_logs(
    keras_entries: list[FoldEntry],
    onnx_entries: list[FoldEntry],
    affine_names: list[str],
    layers_known: bool = True,
    applied: bool = True,
) -> list[FoldEntry]:
    """One entry per Keras BN, true of the ONNX graph: a BN the Keras pass left is folded if
    the ONNX pass folded what tf2onnx wrote for it, removed by the converter if no affine of
    its scope is left in the graph (``affine_names``), else left as the Keras pass said. ONNX affines that belong to no
    Keras BN (a conv bias ``Add``, a custom layer's constant ``Mul``, a Normalization layer's
    per-channel ``Sub``/``Div``) are listed apart, and only when folded. Without Keras layers
    to count (``layers_known`` false: a SavedModel's bare signature), the ONNX pass's own
    entries are the log. Where the Keras folds were decided but not ``applied`` (``inspect``
    converts the model as it is), what the ONNX pass did with a BN the Keras pass folds is
    that BN's, not another affine's."""
    merged = list(keras_entries)
    rest = list(onnx_entries)
    for index, entry in enumerate(merged):
        if entry.folded and applied:
            continue
        mine = [rest[i] for i in _matches(entry.name, [e.name for e in rest])]
        for other in mine:
            rest.remove(other)
        if entry.folded:
            continue
        folded = next((other for other in mine if other.folded), None)
        if folded is not None:
            folded.name, folded.kind = entry.name, entry.kind
            merged[index] = folded
        elif not mine and not _matches(entry.name, affine_names):
            merged[index] = _converted(entry)
    if not layers_known:
        return merged + rest
    for other in rest:
        other.kind = AFFINE
    return merged + [other for other in rest if other.folded]


def _affine_node_names(model: ir.Model) -> list[str]:
    """Names of the nodes that could still be a BN in the converted graph: its affine chains
    (BatchNormalization nodes, Mul/Add by constants). Other nodes may carry a BN's scope too
    (tf2onnx names a Transpose it moves after the op it was next to) without being it."""
    from bnfold.graph import iter_graphs
    from bnfold.rules.affines import find_affine_chains

    return [
        node.name or ""
        for graph in iter_graphs(model.graph)
        for chain in find_affine_chains(graph)
        for node in chain.nodes
    ]


def _converted_settings(
    entries: list[FoldEntry], model: ir.Model, settings: FoldSettings, layers_known: bool
) -> FoldSettings:
    """The settings of the pass over the converted graph: an affine in the scope of a Keras
    BN the user kept stays too, kept by its exact name. Without Keras layers (a SavedModel's
    bare signature) the user's patterns name the graph's own BNs."""
    from bnfold.graph import iter_graphs
    from bnfold.rules.affines import find_affine_chains

    # By pattern, not by reason: a kept BN the Keras pass left for another reason (a shared
    # layer) must not fold here either.
    kept = [entry.name for entry in entries if settings.kept_by(entry.name) is not None]
    labels = [
        chain.label
        for graph in iter_graphs(model.graph)
        for chain in (find_affine_chains(graph) if kept else [])
        if any(_matches(path, [node.name or "" for node in chain.nodes]) for path in kept)
    ]
    own = () if layers_known else settings.keep
    return FoldSettings(keep=(*own, *map(glob.escape, labels)), forward=settings.forward)


def converted_outcome(
    outcome: FoldOutcome,
    onnx_model: ir.Model,
    *,
    layers_known: bool = True,
    settings: FoldSettings = ALL_FOLDS,
) -> FoldOutcome:
    """Fold what tf2onnx left foldable in ``onnx_model`` and merge the two logs; the model's
    ``bnfold`` metadata then counts the merged log. The weight ranges are the Keras pass's
    and this pass's (named by ONNX node, as its entries' targets are)."""
    from bnfold.fold import METADATA_KEY, fold_model
    from bnfold.layer_weights import WeightSnapshot

    onnx_settings = _converted_settings(outcome.entries, onnx_model, settings, layers_known)
    snapshot = WeightSnapshot(onnx_model)
    result = fold_model(onnx_model, settings=onnx_settings)  # keras_to_onnx inferred shapes
    affines = _affine_node_names(result.model)
    entries = merge_stage_logs(
        outcome.entries, result.entries, affines, layers_known, applied=outcome.applied
    )
    # Rows of this pass's own entries only: where the Keras folds were decided but not applied
    # (inspect), this pass also folds their BNs, whose rows the Keras pass already gave.
    ours = [entry for entry in entries if entry.stage != "keras"]
    rows = [*(outcome.weight_ranges or []), *snapshot.changes(result.model, ours)]
    counts = count_entries(entries)
    if any(entry.folded for entry in entries):
        result.model.metadata_props[METADATA_KEY] = json.dumps(
            {key: value for key, value in counts.items() if key != "left_by_reason"},
            sort_keys=True,
        )
    return FoldOutcome(result.model, entries, weight_ranges=rows)
