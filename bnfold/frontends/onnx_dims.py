"""The sizes an ONNX graph fixes for its dynamic input dimensions, read from the graph alone.

The check runs a model on random inputs; a dimension nobody sized gets a guess (the batch 2,
then 16, 32, ...), which fails on a model that cannot run at it. Often the graph says the size:

- an elementwise op by a constant broadcasts the input with it: ``x * c`` with ``c`` of shape
  ``[80, 3]`` needs the last two dims of ``x`` at 80 and 3 (or 1, which a check should not
  pick);
- a weight contracts a dim: the ``K`` of ``MatMul(x, B[K, N])`` and of Gemm, the input
  channels of a Conv (``in/g * g``) or ConvTranspose (``in``);
- a Reshape to a constant target without ``-1`` fixes the one dynamic dim it does not copy.

The walk goes from each graph input through ops that keep its elements in place
(activations, casts, elementwise ops by constants), permute its axes (Transpose) or insert and
remove axes of size 1 (Unsqueeze, Squeeze), following each axis back to the input's; a size
found for a named dim holds for every input that names it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.constants import constant_value
from bnfold.graph import int_attr, ints_attr, node_label
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


@dataclass
class _Step:
    """A value on the walk from a graph input: its dims (``None`` where dynamic) and, for
    each of its axes, the input axis it is (``None`` for an axis Unsqueeze inserted)."""

    value: ir.Value
    dims: list[int | None]
    origin: list[int | None]


def _axes(node: ir.Node) -> list[int] | None:
    """Unsqueeze's or Squeeze's axes: the attribute before opset 13, input 1 after."""
    attribute = ints_attr(node, "axes")
    array = _constant(node, 1) if attribute is None else np.asarray(attribute)
    return None if array is None else [int(axis) for axis in array.reshape(-1)]


def _through(step: _Step, node: ir.Node) -> _Step | None:
    """``step`` past ``node``, which reads it as its data: the same shape (activations, casts,
    an elementwise op by a constant), permuted (Transpose), or with axes of size 1 inserted
    or removed (Unsqueeze, Squeeze); ``None`` past anything else."""
    dims, origin, op = step.dims, step.origin, node.op_type
    output = node.outputs[0]
    if op in _SAME_SHAPE or op in _BROADCASTING:
        return _Step(output, dims, origin)
    if op == "Transpose":
        perm = ints_attr(node, "perm") or list(reversed(range(len(dims))))
        if sorted(perm) != list(range(len(dims))):
            return None
        return _Step(output, [dims[p] for p in perm], [origin[p] for p in perm])
    axes = _axes(node) if op in ("Unsqueeze", "Squeeze") else None
    if op == "Unsqueeze" and axes is not None:
        rank = len(dims) + len(axes)
        inserted = {axis % rank for axis in axes}
        if len(inserted) != len(axes):
            return None  # invalid: an axis given twice
        kept = iter(zip(dims, origin, strict=True))
        pairs = [(1, None) if axis in inserted else next(kept) for axis in range(rank)]
        return _Step(output, [size for size, _ in pairs], [axis for _, axis in pairs])
    if op == "Squeeze" and axes is not None and dims:
        removed = {axis % len(dims) for axis in axes}
        left = [axis for axis in range(len(dims)) if axis not in removed]
        return _Step(output, [dims[a] for a in left], [origin[a] for a in left])
    return None


def _keeps_rank(node: ir.Node, index: int, rank: int) -> bool:
    """Whether an elementwise op by a constant keeps the rank of its input ``index``."""
    const = _constant(node, 1 - index) if len(node.inputs) == 2 else None
    return const is not None and const.ndim <= rank


def _steps(value: ir.Value) -> Iterator[tuple[_Step, ir.Node, int]]:
    """Every (step, reader, input index) from the graph input ``value`` on."""
    assert value.shape is not None
    dims = [dim if isinstance(dim, int) else None for dim in value.shape]
    pending, visits = [_Step(value, dims, list(range(len(dims))))], 0
    while pending and visits < _MAX_STEPS:
        step = pending.pop()
        for use in step.value.uses():
            visits += 1
            node = use.node
            yield step, node, use.idx
            broadcasting = node.op_type in _BROADCASTING
            if node.domain not in ("", "ai.onnx") or (use.idx != 0 and not broadcasting):
                continue
            if broadcasting and not _keeps_rank(node, use.idx, len(step.dims)):
                continue  # the output may broadcast to another shape
            following = _through(step, node)
            if following is not None:
                pending.append(following)


def _input_hints(value: ir.Value) -> dict[int, SizeHint]:
    assert value.shape is not None
    dynamic = {axis for axis, dim in enumerate(value.shape) if not isinstance(dim, int)}
    found: dict[int, SizeHint] = {}
    for step, node, index in _steps(value):
        for axis, hint in _fixed_by(node, index, step.dims).items():
            origin = step.origin[axis] if 0 <= axis < len(step.origin) else None
            if origin in dynamic and origin not in found:
                found[origin] = hint
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
