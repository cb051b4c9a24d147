"""The Keras front end: load, describe to the fold core, run, convert to ONNX, save.

Each module has one job: ``runtime`` (importing TensorFlow/Keras/tf2onnx quietly),
``loading`` (reading files), ``model_io`` (inputs, outputs, running, saving), ``conversion``
(tf2onnx). Nothing here is imported by ``bnfold --help`` or by the ONNX path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy.typing as npt

from bnfold.errors import InputError
from bnfold.fold import ALL_FOLDS
from bnfold.frontends.base import Arrays, FoldOutcome, LoadSettings
from bnfold.frontends.keras.conversion import keras_to_onnx
from bnfold.frontends.keras.folding import fold_keras, fold_keras_model
from bnfold.frontends.keras.loading import load_keras_model
from bnfold.frontends.keras.model_io import (
    describe_keras_model,
    ensure_readable,
    keras_compute_dtype,
    keras_input_specs,
    keras_output_names,
    predict_keras,
    randomise_batchnorm_statistics,
    save_keras_model,
)
from bnfold.frontends.keras.runtime import KERAS_SUFFIXES, import_keras, import_tf2onnx
from bnfold.settings import FoldSettings
from bnfold.specs import InputSpec, SizeHints


class KerasFrontend:
    """Keras ``.keras`` / ``.h5`` files (Keras 3, or Keras 2 read with tf_keras), SavedModel
    directories, and in-memory ``keras.Model`` / ``tf_keras.Model`` objects."""

    name = "keras"
    suffixes: tuple[str, ...] = KERAS_SUFFIXES

    def load(self, source: str | os.PathLike[str] | Any, settings: LoadSettings) -> Any:
        if isinstance(source, str | os.PathLike):
            return load_keras_model(Path(source), allow_unsafe=settings.allow_unsafe)
        if not hasattr(source, "get_config"):
            raise InputError(f"not a Keras model: {type(source).__name__}")
        return source

    def input_specs(self, model: Any) -> list[InputSpec]:
        return keras_input_specs(model)

    def size_hints(self, model: Any) -> SizeHints:
        """Sizes the model's own layers need for its free input dims (a Cropping layer's)."""
        from bnfold.frontends.keras.sizes import size_hints

        return size_hints(model)

    def run(self, model: Any, feeds: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        return predict_keras(model, dict(feeds))

    def fold(self, model: Any, settings: FoldSettings = ALL_FOLDS) -> FoldOutcome:
        from bnfold.frontends.keras.saved_model import holds_signature_only, signature_entries

        if holds_signature_only(model):
            return FoldOutcome(model, signature_entries(model))
        outcome = fold_keras(model, settings)
        for entry in outcome.entries:
            entry.stage = "keras"
        outcome.applied = settings.rebuild
        return outcome

    def to_onnx(
        self, outcome: FoldOutcome, settings: LoadSettings, fold: FoldSettings = ALL_FOLDS
    ) -> FoldOutcome:
        from bnfold.frontends.keras.onnx_log import converted_outcome
        from bnfold.frontends.keras.saved_model import holds_signature_only

        converted = keras_to_onnx(outcome.model, opset=settings.opset)
        # A SavedModel's bare signature has no Keras layers: its BNs are the BN ops found in
        # its TensorFlow graph, or, where it has none, the ONNX graph's BN-shaped affines.
        layers_known = bool(outcome.entries) or not holds_signature_only(outcome.model)
        return converted_outcome(outcome, converted, layers_known=layers_known, settings=fold)

    def save(self, model: Any, path: str | os.PathLike[str]) -> None:
        save_keras_model(model, Path(path))
        ensure_readable(model, Path(path))

    def compute_dtype(self, model: Any) -> str | None:
        return keras_compute_dtype(model)

    def describe(self, model: Any) -> str:
        """Which Keras read the model, for the log: "Keras 2 .h5, written by Keras 2.21.0,
        loaded with tf_keras 2.21.0"."""
        text = describe_keras_model(model)
        # Keras 3 is what a reader expects; a Keras 2 file or a SavedModel is worth a line.
        return "" if text.startswith("Keras 3") else text


__all__ = [
    "KERAS_SUFFIXES",
    "KerasFrontend",
    "fold_keras_model",
    "import_keras",
    "import_tf2onnx",
    "keras_input_specs",
    "keras_output_names",
    "keras_to_onnx",
    "load_keras_model",
    "predict_keras",
    "randomise_batchnorm_statistics",
    "save_keras_model",
]
