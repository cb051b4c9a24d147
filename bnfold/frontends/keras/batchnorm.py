"""BatchNormalization described to the fold core: ``x * s + t`` by per-channel constants on
the layer's axis, with ``s = gamma / sqrt(moving_variance + epsilon)`` and
``t = beta - s * moving_mean`` (absent gamma is 1, absent beta 0)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.affine import ScaleShift, along_axis, batchnorm_scale_shift
from bnfold.frontends.keras.emit import Array, Call, Emitter, ir_shape


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
