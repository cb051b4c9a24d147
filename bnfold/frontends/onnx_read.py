"""Parse an ONNX file with its large weights read straight into arrays of their own.

``onnx.load`` reads the whole file into one bytes object, then parses it into a ModelProto
holding a second copy of every weight; the fold then needs a third, as arrays. Here the file
is mapped and only its protobuf framing is walked: each large main-graph initializer stored
as ``raw_data`` is parsed without its data (the header: name, dims, type), and its bytes are
read from the file into a numpy array, once. The rest of the model (nodes, small tensors,
subgraphs) is parsed by protobuf as usual. Anything unusual about a tensor (external data,
repeated fields, a size that disagrees with its dims, a type numpy lacks) leaves it to
protobuf, and a file whose framing cannot be walked is read by ``onnx.load`` instead, whose
error then says what is wrong with it.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

# Initializers at least this large are read into arrays; smaller ones are not worth it.
READ_TENSOR_BYTES = 64 * 1024
# Tensor types whose values are plain numpy arrays, their raw bytes the array's bytes (not
# ml_dtypes' bfloat16, float8, int4), which onnxruntime also takes as inputs as they are.
PLAIN_TYPES = frozenset(
    {"float16", "float32", "float64", "bool", "int8", "int16", "int32", "int64"}
    | {"uint8", "uint16", "uint32", "uint64"}
)
_LENGTH_DELIMITED = 2
_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_DATA_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


class _Unusual(ValueError):
    """The framing is not what this reader handles; ``onnx.load`` reads the file instead."""


@dataclass(frozen=True)
class _Field:
    number: int
    wire: int
    start: int  # where the field's tag begins
    value: int  # where a length-delimited field's bytes begin
    end: int  # just past the field


def _varint(buffer: Any, position: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise _Unusual("varint too long")


def _encode_varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _fields(buffer: Any, start: int, end: int) -> Iterator[_Field]:
    """The fields of the message that fills ``buffer[start:end]``."""
    position = start
    while position < end:
        tag, value = _varint(buffer, position)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, after = _varint(buffer, value)
        elif wire == 1:
            after = value + 8
        elif wire == 5:
            after = value + 4
        elif wire == _LENGTH_DELIMITED:
            length, value = _varint(buffer, value)
            after = value + length
        else:
            raise _Unusual(f"wire type {wire}")
        if after > end or number == 0:
            raise _Unusual("field past the end of its message")
        yield _Field(number, wire, position, value, after)
        position = after


@dataclass
class ParsedModel:
    """The model (its large weights without data) and those weights' arrays, by name."""

    proto: onnx.ModelProto
    arrays: dict[str, npt.NDArray[Any]]


def _raw_span(buffer: Any, field: _Field) -> tuple[onnx.TensorProto, bytes, int] | None:
    """A tensor field's header (every field but ``raw_data``) and where its data lies, when
    it is a plain tensor whose one ``raw_data`` holds exactly what its dims say."""
    pieces, spans = [], []
    for inner in _fields(buffer, field.value, field.end):
        if inner.number == _RAW_DATA_FIELD and inner.wire == _LENGTH_DELIMITED:
            spans.append((inner.value, inner.end - inner.value))
        else:
            pieces.append(buffer[inner.start : inner.end])
    header_bytes = b"".join(pieces)
    header = onnx.TensorProto.FromString(header_bytes)
    if len(spans) != 1 or header.data_location or len(header.external_data):
        return None
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(header.data_type)
    except Exception:
        return None
    count = int(np.prod(header.dims, dtype=np.int64)) if header.dims else 1
    offset, length = spans[0]
    if dtype.name not in PLAIN_TYPES or min(header.dims, default=0) < 0:
        return None
    return (header, header_bytes, offset) if count * dtype.itemsize == length else None


def _read_array(file: Any, header: onnx.TensorProto, offset: int) -> npt.NDArray[Any]:
    """The tensor's data, read from the file into a new array (raw data is little-endian)."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(header.data_type).newbyteorder("<")
    array = np.empty(tuple(header.dims), dtype=dtype)
    file.seek(offset)
    if file.readinto(array.reshape(-1).view(np.uint8).data) != array.nbytes:
        raise _Unusual("file shorter than its tensors")
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    # Read-only, as the arrays protobuf tensors give: a fold that changed one in place would
    # change the original, the reference of its own check.
    array.flags.writeable = False
    return array


def _lean_graph(
    buffer: Any, graph: _Field, file: Any, arrays: dict[str, npt.NDArray[Any]]
) -> bytes:
    """The graph's bytes with each large plain initializer's ``raw_data`` left out, its
    array read into ``arrays``."""
    pieces = []
    for field in _fields(buffer, graph.value, graph.end):
        large = field.end - field.value >= READ_TENSOR_BYTES
        span = _raw_span(buffer, field) if large and field.number == _INITIALIZER_FIELD else None
        if span is None or field.wire != _LENGTH_DELIMITED:
            pieces.append(buffer[field.start : field.end])
            continue
        header, header_bytes, offset = span
        if header.name in arrays:
            raise _Unusual(f"two initializers named {header.name!r}")
        arrays[header.name] = _read_array(file, header, offset)
        pieces.append(_encode_varint(_INITIALIZER_FIELD << 3 | _LENGTH_DELIMITED))
        pieces.append(_encode_varint(len(header_bytes)) + header_bytes)
    return b"".join(pieces)


def _parse_mapped(path: Path) -> ParsedModel:
    arrays: dict[str, npt.NDArray[Any]] = {}
    pieces: list[bytes] = []
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        graphs = 0
        for field in _fields(buffer, 0, len(buffer)):
            if field.number != _GRAPH_FIELD or field.wire != _LENGTH_DELIMITED:
                pieces.append(buffer[field.start : field.end])
                continue
            graphs += 1
            if graphs > 1:
                raise _Unusual("two graph fields")  # protobuf merges them; onnx.load does that
            graph = _lean_graph(buffer, field, file, arrays)
            pieces.append(_encode_varint(_GRAPH_FIELD << 3 | _LENGTH_DELIMITED))
            pieces.append(_encode_varint(len(graph)) + graph)
    return ParsedModel(onnx.ModelProto.FromString(b"".join(pieces)), arrays)


def parse_model(path: Path) -> ParsedModel:
    """Parse ``path`` (external data not loaded), large plain weights read into arrays;
    raises what ``onnx.load`` raises for a file that is not a model."""
    try:
        return _parse_mapped(path)
    except Exception:  # _Unusual, IndexError, protobuf's DecodeError: onnx.load says it in full
        pass
    return ParsedModel(onnx.load(str(path), load_external_data=False), {})
