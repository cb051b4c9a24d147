"""The library as a deployment pipeline calls it."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir

import bnfold

MODELS = Path(__file__).resolve().parent.parent / "models"


def without_shapes(path: Path) -> onnx.ModelProto:
    proto = onnx.load(path)
    del proto.graph.value_info[:]
    return proto


def test_in_memory_models_get_shapes_inferred_before_folding():
    """tf2onnx's Flatten and Reshape need shapes to be proven; a proto without value_info
    folds as completely as the file it came from."""
    from_file = bnfold.fold(MODELS / "tf2onnx_cnn.onnx")
    from_proto = bnfold.fold(without_shapes(MODELS / "tf2onnx_cnn.onnx"))
    in_place = ir.serde.deserialize_model(without_shapes(MODELS / "tf2onnx_cnn.onnx"))
    from_ir = bnfold.fold(in_place)
    expected = from_file.counts()
    assert expected["left"] == 0 and expected["found"] == 3
    assert from_proto.counts() == expected
    assert from_ir.counts() == expected and from_ir.model is in_place


def test_benchmark_folds_in_memory_and_times_both_models():
    measured = bnfold.benchmark(
        MODELS / "pytorch_style.onnx",
        bench=bnfold.BenchSettings(levels=("disable",), runs=4, warmup=1),
    )
    assert measured.fold is not None and measured.fold.counts()["folded_into_previous"] == 3
    assert measured.check is not None and measured.check.passed
    assert measured.sizes.before.nodes > measured.sizes.after.nodes
    assert [level.level for level in measured.latency.levels] == ["disable"]


def test_benchmark_of_two_files_checks_them_against_each_other(tmp_path):
    folded = tmp_path / "folded.onnx"
    bnfold.fold(MODELS / "pytorch_style.onnx", folded)
    measured = bnfold.benchmark(
        MODELS / "pytorch_style.onnx",
        folded,
        bench=bnfold.BenchSettings(levels=("all",), runs=3, warmup=1),
        check=bnfold.CheckSettings(samples=2, float64=True),
    )
    assert measured.fold is None
    assert measured.check is not None and measured.check.passed
