"""Sizes a Keras model's free input dimensions need, read from its own layers, for the
check's random inputs: a Cropping layer needs the axis it crops longer than its total crop
where it is applied, after every stride and pooling before it. Keras computes the length
that reaches the layer from two probe lengths (no model run), and the input length that
leaves ``_LEFT_AFTER_CROP`` after the crop follows from those two."""

from __future__ import annotations

import math
from typing import Any

from bnfold.frontends.keras.lowering import all_layers
from bnfold.frontends.keras.model_io import keras_input_specs
from bnfold.frontends.keras.runtime import keras_of, quiet_keras
from bnfold.specs import InputSpec, SizeHint, SizeHints

_CROPPING_AXES = {"Cropping1D": 1, "Cropping2D": 2, "Cropping3D": 3}
_PROBES = (1024, 2048)  # input lengths whose lengths at the layer give the ratio
_OTHER = 64  # the size of the other free dims while one is probed
_LEFT_AFTER_CROP = 16


def _crop_totals(class_name: str, config: dict[str, Any]) -> list[int]:
    """The total crop of each cropped axis: Cropping1D's ``(left, right)`` is one axis,
    Cropping2D/3D hold one ``(before, after)`` pair per axis."""
    cropping = config.get("cropping", ())
    if class_name == "Cropping1D":
        return [sum(int(c) for c in cropping)]
    return [sum(int(c) for c in axis) for axis in cropping]


def _probe_shape(specs: list[InputSpec], probed: tuple[str, int], length: int) -> Any:
    shapes = []
    for spec in specs:
        shape = [
            1 if axis == 0 else _OTHER if d is None or isinstance(d, str) else d
            for axis, d in enumerate(spec.shape)
        ]
        if spec.name == probed[0]:
            shape[probed[1]] = length
        shapes.append(tuple(shape))
    return shapes if len(shapes) > 1 else shapes[0]


def _needed_length(
    sub: Any, specs: list[InputSpec], probed: tuple[str, int], axis: int, total: int
) -> int | None:
    """The probed input length at which the layer's input ``axis`` is ``total`` plus what is
    left after the crop, if the probed dim drives that axis (linearly, as strides do)."""
    lengths = [int(sub.compute_output_shape(_probe_shape(specs, probed, n))[axis]) for n in _PROBES]
    if lengths[0] == lengths[1]:
        return None
    scale = (_PROBES[1] - _PROBES[0]) / (lengths[1] - lengths[0])
    return _PROBES[0] + math.ceil((total + _LEFT_AFTER_CROP - lengths[0]) * scale)


def _cropping_hints(model: Any, layer: Any, path: str, specs: list[InputSpec]) -> SizeHints:
    class_name = type(layer).__name__
    totals = _crop_totals(class_name, layer.get_config())
    first = 2 if layer.get_config().get("data_format") == "channels_first" else 1
    sub = keras_of(model).Model(model.inputs, layer.input)
    free = [
        (s.name, a)
        for s in specs
        for a, d in enumerate(s.shape)
        if a > 0 and not isinstance(d, int)
    ]
    hints: SizeHints = {}
    for axis, total in enumerate(totals, start=first):
        for probed in free:
            size = _needed_length(sub, specs, probed, axis, total)
            if size is not None and size > 0:
                source = f"{class_name} '{path}' (crops {total} on its axis {axis})"
                hints[probed] = SizeHint(size, source)
    return hints


def size_hints(model: Any) -> SizeHints:
    """The sizes the model's Cropping layers need for its inputs' free dims, by (input,
    axis). A layer Keras cannot size from the probes gives none."""
    specs = keras_input_specs(model)
    hints: SizeHints = {}
    for path, layer in all_layers(model):
        if type(layer).__name__ not in _CROPPING_AXES or "/" in path:
            continue  # a nested model's layer is not reachable from the outer inputs
        try:
            with quiet_keras():
                hints.update(_cropping_hints(model, layer, path, specs))
        except Exception:  # Keras cannot say; the fallback sizes still run
            continue
    return hints
