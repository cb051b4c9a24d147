"""Choosing what folds (--keep, --no-forward, FoldSettings), the CI gate
(inspect --fail-if-foldable) and what a fold does to int8 weight ranges; every fold is checked
by the pipeline against the original in onnxruntime with optimisations disabled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import bnfold
from bnfold.cli import cli
from bnfold.foldlog import Outcome, Reason
from bnfold.settings import FoldSettings
from bnfold.testing import batchnorm_node, batchnorm_params, make_model, op_types

DEMO = Path(__file__).resolve().parent.parent / "models" / "pytorch_style.onnx"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def by_name(result: bnfold.FoldResult) -> dict[str, bnfold.FoldEntry]:
    return {entry.name: entry for entry in result.entries}


def relu_bn_conv() -> onnx.ModelProto:
    """Relu -> BN -> Conv without padding: only a fold into the layer after the BN exists."""
    rng = np.random.default_rng(5)
    weights = {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32), **batchnorm_params(rng, 3)}
    return make_model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            batchnorm_node("r", "b"),
            helper.make_node("Conv", ["b", "w"], ["y"], name="conv", kernel_shape=[3, 3]),
        ],
        [("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        ["y"],
        weights,
    )


def conv_bn_one_loud_channel() -> onnx.ModelProto:
    """Conv -> BN whose channel 0 has a tiny variance: the fold scales it by about 300."""
    rng = np.random.default_rng(7)
    params = batchnorm_params(rng, 8)
    params["bn_gamma"][:] = 1.0
    params["bn_var"][:] = 1.0
    params["bn_var"][0] = 1e-5
    weights = {"w": rng.normal(size=(8, 3, 1, 1)).astype(np.float32), **params}
    return make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
            batchnorm_node("c", "y"),
        ],
        [("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        ["y"],
        weights,
    )


# --------------------------------------------------------------------------- the library


def test_a_kept_bn_stays_and_the_rest_fold(tmp_path):
    out = tmp_path / "kept.onnx"
    result = bnfold.fold(str(DEMO), out, fold=FoldSettings(keep=("bn2",)))
    entries = by_name(result)
    assert entries["bn2"].outcome is Outcome.LEFT
    assert entries["bn2"].reason is Reason.KEPT_BY_USER
    assert entries["bn1"].folded and entries["bn3"].folded
    assert result.check is not None and result.check.passed and result.check.max_rel < 1e-5
    assert op_types(onnx.load(out)).count("BatchNormalization") == 1
    assert result.counts()["left_by_reason"] == {"kept_by_user": 1}


def test_a_glob_keeps_every_bn_it_matches():
    result = bnfold.inspect(str(DEMO), fold=FoldSettings(keep=("bn[13]", "*2")))
    assert [entry.reason for entry in result.entries] == [Reason.KEPT_BY_USER] * 3


def test_a_keep_pattern_that_matches_no_bn_is_a_usage_error():
    with pytest.raises(
        bnfold.UsageError,
        match=r"--keep 'conv\*' matches no BN .*named as the log prints them: bn\d",
    ):
        bnfold.inspect(str(DEMO), fold=FoldSettings(keep=("bn1", "conv*")))


def test_no_forward_leaves_a_bn_only_the_next_layer_could_take():
    proto = relu_bn_conv()
    assert by_name(bnfold.inspect(proto))["bn"].outcome is Outcome.FOLDED_INTO_NEXT
    result = bnfold.fold(relu_bn_conv(), fold=FoldSettings(forward=False))
    assert by_name(result)["bn"].outcome is Outcome.LEFT
    assert by_name(result)["bn"].reason is Reason.NO_LINEAR_NEIGHBOUR
    assert result.check is not None and result.check.passed


def test_weight_ranges_name_the_layer_a_fold_widened():
    result = bnfold.fold(conv_bn_one_loud_channel())
    assert result.check is not None and result.check.passed
    [row] = result.weight_ranges or []
    assert row.layer == "conv" and row.op == "Conv" and row.channels == 8 and row.flagged
    assert row.growth > 8 and row.spread_after > 16 and row.spread_before < 16
    assert "conv (range" in result.weight_range_warning


# --------------------------------------------------------------------------- the command line


def test_cli_keep_and_no_forward(tmp_path):
    out = tmp_path / "f.onnx"
    code, stdout, _ = run(str(DEMO), "-o", str(out), "--keep", "bn1", "--keep", "bn3")
    assert code == 0
    assert "bn1  BatchNormalization  left: kept_by_user" in stdout
    assert "Found 3: 1 folded into previous, 0 into next, 2 left (kept_by_user 2)" in stdout
    model = tmp_path / "relu_bn_conv.onnx"
    onnx.save(relu_bn_conv(), model)
    code, stdout, _ = run(str(model), "-o", str(out), "--no-forward", "--json")
    assert code == 0 and json.loads(stdout)["counts"]["folded_into_next"] == 0


def test_cli_keep_pattern_matching_nothing_exits_2_naming_it(tmp_path):
    out = tmp_path / "f.onnx"
    code, _, stderr = run(str(DEMO), "-o", str(out), "--keep", "bn_typo")
    assert code == 2 and "--keep 'bn_typo' matches no BN" in stderr
    assert not out.exists()


def test_fail_if_foldable_gates_on_what_could_still_fold(tmp_path):
    code, stdout, stderr = run("inspect", str(DEMO), "--fail-if-foldable")
    assert code == 1
    assert stderr.strip().splitlines()[-1] == "bnfold: 3 BN could still fold: bn1, bn2, bn3"
    assert "Found 3" in stdout
    folded = tmp_path / "folded.onnx"
    assert run(str(DEMO), "-o", str(folded))[0] == 0
    code, stdout, stderr = run("inspect", str(folded), "--fail-if-foldable")
    assert code == 0 and stderr == ""
    code, _, _ = run("inspect", str(DEMO), "--fail-if-foldable", "--keep", "bn*")
    assert code == 0  # a BN kept on purpose is not one left behind


def test_fail_if_foldable_with_json_still_prints_the_document():
    code, stdout, _ = run("inspect", str(DEMO), "--fail-if-foldable", "--json")
    assert code == 1 and json.loads(stdout)["counts"]["folded_into_previous"] == 3


def test_text_log_ends_with_the_quantization_line(tmp_path):
    model = tmp_path / "loud.onnx"
    onnx.save(conv_bn_one_loud_channel(), model)
    code, stdout, _ = run("inspect", str(model), "--json")
    document = json.loads(stdout)
    assert code == 0 and document["weight_ranges"]["layers"][0]["flagged"] is True
    code, stdout, _ = run(str(model), "-o", str(tmp_path / "f.onnx"))
    log = stdout.split("\nCheck on")[0].splitlines()
    assert log[-2].startswith("Found 1: 1 folded into previous")
    assert log[-1].startswith("Quantization: the fold widened 1 layer(s) past per-tensor int8")
    assert log[-1].endswith("per-channel weight quantization avoids it")
    code, stdout, _ = run(str(DEMO), "-o", str(tmp_path / "g.onnx"))
    assert "Quantization" not in stdout  # the demo's BNs leave int8 alone


@pytest.mark.keras
def test_a_kept_keras_bn_is_not_folded_by_the_onnx_pass_either(tmp_path):
    pytest.importorskip("tensorflow")
    source = Path(__file__).resolve().parent.parent / "models" / "small_cnn.keras"
    out = tmp_path / "cnn.onnx"
    result = bnfold.fold(str(source), out, fold=FoldSettings(keep=("depthwise_bn",)))
    entries = by_name(result)
    assert entries["depthwise_bn"].reason is Reason.KEPT_BY_USER
    assert entries["conv_bn"].folded
    assert result.check is not None and result.check.passed
    nodes = onnx.load(out).graph.node
    assert any("depthwise_bn" in node.name and node.op_type == "Mul" for node in nodes)


@pytest.mark.keras
def test_keep_base_star_keeps_every_bn_of_a_nested_keras_model(tmp_path):
    keras = pytest.importorskip("keras")
    from bnfold.frontends.keras import randomise_batchnorm_statistics

    layers = keras.layers
    keras.utils.set_random_seed(0)
    base = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(4, 3, name="conv"),
            layers.BatchNormalization(name="bn_a"),
            layers.ReLU(),
            layers.Conv2D(4, 1, name="conv2"),
            layers.BatchNormalization(name="bn_b"),
        ],
        name="base",
    )
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            base,
            layers.Conv2D(2, 1, name="head"),
            layers.BatchNormalization(name="head_bn"),
        ]
    )
    randomise_batchnorm_statistics(model, np.random.default_rng(3))
    out = tmp_path / "kept.keras"
    result = bnfold.fold(model, out, fold=FoldSettings(keep=("base/*",)))
    entries = by_name(result)
    assert entries["base/bn_a"].reason is Reason.KEPT_BY_USER
    assert entries["base/bn_b"].reason is Reason.KEPT_BY_USER
    assert entries["head_bn"].outcome is Outcome.FOLDED_INTO_PREVIOUS
    assert result.check is not None and result.check.passed
    written = keras.models.load_model(out)
    kinds = [type(layer).__name__ for layer in written.get_layer("base").layers]
    assert kinds.count("BatchNormalization") == 2
    assert "BatchNormalization" not in [type(layer).__name__ for layer in written.layers]


def test_one_pattern_given_as_a_string_is_one_pattern():
    assert FoldSettings(keep="bn1").keep == ("bn1",)  # type: ignore[arg-type]
    assert FoldSettings(keep=["bn1", "bn2"]).keep == ("bn1", "bn2")  # type: ignore[arg-type]


@pytest.mark.keras
def test_a_kept_bn_of_a_shared_keras_layer_stays_in_onnx(tmp_path):
    """The Keras pass leaves both BNs (a shared Dense) for that reason; the ONNX pass, which
    folds them into per-call copies otherwise, keeps the one the user named."""
    pytest.importorskip("tensorflow")
    from bnfold.frontends.keras import randomise_batchnorm_statistics
    from tests.test_keras_log import onnx_batchnorms_left, shared_dense

    model = shared_dense()
    randomise_batchnorm_statistics(model, np.random.default_rng(2))
    out = tmp_path / "shared.onnx"
    result = bnfold.fold(model, out, fold=FoldSettings(keep=("bn_a",)))
    entries = by_name(result)
    assert entries["bn_a"].outcome is Outcome.LEFT and entries["bn_b"].folded
    assert result.check is not None and result.check.passed
    assert onnx_batchnorms_left(out) == 1


@pytest.mark.keras
def test_no_forward_holds_for_a_keras_model_written_as_onnx(tmp_path):
    """Every BN of this classifier folds only into the Dense after it; with --no-forward
    neither the Keras pass nor the ONNX pass after the conversion folds one."""
    pytest.importorskip("tensorflow")
    source = Path(__file__).resolve().parent.parent / "models" / "flatten_bn_classifier.keras"
    out = tmp_path / "backward_only.onnx"
    code, stdout, _ = run(str(source), "-o", str(out), "--no-forward", "--json")
    document = json.loads(stdout)
    assert code == 0 and document["check"]["passed"]
    assert document["counts"]["found"] == 3 and document["counts"]["left"] == 3
    assert {entry["reason"] for entry in document["entries"]} == {"no_linear_neighbour"}
