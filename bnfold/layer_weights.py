"""The weights a fold may change, measured before and after it (``bnfold.weight_ranges``).

Before the fold, each linear layer's weight is measured once (its range and channel spread:
a few numbers, no copy kept, so the fold's peak memory does not grow); after it, the layers
the log names as targets are measured again and paired with their earlier numbers by node
name. Weight layouts (docs/arithmetic.md): Conv ``[out, in/g, k...]``, ConvTranspose
``[in, out/g, k...]`` (outputs per group), Gemm ``B`` ``[K, N]`` or ``[N, K]`` with
``transB``, MatMul by a constant 2-D ``[K, N]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from bnfold.constants import constant_value
from bnfold.foldlog import FoldEntry
from bnfold.graph import int_attr, iter_graphs, node_label
from bnfold.results import WeightRange
from bnfold.weight_ranges import WeightStats, quantization_warning, weight_range, weight_stats

LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class _Layout:
    output_axis: int
    groups: int


def _layout(node: ir.Node, rank: int) -> _Layout | None:
    if node.op_type == "Conv" and rank >= 3:
        return _Layout(0, 1)
    if node.op_type == "ConvTranspose" and rank >= 3:
        return _Layout(1, int_attr(node, "group", 1))
    if node.op_type == "Gemm" and rank == 2:
        return _Layout(0 if int_attr(node, "transB", 0) else 1, 1)
    if node.op_type == "MatMul" and rank == 2:
        return _Layout(1, 1)
    return None


def _linear_nodes(model: ir.Model) -> dict[str, ir.Node]:
    return {
        node_label(node): node
        for graph in iter_graphs(model.graph)
        for node in graph
        if node.op_type in LINEAR_OPS and node.domain in ("", "ai.onnx")
    }


def _measure(node: ir.Node) -> WeightStats | None:
    weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.dtype.kind != "f":
        return None
    layout = _layout(node, weight.ndim)
    if layout is None or weight.shape[0] % layout.groups:
        return None
    return weight_stats(weight, layout.output_axis, layout.groups)


class WeightSnapshot:
    """Every linear layer's weight numbers before a fold, by node name."""

    def __init__(self, model: ir.Model) -> None:
        self.before: dict[str, tuple[str, WeightStats]] = {}
        for label, node in _linear_nodes(model).items():
            stats = _measure(node)
            if stats is not None:
                self.before[label] = (node.op_type, stats)

    def changes(self, model: ir.Model, entries: list[FoldEntry]) -> list[WeightRange]:
        """One row per layer a folded entry names as its target, in log order."""
        now = _linear_nodes(model)
        targets = dict.fromkeys(t for entry in entries if entry.folded for t in entry.target)
        rows = []
        for label in targets:
            node, earlier = now.get(label), self.before.get(label)
            after = _measure(node) if node is not None else None
            if earlier is not None and after is not None:
                rows.append(weight_range(label, earlier[0], earlier[1], after))
        return rows


def range_report(
    snapshot: WeightSnapshot, model: ir.Model, entries: list[FoldEntry]
) -> tuple[list[WeightRange], str]:
    """The rows and the warning line (see ``bnfold.weight_ranges``)."""
    rows = snapshot.changes(model, entries)
    return rows, quantization_warning(rows)


__all__ = ["LINEAR_OPS", "WeightSnapshot", "range_report"]
