"""bnfold next to its peers on the same models, in one run.

    make bench                       # or: .venv/bin/python benchmarks/peers.py [--quick]

Models: Keras Applications (MobileNetV2, ResNet50; weights=None, 96x96, BN statistics
randomised) and a Keras MLP converted with bnfold's own tf2onnx path; PyTorch-style ONNX
(BatchNormalization after Conv, ConvTranspose and Gemm) and a PyTorch-style MLP built with
onnx.helper.

Tools (benchmarks/peer_tools.py): bnfold; onnxruntime's optimiser at the basic level (its
saved model); onnxoptimizer's ``fuse_bn_into_conv``; onnxsim; onnxslim; onnxscript's optimizer. Each tool gets the same original.

Per model and tool: BN/affine nodes left, max relative error against the original (both run
with ORT_DISABLE_ALL on the same seeded inputs), and the median latency as a ratio to the
original and to the "BN-free limit" (the original with every BN and BN-like affine simply
bypassed: wrong numbers, but the fastest graph any fold can reach). Latency: every variant of a
model is timed round-robin (one run each per round, so drift hits all alike), one intra-op
thread, at ORT_DISABLE_ALL (what the graph costs) and ORT_ENABLE_ALL (what a deployment runs).

The peers are benchmark-only dependencies: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from peer_tools import PEER_PACKAGES, TOOLS, package_versions

from bnfold.check.equivalence import random_inputs
from bnfold.check.latency import (
    benchmark_shapes,
    machine_info,
    measure_level,
)
from bnfold.check.sizes import model_sizes
from bnfold.comparison import relative_error
from bnfold.frontends.onnx import input_specs
from bnfold.frontends.onnx_run import make_session, run_model
from bnfold.graph import bypass, iter_graphs
from bnfold.rules.affines import find_affine_chains
from bnfold.settings import BenchSettings

IR_VERSION = 8
LEVELS = ("disable", "all")
LEVEL_NAMES = {"disable": "ORT_DISABLE_ALL", "all": "ORT_ENABLE_ALL"}


# --------------------------------------------------------------------------- models


def _keras():
    import keras

    return keras


def _randomise_batchnorms(model: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization":
            continue
        weights = []
        for variable in layer.weights:
            shape, name = variable.shape, variable.path.rsplit("/", 1)[-1]
            if "gamma" in name:
                weights.append(rng.uniform(0.5, 1.5, shape))
            elif "beta" in name or "mean" in name:
                weights.append(rng.normal(0.0, 0.2, shape))
            else:
                weights.append(rng.uniform(0.5, 2.0, shape))
        layer.set_weights([w.astype(np.float32) for w in weights])


def _from_keras(model: Any) -> onnx.ModelProto:
    from bnfold.frontends.keras import keras_to_onnx

    _randomise_batchnorms(model, seed=0)
    return ir.serde.serialize_model(keras_to_onnx(model))


def keras_mobilenet_v2() -> onnx.ModelProto:
    keras = _keras()
    return _from_keras(keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None))


def keras_resnet50() -> onnx.ModelProto:
    keras = _keras()
    return _from_keras(keras.applications.ResNet50(input_shape=(96, 96, 3), weights=None))


def keras_mlp() -> onnx.ModelProto:
    keras = _keras()
    inputs = keras.Input((256,), name="features")
    x = inputs
    for _ in range(3):
        x = keras.layers.Dense(512)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return _from_keras(keras.Model(inputs, outputs))


def _bn(
    nodes: list, weights: dict, rng: np.random.Generator, data: str, out: str, channels: int
) -> None:
    prefix = f"{out}_bn"
    weights[f"{prefix}_gamma"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    weights[f"{prefix}_beta"] = rng.normal(0.0, 0.2, channels).astype(np.float32)
    weights[f"{prefix}_mean"] = rng.normal(0.0, 0.2, channels).astype(np.float32)
    weights[f"{prefix}_var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    inputs = [data] + [f"{prefix}_{p}" for p in ("gamma", "beta", "mean", "var")]
    nodes.append(helper.make_node("BatchNormalization", inputs, [out], name=prefix))


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _onnx_model(nodes: list, inputs: list, output: str, weights: dict) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "peers",
        inputs,
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = IR_VERSION
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def torch_style_cnn() -> onnx.ModelProto:
    """What torch.onnx.export keeps in training-preserving mode: BN after every Conv, after a
    ConvTranspose and after a Linear (Gemm)."""
    rng = np.random.default_rng(1)
    nodes: list = []
    weights: dict = {}
    current, channels = "x", 3
    plan = [(32, 2), (32, 1), (64, 2), (64, 1), (64, 1), (128, 2), (128, 1)]
    for index, (width, stride) in enumerate(plan):
        name = f"conv{index}"
        weights[f"{name}_w"] = _he(rng, (width, channels, 3, 3), channels * 9)
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"{name}_w"],
                [f"{name}_out"],
                name=name,
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        _bn(nodes, weights, rng, f"{name}_out", f"{name}_bn_out", width)
        nodes.append(helper.make_node("Relu", [f"{name}_bn_out"], [f"{name}_relu"]))
        current, channels = f"{name}_relu", width
    weights["up_w"] = _he(rng, (channels, 64, 2, 2), channels * 4)
    nodes.append(
        helper.make_node("ConvTranspose", [current, "up_w"], ["up_out"], name="up", strides=[2, 2])
    )
    _bn(nodes, weights, rng, "up_out", "up_bn_out", 64)
    nodes += [
        helper.make_node("Relu", ["up_bn_out"], ["up_relu"]),
        helper.make_node("GlobalAveragePool", ["up_relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
    ]
    weights["fc_w"] = _he(rng, (256, 64), 64)
    weights["fc_b"] = np.zeros(256, np.float32)
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc_out"], transB=1))
    _bn(nodes, weights, rng, "fc_out", "fc_bn_out", 256)
    nodes.append(helper.make_node("Relu", ["fc_bn_out"], ["fc_relu"]))
    weights["head_w"] = _he(rng, (10, 256), 256)
    nodes.append(helper.make_node("Gemm", ["fc_relu", "head_w"], ["logits"], transB=1))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 96, 96])
    return _onnx_model(nodes, [x], "logits", weights)


def torch_style_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    nodes: list = []
    weights: dict = {}
    current, width = "x", 256
    for index in range(4):
        name = f"fc{index}"
        weights[f"{name}_w"] = _he(rng, (1024, width), width)
        weights[f"{name}_b"] = np.zeros(1024, np.float32)
        nodes.append(
            helper.make_node(
                "Gemm", [current, f"{name}_w", f"{name}_b"], [f"{name}_out"], transB=1, name=name
            )
        )
        _bn(nodes, weights, rng, f"{name}_out", f"{name}_bn_out", 1024)
        nodes.append(helper.make_node("Relu", [f"{name}_bn_out"], [f"{name}_relu"]))
        current, width = f"{name}_relu", 1024
    weights["head_w"] = _he(rng, (10, width), width)
    nodes.append(helper.make_node("Gemm", [current, "head_w"], ["logits"], transB=1))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])
    return _onnx_model(nodes, [x], "logits", weights)


@dataclass
class ModelCase:
    name: str
    build: Callable[[], onnx.ModelProto]
    batch: int
    keras: bool = False


CASES = [
    ModelCase("Keras MobileNetV2 96x96", keras_mobilenet_v2, 1, keras=True),
    ModelCase("Keras ResNet50 96x96", keras_resnet50, 1, keras=True),
    ModelCase("Keras MLP 256-512x3", keras_mlp, 16, keras=True),
    ModelCase("PyTorch-style CNN (Conv/ConvT/Gemm+BN)", torch_style_cnn, 1),
    ModelCase("PyTorch-style MLP (Gemm+BN)x4", torch_style_mlp, 16),
]


# --------------------------------------------------------------------------- tools


def bn_free(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The original with every BN and BN-like affine bypassed: the speed limit of any fold."""
    model = ir.serde.deserialize_model(proto)
    for graph in iter_graphs(model.graph):
        for chain in find_affine_chains(graph):
            if not chain.is_bn_like or chain.skip is not None:
                continue
            if chain.input.is_graph_input() and chain.output.is_graph_output():
                continue
            bypass(graph, chain.output, chain.input)
            graph.remove(list(reversed(chain.nodes)), safe=True)
    return ir.serde.serialize_model(model)


# --------------------------------------------------------------------------- measuring


@dataclass
class Row:
    tool: str
    left: str = "-"
    error: float | None = None
    p50: dict[str, float] = field(default_factory=dict)
    vs_original: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0


def paired_ratio(
    baseline_ms: list[float], candidate_ms: list[float], seed: int = 0
) -> tuple[float, float, float]:
    """Median of the per-pair ratios candidate/baseline and its 95% bootstrap interval.

    On a shared machine other processes take the CPU in bursts; the two runs of a pair are
    back to back and mostly see the same state, so their ratio is steadier than a ratio of
    two medians taken over different moments."""
    ratios = np.asarray(candidate_ms) / np.asarray(baseline_ms)
    rng = np.random.default_rng(seed)
    medians = np.median(ratios[rng.integers(0, ratios.size, (2000, ratios.size))], axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(np.median(ratios)), float(low), float(high)


def max_relative_error(reference: dict, candidate: dict) -> float:
    return max(
        relative_error(reference[name], candidate[name]) if name in candidate else float("inf")
        for name in reference
    )


def measure_case(case: ModelCase, runs: int, warmup: int, log: Callable[[str], None]) -> list[Row]:
    started = time.perf_counter()
    original = case.build()
    log(f"  built in {time.perf_counter() - started:.1f} s")
    variants: dict[str, onnx.ModelProto] = {
        "original": original,
        "BN-free limit": bn_free(original),
    }
    rows = {name: Row(name) for name in variants}
    with tempfile.TemporaryDirectory(prefix="bnfold-peers-") as folder:
        for tool, run_tool in TOOLS.items():
            rows[tool] = Row(tool)
            copy = onnx.ModelProto()
            copy.CopyFrom(original)
            started = time.perf_counter()
            try:
                variants[tool] = run_tool(copy, Path(folder))
            except Exception as error:
                rows[tool].note = f"failed: {type(error).__name__}: {str(error)[:80]}"
                log(f"  {tool}: {rows[tool].note}")
            rows[tool].seconds = time.perf_counter() - started
    specs = input_specs(ir.serde.deserialize_model(original))
    feeds = random_inputs(specs, seed=0, shapes=benchmark_shapes(specs, case.batch))
    expected = run_model(original.SerializeToString(), feeds)
    for name, proto in list(variants.items()):
        sizes = model_sizes(proto)
        rows[name].left = f"{sizes.batchnorm_nodes}/{sizes.affine_nodes}"
        try:
            make_session(proto.SerializeToString())
            if name != "BN-free limit":
                actual = run_model(proto.SerializeToString(), feeds)
                rows[name].error = max_relative_error(expected, actual)
        except Exception as error:
            rows[name].note = f"does not run: {str(error).splitlines()[0][:80]}"
            del variants[name]
    # Each variant against the original, interleaved A B A B with bnfold's own benchmark: two
    # models at a time keep the caches as warm as a deployment of one model would.
    baseline = original.SerializeToString()
    settings = BenchSettings(runs=runs, warmup=warmup, threads=1)
    for level in LEVELS:
        originals = []
        for name, proto in variants.items():
            if name == "original":
                continue
            measured = measure_level(
                baseline,
                proto.SerializeToString(),
                feeds,
                level=level,
                settings=settings,
            )
            rows[name].p50[level] = measured.candidate.p50
            rows[name].vs_original[level] = paired_ratio(
                measured.baseline_ms, measured.candidate_ms
            )
            originals.append(measured.baseline.p50)
        rows["original"].p50[level] = float(np.median(originals))
        rows["original"].vs_original[level] = (1.0, 1.0, 1.0)
    return list(rows.values())


def _vs_original(row: Row, level: str) -> str:
    if level not in row.vs_original:
        return "-"
    ratio, low, high = row.vs_original[level]
    return f"{ratio:.3f} ({low:.3f}-{high:.3f})" if row.tool != "original" else "1"


def _vs_limit(row: Row, limit: Row, level: str) -> str:
    if level not in row.vs_original or level not in limit.vs_original:
        return "-"
    return f"{row.vs_original[level][0] / limit.vs_original[level][0]:.3f}"


def table(case: ModelCase, rows: list[Row]) -> str:
    limit = next(row for row in rows if row.tool == "BN-free limit")
    original = next(row for row in rows if row.tool == "original")
    p50 = ", ".join(
        f"{original.p50[level]:.3f} ms at {LEVEL_NAMES[level]}"
        for level in LEVELS
        if level in original.p50
    )
    lines = [
        f"#### {case.name}, batch {case.batch} (original p50: {p50})",
        "",
        "| tool | BN / affine nodes left | max rel error | vs original, DISABLE_ALL (95% CI) "
        "| vs BN-free, DISABLE_ALL | vs original, ENABLE_ALL (95% CI) | vs BN-free, ENABLE_ALL "
        "| note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        error = "-" if row.error is None else f"{row.error:.1e}"
        cells = [row.tool, row.left, error]
        for level in LEVELS:
            cells += [_vs_original(row, level), _vs_limit(row, limit, level)]
        note = row.note or (f"ran in {row.seconds:.1f} s" if row.seconds else "")
        cells.append(note.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


PEERS = tuple(tool for tool in TOOLS if tool != "bnfold")


def summary(results: list[tuple[ModelCase, list[Row]]]) -> str:
    """bnfold against the BN-free limit and against the fastest peer on each model and level."""
    lines = [
        "#### Summary: bnfold against the BN-free limit and the fastest peer",
        "",
        "| model | bnfold BN / affine left | bnfold max rel error "
        + "".join(
            f"| vs BN-free, {LEVEL_NAMES[level]} | vs fastest peer, {LEVEL_NAMES[level]} "
            for level in LEVELS
        )
        + "|",
        "|---|---:|---:|" + "---:|---:|" * len(LEVELS),
    ]
    for case, rows in results:
        by_name = {row.tool: row for row in rows}
        mine, limit = by_name["bnfold"], by_name["BN-free limit"]
        error = "-" if mine.error is None else f"{mine.error:.1e}"
        cells = [case.name, mine.left, error]
        for level in LEVELS:
            cells.append(_vs_limit(mine, limit, level))
            peers = [by_name[name] for name in PEERS if level in by_name[name].vs_original]
            if level not in mine.vs_original or not peers:
                cells.append("-")
                continue
            best = min(peers, key=lambda row: row.vs_original[level][0])
            ratio = mine.vs_original[level][0] / best.vs_original[level][0]
            cells.append(f"{ratio:.3f} ({best.tool})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios below 1: bnfold is faster. Differences under about 3% are within this "
        "machine's noise (docs/benchmarks.md).",
    ]
    return "\n".join(lines)


def versions() -> str:
    parts = [f"{name} {version}" for name, version in machine_info().versions.items()]
    parts += package_versions((*PEER_PACKAGES, "tensorflow", "keras", "tf2onnx"))
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=80, help="timed pairs per variant and level")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="PyTorch-style models only, 5 runs")
    parser.add_argument("--only", default="", help="run the models whose name contains this")
    args = parser.parse_args(argv)
    cases = [case for case in CASES if args.only.lower() in case.name.lower()]
    if args.quick:
        cases = [case for case in cases if not case.keras]
        args.runs = 5

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    machine = machine_info()
    started = time.perf_counter()
    print(f"Machine: {machine.cpu}, {machine.logical_cores} logical cores, {platform.platform()}")
    print(f"Versions: {versions()}")
    print(
        f"Latency: each variant timed against the original, interleaved A B A B, "
        f"{args.runs} pairs after {args.warmup} warm-up runs, 1 intra-op thread, "
        "CPUExecutionProvider. vs original: median over pairs of variant/original time, below 1 "
        "is faster, with a 95% bootstrap interval; vs BN-free divides that by the BN-free "
        "limit's own ratio. BN / affine nodes: BatchNormalization nodes / nodes in BN-like "
        "affine chains. Error: max|variant - original| / max|original| at ORT_DISABLE_ALL."
    )
    print()
    results = []
    for case in cases:
        log(f"{case.name}")
        try:
            rows = measure_case(case, args.runs, args.warmup, log)
        except Exception:
            log(traceback.format_exc())
            print(f"#### {case.name}\n\nfailed to build or measure (see stderr)\n")
            continue
        results.append((case, rows))
        print(table(case, rows))
        print(flush=True)
    print(summary(results))
    print()
    print(f"Total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
