"""Read a Keras model: its stored config and Keras version first (refuse code-carrying layers
before Keras sees them, pick Keras 2 or Keras 3 by what the file says), then the model, in
safe mode, uncompiled. SavedModel directories are read by ``saved_model``."""

from __future__ import annotations

import contextlib
import importlib
import json
import weakref
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnfold.errors import InputError
from bnfold.frontends.keras.runtime import (
    KERAS_EXTRA_MESSAGE,
    KERAS_SUFFIXES,
    TF_KERAS_MESSAGE,
    first_line,
    import_keras,
    import_tf_keras,
    log,
    quiet_keras,
)

_MODEL_CLASSES = ("Functional", "Sequential", "Model")
# How each loaded model was read ("Keras 2 .h5, loaded with tf_keras 2.21.0"), for the log;
# weak, so that a registry entry never keeps a model alive.
_LOADED_WITH: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class StoredModel:
    """What a model file says about itself before anything is built."""

    path: Path
    kind: str  # ".keras", ".h5" or "SavedModel"
    config: Any
    keras_version: str | None  # as the file states it; None when it does not

    @property
    def is_keras2(self) -> bool:
        """Keras 2 by the stated version; a file without one by its config format: Keras 2
        writes ``batch_input_shape`` in InputLayer and ``tf_keras`` module paths."""
        if self.keras_version:
            return self.keras_version.split(".")[0] in ("1", "2")
        text = json.dumps(self.config)
        return '"batch_input_shape"' in text or '"module": "tf_keras' in text


def _read_keras_archive(path: Path) -> StoredModel:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise InputError(f"{path}: not a Keras model archive (no config.json inside)")
            config = json.loads(archive.read("config.json"))
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
    except zipfile.BadZipFile as error:
        raise InputError(
            f"{path}: not a valid .keras file (not a zip archive, or damaged)"
        ) from error
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the .keras archive: {first_line(error)}") from error
    version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    return StoredModel(path, ".keras", config, str(version) if version else None)


def _read_h5(path: Path) -> StoredModel:
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
            version = h5.attrs.get("keras_version")
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            config = json.loads(text)
    except InputError:
        raise
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the HDF5 file: {first_line(error)}") from error
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    return StoredModel(path, ".h5", config, str(version) if version else None)


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


def code_carrying_layers(config: Any) -> list[str]:
    """Names of the Lambda layers in a stored config: loading them runs Python from the file."""
    return [
        _layer_name(layer)
        for layer in _walk_layer_configs(config)
        if layer["class_name"] == "Lambda"
    ]


def custom_layers(config: Any, keras: Any) -> list[tuple[str, str]]:
    """``(layer name, class)`` of the layers whose class ``keras`` does not know by itself;
    the class is the registered name (``package>Class``) where the file stores one."""
    found = []
    for layer in _walk_layer_configs(config):
        class_name = layer["class_name"]
        if class_name in _MODEL_CLASSES:
            continue
        registered = layer.get("registered_name")
        if (registered and registered != class_name) or not hasattr(keras.layers, class_name):
            found.append((_layer_name(layer), str(registered or class_name)))
    return found


def custom_layer_message(path: Path, layer: str, class_name: str) -> str:
    """One line naming the class and the two ways out: the flag runs only code stored in the
    file, so a registered class has to be imported by whoever loads the model."""
    short = class_name.split(">")[-1]
    return (
        f"{path}: layer '{layer}' is the custom class {class_name}, whose code is not in the "
        "file; --allow-unsafe only runs code stored in the file (Lambda layers), so import "
        f"the module that registers {short}, then fold from Python: "
        f"bnfold.fold('{path.name}', output=...)"
    )


def refuse_code_layers(path: Path, config: Any, allow_unsafe: bool) -> None:
    """Lambda layers are refused, naming the layer, unless ``allow_unsafe``; then a warning
    says that the file's code runs."""
    code_layers = code_carrying_layers(config)
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


def remember(model: Any, description: str) -> Any:
    """Record how ``model`` was read, for ``describe``; returns the model."""
    # A model that is not weakly referable or hashable goes without: the description is optional.
    with contextlib.suppress(TypeError):
        _LOADED_WITH[model] = description
    return model


def loaded_with(model: Any) -> str | None:
    try:
        return _LOADED_WITH.get(model)
    except TypeError:
        return None


def _load_error(stored: StoredModel, keras: Any, error: Exception) -> InputError:
    """The one line for a model the chosen Keras could not rebuild."""
    path, name = stored.path, f"Keras {keras.__version__}"
    custom = custom_layers(stored.config, keras)
    if (custom and stored.kind == ".keras") or any(">" in found[1] for found in custom):
        return InputError(custom_layer_message(path, *custom[0]))
    if custom:
        return InputError(
            f"{path}: layer '{custom[0][0]}' ({custom[0][1]}) is not a {name} layer (a custom "
            "class, or a legacy layer it cannot rebuild); bnfold reads models built from "
            "Keras' own layers"
        )
    if stored.kind == ".h5" and not stored.is_keras2:
        return InputError(
            f"{path}: {name} cannot rebuild this legacy HDF5 model "
            f"({first_line(error)}); re-save it as .keras with the Keras that wrote it"
        )
    return InputError(f"{path}: {name} cannot load this model: {first_line(error)}")


# Layers Keras' own applications define without registering them: a .keras file names their
# module, an .h5 file only their class, so an .h5 ConvNeXt or InceptionResNetV2 needs them.
_APPLICATION_LAYERS = {
    "convnext": ("LayerScale", "StochasticDepth"),
    "inception_resnet_v2": ("CustomScaleLayer",),
}


def application_layers(package: str) -> dict[str, type]:
    """The unregistered layer classes of ``package``'s (keras, tf_keras) own applications."""
    found: dict[str, type] = {}
    for module_name, classes in _APPLICATION_LAYERS.items():
        try:
            module = importlib.import_module(f"{package}.src.applications.{module_name}")
        except ImportError:  # a Keras that moved or dropped it: nothing to add
            continue
        found.update({name: getattr(module, name) for name in classes if hasattr(module, name)})
    return found


def load_stored(stored: StoredModel, allow_unsafe: bool) -> Any:
    """Build the model with the Keras that wrote the file: tf_keras for Keras 2."""
    if stored.is_keras2:
        keras = import_tf_keras()
        if keras is None:
            raise InputError(
                f"{stored.path} " + TF_KERAS_MESSAGE.format(version=stored.keras_version or "2")
            )
        package, major = "tf_keras", 2
    else:
        keras, _ = import_keras()
        package, major = "keras", 3
    try:
        with quiet_keras():
            model = keras.models.load_model(
                str(stored.path),
                custom_objects=application_layers(package),
                safe_mode=not allow_unsafe,
                compile=False,
            )
    except Exception as error:
        raise _load_error(stored, keras, error) from error
    written = f", written by Keras {stored.keras_version}" if stored.keras_version else ""
    kind = stored.kind if stored.kind != "SavedModel" else "SavedModel"
    return remember(
        model, f"Keras {major} {kind}{written}, loaded with {package} {keras.__version__}"
    )


def read_stored_model(path: Path) -> StoredModel:
    """The stored config and version of a ``.keras`` or ``.h5`` file."""
    if path.suffix.lower() == ".keras":
        return _read_keras_archive(path)
    return _read_h5(path)


def load_keras_model(path: Path, *, allow_unsafe: bool = False) -> Any:
    """Load a ``.keras`` or ``.h5`` file, or a SavedModel directory, in safe mode, uncompiled.

    A Keras 2 file (``keras_version`` 2.x) is built with ``tf_keras``, a Keras 3 file with
    ``keras``. Lambda layers (Python code stored in the file) are refused, naming the layer,
    unless ``allow_unsafe``. Every failure is an ``InputError`` with one line.
    """
    path = Path(path)
    if path.is_dir():
        from bnfold.frontends.keras.saved_model import load_saved_model

        return load_saved_model(path, allow_unsafe=allow_unsafe)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise InputError(f"{path}: not a Keras model file (expected .keras, .h5 or .hdf5)")
    stored = read_stored_model(path)
    refuse_code_layers(path, stored.config, allow_unsafe)
    return load_stored(stored, allow_unsafe)
