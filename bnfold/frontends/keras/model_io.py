"""A loaded Keras model's inputs and outputs by name, running it, saving it, and seeding
its BN statistics for tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bnfold.errors import InputError, OutputError
from bnfold.frontends.keras.runtime import (
    BATCH_DIMENSION,
    KERAS_SUFFIXES,
    first_line,
    import_keras,
    quiet_native_stderr,
)
from bnfold.specs import InputSpec


def _producer_name(tensor: Any) -> str:
    return str(tensor._keras_history.operation.name)


def keras_input_specs(model: Any) -> list[InputSpec]:
    """One spec per model input, named after its InputLayer; the batch dimension is 'batch'."""
    specs = []
    for tensor in model.inputs:
        shape: list[int | str | None] = [
            int(dim) if dim is not None else None for dim in tuple(tensor.shape)
        ]
        if shape and shape[0] is None:
            shape[0] = BATCH_DIMENSION
        specs.append(InputSpec(_producer_name(tensor), tuple(shape), np.dtype(tensor.dtype)))
    return specs


def keras_output_names(model: Any) -> list[str]:
    """Output names: the name of the layer producing each output (Keras' own naming), with
    ``_<index>`` added where one layer produces several outputs."""
    names = [_producer_name(tensor) for tensor in model.outputs]
    indices = [int(tensor._keras_history.tensor_index) for tensor in model.outputs]
    return [
        f"{name}_{index}" if names.count(name) > 1 else name
        for name, index in zip(names, indices, strict=True)
    ]


def _flatten_outputs(keras: Any, outputs: Any) -> list[Any]:
    return list(keras.tree.flatten(outputs))


def predict_keras(model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the model in inference mode; inputs keyed by ``keras_input_specs`` names, outputs by
    ``keras_output_names`` (the names ``keras_to_onnx`` gives the ONNX outputs)."""
    keras, _ = import_keras()
    names = [spec.name for spec in keras_input_specs(model)]
    missing = [name for name in names if name not in inputs]
    if missing:
        raise InputError(f"no value given for model input '{missing[0]}'")
    arrays = [np.asarray(inputs[name]) for name in names]
    outputs = model(arrays[0] if len(arrays) == 1 else arrays, training=False)
    values = [np.asarray(keras.ops.convert_to_numpy(v)) for v in _flatten_outputs(keras, outputs)]
    return dict(zip(keras_output_names(model), values, strict=True))


def randomise_batchnorm_statistics(
    model: Any,
    rng: np.random.Generator,
    *,
    gamma: tuple[float, float] = (0.5, 1.5),
    spread: float = 0.5,
    variance: tuple[float, float] = (0.5, 2.0),
) -> int:
    """Random inference statistics on every BatchNormalization layer (nested ones too), for
    tests and benchmarks: an untrained BN is an identity, which cannot tell a right fold from
    a wrong one. gamma ~ U(gamma), beta and moving mean ~ N(0, spread), moving variance ~
    U(variance). Returns the number of BN layers."""
    keras, _ = import_keras()
    count = 0
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        count += 1
        channels = layer.moving_mean.shape[0]
        if layer.scale:
            layer.gamma.assign(rng.uniform(*gamma, channels).astype(np.float32))
        if layer.center:
            layer.beta.assign(rng.normal(0.0, spread, channels).astype(np.float32))
        layer.moving_mean.assign(rng.normal(0.0, spread, channels).astype(np.float32))
        layer.moving_variance.assign(rng.uniform(*variance, channels).astype(np.float32))
    return count


def save_keras_model(model: Any, path: Path) -> None:
    """Save as ``.keras`` or ``.h5``, chosen by the last Keras suffix in the name, so that a
    temporary name such as ``out.keras.tmp`` also works; errors are ``OutputError``."""
    keras, _ = import_keras()
    path = Path(path)
    suffix = next((s for s in reversed(path.suffixes) if s.lower() in KERAS_SUFFIXES), None)
    if suffix is None:
        raise OutputError(f"{path}: a Keras model is written as .keras or .h5")
    try:
        if path.suffix.lower() == suffix.lower():
            with quiet_native_stderr():
                keras.saving.save_model(model, str(path))
            return
        # Keras insists on the suffix being last: save beside the target, then move.
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:
            staged = Path(folder) / f"model{suffix.lower()}"
            with quiet_native_stderr():
                keras.saving.save_model(model, str(staged))
            os.replace(staged, path)
    except OSError as error:
        raise OutputError(f"{path}: cannot write the Keras model: {first_line(error)}") from error
    except Exception as error:
        raise OutputError(
            f"{path}: Keras cannot save the folded model: {first_line(error)}"
        ) from error
