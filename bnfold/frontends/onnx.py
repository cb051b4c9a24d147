"""Read and write ONNX models: validation, safe external data, shape inference, atomic save.

External data is read only from inside the model's folder. Output is written to a temporary
folder beside OUT and renamed into place (``bnfold.atomic``), so a failed or interrupted
write leaves no partial file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy.typing as npt
import onnx
import onnx_ir as ir

from bnfold.atomic import atomic_folder, cannot_write, signals_deferred, write_atomically
from bnfold.errors import InputError
from bnfold.frontends.onnx_bytes import write_model
from bnfold.frontends.onnx_read import PLAIN_TYPES as PLAIN_TYPES
from bnfold.frontends.onnx_validate import MODEL_SUFFIXES as MODEL_SUFFIXES
from bnfold.frontends.onnx_validate import ONNX_SUFFIXES as ONNX_SUFFIXES
from bnfold.frontends.onnx_validate import external_locations, read_model, skeleton
from bnfold.graph import iter_graphs
from bnfold.specs import InputSpec

# Set on models loaded from a file with external data, so the output keeps that layout.
EXTERNAL_DATA_META = "bnfold.external_data"
# Protobuf cannot serialise a message over 2 GiB; stay clear of the limit.
INLINE_LIMIT_BYTES = 1_800_000_000


def add_inferred_shapes(proto: onnx.ModelProto, lean: onnx.ModelProto | None = None) -> None:
    """Record inferred shapes in ``proto.graph.value_info``: they let the fold prove channel
    axes through Reshape/Flatten. A model inference fails on still folds, with fewer proofs.
    ``lean`` is ``proto``'s skeleton where the caller has it already."""
    try:
        lean = skeleton(proto) if lean is None else lean
        inferred = onnx.shape_inference.infer_shapes(lean, data_prop=True)
    except Exception:
        return
    known = {value.name for value in proto.graph.value_info}
    known.update(value.name for value in proto.graph.input)
    known.update(value.name for value in proto.graph.output)
    proto.graph.value_info.extend(
        value for value in inferred.graph.value_info if value.name not in known
    )


def annotate_shapes(model: ir.Model) -> None:
    """Give the values of an in-memory model the shapes ONNX shape inference finds, in place,
    where they have none (a loaded file gets them in ``load_onnx``). A model too large to
    serialise is left as it is: its folds through Reshape/Flatten may then stay unproven."""
    if needs_external_data(model):
        return
    proto = ir.serde.serialize_model(model)
    before = len(proto.graph.value_info)
    add_inferred_shapes(proto)
    values = {value.name: value for value in model.graph.inputs}
    for node in model.graph:
        values.update((value.name, value) for value in node.outputs)
    for info in list(proto.graph.value_info)[before:]:
        value = values.get(info.name)
        if value is not None and value.shape is None:
            ir.serde.deserialize_value_info_proto(info, value)


def infer_shapes(model: ir.Model) -> ir.Model:
    """The model with inferred shapes on every value (for converters that write none)."""
    proto = ir.serde.serialize_model(model)
    add_inferred_shapes(proto)
    inferred = ir.serde.deserialize_model(proto)
    inferred.meta.update(model.meta)
    return inferred


def load_onnx(path: str | os.PathLike[str]) -> ir.Model:
    """Load an ONNX model for folding: validated, shapes inferred, external data left lazy."""
    path = Path(path)
    read = read_model(path)
    add_inferred_shapes(read.proto, read.skeleton)
    try:
        model = ir.serde.deserialize_model(read.proto)
    except Exception as error:
        raise InputError(f"{path}: cannot read the graph ({error})") from error
    ir.external_data.set_base_dir(model.graph, path.parent)
    model.meta[EXTERNAL_DATA_META] = next(external_locations(read.proto), None) is not None
    _own_weights(model, read.arrays)
    return model


def _owned(
    tensor: ir.TensorProtocol | None, array: npt.NDArray[Any] | None = None
) -> ir.TensorProtocol | None:
    """A tensor read from the parsed protobuf as one holding its own array: ``array`` where
    the reader read its data apart, else its values (``None`` where it is not such a tensor,
    or of a type kept as it is)."""
    if not isinstance(tensor, ir.serde.TensorProtoTensor):
        return None
    if tensor.dtype.numpy().name not in PLAIN_TYPES:
        return None
    return ir.Tensor(
        tensor.numpy() if array is None else array,
        dtype=tensor.dtype,
        name=tensor.name,
        doc_string=tensor.doc_string,
        metadata_props=dict(tensor.metadata_props),
    )


def _own_weights(model: ir.Model, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Give each inline tensor an array of its own, so that the parsed protobuf (a second
    copy of every weight, kept whole while any one tensor points into it) is freed once
    loaded. The arrays are then shared, not copied, by the check's onnxruntime sessions,
    and ``numpy()`` of them is free (a protobuf tensor copies its bytes on every call).
    ``arrays`` are the main graph's weights the reader read apart from the protobuf."""
    for graph in iter_graphs(model.graph):
        read = arrays if graph is model.graph else {}
        for name, value in graph.initializers.items():
            if (owned := _owned(value.const_value, read.get(name))) is not None:
                value.const_value = owned
        for node in graph:
            for attribute in node.attributes.values():
                owned = (
                    _owned(attribute.value) if attribute.type == ir.AttributeType.TENSOR else None
                )
                if owned is not None:
                    node.attributes[attribute.name] = ir.AttrTensor(attribute.name, owned)


OnnxSource = ir.Model | onnx.ModelProto | bytes | str | os.PathLike[str]


def as_ir(model: OnnxSource) -> ir.Model:
    """``model`` in memory: a file is loaded (and validated), bytes and protos parsed."""
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, bytes):
        return ir.serde.deserialize_model(onnx.ModelProto.FromString(model))
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    return load_onnx(model)


def has_external_tensors(model: ir.Model) -> bool:
    return any(
        isinstance(value.const_value, ir.ExternalTensor)
        for graph in iter_graphs(model.graph)
        for value in graph.initializers.values()
    )


def weight_bytes(model: ir.Model) -> int:
    return sum(
        value.const_value.nbytes
        for graph in iter_graphs(model.graph)
        for value in graph.initializers.values()
        if value.const_value is not None
    )


def needs_external_data(model: ir.Model) -> bool:
    return (
        bool(model.meta.get(EXTERNAL_DATA_META))
        or has_external_tensors(model)
        or weight_bytes(model) > INLINE_LIMIT_BYTES
    )


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The graph inputs a caller must feed (initializers that are also inputs are optional)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else None
        if dtype is None:
            raise InputError(f"input {value.name} has no tensor type")
        shape = tuple(
            dim if isinstance(dim, int) else (dim.value if dim.value else None)
            for dim in (value.shape or ())
        )
        specs.append(InputSpec(value.name or "", shape, dtype))
    return specs


def save_onnx(
    model: ir.Model, path: str | os.PathLike[str], *, external_data: bool | None = None
) -> None:
    """Write ``model`` to ``path`` atomically; weights go to ``<name>.data`` beside it when the
    model is too large for one protobuf or its weights came from external data."""
    path = Path(path)
    external = needs_external_data(model) if external_data is None else external_data
    if not external:
        write_atomically(path, lambda staged: _write_inline(model, staged))
        return
    with atomic_folder(path) as scratch:
        staged = scratch / path.name
        data_name = f"{path.name}.data"
        try:
            ir.save(model, staged, external_data=data_name)
            overwritten = _reads_from(model, path.parent / data_name)
            with signals_deferred():  # both files move, or neither
                _replace_pair(scratch, staged, path, data_name)
                if overwritten:  # and the model in memory follows them
                    _repoint(model, path)
        except OSError as error:
            raise cannot_write(path, error) from error


def _write_inline(model: ir.Model, staged: Path) -> None:
    with staged.open("wb") as file:
        write_model(model, file)


def _external_values(model: ir.Model) -> Iterator[tuple[ir.Value, ir.ExternalTensor]]:
    for graph in iter_graphs(model.graph):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                yield value, value.const_value


def _reads_from(model: ir.Model, data_file: Path) -> bool:
    """Whether lazy tensors of ``model`` read ``data_file`` (OUT is the input, overwritten)."""
    target = data_file.resolve()
    return any(Path(tensor.path).resolve() == target for _, tensor in _external_values(model))


def _repoint(model: ir.Model, path: Path) -> None:
    """The data file the model's lazy tensors read was just replaced by the written one: point
    them at their place in it, so the model in memory stays the model that was written."""
    written = ir.load(path)
    fresh = {
        name: value.const_value
        for graph in iter_graphs(written.graph)
        for name, value in graph.initializers.items()
    }
    for value, tensor in _external_values(model):
        replacement = fresh.get(value.name or "")
        if replacement is not None:
            tensor.release()
            value.const_value = replacement


def _replace_pair(scratch: Path, staged: Path, path: Path, data_name: str) -> None:
    """Move the weights file, then the model file, into place. The weights go first, so a
    model file never points at missing weights; if the model file cannot follow, the weights
    file that was there before (or none) is put back."""
    data_target = path.parent / data_name
    previous = scratch / f"{data_name}.previous"
    had_previous = data_target.exists()
    if had_previous:
        os.replace(data_target, previous)
    try:
        os.replace(scratch / data_name, data_target)
        os.replace(staged, path)
    except OSError:
        if had_previous:
            os.replace(previous, data_target)
        else:
            data_target.unlink(missing_ok=True)
        raise
