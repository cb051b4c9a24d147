"""The check's sizes prove a layout through Reshape that dynamic dimensions leave unproven."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper

from bnfold.cli import cli
from bnfold.comparison import relative_error
from bnfold.frontends.onnx_run import run_model
from bnfold.testing import batchnorm_node, batchnorm_params, make_model


def _reshape_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv -> Reshape [N, 4, H, 4] to [N, 4, H*4] -> BN on axis 1: with H unknown nothing
    proves the 4 channels stay on axis 1 of the Reshape's output."""
    inits: dict[str, np.ndarray] = {
        "w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32),
        "to": np.array([0, 0, -1], np.int64),
        **batchnorm_params(rng, 4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Reshape", ["c", "to"], ["flat"], name="flatten_hw"),
        batchnorm_node("flat", "y"),
    ]
    return make_model(nodes, [("x", TensorProto.FLOAT, ["N", 3, "H", 4])], ["y"], inits)


def _fold(tmp_path, *options: str) -> tuple[dict, onnx.ModelProto]:
    source, out = tmp_path / "reshape.onnx", tmp_path / "folded.onnx"
    onnx.save(_reshape_model(np.random.default_rng(0)), source)
    result = CliRunner().invoke(cli, [str(source), "-o", str(out), "--json", *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), onnx.load(out)


def _dims(info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]


def test_dims_prove_the_reshape_and_the_output_stays_dynamic(tmp_path):
    document, folded = _fold(tmp_path, "--dim", "N=2", "--dim", "H=5")
    [entry] = document["entries"]
    assert entry["outcome"] == "folded_into_previous", entry
    assert entry["target"] == ["conv"]
    assert [node.op_type for node in folded.graph.node] == ["Conv", "Reshape"]
    assert _dims(folded.graph.input[0]) == ["N", 3, "H", 4]
    for info in [*folded.graph.value_info, *folded.graph.output]:
        assert 5 not in _dims(info) and 20 not in _dims(info), info
    # Proven at H=5, exact at any height and batch.
    x = np.random.default_rng(1).normal(size=(3, 3, 7, 4)).astype(np.float32)
    original = _reshape_model(np.random.default_rng(0))
    expected = run_model(original.SerializeToString(), {"x": x})["y"]
    assert relative_error(expected, run_model(folded.SerializeToString(), {"x": x})["y"]) < 1e-5


def test_without_sizes_the_reshape_is_proven_symbolically(tmp_path):
    """``[N, 4, H, 4] -> [N, 4, ?]``: ``N`` before the channels on both sides proves them on
    axis 1 whatever ``N`` and ``H`` are, so ``--no-check`` and ``inspect`` fold as the check
    does (they left it ``unproven_layout`` when only the check's sizes proved it)."""
    document, folded = _fold(tmp_path, "--no-check")
    [entry] = document["entries"]
    assert entry["outcome"] == "folded_into_previous", entry
    assert [node.op_type for node in folded.graph.node] == ["Conv", "Reshape"]
    assert _dims(folded.graph.input[0]) == ["N", 3, "H", 4]
    inspected = CliRunner().invoke(cli, ["inspect", str(tmp_path / "reshape.onnx"), "--json"])
    assert json.loads(inspected.stdout)["entries"][0]["outcome"] == "folded_into_previous"


def test_the_default_check_sizes_prove_it_too(tmp_path):
    document, _ = _fold(tmp_path)
    assert document["entries"][0]["outcome"] == "folded_into_previous"
    assert document["check"]["passed"] is True
