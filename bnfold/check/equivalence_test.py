"""How the check sizes dynamic dimensions: the graph's sizes, the defaults, the fallbacks."""

from __future__ import annotations

import numpy as np

from bnfold.check.equivalence import (
    DimSizing,
    check_feeds,
    concrete_shape,
    size_sources,
    sizing_attempts,
)
from bnfold.settings import CheckSettings
from bnfold.specs import InputSpec, SizeHint

FLOAT = np.dtype("float32")
IMAGE = InputSpec("x", ("N", 3, "H", "W"), FLOAT)
FRAMES = InputSpec("x", ("frames", "bins"), FLOAT)


def _shapes(specs: list[InputSpec], settings: CheckSettings, hints=None) -> list[list[tuple]]:
    return [
        [concrete_shape(spec, settings.dims, sizing) for spec in specs]
        for sizing in sizing_attempts(specs, settings, hints or {})
    ]


def test_the_batch_stays_2_while_the_other_dims_take_the_fallback_sizes_first():
    shapes = [shape for [shape] in _shapes([IMAGE], CheckSettings())]
    assert shapes[:5] == [(2, 3, size, size) for size in (16, 32, 64, 224, 640)]
    # Then the first dim too, while the inputs stay small (64 x 3 x 64 x 64 does, 224 not).
    assert shapes[5:] == [(16, 3, 16, 16), (32, 3, 32, 32), (64, 3, 64, 64)]


def test_a_model_without_a_batch_axis_tries_its_first_dim_at_the_fallback_sizes():
    shapes = [shape for [shape] in _shapes([FRAMES], CheckSettings(dims={"bins": 80}))]
    assert shapes == [(2, 80), (16, 80), (32, 80), (64, 80), (224, 80), (640, 80)]


def test_graph_sizes_hold_in_every_attempt_and_the_user_dims_win():
    hints = {("x", 1): SizeHint(3, "Conv c's weight [8, 3, 1, 1]")}
    spec = InputSpec("x", ("N", "C", "H"), FLOAT)
    shapes = [shape for [shape] in _shapes([spec], CheckSettings(), hints)]
    assert {shape[1] for shape in shapes} == {3}
    user = [shape for [shape] in _shapes([spec], CheckSettings(dims={"C": 5}), hints)]
    assert {shape[1] for shape in user} == {5}


def test_fully_static_or_given_inputs_are_tried_once():
    static = InputSpec("x", (1, 3), FLOAT)
    assert len(sizing_attempts([static], CheckSettings(), {})) == 1
    given = CheckSettings(inputs={"x": np.zeros((2, 3, 4, 4), np.float32)})
    assert len(sizing_attempts([IMAGE], given, {})) == 1


def test_the_first_line_says_where_each_size_came_from():
    specs = [InputSpec("ids", ("batch", "seq"), FLOAT), InputSpec("mask", ("batch", "seq"), FLOAT)]
    hints = {("ids", 1): SizeHint(12, "MatMul fc's weight [12, 4]")}
    sizing = DimSizing(hints=hints)
    assert size_sources(specs, {}, sizing) == (
        "ids[0], mask[0]=2 default batch; ids[1]=12 from MatMul fc's weight [12, 4]; "
        "mask[1]=16 default size"
    )
    _, description = check_feeds(specs, CheckSettings(dims={"batch": 3}), sizing)
    assert description == (
        "random normal, seed 0: ids[3, 12], mask[3, 16]; sizes: ids[0], mask[0]=3 from --dim "
        "batch; ids[1]=12 from MatMul fc's weight [12, 4]; mask[1]=16 default size"
    )
