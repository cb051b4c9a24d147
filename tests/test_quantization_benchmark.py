"""benchmarks/quantization.py end to end on one small model, so the script behind the
quantization table of docs/benchmarks.md (run there at 224x224) keeps running."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime.quantization")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import quantization


def test_every_variant_is_quantized_and_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(quantization, "STATISTICS_SAMPLES", 16)  # seconds, not half a minute
    args = argparse.Namespace(seed=0, image_size=32, calibration=2, samples=2)
    row = quantization.measure("mobilenetv2", "calibrated", tmp_path, args)
    assert row.folded == "52/52" and row.fold_max_rel < 1e-4
    variants = {
        (label, granularity)
        for label in ("original", "folded")
        for granularity in ("per-tensor", "per-channel")
    }
    assert set(row.errors) == variants
    assert all(0 < error < 10 and math.isfinite(error) for error in row.errors.values())
    assert "| mobilenetv2 | calibrated | 52/52 |" in quantization.table([row])
