"""The Keras fold rules in numpy alone: each layout is checked against a direct computation.

With a 1x1 (or size-1) kernel every Keras layer kind is a per-position matrix product whose
channel order is easy to write out, which pins the output-channel axis of each layout.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnfold.affine import FoldArithmeticError, ScaleShift
from bnfold.rules.keras_layers import (
    CONV,
    CONV_TRANSPOSE,
    DENSE,
    DEPTHWISE_CONV,
    SEPARABLE_CONV,
    keras_batchnorm_affine,
    rule_for,
)


def random_batchnorm(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    return {
        "gamma": rng.uniform(0.5, 2.0, channels),
        "beta": rng.normal(size=channels),
        "moving_mean": rng.normal(size=channels),
        "moving_variance": rng.uniform(0.1, 3.0, channels),
    }


def apply_batchnorm(
    values: np.ndarray, parameters: dict[str, np.ndarray], eps: float
) -> np.ndarray:
    """Keras inference BN on the last axis, written the way Keras writes it."""
    gamma = parameters.get("gamma")
    beta = parameters.get("beta")
    normalised = (values - parameters["moving_mean"]) / np.sqrt(parameters["moving_variance"] + eps)
    return normalised * (1.0 if gamma is None else gamma) + (0.0 if beta is None else beta)


def test_rule_lookup_covers_every_keras_linear_layer() -> None:
    for name in ("Dense", "Conv1D", "Conv2D", "Conv3D"):
        assert rule_for(name) is (DENSE if name == "Dense" else CONV)
    assert rule_for("DepthwiseConv1D") is DEPTHWISE_CONV
    assert rule_for("SeparableConv2D") is SEPARABLE_CONV
    assert rule_for("Conv3DTranspose") is CONV_TRANSPOSE
    assert rule_for("Flatten") is None


@pytest.mark.parametrize("has_bias", [True, False])
def test_dense_fold_matches_dense_then_batchnorm(rng: np.random.Generator, has_bias: bool) -> None:
    kernel = rng.normal(size=(5, 4))
    bias = rng.normal(size=4)
    x = rng.normal(size=(7, 5))
    parameters = random_batchnorm(rng, 4)
    expected = apply_batchnorm(x @ kernel + (bias if has_bias else 0.0), parameters, 1e-3)

    weights = [kernel, bias] if has_bias else [kernel]
    new_kernel, new_bias = DENSE.fold_after(
        weights, has_bias, keras_batchnorm_affine(parameters, 1e-3)
    )

    np.testing.assert_allclose(x @ new_kernel + new_bias, expected, rtol=1e-12, atol=1e-12)


def test_conv_scales_the_last_kernel_axis(rng: np.random.Generator) -> None:
    kernel = rng.normal(size=(1, 1, 3, 6))  # [kh, kw, in, out]
    x = rng.normal(size=(4, 3))  # positions x in-channels
    parameters = random_batchnorm(rng, 6)
    expected = apply_batchnorm(x @ kernel[0, 0] + 0.5, parameters, 0.01)

    affine = keras_batchnorm_affine(parameters, 0.01)
    new_kernel, new_bias = CONV.fold_after([kernel, np.full(6, 0.5)], True, affine)

    np.testing.assert_allclose(x @ new_kernel[0, 0] + new_bias, expected, rtol=1e-12, atol=1e-12)


def test_depthwise_output_channel_is_in_times_multiplier_plus_m(rng: np.random.Generator) -> None:
    channels, multiplier = 3, 2
    kernel = rng.normal(size=(1, 1, channels, multiplier))
    x = rng.normal(size=(4, channels))
    outputs = (x[:, :, None] * kernel[0, 0][None]).reshape(4, channels * multiplier)
    parameters = random_batchnorm(rng, channels * multiplier)
    expected = apply_batchnorm(outputs, parameters, 1e-3)

    affine = keras_batchnorm_affine(parameters, 1e-3)
    (new_kernel, new_bias) = DEPTHWISE_CONV.fold_after([kernel], False, affine)

    assert DEPTHWISE_CONV.output_channels([kernel]) == channels * multiplier
    folded = (x[:, :, None] * new_kernel[0, 0][None]).reshape(4, -1) + new_bias
    np.testing.assert_allclose(folded, expected, rtol=1e-12, atol=1e-12)


def test_separable_folds_into_the_pointwise_kernel_only(rng: np.random.Generator) -> None:
    depthwise = rng.normal(size=(1, 1, 3, 2))
    pointwise = rng.normal(size=(1, 1, 6, 4))
    bias = rng.normal(size=4)
    x = rng.normal(size=(5, 3))
    hidden = (x[:, :, None] * depthwise[0, 0][None]).reshape(5, 6)
    parameters = random_batchnorm(rng, 4)
    expected = apply_batchnorm(hidden @ pointwise[0, 0] + bias, parameters, 1e-3)

    affine = keras_batchnorm_affine(parameters, 1e-3)
    new_depthwise, new_pointwise, new_bias = SEPARABLE_CONV.fold_after(
        [depthwise, pointwise, bias], True, affine
    )

    np.testing.assert_array_equal(new_depthwise, depthwise)
    np.testing.assert_allclose(hidden @ new_pointwise[0, 0] + new_bias, expected, rtol=1e-12)


def test_conv_transpose_scales_axis_minus_two(rng: np.random.Generator) -> None:
    kernel = rng.normal(size=(1, 1, 5, 3))  # [kh, kw, out, in]
    x = rng.normal(size=(4, 3))
    parameters = random_batchnorm(rng, 5)
    expected = apply_batchnorm(x @ kernel[0, 0].T, parameters, 1e-3)

    affine = keras_batchnorm_affine(parameters, 1e-3)
    new_kernel, new_bias = CONV_TRANSPOSE.fold_after([kernel], False, affine)

    assert CONV_TRANSPOSE.output_channels([kernel]) == 5
    np.testing.assert_allclose(x @ new_kernel[0, 0].T + new_bias, expected, rtol=1e-12, atol=1e-12)


def test_missing_gamma_and_beta_mean_one_and_zero(rng: np.random.Generator) -> None:
    parameters = random_batchnorm(rng, 3)
    affine = keras_batchnorm_affine(
        {
            "moving_mean": parameters["moving_mean"],
            "moving_variance": parameters["moving_variance"],
        },
        0.5,
    )
    scale = 1.0 / np.sqrt(parameters["moving_variance"] + 0.5)
    np.testing.assert_allclose(affine.scale, scale)
    np.testing.assert_allclose(affine.shift, -scale * parameters["moving_mean"])


def test_result_is_cast_back_to_the_layer_dtype(rng: np.random.Generator) -> None:
    kernel = rng.normal(size=(2, 3)).astype(np.float16)
    affine = ScaleShift(np.full(3, 2.0), np.zeros(3))
    new_kernel, new_bias = DENSE.fold_after([kernel], False, affine)
    assert new_kernel.dtype == np.float16 and new_bias.dtype == np.float16
    np.testing.assert_array_equal(new_kernel, kernel * np.float16(2))


def test_float16_overflow_is_refused() -> None:
    kernel = np.full((2, 3), 60000.0, dtype=np.float16)
    affine = ScaleShift(np.full(3, 4.0), np.zeros(3))
    with pytest.raises(FoldArithmeticError, match="overflow float16"):
        DENSE.fold_after([kernel], False, affine)


def test_channels_first_moves_the_channel_axis_to_one() -> None:
    assert CONV.channel_axis("channels_first", 4) == 1
    assert CONV.channel_axis("channels_last", 4) == 3
    assert DENSE.channel_axis(None, 3) == 2
