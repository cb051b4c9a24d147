"""Backward fold of a Keras BatchNormalization into the linear layer before it, in numpy only.

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

This module knows layer kinds by class name and weight arrays in ``get_weights()`` order; it never
imports TensorFlow, so it is tested without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bnfold.affine import FloatArray, ScaleShift, batchnorm_scale_shift, cast_checked, fold_after

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
        folded: Weights = [np.asarray(w) for w in (weights[:-1] if has_bias else weights)]
        folded[self.kernel_index] = cast_checked(new_kernel, kernel.dtype)
        folded.append(cast_checked(new_bias, kernel.dtype if bias is None else bias.dtype))
        return folded


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


DENSE = KerasLinearRule(("Dense",), kernel_index=0, output_axis=1)
CONV = KerasLinearRule(("Conv1D", "Conv2D", "Conv3D"), kernel_index=0, output_axis=-1)
DEPTHWISE_CONV = KerasDepthwiseRule(
    ("DepthwiseConv1D", "DepthwiseConv2D"), kernel_index=0, output_axis=-1
)
SEPARABLE_CONV = KerasLinearRule(
    ("SeparableConv1D", "SeparableConv2D"), kernel_index=1, output_axis=-1
)
CONV_TRANSPOSE = KerasLinearRule(
    ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"), kernel_index=0, output_axis=-2
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
