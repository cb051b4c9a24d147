"""The ONNX front end: ``.onnx`` files, ``onnx.ModelProto`` and ``onnx_ir.Model`` objects,
behind the one interface of ``bnfold.frontends.base.Frontend``.

The model folds in place, so the front end remembers which models it loaded and has not
changed since: such a model is reported by its path when onnxruntime cannot run it (a user's
model, not a bug of bnfold's), and is copied byte for byte when written unchanged. Every
model runs as a weight-free skeleton fed its weights from memory (``model_session``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt
import onnx
import onnx_ir as ir

from bnfold.atomic import write_atomically
from bnfold.errors import InputError
from bnfold.fold import ALL_FOLDS, fold_model
from bnfold.frontends.base import Arrays, FoldOutcome, LoadSettings
from bnfold.frontends.onnx import (
    ONNX_SUFFIXES,
    annotate_shapes,
    has_external_tensors,
    input_specs,
    load_onnx,
    needs_external_data,
    save_onnx,
)
from bnfold.frontends.onnx_dims import size_hints
from bnfold.frontends.onnx_isolation import needs_isolation, run_isolated
from bnfold.frontends.onnx_run import ModelSource, run_model
from bnfold.layer_weights import WeightSnapshot
from bnfold.settings import FoldSettings
from bnfold.specs import InputSpec, SizeHints

# What a user can do when onnxruntime cannot run the original (custom ops, invalid values).
NO_CHECK_HINT = "pass --no-check to fold without the check"


@dataclass(frozen=True)
class _Original:
    """A model as loaded: its file (``None`` in memory) and what an error calls it."""

    model: ir.Model  # held so that its id() is not reused while it is remembered
    path: Path | None
    label: str


class OnnxFrontend:
    """ONNX models; ``to_onnx`` is the identity."""

    name: str = "onnx"
    suffixes: tuple[str, ...] = ONNX_SUFFIXES

    def __init__(self) -> None:
        self._originals: dict[int, _Original] = {}
        self._scratch: Path | None = None

    def load(self, source: str | os.PathLike[str] | Any, settings: LoadSettings) -> ir.Model:
        if isinstance(source, str | os.PathLike):
            model = load_onnx(source)
            self._remember(model, Path(source), str(source))
            return model
        if isinstance(source, onnx.ModelProto):
            model = ir.serde.deserialize_model(source)
        elif isinstance(source, ir.Model):
            model = source
        else:
            raise InputError(f"not an ONNX model: {type(source).__name__}")
        annotate_shapes(model)  # a loaded file got its shapes in load_onnx
        self._remember(model, None, "the model")
        return model

    def _remember(self, model: ir.Model, path: Path | None, label: str) -> None:
        self._originals[id(model)] = _Original(model, path, label)

    def _original(self, model: Any) -> _Original | None:
        return self._originals.get(id(model))

    def input_specs(self, model: ir.Model) -> list[InputSpec]:
        return input_specs(model)

    def size_hints(self, model: ir.Model) -> SizeHints:
        """The sizes the graph fixes for dynamic input dims (``frontends/onnx_dims.py``)."""
        return size_hints(model)

    def run(self, model: ir.Model, feeds: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        """A model as loaded runs from its file where it has one, and a failure is the user's
        (``InputError`` naming it); a folded model's failure is a bug and propagates."""
        original = self._original(model)
        if needs_isolation(model):  # onnxruntime may crash on it: never in this process
            label = original.label if original is not None else "the folded model"
            return run_isolated(model, feeds, label)
        if original is None:
            return run_model(model, feeds)
        # The loaded model, not its file: its weights are in memory already and reach
        # onnxruntime without a copy, where the file would be read and copied once more.
        return run_model(model, feeds, label=original.label, hint=NO_CHECK_HINT)

    def fold(self, model: ir.Model, settings: FoldSettings = ALL_FOLDS) -> FoldOutcome:
        # References only, read after the fold: it gives each layer it changes a new tensor.
        snapshot = WeightSnapshot(model)
        folded = fold_model(model, settings=settings)
        if folded.changed:
            self._originals.pop(id(model), None)
        rows = snapshot.changes(folded.model, folded.entries)
        return FoldOutcome(folded.model, folded.entries, weight_ranges=rows)

    def to_onnx(
        self, outcome: FoldOutcome, settings: LoadSettings, fold: FoldSettings = ALL_FOLDS
    ) -> FoldOutcome:
        return outcome

    def unfolded_onnx(self, model: ir.Model, settings: LoadSettings) -> ModelSource:
        """A frozen copy of ``model`` as it is now (call it before folding): what a fold is
        timed and sized against. A file is named, not copied."""
        original = self._original(model)
        if original is not None and original.path is not None:
            return str(original.path)
        if not needs_external_data(model):
            return ir.serde.serialize_model(model).SerializeToString()
        path = self._scratch_folder() / f"unfolded{len(self._originals)}.onnx"
        ir.save(model, path, external_data=f"{path.name}.data")
        return str(path)

    def _scratch_folder(self) -> Path:
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="bnfold-"))
            weakref.finalize(self, shutil.rmtree, self._scratch, True)
        return self._scratch

    def save(self, model: ir.Model, path: str | os.PathLike[str]) -> None:
        """Atomically; a file nothing was folded in is copied as it is (external data apart,
        which must be rewritten beside the output)."""
        original = self._original(model)
        if original is not None and original.path is not None and not has_external_tensors(model):
            _copy_atomically(original.path, Path(path))
        else:
            save_onnx(model, path)

    def compute_dtype(self, model: ir.Model) -> str | None:
        return None

    def describe(self, model: ir.Model) -> str:
        return ""  # the log names the file; nothing about how it was read needs saying


def _copy_atomically(source: Path, path: Path) -> None:
    write_atomically(path, lambda staged: shutil.copyfile(source, staged))


__all__ = ["NO_CHECK_HINT", "OnnxFrontend"]
