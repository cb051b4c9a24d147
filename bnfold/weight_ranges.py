"""What a fold does to int8 weight quantization: per-tensor ranges and channel spread, numpy only.

Symmetric per-tensor int8 spreads 127 levels a side over ``[-max|W|, max|W|]``. A backward
fold scales output channel ``c`` by ``s_c`` (``W'[c] = s_c * W[c]``), a forward fold mixes
``s`` into every output; a large ``|s_c|`` widens the tensor's range, and a channel whose own
range ``max|W'[c]|`` is small next to the largest keeps few of the levels. With spread
``r = max_c range_c / median_c range_c`` the median channel gets ``127 / r`` levels: past
16x that is 7 or fewer, 4 bits with the sign. Per-channel quantization gives every output
channel its own scale, so neither a grown range nor a spread loses levels there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bnfold.results import WeightRange

GROWTH_LIMIT = 8.0  # per-tensor max|W| after / before: 3 bits of every channel gone
SPREAD_LIMIT = 16.0  # largest / median channel range: the median channel keeps <= 4 bits
WORST_NAMED = 3  # layers the warning line names


@dataclass(frozen=True)
class WeightStats:
    """One weight tensor: ``max_abs`` (the per-tensor range), its output ``channels`` and the
    ``spread`` of their ranges (largest / median; 1.0 for a single channel)."""

    max_abs: float
    channels: int
    spread: float


def channel_ranges(
    weight: npt.NDArray[np.generic], output_axis: int, groups: int = 1
) -> npt.NDArray[np.float64]:
    """``max|W|`` of each output channel. With ``groups > 1`` the input channels on axis 0
    are split into ``groups`` blocks, each with its own ``weight.shape[output_axis]`` outputs
    (ONNX ConvTranspose ``[in, out/g, k...]``): output ``g * (out/g) + j``."""
    array = np.asarray(weight)
    if groups > 1:
        blocks = array.reshape(groups, array.shape[0] // groups, *array.shape[1:])
        rows = np.moveaxis(blocks, output_axis + 1, 1).reshape(
            groups * array.shape[output_axis], -1
        )
    else:
        rows = np.moveaxis(array, output_axis, 0).reshape(array.shape[output_axis], -1)
    if rows.size == 0:
        return np.zeros(rows.shape[0], dtype=np.float64)
    # Two passes of max/min, not np.abs: no temporary as large as the weight.
    return np.maximum(rows.max(axis=1), -rows.min(axis=1)).astype(np.float64)


def spread(ranges: npt.NDArray[np.float64]) -> float:
    """Largest channel range over the median one: 1.0 for equal channels or none, ``inf``
    when more than half the channels are all zero and one is not."""
    if ranges.size == 0:
        return 1.0
    largest, median = float(ranges.max()), float(np.median(ranges))
    if median > 0:
        return largest / median
    return math.inf if largest > 0 else 1.0


def weight_stats(weight: npt.NDArray[np.generic], output_axis: int, groups: int = 1) -> WeightStats:
    ranges = channel_ranges(weight, output_axis, groups)
    return WeightStats(float(ranges.max(initial=0.0)), int(ranges.size), spread(ranges))


def _ratio(after: float, before: float) -> float:
    if before > 0:
        return after / before
    return math.inf if after > 0 else 1.0


def weight_range(layer: str, op: str, before: WeightStats, after: WeightStats) -> WeightRange:
    """The row of one layer whose weight a fold changed."""
    growth = _ratio(after.max_abs, before.max_abs)
    return WeightRange(
        layer=layer,
        op=op,
        channels=after.channels,
        before_max=before.max_abs,
        after_max=after.max_abs,
        growth=growth,
        spread_before=before.spread,
        spread_after=after.spread,
        flagged=growth > GROWTH_LIMIT or after.spread > SPREAD_LIMIT,
    )


def _severity(row: WeightRange) -> float:
    return max(row.growth / GROWTH_LIMIT, row.spread_after / SPREAD_LIMIT)


def quantization_warning(rows: list[WeightRange]) -> str:
    """One line naming the worst flagged layers, or "" when none is flagged."""
    flagged = sorted((row for row in rows if row.flagged), key=_severity, reverse=True)
    if not flagged:
        return ""
    worst = ", ".join(
        f"{row.layer} (range {row.growth:.3g}x, channel spread {row.spread_after:.3g}x)"
        for row in flagged[:WORST_NAMED]
    )
    more = f" and {len(flagged) - WORST_NAMED} more" if len(flagged) > WORST_NAMED else ""
    return (
        f"Quantization: the fold widened {len(flagged)} layer(s) past per-tensor int8 "
        f"(range grew over {GROWTH_LIMIT:g}x or channel spread over {SPREAD_LIMIT:g}x): "
        f"{worst}{more}; per-channel weight quantization avoids it"
    )


__all__ = [
    "GROWTH_LIMIT",
    "SPREAD_LIMIT",
    "WeightStats",
    "channel_ranges",
    "quantization_warning",
    "spread",
    "weight_range",
    "weight_stats",
]
