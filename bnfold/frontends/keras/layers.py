"""Keras layers described to the fold core as ONNX nodes, and their folded weights read back.

A description is two small functions per layer kind: ``lower`` writes the layer as the
standard ONNX ops whose fold rules already exist (Dense -> Gemm or MatMul+Add, ConvND ->
Transpose/Conv/Transpose for channels_last, DepthwiseConvND -> grouped Conv, SeparableConvND
-> depthwise Conv + 1x1 Conv, ConvNDTranspose -> ConvTranspose, BatchNormalization -> Mul/Add
by per-channel constants, Flatten/Reshape/Permute/Dropout -> layout ops), with the kernel
moved into the ONNX layout; ``read_back`` moves the (possibly folded) ONNX weights back into
the Keras layout. Padding, strides, dilation and groups are written as the ONNX attributes
the rules judge exactness by. A layer kind without a description is an opaque node, which
no rule folds through. No TensorFlow here: only config dicts and ``get_weights`` arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.affine import ScaleShift, along_axis, batchnorm_scale_shift
from bnfold.graph import constant_array, sole_consumer

Array = npt.NDArray[Any]
OPAQUE_DOMAIN = "bnfold.keras"
IDENTITY_LAYERS = frozenset(
    {
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "Identity",
    }
)
CONV_LAYERS = frozenset({"Conv1D", "Conv2D", "Conv3D"})
DEPTHWISE_LAYERS = frozenset({"DepthwiseConv1D", "DepthwiseConv2D"})
SEPARABLE_LAYERS = frozenset({"SeparableConv1D", "SeparableConv2D"})
TRANSPOSE_LAYERS = frozenset({"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"})
LINEAR_LAYERS = CONV_LAYERS | DEPTHWISE_LAYERS | SEPARABLE_LAYERS | TRANSPOSE_LAYERS | {"Dense"}


class Emitter:
    """What a description writes with: the graph, a constant maker, the node table."""

    def __init__(self, graph: ir.Graph, path: str, layer: str) -> None:
        self.graph = graph
        self.path = path  # unique per call: node and constant names start with it
        self.layer = layer  # the Keras layer's path, the same for all its calls
        self.nodes: list[ir.Node] = []

    def constant(self, array: Array, role: str) -> ir.Value:
        name = f"{self.path}/{role}"
        value = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            const_value=ir.tensor(array, name=name),
        )
        self.graph.register_initializer(value)
        return value

    def node(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        role: str,
        shape: ir.Shape | None,
        attributes: dict[str, Any] | None = None,
        domain: str = "",
    ) -> ir.Value:
        name = self.path if role == "" else f"{self.path}/{role}"
        attrs = [ir.convenience.convert_attribute(k, v) for k, v in (attributes or {}).items()]
        node = ir.Node(domain, op_type, list(inputs), attrs, name=name, num_outputs=1)
        node.metadata_props["keras_layer"] = self.layer
        node.metadata_props["keras_role"] = role
        output = node.outputs[0]
        output.name = name if role == "" else f"{self.path}/{role}:0"
        output.shape = shape
        output.type = ir.TensorType(ir.DataType.FLOAT)
        self.graph.append(node)
        self.nodes.append(node)
        return output


@dataclass(frozen=True)
class Call:
    """One call of a layer: its config, weights, input values and shapes, output shape."""

    class_name: str
    config: dict[str, Any]
    weights: list[Array]
    inputs: list[ir.Value]
    input_shape: tuple[int | None, ...] | None
    output_shape: tuple[int | None, ...] | None


def ir_shape(shape: tuple[int | None, ...] | None) -> ir.Shape | None:
    if shape is None:
        return None
    return ir.Shape(["batch" if i == 0 and d is None else d for i, d in enumerate(shape)])


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


def _keras_rank_ok(call: Call) -> bool:
    return call.input_shape is not None and len(call.input_shape) >= 3


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


def _depthwise_kernel(weight: Array, like: Array) -> Array:
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


def keras_batchnorm_affine(
    parameters: Mapping[str, npt.ArrayLike | None], epsilon: float
) -> ScaleShift:
    """``s = gamma / sqrt(moving_variance + epsilon)``, ``t = beta - s*moving_mean``.

    ``parameters`` holds ``moving_mean`` and ``moving_variance`` and, when the layer has them,
    ``gamma`` (``scale=True``) and ``beta`` (``center=True``); absent ones are 1 and 0.
    """
    mean = np.asarray(parameters["moving_mean"], dtype=np.float64).reshape(-1)
    variance = parameters["moving_variance"]
    gamma = parameters.get("gamma")
    beta = parameters.get("beta")
    return batchnorm_scale_shift(
        np.ones_like(mean) if gamma is None else gamma,
        np.zeros_like(mean) if beta is None else beta,
        mean,
        np.asarray(variance),
        epsilon,
    )


def batchnorm_affine(config: dict[str, Any], weights: list[Array]) -> ScaleShift:
    """The BN's ``(s, t)`` from its ``get_weights()`` (gamma, beta only when the layer has
    them, then moving mean and variance). Raises ``FoldArithmeticError`` on invalid values."""
    names = [
        name
        for name, on in (("gamma", config.get("scale", True)), ("beta", config.get("center", True)))
        if on
    ]
    parameters: dict[str, Any] = dict(zip(names, weights[: len(names)], strict=True))
    parameters["moving_mean"], parameters["moving_variance"] = weights[len(names) :][:2]
    return keras_batchnorm_affine(parameters, float(config.get("epsilon", 1e-3)))


def batchnorm_axis(config: dict[str, Any], rank: int) -> int | None:
    axes = config.get("axis", -1)
    axes = list(axes) if isinstance(axes, list | tuple) else [axes]
    return int(axes[0]) % rank if len(axes) == 1 and rank > 0 else None


def lower_batchnorm(emit: Emitter, call: Call, affine: ScaleShift, axis: int) -> ir.Value:
    """``x * s + t`` with ``s`` and ``t`` shaped to broadcast along ``axis``, kept in float64
    so that the fold reads the BN's own arithmetic, not a float32 rounding of it."""
    assert call.input_shape is not None
    trailing = len(call.input_shape) - 1 - axis
    shape = ir_shape(call.output_shape)
    scale = along_axis(affine.scale, 0, trailing + 1)
    shift = along_axis(affine.shift, 0, trailing + 1)
    scaled = emit.node("Mul", [call.inputs[0], emit.constant(scale, "scale")], "", shape)
    return emit.node("Add", [scaled, emit.constant(shift, "shift")], "shift", shape)


def lower_layout(emit: Emitter, call: Call) -> ir.Value | None:
    """Flatten, Reshape, Permute and the inference-time identities; ``None`` otherwise."""
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
    return None


LOWERINGS: dict[str, Callable[[Emitter, Call], ir.Value]] = {
    "Dense": lower_dense,
    **dict.fromkeys(CONV_LAYERS, lower_conv),
    **dict.fromkeys(DEPTHWISE_LAYERS, lower_depthwise),
    **dict.fromkeys(SEPARABLE_LAYERS, lower_separable),
    **dict.fromkeys(TRANSPOSE_LAYERS, lower_conv_transpose),
}


# ------------------------------------------------------------------ reading folded weights back


def _input_constant(node: ir.Node, index: int) -> Array | None:
    value = node.inputs[index] if index < len(node.inputs) else None
    array = constant_array(value)
    return None if array is None else np.asarray(array)


def _following_bias(node: ir.Node) -> Array | None:
    """The constant of the ``Add`` that alone reads ``node``'s output (MatMul's bias)."""
    reader = sole_consumer(node.outputs[0])
    if reader is None or reader.op_type != "Add":
        return None
    for index in (1, 0):
        constant = _input_constant(reader, index)
        if constant is not None and reader.inputs[1 - index] is node.outputs[0]:
            return constant.reshape(-1)
    return None


def _gemm_weights(node: ir.Node) -> tuple[Array, Array | None]:
    attrs = {a.name: a.value for a in node.attributes.values()}
    weight = _input_constant(node, 1)
    assert weight is not None
    kernel = weight.T if attrs.get("transB", 0) else weight
    kernel = kernel * float(attrs.get("alpha", 1.0))
    bias = _input_constant(node, 2)
    if bias is not None:
        bias = np.broadcast_to(bias * float(attrs.get("beta", 1.0)), kernel.shape[1:])
    return kernel.astype(weight.dtype), None if bias is None else bias.astype(weight.dtype)


def read_back(
    class_name: str, nodes: dict[str, ir.Node], weights: list[Array]
) -> tuple[list[Array], bool]:
    """The layer's ``get_weights()`` list from its (folded) ONNX nodes, and whether it now
    has a bias (a layer without one gains one when a BN shift lands in it)."""
    main = nodes[""]
    if class_name == "Dense":
        if main.op_type == "Gemm":
            return _assembled(*_gemm_weights(main))
        kernel = _input_constant(main, 1)
        assert kernel is not None
        return _assembled(kernel, _following_bias(main))
    weight = _input_constant(main, 1)
    bias = _input_constant(main, 2)
    assert weight is not None
    if class_name in DEPTHWISE_LAYERS:
        return _assembled(_depthwise_kernel(weight, weights[0]), bias)
    if class_name in SEPARABLE_LAYERS:
        depthwise_node = nodes["depthwise"]
        depthwise = _input_constant(depthwise_node, 1)
        assert depthwise is not None
        spatial = weight.ndim - 2
        pointwise = np.transpose(weight, (*range(2, 2 + spatial), 1, 0))
        shift = _input_constant(depthwise_node, 2)
        if shift is not None:  # a depthwise bias goes through the 1x1 pointwise kernel
            through = shift.astype(np.float64) @ pointwise.reshape(-1, pointwise.shape[-1])
            base = np.zeros(through.shape) if bias is None else bias.astype(np.float64)
            bias = (base + through).astype(weight.dtype)
        return _assembled(_depthwise_kernel(depthwise, weights[0]), bias, pointwise)
    rank = weight.ndim
    kernel = np.transpose(weight, (*range(2, rank), 1, 0))
    return _assembled(kernel, bias)


def _assembled(kernel: Array, bias: Array | None, *more_kernels: Array) -> tuple[list[Array], bool]:
    """``get_weights()`` order: the kernel(s), then the bias (in the kernel's dtype)."""
    kernels = [kernel, *more_kernels]
    if bias is None:
        return kernels, False
    return [*kernels, np.asarray(bias, dtype=kernel.dtype).reshape(-1)], True
