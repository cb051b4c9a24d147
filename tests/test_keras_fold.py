"""Keras front end, fold on the Keras model: every layer kind and every reason to leave a BN.

Each case is a small model built in code with randomised BN statistics; the folded model is
compared with Keras' own prediction of the original (Keras -> Keras), and with tf2onnx's
conversion of the folded model run in onnxruntime without graph optimisation (Keras -> ONNX).
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
ort = pytest.importorskip("onnxruntime")
import onnx_ir  # noqa: E402

from bnfold.errors import InputError  # noqa: E402
from bnfold.foldlog import Outcome, Reason  # noqa: E402
from bnfold.frontends import keras as frontend  # noqa: E402
from bnfold.frontends.keras import conversion  # noqa: E402

pytestmark = pytest.mark.keras
L = keras.layers

# Max relative error max|folded - original| / max|original|, float32 models.
KERAS_BOUND = 1e-5
# tf2onnx's own error on the UNFOLDED models measures 1e-7 .. 1e-6 here; the folded model
# converted by tf2onnx must stay within the same bound.
ONNX_BOUND = 1e-5

FOLDED = Outcome.FOLDED_INTO_PREVIOUS
LEFT = Outcome.LEFT


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    scale = float(np.max(np.abs(expected)))
    return float(np.max(np.abs(actual - expected))) / (scale if scale > 0 else 1.0)


def randomise_batchnorms(model: Any, seed: int) -> None:
    """Wider statistics than the default, so that folds change the weights a lot."""
    frontend.randomise_batchnorm_statistics(
        model, np.random.default_rng(seed), gamma=(0.5, 2.0), spread=1.0, variance=(0.2, 3.0)
    )


def run_onnx(model: onnx_ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        onnx_ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def random_feeds(model: Any, seed: int = 0, batch: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        spec.name: rng.normal(size=(batch, *spec.shape[1:])).astype(spec.dtype)
        for spec in frontend.keras_input_specs(model)
    }


# --------------------------------------------------------------------------- cases


def functional(shape: tuple[int, ...], *stack: Any, name: str = "x") -> Any:
    inputs = keras.Input(shape, name=name)
    hidden = inputs
    for layer in stack:
        hidden = layer(hidden)
    return keras.Model(inputs, hidden)


def sequential(shape: tuple[int, ...], *stack: Any) -> Any:
    return keras.Sequential([keras.Input(shape, name="x"), *stack])


def linear_then_bn(shape: tuple[int, ...], layer: Any, **bn: Any) -> Callable[[], Any]:
    """``layer -> BN -> ReLU``: the BN is not the model output."""
    return lambda: functional(shape, layer, L.BatchNormalization(name="bn", **bn), L.ReLU())


def shared_output() -> Any:
    inputs = keras.Input((5,), name="x")
    linear = L.Dense(4, name="lin")(inputs)
    normalised = L.BatchNormalization(name="bn")(linear)
    return keras.Model(inputs, L.Add()([normalised, linear]))


def linear_output_too() -> Any:
    inputs = keras.Input((5,), name="x")
    linear = L.Dense(4, name="lin")(inputs)
    return keras.Model(inputs, [L.BatchNormalization(name="bn")(linear), linear])


def shared_linear_layer() -> Any:
    first, second = keras.Input((5,), name="a"), keras.Input((5,), name="b")
    dense = L.Dense(4, name="lin")
    left = L.BatchNormalization(name="bn")(dense(first))
    right = L.BatchNormalization(name="bn_2")(dense(second))
    return keras.Model([first, second], [left, right])


def shared_batchnorm() -> Any:
    first, second = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    bn = L.BatchNormalization(name="bn")
    left = bn(L.Dense(4, name="lin")(first))
    right = bn(L.Dense(4, name="lin_2")(second))
    return keras.Model([first, second], L.Add()([left, right]))


def nested_model() -> Any:
    inner = keras.Sequential(
        [keras.Input((5,)), L.Dense(4, name="inner_lin"), L.BatchNormalization(name="inner_bn")],
        name="inner",
    )
    return functional((5,), inner, L.Dense(3, name="lin"), L.BatchNormalization(name="bn"))


def output_also_consumed() -> Any:
    inputs = keras.Input((5,), name="x")
    normalised = L.BatchNormalization(name="bn")(L.Dense(4, name="lin")(inputs))
    return keras.Model(inputs, [normalised, L.Dense(2, name="head")(normalised)])


@dataclass(frozen=True)
class Case:
    build: Callable[[], Any]
    expected: dict[str, tuple[Outcome, Reason | None, list[str]]]
    detail: dict[str, str] = field(default_factory=dict)  # BN name -> text in its detail


def folds(
    target: str = "lin", bn: str = "bn"
) -> dict[str, tuple[Outcome, Reason | None, list[str]]]:
    return {bn: (FOLDED, None, [target])}


LAYER_CASES: dict[str, Case] = {
    "dense_sequential_bn_is_output": Case(
        lambda: sequential((5,), L.Dense(4, name="lin"), L.BatchNormalization(name="bn")), folds()
    ),
    "dense_3d_input": Case(linear_then_bn((6, 5), L.Dense(4, name="lin")), folds()),
    "dense_no_bias_no_center": Case(
        linear_then_bn((5,), L.Dense(4, use_bias=False, name="lin"), center=False), folds()
    ),
    "dense_no_scale_large_epsilon": Case(
        linear_then_bn((5,), L.Dense(4, name="lin"), scale=False, epsilon=0.5), folds()
    ),
    "conv1d": Case(linear_then_bn((10, 3), L.Conv1D(4, 3, name="lin")), folds()),
    "conv2d": Case(linear_then_bn((8, 8, 3), L.Conv2D(5, 3, padding="same", name="lin")), folds()),
    "conv2d_grouped": Case(
        linear_then_bn((8, 8, 4), L.Conv2D(6, 3, groups=2, name="lin")), folds()
    ),
    "conv2d_channels_first": Case(
        linear_then_bn((3, 8, 8), L.Conv2D(4, 3, data_format="channels_first", name="lin"), axis=1),
        folds(),
    ),
    "conv3d_channels_first": Case(
        linear_then_bn(
            (2, 5, 5, 5), L.Conv3D(3, 2, data_format="channels_first", name="lin"), axis=1
        ),
        folds(),
    ),
    "conv3d": Case(linear_then_bn((5, 5, 5, 2), L.Conv3D(3, 2, name="lin")), folds()),
    "depthwise_conv1d": Case(
        linear_then_bn((10, 3), L.DepthwiseConv1D(3, depth_multiplier=2, name="lin")), folds()
    ),
    "depthwise_conv2d": Case(
        linear_then_bn((8, 8, 3), L.DepthwiseConv2D(3, depth_multiplier=2, name="lin")), folds()
    ),
    "separable_conv1d": Case(
        linear_then_bn((10, 3), L.SeparableConv1D(4, 3, depth_multiplier=2, name="lin")), folds()
    ),
    "separable_conv2d_no_bias": Case(
        linear_then_bn((8, 8, 3), L.SeparableConv2D(4, 3, use_bias=False, name="lin")), folds()
    ),
    "conv1d_transpose": Case(
        linear_then_bn((6, 3), L.Conv1DTranspose(4, 3, strides=2, name="lin")), folds()
    ),
    "conv2d_transpose": Case(
        linear_then_bn((5, 5, 3), L.Conv2DTranspose(4, 3, strides=2, name="lin")), folds()
    ),
    "conv3d_transpose": Case(
        linear_then_bn((3, 3, 3, 2), L.Conv3DTranspose(3, 2, name="lin")), folds()
    ),
    "two_batchnorms_in_a_row": Case(
        lambda: functional(
            (5,),
            L.Dense(4, name="lin"),
            L.BatchNormalization(name="bn"),
            L.BatchNormalization(name="bn_2"),
        ),
        {"bn": (FOLDED, None, ["lin"]), "bn_2": (FOLDED, None, ["lin"])},
    ),
    "bn_output_also_consumed": Case(output_also_consumed, folds()),
}

SKIP_CASES: dict[str, Case] = {
    "dense_relu_then_bn": Case(
        lambda: sequential(
            (5,), L.Dense(4, activation="relu", name="lin"), L.BatchNormalization(name="bn")
        ),
        {"bn": (LEFT, Reason.NO_LINEAR_NEIGHBOUR, [])},
        detail={"bn": "follows an activation"},
    ),
    "activation_layer_then_bn": Case(
        lambda: functional(
            (5,), L.Dense(4, name="lin"), L.ReLU(name="relu"), L.BatchNormalization(name="bn")
        ),
        {"bn": (LEFT, Reason.NO_LINEAR_NEIGHBOUR, [])},
        detail={"bn": "follows an activation"},
    ),
    "flatten_then_bn": Case(
        lambda: functional(
            (4, 4, 2),
            L.Conv2D(3, 2, name="lin"),
            L.Flatten(name="flat"),
            L.BatchNormalization(name="bn"),
        ),
        {"bn": (LEFT, Reason.UNPROVEN_LAYOUT, [])},
        detail={"bn": "Flatten 'flat' mixes the channel axis with others"},
    ),
    "linear_output_shared": Case(
        shared_output,
        {"bn": (LEFT, Reason.SHARED_OUTPUT, [])},
        detail={"bn": "the output of Dense 'lin' has other readers"},
    ),
    "linear_output_is_model_output": Case(
        linear_output_too, {"bn": (LEFT, Reason.GRAPH_OUTPUT, [])}, detail={"bn": "model output"}
    ),
    "linear_layer_called_twice": Case(
        shared_linear_layer,
        {"bn": (LEFT, Reason.SHARED_OUTPUT, []), "bn_2": (LEFT, Reason.SHARED_OUTPUT, [])},
        detail={"bn": "called 2 times"},
    ),
    "bn_called_twice": Case(
        shared_batchnorm,
        {"bn": (LEFT, Reason.UNSUPPORTED_LAYER, [])},
        detail={"bn": "called 2 times"},
    ),
    "bn_on_the_wrong_axis": Case(
        lambda: functional(
            (6, 6, 3), L.Conv2D(4, 3, name="lin"), L.BatchNormalization(axis=1, name="bn")
        ),
        {"bn": (LEFT, Reason.CHANNEL_MISMATCH, [])},
        detail={"bn": "channels on axis 3"},
    ),
    "bn_inside_a_nested_model": Case(
        nested_model,
        # Nested models are walked like the top level: the inner BN folds inside them.
        {"inner/inner_bn": (FOLDED, None, ["inner/inner_lin"]), "bn": (FOLDED, None, ["lin"])},
    ),
}

ALL_CASES = {**LAYER_CASES, **SKIP_CASES}


@dataclass
class Folded:
    original: Any
    folded: Any
    entries: list[Any]
    feeds: dict[str, np.ndarray]


@pytest.fixture(scope="session")
def folded_cases() -> dict[str, Folded]:
    """Every case built, randomised and folded once for the whole session."""
    keras.utils.set_random_seed(7)
    results = {}
    for index, (name, case) in enumerate(ALL_CASES.items()):
        model = case.build()
        randomise_batchnorms(model, seed=index)
        folded, entries = frontend.fold_keras_model(model)
        results[name] = Folded(model, folded, entries, random_feeds(model, seed=index))
    return results


def count_batchnorms(model: Any) -> int:
    return sum(isinstance(layer, L.BatchNormalization) for layer in model._flatten_layers())


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_fold_log_has_one_entry_per_bn_with_its_outcome(
    name: str, folded_cases: dict[str, Folded]
) -> None:
    case, result = ALL_CASES[name], folded_cases[name]
    got = {entry.name: (entry.outcome, entry.reason, entry.target) for entry in result.entries}
    assert got == case.expected
    for bn_name, text in case.detail.items():
        entry = next(entry for entry in result.entries if entry.name == bn_name)
        assert text in entry.detail
    left = sum(1 for entry in result.entries if entry.outcome is LEFT)
    assert count_batchnorms(result.folded) == left
    # A model is rebuilt only when something folded; otherwise it is handed back as it is.
    assert (result.folded is not result.original) == (left < len(result.entries))


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_folded_keras_model_predicts_like_the_original(
    name: str, folded_cases: dict[str, Folded]
) -> None:
    result = folded_cases[name]
    assert frontend.keras_input_specs(result.folded) == frontend.keras_input_specs(result.original)
    expected = frontend.predict_keras(result.original, result.feeds)
    actual = frontend.predict_keras(result.folded, result.feeds)
    assert list(actual) == list(expected)
    for output, values in expected.items():
        assert relative_error(values, actual[output]) <= KERAS_BOUND, output


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_folded_model_through_tf2onnx_matches_keras(
    name: str, folded_cases: dict[str, Folded]
) -> None:
    result = folded_cases[name]
    expected = frontend.predict_keras(result.original, result.feeds)
    unfolded_onnx = frontend.keras_to_onnx(result.original)
    folded_onnx = frontend.keras_to_onnx(result.folded)
    assert folded_onnx.ir_version <= 10
    assert [value.name for value in folded_onnx.graph.inputs] == list(result.feeds)
    assert [value.name for value in folded_onnx.graph.outputs] == list(expected)
    tf2onnx_alone = run_onnx(unfolded_onnx, result.feeds)
    folded_actual = run_onnx(folded_onnx, result.feeds)
    for output, values in expected.items():
        assert relative_error(values, tf2onnx_alone[output]) <= ONNX_BOUND, output
        assert relative_error(values, folded_actual[output]) <= ONNX_BOUND, output


def test_xla_compiled_convolutions_convert_to_plain_onnx(folded_cases: dict[str, Folded]) -> None:
    """Keras runs these through XLA on CPU; tf2onnx alone leaves a StatefulPartitionedCall."""
    for name in ("conv2d_grouped", "conv3d_channels_first"):
        converted = frontend.keras_to_onnx(folded_cases[name].folded)
        assert "Conv" in {node.op_type for node in converted.graph}
        assert not {"StatefulPartitionedCall", "PartitionedCall"} & {
            n.op_type for n in converted.graph
        }


def test_tensorflow_call_left_in_onnx_is_refused() -> None:
    import onnx

    node = onnx.helper.make_node("StatefulPartitionedCall", ["x"], ["y"], name="call")
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    with pytest.raises(InputError, match="StatefulPartitionedCall node \\('call'\\)"):
        conversion._validate_onnx(onnx.helper.make_model(graph))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("name", [*LAYER_CASES, "bn_inside_a_nested_model", "dense_relu_then_bn"])
def test_saved_and_reloaded_folded_model_predicts_the_same(
    name: str, suffix: str, folded_cases: dict[str, Folded], tmp_path: Path
) -> None:
    result = folded_cases[name]
    path = tmp_path / f"folded{suffix}"
    frontend.save_keras_model(result.folded, path)
    reloaded = frontend.load_keras_model(path)
    before = frontend.predict_keras(result.folded, result.feeds)
    after = frontend.predict_keras(reloaded, result.feeds)
    assert list(after) == list(before)
    for output, values in before.items():
        np.testing.assert_array_equal(after[output], values)


def test_save_under_a_temporary_name_keeps_the_format(
    folded_cases: dict[str, Folded], tmp_path: Path
) -> None:
    path = tmp_path / "out.keras.partial"
    frontend.save_keras_model(folded_cases["conv2d"].folded, path)
    reloaded = frontend.load_keras_model(path.rename(tmp_path / "out.keras"))
    assert count_batchnorms(reloaded) == 0


def test_folded_bn_that_was_an_output_hands_its_name_over(folded_cases: dict[str, Folded]) -> None:
    result = folded_cases["dense_sequential_bn_is_output"]
    assert frontend.keras_output_names(result.folded) == ["bn"]
    assert [layer.name for layer in result.folded.layers] == ["bn"]
    assert isinstance(result.folded.layers[0], L.Dense)
    assert "renamed 'bn'" in result.entries[0].detail


def test_layer_without_bias_gains_one(folded_cases: dict[str, Folded]) -> None:
    result = folded_cases["dense_no_bias_no_center"]
    dense = result.folded.get_layer("lin")
    assert dense.use_bias and len(dense.get_weights()) == 2
    assert "gained a bias" in result.entries[0].detail


def test_onnx_boundary_takes_keras_names_tensorflow_would_refuse() -> None:
    inputs = keras.Input((4,), name="pixel values")
    hidden = L.BatchNormalization(name="bn")(L.Dense(3, name="lin")(inputs))
    model = keras.Model(inputs, [L.Dense(2, name="logits")(hidden), hidden])
    randomise_batchnorms(model, seed=3)
    folded, _ = frontend.fold_keras_model(model)
    converted = frontend.keras_to_onnx(folded)
    assert [value.name for value in converted.graph.inputs] == ["pixel values"]
    assert [value.name for value in converted.graph.outputs] == ["logits", "bn"]
    feeds = random_feeds(model)
    expected = frontend.predict_keras(model, feeds)
    actual = run_onnx(converted, feeds)
    for output, values in expected.items():
        assert relative_error(values, actual[output]) <= ONNX_BOUND


def dense_then_bn(dtype: str = "float32") -> Any:
    model = functional(
        (3,), L.Dense(2, name="lin", dtype=dtype), L.BatchNormalization(name="bn", dtype=dtype)
    )
    randomise_batchnorms(model, seed=11)
    return model


def only_entry(model: Any) -> Any:
    folded, entries = frontend.fold_keras_model(model)
    assert count_batchnorms(folded) == sum(entry.outcome is LEFT for entry in entries)
    (entry,) = entries
    return entry


def test_negative_variance_is_left_as_invalid_params() -> None:
    model = dense_then_bn()
    model.get_layer("bn").moving_variance.assign(np.array([1.0, -1.0]))
    entry = only_entry(model)
    assert (entry.outcome, entry.reason) == (LEFT, Reason.INVALID_PARAMS)
    assert "not finite and positive" in entry.detail


def test_float16_overflow_is_left_as_dtype_range() -> None:
    model = dense_then_bn("float16")
    model.get_layer("lin").kernel.assign(np.full((3, 2), 60000.0))
    model.get_layer("bn").gamma.assign(np.full(2, 8.0))
    entry = only_entry(model)
    assert (entry.outcome, entry.reason) == (LEFT, Reason.DTYPE_RANGE)
    assert "overflow float16" in entry.detail


def test_float16_model_folds_in_its_dtype() -> None:
    model = dense_then_bn("float16")
    folded, (entry,) = frontend.fold_keras_model(model)
    assert entry.outcome is FOLDED
    assert folded.get_layer("bn").kernel.dtype == "float16"
    feeds = random_feeds(model)
    expected = frontend.predict_keras(model, feeds)["bn"].astype(np.float64)
    actual = frontend.predict_keras(folded, feeds)["bn"].astype(np.float64)
    assert relative_error(expected, actual) <= 1e-2  # float16 has an 11-bit significand


def test_int8_quantised_dense_is_left_as_unsupported_dtype() -> None:
    model = dense_then_bn()
    model.get_layer("lin").quantize("int8")
    entry = only_entry(model)
    assert (entry.outcome, entry.reason) == (LEFT, Reason.UNSUPPORTED_DTYPE)


def test_subclassed_model_is_returned_unchanged_with_every_bn_left() -> None:
    class Subclassed(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = L.Dense(3)
            self.norm = L.BatchNormalization(name="bn")

        def call(self, inputs: Any) -> Any:
            return self.norm(self.dense(inputs))

    model = Subclassed()
    model(np.zeros((1, 4), np.float32))
    folded, entries = frontend.fold_keras_model(model)
    assert folded is model
    assert [(entry.name, entry.reason) for entry in entries] == [("bn", Reason.UNSUPPORTED_LAYER)]
    assert "subclassed" in entries[0].detail
