"""``bnfold bench`` and ``--bench``/``--report`` on the fold command, through click's runner."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from bnfold.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "pytorch_style.onnx"
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())
FAST = ["--runs", "3", "--warmup", "0"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    return result.exit_code, result.stdout, result.stderr


def valid(document: dict) -> dict:
    jsonschema.validate(document, SCHEMA, cls=jsonschema.Draft202012Validator)
    return document


def test_bench_folds_in_memory_and_writes_an_html_report(tmp_path):
    report = tmp_path / "report.html"
    code, stdout, stderr = run("bench", DEMO, *FAST, "--level", "disable", "--report", report)
    assert code == 0, stderr
    assert "folded into previous conv" in stdout
    assert "ORT_DISABLE_ALL" in stdout and "ORT_ENABLE_ALL" not in stdout
    assert "1 thread(s), batch 1" in stdout
    assert "Timing (interleaved)" in stderr  # the progress bar's label
    page = report.read_text()
    assert page.count("<svg") == 1 and "Fold log (3 BN)" in page
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.html"]  # no temp left


def test_bench_two_files_prints_schema_valid_json(tmp_path):
    folded = tmp_path / "folded.onnx"
    assert run(DEMO, "-o", folded)[0] == 0
    code, stdout, _ = run(
        "bench", DEMO, folded, *FAST, "--threads", "2", "--batch", "3", "--samples", "2", "--json"
    )
    assert code == 0
    document = valid(json.loads(stdout))
    assert document["command"] == "bench" and document["candidate"] == str(folded)
    assert document["counts"] is None and document["entries"] == []
    assert document["sizes"]["before"]["batchnorm_nodes"] == 3
    assert document["sizes"]["after"]["batchnorm_nodes"] == 0
    latency = document["latency"]
    assert (latency["threads"], latency["batch"]) == (2, 3)
    assert [level["order"] for level in latency["levels"]] == ["ABABAB", "ABABAB"]
    assert document["check"]["samples"] == 2 and document["check"]["passed"] is True


def test_fold_with_bench_and_json_report(tmp_path):
    out, report = tmp_path / "f.onnx", tmp_path / "r.json"
    code, stdout, _ = run(DEMO, "-o", out, "--bench", "--report", report)
    assert code == 0 and out.exists()
    assert "Latency in ms" in stdout and "Wrote" in stdout
    document = valid(json.loads(report.read_text()))
    assert document["output"] == str(out)
    assert document["counts"]["folded_into_previous"] == 3
    assert len(document["latency"]["levels"]) == 2
    assert document["check"]["outputs"][0]["top1_agreement"] == 1.0


def test_fold_report_is_written_even_when_the_check_fails(tmp_path):
    out, report = tmp_path / "f.onnx", tmp_path / "r.md"
    code, _, _ = run(DEMO, "-o", out, "--rtol", "0", "--atol", "0", "--report", report)
    assert code == 1 and not out.exists()
    assert "**FAIL**" in report.read_text()


def test_bench_exits_1_when_the_candidate_differs(tmp_path):
    proto = onnx.load(DEMO)
    for tensor in proto.graph.initializer:
        if tensor.name.startswith("fc"):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 2, tensor.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, broken)
    code, stdout, stderr = run("bench", DEMO, broken, *FAST, "--level", "all")
    assert code == 1
    assert "FAIL" in stdout and "Latency in ms" in stdout
    assert stderr.strip().splitlines()[-1].startswith(f"bnfold: error: {broken} differs from")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["bench", DEMO, "--report", "r.txt"], 2, "must end in .json, .md or .html"),
        (["bench", DEMO, "--level", "fast"], 2, "Invalid value for '--level'"),
        (["bench", DEMO, "--runs", "0"], 2, "Invalid value for '--runs'"),
        (["bench", DEMO, *FAST, "--provider", "NoSuchProvider"], 2, "is not available here"),
        (["bench", "missing.onnx"], 3, "no such file"),
        ([DEMO, "-o", "x.onnx", "--report", "r.csv"], 2, "must end in .json, .md or .html"),
        ([DEMO, "-o", "x.keras", "--bench"], 2, "--bench times ONNX models"),
    ],
)
def test_bench_usage_errors_are_one_line_with_the_documented_code(tmp_path, args, code, message):
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == code
    assert message in result.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium")
def test_html_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    report = tmp_path / "report.html"
    assert run("bench", DEMO, *FAST, "--report", report)[0] == 0
    screenshot = tmp_path / "shot.png"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "html_screenshot.py"), report, screenshot],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.frombuffer(screenshot.read_bytes(), np.uint8).size > 10_000


def test_check_with_samples_compares_several_seeded_input_sets(tmp_path):
    folded = tmp_path / "folded.onnx"
    assert run(DEMO, "-o", folded)[0] == 0
    code, stdout, _ = run("check", DEMO, folded, "--samples", "3", "--json")
    assert code == 0
    document = valid(json.loads(stdout))
    assert document["check"]["samples"] == 3
    assert "seeds 0..2" in document["check"]["inputs"]
    assert document["check"]["outputs"][0]["shape"][0] == 6  # 3 samples of batch 2
