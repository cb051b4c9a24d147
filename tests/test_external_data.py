"""Models whose weights live in a separate .onnx.data file, as PyTorch's dynamo exporter
writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import bnfold
from bnfold.errors import InputError
from bnfold.testing import pytorch_style_model


def save_with_external_data(model: onnx.ModelProto, path: Path, location: str) -> None:
    onnx.save(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )


def test_fold_reads_and_writes_external_data(tmp_path, rng):
    source_dir = tmp_path / "exported"
    source_dir.mkdir()
    source = source_dir / "model.onnx"
    save_with_external_data(pytorch_style_model(rng), source, "model.onnx.data")
    before = {p.name: p.read_bytes() for p in source_dir.iterdir()}
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    result = bnfold.fold(source, output=out_dir / "folded.onnx")

    assert result.check is not None and result.check.max_rel <= 1e-5
    assert sorted(p.name for p in out_dir.iterdir()) == ["folded.onnx", "folded.onnx.data"]
    folded = onnx.load(out_dir / "folded.onnx", load_external_data=False)
    locations = {
        entry.value
        for tensor in folded.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {"folded.onnx.data"}
    assert "BatchNormalization" not in {node.op_type for node in folded.graph.node}
    assert bnfold.check(source, out_dir / "folded.onnx").passed
    assert {p.name: p.read_bytes() for p in source_dir.iterdir()} == before


def test_external_data_outside_the_model_folder_is_refused(tmp_path, rng):
    inner = tmp_path / "inner"
    inner.mkdir()
    model = pytorch_style_model(rng)
    save_with_external_data(model, tmp_path / "model.onnx", "weights.data")
    escaped = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    for tensor in escaped.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.data"
    onnx.save(escaped, inner / "model.onnx")
    with pytest.raises(InputError, match="outside the model's folder"):
        bnfold.fold(inner / "model.onnx", output=tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_missing_external_data_file_is_an_input_error(tmp_path, rng):
    save_with_external_data(pytorch_style_model(rng), tmp_path / "model.onnx", "w.data")
    (tmp_path / "w.data").unlink()
    with pytest.raises(InputError, match="missing"):
        bnfold.inspect(tmp_path / "model.onnx")


def test_library_accepts_protos_and_ir_models(rng):
    import onnx_ir as ir

    proto = pytorch_style_model(rng)
    from_proto = bnfold.fold(proto)
    from_ir = bnfold.fold(ir.serde.deserialize_model(proto))
    assert from_proto.check is not None and from_ir.check is not None
    assert from_proto.check.max_rel == from_ir.check.max_rel <= 1e-5
    assert np.isfinite(from_proto.check.max_abs)
