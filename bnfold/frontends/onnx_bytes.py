"""An in-memory ONNX model as protobuf bytes, its large weights streamed from their arrays.

``ir.save`` builds a ModelProto holding a copy of every weight, then serialises it into one
bytes object holding a second copy, then writes it: three passes over the weights and two
extra copies in memory. Here the model is serialised without its large initializers, and
each of them is written as its own length-delimited protobuf field, header then data,
straight from the tensor. Protobuf lets fields come in any order, so the bytes parse to the
same ModelProto (initializers in their order, after the other graph fields).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Collection, Iterator
from typing import BinaryIO

import numpy as np
import onnx
import onnx_ir as ir

from bnfold.frontends.onnx_read import PLAIN_TYPES

# Initializers at least this large are streamed; smaller ones are not worth the bookkeeping.
STREAM_TENSOR_BYTES = 64 * 1024

_LENGTH_DELIMITED = 2
_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_DATA_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low = number & 0x7F
        number >>= 7
        if number:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field_header(field: int, length: int) -> bytes:
    return _varint(field << 3 | _LENGTH_DELIMITED) + _varint(length)


def _streamable(tensor: ir.TensorProtocol | None) -> bool:
    """Large numeric tensors whose proto holds ``raw_data`` (a loaded tensor written as
    ``float_data`` and the like keeps that form, since it is copied as it is)."""
    if isinstance(tensor, ir.serde.TensorProtoTensor) and not tensor.raw.HasField("raw_data"):
        return False
    return (
        tensor is not None
        and not isinstance(tensor, ir.ExternalTensor | ir.StringTensor)
        and tensor.dtype != ir.DataType.STRING
        and tensor.nbytes >= STREAM_TENSOR_BYTES
    )


@contextlib.contextmanager
def _placeholders(
    graph: ir.Graph, names: Collection[str] | None = None
) -> Iterator[dict[str, ir.TensorProtocol]]:
    """Swap each large initializer's tensor (or each one of ``names``) for a data-less
    stand-in (an ``ExternalTensor``, whose proto is a header) while the graph is serialised;
    the tensors are put back after."""
    swapped: dict[str, ir.TensorProtocol] = {}
    values = dict(graph.initializers.items())
    try:
        for name, value in values.items():
            tensor = value.const_value
            chosen = _streamable(tensor) if names is None else name in names
            if tensor is None or not chosen:
                continue
            swapped[name] = tensor
            value.const_value = ir.ExternalTensor(
                "",
                None,
                None,
                tensor.dtype,
                shape=ir.Shape(tensor.shape.numpy()),
                name=name,
                doc_string=tensor.doc_string,
                metadata_props=dict(tensor.metadata_props),
            )
        yield swapped
    finally:
        for name, tensor in swapped.items():
            values[name].const_value = tensor


def _lean_parts(
    model: ir.Model,
) -> tuple[bytes, bytes, list[tuple[onnx.TensorProto, ir.TensorProtocol | None]]]:
    """The model without its graph, the graph without its initializers, and each initializer
    in order: its proto (a bare header for a streamed one) and the tensor to stream, if any."""
    with _placeholders(model.graph) as streamed:
        proto = ir.serde.serialize_model(model)
    entries = []
    for header in proto.graph.initializer:
        tensor = streamed.get(header.name)
        if tensor is not None:
            header.ClearField("data_location")  # the stand-in's external data marks
            header.ClearField("external_data")
        entries.append((header, tensor))
    graph = onnx.GraphProto()
    graph.CopyFrom(proto.graph)
    del graph.initializer[:]
    proto.ClearField("graph")
    return proto.SerializeToString(), graph.SerializeToString(), entries


def _entry_size(header: onnx.TensorProto, tensor: ir.TensorProtocol | None) -> int:
    body = header.ByteSize()
    if tensor is not None:
        body += len(_field_header(_RAW_DATA_FIELD, tensor.nbytes)) + tensor.nbytes
    return len(_field_header(_INITIALIZER_FIELD, body)) + body


def _raw_bytes(tensor: ir.TensorProtocol) -> bytes | memoryview:
    """The tensor's raw data: a view of a numpy-backed tensor's own array where its memory
    already is that layout (contiguous, little-endian), so no weight is copied to be written."""
    if isinstance(tensor, ir.Tensor) and sys.byteorder == "little":
        array = tensor.numpy()
        plain = array.dtype.name in PLAIN_TYPES and array.dtype == tensor.dtype.numpy()
        if plain and array.dtype.isnative and array.flags.c_contiguous:
            return array.reshape(-1).view(np.uint8).data
    return tensor.tobytes()


def _entry(
    header: onnx.TensorProto, tensor: ir.TensorProtocol | None
) -> Iterator[bytes | memoryview]:
    """One ``initializer`` field of the graph: the header (data and all, for a small tensor),
    then, for a streamed one, its ``raw_data`` field."""
    head = header.SerializeToString()
    if tensor is None:
        yield _field_header(_INITIALIZER_FIELD, len(head)) + head
        return
    data = _raw_bytes(tensor)
    if len(data) != tensor.nbytes:  # the graph's length, already written, counted nbytes
        raise ValueError(f"tensor {header.name!r}: {len(data)} bytes, not {tensor.nbytes}")
    head += _field_header(_RAW_DATA_FIELD, len(data))
    yield _field_header(_INITIALIZER_FIELD, len(head) + len(data)) + head
    yield data


def model_chunks(model: ir.Model) -> Iterator[bytes | memoryview]:
    """The serialised model in pieces; joined, they are a valid ONNX file. Each large
    tensor's bytes are made only when its turn comes, so memory holds one at a time."""
    model_part, graph_part, entries = _lean_parts(model)
    # The graph's length comes before the graph: size every entry before writing any.
    graph_size = len(graph_part) + sum(_entry_size(header, tensor) for header, tensor in entries)
    yield model_part
    yield _field_header(_GRAPH_FIELD, graph_size)
    yield graph_part
    for header, tensor in entries:
        yield from _entry(header, tensor)


def model_bytes(model: ir.Model) -> bytes:
    """The serialised model, as ``ir.serde.serialize_model(model).SerializeToString()``."""
    return b"".join(model_chunks(model))


def write_model(model: ir.Model, file: BinaryIO) -> None:
    """Write the serialised model to an open binary file."""
    for chunk in model_chunks(model):
        file.write(chunk)


def weightless_proto(model: ir.Model, names: Collection[str]) -> onnx.ModelProto:
    """``model`` with the main graph's initializers ``names`` turned into graph inputs of
    their type and shape: a skeleton onnxruntime parses in milliseconds, fed the weights
    as inputs from their arrays, so neither a serialised copy nor onnxruntime's own copy
    of them is ever made."""
    with _placeholders(model.graph, names):
        proto = ir.serde.serialize_model(model)
    kept = [tensor for tensor in proto.graph.initializer if tensor.name not in names]
    moved = [tensor for tensor in proto.graph.initializer if tensor.name in names]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    proto.graph.input.extend(
        onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
        for tensor in moved
    )
    return proto
