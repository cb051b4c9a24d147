"""Folded ONNX weights read back into a Keras layer's ``get_weights()`` layout: the inverse
of each description in ``layers.py``."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from bnfold.frontends.keras.emit import DEPTHWISE_LAYERS, SEPARABLE_LAYERS, Array
from bnfold.frontends.keras.layers import depthwise_kernel
from bnfold.graph import constant_array, sole_consumer


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
        return _assembled(depthwise_kernel(weight, weights[0]), bias)
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
        return _assembled(depthwise_kernel(depthwise, weights[0]), bias, pointwise)
    rank = weight.ndim
    kernel = np.transpose(weight, (*range(2, rank), 1, 0))
    return _assembled(kernel, bias)


def _assembled(kernel: Array, bias: Array | None, *more_kernels: Array) -> tuple[list[Array], bool]:
    """``get_weights()`` order: the kernel(s), then the bias (in the kernel's dtype)."""
    kernels = [kernel, *more_kernels]
    if bias is None:
        return kernels, False
    return [*kernels, np.asarray(bias, dtype=kernel.dtype).reshape(-1)], True
