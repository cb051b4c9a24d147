"""A model onnxruntime may crash on runs in a child process: its outputs come back as they
would in-process, and a crash is one line naming the model (exit 3, nothing written)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from bnfold.cli import cli
from bnfold.frontends import onnx_isolation as isolation
from bnfold.frontends.onnx_run import run_model

CHANNELS = 3


def conv_then_bn(opset: int, bn_outputs: list[str]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    values = {
        "w": rng.normal(size=(CHANNELS, CHANNELS, 1, 1)),
        "s": rng.uniform(0.5, 1.5, CHANNELS),
        "b": rng.normal(size=CHANNELS),
        "m": rng.normal(size=CHANNELS),
        "v": rng.uniform(0.5, 2.0, CHANNELS),
    }
    inits = [
        helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in values.items()
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], bn_outputs, name="bn"),
    ]
    shape = [1, CHANNELS, 4, 4]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def test_only_old_batchnorms_with_optional_outputs_need_a_child() -> None:
    risky = ir.serde.deserialize_model(conv_then_bn(9, ["y", "", "", "", ""]))
    plain = ir.serde.deserialize_model(conv_then_bn(9, ["y"]))
    modern = ir.serde.deserialize_model(conv_then_bn(15, ["y"]))
    assert isolation.needs_isolation(risky)
    assert not isolation.needs_isolation(plain)
    assert not isolation.needs_isolation(modern)


def test_the_child_computes_what_the_process_would() -> None:
    """Compared with the same layers at opset 15 run here: the opset-9 model itself has been
    seen to crash onnxruntime in this very process."""
    proto = conv_then_bn(9, ["y", "", "", "", ""])
    feeds = {"x": np.random.default_rng(1).normal(size=(1, CHANNELS, 4, 4)).astype(np.float32)}
    isolated = isolation.run_isolated(ir.serde.deserialize_model(proto), feeds, "m.onnx")
    in_process = run_model(conv_then_bn(15, ["y"]).SerializeToString(), feeds)
    np.testing.assert_allclose(isolated["y"], in_process["y"], rtol=1e-6, atol=1e-6)


def crashing_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand in for onnxruntime crashing: the child kills itself with SIGSEGV."""
    command = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    monkeypatch.setattr(isolation, "_child_command", lambda folder: command)


def test_a_crash_is_one_line_naming_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    crashing_child(monkeypatch)
    model = ir.serde.deserialize_model(conv_then_bn(9, ["y", "", "", "", ""]))
    feeds = {"x": np.zeros((1, CHANNELS, 4, 4), np.float32)}
    with pytest.raises(Exception, match=r"onnxruntime crashed \(SIGSEGV\) running m\.onnx"):
        isolation.run_isolated(model, feeds, "m.onnx")


def test_the_cli_exits_3_and_writes_nothing_when_onnxruntime_crashes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    crashing_child(monkeypatch)
    source, out = tmp_path / "bn9.onnx", tmp_path / "out.onnx"
    onnx.save(conv_then_bn(9, ["y", "", "", "", ""]), source)
    result = CliRunner().invoke(cli, [str(source), "-o", str(out)])
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "crashed (SIGSEGV)" in lines[0] and "--no-check" in lines[0]
    assert not out.exists()
    # Without the check nothing runs in onnxruntime: the fold itself goes through.
    assert CliRunner().invoke(cli, [str(source), "-o", str(out), "--no-check"]).exit_code == 0
