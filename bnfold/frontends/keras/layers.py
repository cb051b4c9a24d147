"""Keras layers described to the fold core as ONNX nodes, and their folded weights read back.

A description is a small function per layer kind: ``lower_*`` writes the layer as the
standard ONNX ops whose fold rules already exist (Dense -> Gemm or MatMul+Add, ConvND ->
Transpose/Conv/Transpose for channels_last, DepthwiseConvND -> grouped Conv, SeparableConvND
-> depthwise Conv + 1x1 Conv, ConvNDTranspose -> ConvTranspose, BatchNormalization -> Mul/Add
by per-channel constants, Flatten/Reshape/Permute/Dropout -> layout ops), with the kernel
moved into the ONNX layout; ``read_back.py`` moves the (possibly folded) ONNX weights back
into the Keras layout, and ``batchnorm.py`` describes the BN itself. Padding, strides, dilation and groups are written as the ONNX attributes
the rules judge exactness by. A layer kind without a description is an opaque node, which
no rule folds through. No TensorFlow here: only config dicts and ``get_weights`` arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from bnfold.frontends.keras.emit import (
    CONV_LAYERS,
    DEPTHWISE_LAYERS,
    IDENTITY_LAYERS,
    OPAQUE_DOMAIN,
    SEPARABLE_LAYERS,
    TRANSPOSE_LAYERS,
    Array,
    Call,
    Emitter,
    ir_shape,
)


def _spatial(value: Any, count: int, default: int = 1) -> list[int]:
    if value is None:
        return [default] * count
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    return [int(value)] * count


def _channels_last(config: dict[str, Any]) -> bool:
    return config.get("data_format") in (None, "channels_last")


def _to_onnx_layout(rank: int) -> tuple[list[int], list[int]]:
    """Permutations NHWC -> NCHW and back for a tensor of ``rank`` dimensions."""
    return [0, rank - 1, *range(1, rank - 1)], [0, *range(2, rank), 1]


def _conv_attributes(call: Call, kernel: Sequence[int]) -> dict[str, Any]:
    """ONNX strides, dilations and pads for Keras ``padding`` (valid / same / causal)."""
    count = len(kernel)
    strides = _spatial(call.config.get("strides"), count)
    dilations = _spatial(call.config.get("dilation_rate"), count)
    attributes: dict[str, Any] = {"strides": strides, "dilations": dilations}
    padding = str(call.config.get("padding", "valid")).lower()
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    if padding == "valid":
        attributes["pads"] = [0] * (2 * count)
    elif padding == "causal":
        attributes["pads"] = [extents[0] - 1, 0]
    else:
        sizes = _spatial_sizes(call)
        if sizes is None:
            attributes["auto_pad"] = "SAME_UPPER"
            return attributes
        totals = [
            max((math.ceil(n / s) - 1) * s + e - n, 0)
            for n, s, e in zip(sizes, strides, extents, strict=True)
        ]
        begins = [total // 2 for total in totals]
        attributes["pads"] = begins + [t - b for t, b in zip(totals, begins, strict=True)]
    return attributes


def _spatial_sizes(call: Call) -> list[int] | None:
    shape = call.input_shape
    if shape is None:
        return None
    spatial = shape[1:-1] if _channels_last(call.config) else shape[2:]
    if any(d is None for d in spatial):
        return None
    return [int(d) for d in spatial if d is not None]


def _first_shape(call: Call, shape: tuple[int | None, ...] | None) -> ir.Shape | None:
    """``shape`` (Keras layout) as the ONNX conv sees it: channels moved to axis 1."""
    if shape is None or not _channels_last(call.config):
        return ir_shape(shape)
    to_first, _ = _to_onnx_layout(len(shape))
    return ir_shape(tuple(shape[i] for i in to_first))


def _enter(emit: Emitter, call: Call) -> ir.Value:
    """The layer's input in channels_first layout (a Transpose for channels_last)."""
    data = call.inputs[0]
    if not _channels_last(call.config) or call.input_shape is None:
        return data
    to_first, _ = _to_onnx_layout(len(call.input_shape))
    shape = _first_shape(call, call.input_shape)
    return emit.node("Transpose", [data], "nchw", shape, {"perm": to_first})


def _leave(emit: Emitter, call: Call, value: ir.Value) -> ir.Value:
    if not _channels_last(call.config) or call.output_shape is None:
        return value
    _, to_last = _to_onnx_layout(len(call.output_shape))
    return emit.node("Transpose", [value], "nhwc", ir_shape(call.output_shape), {"perm": to_last})


def _with_activation(emit: Emitter, call: Call, value: ir.Value) -> ir.Value:
    """A non-linear activation is an opaque node: nothing folds through it."""
    activation = call.config.get("activation", "linear")
    if activation in ("linear", None):
        return value
    return emit.node(
        "Activation", [value], "activation", ir_shape(call.output_shape), domain=OPAQUE_DOMAIN
    )


def _bias(call: Call, index: int) -> Array | None:
    return call.weights[index] if call.config.get("use_bias", True) else None


# ------------------------------------------------------------------ lowering, per layer kind


def lower_dense(emit: Emitter, call: Call) -> ir.Value:
    """Dense ``[in, out]``: Gemm on 2-D input (bias in C), MatMul + Add on higher ranks."""
    kernel, bias = call.weights[0], _bias(call, 1)
    data, shape = call.inputs[0], ir_shape(call.output_shape)
    if call.input_shape is not None and len(call.input_shape) == 2:
        inputs = [data, emit.constant(kernel, "kernel")]
        if bias is not None:
            inputs.append(emit.constant(bias, "bias"))
        return _with_activation(emit, call, emit.node("Gemm", inputs, "", shape))
    value = emit.node("MatMul", [data, emit.constant(kernel, "kernel")], "", shape)
    if bias is not None:
        value = emit.node("Add", [value, emit.constant(bias, "bias")], "bias_add", shape)
    return _with_activation(emit, call, value)


def lower_conv(emit: Emitter, call: Call) -> ir.Value:
    """ConvND ``[k..., in/g, out]`` -> ONNX ``[out, in/g, k...]``, group from ``groups``."""
    kernel = call.weights[0]
    rank = kernel.ndim
    weight = np.transpose(kernel, (rank - 1, rank - 2, *range(rank - 2)))
    attributes = _conv_attributes(call, kernel.shape[:-2])
    attributes["group"] = int(call.config.get("groups") or 1)
    return _conv_node(emit, call, weight, _bias(call, 1), attributes)


def _conv_node(
    emit: Emitter, call: Call, weight: Array, bias: Array | None, attributes: dict[str, Any]
) -> ir.Value:
    inputs = [_enter(emit, call), emit.constant(weight, "kernel")]
    if bias is not None:
        inputs.append(emit.constant(bias, "bias"))
    value = emit.node("Conv", inputs, "", _first_shape(call, call.output_shape), attributes)
    return _with_activation(emit, call, _leave(emit, call, value))


def _depthwise_weight(kernel: Array) -> Array:
    """``[k..., in, mult]`` -> ``[in*mult, 1, k...]``: output channel ``c*mult + m``."""
    flat = kernel.reshape((*kernel.shape[:-2], -1))
    return np.moveaxis(flat, -1, 0)[:, None]


def depthwise_kernel(weight: Array, like: Array) -> Array:
    return np.moveaxis(weight[:, 0], 0, -1).reshape(like.shape)


def lower_depthwise(emit: Emitter, call: Call) -> ir.Value:
    kernel = call.weights[0]
    attributes = _conv_attributes(call, kernel.shape[:-2])
    attributes["group"] = int(kernel.shape[-2])
    return _conv_node(emit, call, _depthwise_weight(kernel), _bias(call, 1), attributes)


def lower_separable(emit: Emitter, call: Call) -> ir.Value:
    """Depthwise Conv (no bias) then a 1x1 Conv holding the pointwise kernel and the bias."""
    depthwise, pointwise = call.weights[0], call.weights[1]
    attributes = _conv_attributes(call, depthwise.shape[:-2])
    attributes["group"] = int(depthwise.shape[-2])
    mid_shape = None
    if call.output_shape is not None:
        channels = depthwise.shape[-2] * depthwise.shape[-1]
        keras_mid = list(call.output_shape)
        keras_mid[-1 if _channels_last(call.config) else 1] = int(channels)
        mid_shape = _first_shape(call, tuple(keras_mid))
    inputs = [_enter(emit, call), emit.constant(_depthwise_weight(depthwise), "depthwise_kernel")]
    middle = emit.node("Conv", inputs, "depthwise", mid_shape, attributes)
    spatial = pointwise.ndim - 2
    weight = np.transpose(pointwise, (spatial + 1, spatial, *range(spatial)))
    point_inputs = [middle, emit.constant(weight, "pointwise_kernel")]
    bias = _bias(call, 2)
    if bias is not None:
        point_inputs.append(emit.constant(bias, "bias"))
    point_attributes = {"pads": [0] * (2 * spatial), "group": 1}
    value = emit.node(
        "Conv", point_inputs, "", _first_shape(call, call.output_shape), point_attributes
    )
    return _with_activation(emit, call, _leave(emit, call, value))


def lower_conv_transpose(emit: Emitter, call: Call) -> ir.Value:
    """ConvNDTranspose ``[k..., out, in]`` -> ONNX ``[in, out, k...]``."""
    kernel = call.weights[0]
    rank = kernel.ndim
    weight = np.transpose(kernel, (rank - 1, rank - 2, *range(rank - 2)))
    count = rank - 2
    attributes: dict[str, Any] = {
        "strides": _spatial(call.config.get("strides"), count),
        "dilations": _spatial(call.config.get("dilation_rate"), count),
    }
    output_padding = call.config.get("output_padding")
    if output_padding is not None:
        attributes["output_padding"] = _spatial(output_padding, count, 0)
    if str(call.config.get("padding", "valid")).lower() == "valid":
        attributes["pads"] = [0] * (2 * count)
    else:
        attributes["auto_pad"] = "SAME_UPPER"
    inputs = [_enter(emit, call), emit.constant(weight, "kernel")]
    bias = _bias(call, 1)
    if bias is not None:
        inputs.append(emit.constant(bias, "bias"))
    value = emit.node(
        "ConvTranspose", inputs, "", _first_shape(call, call.output_shape), attributes
    )
    return _with_activation(emit, call, _leave(emit, call, value))


def lower_layout(emit: Emitter, call: Call) -> ir.Value | None:
    """Flatten, Reshape, Permute, Concatenate and the inference-time identities; ``None``
    otherwise."""
    data, shape, name = call.inputs[0], ir_shape(call.output_shape), call.class_name
    if name in IDENTITY_LAYERS:
        return emit.node("Identity", [data], "", shape)
    if name == "Flatten" and _channels_last(call.config):
        return emit.node("Flatten", [data], "", shape, {"axis": 1})
    if name == "Reshape":
        target = np.asarray([0, *call.config["target_shape"]], dtype=np.int64)
        return emit.node("Reshape", [data, emit.constant(target, "shape")], "", shape)
    if name == "Permute":
        return emit.node("Transpose", [data], "", shape, {"perm": [0, *call.config["dims"]]})
    if name == "Concatenate" and call.output_shape is not None:
        # A BN after it folds into each input's layer (the core's Concat rule), all or none.
        axis = int(call.config.get("axis", -1)) % len(call.output_shape)
        return emit.node("Concat", list(call.inputs), "", shape, {"axis": axis})
    return None


LOWERINGS: dict[str, Callable[[Emitter, Call], ir.Value]] = {
    "Dense": lower_dense,
    **dict.fromkeys(CONV_LAYERS, lower_conv),
    **dict.fromkeys(DEPTHWISE_LAYERS, lower_depthwise),
    **dict.fromkeys(SEPARABLE_LAYERS, lower_separable),
    **dict.fromkeys(TRANSPOSE_LAYERS, lower_conv_transpose),
}
