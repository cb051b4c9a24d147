"""Compare models run in onnxruntime with every graph optimisation disabled: the input sets,
the float64 reference and the comparison. Running a model is the ONNX front end's
(``bnfold.frontends.onnx_run``).

The reference is always the unoptimised original: onnxruntime's own optimiser folds and fuses,
and comparing against an optimised session would compare a fold with a fold.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import numpy_helper

from bnfold.comparison import add_float64_errors, compare_outputs
from bnfold.errors import InputError
from bnfold.frontends.onnx_run import Arrays, ModelSource, make_session, model_session, run_session
from bnfold.results import CheckResult
from bnfold.settings import CheckSettings
from bnfold.specs import InputSpec, SizeHint

# Dynamic dimensions get these sizes unless the user names one (--dim NAME=SIZE): a batch of 2
# catches folds that mix samples; 16 keeps small convolutions valid.
DEFAULT_BATCH = 2
DEFAULT_DYNAMIC = 16

# Random inputs are drawn in float64; one larger than this is a shape no check should need
# (a corrupt dimension, or a --dim typo), not a reason to exhaust the machine's memory.
RANDOM_INPUT_LIMIT_BYTES = 2 * 2**30


# When a model cannot run with DEFAULT_DYNAMIC (a detector that needs multiples of 32), the
# check tries these sizes for the dynamic dimensions nobody sized, in order (sizing_attempts).
FALLBACK_SIZES = (32, 64, 224, 640)
# The first dimension takes the sizes above too (frames of a model without a batch axis) only
# while all random inputs together stay under this many elements.
FIRST_DIM_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class DimSizing:
    """How the check sizes the dynamic dimensions ``--dim`` leaves unsized: those the graph
    fixes (``hints``, from the front end's ``size_hints``) get that size, the first one
    ``batch`` and any other ``size``."""

    size: int = DEFAULT_DYNAMIC
    batch: int = DEFAULT_BATCH
    hints: Mapping[tuple[str, int], SizeHint] = field(default_factory=dict)

    def sized(self, spec: InputSpec, axis: int, dims: Mapping[str, int]) -> tuple[int, str]:
        """The size of ``spec``'s dynamic dimension ``axis`` and where it comes from."""
        dim = spec.shape[axis]
        if isinstance(dim, str) and dim in dims:
            return dims[dim], f"from --dim {dim}"
        hint = self.hints.get((spec.name, axis))
        if hint is not None:
            return hint.size, f"from {hint.source}"
        size = self.batch if axis == 0 else self.size
        default = DEFAULT_BATCH if axis == 0 else DEFAULT_DYNAMIC
        if size != default:
            return size, "fallback size"
        return size, "default batch" if axis == 0 else "default size"


DEFAULT_SIZING = DimSizing()


def _is_fixed(dim: int | str | None) -> bool:
    return isinstance(dim, int) and dim >= 0


def concrete_shape(
    spec: InputSpec, dims: Mapping[str, int] | None = None, sizing: DimSizing = DEFAULT_SIZING
) -> tuple[int, ...]:
    """``spec``'s shape with its dynamic dimensions sized by ``dims`` (by name), else as
    ``sizing`` says."""
    return tuple(
        dim if _is_fixed(dim) else sizing.sized(spec, axis, dims or {})[0]  # type: ignore[misc]
        for axis, dim in enumerate(spec.shape)
    )


def size_sources(specs: list[InputSpec], dims: Mapping[str, int], sizing: DimSizing) -> str:
    """Where each dynamic dimension's size comes from, for the check's first line, dims of
    one size and source together: ``a[0], b[0]=2 default batch; a[1]=80 from MatMul fc's
    weight [80, 16]``."""
    groups: dict[tuple[int, str], list[str]] = {}
    for spec in specs:
        for axis, dim in enumerate(spec.shape):
            if not _is_fixed(dim):
                groups.setdefault(sizing.sized(spec, axis, dims), []).append(f"{spec.name}[{axis}]")
    return "; ".join(
        f"{', '.join(names)}={size} {source}" for (size, source), names in groups.items()
    )


def sizing_attempts(
    specs: list[InputSpec], settings: CheckSettings, hints: Mapping[tuple[str, int], SizeHint]
) -> list[DimSizing]:
    """The sizings the check tries in turn until the original runs: the graph's sizes with
    the defaults, then each fallback size for the other dimensions, and when none runs, each
    size for the first dimension too (a model without a batch axis may need many frames).
    Only sizings that give new shapes are tried; with the caller's inputs, one."""
    first = DimSizing(hints=hints)
    if settings.inputs is not None:
        return [first]
    sizes = (DEFAULT_DYNAMIC, *FALLBACK_SIZES)
    candidates = [first, *(DimSizing(size, DEFAULT_BATCH, hints) for size in sizes)]
    first_dim_sized = len(candidates)
    candidates += [DimSizing(size, size, hints) for size in sizes]
    attempts: list[DimSizing] = []
    seen: set[tuple[tuple[int, ...], ...]] = set()
    for index, sizing in enumerate(candidates):
        shapes = tuple(concrete_shape(spec, settings.dims, sizing) for spec in specs)
        elements = sum(math.prod(shape) for shape in shapes)
        if index >= first_dim_sized and elements > FIRST_DIM_ELEMENTS:
            continue  # a batch of 224 images is not what a model without a batch axis needs
        if shapes not in seen:
            seen.add(shapes)
            attempts.append(sizing)
    return attempts


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
        size = int(np.prod(shape, dtype=np.float64)) * max(dtype.itemsize, 8)
        if size > RANDOM_INPUT_LIMIT_BYTES:
            raise InputError(
                f"input {spec.name} of shape {list(shape)} is too large for random check inputs "
                f"({size / 2**30:.3g} GiB); give smaller sizes with --dim NAME=SIZE, or --inputs"
            )
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


# --------------------------------------------------------------------------- float64 reference

_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
)


def _load_proto(source: ModelSource) -> onnx.ModelProto:
    if isinstance(source, ir.Model):
        return ir.serde.serialize_model(source)
    if isinstance(source, bytes):
        return onnx.ModelProto.FromString(source)
    return onnx.load(str(source))


def _tensor_to_float64(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if tensor.data_type not in _FLOAT_TYPES:
        return tensor
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _value_infos_to_float64(values: Any) -> None:
    for value in values:
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type in _FLOAT_TYPES:
            tensor_type.elem_type = onnx.TensorProto.DOUBLE


def _graph_to_float64(graph: onnx.GraphProto) -> None:
    _value_infos_to_float64(graph.input)
    _value_infos_to_float64(graph.output)
    del graph.value_info[:]  # cached shapes and float32 types; onnxruntime infers them again
    for index, tensor in enumerate(graph.initializer):
        graph.initializer[index].CopyFrom(_tensor_to_float64(tensor))
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i in _FLOAT_TYPES:
                attribute.i = onnx.TensorProto.DOUBLE
            if attribute.type == onnx.AttributeProto.TENSOR:
                attribute.t.CopyFrom(_tensor_to_float64(attribute.t))
            if attribute.type == onnx.AttributeProto.GRAPH:
                _graph_to_float64(attribute.g)
            for subgraph in attribute.graphs:
                _graph_to_float64(subgraph)


def float64_model(source: ModelSource) -> onnx.ModelProto:
    """``source`` with every float tensor in float64: initializers, inputs, outputs, Constant
    tensors and the ``to`` of Cast nodes (in subgraphs too). A reference to measure float32
    rounding against, not a model to ship."""
    proto = onnx.ModelProto()
    proto.CopyFrom(_load_proto(source))
    _graph_to_float64(proto.graph)
    return proto


def _as_float64_feeds(inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
    return {
        name: array.astype(np.float64) if array.dtype.kind == "f" else array
        for name, array in inputs.items()
    }


def _first_line(error: Exception) -> str:
    text = str(error)
    missing = re.search(r"implementation for (\w+)\(", text)
    if missing:
        return f"onnxruntime has no float64 kernel for {missing.group(1)}"
    return (text.strip().splitlines() or [type(error).__name__])[0][:160]


def float64_session(source: ModelSource) -> tuple[ort.InferenceSession | None, str]:
    """A session of the float64 cast of ``source``, or ``None`` and why it cannot run."""
    try:
        proto = float64_model(source)
        return make_session(proto.SerializeToString()), ""
    except Exception as error:  # onnxruntime's errors are plain RuntimeErrors
        return None, f"float64 reference skipped: {_first_line(error)}"


def _concatenate(batches: list[dict[str, npt.NDArray[Any]]]) -> dict[str, npt.NDArray[Any]]:
    """One array per output over all samples, joined along the batch axis."""
    joined: dict[str, npt.NDArray[Any]] = {}
    for name in batches[0]:
        parts = [batch[name] for batch in batches if name in batch]
        if len(parts) == 1:
            joined[name] = parts[0]
        elif parts[0].ndim == 0:
            joined[name] = np.stack(parts)
        else:
            joined[name] = np.concatenate(parts, axis=0)
    return joined


def check_feeds(
    specs: list[InputSpec], settings: CheckSettings, sizing: DimSizing = DEFAULT_SIZING
) -> tuple[list[Arrays], str]:
    """The input sets a check runs on, and how to describe them in a report: the caller's
    arrays or .npz (one set), else ``settings.samples`` seeded random sets (dynamic
    dimensions sized by ``settings.dims``, else as ``sizing`` says; the description says
    where each size came from)."""
    if settings.inputs is None:
        seed, samples = settings.seed, settings.samples
        shapes = {spec.name: concrete_shape(spec, settings.dims, sizing) for spec in specs}
        sets = [random_inputs(specs, seed=seed + index, shapes=shapes) for index in range(samples)]
        shown = ", ".join(f"{name}{list(array.shape)}" for name, array in sets[0].items())
        seeds = f"seed {seed}" if samples == 1 else f"seeds {seed}..{seed + samples - 1}"
        sources = size_sources(specs, settings.dims, sizing)
        return sets, f"random normal, {seeds}: {shown}" + (f"; sizes: {sources}" if sources else "")
    if isinstance(settings.inputs, str | os.PathLike):
        return [load_npz_inputs(settings.inputs, specs)], f"from {settings.inputs}"
    return [dict(settings.inputs)], "given by the caller"


def float64_outputs(source: ModelSource, feed_sets: list[Arrays]) -> tuple[list[Arrays], str]:
    """Outputs of ``source`` cast to float64 on each input set, and the note a report shows:
    how they were made, or why there are none (onnxruntime lacks a float64 kernel)."""
    session, note = float64_session(source)
    if session is None:
        return [], note
    try:
        outputs = [run_session(session, _as_float64_feeds(feeds)) for feeds in feed_sets]
    except Exception as error:  # onnxruntime's errors are plain RuntimeErrors
        return [], f"float64 reference skipped: {_first_line(error)}"
    return outputs, "float64 reference: the original model cast to float64, run in onnxruntime"


def compare_runs(
    expected: list[Arrays],
    actual: list[Arrays],
    settings: CheckSettings,
    description: str,
    float64: tuple[list[Arrays], str] = ([], ""),
) -> CheckResult:
    """One ``CheckResult`` over every input set (outputs joined along the batch axis);
    ``float64`` is ``float64_outputs``' answer, filling each output's float64 columns."""
    result = compare_outputs(
        _concatenate(expected),
        _concatenate(actual),
        rtol=settings.rtol,
        atol=settings.atol,
        inputs=description,
    )
    result.samples = len(expected)
    exact, result.float64_note = float64
    if exact:
        add_float64_errors(
            result, _concatenate(exact), _concatenate(expected), _concatenate(actual)
        )
    return result


def detailed_check(
    reference: ModelSource,
    candidate: ModelSource,
    specs: list[InputSpec],
    settings: CheckSettings,
) -> CheckResult:
    """Compare two ONNX models (both unoptimised) on the input sets of ``settings``, and with
    ``settings.float64`` both against the reference cast to float64, so a report shows
    whether the candidate's error is its own or float32's. Classifier-shaped outputs get
    top-1 agreement."""
    feed_sets, description = check_feeds(specs, settings)
    reference_session, reference_weights = model_session(reference)
    expected = [run_session(reference_session, feeds, reference_weights) for feeds in feed_sets]
    del reference_session, reference_weights  # one session in memory at a time
    candidate_session, candidate_weights = model_session(candidate)
    actual = [run_session(candidate_session, feeds, candidate_weights) for feeds in feed_sets]
    exact = float64_outputs(reference, feed_sets) if settings.float64 else ([], "")
    return compare_runs(expected, actual, settings, description, exact)
