"""The weight ranges of a Keras fold (``bnfold.weight_ranges``), one row per Keras layer.

The core folds the lowered graph (``lowering.py``), where each kernel is already in the ONNX
layout ``bnfold.layer_weights`` reads output channels from: Dense as Gemm / MatMul
``[in, out]``, ConvND as Conv ``[out, in/g, k...]``, DepthwiseConvND as a grouped Conv
``[in*mult, 1, k...]`` (output ``c*mult + m``), SeparableConvND as that Conv and a 1x1 Conv,
ConvNDTranspose as ConvTranspose ``[in, out, k...]``. So the lowered graph is measured around
``fold_model`` as an ONNX model is, and each row then says it in Keras words: the layer's
path (as the log's targets name it) and its class (``SeparableConv2D (depthwise)`` for a
separable layer's depthwise kernel). The moved kernel holds the same numbers per output
channel as the one written back, so the rows are true of the Keras weights.
"""

from __future__ import annotations

import dataclasses

from bnfold.foldlog import FoldEntry
from bnfold.frontends.keras.lowering import Lowered
from bnfold.results import WeightRange


def keras_rows(lowered: Lowered, rows: list[WeightRange]) -> list[WeightRange]:
    """``rows`` (named by lowered node) named by the Keras layer each node was written for."""
    named = []
    for row in rows:
        owner = lowered.owner_of(row.layer)
        if owner is None:  # every linear node is a layer's; nothing else is worth a row
            continue
        record, role = owner
        op = f"{record.class_name} ({role})" if role else record.class_name
        named.append(dataclasses.replace(row, layer=record.path, op=op))
    return named


def of_folded(rows: list[WeightRange], entries: list[FoldEntry]) -> list[WeightRange]:
    """The rows of layers a folded entry names as its target: a fold the write-back did not
    apply (the entry left ``rebuild_failed``) changed no Keras weight."""
    targets = {target for entry in entries if entry.folded for target in entry.target}
    return [row for row in rows if row.layer in targets]


__all__ = ["keras_rows", "of_folded"]
