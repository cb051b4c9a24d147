"""What a BN fold does to int8 quantization, measured (issue 16 item 3, docs/benchmarks.md).

Builds ResNet50 (benchmarks/resnet50_onnx.py) and MobileNetV2 (benchmarks/mobilenetv2_onnx.py)
in ONNX with a BatchNormalization after every convolution, gives their BNs statistics like a
trained network's (below), folds them with ``bnfold.fold`` (checked as usual), and quantizes
the original and the folded model with onnxruntime's ``quantize_static`` (QDQ, int8 weights
and activations, MinMax calibration on random normal inputs like the check's), per tensor and
per channel. Each int8 model is compared with the float original on other random normal
inputs: ``max|int8 - float| / max|float|``, the check's max rel. Everything runs in
onnxruntime with graph optimisations disabled, so no runtime fusion hides a difference.

BN statistics, BN by BN in graph order: the running mean and variance are those of the BN's
input on random data (what training converges to), beta ~ N(0, 0.2). "calibrated" (the
control): gamma 1, so the BN only normalises. "randomised": gamma = 10**U(-1, 0.5) and the
running variance times 10**U(-1, 0) per channel (channels the data here excites more than
training did), so the fold scale gamma / sqrt(var + eps) spans two decades in a layer, and a
channel whose input is constant (zero after a ReLU6) has var 0 and the scale
gamma / sqrt(eps): the kind of spread trained networks hold, and per-tensor int8 of folded
weights suffers from.

Run: .venv/bin/python benchmarks/quantization.py [--models resnet50 mobilenetv2]
     [--image-size 224] [--calibration 8] [--samples 4]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mobilenetv2_onnx import mobilenetv2
from resnet50_onnx import resnet50

import bnfold

BUILDERS: dict[str, Callable[[int, int], onnx.ModelProto]] = {
    "resnet50": lambda seed, size: resnet50(seed, size),
    "mobilenetv2": lambda seed, size: mobilenetv2(seed, size),
}
# By name: (gamma = 10**U(low, high), running var = the input's variance * 10**U(low, high)).
# "calibrated" is a BN that only normalises (the control), "randomised" one like training's.
STATISTICS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "calibrated": ((0.0, 0.0), (0.0, 0.0)),
    "randomised": ((-1.0, 0.5), (-1.0, 0.0)),
}
# Samples a BN's statistics are measured on, per channel, at the smallest (1/32) feature map:
# a few images' worth at 224x224 (7x7 each), more images at smaller sizes, so that no variance
# comes from a handful of values (a near-zero one makes the fold scale huge for nothing).
STATISTICS_SAMPLES = 96
EVALUATION_SEED = 1000  # evaluation inputs never overlap the calibration ones


@dataclass(frozen=True)
class Row:
    model: str
    statistics: str
    folded: str  # "52/52"
    flagged: int  # layers the fold widened past per-tensor int8 (bnfold's warning)
    worst_growth: float
    worst_spread: float
    fold_max_rel: float  # the fold's own check, float32
    errors: dict[tuple[str, str], float]  # (original|folded, per-tensor|per-channel)


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _images(seed: int, size: int, batch: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, size, size)).astype(np.float32)


def _set(proto: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    for index, tensor in enumerate(proto.graph.initializer):
        if tensor.name == name:
            replacement = numpy_helper.from_array(array.astype(np.float32), name)
            proto.graph.initializer[index].CopyFrom(replacement)
            return
    raise KeyError(name)


def _probe(proto: onnx.ModelProto, batchnorms: list[onnx.NodeProto]) -> onnx.ModelProto:
    """A copy whose BN inputs are outputs and whose running statistics are fed each run."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    fed = {name for bn in batchnorms for name in bn.input[3:5]}
    kept = [t for t in probe.graph.initializer if t.name not in fed]
    shapes = {t.name: list(t.dims) for t in probe.graph.initializer if t.name in fed}
    del probe.graph.initializer[:]
    probe.graph.initializer.extend(kept)
    for name in sorted(fed):
        probe.graph.input.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shapes[name])
        )
    for bn in batchnorms:
        probe.graph.output.append(
            onnx.helper.make_tensor_value_info(bn.input[0], onnx.TensorProto.FLOAT, None)
        )
    return probe


def randomise_batchnorm(proto: onnx.ModelProto, seed: int, size: int, statistics_name: str) -> None:
    """Set gamma and beta at random, then each BN's running statistics, in graph order, from
    its input on random data (module docstring); one onnxruntime session for all of them."""
    gamma_decades, variance_decades = STATISTICS[statistics_name]
    rng = np.random.default_rng(seed)
    batchnorms = [node for node in proto.graph.node if node.op_type == "BatchNormalization"]
    statistics: dict[str, np.ndarray] = {}
    for bn in batchnorms:
        channels = next(t.dims[0] for t in proto.graph.initializer if t.name == bn.input[1])
        _set(proto, bn.input[1], 10 ** rng.uniform(*gamma_decades, channels))
        _set(proto, bn.input[2], rng.normal(0.0, 0.2, channels))
        statistics[bn.input[3]] = np.zeros(channels, np.float32)
        statistics[bn.input[4]] = np.ones(channels, np.float32)
    session = _session(_probe(proto, batchnorms))
    images = _images(seed, size, _statistics_batch(size))
    for bn in batchnorms:  # each BN sees the inputs its predecessors' final statistics make
        (seen,) = session.run([bn.input[0]], {"input": images, **statistics})
        mean, variance = seen.mean(axis=(0, 2, 3)), seen.var(axis=(0, 2, 3))
        statistics[bn.input[3]] = mean.astype(np.float32)
        factor = 10 ** rng.uniform(*variance_decades, variance.shape)
        statistics[bn.input[4]] = (variance * factor).astype(np.float32)
    for name, array in statistics.items():
        _set(proto, name, array)


def _statistics_batch(size: int) -> int:
    smallest = max(1, size // 32) ** 2
    return max(2, -(-STATISTICS_SAMPLES // smallest))


class _Reader(CalibrationDataReader):
    def __init__(self, count: int, size: int) -> None:
        self.batches: Iterator[dict[str, np.ndarray]] = iter(
            [{"input": _images(seed, size)} for seed in range(count)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _quantize(source: Path, target: Path, per_channel: bool, count: int, size: int) -> Path:
    quantize_static(
        str(source),
        str(target),
        _Reader(count, size),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return target


def _max_rel(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    scale = max(float(np.abs(r).max()) for r in reference)
    error = max(float(np.abs(c - r).max()) for r, c in zip(reference, candidate, strict=True))
    return error / scale if scale else error


def _outputs(model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    session = _session(str(model))
    return [session.run(["logits"], {"input": images})[0] for images in inputs]


def measure(name: str, statistics: str, folder: Path, args: argparse.Namespace) -> Row:
    started = time.perf_counter()
    proto = BUILDERS[name](args.seed, args.image_size)
    randomise_batchnorm(proto, args.seed, args.image_size, statistics)
    original = folder / f"{name}.onnx"
    onnx.save(proto, original)
    folded = folder / f"{name}_folded.onnx"
    result = bnfold.fold(str(original), str(folded))
    counts = result.counts()
    ranges = result.weight_ranges or []
    inputs = [_images(EVALUATION_SEED + i, args.image_size) for i in range(args.samples)]
    reference = _outputs(original, inputs)
    errors = {}
    for label, source in (("original", original), ("folded", folded)):
        for granularity, per_channel in (("per-tensor", False), ("per-channel", True)):
            target = folder / f"{name}_{label}_{granularity}_int8.onnx"
            _quantize(source, target, per_channel, args.calibration, args.image_size)
            errors[(label, granularity)] = _max_rel(reference, _outputs(target, inputs))
    print(f"{name}, {statistics}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return Row(
        model=name,
        statistics=statistics,
        folded=f"{counts['folded_into_previous'] + counts['folded_into_next']}/{counts['found']}",
        flagged=sum(row.flagged for row in ranges),
        worst_growth=max((row.growth for row in ranges), default=1.0),
        worst_spread=max((row.spread_after for row in ranges), default=1.0),
        fold_max_rel=result.check.max_rel if result.check is not None else float("nan"),
        errors=errors,
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| model | BN statistics | BN folded | fold max rel (float32) | layers flagged | worst range growth "
        "| worst channel spread | int8 per-tensor: original | folded "
        "| int8 per-channel: original | folded |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        errors = [
            f"{row.errors[(label, granularity)]:.3g}"
            for granularity in ("per-tensor", "per-channel")
            for label in ("original", "folded")
        ]
        lines.append(
            f"| {row.model} | {row.statistics} | {row.folded} | {row.fold_max_rel:.2g} | {row.flagged} "
            f"| {row.worst_growth:.3g}x | {row.worst_spread:.3g}x | " + " | ".join(errors) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(BUILDERS), default=list(BUILDERS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--calibration", type=int, default=8, help="Calibration images.")
    parser.add_argument("--samples", type=int, default=4, help="Evaluation images.")
    parser.add_argument(
        "--statistics", nargs="+", choices=sorted(STATISTICS), default=list(STATISTICS)
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's pre-processing advice
    with tempfile.TemporaryDirectory(prefix="bnfold-quant-") as scratch:
        rows = [
            measure(name, statistics, Path(scratch), args)
            for name in args.models
            for statistics in args.statistics
        ]
    print(
        f"int8 vs float max rel: {args.calibration} calibration and {args.samples} evaluation "
        f"random normal images of {args.image_size}x{args.image_size}, onnxruntime "
        f"{ort.__version__}, QDQ int8 (MinMax), optimisations disabled"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
