"""Fold a Keras BatchNormalization into the linear layer before it (backward) or after it
(forward), in numpy only.

A Keras layer followed by inference-mode BN on its channel axis computes ``y = s*(W x + b) + t``
with ``s = gamma / sqrt(moving_variance + epsilon)`` and ``t = beta - s*moving_mean``; the fold
writes ``W' = W * s`` along the kernel's OUTPUT-channel axis and ``b' = s*b + t`` (a layer
without bias gains one). Kernel layouts (DESIGN.md section 1; they do not depend on the layer's
``data_format``):

=====================================  ==============================  ======================
layer                                  kernel scaled                   output-channel axis
=====================================  ==============================  ======================
Dense                                  ``kernel [in, out]``            1
Conv1D / Conv2D / Conv3D               ``kernel [k..., in/groups, out]``  -1
DepthwiseConv1D / DepthwiseConv2D      ``depthwise_kernel [k..., in, mult]``  (-2, -1) flattened:
                                                                       channel ``in*mult + m``
SeparableConv1D / SeparableConv2D      ``pointwise_kernel [1.., in*mult, out]``  -1
Conv1DTranspose / 2D / 3D              ``kernel [k..., out, in]``      -2
=====================================  ==============================  ======================

Forward fold (BN, then the layer: ``y = W (s*x + t) + b``) scales the kernel along its
INPUT-channel axis and adds ``W.t`` (``t`` summed through the kernel, kernel positions included)
to the bias: Dense ``kernel`` axis 0; ConvND ``kernel`` axis -2 (per group: input channel
``group*(in/g) + j`` feeds only its group's output channels); DepthwiseConvND and
SeparableConvND the ``depthwise_kernel`` axis -2 (separable: the depthwise shift goes through
the pointwise kernel into the bias); ConvNDTranspose ``kernel`` axis -1. Whether the bias term is
exact (no padding zeros, every output position gets every kernel tap) is judged by the caller.

This module knows layer kinds by class name and weight arrays in ``get_weights()`` order; it never
imports TensorFlow, so it is tested without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfold.affine import (
    FloatArray,
    ScaleShift,
    along_axis,
    batchnorm_scale_shift,
    cast_checked,
    fold_after,
    fold_before,
    fold_before_grouped,
)

Weights = list[npt.NDArray[Any]]


@dataclass(frozen=True)
class KerasLinearRule:
    """A Keras layer kind that a following BN folds into.

    ``kernel_index`` is the position in ``get_weights()`` of the kernel that carries the output
    channels, ``output_axis`` its output-channel axis; the bias, when present, is the last array.
    """

    class_names: tuple[str, ...]
    kernel_index: int
    output_axis: int
    input_axis: int = -2  # of the kernel the forward fold scales (``forward_kernel_index``)
    forward_kernel_index: int = 0

    def channel_axis(self, data_format: str | None, rank: int) -> int:
        """The axis of the layer's OUTPUT tensor (of ``rank`` dimensions) that holds channels."""
        return 1 if data_format == "channels_first" else rank - 1

    def output_channels(self, weights: Sequence[npt.NDArray[Any]]) -> int:
        return int(weights[self.kernel_index].shape[self.output_axis])

    def scale_kernel(
        self, kernel: npt.NDArray[Any], bias: npt.NDArray[Any] | None, affine: ScaleShift
    ) -> tuple[FloatArray, FloatArray]:
        """``kernel * s`` along ``output_axis`` and ``s*bias + t``, in float64."""
        return fold_after(kernel, bias, affine, self.output_axis)

    def fold_after(
        self, weights: Sequence[npt.NDArray[Any]], has_bias: bool, affine: ScaleShift
    ) -> Weights:
        """The layer's new ``get_weights()`` list, bias always included, in the kernel's dtype.

        Raises ``FoldArithmeticError`` when the result does not fit the dtype.
        """
        kernel = np.asarray(weights[self.kernel_index])
        bias = np.asarray(weights[-1]) if has_bias else None
        new_kernel, new_bias = self.scale_kernel(kernel, bias, affine)
        return _assemble(weights, has_bias, {self.kernel_index: new_kernel}, new_bias)

    def input_channels(self, weights: Sequence[npt.NDArray[Any]], groups: int = 1) -> int:
        """How many input channels the layer reads (``groups`` times the kernel's)."""
        return int(weights[self.forward_kernel_index].shape[self.input_axis]) * groups

    def scale_kernel_before(
        self,
        weights: Sequence[npt.NDArray[Any]],
        bias: npt.NDArray[Any] | None,
        affine: ScaleShift,
        groups: int,
    ) -> tuple[dict[int, FloatArray], FloatArray]:
        """Forward fold: the new kernel(s) by index in ``weights`` and ``b + W.t``, float64."""
        kernel = np.asarray(weights[self.forward_kernel_index])
        new_kernel, new_bias = fold_before(kernel, bias, affine, self.input_axis, self.output_axis)
        return {self.forward_kernel_index: new_kernel}, new_bias

    def fold_before(
        self,
        weights: Sequence[npt.NDArray[Any]],
        has_bias: bool,
        affine: ScaleShift,
        groups: int = 1,
    ) -> Weights:
        """The layer's new ``get_weights()`` list after folding ``affine`` (one ``(s, t)`` per
        INPUT channel) into it, bias always included, in the kernel's dtype.

        Raises ``FoldArithmeticError`` when the result does not fit the dtype.
        """
        bias = np.asarray(weights[-1]) if has_bias else None
        kernels, new_bias = self.scale_kernel_before(weights, bias, affine, groups)
        return _assemble(weights, has_bias, kernels, new_bias)


def _assemble(
    weights: Sequence[npt.NDArray[Any]],
    has_bias: bool,
    kernels: Mapping[int, FloatArray],
    new_bias: FloatArray,
) -> Weights:
    """``weights`` with ``kernels`` replaced and the bias replaced (or appended), each cast back
    to the dtype of the array it replaces (a new bias takes the first kernel's dtype)."""
    folded: Weights = [np.asarray(w) for w in (weights[:-1] if has_bias else weights)]
    for index, kernel in kernels.items():
        folded[index] = cast_checked(kernel, folded[index].dtype)
    bias_dtype = np.asarray(weights[-1]).dtype if has_bias else folded[min(kernels)].dtype
    folded.append(cast_checked(new_bias, bias_dtype))
    return folded


@dataclass(frozen=True)
class KerasConvRule(KerasLinearRule):
    """ConvND ``[k..., in/g, out]``; the grouped forward fold goes through the ONNX layout
    ``[out, in/g, k...]`` and ``fold_before_grouped``."""

    def scale_kernel_before(
        self,
        weights: Sequence[npt.NDArray[Any]],
        bias: npt.NDArray[Any] | None,
        affine: ScaleShift,
        groups: int,
    ) -> tuple[dict[int, FloatArray], FloatArray]:
        if groups == 1:
            return super().scale_kernel_before(weights, bias, affine, groups)
        kernel = np.asarray(weights[0])
        rank = kernel.ndim
        onnx_layout = np.transpose(kernel, (rank - 1, rank - 2, *range(rank - 2)))
        new_kernel, new_bias = fold_before_grouped(onnx_layout, bias, affine, groups)
        return {0: np.transpose(new_kernel, (*range(2, rank), 1, 0))}, new_bias


@dataclass(frozen=True)
class KerasDepthwiseRule(KerasLinearRule):
    """Depthwise kernel ``[k..., in, mult]``: output channel ``in*mult + m`` is the C-order
    flattening of the last two axes, so the kernel is scaled as ``[k..., in*mult]``."""

    def output_channels(self, weights: Sequence[npt.NDArray[Any]]) -> int:
        kernel = weights[self.kernel_index]
        return int(kernel.shape[-2] * kernel.shape[-1])

    def scale_kernel(
        self, kernel: npt.NDArray[Any], bias: npt.NDArray[Any] | None, affine: ScaleShift
    ) -> tuple[FloatArray, FloatArray]:
        flat = np.asarray(kernel).reshape((*kernel.shape[:-2], -1))
        new_flat, new_bias = fold_after(flat, bias, affine, -1)
        return new_flat.reshape(kernel.shape), new_bias

    def scale_kernel_before(
        self,
        weights: Sequence[npt.NDArray[Any]],
        bias: npt.NDArray[Any] | None,
        affine: ScaleShift,
        groups: int,
    ) -> tuple[dict[int, FloatArray], FloatArray]:
        """Input channel ``c`` feeds output channels ``c*mult + m`` only."""
        kernel, shift = _depthwise_before(np.asarray(weights[0]), affine)
        new_bias = np.zeros(shift.size) if bias is None else np.asarray(bias, np.float64)
        return {0: kernel}, new_bias + shift


def _depthwise_before(
    kernel: npt.NDArray[Any], affine: ScaleShift
) -> tuple[FloatArray, FloatArray]:
    """A depthwise kernel ``[k..., in, mult]`` scaled along ``in``, and the shift ``W.t`` per
    output channel ``c*mult + m``."""
    kernel64 = np.asarray(kernel, dtype=np.float64)
    affine = affine.broadcast_to(kernel64.shape[-2])
    axis = kernel64.ndim - 2
    scaled = kernel64 * along_axis(affine.scale, axis, kernel64.ndim)
    shifted = kernel64 * along_axis(affine.shift, axis, kernel64.ndim)
    return scaled, shifted.sum(axis=tuple(range(axis))).reshape(-1)


@dataclass(frozen=True)
class KerasSeparableRule(KerasLinearRule):
    """SeparableConvND: the forward fold scales the depthwise kernel; the depthwise shift
    ``d`` becomes ``d @ pointwise`` in the bias."""

    def scale_kernel_before(
        self,
        weights: Sequence[npt.NDArray[Any]],
        bias: npt.NDArray[Any] | None,
        affine: ScaleShift,
        groups: int,
    ) -> tuple[dict[int, FloatArray], FloatArray]:
        depthwise, shift = _depthwise_before(np.asarray(weights[0]), affine)
        pointwise = np.asarray(weights[1], dtype=np.float64)
        pointwise = pointwise.reshape(-1, pointwise.shape[-1])
        new_bias = np.zeros(pointwise.shape[1]) if bias is None else np.asarray(bias, np.float64)
        return {0: depthwise}, new_bias + shift @ pointwise


DENSE = KerasLinearRule(("Dense",), kernel_index=0, output_axis=1, input_axis=0)
CONV = KerasConvRule(("Conv1D", "Conv2D", "Conv3D"), kernel_index=0, output_axis=-1)
DEPTHWISE_CONV = KerasDepthwiseRule(
    ("DepthwiseConv1D", "DepthwiseConv2D"), kernel_index=0, output_axis=-1
)
SEPARABLE_CONV = KerasSeparableRule(
    ("SeparableConv1D", "SeparableConv2D"), kernel_index=1, output_axis=-1
)
CONV_TRANSPOSE = KerasLinearRule(
    ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"),
    kernel_index=0,
    output_axis=-2,
    input_axis=-1,
)

KERAS_LINEAR_RULES: tuple[KerasLinearRule, ...] = (
    DENSE,
    CONV,
    DEPTHWISE_CONV,
    SEPARABLE_CONV,
    CONV_TRANSPOSE,
)


def rule_for(class_name: str) -> KerasLinearRule | None:
    """The rule that folds a BN into a layer of ``class_name``, or None."""
    for rule in KERAS_LINEAR_RULES:
        if class_name in rule.class_names:
            return rule
    return None


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
