"""The sizes an ONNX graph fixes for its dynamic input dimensions, read from the graph alone.

The check runs a model on random inputs; a dimension nobody sized gets a guess (the batch 2,
then 16, 32, ...), which fails on a model that cannot run at it. Often the graph says the size:

- an elementwise op by a constant broadcasts the input with it: ``x * c`` with ``c`` of shape
  ``[80, 3]`` needs the last two dims of ``x`` at 80 and 3 (or 1, which a check should not
  pick);
- a weight contracts a dim: the ``K`` of ``MatMul(x, B[K, N])`` and of Gemm, the input
  channels of a Conv (``in/g * g``) or ConvTranspose (``in``);
- a Reshape to a constant target without ``-1`` fixes the one dynamic dim it does not copy.

The walk goes from each graph input through ops that keep its shape (activations, casts,
elementwise ops by constants) to the first that fixes a size; a size found for a named dim
holds for every input that names it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.constants import constant_value
from bnfold.graph import int_attr, node_label
from bnfold.specs import SizeHint, SizeHints

_BROADCASTING = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu"})
_SAME_SHAPE = frozenset(
    {"Identity", "Cast", "Relu", "LeakyRelu", "Elu", "Selu", "Sigmoid", "Tanh", "Softplus"}
    | {"Abs", "Neg", "Exp", "Log", "Sqrt", "Clip", "Dropout", "HardSigmoid", "HardSwish"}
    | {"Erf", "Gelu", "Softsign", "Floor", "Ceil", "Round", "Reciprocal", "Sin", "Cos"}
)
_MAX_STEPS = 16  # an input reaches the op that sizes it within a few steps, or not at all


def _constant(node: ir.Node, index: int) -> npt.NDArray[np.generic] | None:
    value = node.inputs[index] if index < len(node.inputs) else None
    return constant_value(value)


def _broadcast(node: ir.Node, index: int, rank: int) -> dict[int, SizeHint]:
    """Axes of a rank-``rank`` input that a constant it is broadcast with fixes."""
    if len(node.inputs) != 2:
        return {}
    const = _constant(node, 1 - index)
    if const is None or const.ndim > rank:
        return {}
    source = f"{node.op_type} {node_label(node)}'s constant {list(const.shape)}"
    offset = rank - const.ndim
    return {
        offset + axis: SizeHint(int(size), source)
        for axis, size in enumerate(const.shape)
        if size > 1
    }


def _contracted(node: ir.Node, index: int, rank: int) -> dict[int, SizeHint]:
    """The axis a constant weight contracts: MatMul's and Gemm's K, a Conv's channels."""
    op = node.op_type
    other = _constant(node, 1 - index) if op == "MatMul" else _constant(node, 1)
    if other is None or other.ndim < 2 or (op != "MatMul" and index != 0):
        return {}
    source = f"{op} {node_label(node)}'s weight {list(other.shape)}"
    if op == "MatMul":
        # x @ B: x's last axis is B's rows; A @ x: x's second to last is A's columns.
        axis, size = (rank - 1, other.shape[-2]) if index == 0 else (rank - 2, other.shape[-1])
    elif op == "Gemm":
        axis = 0 if int_attr(node, "transA", 0) else 1
        size = other.shape[1] if int_attr(node, "transB", 0) else other.shape[0]
    elif op == "Conv":
        axis, size = 1, other.shape[1] * int_attr(node, "group", 1)
    else:  # ConvTranspose
        axis, size = 1, other.shape[0]
    return {axis: SizeHint(int(size), source)} if axis >= 0 else {}


def _reshaped(node: ir.Node, dims: list[int | None]) -> dict[int, SizeHint]:
    """The one dynamic dim a Reshape to a constant target without ``-1`` fixes: the target's
    elements over those of the input's other dims (dims it copies with 0 cancel out)."""
    target = _constant(node, 1)
    if target is None or int_attr(node, "allowzero", 0):
        return {}
    sizes = [int(size) for size in target.reshape(-1)]
    if -1 in sizes:
        return {}
    copied = {axis for axis, size in enumerate(sizes) if size == 0}
    free = [axis for axis, dim in enumerate(dims) if dim is None and axis not in copied]
    known = math.prod(
        dim for axis, dim in enumerate(dims) if dim is not None and axis not in copied
    )
    elements = math.prod(size for size in sizes if size != 0)
    if len(free) != 1 or known == 0 or elements % known:
        return {}
    source = f"Reshape {node_label(node)}'s target {sizes}"
    return {free[0]: SizeHint(elements // known, source)}


def _fixed_by(node: ir.Node, index: int, dims: list[int | None]) -> dict[int, SizeHint]:
    if node.domain not in ("", "ai.onnx"):
        return {}
    if node.op_type in _BROADCASTING:
        return _broadcast(node, index, len(dims))
    if node.op_type in ("MatMul", "Gemm", "Conv", "ConvTranspose"):
        return _contracted(node, index, len(dims))
    if node.op_type == "Reshape" and index == 0:
        return _reshaped(node, dims)
    return {}


def _readers(value: ir.Value) -> Iterator[tuple[ir.Node, int]]:
    """Every (node, input index) reading ``value``, through ops that keep its shape."""
    pending, steps = [value], 0
    while pending and steps < _MAX_STEPS:
        current = pending.pop()
        for use in current.uses():
            steps += 1
            yield use.node, use.idx
            keeps = use.node.op_type in _SAME_SHAPE and use.idx == 0
            if keeps or (
                use.node.op_type in _BROADCASTING and _constant(use.node, 1 - use.idx) is not None
            ):
                pending.append(use.node.outputs[0])


def _input_hints(value: ir.Value) -> dict[int, SizeHint]:
    assert value.shape is not None
    dims = [dim if isinstance(dim, int) else None for dim in value.shape]
    found: dict[int, SizeHint] = {}
    for node, index in _readers(value):
        for axis, hint in _fixed_by(node, index, dims).items():
            if 0 <= axis < len(dims) and dims[axis] is None and axis not in found:
                found[axis] = hint
    return found


def size_hints(model: ir.Model) -> SizeHints:
    """The sizes ``model``'s graph fixes for its inputs' dynamic dims, by (input, axis)."""
    hints: SizeHints = {}
    named: dict[str, SizeHint] = {}
    inputs = [
        value
        for value in model.graph.inputs
        if value.shape is not None and value.const_value is None and value.name
    ]
    for value in inputs:
        for axis, hint in _input_hints(value).items():
            hints[(value.name or "", axis)] = hint
            dim = value.shape[axis]  # type: ignore[index]
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                named.setdefault(dim.value, hint)
    for value in inputs:  # a named dim has one size wherever it appears
        for axis, dim in enumerate(value.shape or ()):
            if isinstance(dim, ir.SymbolicDim) and dim.value in named:
                hints.setdefault((value.name or "", axis), named[dim.value])
    return hints


__all__ = ["size_hints"]
