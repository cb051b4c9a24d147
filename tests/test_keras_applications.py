"""Every Keras Applications family folded to .keras, .h5 and .onnx (issue 14's matrix): exit 0,
the written file reads back, its output is within 1e-5 of the Keras original (relative to the
largest output), and the log's ``left`` equals the BNs really left in the file.

Each family is built at its smallest input with ``weights=None`` and randomised BN statistics
(``bnfold.testing_keras``). The few cases in ``FAST`` run in ``make test``; the rest are marked
``slow`` (``make test-slow``); ``benchmarks/keras_applications.py`` runs them all and writes
the table in docs/keras.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from bnfold.testing_keras import (  # noqa: E402
    APPLICATIONS,
    SUFFIXES,
    batchnorms_in_file,
    build_application,
    fold_to,
)

pytestmark = pytest.mark.keras
BOUND = 1e-5
# Xception's rebuilt layer order differs from the original's (the positional write-back
# crashed on it); MobileNetV3Small is the smallest family with BNs after depthwise convs, and
# Keras ops (`x + 3.0`) between layers, through all three formats.
FAST = {("Xception", ".keras"), ("Xception", ".h5"), *(("MobileNetV3Small", s) for s in SUFFIXES)}
# Keras 3 writes these as .h5 but may not read them back: its legacy loader rejects
# ConvNeXt's two-input Add and, depending on the op names Keras gave in the session,
# hard-swish's `x + 3.0`. bnfold then says so in one line and writes nothing.
MAY_BE_UNREADABLE = {("ConvNeXtTiny", ".h5"), ("MobileNetV3Small", ".h5")}
PRE_ACTIVATION_LEFT = {
    "ResNet50V2": {"no_linear_neighbour": 17},
    # A dense block's Concatenate -> BN: the concatenation's inputs are read by the next
    # block's concatenation too (shared_output), or one was written by a pooling layer.
    "DenseNet121": {"no_linear_neighbour": 8, "shared_output": 54},
}
CASES = [
    pytest.param(name, suffix, marks=() if (name, suffix) in FAST else pytest.mark.slow)
    for name in APPLICATIONS
    for suffix in SUFFIXES
]


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    return {}


def application(name: str, built: dict[str, Any]) -> Any:
    if name not in built:
        built.clear()  # one family in memory at a time
        built[name] = build_application(name)
    return built[name]


@pytest.mark.parametrize(("name", "suffix"), CASES)
def test_application_folds_to_a_file_that_matches_keras(
    name: str, suffix: str, built: dict[str, Any], tmp_path: Path
) -> None:
    model = application(name, built)
    out = tmp_path / f"{name}{suffix}"
    row = fold_to(model, name, out)
    if row.error and (name, suffix) in MAY_BE_UNREADABLE:
        assert "cannot read the folded model back from .h5" in row.error
        assert list(tmp_path.iterdir()) == []
        return
    assert not row.error
    _, batchnorms = APPLICATIONS[name]
    assert row.found == batchnorms
    assert row.left == row.left_in_file
    assert row.folded + row.left == row.found
    assert row.max_rel <= BOUND
    # Pre-activation networks leave the BNs that have a linear layer on neither side
    # (BN -> ReLU -> Conv after an Add or a Concatenate); every other BN folds.
    left = PRE_ACTIVATION_LEFT.get(name, {})
    assert (row.left, row.reasons) == (sum(left.values()), left)


def test_a_family_without_bn_comes_back_unchanged(tmp_path: Path) -> None:
    """A Keras model nothing folds in is written as it was: same layers, same weights."""
    import numpy as np

    from bnfold.frontends.keras import load_keras_model

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    model.layers[0].set_weights([np.arange(108, dtype=np.float32).reshape(3, 3, 3, 4), np.ones(4)])
    row = fold_to(model, "plain", tmp_path / "plain.keras")
    assert (row.found, row.left, row.max_rel) == (0, 0, 0.0)
    written = load_keras_model(tmp_path / "plain.keras")
    assert [type(layer).__name__ for layer in written.layers] == ["Conv2D"]
    for before, after in zip(model.get_weights(), written.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert batchnorms_in_file(tmp_path / "plain.keras") == 0
