"""Keras front end, forward fold: a BN the backward pass leaves is folded into every linear layer
that reads it (``W' = W`` scaled along the INPUT-channel axis, ``b' = b + W.t``), or left with
the reason the forward fold was refused.

Every case is a small model built in code with randomised BN statistics, saved as ``.keras`` and
folded through ``bnfold.fold`` twice: Keras -> Keras (compared with Keras' own prediction of
the original) and Keras -> ONNX (tf2onnx, then the ONNX engine, run in onnxruntime).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

import bnfold  # noqa: E402
from bnfold.foldlog import Outcome, Reason  # noqa: E402
from bnfold.frontends import keras as frontend  # noqa: E402

pytestmark = pytest.mark.keras
L = keras.layers
MODELS = Path(__file__).resolve().parents[1] / "models"
BOUND = 1e-5  # max relative error, float32

NEXT = Outcome.FOLDED_INTO_NEXT
PREVIOUS = Outcome.FOLDED_INTO_PREVIOUS
LEFT = Outcome.LEFT


def randomise_batchnorms(model: Any, seed: int) -> None:
    """Wider statistics than the default, so that folds change the weights a lot."""
    frontend.randomise_batchnorm_statistics(
        model, np.random.default_rng(seed), gamma=(0.5, 2.0), spread=1.0, variance=(0.2, 3.0)
    )


def chain(shape: tuple[int, ...], *stack: Any) -> Callable[[], Any]:
    def build() -> Any:
        inputs = keras.Input(shape, name="x")
        hidden = inputs
        for layer in stack:
            hidden = layer(hidden)
        return keras.Model(inputs, hidden)

    return build


def bn(**settings: Any) -> Any:
    return L.BatchNormalization(name=settings.pop("name", "bn"), **settings)


def relu_conv(filters: int = 4, **settings: Any) -> Any:
    return L.Conv2D(filters, 2, activation="relu", name="pre", **settings)


def two_readers(second: Callable[[], Any]) -> Callable[[], Any]:
    def build() -> Any:
        inputs = keras.Input((5,), name="x")
        normalised = bn()(L.Dense(4, activation="relu", name="pre")(inputs))
        left = L.Dense(4, name="lin")(normalised)
        return keras.Model(inputs, L.Add(name="add")([left, second()(normalised)]))

    return build


def shared_reader() -> Any:
    first, second = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    dense = L.Dense(3, name="lin")
    normalised = bn()(L.Dense(4, activation="relu", name="pre")(first))
    return keras.Model([first, second], L.Add(name="add")([dense(normalised), dense(second)]))


def output_and_read() -> Any:
    inputs = keras.Input((5,), name="x")
    normalised = bn()(L.Dense(4, activation="relu", name="pre")(inputs))
    return keras.Model(inputs, [normalised, L.Dense(2, name="lin")(normalised)])


def zero_shift(model: Any) -> None:
    """``center=False`` and a zero moving mean: ``t == 0`` exactly."""
    model.get_layer("bn").moving_mean.assign(np.zeros(model.get_layer("bn").moving_mean.shape))


@dataclass(frozen=True)
class Case:
    build: Callable[[], Any]
    expected: dict[str, tuple[Outcome, Reason | None, list[str]]]
    detail: dict[str, str] = field(default_factory=dict)
    via: list[str] = field(default_factory=list)
    adjust: Callable[[Any], None] | None = None


def into(*targets: str) -> dict[str, tuple[Outcome, Reason | None, list[str]]]:
    return {"bn": (NEXT, None, list(targets))}


def left(reason: Reason) -> dict[str, tuple[Outcome, Reason | None, list[str]]]:
    return {"bn": (LEFT, reason, [])}


FOLD_CASES: dict[str, Case] = {
    "dense_relu_bn_dense_without_bias": Case(
        chain(
            (5,),
            L.Dense(4, activation="relu", name="pre"),
            bn(),
            L.Dense(3, use_bias=False, name="lin"),
        ),
        into("lin"),
        detail={"bn": "'lin' gained a bias"},
    ),
    "bn_on_the_input": Case(chain((5,), bn(), L.Dense(3, name="lin")), into("lin")),
    "bn_on_a_sequence_then_dense": Case(
        chain((6, 5), L.Dense(4, activation="relu", name="pre"), bn(), L.Dense(3, name="lin")),
        into("lin"),
    ),
    "flatten_bn_dense": Case(
        chain((4, 4, 2), L.Flatten(name="flat"), bn(), L.Dense(3, name="lin")), into("lin")
    ),
    "bn_flatten_dense_channels_last": Case(
        chain((5, 5, 3), relu_conv(), bn(), L.Flatten(name="flat"), L.Dense(3, name="lin")),
        into("lin"),
        via=["flat"],
    ),
    "bn_flatten_dense_channels_first": Case(
        chain(
            (3, 5, 5),
            relu_conv(data_format="channels_first"),
            bn(axis=1),
            L.Flatten(name="flat"),
            L.Dense(3, name="lin"),
        ),
        into("lin"),
        via=["flat"],
    ),
    "bn_reshape_dropout_dense": Case(
        chain(
            (5, 5, 3),
            relu_conv(),
            bn(),
            L.Reshape((16, 4), name="reshape"),
            L.Dropout(0.5, name="drop"),
            L.Dense(3, name="lin"),
        ),
        into("lin"),
        via=["reshape", "drop"],
    ),
    "conv2d_valid": Case(
        chain((6, 6, 3), relu_conv(), bn(), L.Conv2D(5, 3, name="lin")), into("lin")
    ),
    "conv2d_same_1x1": Case(
        chain((6, 6, 3), relu_conv(), bn(), L.Conv2D(5, 1, padding="same", name="lin")),
        into("lin"),
    ),
    "conv2d_same_3x3_zero_shift": Case(
        chain((6, 6, 3), relu_conv(), bn(center=False), L.Conv2D(5, 3, padding="same", name="lin")),
        into("lin"),
        adjust=zero_shift,
    ),
    "conv2d_grouped_valid": Case(
        chain((6, 6, 3), relu_conv(), bn(), L.Conv2D(6, 2, groups=2, name="lin")), into("lin")
    ),
    "conv1d_valid": Case(
        chain(
            (8, 3), L.Conv1D(4, 2, activation="relu", name="pre"), bn(), L.Conv1D(5, 3, name="lin")
        ),
        into("lin"),
    ),
    "conv3d_valid": Case(
        chain(
            (5, 5, 5, 2),
            L.Conv3D(3, 2, activation="relu", name="pre"),
            bn(),
            L.Conv3D(2, 2, name="lin"),
        ),
        into("lin"),
    ),
    "depthwise_conv2d_valid": Case(
        chain((6, 6, 3), relu_conv(), bn(), L.DepthwiseConv2D(3, depth_multiplier=2, name="lin")),
        into("lin"),
    ),
    "separable_conv2d_valid_without_bias": Case(
        chain(
            (6, 6, 3),
            relu_conv(),
            bn(),
            L.SeparableConv2D(5, 3, depth_multiplier=2, use_bias=False, name="lin"),
        ),
        into("lin"),
        detail={"bn": "gained a bias"},
    ),
    "conv2d_transpose_1x1": Case(
        chain((5, 5, 3), relu_conv(), bn(), L.Conv2DTranspose(3, 1, name="lin")), into("lin")
    ),
    "conv2d_transpose_3x3_stride_2_zero_shift": Case(
        chain(
            (5, 5, 3), relu_conv(), bn(center=False), L.Conv2DTranspose(3, 3, strides=2, name="lin")
        ),
        into("lin"),
        adjust=zero_shift,
    ),
    "two_dense_readers": Case(two_readers(lambda: L.Dense(4, name="lin_2")), into("lin", "lin_2")),
    "bn_bn_dense": Case(
        chain(
            (5,),
            L.Dense(4, activation="relu", name="pre"),
            bn(),
            bn(name="bn_2"),
            L.Dense(3, name="lin"),
        ),
        {"bn": (NEXT, None, ["lin"]), "bn_2": (NEXT, None, ["lin"])},
    ),
    "backward_first_then_forward": Case(
        chain(
            (5,),
            L.Dense(4, activation="relu", name="pre"),
            bn(),
            L.Dense(3, name="lin"),
            bn(name="bn_2"),
            L.ReLU(name="relu"),
        ),
        {"bn": (NEXT, None, ["lin"]), "bn_2": (PREVIOUS, None, ["lin"])},
    ),
}

REFUSE_CASES: dict[str, Case] = {
    "conv2d_same_3x3": Case(
        chain((6, 6, 3), relu_conv(), bn(), L.Conv2D(5, 3, padding="same", name="lin")),
        left(Reason.PADDING),
        detail={"bn": "Conv2D 'lin' pads its input with zeros"},
    ),
    "depthwise_same_3x3": Case(
        chain((6, 6, 3), relu_conv(), bn(), L.DepthwiseConv2D(3, padding="same", name="lin")),
        left(Reason.PADDING),
        detail={"bn": "DepthwiseConv2D 'lin' pads its input with zeros"},
    ),
    "conv2d_transpose_3x3_stride_2": Case(
        chain((5, 5, 3), relu_conv(), bn(), L.Conv2DTranspose(3, 3, strides=2, name="lin")),
        left(Reason.PADDING),
        detail={"bn": "kernel [3, 3]"},
    ),
    "a_reader_is_not_linear": Case(
        two_readers(lambda: L.ReLU(name="relu")),
        left(Reason.CONSUMER_NOT_FOLDABLE),
        detail={"bn": "(ReLU 'relu') also reads it"},
    ),
    "pre_activation_bn_relu_dense": Case(
        chain(
            (5,), L.Dense(4, activation="relu", name="pre"), bn(), L.ReLU(name="relu"), L.Dense(3)
        ),
        left(Reason.NO_LINEAR_NEIGHBOUR),
        detail={"bn": "follows an activation (relu of Dense 'pre')"},
    ),
    "bn_is_the_model_output": Case(
        chain((5,), L.Dense(4, activation="relu", name="pre"), bn()),
        left(Reason.NO_LINEAR_NEIGHBOUR),
        detail={"bn": "follows an activation (relu of Dense 'pre')"},
    ),
    "bn_is_an_output_and_read": Case(
        output_and_read,
        left(Reason.CONSUMER_NOT_FOLDABLE),
        detail={"bn": "BatchNormalization 'bn' is a model output"},
    ),
    "shared_reader": Case(
        shared_reader, left(Reason.CONSUMER_NOT_FOLDABLE), detail={"bn": "called 2 times"}
    ),
    "bn_on_the_wrong_axis": Case(
        chain(
            (6, 5), L.Dense(4, activation="relu", name="pre"), bn(axis=1), L.Dense(3, name="lin")
        ),
        left(Reason.CHANNEL_MISMATCH),
        detail={"bn": "Dense 'lin' reads features on axis 2"},
    ),
    "dynamic_shape_through_reshape": Case(
        chain(
            (None, 3),
            L.Dense(3, activation="relu", name="pre"),
            bn(),
            L.Reshape((-1, 3), name="reshape"),
            L.Dense(2, name="lin"),
        ),
        left(Reason.UNPROVEN_LAYOUT),
        detail={"bn": "cannot prove each sample keeps its elements"},
    ),
}

ALL_CASES = {**FOLD_CASES, **REFUSE_CASES}


@dataclass
class Folded:
    path: Path
    to_keras: Any
    to_onnx: Any
    keras_file: Path
    onnx_file: Path


def count_batchnorms(model: Any) -> int:
    return sum(isinstance(layer, L.BatchNormalization) for layer in model.layers)


@pytest.fixture(scope="session")
def folded_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Folded]:
    """Every case built, saved and folded to .keras and to .onnx once for the session."""
    folder = tmp_path_factory.mktemp("forward")
    keras.utils.set_random_seed(5)
    results = {}
    for index, (name, case) in enumerate(ALL_CASES.items()):
        model = case.build()
        randomise_batchnorms(model, seed=index)
        if case.adjust is not None:
            case.adjust(model)
        path = folder / f"{name}.keras"
        frontend.save_keras_model(model, path)
        keras_file, onnx_file = folder / f"{name}_folded.keras", folder / f"{name}_folded.onnx"
        to_keras = bnfold.fold(path, keras_file, check=bnfold.CheckSettings(seed=index))
        to_onnx = bnfold.fold(path, onnx_file, check=bnfold.CheckSettings(seed=index))
        results[name] = Folded(path, to_keras, to_onnx, keras_file, onnx_file)
    return results


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_keras_log_has_the_expected_outcome_and_detail(
    name: str, folded_cases: dict[str, Folded]
) -> None:
    case, result = ALL_CASES[name], folded_cases[name].to_keras
    got = {entry.name: (entry.outcome, entry.reason, entry.target) for entry in result.entries}
    assert got == case.expected
    for bn_name, text in case.detail.items():
        entry = next(entry for entry in result.entries if entry.name == bn_name)
        assert text in entry.detail, entry.detail
    if case.via:
        assert next(e for e in result.entries if e.name == "bn").via == case.via
    assert all(entry.stage == "keras" for entry in result.entries)


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_folded_keras_file_predicts_like_the_original(
    name: str, folded_cases: dict[str, Folded]
) -> None:
    result = folded_cases[name]
    assert result.to_keras.check is not None and result.to_keras.check.max_rel <= BOUND
    reloaded = frontend.load_keras_model(result.keras_file)
    left = sum(entry.outcome is LEFT for entry in result.to_keras.entries)
    assert count_batchnorms(reloaded) == left
    # Keras' own prediction of the original file against the saved folded file.
    assert bnfold.check(result.path, result.keras_file).max_rel <= BOUND


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_keras_to_onnx_matches_and_reports_each_bn_once(
    name: str, folded_cases: dict[str, Folded]
) -> None:
    result = folded_cases[name]
    assert result.to_onnx.check is not None and result.to_onnx.check.max_rel <= BOUND
    keras_entries = {entry.name: entry for entry in result.to_keras.entries}
    names = [entry.name for entry in result.to_onnx.entries]
    for bn_name, entry in keras_entries.items():
        assert names.count(bn_name) == 1
        if entry.folded:
            onnx_entry = next(e for e in result.to_onnx.entries if e.name == bn_name)
            assert (onnx_entry.outcome, onnx_entry.stage) == (entry.outcome, "keras")


@pytest.mark.parametrize(
    "name",
    ["bn_flatten_dense_channels_first", "separable_conv2d_valid_without_bias", "bn_bn_dense"],
)
def test_forward_folded_model_saves_and_loads_as_h5(
    name: str, folded_cases: dict[str, Folded], tmp_path: Path
) -> None:
    result = folded_cases[name]
    path = tmp_path / "folded.h5"
    frontend.save_keras_model(result.to_keras.model, path)
    reloaded = frontend.load_keras_model(path)
    assert count_batchnorms(reloaded) == 0
    assert frontend.keras_output_names(reloaded) == frontend.keras_output_names(
        result.to_keras.model
    )
    assert bnfold.check(result.path, path).max_rel <= BOUND


def test_padding_refusal_is_folded_by_nothing_else(folded_cases: dict[str, Folded]) -> None:
    """The ONNX engine applies the same padding rule: the BN stays in the ONNX output too."""
    result = folded_cases["conv2d_same_3x3"].to_onnx
    entry = next(e for e in result.entries if e.name == "bn")
    assert entry.outcome is LEFT


def test_transpose_1x1_with_stride_2_is_left() -> None:
    """Stride gaps get no tap at all; Keras only (tf2onnx writes negative pads for it)."""
    model = chain((5, 5, 3), relu_conv(), bn(), L.Conv2DTranspose(3, 1, strides=2, name="lin"))()
    randomise_batchnorms(model, seed=1)
    folded, entries = frontend.fold_keras_model(model)
    (entry,) = entries
    assert (entry.outcome, entry.reason) == (LEFT, Reason.PADDING)
    assert "strides [2, 2]" in entry.detail
    assert count_batchnorms(folded) == 1


@pytest.mark.parametrize("name", ["iris_mlp.h5", "flatten_bn_classifier.keras"])
def test_seed_model_ends_without_batchnorm(name: str, tmp_path: Path) -> None:
    for suffix in (".keras", ".onnx"):
        output = tmp_path / f"folded{suffix}"
        result = bnfold.fold(MODELS / name, output=output)
        assert result.check is not None and result.check.max_rel <= BOUND
        assert result.counts()["left"] == 0
        assert result.counts()["folded_into_next"] == result.counts()["found"]
        if suffix == ".keras":
            assert count_batchnorms(frontend.load_keras_model(output)) == 0
        else:
            ops = {node.op_type for node in onnx.load(str(output)).graph.node}
            assert "BatchNormalization" not in ops
        assert bnfold.check(MODELS / name, output).max_rel <= BOUND
