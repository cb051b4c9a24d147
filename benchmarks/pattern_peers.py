"""What bnfold and its peers leave on each pattern of issue 10, and how exact they are.

    .venv/bin/python benchmarks/pattern_peers.py            # about a minute, prints a table

Each pattern is a small graph built in code (nothing downloaded), as exporters write it:
constants computed by subgraphs, dynamic dimensions, a one-channel BN, a BN behind ops it
commutes with, and an opset-9 BN in training mode (which no tool may fold: the right count
there is one BN left). Every tool gets the same original (benchmarks/peer_tools.py).

Per pattern and tool: BatchNormalization nodes / nodes of BN-like affines (a per-channel
``Mul``/``Div`` with its ``Add``/``Sub``) / nodes of other constant affines (bias ``Add``s), all
counted by bnfold's own affine finder (``bnfold.rules.affines.find_affine_chains``), and
``max|tool - original| / max|original|`` with both run by onnxruntime at ORT_DISABLE_ALL on the
same seeded inputs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from peer_tools import PEER_PACKAGES, TOOLS, package_versions

from bnfold.check.equivalence import random_inputs
from bnfold.comparison import relative_error
from bnfold.frontends.onnx import input_specs
from bnfold.frontends.onnx_run import run_model
from bnfold.graph import iter_graphs
from bnfold.rules.affines import find_affine_chains
from bnfold.testing import batchnorm_node, batchnorm_params, make_model

FLOAT = TensorProto.FLOAT
C = 4
X = ("x", FLOAT, [2, 3, 8, 8])


@dataclass
class Pattern:
    name: str
    model: onnx.ModelProto
    dims: dict[str, int] = field(default_factory=dict)


def _constant(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def _conv(rng: np.random.Generator, data: str, out: str, name: str, cin: int = 3) -> tuple:
    weight = {f"{name}_w": rng.normal(size=(C, cin, 3, 3)).astype(np.float32)}
    return helper.make_node("Conv", [data, f"{name}_w"], [out], name=name, pads=[1] * 4), weight


def reshape_constant_bias(rng: np.random.Generator) -> Pattern:
    """paddle2onnx: Conv -> Add(Reshape(Constant bias, [1, C, 1, 1])), twice."""
    nodes, inits = [], {"to": np.array([1, C, 1, 1], np.int64)}
    data = "x"
    for index in range(2):
        conv, weight = _conv(rng, data, f"c{index}", f"conv{index}", 3 if index == 0 else C)
        inits.update(weight)
        nodes += [
            conv,
            _constant(f"b{index}", rng.normal(size=C).astype(np.float32)),
            helper.make_node("Reshape", [f"b{index}", "to"], [f"b{index}_4d"]),
            helper.make_node("Add", [f"c{index}", f"b{index}_4d"], [f"a{index}"]),
            helper.make_node("Relu", [f"a{index}"], [f"r{index}"]),
        ]
        data = f"r{index}"
    nodes.append(helper.make_node("Identity", [data], ["y"]))
    model = make_model(nodes, [("x", FLOAT, ["N", 3, 8, 8])], ["y"], inits)
    return Pattern("Reshape(Constant) conv bias x2", model, {"N": 2})


def unsqueeze_mul_add(rng: np.random.Generator) -> Pattern:
    """onnxruntime's FuseConvMulNoBias / FuseConvAddNoBias: Mul/Add by Unsqueeze(initializer)."""
    conv, inits = _conv(rng, "x", "c", "conv")
    inits |= {
        "s": rng.uniform(0.5, 2, size=C).astype(np.float32),
        "t": rng.normal(size=C).astype(np.float32),
        "axes": np.array([1, 2], np.int64),
    }
    nodes = [
        conv,
        helper.make_node("Unsqueeze", ["s", "axes"], ["s3"]),
        helper.make_node("Unsqueeze", ["t", "axes"], ["t3"]),
        helper.make_node("Mul", ["c", "s3"], ["m"]),
        helper.make_node("Add", ["m", "t3"], ["y"]),
    ]
    return Pattern("Unsqueeze(initializer) Mul/Add", make_model(nodes, [X], ["y"], inits))


def expand_castlike_bias(rng: np.random.Generator) -> Pattern:
    """The dynamo exporter (optimize=False): bias = Expand(CastLike(0, x), Shape(W)[:1])."""
    inits = {"w": rng.normal(size=(C, 3, 3, 3)).astype(np.float32), **batchnorm_params(rng, C)}
    nodes = [
        _constant("zero", np.array(0.0, np.float32)),
        helper.make_node("CastLike", ["zero", "x"], ["zero_like"]),
        helper.make_node("Shape", ["w"], ["w_out"], start=0, end=1),
        helper.make_node("Expand", ["zero_like", "w_out"], ["bias"]),
        helper.make_node("Conv", ["x", "w", "bias"], ["c"], name="conv", pads=[1] * 4),
        batchnorm_node("c", "y"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 3, 8, 8])], ["y"], inits, opset=15)
    return Pattern("Expand(CastLike, Shape) bias + BN", model, {"N": 2})


def layernorm_style_matmul(rng: np.random.Generator) -> Pattern:
    """A recogniser of dynamic height: Mul/Add by 1-D constants on the last axis, then a MatMul
    by a constant; a Shape reads the affine's output. No shapes stored past the input."""
    inits = {
        "w": rng.normal(size=(8, 6)).astype(np.float32),
        "s": rng.uniform(0.5, 2.0, size=8).astype(np.float32),
        "t": rng.normal(size=8).astype(np.float32),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mul", ["r", "s"], ["m"]),
        helper.make_node("Add", ["m", "t"], ["a"]),
        helper.make_node("MatMul", ["a", "w"], ["y"], name="mm"),
        helper.make_node("Shape", ["a"], ["shape"]),
    ]
    model = make_model(
        nodes,
        [("x", FLOAT, ["N", "?", 8])],
        [("y", FLOAT, ["N", "?", 6]), ("shape", TensorProto.INT64, [3])],
        inits,
        infer_shapes=False,
    )
    return Pattern("dynamic-height Mul/Add -> MatMul", model, {"N": 2, "?": 5})


def reshape_of_dynamic_height(rng: np.random.Generator) -> Pattern:
    """Conv -> Reshape [N, C, H, 4] to [N, C, H*4] -> BN: proven only at known sizes."""
    inits = {
        "w": rng.normal(size=(C, 3, 1, 1)).astype(np.float32),
        "to": np.array([0, 0, -1], np.int64),
        **batchnorm_params(rng, C),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Reshape", ["c", "to"], ["flat"]),
        batchnorm_node("flat", "y"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 3, "H", 4])], ["y"], inits)
    return Pattern("Conv -> Reshape (dynamic H) -> BN", model, {"N": 2, "H": 5})


def one_channel_bn(rng: np.random.Generator, op: str) -> Pattern:
    """Linear -> BatchNorm1d(1): a scalar scale and shift."""
    params = batchnorm_params(rng, 1)
    if op == "MatMul":
        inits = {"w": rng.normal(size=(5, 6)).astype(np.float32), **params}
        layer = helper.make_node("MatMul", ["x", "w"], ["m"], name="mm")
        shape: list = ["N", 1, 5]
    else:
        inits = {"w": rng.normal(size=(1, 5)).astype(np.float32), "b": np.ones(1, np.float32)}
        inits |= params
        layer = helper.make_node("Gemm", ["x", "w", "b"], ["m"], transB=1)
        shape = ["N", 5]
    model = make_model([layer, batchnorm_node("m", "y")], [("x", FLOAT, shape)], ["y"], inits)
    return Pattern(f"BatchNorm1d(1) after {op}", model, {"N": 2})


def pitch_tracker_head(rng: np.random.Generator) -> Pattern:
    """Conv -> Relu -> BN (scales > 0) -> MaxPool -> Transpose -> Reshape -> Gemm."""
    inits = {
        "conv_w": rng.normal(size=(C, 2, 3, 1)).astype(np.float32),
        "conv_b": rng.normal(size=C).astype(np.float32),
        "shape": np.array([0, -1], np.int64),
        "fc_w": rng.normal(size=(5, 3 * C)).astype(np.float32),
        "fc_b": rng.normal(size=5).astype(np.float32),
        **batchnorm_params(rng, C),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 0, 1, 0]),
        helper.make_node("Relu", ["c"], ["r"]),
        batchnorm_node("r", "b"),
        helper.make_node("MaxPool", ["b"], ["m"], kernel_shape=[2, 1], strides=[2, 1]),
        helper.make_node("Transpose", ["m"], ["t"], perm=[0, 3, 2, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 2, 6, 1])], ["y"], inits)
    return Pattern("Conv-Relu-BN-MaxPool-Transpose-Reshape-Gemm", model, {"N": 2})


THROUGH: dict[str, tuple[list[onnx.NodeProto], dict[str, np.ndarray]]] = {
    "AveragePool": (
        [helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[3, 3], pads=[1] * 4)],
        {},
    ),
    "GlobalAveragePool": ([helper.make_node("GlobalAveragePool", ["c"], ["p"])], {}),
    "Resize": (
        [helper.make_node("Resize", ["c", "", "scales"], ["p"], mode="linear")],
        {"scales": np.array([1, 1, 2, 2], np.float32)},
    ),
    "Slice": (
        [helper.make_node("Slice", ["c", "starts", "ends", "axes"], ["p"])],
        {
            "starts": np.array([1, 0], np.int64),
            "ends": np.array([7, -1], np.int64),
            "axes": np.array([2, 3], np.int64),
        },
    ),
    "Concat": (  # two Convs side by side on the channel axis
        [
            helper.make_node("Conv", ["x", "conv2_w"], ["c2"], name="conv2", pads=[1] * 4),
            helper.make_node("Concat", ["c", "c2"], ["p"], axis=1),
        ],
        {},
    ),
}


def bn_through(rng: np.random.Generator, op: str) -> Pattern:
    """Conv -> op -> BN: the BN travels back through ``op`` into the Conv(s)."""
    conv, inits = _conv(rng, "x", "c", "conv")
    nodes, extra = THROUGH[op]
    inits |= extra
    channels = C
    if op == "Concat":
        inits["conv2_w"] = rng.normal(size=(C, 3, 3, 3)).astype(np.float32)
        channels = 2 * C
    inits |= batchnorm_params(rng, channels)
    model = make_model([conv, *nodes, batchnorm_node("p", "y")], [X], ["y"], inits)
    return Pattern(f"Conv -> {op} -> BN", model)


def training_mode_bn(rng: np.random.Generator) -> Pattern:
    """Opset 9, optional outputs named: training mode (batch statistics); nothing may fold."""
    conv, inits = _conv(rng, "x", "c", "conv")
    inits |= batchnorm_params(rng, C)
    names = ["c", "bn_gamma", "bn_beta", "bn_mean", "bn_var"]
    bn = helper.make_node("BatchNormalization", names, ["y", "rm", "rv", "sm", "sv"], name="bn")
    return Pattern("opset-9 training-mode BN", make_model([conv, bn], [X], ["y"], inits, opset=9))


PATTERNS: list[Callable[[np.random.Generator], Pattern]] = [
    reshape_constant_bias,
    unsqueeze_mul_add,
    expand_castlike_bias,
    layernorm_style_matmul,
    reshape_of_dynamic_height,
    lambda rng: one_channel_bn(rng, "MatMul"),
    lambda rng: one_channel_bn(rng, "Gemm"),
    pitch_tracker_head,
    *(lambda rng, op=op: bn_through(rng, op) for op in THROUGH),
    training_mode_bn,
]


@dataclass
class Cell:
    left: tuple[int, int, int] | None = None
    error: float | None = None
    note: str = ""

    def text(self) -> str:
        if self.left is None:
            return self.note or "-"
        error = "-" if self.error is None else f"{self.error:.1e}"
        return "{}/{}/{}".format(*self.left) + f" ({error})"


def left_over(proto: onnx.ModelProto) -> tuple[int, int, int]:
    """BN nodes, nodes of BN-like affine chains, nodes of other constant affine chains."""
    model = ir.serde.deserialize_model(proto)
    batchnorms = bn_like = other = 0
    for graph in iter_graphs(model.graph):
        batchnorms += sum(node.op_type == "BatchNormalization" for node in graph)
        for chain in find_affine_chains(graph):
            if chain.is_bn_like:
                bn_like += sum(op.node.op_type != "BatchNormalization" for op in chain.ops)
            else:
                other += len(chain.ops)
    return batchnorms, bn_like, other


def measure(pattern: Pattern, tools: list[str], folder: Path) -> dict[str, Cell]:
    feeds = random_inputs(input_specs(ir.serde.deserialize_model(pattern.model)), dims=pattern.dims)
    expected = run_model(pattern.model.SerializeToString(), feeds)
    cells = {"original": Cell(left_over(pattern.model), 0.0)}
    for tool in tools:
        copy = onnx.ModelProto()
        copy.CopyFrom(pattern.model)
        cell = cells.setdefault(tool, Cell())
        try:
            if tool == "bnfold":  # like `bnfold model.onnx -o out.onnx --dim N=2 ...`
                output = TOOLS[tool](copy, folder, pattern.dims)  # type: ignore[call-arg]
            else:
                output = TOOLS[tool](copy, folder)
            cell.left = left_over(output)
            actual = run_model(output.SerializeToString(), feeds)
            cell.error = max(relative_error(expected[name], actual[name]) for name in expected)
        except Exception as error:
            cell.note = f"failed: {type(error).__name__}"
            print(f"{pattern.name}, {tool}: {error}", file=sys.stderr)
    return cells


def table(results: list[tuple[Pattern, dict[str, Cell]]], tools: list[str]) -> str:
    lines = [
        "| pattern | original | " + " | ".join(tools) + " |",
        "|---|" + "---:|" * (len(tools) + 1),
    ]
    for pattern, cells in results:
        row = [pattern.name, "{}/{}/{}".format(*cells["original"].left or (0, 0, 0))]
        row += [cells[tool].text() for tool in tools]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# An error above this is not float rounding: the tool changed what the model computes.
WRONG = 1e-3


def verdicts(results: list[tuple[Pattern, dict[str, Cell]]], tools: list[str]) -> list[str]:
    """Patterns where bnfold leaves more BN or BN-like affine nodes than some peer."""
    lines = []
    for pattern, cells in results:
        mine = cells["bnfold"].left
        for tool in tools:
            theirs = cells[tool].left
            if tool == "bnfold" or mine is None or theirs is None:
                continue
            if mine[0] + mine[1] <= theirs[0] + theirs[1]:
                continue
            error = cells[tool].error
            wrong = error is None or error > WRONG
            lines.append(
                f"- {pattern.name}: {tool} leaves fewer, max rel error {error or 0:.1e}"
                + (" (a wrong model)" if wrong else "")
            )
    return lines


def versions() -> str:
    return ", ".join(package_versions(("onnxruntime", "onnx", *PEER_PACKAGES)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_tools = "bnfold,ORT basic,onnxsim,onnxslim,onnxscript"
    parser.add_argument("--tools", default=default_tools, help="comma-separated tool names")
    args = parser.parse_args(argv)
    tools = [tool for tool in args.tools.split(",") if tool in TOOLS]
    results = []
    with tempfile.TemporaryDirectory(prefix="bnfold-patterns-") as folder:
        for build in PATTERNS:
            pattern = build(np.random.default_rng(0))
            results.append((pattern, measure(pattern, tools, Path(folder))))
    print(f"Versions: {versions()}")
    print("Cells: BN nodes / BN-like affine nodes / other constant affine nodes left (max rel")
    print("error against the original, both at ORT_DISABLE_ALL).")
    print()
    print(table(results, tools))
    print()
    print("\n".join(verdicts(results, tools)) or "bnfold leaves no more BN than any peer.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
