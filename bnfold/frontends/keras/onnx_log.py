"""The log of a Keras model written as ONNX: the fold core runs once more on the converted
graph (tf2onnx writes some BNs as Mul/Add the Keras pass could not reach), and every entry
is made true of that ONNX graph."""

from __future__ import annotations

import re

import onnx_ir as ir

from bnfold.foldlog import FoldEntry
from bnfold.frontends.base import FoldOutcome


def _onnx_entries_of_layer(layer: str, entries: list[FoldEntry]) -> list[FoldEntry]:
    """The ONNX-pass entries whose node names come from Keras layer ``layer``.

    tf2onnx names nodes by TensorFlow name scope, which is the layer name plus a suffix that
    keeps scopes unique (``batch_normalization_1`` may become ``batch_normalization_1_2``), so
    the suffixed form is tried first and the bare name only when it finds nothing.
    """
    for pattern in (rf"(^|/){re.escape(layer)}_\d+(/|$)", rf"(^|/){re.escape(layer)}(/|$)"):
        matches = [entry for entry in entries if re.search(pattern, entry.name)]
        if matches:
            return matches
    return []


def merge_stage_logs(
    keras_entries: list[FoldEntry], onnx_entries: list[FoldEntry]
) -> list[FoldEntry]:
    """One entry per BN: a BN the Keras pass left that the ONNX pass then folded is reported
    as folded under its Keras name; a BN left by both is reported once, by the Keras pass."""
    merged = list(keras_entries)
    onnx_rest = list(onnx_entries)
    for index, entry in enumerate(merged):
        if entry.folded:
            continue
        matches = _onnx_entries_of_layer(entry.name, onnx_rest)
        for other in matches:
            onnx_rest.remove(other)
        folded = next((other for other in matches if other.folded), None)
        if folded is not None:
            folded.name = entry.name
            merged[index] = folded
    return merged + onnx_rest


def converted_outcome(outcome: FoldOutcome, onnx_model: ir.Model) -> FoldOutcome:
    """Fold what tf2onnx left foldable in ``onnx_model`` and merge the two logs."""
    from bnfold.fold import fold_model
    from bnfold.frontends.onnx import infer_shapes

    result = fold_model(infer_shapes(onnx_model))
    return FoldOutcome(result.model, merge_stage_logs(outcome.entries, result.entries))
