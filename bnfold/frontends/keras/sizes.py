"""Sizes a Keras model's free input dimensions need, read from its own layers, for the
check's random inputs: a Cropping layer needs each cropped axis longer than its total crop,
a Reshape to a fixed target fixes the one free dimension that feeds it."""

from __future__ import annotations

import math
from typing import Any

from bnfold.frontends.keras.lowering import all_layers

_CROPPING = frozenset({"Cropping1D", "Cropping2D", "Cropping3D"})
# Added to a total crop: the crop alone leaves nothing, and a strided layer after it needs room.
_MARGINS = (16, 32, 64, 224, 640)


def _crop_totals(class_name: str, config: dict[str, Any]) -> list[int]:
    """The total crop of each cropped axis: Cropping1D's ``(left, right)`` is one axis,
    Cropping2D/3D hold one ``(before, after)`` pair per axis."""
    cropping = config.get("cropping", ())
    if class_name == "Cropping1D":
        return [sum(int(c) for c in cropping)]
    return [sum(int(c) for c in axis) for axis in cropping]


def _reshape_size(layer: Any) -> int | None:
    """The size of the one free dimension a Reshape to a fixed target implies."""
    target = tuple(layer.get_config().get("target_shape") or ())
    if not target or any(int(d) < 0 for d in target):
        return None
    try:
        shape = tuple(layer.input.shape)[1:]
    except (AttributeError, ValueError):  # a layer called more than once has no one input
        return None
    free = [d for d in shape if d is None]
    if len(free) != 1:
        return None
    known = math.prod(int(d) for d in shape if d is not None)
    total = math.prod(int(d) for d in target)
    return total // known if known and total % known == 0 else None


def size_candidates(model: Any) -> list[tuple[int, str]]:
    """Sizes to try for the free dimensions of the model's inputs, each with the layer it was
    read from, before the fallback sizes."""
    found: list[tuple[int, str]] = []
    for path, layer in all_layers(model):
        class_name = type(layer).__name__
        if class_name in _CROPPING:
            for total in _crop_totals(class_name, layer.get_config()):
                found += [(total + margin, f"{class_name} '{path}'") for margin in _MARGINS]
        elif class_name == "Reshape":
            size = _reshape_size(layer)
            if size is not None:
                found.append((size, f"Reshape '{path}'"))
    unique: dict[int, str] = {}
    for size, source in found:
        unique.setdefault(size, source)
    return list(unique.items())
