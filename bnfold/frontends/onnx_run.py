"""Run ONNX models in onnxruntime, every graph optimisation disabled unless asked: the ONNX
front end's runner, which the check and the latency measurement call.

An in-memory model runs as a weight-free skeleton whose large weights are fed from their
arrays (``model_session``), so a 100 MB model is not copied into bytes and parsed again.
A model onnxruntime may crash on runs in a child process instead (``onnx_isolation``).
onnxruntime itself is imported by the first session, so a fold without the check (which
imports this module through the front end) never loads it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.errors import InputError
from bnfold.frontends.onnx import INLINE_LIMIT_BYTES, PLAIN_TYPES, needs_external_data
from bnfold.frontends.onnx_bytes import model_bytes, weightless_proto
from bnfold.graph import iter_graphs

if TYPE_CHECKING:
    import onnxruntime as ort

ModelSource = ir.Model | str | os.PathLike[str] | bytes
Arrays = dict[str, npt.NDArray[Any]]


def session_options(optimization: str = "disable") -> ort.SessionOptions:
    import onnxruntime as ort  # here, not above: a fold without the check never runs a model

    options = ort.SessionOptions()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options.graph_optimization_level = levels[optimization]
    # Fatal only: a failing kernel also logs its error, which bnfold reports as one line.
    options.log_severity_level = 0 if os.environ.get("BNFOLD_DEBUG") == "1" else 4
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
    import onnxruntime as ort

    options = options or session_options(optimization)
    providers = providers or ["CPUExecutionProvider"]
    if isinstance(source, ir.Model):
        if needs_external_data(source):
            with tempfile.TemporaryDirectory(prefix="bnfold-check-") as folder:
                path = Path(folder) / "model.onnx"
                ir.save(source, path, external_data="model.onnx.data")
                return ort.InferenceSession(str(path), options, providers=providers)
        source = model_bytes(source)  # weights copied once, not three times
    if isinstance(source, bytes):
        return ort.InferenceSession(source, options, providers=providers)
    return ort.InferenceSession(str(source), options, providers=providers)


# Main-graph weights at least this large reach onnxruntime as inputs fed from their arrays
# (onnxruntime wraps a contiguous numpy array without copying it), not as initializers in
# serialised bytes that onnxruntime parses and then copies again: for a ResNet50 that is
# two copies of 100 MB and a quarter of a second less per session.
FED_WEIGHT_BYTES = 64 * 1024


def _feedable(value: ir.Value) -> npt.NDArray[Any] | None:
    """The array of an initializer worth feeding: large, of a plain numpy type, and not a
    graph input (a caller may override those, so they stay initializers)."""
    tensor = value.const_value
    if tensor is None or value.is_graph_input() or tensor.nbytes < FED_WEIGHT_BYTES:
        return None
    if isinstance(tensor, ir.StringTensor) or tensor.dtype.numpy().name not in PLAIN_TYPES:
        return None
    return np.ascontiguousarray(tensor.numpy())


def _fed_weights(model: ir.Model) -> Arrays | None:
    """The weights to feed, by name; ``None`` when what stays in the skeleton could not be
    serialised (external data in a subgraph, or still over the protobuf limit)."""
    fed: Arrays = {}
    for name, value in model.graph.initializers.items():
        array = _feedable(value)
        if array is not None:
            fed[name] = array
    kept = 0
    for graph in iter_graphs(model.graph):
        for name, value in graph.initializers.items():
            tensor = value.const_value
            if tensor is None or (graph is model.graph and name in fed):
                continue
            if isinstance(tensor, ir.ExternalTensor):
                return None
            kept += tensor.nbytes
    return fed if kept <= INLINE_LIMIT_BYTES else None


def model_session(source: ModelSource) -> tuple[ort.InferenceSession, Arrays]:
    """A session with optimisations disabled and the inputs it needs besides the caller's:
    an in-memory model runs as a weight-free skeleton whose large weights are fed from
    their arrays; any other source (a path, bytes) needs none."""
    if isinstance(source, ir.Model):
        fed = _fed_weights(source)
        if fed:
            skeleton = weightless_proto(source, fed).SerializeToString()
            return make_session(skeleton), fed
    return make_session(source), {}


def onnxruntime_message(error: Exception, limit: int = 200) -> str:
    """onnxruntime's error in one short line: its status prefix, the model path it repeats and
    the node boilerplate dropped."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^Load model from .* failed:", "", text)
    text = text.replace("Fatal error: ", "")
    node = re.match(
        r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)' "
        r"Status Message: (.*)",
        text,
    )
    if node:
        op, name, message = node.groups()
        text = f"{op} node {name!r}: {message}" if name else f"{op} node: {message}"
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_model(
    source: ModelSource,
    inputs: Mapping[str, npt.NDArray[Any]],
    *,
    label: str | None = None,
    hint: str = "",
) -> dict[str, npt.NDArray[Any]]:
    """Outputs by name, with optimisations disabled.

    With ``label`` (a user's model), a model onnxruntime cannot load or run, or one that needs
    inputs that were not given, is an ``InputError`` naming it (``hint`` appended: what the
    user can do); without, such a failure is a bug of bnfold's and propagates as it is.
    """
    try:
        session, weights = model_session(source)
        names = [output.name for output in session.get_outputs()]
        given = {**weights, **inputs}
        missing = [item.name for item in session.get_inputs() if item.name not in given]
        if missing:
            raise InputError(f"{label or 'the model'} needs input(s) {', '.join(missing)}")
        feeds = {item.name: given[item.name] for item in session.get_inputs()}
        values = session.run(names, feeds)
        del session, weights  # the session's memory goes before the outputs are copied
    except InputError:
        raise
    except Exception as error:
        if label is None:
            raise
        suffix = f"; {hint}" if hint else ""
        message = onnxruntime_message(error)
        raise InputError(f"onnxruntime cannot run {label}: {message}{suffix}") from error
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def run_session(
    session: ort.InferenceSession,
    inputs: Mapping[str, npt.NDArray[Any]],
    weights: Mapping[str, npt.NDArray[Any]] | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """Outputs by name; ``weights`` are the fed weights of ``model_session``."""
    given = {**(weights or {}), **inputs}
    names = [output.name for output in session.get_outputs()]
    feeds = {item.name: given[item.name] for item in session.get_inputs() if item.name in given}
    values = session.run(names, feeds)
    return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}
