"""The one interface every model format implements; the pipeline (``bnfold.api``) talks to
formats only through it, so supporting a new format is one new class.

A front end translates: it loads a model, says what its inputs are, runs it, hands its
layers to the fold core and applies the rewrites the core returns, converts it to ONNX and
saves it. It never decides what folds (that is ``bnfold.fold`` and ``bnfold.rules``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy.typing as npt

from bnfold.foldlog import FoldEntry
from bnfold.results import WeightRange
from bnfold.settings import FoldSettings
from bnfold.specs import InputSpec

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class LoadSettings:
    """How a model file is read: ``allow_unsafe`` lets Keras run Python code stored in the
    file (Lambda layers); ``opset`` is the ONNX opset a conversion to ONNX targets."""

    allow_unsafe: bool = False
    opset: int | None = None


@dataclass
class FoldOutcome:
    """What a front end's ``fold`` returns: the folded model (of the front end's own kind)
    and one log entry per BN of the input, in the order found."""

    model: Any
    entries: list[FoldEntry] = field(default_factory=list)
    # False when the front end only decided (``FoldSettings.rebuild`` false): the entries
    # logged as folded say what would fold, and ``model`` is the input as it was.
    applied: bool = True
    # One row per layer whose weight a folded entry changed, named as the entries' targets
    # (bnfold/layer_weights.py); None where the front end measured nothing.
    weight_ranges: list[WeightRange] | None = None


class Frontend(Protocol):
    """One model format. ``name`` is what the log and the report call it ("onnx", "keras").

    Optional, looked up by the pipeline: ``size_hints(model) -> bnfold.specs.SizeHints``, the
    sizes the model fixes for its dynamic input dims by (input, axis), which the check runs
    at (the ONNX front end reads them from the graph: ``frontends/onnx_dims.py``); a front
    end without it leaves every dynamic dim to ``--dim`` and the default sizes.
    """

    name: str
    suffixes: tuple[str, ...]

    def load(self, source: str | os.PathLike[str] | Any, settings: LoadSettings) -> Any:
        """The model in memory: a path is read and validated, an in-memory model of this
        format is taken as it is. Failures raise ``InputError`` with one line."""
        ...

    def input_specs(self, model: Any) -> list[InputSpec]: ...

    def run(self, model: Any, feeds: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        """Outputs by name, in inference mode (ONNX: onnxruntime, optimisations disabled)."""
        ...

    def fold(self, model: Any, settings: FoldSettings) -> FoldOutcome:
        """Fold through the core as ``settings`` allow (BNs to keep, forward folds or not);
        ``model`` itself may be changed (ONNX folds in place)."""
        ...

    def to_onnx(
        self, outcome: FoldOutcome, settings: LoadSettings, fold: FoldSettings
    ) -> FoldOutcome:
        """The folded model as ONNX, with a log that is true of that ONNX model (a converter
        may remove or keep BNs the front end's own fold left); a fold of the converted model
        honours ``fold`` too (a kept BN stays kept)."""
        ...

    def save(self, model: Any, path: str | os.PathLike[str]) -> None:
        """Write atomically; errors are ``OutputError``."""
        ...

    def describe(self, model: Any) -> str:
        """How the model was read, when the log should say it (a Keras 2 file loaded with
        tf_keras); "" when there is nothing to say."""
        ...

    def compute_dtype(self, model: Any) -> str | None:
        """The float dtype the model computes in when it differs from its outputs' dtype
        (a Keras ``mixed_float16`` model: "float16"), which then sets the check's default
        gate; ``None`` when the outputs' dtype says it."""
        ...
