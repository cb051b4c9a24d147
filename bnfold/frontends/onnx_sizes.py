"""The shapes the fold's layout proofs read: symbolic, and at the check's sizes.

A dynamic dimension leaves a Reshape or Flatten unproven when nothing says what it is: the
fold proves where the channels land from the dimensions on both sides (bnfold/rules/layout.py,
bnfold/rules/forward.py), and a BN whose rank is unknown cannot say which axis its channels
are on. While the model folds, every value takes the shape ONNX shape inference (with data
propagation) finds on a copy of the graph in which the small constants that exporters compute
with subgraphs (PyTorch's ``Pad`` pads: ``ConstantOfShape``, ``Concat``, ``Slice``,
``Transpose``) are written as initializers, which inference reads and cannot compute itself:

- without sizes (``inspect``, ``--no-check``) dynamic dimensions stay symbolic: the batch
  ``N`` of the input is the ``N`` of a Reshape's output, which proves that each sample keeps
  its elements;
- with the check's input shapes (``--dim``, ``--inputs``, the fallback sizes) every dimension
  is static; the check then confirms the fold at the very sizes that proved it. The symbolic
  shapes stay a first source where inference at those sizes fails.

Afterwards each value gets its own shape back, so the written model keeps its dynamic
dimensions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import onnx
import onnx_ir as ir

from bnfold.constants import constant_value
from bnfold.frontends.onnx import needs_external_data
from bnfold.frontends.onnx_bytes import weightless_proto
from bnfold.frontends.onnx_symbolic import ort_symbolic_dims

# Initializers above this many elements become typed graph inputs in the copy that is
# inferred: inference needs their shapes, not their values. Computed constants above it are
# left to inference too.
_INLINE_ELEMENTS = 1024
# A symbol that an inference made up (onnx writes ``unk__3``) is renamed with its prefix, so
# that it can never equal a symbol of another inference or of the model's own shapes.
_INFERRED = "bnfold?onnx:"
_ORT_INFERRED = "bnfold?ort:"

Dim = int | str | None


def _is_static(shape: ir.Shape | None) -> bool:
    return shape is not None and all(isinstance(dim, int) for dim in shape)


def _set_dims(info: onnx.ValueInfoProto, dims: Sequence[int]) -> None:
    shape = info.type.tensor_type.shape
    del shape.dim[:]
    for size in dims:
        shape.dim.add().dim_value = int(size)


def _large_initializers(model: ir.Model) -> list[str]:
    """Initializers whose values inference does not need (it reads only small constants such
    as Reshape targets): they reach it as graph inputs of their type and shape."""
    large = []
    for name, value in model.graph.initializers.items():
        elements = 1
        for size in value.shape or ():
            elements *= int(size) if isinstance(size, int) else 1
        if elements > _INLINE_ELEMENTS:
            large.append(name)
    return large


def _small_computed(value: ir.Value | None) -> npt.NDArray[np.generic] | None:
    """The array a subgraph computes for ``value`` (not a Constant's, which inference reads
    itself), when small and numeric."""
    producer = value.producer() if value is not None else None
    if value is None or producer is None or producer.op_type == "Constant" or not value.name:
        return None
    array = constant_value(value)
    if array is None or array.size > _INLINE_ELEMENTS or array.dtype.kind not in "biuf":
        return None
    return array


def _computed_constants(model: ir.Model, proto: onnx.ModelProto) -> None:
    """Give the nodes of ``proto`` (``model``'s main graph, serialised in the same order) the
    small constants that subgraphs compute as initializers, where they read them as anything
    but data (pads, shapes, axes, scales)."""
    names = {value.name for value in model.graph.initializers.values()}
    for node, node_proto in zip(model.graph, proto.graph.node, strict=True):
        first = 0 if node.op_type == "ConstantOfShape" else 1
        for index, value in enumerate(node.inputs[first:], start=first):
            array = _small_computed(value)
            if array is None:
                continue
            name = f"{value.name}__bnfold_constant"  # type: ignore[union-attr]
            if name not in names:
                proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
                names.add(name)
            node_proto.input[index] = name


def _dims(info: onnx.ValueInfoProto, symbols: set[str]) -> list[Dim]:
    """Static sizes, the model's own symbols, and inference's own ones renamed apart."""
    dims: list[Dim] = []
    for dim in info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            param = dim.dim_param
            dims.append(param if param in symbols else f"{_INFERRED}{param}")
        else:
            dims.append(None)
    return dims


def _input_symbols(model: ir.Model) -> set[str]:
    return {
        dim.value
        for value in model.graph.inputs
        for dim in value.shape or ()
        if isinstance(dim, ir.SymbolicDim) and dim.value is not None
    }


def inferred_shapes(
    model: ir.Model, shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, ir.Shape]:
    """Every value's shape as inference finds it (main graph only) when the graph inputs
    have ``shapes`` (none: the model's own, symbolic dims kept); empty when the model is too
    large to serialise or inference fails."""
    if needs_external_data(model):
        return {}
    # Weightless: serialising the weights only to ignore them cost 0.2 s and 87 MB on ResNet50.
    proto = weightless_proto(model, _large_initializers(model))
    _computed_constants(model, proto)
    for info in proto.graph.input:
        if shapes and info.name in shapes:
            _set_dims(info, shapes[info.name])
    for info in proto.graph.output:  # inferred afresh, not merged with the declared ones
        info.type.tensor_type.ClearField("shape")
    del proto.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # a model inference cannot handle folds as it would without shapes
        return {}
    symbols = _input_symbols(model) if not shapes else set()
    found: dict[str, ir.Shape] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            found[info.name] = ir.Shape(_dims(info, symbols))
    if _incomplete(model, found, sized=bool(shapes)):
        _add_ort_symbolic(found, proto, symbols)
    return found


def _incomplete(model: ir.Model, found: dict[str, ir.Shape], *, sized: bool) -> bool:
    """Whether onnx's inference left a value without a shape, or a dimension unknown (at the
    check's sizes: not static). Only then is onnxruntime's asked: importing it (and sympy)
    is most of the start-up a fold without the check avoids."""
    for node in model.graph:
        for value in node.outputs:
            shape = found.get(value.name or "")
            if shape is None:
                return True
            for dim in shape:
                if not isinstance(dim, int) and (sized or dim.value is None):
                    return True
    return False


def _add_ort_symbolic(
    found: dict[str, ir.Shape], proto: onnx.ModelProto, symbols: set[str]
) -> None:
    """Where onnxruntime's symbolic inference says more of a value than onnx's (a Reshape to a
    shape computed by ``Shape`` ops: ``[N, C, H*W]``, or at the check's sizes ``[2, C, 256]``),
    its dims replace them."""
    for name, dims in ort_symbolic_dims(proto, symbols, _ORT_INFERRED).items():
        shape = ir.Shape(dims)
        current = found.get(name)
        if current is None or (current.rank() == shape.rank() and _known(shape) > _known(current)):
            found[name] = shape


def static_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> dict[str, ir.Shape]:
    """Every value's static shape when the graph inputs have ``shapes``; empty when the inputs
    are static already, the model is too large, or inference fails."""
    sized = [value for value in model.graph.inputs if value.name in shapes]
    if all(_is_static(value.shape) for value in sized):
        return {}
    return {
        name: shape for name, shape in inferred_shapes(model, shapes).items() if _is_static(shape)
    }


def _values(graph: ir.Graph) -> Iterator[ir.Value]:
    yield from graph.inputs
    for node in graph:
        yield from node.outputs


def _known(shape: ir.Shape | None) -> tuple[int, int]:
    """How much a shape says: its static dims, then its named ones."""
    if shape is None:
        return (-1, -1)
    static = sum(isinstance(dim, int) for dim in shape)
    named = sum(isinstance(dim, ir.SymbolicDim) and dim.value is not None for dim in shape)
    return static, named


def _anonymous(shape: ir.Shape, symbols: set[str]) -> ir.Shape:
    """``shape`` with the symbols of another inference than the lent one made unnamed."""
    return ir.Shape(
        [dim if isinstance(dim, int) or dim.value in symbols else None for dim in shape]
    )


def _lent_shapes(
    model: ir.Model, shapes: Mapping[str, Sequence[int]] | None
) -> dict[int, tuple[ir.Value, ir.Shape]]:
    """The shape each value holds while the model folds, by the value's id."""
    static = static_shapes(model, shapes) if shapes else {}
    values = [value for value in _values(model.graph) if not _is_static(value.shape)]
    # Inferred once more, symbolically, only where the sizes leave a value unknown.
    covered = all((value.name or "") in static for value in values)
    symbolic = {} if covered else inferred_shapes(model)
    symbols = _input_symbols(model)
    lent: dict[int, tuple[ir.Value, ir.Shape]] = {}
    for value in values:
        own = value.shape
        name = value.name or ""
        candidates = [shape for shape in (static.get(name), symbolic.get(name)) if shape]
        if own is not None:
            candidates = [shape for shape in candidates if shape.rank() == own.rank()]
            candidates.append(_anonymous(own, symbols))
        if candidates:
            lent[id(value)] = (value, max(candidates, key=_known))
    return lent


@contextlib.contextmanager
def sized_shapes(
    model: ir.Model, shapes: Mapping[str, Sequence[int]] | None = None
) -> Iterator[None]:
    """While the block runs, values without a static shape have the one inference finds at
    ``shapes`` (none: symbolic); then each value (and any value a fold gave one of those
    shape objects) gets its own back."""
    # id of a lent shape -> (that shape, kept alive so its id is not reused; the value's own)
    lent: dict[int, tuple[ir.Shape, ir.Shape | None]] = {}
    for value, shape in _lent_shapes(model, shapes).values():
        own, value.shape = value.shape, ir.Shape(list(shape))
        lent[id(value.shape)] = (value.shape, own)
    try:
        yield
    finally:
        for value in _values(model.graph):
            if value.shape is not None and id(value.shape) in lent:
                value.shape = lent[id(value.shape)][1]


__all__ = ["inferred_shapes", "sized_shapes", "static_shapes"]
