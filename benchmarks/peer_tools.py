"""The ONNX-to-ONNX tools bnfold is compared with, one function each: ``(model, folder) ->
model``. Shared by benchmarks/peers.py (latency on whole models) and
benchmarks/pattern_peers.py (what each tool leaves on each pattern of issue 10).

The peers are benchmark-only dependencies: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping
from pathlib import Path

import onnx
import onnx_ir as ir
import onnxruntime as ort

import bnfold
from bnfold.settings import CheckSettings

Tool = Callable[[onnx.ModelProto, Path], onnx.ModelProto]


def run_bnfold(
    proto: onnx.ModelProto, folder: Path, dims: Mapping[str, int] | None = None
) -> onnx.ModelProto:
    # Through a file, like `bnfold model.onnx -o out.onnx`: loading a file infers shapes,
    # which prove channel axes through MatMul (an in-memory proto is folded as given).
    path = folder / "bnfold_input.onnx"
    onnx.save(proto, path)
    # Sizes for named dimensions (`--dim`) go through the check settings, as on the CLI.
    result = bnfold.fold(path, check=CheckSettings(dims=dict(dims)) if dims else None)
    assert result.model is not None
    return ir.serde.serialize_model(result.model)


def run_ort_basic(proto: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folder / "ort_basic.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(folder / "ort_basic.onnx"))


def run_onnxoptimizer(proto: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    import onnxoptimizer

    return onnxoptimizer.optimize(proto, ["fuse_bn_into_conv"])


def run_onnxsim(proto: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    return simplified


def run_onnxslim(proto: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    import onnxslim

    # Its default passes: constant folding, its fusion patterns (Conv+BN, Gemm+BN, ...) and
    # dead-node removal; it infers shapes with its own symbolic shape inference.
    return onnxslim.slim(proto)


def run_onnxscript(proto: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    import onnxscript.optimizer

    return onnxscript.optimizer.optimize(proto)


TOOLS: dict[str, Tool] = {
    "bnfold": run_bnfold,
    "ORT basic": run_ort_basic,
    "onnxoptimizer": run_onnxoptimizer,
    "onnxsim": run_onnxsim,
    "onnxslim": run_onnxslim,
    "onnxscript": run_onnxscript,
}

PEER_PACKAGES = ("onnxoptimizer", "onnxsim", "onnxslim", "onnxscript")


def package_versions(packages: tuple[str, ...]) -> list[str]:
    """``"name version"`` per package, or ``"name not installed"``: every table says what ran."""
    parts = []
    for package in packages:
        try:
            parts.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{package} not installed")
    return parts
