"""A loaded Keras model's inputs and outputs by name, running it, saving it, and seeding
its BN statistics for tests."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bnfold.errors import InputError, OutputError
from bnfold.frontends.keras.runtime import (
    BATCH_DIMENSION,
    KERAS_SUFFIXES,
    first_line,
    import_keras,
    keras_of,
    log,
    quiet_keras,
)
from bnfold.specs import InputSpec


def _producer_name(tensor: Any) -> str:
    # Keras 3 records the producing ``operation``, tf_keras (Keras 2) the ``layer``.
    history = tensor._keras_history
    producer = getattr(history, "operation", None) or history.layer
    return str(producer.name)


def keras_input_specs(model: Any) -> list[InputSpec]:
    """One spec per model input, named after its InputLayer; the batch dimension is 'batch'."""
    specs = []
    for tensor in model.inputs:
        shape: list[int | str | None] = [
            int(dim) if dim is not None else None for dim in tuple(tensor.shape)
        ]
        if shape and shape[0] is None:
            shape[0] = BATCH_DIMENSION
        # Keras 3 says "float32", tf_keras a tf.DType that numpy reads through as_numpy_dtype.
        dtype = np.dtype(getattr(tensor.dtype, "as_numpy_dtype", tensor.dtype))
        specs.append(InputSpec(_producer_name(tensor), tuple(shape), dtype))
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


def keras_compute_dtype(model: Any) -> str | None:
    """ "float16" (or "bfloat16") when the model's layers compute in a 16-bit float under a
    mixed policy (``mixed_float16``), which sets the check's gate; else ``None``."""
    for layer in model._flatten_layers(include_self=False):
        policy = getattr(layer, "dtype_policy", None)
        compute = str(getattr(policy, "compute_dtype", "") or "")
        if compute in ("float16", "bfloat16"):
            return compute
    return None


def describe_keras_model(model: Any) -> str:
    """How the model was read ("Keras 2 .h5, written by Keras 2.21.0, loaded with tf_keras
    2.21.0"), or which Keras an in-memory model belongs to."""
    from bnfold.frontends.keras.loading import loaded_with

    recorded = loaded_with(model)
    if recorded:
        return recorded
    keras = keras_of(model)
    major = 2 if keras.__name__ == "tf_keras" else 3
    return f"Keras {major} model in memory ({keras.__name__} {keras.__version__})"


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
    try:
        with quiet_keras():
            outputs = model(arrays[0] if len(arrays) == 1 else arrays, training=False)
    except Exception as error:  # TensorFlow and Keras raise many types for a shape it cannot run
        shapes = ", ".join(f"{name}{list(a.shape)}" for name, a in zip(names, arrays, strict=True))
        raise InputError(f"Keras cannot run the model on {shapes}: {first_line(error)}") from error
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
    keras = keras_of(model)
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
    temporary name such as ``out.keras.tmp`` also works, with the Keras the model belongs to
    (a Keras 2 model is written by tf_keras and loads back there); errors are ``OutputError``."""
    from bnfold.frontends.keras.saved_model import holds_signature_only

    keras = keras_of(model)
    path = Path(path)
    if holds_signature_only(model):
        # The path is a staging name beside the output; the message is about the input.
        raise OutputError(
            "the SavedModel holds TensorFlow functions, not a Keras model, so it cannot be "
            "written as .keras or .h5; write .onnx instead"
        )
    suffix = next((s for s in reversed(path.suffixes) if s.lower() in KERAS_SUFFIXES), None)
    if suffix is None:
        raise OutputError(f"{path}: a Keras model is written as .keras or .h5")
    try:
        if path.suffix.lower() == suffix.lower():
            with quiet_keras():
                keras.saving.save_model(model, str(path))
            return
        # Keras insists on the suffix being last: save beside the target, then move.
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:
            staged = Path(folder) / f"model{suffix.lower()}"
            with quiet_keras():
                keras.saving.save_model(model, str(staged))
            os.replace(staged, path)
    except OSError as error:
        raise OutputError(f"{path}: cannot write the Keras model: {first_line(error)}") from error
    except Exception as error:
        raise OutputError(
            f"{path}: Keras cannot save the folded model: {first_line(error)}"
        ) from error


@contextlib.contextmanager
def _quiet_reload() -> Iterator[None]:
    """The load warning for the model's Lambda layers was said when it was read; a read-back
    of bnfold's own output says nothing."""
    previous = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(previous)


def ensure_readable(model: Any, path: Path) -> None:
    """Read a written Keras file back before it takes the output's name: Keras writes some
    models it cannot read (Keras 3's legacy .h5 of ConvNeXt), and a file nobody can load is
    no output. The model's own code is in memory already, so the file's may load."""
    from bnfold.frontends.keras.loading import load_keras_model

    try:
        with _quiet_reload():
            load_keras_model(path, allow_unsafe=True)
    except InputError as error:
        keras = keras_of(model)
        cause = first_line(error.__cause__) if error.__cause__ is not None else str(error)
        other = ".keras" if path.suffix.lower() != ".keras" else ".onnx"
        raise OutputError(
            f"{keras.__name__} {keras.__version__} cannot read the folded model back from "
            f"{path.suffix}: {cause}; write {other} instead"
        ) from error
