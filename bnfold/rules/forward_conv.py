"""Affine before a Conv or ConvTranspose (any dims, any groups).

Conv, weight ``[out, in/g, k...]``, input channel ``c = group*(in/g) + j``:

    W'[o, j, k] = W[o, j, k] * s[c]        b'[o] = b[o] + sum_{j,k} W[o, j, k] * t[c]

for the input channels ``c`` of output channel ``o``'s group (depthwise: ``g == in``). Exact when
the convolution reads no padding zeros (``pads`` all 0 and ``auto_pad`` NOTSET/VALID, or SAME
with a 1x1 effective kernel), or when ``t == 0``; otherwise left with ``Reason.PADDING``.

ConvTranspose, weight ``[in, out/g, k...]``: ``W' = W * s`` along axis 0 and output channel
``o = group*(out/g) + j`` gains ``sum_{i,k} W[i, j, k] * t[i]``. That sum reaches an output
position only when it receives every kernel tap, which holds everywhere only for a 1x1 kernel
with stride 1, so otherwise ``t`` must be 0. Two reasons tell the cases apart: with the
(dilated) kernel equal to the stride on every axis and no ``output_padding``, every output
position receives exactly one tap, ``sum_i W[i, j, k] * t[i]`` for its offset ``k`` in the
stride: the shift becomes a pattern repeating with the stride, not a bias
(``Reason.SHIFT_NOT_BIAS``). Otherwise some positions receive fewer taps than others (the
zeros a transposed convolution pads and inserts between its inputs, which the shift never
reaches: ``Reason.PADDING``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.affine import ScaleShift, fold_before_grouped, fold_before_transposed
from bnfold.foldlog import Reason, Skip
from bnfold.graph import int_attr, ints_attr, node_label, set_constant_input, string_attr
from bnfold.rules.base import (
    FoldContext,
    cast_like,
    group_skip,
    weight_and_bias,
    weight_dtype_skip,
)
from bnfold.rules.forward import Apply, ForwardLayer, ForwardTarget


def _kernel_extent(node: ir.Node, weight: npt.NDArray[np.generic]) -> list[int]:
    """Effective kernel size per spatial axis: ``(k - 1) * dilation + 1``."""
    kernel = list(weight.shape[2:])
    dilations = ints_attr(node, "dilations") or [1] * len(kernel)
    return [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=False)]


def conv_padding(node: ir.Node, weight: npt.NDArray[np.generic]) -> str | None:
    """Why the Conv reads padding zeros, or ``None`` when it never does."""
    auto_pad = string_attr(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # SAME pads (ceil(in/stride) - 1) * stride + extent - in, which is <= 0 for extent 1.
        if all(extent == 1 for extent in _kernel_extent(node, weight)):
            return None
        return f"auto_pad={auto_pad}"
    if auto_pad == "VALID":
        return None
    pads = ints_attr(node, "pads") or []
    if any(pad != 0 for pad in pads):
        return f"pads={pads}"
    return None


def _write(
    context: FoldContext,
    node: ir.Node,
    weight: npt.NDArray[np.generic],
    bias: npt.NDArray[np.generic] | None,
) -> Apply:
    label = node_label(node)

    def apply() -> None:
        set_constant_input(context.graph, node, 1, weight, context.names, f"{label}_weight_bnfold")
        if bias is not None:
            set_constant_input(context.graph, node, 2, bias, context.names, f"{label}_bias_bnfold")

    return apply


def _describe(node: ir.Node, *, transposed: bool) -> ForwardLayer | Skip:
    """Conv weight ``[out, in/g, k...]`` reads ``(in/g) * g`` channels; ConvTranspose weight
    ``[in, out/g, k...]`` reads ``in``."""
    parameters = weight_and_bias(node, min_rank=3)
    if isinstance(parameters, Skip):
        return parameters
    weight = parameters[0]
    if dtype_skip := weight_dtype_skip(weight):
        return dtype_skip
    if bad_group := group_skip(node, weight):
        return bad_group
    channels = weight.shape[0] if transposed else weight.shape[1] * int_attr(node, "group", 1)
    return ForwardLayer(node, 1, channels)


class AffineThenConv(ForwardTarget):
    op_type = "Conv"

    def describe(self, node: ir.Node) -> ForwardLayer | Skip:
        return _describe(node, transposed=False)

    def plan(self, context: FoldContext, layer: ForwardLayer, affine: ScaleShift) -> Apply | Skip:
        node = layer.node
        parameters = weight_and_bias(node)
        assert not isinstance(parameters, Skip)
        weight, bias = parameters
        if not affine.has_zero_shift and (padding := conv_padding(node, weight)):
            return Skip(
                Reason.PADDING,
                f"{node_label(node)} pads its input with zeros ({padding}), which the BN "
                "shift would not reach",
            )
        new_weight, new_bias = fold_before_grouped(weight, bias, affine, int_attr(node, "group", 1))
        keep_bias = bias is not None or not affine.has_zero_shift
        return _write(
            context,
            node,
            cast_like(new_weight, weight),
            cast_like(new_bias, weight) if keep_bias else None,
        )


class AffineThenConvTranspose(ForwardTarget):
    op_type = "ConvTranspose"

    def describe(self, node: ir.Node) -> ForwardLayer | Skip:
        return _describe(node, transposed=True)

    def plan(self, context: FoldContext, layer: ForwardLayer, affine: ScaleShift) -> Apply | Skip:
        node = layer.node
        parameters = weight_and_bias(node)
        assert not isinstance(parameters, Skip)
        weight, bias = parameters
        if not affine.has_zero_shift and (uneven := self._shift_skip(node, weight)):
            return uneven
        new_weight, new_bias = fold_before_transposed(
            weight, bias, affine, int_attr(node, "group", 1)
        )
        keep_bias = bias is not None or not affine.has_zero_shift
        return _write(
            context,
            node,
            cast_like(new_weight, weight),
            cast_like(new_bias, weight) if keep_bias else None,
        )

    @staticmethod
    def _shift_skip(node: ir.Node, weight: npt.NDArray[np.generic]) -> Skip | None:
        """Why the shift cannot become a per-channel bias, or ``None`` when it can."""
        label = node_label(node)
        kernel = list(weight.shape[2:])
        extent = _kernel_extent(node, weight)
        strides = ints_attr(node, "strides") or [1] * len(kernel)
        output_padding = ints_attr(node, "output_padding") or []
        padded = "output_shape" in node.attributes or any(pad != 0 for pad in output_padding)
        if extent == strides and not padded:
            if all(stride == 1 for stride in strides):
                return None
            return Skip(
                Reason.SHIFT_NOT_BIAS,
                f"{label}: kernel {kernel} = strides {strides}, so each output position "
                f"receives one kernel tap and the BN shift becomes a pattern repeating every "
                f"{strides} positions, not a per-channel bias",
            )
        if "output_shape" in node.attributes:
            why = "output_shape is set"
        elif padded:
            why = f"output_padding {output_padding}"
        elif any(size != 1 for size in kernel):
            why = f"kernel {kernel} with strides {strides}"
        else:
            why = f"strides {strides}"
        return Skip(
            Reason.PADDING,
            f"{label}: {why}, so output positions receive different numbers of kernel taps "
            "(zeros the BN shift never reaches) and the shift cannot become a bias",
        )


__all__ = ["AffineThenConv", "AffineThenConvTranspose", "conv_padding"]
