"""The weight-range arithmetic on arrays whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np

from bnfold.weight_ranges import (
    channel_ranges,
    quantization_warning,
    spread,
    weight_range,
    weight_stats,
)


def test_channel_ranges_follow_the_output_axis():
    weight = np.zeros((3, 2, 1, 1), np.float32)  # Conv [out, in, kh, kw]
    weight[0, 1] = -4.0
    weight[2, 0] = 0.5
    assert channel_ranges(weight, 0).tolist() == [4.0, 0.0, 0.5]
    gemm = np.array([[1.0, -3.0], [2.0, 0.5]])  # [K, N]: outputs on axis 1
    assert channel_ranges(gemm, 1).tolist() == [2.0, 3.0]


def test_grouped_conv_transpose_outputs_are_per_group():
    # [in=4, out/g=1, k=1] with 2 groups: outputs 0 (inputs 0-1) and 1 (inputs 2-3).
    weight = np.array([1.0, -2.0, 5.0, 0.25]).reshape(4, 1, 1)
    assert channel_ranges(weight, 1, groups=2).tolist() == [2.0, 5.0]


def test_spread_is_largest_over_median():
    assert spread(np.array([1.0, 2.0, 40.0])) == 20.0
    assert spread(np.array([3.0])) == 1.0
    assert spread(np.array([0.0, 0.0, 1.0])) == math.inf
    assert spread(np.array([])) == 1.0


def test_flagged_by_growth_or_spread_and_named_worst_first():
    before = weight_stats(np.ones((4, 3)), 0)
    grown = weight_range("conv_a", "Conv", before, weight_stats(np.full((4, 3), 9.0), 0))
    assert grown.growth == 9.0 and grown.spread_after == 1.0 and grown.flagged
    spread_out = weight_stats(np.array([[1.0], [1.0], [1.0], [40.0]]), 0)
    wide = weight_range("conv_b", "Conv", before, spread_out)
    assert wide.growth == 40.0 and wide.spread_after == 40.0 and wide.flagged
    calm = weight_range("fc", "Gemm", before, weight_stats(np.full((4, 3), 2.0), 0))
    assert not calm.flagged
    line = quantization_warning([calm, grown, wide])
    assert line.startswith("Quantization: the fold widened 2 layer(s)")
    assert line.index("conv_b") < line.index("conv_a") and "fc" not in line
    assert line.endswith("per-channel weight quantization avoids it")
    assert quantization_warning([calm]) == ""
