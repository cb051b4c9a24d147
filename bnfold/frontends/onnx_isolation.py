"""Run an ONNX model in a child process, so that a crash inside onnxruntime (a segfault on a
malformed opset-9 BatchNormalization has been seen) ends in one line that names the model,
not in a dead bnfold.

The child is ``python -m bnfold.frontends.onnx_isolation FOLDER``: it reads ``model.onnx`` and
``inputs.npz`` from FOLDER, runs the model at ORT_DISABLE_ALL and writes ``outputs.npz``.
Only models whose in-process run is not known to be safe go this way (``needs_isolation``):
the child costs an interpreter start and a second copy of the model.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx_ir as ir

from bnfold.errors import InputError

TRAINING_OUTPUTS_OPSET = 14  # before opset 14, BN's optional outputs are its training outputs


def needs_isolation(model: ir.Model) -> bool:
    """Whether onnxruntime may crash on the model: a BatchNormalization before opset 14 that
    lists optional outputs (named or empty), the pattern that segfaulted onnxruntime."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if opset >= TRAINING_OUTPUTS_OPSET:
        return False
    return any(
        node.op_type == "BatchNormalization" and len(node.outputs) > 1
        for node in model.graph.all_nodes()
    )


def _child_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "bnfold.frontends.onnx_isolation", str(folder)]


def _crash_message(returncode: int, label: str) -> str:
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return (
        f"onnxruntime crashed ({name}) running {label}; the model is not valid for it: "
        "pass --no-check to fold without the check"
    )


def run_isolated(
    model: ir.Model, feeds: Mapping[str, npt.NDArray[Any]], label: str
) -> dict[str, npt.NDArray[Any]]:
    """The model's outputs, computed in a child process; a crash is an ``InputError``."""
    with tempfile.TemporaryDirectory(prefix="bnfold-isolated-") as scratch:
        folder = Path(scratch)
        ir.save(model, folder / "model.onnx")
        _save_arrays(folder / "inputs.npz", dict(feeds))
        done = subprocess.run(_child_command(folder), capture_output=True, text=True, check=False)
        if done.returncode < 0:
            raise InputError(_crash_message(done.returncode, label))
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise InputError(f"onnxruntime cannot run {label}: {last}")
        with np.load(folder / "outputs.npz") as outputs:
            return {name: np.asarray(outputs[name]) for name in outputs.files}


def _save_arrays(path: Path, arrays: dict[str, Any]) -> None:
    # Typed as Any values: numpy's stubs would read **NDArray as its allow_pickle flag.
    np.savez(path, **arrays)


def _child(folder: Path) -> None:
    """The child's side: run, write outputs; any error is the exit status and stderr."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    with np.load(folder / "inputs.npz") as inputs:
        feeds = {name: inputs[name] for name in inputs.files}
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, feeds)
    _save_arrays(folder / "outputs.npz", dict(zip(names, values, strict=True)))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
