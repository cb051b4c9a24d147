"""Read a Keras model file: its stored config first (refuse code-carrying layers before
Keras sees them), then the model, in safe mode."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bnfold.errors import InputError
from bnfold.frontends.keras.runtime import (
    KERAS_EXTRA_MESSAGE,
    KERAS_SUFFIXES,
    first_line,
    import_keras,
    log,
    quiet_native_stderr,
)


def _read_model_config(path: Path) -> Any:
    """The model's JSON config as stored in the file, read without building anything."""
    if path.suffix.lower() == ".keras":
        try:
            with zipfile.ZipFile(path) as archive:
                if "config.json" not in archive.namelist():
                    raise InputError(f"{path}: not a Keras model archive (no config.json inside)")
                return json.loads(archive.read("config.json"))
        except zipfile.BadZipFile as error:
            raise InputError(
                f"{path}: not a valid .keras file (not a zip archive, or damaged)"
            ) from error
        except (OSError, ValueError) as error:
            raise InputError(
                f"{path}: cannot read the .keras archive: {first_line(error)}"
            ) from error
    try:
        import h5py
    except ImportError as error:
        raise InputError(KERAS_EXTRA_MESSAGE) from error
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file, so not a Keras .h5 model")
    try:
        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
            if raw is None:
                if "layer_names" in h5.attrs or "model_weights" in h5 or len(h5.keys()) > 0:
                    raise InputError(
                        f"{path}: holds weights only (saved with save_weights); "
                        "bnfold needs a whole model saved with model.save()"
                    )
                raise InputError(f"{path}: an HDF5 file without a Keras model in it")
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            return json.loads(text)
    except InputError:
        raise
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the HDF5 file: {first_line(error)}") from error


def _walk_layer_configs(config: Any) -> Iterator[dict[str, Any]]:
    """Every layer entry (``{"class_name": ..., "config": {...}}`` inside a ``layers`` list, or
    the ``layer`` of a wrapper) in a stored model config, nested models included."""
    if isinstance(config, dict):
        for key, value in config.items():
            entries = value if key == "layers" and isinstance(value, list) else [value]
            for entry in entries:
                is_layer = key in ("layers", "layer") and isinstance(entry, dict)
                if is_layer and isinstance(entry.get("config"), dict) and "class_name" in entry:
                    yield entry
                yield from _walk_layer_configs(entry)
    elif isinstance(config, list):
        for value in config:
            yield from _walk_layer_configs(value)


def _layer_name(layer_config: dict[str, Any]) -> str:
    return str(layer_config.get("name") or layer_config["config"].get("name", "?"))


def _code_carrying_layers(config: Any) -> list[str]:
    """Names of the Lambda layers in a stored config: loading them runs Python from the file."""
    return [
        _layer_name(layer)
        for layer in _walk_layer_configs(config)
        if layer["class_name"] == "Lambda"
    ]


def _custom_layers(config: Any, keras: Any) -> list[str]:
    """``name (Class)`` of the layers whose class Keras does not know by itself."""
    found = []
    for layer in _walk_layer_configs(config):
        class_name = layer["class_name"]
        if class_name in ("Functional", "Sequential", "Model"):
            continue
        registered = layer.get("registered_name")
        if (registered and registered != class_name) or not hasattr(keras.layers, class_name):
            found.append(f"'{_layer_name(layer)}' ({class_name})")
    return found


def load_keras_model(path: Path, *, allow_unsafe: bool = False) -> Any:
    """Load a ``.keras`` or ``.h5`` model in Keras safe mode, uncompiled.

    Lambda layers (Python code stored in the file) are refused, naming the layer, unless
    ``allow_unsafe``; then a warning says that the file's code runs. Every failure is an
    ``InputError`` with one line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise InputError(f"{path}: not a Keras model file (expected .keras, .h5 or .hdf5)")
    stored_config = _read_model_config(path)
    code_layers = _code_carrying_layers(stored_config)
    if code_layers and not allow_unsafe:
        raise InputError(
            f"{path}: layer '{code_layers[0]}' is a Lambda layer whose Python code Keras safe "
            "mode does not load; pass --allow-unsafe only if you trust this file"
        )
    if code_layers:
        log.warning(
            "loading %s with --allow-unsafe: Lambda layer(s) %s run Python code from the file",
            path,
            ", ".join(f"'{name}'" for name in code_layers),
        )
    keras, _ = import_keras()
    try:
        with quiet_native_stderr():
            return keras.saving.load_model(str(path), safe_mode=not allow_unsafe, compile=False)
    except Exception as error:
        custom = _custom_layers(stored_config, keras)
        if custom and path.suffix.lower() == ".keras":
            raise InputError(
                f"{path}: layer {custom[0]} is a custom class that Keras cannot rebuild without "
                "its Python code; bnfold reads models built from Keras' own layers"
            ) from error
        if custom:
            raise InputError(
                f"{path}: layer {custom[0]} is not a Keras {keras.__version__} layer (a custom "
                "class, or a legacy layer Keras 3 cannot rebuild); bnfold reads models built "
                "from Keras' own layers"
            ) from error
        if path.suffix.lower() != ".keras":
            raise InputError(
                f"{path}: Keras {keras.__version__} cannot rebuild this legacy HDF5 model "
                f"({first_line(error)}); re-save it as .keras with the Keras that wrote it"
            ) from error
        raise InputError(
            f"{path}: Keras {keras.__version__} cannot load this model: {first_line(error)}"
        ) from error
