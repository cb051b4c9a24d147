"""Latency measurement: interleaved order, ordered percentiles, a bootstrap interval around the
point estimate, conditions recorded; tiny run counts keep it fast."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from bnfold.check import equivalence, latency
from bnfold.check.sizes import compare_sizes, model_sizes
from bnfold.errors import UsageError
from bnfold.fold import fold_model
from bnfold.frontends.onnx import input_specs
from bnfold.settings import BenchSettings, CheckSettings
from bnfold.testing import batchnorm_node, batchnorm_params, make_model


def conv_bn_model():
    rng = np.random.default_rng(0)
    weights = {"w": rng.normal(size=(8, 3, 3, 3)).astype(np.float32), **batchnorm_params(rng, 8)}
    return make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), batchnorm_node("c", "y")],
        [("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        ["y"],
        weights,
    )


def gemm_bn_model():
    rng = np.random.default_rng(1)
    weights = {"w": rng.normal(size=(10, 6)).astype(np.float32), **batchnorm_params(rng, 10)}
    return make_model(
        [
            helper.make_node("Gemm", ["x", "w"], ["g"], name="fc", transB=1),
            batchnorm_node("g", "logits"),
        ],
        [("x", TensorProto.FLOAT, ["N", 6])],
        ["logits"],
        weights,
    )


def folded(proto):
    model = ir.serde.deserialize_model(proto)
    fold_model(model)
    return model


def test_benchmark_is_interleaved_with_ordered_percentiles_and_recorded_conditions():
    proto = conv_bn_model()
    model = folded(proto)
    seen = []
    result = latency.benchmark(
        proto.SerializeToString(),
        model,
        input_specs(model),
        BenchSettings(runs=12, warmup=1, batch=3, threads=1),
        progress=seen.append,
    )
    assert [level.level for level in result.levels] == ["all", "disable"]
    assert [level.ort_level for level in result.levels] == ["ORT_ENABLE_ALL", "ORT_DISABLE_ALL"]
    assert sum(seen) == 24
    for level in result.levels:
        assert level.order == "AB" * 12
        for stats, samples in (
            (level.baseline, level.baseline_ms),
            (level.candidate, level.candidate_ms),
        ):
            assert stats.runs == len(samples) == 12
            assert 0 < stats.min <= stats.p50 <= stats.p90 <= stats.p99 <= stats.max
            assert stats.min <= stats.mean <= stats.max
        assert level.speedup == pytest.approx(level.baseline.p50 / level.candidate.p50)
        low, high = level.speedup_ci
        assert low <= level.speedup <= high
    assert result.batch == 3 and result.threads == 1
    assert result.provider == "CPUExecutionProvider"
    assert "x[3, 3, 12, 12]" in result.inputs
    assert result.machine.logical_cores >= 1 and result.machine.cpu
    assert set(result.machine.versions) >= {"bnfold", "onnxruntime", "onnx", "numpy"}


def test_time_budget_stops_early_but_keeps_three_pairs():
    proto = gemm_bn_model()
    result = latency.benchmark(
        proto.SerializeToString(),
        folded(proto),
        input_specs(folded(proto)),
        BenchSettings(levels=("disable",), runs=100_000, warmup=0, time_budget_s=0.02),
    )
    (level,) = result.levels
    assert level.stopped_by == "time budget"
    assert 3 <= level.baseline.runs < 100_000
    assert level.order == "AB" * level.baseline.runs


def test_bootstrap_interval_is_seeded_and_tracks_a_known_speedup():
    rng = np.random.default_rng(5)
    candidate = rng.uniform(1.0, 1.2, 200)
    baseline = 2.0 * candidate
    first = latency.bootstrap_speedup_ci(baseline, candidate, seed=3)
    assert first == latency.bootstrap_speedup_ci(baseline, candidate, seed=3)
    assert first[0] == pytest.approx(2.0, rel=0.05) and first[1] == pytest.approx(2.0, rel=0.05)


def test_unknown_provider_and_bad_counts_are_usage_errors():
    proto = gemm_bn_model()
    specs = input_specs(folded(proto))
    with pytest.raises(UsageError, match="not available"):
        latency.benchmark(
            proto.SerializeToString(),
            proto.SerializeToString(),
            specs,
            BenchSettings(provider="NoSuchProvider"),
        )
    with pytest.raises(UsageError):
        latency.benchmark(
            proto.SerializeToString(), proto.SerializeToString(), specs, BenchSettings(runs=0)
        )


def test_detailed_check_adds_float64_errors_top1_and_samples():
    proto = gemm_bn_model()
    model = folded(proto)
    check = equivalence.detailed_check(
        proto.SerializeToString(),
        model,
        input_specs(model),
        CheckSettings(samples=4, seed=7, float64=True),
    )
    (output,) = check.outputs
    assert check.samples == 4 and "seeds 7..10" in check.inputs
    assert output.shape == [8, 10]  # 4 samples of batch 2, joined along the batch axis
    assert output.top1_agreement == 1.0
    assert output.reference_vs_float64 is not None and output.reference_vs_float64 < 1e-6
    assert output.candidate_vs_float64 is not None and output.candidate_vs_float64 < 1e-6
    assert "float64" in check.float64_note


def test_float64_reference_is_skipped_with_a_note_when_onnxruntime_cannot_run_it():
    proto = conv_bn_model()
    model = folded(proto)
    check = equivalence.detailed_check(
        proto.SerializeToString(), model, input_specs(model), CheckSettings(float64=True)
    )
    assert check.passed
    assert check.outputs[0].candidate_vs_float64 is None
    assert (
        check.float64_note
        == "float64 reference skipped: onnxruntime has no float64 kernel for Conv"
    )


def test_float64_model_casts_initializers_inputs_and_cast_nodes():
    proto = make_model(
        [
            helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["c", "b"], ["y"]),
        ],
        [("x", TensorProto.FLOAT16, [2])],
        [("y", TensorProto.FLOAT, [2])],
        {"b": np.array([1.0, 2.0], np.float32)},
    )
    cast = equivalence.float64_model(proto.SerializeToString())
    assert cast.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    assert cast.graph.output[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    assert cast.graph.initializer[0].data_type == TensorProto.DOUBLE
    assert cast.graph.node[0].attribute[0].i == TensorProto.DOUBLE


def test_sizes_count_nodes_parameters_and_batchnorms_before_and_after():
    proto = conv_bn_model()
    sizes = compare_sizes(proto, folded(proto))
    assert sizes.before == model_sizes(proto)
    assert (sizes.before.nodes, sizes.after.nodes) == (2, 1)
    assert (sizes.before.batchnorm_nodes, sizes.after.batchnorm_nodes) == (1, 0)
    assert (sizes.before.affine_nodes, sizes.after.affine_nodes) == (1, 0)
    assert sizes.before.parameters == 8 * 3 * 3 * 3 + 4 * 8
    assert sizes.after.parameters == 8 * 3 * 3 * 3 + 8  # the bias the fold adds
    assert sizes.after.weight_bytes == 4 * sizes.after.parameters
