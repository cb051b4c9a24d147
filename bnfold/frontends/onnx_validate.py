"""Validate an ONNX file before anything runs it: parse it without its external data, refuse
what would crash onnxruntime or a fold later (external data outside the model's folder, tensor
sizes that disagree with their dims, attribute values that divide by zero, text that is not
UTF-8), and run the checker on a skeleton that leaves the large weights out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from bnfold.errors import InputError
from bnfold.frontends.onnx_read import parse_model

ONNX_SUFFIXES = (".onnx",)


def external_locations(proto: onnx.ModelProto) -> Iterator[str]:
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
    for location in external_locations(proto):
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            raise InputError(f"external data location {location!r} is outside the model's folder")
        if not target.is_file():
            raise InputError(f"external data file {location!r} is missing")


def _known_type(data_type: int) -> bool:
    if data_type == onnx.TensorProto.UNDEFINED:
        return False
    try:
        onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except Exception:
        return False
    return True


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    """The raw size of the tensor's values by its dims and type; ``None`` when it cannot be
    told (strings, unknown types)."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except Exception:
        return None
    count = 1
    for dim in tensor.dims:
        if dim < 0:
            return -1
        count *= dim
    if dtype.name in ("int4", "uint4", "float4_e2m1fn", "int2", "uint2"):
        bits = 2 if dtype.name.endswith("int2") else 4
        return (count * bits + 7) // 8
    return count * dtype.itemsize


def _external_extent(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError as error:
        raise InputError(f"tensor {tensor.name!r}: bad external data offset or length") from error
    return entries.get("location", ""), offset, length


def _typed_count_problem(tensor: onnx.TensorProto, expected: int) -> str | None:
    """A tensor stored in a typed field (float_data, int32_data, ...) with the wrong count."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    if dtype.itemsize == 0 or dtype.name.startswith(("int4", "uint4", "float4", "int2", "uint2")):
        return None
    count = expected // dtype.itemsize * (2 if dtype.kind == "c" else 1)
    field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
    stored = len(getattr(tensor, field))
    if stored in (0, count):
        return None  # 0: no data at all, which the checker and onnxruntime report
    return f"{stored} values for dims {list(tensor.dims)} ({count})"


def _string_tensor_problem(tensor: onnx.TensorProto) -> str | None:
    """Strings live in ``string_data``, one per element; raw or external data cannot hold
    them."""
    if tensor.HasField("raw_data") or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return "a string tensor with raw or external data"
    count = 1
    for dim in tensor.dims:
        count *= max(dim, 0)
    if len(tensor.string_data) != count:
        return f"{len(tensor.string_data)} strings for dims {list(tensor.dims)}"
    return None


def _check_tensor_sizes(proto: onnx.ModelProto, path: Path, read: Collection[str] = ()) -> None:
    """Every initializer holds as many bytes as its dims say: the checker sees only the small
    ones (the skeleton leaves the large ones out), and a mismatch would surface later as a
    numpy error in the middle of a fold. Those in ``read`` were read by their dims already."""
    folder = path.parent
    for tensor in proto.graph.initializer:
        if tensor.name in read:
            continue
        if not _known_type(tensor.data_type):
            raise InputError(f"{path}: tensor {tensor.name!r} has no known data type")
        if tensor.data_type == onnx.TensorProto.STRING:
            if problem := _string_tensor_problem(tensor):
                raise InputError(f"{path}: tensor {tensor.name!r}: {problem}")
            continue
        expected = _expected_bytes(tensor)
        if expected is None:
            continue
        if expected < 0:
            raise InputError(f"{path}: tensor {tensor.name!r} has a negative dimension")
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location, offset, length = _external_extent(tensor)
            available = (folder / location).stat().st_size - offset
            if (length is not None and length != expected) or available < expected:
                raise InputError(
                    f"{path}: tensor {tensor.name!r}: its external data is shorter than its "
                    f"{list(tensor.dims)} dims need"
                )
        elif tensor.HasField("raw_data"):
            if len(tensor.raw_data) != expected:
                raise InputError(
                    f"{path}: tensor {tensor.name!r}: {len(tensor.raw_data)} bytes of data for "
                    f"dims {list(tensor.dims)} ({expected} bytes)"
                )
        elif problem := _typed_count_problem(tensor, expected):
            raise InputError(f"{path}: tensor {tensor.name!r}: {problem}")


# Attributes that must be positive (or not negative) for onnxruntime not to divide by zero
# while it builds a kernel: a zero ``group`` kills the process with SIGFPE, which no
# Python code can catch, so bnfold refuses such a node before any session is made.
_POSITIVE_ATTRIBUTES = {
    "Conv": ("group", "strides", "dilations", "kernel_shape"),
    "ConvTranspose": ("group", "strides", "dilations", "kernel_shape"),
    "ConvInteger": ("group", "strides", "dilations", "kernel_shape"),
    "QLinearConv": ("group", "strides", "dilations", "kernel_shape"),
    "MaxPool": ("strides", "dilations", "kernel_shape"),
    "AveragePool": ("strides", "kernel_shape"),
    "LpPool": ("strides", "kernel_shape"),
}
_NON_NEGATIVE_ATTRIBUTES = ("pads", "output_padding")


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _nodes(subgraph)


def _weight_dims(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """The dimensions of every initializer, subgraphs included (no tensor data is read)."""
    dims = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                dims.update(_weight_dims(subgraph))
    return dims


def _group_problem(node: onnx.NodeProto, weight_dims: dict[str, list[int]]) -> str | None:
    """Why a Conv/ConvTranspose's ``group`` does not fit its constant weight, if it does not:
    Conv ``[out, in/g, k...]`` needs ``g | out``, ConvTranspose ``[in, out/g, k...]`` ``g | in``
    (``onnx.checker`` accepts both; onnxruntime and the fold arithmetic do not)."""
    if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
        return None
    dims = weight_dims.get(node.input[1])
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if not dims or group < 1 or dims[0] % group == 0:
        return None
    side = "output" if node.op_type == "Conv" else "input"
    return f"group {group} does not divide the weight's {dims[0]} {side} channels"


def _check_attributes(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse attribute values that crash onnxruntime instead of raising an error."""
    weight_dims = _weight_dims(proto.graph)
    for node in _nodes(proto.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        if problem := _group_problem(node, weight_dims):
            where = node.name or (node.output[0] if node.output else node.op_type)
            raise InputError(
                f"{path}: invalid ONNX model: {node.op_type} node {where!r}: {problem}"
            )
        positive = _POSITIVE_ATTRIBUTES.get(node.op_type, ())
        for attribute in node.attribute:
            values = list(attribute.ints) if attribute.ints else [attribute.i]
            if attribute.name in positive and any(value < 1 for value in values):
                bad = "must be at least 1"
            elif attribute.name in _NON_NEGATIVE_ATTRIBUTES and any(v < 0 for v in values):
                bad = "must not be negative"
            else:
                continue
            where = node.name or (node.output[0] if node.output else node.op_type)
            raise InputError(
                f"{path}: invalid ONNX model: {node.op_type} node {where!r}: "
                f"{attribute.name} {values if attribute.ints else values[0]} {bad}"
            )


def _bad_text(message: Any) -> str | None:
    """The first string field of ``message`` (names, types, docs, in every nested message)
    that is not valid UTF-8: protobuf hands such a field over as bytes, and onnx_ir cannot
    write it back. Tensor data (bytes and numbers) is not visited, nor copied."""
    if isinstance(message, onnx.TensorProto):
        names = [message.name, message.doc_string]
        names += [text for entry in message.external_data for text in (entry.key, entry.value)]
        bad = next((text for text in names if isinstance(text, bytes)), None)
        return None if bad is None else f"tensor name or location {bad[:40]!r}"
    if isinstance(message, onnx.AttributeProto):
        for text in [message.s, *message.strings]:  # bytes in protobuf, UTF-8 text in ONNX
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                return f"attribute {message.name} {text[:40]!r}"
    for descriptor, value in message.ListFields():
        if descriptor.type == FieldDescriptor.TYPE_STRING:
            texts = [value] if isinstance(value, str | bytes) else list(value)
            for text in texts:
                if isinstance(text, bytes):
                    return f"{descriptor.name} {text[:40]!r}"
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            items = [value] if isinstance(value, Message) else value
            for item in items:
                if found := _bad_text(item):
                    return found
    return None


# Initializers above this size are left out of the skeleton that is checked and shape-inferred;
# smaller ones stay, since shape inference reads Reshape targets and the like from them.
SKELETON_TENSOR_BYTES = 4096


def _stored_bytes(tensor: onnx.TensorProto) -> int:
    """About the tensor's serialised size, from its dims where they tell it (sizes were
    checked against the data already): ``ByteSize`` walks the whole message, a tenth of a
    second over a ResNet50's weights."""
    expected = _expected_bytes(tensor)
    return tensor.ByteSize() if expected is None or expected < 0 else expected


def skeleton(proto: onnx.ModelProto) -> onnx.ModelProto:
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
            or _stored_bytes(tensor) > SKELETON_TENSOR_BYTES
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


@dataclass
class ReadModel:
    """A validated file: the model, whose large plain weights come without data, their
    arrays by name (``bnfold.frontends.onnx_read``), and the skeleton the checker passed,
    which shape inference reuses."""

    proto: onnx.ModelProto
    arrays: dict[str, npt.NDArray[Any]]
    skeleton: onnx.ModelProto


def read_model(path: Path) -> ReadModel:
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
        parsed = parse_model(path)
    except Exception as error:
        raise _not_onnx(path, error) from error
    proto = parsed.proto
    if not proto.graph.node and not proto.graph.output:
        raise InputError(f"{path}: not an ONNX model (no graph)")
    _check_external_data(proto, path.parent)
    _check_tensor_sizes(proto, path, parsed.arrays)
    _check_attributes(proto, path)
    if bad := _bad_text(proto):
        raise InputError(f"{path}: invalid ONNX model: {bad} is not valid UTF-8 text")
    lean = skeleton(proto)
    try:
        onnx.checker.check_model(lean)
    except Exception as error:
        raise InputError(f"{path}: invalid ONNX model: {_one_line(error)}") from error
    return ReadModel(proto, parsed.arrays, lean)
