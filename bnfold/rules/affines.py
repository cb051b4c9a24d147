"""Normalise BN-like nodes into affines ``y = s*x + t`` on one channel axis.

Two shapes of the same thing reach bnfold (DESIGN.md section 2):

- a ``BatchNormalization`` node (opsets 9-15): ``s = gamma/sqrt(var+eps)``, ``t = beta - s*mean``
  on axis 1;
- ``Mul``/``Add``/``Sub``/``Div`` by a constant that is a scalar or varies along exactly one
  axis (how tf2onnx writes a BN after a Dense, depthwise or transposed conv).

Consecutive such nodes, each the sole reader of the one before, form one chain and compose
into one affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from bnfold.affine import FoldArithmeticError, ScaleShift, as_float64_vector, batchnorm_scale_shift
from bnfold.foldlog import Reason, Skip
from bnfold.graph import constant_array, float_attr, int_attr, node_label, rank_of, sole_consumer

ELEMENTWISE_OPS = frozenset({"Mul", "Add", "Sub", "Div"})
FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
)


@dataclass
class AffineOp:
    """One node seen as ``y = s*x + t``.

    The channel axis is known either from the front (BN: axis 1) or from the back (a constant
    of shape ``[C, 1, 1]`` varies along the third axis from the end); scalars have neither.
    ``skip`` is set when the node is BN-like but must never be folded (training mode, ...).
    """

    node: ir.Node
    data: ir.Value
    affine: ScaleShift | None
    axis_from_front: int | None = None
    axis_from_back: int | None = None
    skip: Skip | None = None
    data_index: int = 0  # which input of ``node`` is ``data`` (Sub/Mul/Add: either side)

    @property
    def is_batchnorm(self) -> bool:
        return self.node.op_type == "BatchNormalization"

    @property
    def is_per_channel_scale(self) -> bool:
        return (
            self.node.op_type in ("Mul", "Div")
            and self.affine is not None
            and self.affine.scale.size > 1
        )


@dataclass
class AffineChain:
    """Affine nodes in a row; ``input`` feeds the first, ``output`` leaves the last."""

    ops: list[AffineOp] = field(default_factory=list)

    @property
    def input(self) -> ir.Value:
        """The value the first op reads now. An earlier fold in the same pass may have
        rewired it (a BN folded backward hands its readers the layer's output), so the value
        seen when the chain was found may be gone from the graph."""
        first = self.ops[0]
        current = first.node.inputs[first.data_index]
        assert current is not None
        return current

    @property
    def output(self) -> ir.Value:
        return self.ops[-1].node.outputs[0]

    @property
    def nodes(self) -> list[ir.Node]:
        return [op.node for op in self.ops]

    @property
    def label(self) -> str:
        # The BN names the chain, not a bias Add that happens to precede it (tf2onnx writes
        # Dense -> BN as MatMul -> Add(bias) -> Mul -> Add, one chain).
        named = next((op for op in self.ops if op.is_batchnorm), None)
        named = named or next((op for op in self.ops if op.is_per_channel_scale), self.ops[0])
        return node_label(named.node)

    @property
    def op_types(self) -> list[str]:
        return [op.node.op_type for op in self.ops]

    @property
    def is_bn_like(self) -> bool:
        """A BN node, or a per-channel scale: what the user thinks of as a BatchNorm."""
        return any(op.is_batchnorm or op.is_per_channel_scale for op in self.ops)

    @property
    def skip(self) -> Skip | None:
        return next((op.skip for op in self.ops if op.skip is not None), None)

    @property
    def has_scale(self) -> bool:
        return any(op.node.op_type in ("BatchNormalization", "Mul", "Div") for op in self.ops)

    def resolve(self, rank: int | None) -> tuple[ScaleShift, int | None] | Skip:
        """The composed affine and its channel axis (from the front) at input rank ``rank``;
        the axis is ``None`` when every op is a scalar."""
        if self.skip is not None:
            return self.skip
        axis: int | None = None
        composed: ScaleShift | None = None
        for op in self.ops:
            assert op.affine is not None
            op_axis = op.axis_from_front
            if op.affine.channels == 1:
                # A one-channel op (BatchNorm1d(1) over [B, 1, N] after a Linear's bias Add
                # on axis 2) acts alike on every element: it fixes no channel axis.
                op_axis = None
            elif op.axis_from_back is not None:
                # Rank unknown: counted from the end (-1 is the last axis), which a layer with
                # its channels last (MatMul, Gemm) matches whatever the rank.
                op_axis = -op.axis_from_back if rank is None else rank - op.axis_from_back
            if op_axis is not None:
                if axis is not None and (op_axis < 0) != (axis < 0):
                    return Skip(Reason.UNPROVEN_LAYOUT, "the rank of the BN input is unknown")
                if axis is not None and op_axis != axis:
                    return Skip(
                        Reason.CHANNEL_MISMATCH,
                        f"{node_label(op.node)} scales axis {op_axis}, the chain axis {axis}",
                    )
                axis = op_axis
            try:
                composed = op.affine if composed is None else composed.then(op.affine)
            except (FoldArithmeticError, ValueError) as error:
                return Skip(Reason.CHANNEL_MISMATCH, str(error))
        assert composed is not None
        if composed.channels == 1:
            # One channel (BatchNorm1d(1), a [1]-shaped Mul) is a scalar: it acts the same on
            # every element, so it commutes with every layout op and fits any channel axis.
            return composed, None
        return composed, axis


def _is_float(value: ir.Value) -> bool:
    return value.dtype is None or value.dtype in FLOAT_TYPES


def _opset(node: ir.Node) -> int | None:
    """The default-domain opset the node runs under: its own version, else its graph's (a
    subgraph may declare none: then unknown)."""
    if node.version is not None:
        return node.version
    imports = node.graph.opset_imports if node.graph is not None else {}
    return imports.get("", imports.get("ai.onnx"))


def _training_mode(node: ir.Node) -> str | None:
    """Why the BN runs with batch statistics, or ``None`` in inference mode.

    Before opset 14 the spec has no ``training_mode``: the optional outputs (running and saved
    mean/var) being present *is* training mode, used or not, and onnxruntime then normalises
    with the batch statistics. From opset 14 the attribute decides; extra outputs in use mean
    training too. An unknown opset is treated as the older rule, which folds less.
    """
    named = [out for out in node.outputs[1:] if out is not None and out.name]
    opset = _opset(node)
    if (opset is None or opset < 14) and named:
        return f"opset {opset or '?'} with optional outputs {[out.name for out in named]}"
    if int_attr(node, "training_mode", 0) == 1:
        return "training_mode=1"
    if any(list(out.uses()) or out.is_graph_output() for out in named):
        return "its running statistics are read"
    return None


def _batchnorm_op(node: ir.Node) -> AffineOp | None:
    data = node.inputs[0] if node.inputs else None
    if data is None or len(node.inputs) < 5:
        return None
    if why := _training_mode(node):
        skip = Skip(Reason.TRAINING_MODE, f"BatchNormalization runs in training mode ({why})")
        return AffineOp(node, data, None, skip=skip)
    if int_attr(node, "spatial", 1) == 0:
        skip = Skip(Reason.UNSUPPORTED_LAYER, "spatial=0 BatchNormalization is not per-channel")
        return AffineOp(node, data, None, skip=skip)
    params = [constant_array(value) for value in node.inputs[1:5]]
    if any(param is None for param in params):
        skip = Skip(Reason.PARAMS_NOT_CONSTANT, "BN parameters are not constants")
        return AffineOp(node, data, None, skip=skip)
    gamma, beta, mean, var = (as_float64_vector(param) for param in params)  # type: ignore[arg-type]
    lengths = {gamma.size, beta.size, mean.size, var.size}
    if len(lengths) != 1:
        skip = Skip(
            Reason.INVALID_PARAMS, f"BN parameters have different lengths {sorted(lengths)}"
        )
        return AffineOp(node, data, None, skip=skip)
    try:
        affine = batchnorm_scale_shift(gamma, beta, mean, var, float_attr(node, "epsilon", 1e-5))
    except FoldArithmeticError as error:
        return AffineOp(node, data, None, skip=Skip(Reason.INVALID_PARAMS, str(error)))
    return AffineOp(node, data, affine, axis_from_front=1)


def _elementwise_op(node: ir.Node) -> AffineOp | None:
    if len(node.inputs) != 2 or any(value is None for value in node.inputs):
        return None
    left, right = node.inputs
    assert left is not None and right is not None
    left_const, right_const = constant_array(left), constant_array(right)
    if (left_const is None) == (right_const is None):
        return None  # both variable (not an affine) or both constant (constant folding's job)
    data, const = (right, left_const) if right_const is None else (left, right_const)
    assert const is not None
    data_first = data is left
    if not _is_float(data) or not np.issubdtype(const.dtype, np.floating):
        return None
    rank = rank_of(data)
    if rank is not None and const.ndim > rank:
        return None  # broadcasting would change the output shape
    varying = [axis for axis, size in enumerate(const.shape) if size != 1]
    if len(varying) > 1:
        return None  # varies along more than one axis: not per-channel
    values = as_float64_vector(const)
    if not np.all(np.isfinite(values)):
        return None
    op = node.op_type
    if op == "Mul":
        affine = ScaleShift(values, np.zeros(1))
    elif op == "Add":
        affine = ScaleShift(np.ones(1), values)
    elif op == "Sub":
        affine = ScaleShift(np.ones(1), -values) if data_first else ScaleShift(-np.ones(1), values)
    elif data_first and np.all(values != 0.0):  # Div: x / c only
        affine = ScaleShift(1.0 / values, np.zeros(1))
    else:
        return None
    axis_from_back = const.ndim - varying[0] if varying else None
    return AffineOp(
        node, data, affine, axis_from_back=axis_from_back, data_index=0 if data_first else 1
    )


def as_affine_op(node: ir.Node) -> AffineOp | None:
    """The node as an affine, or ``None`` when it is not one."""
    if node.domain not in ("", "ai.onnx") or not node.outputs:
        return None
    if node.op_type == "BatchNormalization":
        return _batchnorm_op(node)
    if node.op_type in ELEMENTWISE_OPS:
        return _elementwise_op(node)
    return None


def find_affine_chains(graph: ir.Graph) -> list[AffineChain]:
    """Every maximal chain of affine nodes in ``graph`` (not its subgraphs), in graph order."""
    ops = {id(node): op for node in graph if (op := as_affine_op(node)) is not None}
    chains: list[AffineChain] = []
    continues: set[int] = set()
    for node in graph:
        op = ops.get(id(node))
        if op is None or op.skip is not None:
            continue
        follower = sole_consumer(node.outputs[0])
        if follower is not None and id(follower) in ops:
            next_op = ops[id(follower)]
            if next_op.skip is None and next_op.data is node.outputs[0]:
                continues.add(id(follower))
    for node in graph:
        op = ops.get(id(node))
        if op is None or id(node) in continues:
            continue
        chain = AffineChain([op])
        while op.skip is None:
            follower = sole_consumer(op.node.outputs[0])
            if follower is None or id(follower) not in continues:
                break
            op = ops[id(follower)]
            chain.ops.append(op)
        chains.append(chain)
    return chains


def refreshed(chain: AffineChain) -> AffineChain | None:
    """``chain`` as its nodes read now: a fold earlier in the same pass may have rewritten one
    of its constants (a forward fold into a MatMul merges ``t B`` into the MatMul's bias
    ``Add``, which may start a chain), and folding the values seen when the chain was found
    would be wrong. ``None`` when a node is no longer an affine."""
    ops = [as_affine_op(op.node) for op in chain.ops]
    if any(op is None for op in ops):
        return None
    return AffineChain([op for op in ops if op is not None])
