"""Weight ranges measured on folds of small models, each layout's output channels by hand."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from bnfold.fold import fold_model
from bnfold.layer_weights import WeightSnapshot, range_report
from bnfold.testing import batchnorm_node, make_model


def _scale_only_bn(channels: int, scale: list[float]) -> dict[str, np.ndarray]:
    """A BN with mean 0, var 1 - eps and beta 0: exactly ``y = scale * x``."""
    return {
        "bn_gamma": np.array(scale, np.float32),
        "bn_beta": np.zeros(channels, np.float32),
        "bn_mean": np.zeros(channels, np.float32),
        "bn_var": np.full(channels, 1 - 1e-5, np.float32),
    }


def _ranges(nodes, inputs, weights):
    model = ir.serde.deserialize_model(make_model(nodes, inputs, ["y"], weights))
    snapshot = WeightSnapshot(model)
    result = fold_model(model)
    assert all(entry.folded for entry in result.entries)
    return range_report(snapshot, model, result.entries)


def test_gemm_with_trans_b_scales_rows():
    weight = np.ones((4, 3), np.float32)  # [N, K] with transB: outputs on axis 0
    rows, warning = _ranges(
        [
            helper.make_node("Gemm", ["x", "w"], ["g"], name="fc", transB=1),
            batchnorm_node("g", "y"),
        ],
        [("x", TensorProto.FLOAT, [2, 3])],
        {"w": weight, **_scale_only_bn(4, [1.0, 1.0, 1.0, 40.0])},
    )
    [row] = rows
    assert (row.layer, row.op, row.channels) == ("fc", "Gemm", 4)
    assert np.isclose(row.before_max, 1.0) and np.isclose(row.after_max, 40.0, rtol=1e-5)
    assert np.isclose(row.spread_after, 40.0, rtol=1e-5) and row.spread_before == 1.0
    assert row.flagged and warning.startswith("Quantization:") and "fc (range 40x" in warning


def test_grouped_conv_transpose_measures_outputs_per_group():
    weight = np.ones((4, 1, 1, 1), np.float32)  # [in=4, out/g=1, 1, 1], group 2: 2 outputs
    rows, warning = _ranges(
        [
            helper.make_node("ConvTranspose", ["x", "w"], ["c"], name="up", group=2),
            batchnorm_node("c", "y"),
        ],
        [("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        {"w": weight, **_scale_only_bn(2, [2.0, 3.0])},
    )
    [row] = rows
    assert (row.op, row.channels) == ("ConvTranspose", 2)
    assert np.isclose(row.growth, 3.0, rtol=1e-5) and not row.flagged and warning == ""
