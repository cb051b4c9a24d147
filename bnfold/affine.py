"""The arithmetic of folding, in float64 numpy and nothing else (DESIGN.md section 1).

Inference-mode BatchNormalization on channel c is an affine map ``y = s*x + t`` with

    s = gamma / sqrt(var + eps)        t = beta - s * mean

Backward fold (linear layer, then affine): ``W' = W`` scaled by ``s`` along the OUTPUT-channel
axis, ``b' = s*b + t``.

Forward fold (affine, then linear layer): ``W' = W`` scaled by ``s`` along the INPUT-channel
axis, ``b' = b + W.t`` (``t`` summed through ``W``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class FoldArithmeticError(ValueError):
    """A fold whose result cannot be represented; the message says why, in one line."""


@dataclass(frozen=True)
class ScaleShift:
    """``y = scale * x + shift`` per channel; both are 1-D float64 arrays of one length (or 1)."""

    scale: FloatArray
    shift: FloatArray

    @property
    def channels(self) -> int:
        return int(max(self.scale.size, self.shift.size))

    def broadcast_to(self, channels: int) -> ScaleShift:
        """Both vectors at length ``channels``; scalars are repeated."""
        if self.scale.size not in (1, channels) or self.shift.size not in (1, channels):
            raise FoldArithmeticError(
                f"affine has {self.channels} channels, the layer has {channels}"
            )
        return ScaleShift(
            np.broadcast_to(self.scale, (channels,)).copy(),
            np.broadcast_to(self.shift, (channels,)).copy(),
        )

    def then(self, after: ScaleShift) -> ScaleShift:
        """This affine followed by ``after``: ``s2*(s1*x + t1) + t2``."""
        return ScaleShift(after.scale * self.scale, after.scale * self.shift + after.shift)

    @property
    def has_zero_shift(self) -> bool:
        return bool(np.all(self.shift == 0.0))


def as_float64_vector(values: npt.ArrayLike) -> FloatArray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def batchnorm_scale_shift(
    gamma: npt.ArrayLike,
    beta: npt.ArrayLike,
    mean: npt.ArrayLike,
    var: npt.ArrayLike,
    eps: float,
) -> ScaleShift:
    """``s = gamma / sqrt(var + eps)``, ``t = beta - s*mean``; refuses a non-finite result."""
    var64 = as_float64_vector(var)
    denominator = var64 + float(eps)
    if not np.all(np.isfinite(denominator)) or np.any(denominator <= 0.0):
        raise FoldArithmeticError("variance + epsilon is not finite and positive")
    scale = as_float64_vector(gamma) / np.sqrt(denominator)
    shift = as_float64_vector(beta) - scale * as_float64_vector(mean)
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        raise FoldArithmeticError("BatchNormalization parameters are not finite")
    return ScaleShift(scale, shift)


def along_axis(vector: FloatArray, axis: int, ndim: int) -> FloatArray:
    """``vector`` reshaped so that it broadcasts along ``axis`` of an ``ndim``-D array."""
    shape = [1] * ndim
    shape[axis] = vector.size
    return vector.reshape(shape)


def fold_after(
    weight: npt.ArrayLike,
    bias: npt.ArrayLike | None,
    affine: ScaleShift,
    output_axis: int,
) -> tuple[FloatArray, FloatArray]:
    """Backward fold: ``W'`` scaled along ``output_axis``, ``b' = s*b + t`` (``b`` absent = 0)."""
    weight64 = np.asarray(weight, dtype=np.float64)
    channels = weight64.shape[output_axis]
    affine = affine.broadcast_to(channels)
    new_weight = weight64 * along_axis(affine.scale, output_axis, weight64.ndim)
    bias64 = np.zeros(channels) if bias is None else as_float64_vector(bias)
    return new_weight, affine.scale * bias64 + affine.shift


def grouped_transpose_scale(weight: npt.ArrayLike, scale: FloatArray, groups: int) -> FloatArray:
    """Scale an ONNX ConvTranspose weight ``[in, out/g, k...]`` by output channel.

    Output channel ``o = group * (out/g) + j`` where input channel ``i`` belongs to
    ``group = i // (in/g)``; reshaping to ``[g, in/g, out/g, k...]`` lines the two up.
    """
    weight64 = np.asarray(weight, dtype=np.float64)
    in_channels, out_per_group = weight64.shape[:2]
    kernel = weight64.shape[2:]
    grouped = weight64.reshape((groups, in_channels // groups, out_per_group, *kernel))
    per_group_scale = scale.reshape((groups, 1, out_per_group) + (1,) * len(kernel))
    return (grouped * per_group_scale).reshape(weight64.shape)


def fold_before(
    weight: npt.ArrayLike,
    bias: npt.ArrayLike | None,
    affine: ScaleShift,
    input_axis: int,
    output_axis: int,
) -> tuple[FloatArray, FloatArray]:
    """Forward fold into an ungrouped layer: ``W'`` scaled along ``input_axis``, ``b' = b + W.t``.

    ``W.t`` sums ``W * t`` over every axis except ``output_axis`` (kernel positions included),
    which is exact only where the layer never sees padding zeros.
    """
    weight64 = np.asarray(weight, dtype=np.float64)
    channels = weight64.shape[input_axis]
    affine = affine.broadcast_to(channels)
    new_weight = weight64 * along_axis(affine.scale, input_axis, weight64.ndim)
    shifted = weight64 * along_axis(affine.shift, input_axis, weight64.ndim)
    other_axes = tuple(a for a in range(weight64.ndim) if a != output_axis % weight64.ndim)
    through = shifted.sum(axis=other_axes)
    out_channels = weight64.shape[output_axis]
    bias64 = np.zeros(out_channels) if bias is None else as_float64_vector(bias)
    return new_weight, bias64 + through


def cast_checked(values: FloatArray, dtype: np.dtype[np.generic] | type) -> npt.NDArray[np.generic]:
    """Cast a float64 fold result back to the model's dtype, refusing overflow and underflow."""
    target = np.dtype(dtype)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        cast = values.astype(target)
    if np.issubdtype(target, np.floating) or target.name == "bfloat16":
        # Test the cast first (in its own, narrower dtype) and look back at the float64 values
        # only where it is infinite or zero: a full float64 round trip costs as much as the
        # fold itself on a ResNet-size model.
        infinite = np.isinf(cast)
        if infinite.any() and np.isfinite(values[infinite]).any():
            raise FoldArithmeticError(f"folded values overflow {target.name}")
        zero = cast == 0
        if zero.any() and (values[zero] != 0.0).any():
            raise FoldArithmeticError(f"folded values underflow {target.name} to zero")
    return cast


def fold_before_grouped(
    weight: npt.ArrayLike, bias: npt.ArrayLike | None, affine: ScaleShift, groups: int
) -> tuple[FloatArray, FloatArray]:
    """Forward fold into an ONNX Conv of ``groups`` groups, weight ``[out, in/g, k...]``.

    Input channel ``c = group*(in/g) + j`` feeds only the output channels ``o`` of its group
    (``group = o // (out/g)``), so ``W'[o, j, k] = W[o, j, k] * s[group(o)*(in/g) + j]`` and
    ``b'[o] = b[o] + sum_{j,k} W[o, j, k] * t[group(o)*(in/g) + j]``. ``groups == 1`` is
    ``fold_before(..., input_axis=1, output_axis=0)``; depthwise is ``groups == in``.
    """
    weight64 = np.asarray(weight, dtype=np.float64)
    out_channels, in_per_group = weight64.shape[:2]
    affine = affine.broadcast_to(in_per_group * groups)
    # Row o of these [out, in/g] tables holds s (or t) of the input channels o's group reads.
    group_of_output = np.arange(out_channels) // (out_channels // groups)
    scale = affine.scale.reshape(groups, in_per_group)[group_of_output]
    shift = affine.shift.reshape(groups, in_per_group)[group_of_output]
    kernel_axes = (1,) * (weight64.ndim - 2)
    new_weight = weight64 * scale.reshape(scale.shape + kernel_axes)
    through = (weight64 * shift.reshape(shift.shape + kernel_axes)).reshape(out_channels, -1)
    bias64 = np.zeros(out_channels) if bias is None else as_float64_vector(bias)
    return new_weight, bias64 + through.sum(axis=1)


def fold_before_transposed(
    weight: npt.ArrayLike, bias: npt.ArrayLike | None, affine: ScaleShift, groups: int
) -> tuple[FloatArray, FloatArray]:
    """Forward fold into an ONNX ConvTranspose of ``groups`` groups, weight ``[in, out/g, k...]``.

    ``W' = W * s`` along axis 0 (the input channel), and output channel
    ``o = group*(out/g) + j`` gains ``sum_{i in group, k} W[i, j, k] * t[i]``. The bias is exact
    only where every output position receives every kernel tap (kernel 1, stride 1) or ``t == 0``.
    """
    weight64 = np.asarray(weight, dtype=np.float64)
    in_channels, out_per_group = weight64.shape[:2]
    affine = affine.broadcast_to(in_channels)
    new_weight = weight64 * along_axis(affine.scale, 0, weight64.ndim)
    shifted = weight64 * along_axis(affine.shift, 0, weight64.ndim)
    per_input = shifted.reshape(in_channels, out_per_group, -1).sum(axis=2)  # [in, out/g]
    through = per_input.reshape(groups, in_channels // groups, out_per_group).sum(axis=1)
    out_channels = groups * out_per_group
    bias64 = np.zeros(out_channels) if bias is None else as_float64_vector(bias)
    return new_weight, bias64 + through.reshape(-1)
