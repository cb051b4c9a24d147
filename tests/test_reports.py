"""Every report format on small models: terminal text, JSON (validated against
docs/report.schema.json), Markdown and self-contained HTML with the latency plot."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import jsonschema
import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from bnfold import report
from bnfold.check import equivalence, latency
from bnfold.check.sizes import compare_sizes
from bnfold.fold import fold_model
from bnfold.frontends.onnx import input_specs
from bnfold.results import FoldResult
from bnfold.settings import BenchSettings, CheckSettings
from bnfold.testing import batchnorm_node, batchnorm_params, make_model

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "report.schema.json"


@pytest.fixture(scope="module")
def schema():
    document = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(document)
    return document


def validate(document, schema):
    # Through a JSON round trip: what a reader of the file sees.
    jsonschema.validate(
        json.loads(json.dumps(document)), schema, cls=jsonschema.Draft202012Validator
    )


@pytest.fixture(scope="module")
def pieces():
    """A classifier with a BN after Gemm and a BN that cannot fold (after Relu)."""
    rng = np.random.default_rng(2)
    weights = {
        "w": rng.normal(size=(6, 4)).astype(np.float32),
        **batchnorm_params(rng, 6, "bn_fc"),
        **batchnorm_params(rng, 6, "bn_relu"),
    }
    proto = make_model(
        [
            helper.make_node("Gemm", ["x", "w"], ["g"], name="fc", transB=1),
            batchnorm_node("g", "b", "bn_fc"),
            helper.make_node("Relu", ["b"], ["r"], name="relu"),
            batchnorm_node("r", "logits", "bn_relu"),
        ],
        [("x", TensorProto.FLOAT, ["N", 4])],
        ["logits"],
        weights,
    )
    model = ir.serde.deserialize_model(proto)
    folded = fold_model(model)
    specs = input_specs(model)
    check = equivalence.detailed_check(
        proto.SerializeToString(), model, specs, CheckSettings(samples=2, float64=True)
    )
    sizes = compare_sizes(proto, model)
    timing = latency.benchmark(
        proto.SerializeToString(),
        model,
        specs,
        BenchSettings(runs=6, warmup=1),
        names=("a<b>.onnx", "folded"),
    )
    result = FoldResult(model, folded.entries, check=check, sizes=sizes, latency=timing)
    return result, check, sizes, timing


def document_of(pieces):
    result, check, sizes, timing = pieces
    return report.result_document(
        result, source="a<b>.onnx", check=check, sizes=sizes, latency=timing, command="bench"
    )


def test_json_document_has_stable_keys_and_matches_the_schema(pieces, schema):
    document = document_of(pieces)
    validate(document, schema)
    assert document["schema"] == "bnfold.report/1"
    assert document["sizes"]["before"]["batchnorm_nodes"] == 2
    assert document["sizes"]["after"]["batchnorm_nodes"] == 1
    assert [level["level"] for level in document["latency"]["levels"]] == ["all", "disable"]
    assert document["latency"]["threads"] == 1 and document["latency"]["batch"] == 1
    assert document["check"]["samples"] == 2
    assert document["check"]["outputs"][0]["top1_agreement"] == 1.0


def test_plain_fold_document_and_check_document_match_the_schema(pieces, schema):
    plain = report.result_document(FoldResult(None, pieces[0].entries), source="m.onnx")
    validate(plain, schema)
    assert plain["latency"] is None and plain["sizes"] is None
    validate(report.check_document(pieces[1], reference="a", candidate="b"), schema)


def test_schema_rejects_a_document_with_a_wrong_version_or_unordered_runs(pieces, schema):
    document = json.loads(json.dumps(document_of(pieces)))
    document["schema"] = "bnfold.report/9"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
    document = json.loads(json.dumps(document_of(pieces)))
    document["latency"]["levels"][0]["order"] = "AABB"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)


def test_terminal_report_shows_sizes_latency_and_float64_columns(pieces):
    text = report.render_text(document_of(pieces))
    assert "Found 2: 1 folded into previous, 0 into next, 1 left" in text
    assert re.search(r"BatchNormalization nodes\s+2\s+1\s+-1", text)
    assert "orig~f64" in text and "top-1" in text and "100.0%" in text
    assert "1 thread(s), batch 1" in text
    assert "ORT_ENABLE_ALL" in text and "ORT_DISABLE_ALL" in text
    assert re.search(r"speedup \d+\.\d{3}x \(95% CI \d+\.\d{3}-\d+\.\d{3}\)", text)


def test_markdown_report_has_tables_and_the_log_folded_away(pieces):
    text = report.render_report(document_of(pieces), ".md")
    assert text.startswith("### bnfold report: `a<b>.onnx`")
    assert "| BatchNormalization nodes | 2 | 1 | -1 |" in text
    assert "| ORT_ENABLE_ALL | **speedup** |" in text
    assert "<details><summary>Fold log (2 BN)</summary>" in text
    assert "| bn_fc | BatchNormalization | folded into previous fc |" in text
    # every table row has the same number of cells as its header
    for block in re.findall(r"((?:^\|.*\|\n)+)", text, flags=re.M):
        rows = block.strip().splitlines()
        assert len({row.count("|") - row.count("\\|") for row in rows[:2]}) == 1


def test_html_report_is_self_contained_with_one_plot_per_level(pieces):
    document = document_of(pieces)
    page = report.render_report(document, ".html")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    assert "https://" not in page and "<link" not in page
    assert page.count("<svg") == 2
    assert page.count('class="ecdf baseline"') == 2 and page.count('class="ecdf candidate"') == 2
    assert "a&lt;b&gt;.onnx" in page and "a<b>.onnx" not in page
    assert "Fold log (2 BN)" in page and "left: " in page


def test_ecdf_path_visits_every_sample(pieces):
    level = document_of(pieces)["latency"]["levels"][0]
    svg = report.latency_svg(level, {"baseline": "a", "candidate": "b"})
    path = re.search(r'<path d="([^"]+)"[^>]*class="ecdf baseline"', svg)
    assert path is not None
    # one horizontal and one vertical segment per sample, plus the start and the tail
    assert path.group(1).count("L") == 2 * len(level["baseline_ms"]) + 1


def test_render_report_refuses_an_unknown_suffix(pieces):
    with pytest.raises(ValueError, match=r"\.json, \.md or \.html"):
        report.render_report(document_of(pieces), ".txt")


def conv_bias_add_and_bn_model():
    """A bias-free Conv whose bias is a separate Add (not a BN: no scale), then Relu, then a
    Conv with a BatchNormalization after it: one BN and one other constant affine."""
    rng = np.random.default_rng(4)
    weights = {
        "w1": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "bias": rng.normal(size=(1, 4, 1, 1)).astype(np.float32),
        "w2": rng.normal(size=(5, 4, 1, 1)).astype(np.float32),
        **batchnorm_params(rng, 5),
    }
    return make_model(
        [
            helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
            helper.make_node("Add", ["c1", "bias"], ["a"], name="conv1_bias"),
            helper.make_node("Relu", ["a"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2"),
            batchnorm_node("c2", "y"),
        ],
        [("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        ["y"],
        weights,
    )


def test_other_constant_affines_are_listed_apart_and_every_format_agrees(tmp_path, schema):
    import onnx

    import bnfold
    from bnfold.fold import METADATA_KEY

    result = bnfold.fold(conv_bias_add_and_bn_model(), tmp_path / "f.onnx")
    kinds = sorted((entry.kind, entry.name) for entry in result.entries)
    assert kinds == [("affine", "conv1_bias"), ("batchnorm", "bn")]
    counts = result.counts()
    assert (counts["found"], counts["folded_into_previous"], counts["left"]) == (1, 1, 0)
    assert counts["affines_folded"] == 1
    document = report.result_document(result, source="m.onnx")
    validate(document, schema)
    text = report.render_text(document)
    assert "Found 1: 1 folded into previous, 0 into next, 0 left" in text
    assert "Other constant affines folded: 1 (not counted as BN)" in text
    markdown = report.render_report(document, ".md")
    assert "1 BN found, 1 folded, 0 left; 1 other constant affines folded" in markdown
    assert "Fold log (1 BN)" in markdown and "Other constant affines folded (1)" in markdown
    page = report.render_report(document, ".html")
    assert "Fold log (1 BN)" in page and "Other constant affines folded (1)" in page
    assert json.loads(report.render_report(document, ".json"))["counts"] == counts
    written = {p.key: p.value for p in onnx.load(tmp_path / "f.onnx").metadata_props}
    assert json.loads(written[METADATA_KEY]) == {
        "found": 1,
        "folded_into_previous": 1,
        "folded_into_next": 0,
        "left": 0,
        "affines_folded": 1,
    }


def test_the_gate_names_the_bound_that_decided():
    from bnfold.report.document import gate
    from bnfold.results import OutputComparison

    tiny = OutputComparison("y", "float32", [2], 3e-6, 0.8, 1e-6, 1e-4, 1e-5, True, scale=3.6e-6)
    assert gate(asdict(tiny)).startswith("pass: max abs 3e-06 <= 1e-05 = atol 1e-05 + rtol")
    large = OutputComparison("y", "float32", [2], 9e-5, 3e-7, 1e-6, 1e-4, 1e-5, True, scale=265.0)
    assert gate(asdict(large)).endswith("= rtol 0.0001 x max|orig| 265 + atol 1e-05")
    failed = OutputComparison("y", "float32", [2], 1.0, 0.5, 0.1, 1e-4, 1e-5, False, scale=2.0)
    assert gate(asdict(failed)).startswith("FAIL: max abs 1 > 0.00021")


def test_weight_ranges_table_in_every_format(schema):
    from bnfold.results import WeightRange

    rows = [
        WeightRange("conv", "Conv", 8, 1.0, 12.0, 12.0, 1.5, 30.0, True),
        WeightRange("fc", "Gemm", 4, 2.0, 2.0, 1.0, 1.0, float("inf"), True),
    ]
    result = FoldResult(None, [], weight_ranges=rows, weight_range_warning="Quantization: x")
    document = report.result_document(result, source="m.onnx")
    validate(json.loads(report.json_text(document)), schema)  # inf is written as null
    assert document["weight_ranges"]["layers"][0]["growth"] == 12.0
    markdown = report.render_markdown(document)
    assert "| conv | Conv | 8 | 1 | 12 | 12x ! | 1.5x | 30x ! |" in markdown
    assert "max\\|W\\| before" in markdown and "**Quantization: x**" in markdown
    page = report.render_html(document)
    assert "<td>12x !</td>" in page and "Quantization: x" in page
    unmeasured = report.result_document(FoldResult(None, []), source="m.keras")
    assert unmeasured["weight_ranges"] is None
    validate(unmeasured, schema)
