"""The weights a fold may change, measured before and after it (``bnfold.weight_ranges``).

Before the fold, each linear layer's weight is measured (its largest |w| and the range of
each output channel: a few numbers a layer) and only those are kept: holding the tensors
themselves until the fold is done would keep every rewritten layer's old weights alive beside
the new ones, twice the weights at the peak of a large model. After it, only the layers the
log names as targets are measured again, paired by node name. Weight layouts
(docs/arithmetic.md): Conv ``[out, in/g, k...]``, ConvTranspose ``[in, out/g, k...]`` (outputs
per group), Gemm ``B`` ``[K, N]`` or ``[N, K]`` with ``transB``, MatMul by a constant 2-D
``[K, N]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
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


def _weight(node: ir.Node) -> ir.Value | None:
    return node.inputs[1] if len(node.inputs) > 1 else None


def _held(value: ir.Value | None) -> ir.TensorProtocol | npt.NDArray[np.generic] | None:
    """What stands for ``value``'s array until the fold is done (module docstring)."""
    if value is None:
        return None
    return value.const_value if value.const_value is not None else constant_value(value)


def _measure(
    node: ir.Node, weight: ir.TensorProtocol | npt.NDArray[np.generic] | None
) -> WeightStats | None:
    array = weight.numpy() if isinstance(weight, ir.TensorProtocol) else weight
    if array is None or array.dtype.kind != "f":
        return None
    layout = _layout(node, array.ndim)
    if layout is None or array.shape[0] % layout.groups:
        return None
    return weight_stats(array, layout.output_axis, layout.groups)


class WeightSnapshot:
    """Every linear layer's weight statistics before a fold, by node name."""

    def __init__(self, model: ir.Model) -> None:
        self.before: dict[str, WeightStats] = {}
        for label, node in _linear_nodes(model).items():
            stats = _measure(node, _held(_weight(node)))
            if stats is not None:
                self.before[label] = stats

    def changes(self, model: ir.Model, entries: list[FoldEntry]) -> list[WeightRange]:
        """One row per layer a folded entry names as its target, in log order."""
        now = _linear_nodes(model)
        targets = dict.fromkeys(t for entry in entries if entry.folded for t in entry.target)
        rows = []
        for label in targets:
            node = now.get(label)
            if node is None or label not in self.before:
                continue
            before = self.before[label]
            after = _measure(node, constant_value(_weight(node)))
            if after is not None:
                rows.append(weight_range(label, node.op_type, before, after))
        self.before.clear()
        return rows


def range_report(
    snapshot: WeightSnapshot, model: ir.Model, entries: list[FoldEntry]
) -> tuple[list[WeightRange], str]:
    """The rows and the warning line (see ``bnfold.weight_ranges``)."""
    rows = snapshot.changes(model, entries)
    return rows, quantization_warning(rows)


__all__ = ["LINEAR_OPS", "WeightSnapshot", "range_report"]
