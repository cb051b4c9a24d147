"""Issue 15's patterns, each built in code: ``inspect``, ``--no-check`` and the full fold (with
its check, onnxruntime without optimisations) decide alike, and the fold is exact.

- CREPE's pitch CNN (PyTorch export): ``Pad`` (pads computed by torch's ConstantOfShape /
  Concat / Slice / Transpose subgraph) -> Conv -> Relu -> BN -> MaxPool -> Transpose ->
  Reshape ``[-1, 256]`` -> Gemm, batch dynamic;
- PaddleOCR: LayerNorm written out as ops, its scale and shift, MatMul, the MatMul's bias Add;
- PyTorch's ``fuse_linear_bn_eval`` with ``num_features == 1``;
- an EEG detector's BN before a ConvTranspose with kernel = stride (left, ``shift_not_bias``);
- a Conv -> Reshape ``[0, 0, -1]`` -> BN with dynamic batch and height
  (``bnfold/frontends/onnx_sizes_test.py``), and PyTorch's
  ``x.view(x.size(0), x.size(1), -1)`` before a Conv1d or after a Conv2d;
- music-analysis CNNs without a batch axis, which the check sizes from the graph
  (``bnfold/frontends/onnx_dims_test.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import bnfold
from bnfold.cli import cli
from bnfold.fold import fold_model
from bnfold.foldlog import FoldEntry, Reason
from bnfold.frontends.onnx_dims_test import _frames_model, _spectrogram_model
from bnfold.frontends.onnx_sizes import sized_shapes
from bnfold.frontends.onnx_sizes_test import _reshape_model
from bnfold.rules.forward_conv_test import eeg_upsampling
from bnfold.testing import batchnorm_node, batchnorm_params, make_model, run_python_quietly

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


def _constant(name: str, values: list[int], dims: list[int] | None = None) -> onnx.NodeProto:
    shape = [len(values)] if dims is None else dims
    tensor = helper.make_tensor(f"{name}_value", INT64, shape, values)
    return helper.make_node("Constant", [], [name], value=tensor)


def torch_pads(torch_pad: list[int], rank: int) -> tuple[list[onnx.NodeProto], str]:
    """torch's ``_prepare_onnx_paddings`` as exported without constant folding: the pads of
    ``F.pad(x, torch_pad)`` computed by a subgraph shape inference cannot follow."""
    nodes = [
        _constant("pad", torch_pad),
        _constant("pad_len", [len(torch_pad)], []),
        _constant("twice_rank", [2 * rank], []),
        helper.make_node("Sub", ["twice_rank", "pad_len"], ["extension"]),
        _constant("zero_axis", [0]),
        helper.make_node("Unsqueeze", ["extension", "zero_axis"], ["extension_1d"]),
        helper.make_node(
            "ConstantOfShape",
            ["extension_1d"],
            ["zeros"],
            value=helper.make_tensor("zero", INT64, [1], [0]),
        ),
        helper.make_node("Concat", ["pad", "zeros"], ["all_pads"], axis=0),
        _constant("pairs_shape", [-1, 2]),
        helper.make_node("Reshape", ["all_pads", "pairs_shape"], ["pairs"]),
        _constant("minus_one", [-1]),
        _constant("far_end", [-(2**62)]),
        helper.make_node(
            "Slice", ["pairs", "minus_one", "far_end", "zero_axis", "minus_one"], ["flipped"]
        ),
        helper.make_node("Transpose", ["flipped"], ["by_side"], perm=[1, 0]),
        helper.make_node("Reshape", ["by_side", "minus_one"], ["onnx_pads"]),
        helper.make_node("Cast", ["onnx_pads"], ["pads"], to=INT64),
    ]
    return nodes, "pads"


def crepe(rng: np.random.Generator) -> onnx.ModelProto:
    """``[N, 1, 16, 1]`` -> pad height 1+1 -> Conv (3, 1) -> ``[N, 64, 16, 1]`` -> MaxPool
    (4, 1) -> ``[N, 64, 4, 1]`` -> Transpose -> ``[N, 4, 64, 1]`` -> ``[-1, 256]`` -> Gemm."""
    pad_nodes, pads = torch_pads([0, 0, 1, 1], 4)
    inits = {
        "w": rng.normal(size=(64, 1, 3, 1)).astype(np.float32),
        "b": rng.normal(size=64).astype(np.float32),
        **batchnorm_params(rng, 64),
        "target": np.array([-1, 256], np.int64),
        "fc_w": rng.normal(size=(10, 256)).astype(np.float32),
        "fc_b": rng.normal(size=10).astype(np.float32),
    }
    nodes = [
        *pad_nodes,
        helper.make_node("Pad", ["x", pads], ["padded"], name="pad"),
        helper.make_node("Conv", ["padded", "w", "b"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("MaxPool", ["n"], ["p"], name="pool", kernel_shape=[4, 1], strides=[4, 1]),
        helper.make_node("Transpose", ["p"], ["t"], name="transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["t", "target"], ["f"], name="reshape"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="classifier", transB=1),
    ]
    return make_model(nodes, [("x", FLOAT, ["N", 1, 16, 1])], ["y"], inits)


def paddle_ocr(rng: np.random.Generator) -> onnx.ModelProto:
    from bnfold.rules.forward_matmul_test import _layer_norm_then_linear

    return _layer_norm_then_linear(rng, infer_shapes=True)


def linear_one_channel_bn(rng: np.random.Generator) -> onnx.ModelProto:
    inits = {
        "w": rng.normal(size=(5, 6)).astype(np.float32),
        "b": rng.normal(size=6).astype(np.float32),
        **batchnorm_params(rng, 1),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="linear"),
        helper.make_node("Add", ["mm", "b"], ["lin"], name="linear_bias"),
        batchnorm_node("lin", "y"),
    ]
    return make_model(nodes, [("x", FLOAT, ["B", 1, 5])], ["y"], inits)


def torch_view(rng: np.random.Generator, *, forward: bool) -> onnx.ModelProto:
    """``x.view(x.size(0), x.size(1), -1)`` as PyTorch exports it (``Shape -> Slice -> Concat
    -> Reshape``) between a BN over ``[N, 4, H, W]`` and a Conv1d (forward), or between a
    Conv2d and a BatchNorm1d (backward): ONNX's inference leaves the Reshape's output unknown,
    onnxruntime's symbolic inference finds ``[N, 4, H*W]``."""
    inits: dict[str, np.ndarray] = {
        "start": np.array([0], np.int64),
        "end": np.array([2], np.int64),
        "rest": np.array([-1], np.int64),
        **batchnorm_params(rng, 4),
    }
    view = [
        helper.make_node("Shape", ["n"], ["shape"], name="size"),
        helper.make_node("Slice", ["shape", "start", "end"], ["nc"], name="first_two"),
        helper.make_node("Concat", ["nc", "rest"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["n", "target"], ["flat"], name="view"),
    ]
    if forward:
        inits["w"] = rng.normal(size=(5, 4, 1)).astype(np.float32)
        nodes = [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            batchnorm_node("r", "n"),
            *view,
            helper.make_node("Conv", ["flat", "w"], ["y"], name="conv1d"),
        ]
        output = ("y", FLOAT, ["N", 5, "L"])
    else:
        inits["w"] = rng.normal(size=(4, 3, 1, 1)).astype(np.float32)
        nodes = [
            helper.make_node("Conv", ["x", "w"], ["n"], name="conv2d"),
            *view,
            batchnorm_node("flat", "y"),
        ]
        output = ("y", FLOAT, ["N", 4, "L"])
    channels = 4 if forward else 3
    return make_model(nodes, [("x", FLOAT, ["N", channels, "H", "W"])], [output], inits)


Decision = tuple[str, str, str | None, tuple[str, ...]]

PATTERNS: dict[str, tuple[Callable[[np.random.Generator], onnx.ModelProto], list[Decision]]] = {
    "crepe": (crepe, [("bn", "folded_into_next", None, ("classifier",))]),
    "paddle_ocr": (paddle_ocr, [("p2o.Mul.1", "folded_into_next", None, ("p2o.MatMul.0",))]),
    "linear_bn1d_1": (
        linear_one_channel_bn,
        [("bn", "folded_into_previous", None, ("linear",))],
    ),
    "eeg_conv_transpose": (
        partial(eeg_upsampling, opset=13),
        [("bn", "left", "shift_not_bias", ())],
    ),
    "reshape_keeping_batch": (
        _reshape_model,
        [("bn", "folded_into_previous", None, ("conv",))],
    ),
    "torch_view_forward": (
        lambda rng: torch_view(rng, forward=True),
        [("bn", "folded_into_next", None, ("conv1d",))],
    ),
    "torch_view_backward": (
        lambda rng: torch_view(rng, forward=False),
        [("bn", "folded_into_previous", None, ("conv2d",))],
    ),
    # Sized by the graph (bins, channels) and by the first dim at the fallback sizes (frames).
    "spectrogram": (_spectrogram_model, [("bn", "folded_into_previous", None, ("conv",))]),
    "frames": (_frames_model, [("bn", "folded_into_previous", None, ("conv",))]),
}


def _decisions(entries: list[FoldEntry]) -> list[Decision]:
    return [
        (e.name, e.outcome.value, e.reason.value if e.reason else None, tuple(e.target))
        for e in entries
    ]


def _saved(tmp_path: Path, name: str) -> Path:
    build, _ = PATTERNS[name]
    path = tmp_path / f"{name}.onnx"
    onnx.save(build(np.random.default_rng(0)), path)
    return path


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_inspect_no_check_and_the_fold_decide_alike(tmp_path, name):
    _, expected = PATTERNS[name]
    path = _saved(tmp_path, name)
    full = bnfold.fold(path, tmp_path / "folded.onnx")
    assert _decisions(full.entries) == expected
    assert _decisions(bnfold.inspect(path).entries) == expected
    assert _decisions(bnfold.fold(path, check=None).entries) == expected
    assert full.check is not None and full.check.passed
    assert full.check.max_rel <= 1e-5
    if expected[0][1] == "left":
        assert full.check.max_abs == 0.0  # nothing changed


def test_the_command_line_decides_alike_on_crepe(tmp_path):
    path = _saved(tmp_path, "crepe")
    runs = {
        "inspect": ["inspect", str(path), "--json"],
        "no-check": [str(path), "-o", str(tmp_path / "a.onnx"), "--no-check", "--json"],
        "fold": [str(path), "-o", str(tmp_path / "b.onnx"), "--json"],
    }
    decided = {}
    for label, arguments in runs.items():
        result = CliRunner().invoke(cli, arguments)
        assert result.exit_code == 0, (label, result.output)
        [entry] = json.loads(result.stdout)["entries"]
        decided[label] = (entry["outcome"], entry["target"], entry["via"])
    expected = ("folded_into_next", ["classifier"], ["pool", "transpose", "reshape"])
    assert decided == dict.fromkeys(runs, expected)


def test_without_the_computed_pads_the_crepe_reshape_is_unproven():
    """The engine on the shapes inference alone finds (the Pad's output unknown but for the
    batch) leaves the BN as the issue reports it; on the shapes found with the pads written
    as a constant (``sized_shapes`` without sizes: symbolic) the Reshape is proven."""
    proto = crepe(np.random.default_rng(0))
    alone = fold_model(ir.serde.deserialize_model(proto))
    [entry] = alone.entries
    assert entry.reason is Reason.UNPROVEN_LAYOUT
    assert "([None, None, 64, None] -> [None, 256])" in entry.detail
    model = ir.serde.deserialize_model(proto)
    with sized_shapes(model):
        [entry] = fold_model(model).entries
    assert entry.target == ["classifier"]


def test_symbolic_proofs_without_the_check_load_neither_onnxruntime_nor_sympy(tmp_path):
    """onnxruntime's symbolic inference (and sympy with it) is asked only where onnx's leaves
    a shape unknown: CREPE's proof needs neither, the start-up of ``--no-check`` stays lean."""
    path = _saved(tmp_path, "crepe")
    script = (
        "import sys\n"
        f"sys.argv = ['bnfold', {str(path)!r}, '-o', {str(tmp_path / 'f.onnx')!r}, "
        "'--no-check', '--json']\n"
        "from bnfold.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('sympy.core', 'onnxruntime') if m in sys.modules))\n"
    )
    completed = run_python_quietly(script, tmp_path)
    *document, loaded = completed.stdout.strip().splitlines()
    assert loaded == "[]", completed.stderr
    [entry] = json.loads("\n".join(document))["entries"]
    assert entry["outcome"] == "folded_into_next"
