"""Run models in onnxruntime with every graph optimisation disabled and compare their outputs.

The reference is always the unoptimised original: onnxruntime's own optimiser folds and fuses,
and comparing against an optimised session would compare a fold with a fold.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx_ir as ir
import onnxruntime as ort

from bnfold.comparison import CheckResult, compare_outputs
from bnfold.errors import InputError
from bnfold.frontends.onnx import needs_external_data
from bnfold.specs import InputSpec

# Dynamic dimensions get these sizes unless the user names one (--dim NAME=SIZE): a batch of 2
# catches folds that mix samples; 16 keeps small convolutions valid.
DEFAULT_BATCH = 2
DEFAULT_DYNAMIC = 16

ModelSource = ir.Model | str | os.PathLike[str] | bytes


def concrete_shape(spec: InputSpec, dims: Mapping[str, int] | None = None) -> tuple[int, ...]:
    dims = dims or {}
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif isinstance(dim, str) and dim in dims:
            shape.append(dims[dim])
        else:
            shape.append(DEFAULT_BATCH if axis == 0 else DEFAULT_DYNAMIC)
    return tuple(shape)


def random_inputs(
    specs: list[InputSpec],
    *,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """Seeded inputs of each input's dtype and shape; ``shapes`` overrides whole input shapes,
    ``dims`` sizes named dynamic dimensions."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, npt.NDArray[Any]] = {}
    for spec in specs:
        shape = tuple((shapes or {}).get(spec.name, concrete_shape(spec, dims)))
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f" or dtype.name == "bfloat16":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise InputError(f"cannot make random values for input {spec.name} of {dtype}")
    return feeds


def load_npz_inputs(
    path: str | os.PathLike[str], specs: list[InputSpec]
) -> dict[str, npt.NDArray[Any]]:
    """User inputs from an .npz holding one array per model input, named like the inputs."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:
        raise InputError(f"{path}: cannot read inputs ({type(error).__name__})") from error
    missing = [spec.name for spec in specs if spec.name not in arrays]
    if missing:
        raise InputError(f"{path}: no array for input(s) {', '.join(missing)}")
    return {spec.name: arrays[spec.name].astype(spec.dtype, copy=False) for spec in specs}


def session_options(optimization: str = "disable") -> ort.SessionOptions:
    options = ort.SessionOptions()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 0 if os.environ.get("BNFOLD_DEBUG") == "1" else 3
    return options


def make_session(
    source: ModelSource,
    *,
    optimization: str = "disable",
    providers: list[str] | None = None,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session for a path, serialized bytes or an in-memory model; a model with
    external weights goes through a temporary folder."""
    options = options or session_options(optimization)
    providers = providers or ["CPUExecutionProvider"]
    if isinstance(source, ir.Model):
        if needs_external_data(source):
            with tempfile.TemporaryDirectory(prefix="bnfold-check-") as folder:
                path = Path(folder) / "model.onnx"
                ir.save(source, path, external_data="model.onnx.data")
                return ort.InferenceSession(str(path), options, providers=providers)
        source = ir.serde.serialize_model(source).SerializeToString()
    if isinstance(source, bytes):
        return ort.InferenceSession(source, options, providers=providers)
    return ort.InferenceSession(str(source), options, providers=providers)


def run_model(
    source: ModelSource, inputs: Mapping[str, npt.NDArray[Any]]
) -> dict[str, npt.NDArray[Any]]:
    """Outputs by name, with optimisations disabled."""
    session = make_session(source)
    names = [output.name for output in session.get_outputs()]
    feeds = {item.name: inputs[item.name] for item in session.get_inputs() if item.name in inputs}
    values = session.run(names, feeds)
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def check_models(
    original: ModelSource,
    folded: ModelSource,
    inputs: Mapping[str, npt.NDArray[Any]],
    *,
    rtol: float | None = None,
    atol: float | None = None,
    description: str = "",
) -> CheckResult:
    """Run both models on the same inputs and compare every output of the original."""
    reference = run_model(original, inputs)
    candidate = run_model(folded, inputs)
    return compare_outputs(reference, candidate, rtol=rtol, atol=atol, inputs=description)
