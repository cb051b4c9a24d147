"""The sizes the check runs at, lent to the fold's layout proofs.

A dynamic dimension leaves a Reshape or Flatten unproven: the fold proves where the channels
land from the sizes on both sides (bnfold/rules/layout.py), and a BN whose rank is unknown
cannot say which axis its channels are on. The check runs the model at concrete input shapes
(``--dim``, ``--inputs``, the fallback sizes); while the model folds, every value takes the
static shape ONNX shape inference finds at those shapes. Afterwards each value gets its own
shape back, so the written model keeps its dynamic dimensions; the check then confirms the
fold at the very sizes that proved it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import onnx
import onnx_ir as ir

from bnfold.frontends.onnx import needs_external_data
from bnfold.frontends.onnx_bytes import weightless_proto

# Initializers above this many elements become typed graph inputs in the copy that is
# inferred: inference needs their shapes, not their values.
_INLINE_ELEMENTS = 1024


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


def static_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> dict[str, ir.Shape]:
    """Every value's static shape when the graph inputs have ``shapes`` (main graph only);
    empty when the inputs are static already, the model is too large, or inference fails."""
    sized = [value for value in model.graph.inputs if value.name in shapes]
    if all(_is_static(value.shape) for value in sized) or needs_external_data(model):
        return {}
    # Weightless: serialising the weights only to ignore them cost 0.2 s and 87 MB on ResNet50.
    proto = weightless_proto(model, _large_initializers(model))
    for info in proto.graph.input:
        if info.name in shapes:
            _set_dims(info, shapes[info.name])
    for info in proto.graph.output:  # inferred afresh, not merged with the symbolic ones
        info.type.tensor_type.ClearField("shape")
    del proto.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # a model inference cannot handle folds as it would without sizes
        return {}
    found: dict[str, ir.Shape] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor_type.HasField("shape"):
            dims = tensor_type.shape.dim
            if all(dim.HasField("dim_value") for dim in dims):
                found[info.name] = ir.Shape([dim.dim_value for dim in dims])
    return found


def _values(graph: ir.Graph) -> Iterator[ir.Value]:
    yield from graph.inputs
    for node in graph:
        yield from node.outputs


@contextlib.contextmanager
def sized_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> Iterator[None]:
    """While the block runs, values without a static shape have the one ``shapes`` gives them;
    then each value (and any value a fold gave one of those shape objects) gets its own back."""
    found = static_shapes(model, shapes)
    # id of a lent shape -> (that shape, kept alive so its id is not reused; the value's own)
    lent: dict[int, tuple[ir.Shape, ir.Shape | None]] = {}
    for value in _values(model.graph):
        shape = found.get(value.name or "")
        if shape is None or _is_static(value.shape):
            continue
        if value.shape is not None and value.shape.rank() != shape.rank():
            continue  # inference disagrees with the model: trust neither
        own, value.shape = value.shape, ir.Shape(list(shape))
        lent[id(value.shape)] = (value.shape, own)
    try:
        yield
    finally:
        for value in _values(model.graph):
            if value.shape is not None and id(value.shape) in lent:
                value.shape = lent[id(value.shape)][1]


__all__ = ["sized_shapes", "static_shapes"]
