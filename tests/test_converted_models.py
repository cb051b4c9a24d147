"""The ONNX files in models/: what tf2onnx and PyTorch hand to bnfold folds completely."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import bnfold
from bnfold.testing import affine_tails_after_linear

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize("name", ["tf2onnx_mlp", "tf2onnx_cnn", "pytorch_style"])
def test_demo_onnx_model_folds_completely(tmp_path, name):
    source = MODELS / f"{name}.onnx"
    before = source.read_bytes()
    assert affine_tails_after_linear(onnx.load(source))
    result = bnfold.fold(source, output=tmp_path / "folded.onnx")
    folded = onnx.load(tmp_path / "folded.onnx")
    assert affine_tails_after_linear(folded) == []
    assert result.check is not None and result.check.max_rel <= 1e-5
    assert result.counts()["left"] == 0 and result.counts()["found"] == 3
    assert source.read_bytes() == before
    onnx.checker.check_model(folded, full_check=True)
