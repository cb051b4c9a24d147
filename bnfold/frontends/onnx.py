"""Read and write ONNX models: validation, safe external data, shape inference, atomic save.

External data is read only from inside the model's folder. Output is written to a temporary
folder beside OUT and renamed into place, so a failed write leaves no partial file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from bnfold.errors import InputError, OutputError
from bnfold.graph import iter_graphs
from bnfold.specs import InputSpec

# Set on models loaded from a file with external data, so the output keeps that layout.
EXTERNAL_DATA_META = "bnfold.external_data"
# Protobuf cannot serialise a message over 2 GiB; stay clear of the limit.
INLINE_LIMIT_BYTES = 1_800_000_000
ONNX_SUFFIXES = (".onnx",)


def _external_locations(proto: onnx.ModelProto) -> Iterator[str]:
    def tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    yield from tensors(attribute.g)
                for subgraph in attribute.graphs:
                    yield from tensors(subgraph)

    for tensor in tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    yield entry.value


def _check_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    root = folder.resolve()
    for location in _external_locations(proto):
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            raise InputError(f"external data location {location!r} is outside the model's folder")
        if not target.is_file():
            raise InputError(f"external data file {location!r} is missing")


# Initializers above this size are left out of the skeleton that is checked and shape-inferred;
# smaller ones stay, since shape inference reads Reshape targets and the like from them.
SKELETON_TENSOR_BYTES = 4096


def _skeleton(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its large weights: each large (or external) initializer becomes a
    typed graph input. The checker and shape inference then handle kilobytes, not the whole
    file, and never open external data files."""
    graph = proto.graph
    skeleton = onnx.ModelProto(
        ir_version=proto.ir_version,
        opset_import=proto.opset_import,
        functions=proto.functions,
    )
    lean = skeleton.graph
    lean.name = graph.name
    lean.node.extend(graph.node)
    lean.input.extend(graph.input)
    lean.output.extend(graph.output)
    lean.value_info.extend(graph.value_info)
    lean.sparse_initializer.extend(graph.sparse_initializer)
    inputs = {value.name for value in graph.input}
    for tensor in graph.initializer:
        large = (
            tensor.data_location == onnx.TensorProto.EXTERNAL
            or tensor.ByteSize() > SKELETON_TENSOR_BYTES
        )
        if not large:
            lean.initializer.append(tensor)
        elif tensor.name not in inputs:
            lean.input.append(
                onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            )
    return skeleton


# What a file that is not ONNX usually is, by its first bytes.
_SIGNATURES = (
    (b"PK\x03\x04", "a zip archive, not an ONNX model (a Keras .keras file? name it .keras)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file, not an ONNX model (a Keras .h5 file? name it .h5)"),
)
MODEL_SUFFIXES = (".onnx", ".keras", ".h5", ".hdf5")


def _not_onnx(path: Path, error: Exception) -> InputError:
    """The one line for a file protobuf cannot parse: what it looks like instead."""
    try:
        with path.open("rb") as file:
            head = file.read(8)
    except OSError:
        head = b""
    if not head:
        return InputError(f"{path}: not an ONNX model (empty file)")
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            return InputError(f"{path}: {what}")
    return InputError(f"{path}: not an ONNX model ({type(error).__name__})")


def _one_line(error: Exception, limit: int = 240) -> str:
    """The checker's message (which spans lines around the node it names) on one line."""
    text = " ".join(part.strip() for part in str(error).split("\n") if part.strip())
    text = text or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_proto(path: Path) -> onnx.ModelProto:
    """Parse and validate an ONNX file without loading its external data."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if path.suffix.lower() not in ONNX_SUFFIXES:
        expected = ", ".join(MODEL_SUFFIXES)
        raise InputError(f"{path}: not a model file name (expected {expected})")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: not an ONNX model (empty file)")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise _not_onnx(path, error) from error
    if not proto.graph.node and not proto.graph.output:
        raise InputError(f"{path}: not an ONNX model (no graph)")
    _check_external_data(proto, path.parent)
    try:
        onnx.checker.check_model(_skeleton(proto))
    except Exception as error:
        raise InputError(f"{path}: invalid ONNX model: {_one_line(error)}") from error
    return proto


def add_inferred_shapes(proto: onnx.ModelProto) -> None:
    """Record inferred shapes in ``proto.graph.value_info``: they let the fold prove channel
    axes through Reshape/Flatten. A model inference fails on still folds, with fewer proofs."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(proto), data_prop=True)
    except Exception:
        return
    known = {value.name for value in proto.graph.value_info}
    known.update(value.name for value in proto.graph.input)
    known.update(value.name for value in proto.graph.output)
    proto.graph.value_info.extend(
        value for value in inferred.graph.value_info if value.name not in known
    )


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
    proto = read_proto(path)
    add_inferred_shapes(proto)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:
        raise InputError(f"{path}: cannot read the graph ({error})") from error
    ir.external_data.set_base_dir(model.graph, path.parent)
    model.meta[EXTERNAL_DATA_META] = next(_external_locations(proto), None) is not None
    return model


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


@contextlib.contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target``; whatever the caller writes there and moves out
    stays, the rest is removed even on failure."""
    folder = target.parent
    if not folder.is_dir():
        if folder.exists():
            raise OutputError(f"{folder}: is not a folder, so {target.name} cannot go in it")
        raise OutputError(f"{folder}: output folder does not exist")
    if target.is_dir():
        raise OutputError(f"{target}: is a folder")
    try:
        scratch = Path(tempfile.mkdtemp(prefix=".bnfold-", dir=folder))
    except OSError as error:
        raise OutputError(f"{folder}: cannot write ({error.strerror})") from error
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def save_onnx(
    model: ir.Model, path: str | os.PathLike[str], *, external_data: bool | None = None
) -> None:
    """Write ``model`` to ``path`` atomically; weights go to ``<name>.data`` beside it when the
    model is too large for one protobuf or its weights came from external data."""
    path = Path(path)
    external = needs_external_data(model) if external_data is None else external_data
    with atomic_folder(path) as scratch:
        staged = scratch / path.name
        data_name = f"{path.name}.data"
        try:
            if external:
                ir.save(model, staged, external_data=data_name)
                _replace_pair(scratch, staged, path, data_name)
            else:
                ir.save(model, staged)
                os.replace(staged, path)
        except OSError as error:
            raise OutputError(f"{path}: cannot write ({error.strerror or error})") from error


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
