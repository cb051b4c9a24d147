"""What a model expects as input: shared by both front ends and the equivalence check."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """One model input. ``shape`` holds ints for fixed dimensions, a string for a named
    dynamic dimension and ``None`` for an unnamed one."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class SizeHint:
    """A size the model's graph fixes for one dynamic input dimension, and what fixes it
    (``"MatMul fc's weight [80, 16]"``): the check runs at it rather than at a guess."""

    size: int
    source: str


# Keyed by (input name, axis).
SizeHints = dict[tuple[str, int], SizeHint]
