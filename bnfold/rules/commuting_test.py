from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from bnfold.foldlog import Outcome, Reason
from bnfold.testing import batchnorm_node, batchnorm_params, fold_and_compare, make_model, op_types

FLOAT = TensorProto.FLOAT
C = 4
INPUT = [2, C, 6, 6]


def _int64(*values):
    return np.array(values, dtype=np.int64)


# name -> (nodes reading "a" and writing "p", their initializers, rank of "p")
OPS = {
    "maxpool": (
        [helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], pads=[1] * 4)],
        {},
        4,
    ),
    "global_maxpool": ([helper.make_node("GlobalMaxPool", ["a"], ["p"])], {}, 4),
    "avgpool_pads_not_counted": (
        [helper.make_node("AveragePool", ["a"], ["p"], kernel_shape=[3, 3], pads=[1] * 4)],
        {},
        4,
    ),
    "avgpool_no_pads_counted": (
        [helper.make_node("AveragePool", ["a"], ["p"], kernel_shape=[2, 2], count_include_pad=1)],
        {},
        4,
    ),
    "global_avgpool": ([helper.make_node("GlobalAveragePool", ["a"], ["p"])], {}, 4),
    "reducemean_keepdims": (
        [helper.make_node("ReduceMean", ["a"], ["p"], axes=[2, 3])],
        {},
        4,
    ),
    "reducemean_dropdims": (
        [helper.make_node("ReduceMean", ["a"], ["p"], axes=[-1, 2], keepdims=0)],
        {},
        2,
    ),
    "reducemax": ([helper.make_node("ReduceMax", ["a"], ["p"], axes=[3])], {}, 4),
    "resize_nearest": (
        [helper.make_node("Resize", ["a", "", "scales"], ["p"], mode="nearest")],
        {"scales": np.array([1, 1, 2, 2], np.float32)},
        4,
    ),
    "resize_linear": (
        [helper.make_node("Resize", ["a", "", "scales"], ["p"], mode="linear")],
        {"scales": np.array([1, 1, 1.5, 2], np.float32)},
        4,
    ),
    "resize_cubic": (
        [helper.make_node("Resize", ["a", "", "scales"], ["p"], mode="cubic")],
        {"scales": np.array([1, 1, 2, 0.5], np.float32)},
        4,
    ),
    "slice": (
        [helper.make_node("Slice", ["a", "starts", "ends", "axes"], ["p"])],
        {"starts": _int64(1, 0), "ends": _int64(5, -1), "axes": _int64(2, 3)},
        4,
    ),
    "gather_vector": (
        [helper.make_node("Gather", ["a", "idx"], ["p"], axis=3)],
        {"idx": _int64(0, 5, 2)},
        4,
    ),
    "gather_scalar": (
        [helper.make_node("Gather", ["a", "idx"], ["p"], axis=2)],
        {"idx": np.array(3, dtype=np.int64)},
        3,
    ),
    "dropout": (
        [helper.make_node("Dropout", ["a", "ratio"], ["p"])],
        {"ratio": np.array(0.3, np.float32)},
        4,
    ),
    "identity": ([helper.make_node("Identity", ["a"], ["p"])], {}, 4),
}


def _linear(rng, data, output, rank, in_channels, name, out_channels=3):
    """A layer reading ``C`` channels on axis 1: Gemm at rank 2, else a 1x1 convolution."""
    if rank == 2:
        weight = rng.normal(size=(out_channels, in_channels)).astype(np.float32)
        return helper.make_node("Gemm", [data, f"{name}_w"], [output], name=name, transB=1), weight
    weight = rng.normal(size=(out_channels, in_channels) + (1,) * (rank - 2)).astype(np.float32)
    return helper.make_node("Conv", [data, f"{name}_w"], [output], name=name), weight


def _model(rng, op, *, forward, gamma_sign=1.0, shift=True, in_channels=C):
    """Backward: Conv -> op -> BN. Forward: Relu -> BN -> op -> linear layer. Without a shift
    the BN is a Mul by a ``[C, 1, 1]`` constant."""
    nodes, inits, rank = OPS[op]
    params = batchnorm_params(rng, C)
    params["bn_gamma"] *= np.float32(gamma_sign)
    inits = {**inits, **params}
    if shift:
        affine = batchnorm_node("r" if forward else "p", "a" if forward else "y")
    else:
        inits = {**inits, "scale": params["bn_gamma"].reshape(C, 1, 1)}
        affine = helper.make_node(
            "Mul", ["r" if forward else "p", "scale"], ["a" if forward else "y"], name="bn"
        )
    if forward:
        layer, weight = _linear(rng, "p", "y", rank, in_channels, "layer")
        graph = [helper.make_node("Relu", ["x"], ["r"]), affine, *nodes, layer]
    else:
        layer, weight = _linear(rng, "x", "a", 4, C, "layer", C)
        graph = [layer, *nodes, affine]
    inits["layer_w"] = weight
    return make_model(graph, [("x", FLOAT, INPUT)], ["y"], inits)


@pytest.mark.parametrize("forward", [False, True])
@pytest.mark.parametrize("op", sorted(OPS))
def test_batchnorm_travels_through(rng, op, forward):
    if (not forward and op.endswith("dropdims")) or (not forward and op == "gather_scalar"):
        pytest.skip("a BN after a rank-2/3 op reads another axis as channels")
    result, check, folded = fold_and_compare(_model(rng, op, forward=forward))
    [entry] = result.entries
    assert entry.folded, f"{entry.reason}: {entry.detail}"
    expected = Outcome.FOLDED_INTO_NEXT if forward else Outcome.FOLDED_INTO_PREVIOUS
    assert entry.outcome is expected
    assert entry.target == ["layer"]
    assert "BatchNormalization" not in op_types(folded)
    assert check.max_rel <= 1e-5, check.max_rel


@pytest.mark.parametrize("forward", [False, True])
@pytest.mark.parametrize("op", ["maxpool", "global_maxpool", "reducemax"])
def test_a_scale_below_zero_does_not_cross_a_maximum(rng, op, forward):
    result, check, folded = fold_and_compare(_model(rng, op, forward=forward, gamma_sign=-1.0))
    [entry] = result.entries
    assert entry.reason is Reason.NEGATIVE_SCALE
    assert "BatchNormalization" in op_types(folded)
    assert check.max_abs == 0.0


def _counted_padding(rng, *, shift, forward):
    OPS["avgpool_counted_pads"] = (
        [
            helper.make_node(
                "AveragePool", ["a"], ["p"], kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=1
            )
        ],
        {},
        4,
    )
    try:
        return _model(rng, "avgpool_counted_pads", forward=forward, shift=shift)
    finally:
        del OPS["avgpool_counted_pads"]


@pytest.mark.parametrize("forward", [False, True])
def test_counted_padding_takes_a_scale_but_not_a_shift(rng, forward):
    result, check, _folded = fold_and_compare(_counted_padding(rng, shift=True, forward=forward))
    assert result.entries[0].reason is Reason.PADDING
    assert "count_include_pad=1" in result.entries[0].detail
    assert check.max_abs == 0.0
    result, check, _folded = fold_and_compare(_counted_padding(rng, shift=False, forward=forward))
    assert result.entries[0].folded
    assert check.max_rel <= 1e-5


@pytest.mark.parametrize("forward", [False, True])
def test_an_op_along_the_channel_axis_is_not_crossed(rng, forward):
    OPS["channel_slice"] = (
        [helper.make_node("Slice", ["a", "starts", "ends", "axes"], ["p"])],
        {"starts": _int64(0), "ends": _int64(2), "axes": _int64(1)},
        4,
    )
    try:
        model = _model(rng, "channel_slice", forward=forward, in_channels=2)
    finally:
        del OPS["channel_slice"]
    if not forward:  # the BN then has 4 parameters for 2 channels: fix it to 2
        return
    result, check, _ = fold_and_compare(model)
    assert result.entries[0].reason is Reason.NOT_COMMUTING
    assert check.max_abs == 0.0


def test_reducemean_over_channels_is_not_crossed(rng):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        batchnorm_node("r", "a"),
        helper.make_node("ReduceMean", ["a"], ["p"], axes=[1]),
        helper.make_node("Conv", ["p", "w"], ["y"], name="layer"),
    ]
    inits = {"w": rng.normal(size=(3, 1, 1, 1)).astype(np.float32), **batchnorm_params(rng, C)}
    result, check, _ = fold_and_compare(make_model(nodes, [("x", FLOAT, INPUT)], ["y"], inits))
    assert result.entries[0].reason is Reason.NOT_COMMUTING
    assert "channel" in result.entries[0].detail or "axis 1" in result.entries[0].detail
    assert check.max_abs == 0.0


def test_maxpool_whose_indices_are_read_is_not_crossed(rng):
    inits = {"w": rng.normal(size=(C, C, 1, 1)).astype(np.float32), **batchnorm_params(rng, C)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="layer"),
        helper.make_node("MaxPool", ["c"], ["p", "indices"], kernel_shape=[2, 2]),
        batchnorm_node("p", "y"),
    ]
    model = make_model(
        nodes, [("x", FLOAT, INPUT)], ["y", ("indices", TensorProto.INT64, None)], inits
    )
    result, check, _ = fold_and_compare(model)
    assert not result.entries[0].folded
    assert check.max_abs == 0.0


def test_resize_crop_and_resize_is_not_crossed(rng):
    inits = {
        "w": rng.normal(size=(3, C, 1, 1)).astype(np.float32),
        "roi": np.array([0, 0, 0.2, 0.2, 1, 1, 0.9, 1.3], np.float32),
        "scales": np.array([1, 1, 2, 2], np.float32),
        **batchnorm_params(rng, C),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        batchnorm_node("r", "a"),
        helper.make_node(
            "Resize",
            ["a", "roi", "scales"],
            ["p"],
            mode="linear",
            coordinate_transformation_mode="tf_crop_and_resize",
            extrapolation_value=5.0,
        ),
        helper.make_node("Conv", ["p", "w"], ["y"], name="layer"),
    ]
    result, check, _ = fold_and_compare(make_model(nodes, [("x", FLOAT, INPUT)], ["y"], inits))
    assert result.entries[0].reason is Reason.NOT_COMMUTING
    assert check.max_abs == 0.0


def _concat_model(rng, axis):
    inits = {"w": rng.normal(size=(3, 7 if axis == 1 else C, 1, 1)).astype(np.float32)}
    inits.update(batchnorm_params(rng, C))
    other = [2, 3, 6, 6] if axis == 1 else [2, C, 5, 6]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        batchnorm_node("r", "a"),
        helper.make_node("Concat", ["z", "a"], ["p"], axis=axis),
        helper.make_node("Conv", ["p", "w"], ["y"], name="layer"),
    ]
    return make_model(nodes, [("x", FLOAT, INPUT), ("z", FLOAT, other)], ["y"], inits)


def test_batchnorm_on_one_concat_input_folds_into_the_layer_after(rng):
    """Concat on the channel axis: the layer's features from the BN input are scaled, those
    from the other input pass as they are."""
    result, check, folded = fold_and_compare(_concat_model(rng, 1))
    assert result.entries[0].outcome is Outcome.FOLDED_INTO_NEXT
    assert op_types(folded) == ["Relu", "Concat", "Conv"]
    assert check.max_rel <= 1e-5


def test_concat_along_space_mixes_scaled_and_unscaled_elements_in_a_feature(rng):
    """Each channel of the Conv's input then holds BN rows and untouched rows: not one affine."""
    result, check, _folded = fold_and_compare(_concat_model(rng, 2))
    assert result.entries[0].reason is Reason.UNPROVEN_LAYOUT
    assert check.max_abs == 0.0


def test_batchnorm_before_split_folds_into_every_part(rng):
    inits = {
        "w1": rng.normal(size=(3, C, 1, 1)).astype(np.float32),
        "w2": rng.normal(size=(5, C, 1, 1)).astype(np.float32),
        **batchnorm_params(rng, C),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        batchnorm_node("r", "a"),
        helper.make_node("Split", ["a"], ["s1", "s2"], axis=2),
        helper.make_node("Conv", ["s1", "w1"], ["y1"], name="first"),
        helper.make_node("Conv", ["s2", "w2"], ["y2"], name="second"),
    ]
    model = make_model(nodes, [("x", FLOAT, INPUT)], ["y1", "y2"], inits)
    result, check, folded = fold_and_compare(model)
    assert sorted(result.entries[0].target) == ["first", "second"]
    assert "BatchNormalization" not in op_types(folded)
    assert check.max_rel <= 1e-5


@pytest.mark.parametrize(
    ("dtype", "tolerance", "batch"),
    [(np.float32, 1e-5, "N"), (np.float32, 1e-5, 2), (np.float16, 3e-3, 2)],
)
def test_pitch_tracker_head_folds_forward_through_maxpool_into_gemm(rng, dtype, tolerance, batch):
    """Conv -> Relu -> BN -> MaxPool -> Transpose -> Reshape -> Gemm, every scale positive (the
    last block of a trained pitch tracker exported by TorchScript)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = {
        "conv_w": rng.normal(size=(C, 2, 3, 1)).astype(dtype),
        "conv_b": rng.normal(size=C).astype(dtype),
        "shape": _int64(0, -1),
        "fc_w": rng.normal(size=(5, 3 * C)).astype(dtype),
        "fc_b": rng.normal(size=5).astype(dtype),
        **batchnorm_params(rng, C, dtype=dtype),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 0, 1, 0]),
        helper.make_node("Relu", ["c"], ["r"]),
        batchnorm_node("r", "b"),
        helper.make_node("MaxPool", ["b"], ["m"], kernel_shape=[2, 1], strides=[2, 1]),
        helper.make_node("Transpose", ["m"], ["t"], perm=[0, 3, 2, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    model = make_model(nodes, [("x", elem, [batch, 2, 6, 1])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.outcome is Outcome.FOLDED_INTO_NEXT, entry.detail
    assert entry.target == ["fc"]
    assert op_types(folded) == ["Conv", "Relu", "MaxPool", "Transpose", "Reshape", "Gemm"]
    assert check.max_rel <= tolerance, check.max_rel
