from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from bnfold.fold import fold_model
from bnfold.foldlog import Outcome, Reason, Skip
from bnfold.rules.affines import find_affine_chains
from bnfold.rules.forward import (
    ChannelMap,
    features_to_channels,
    follow_layout,
    initial_channel_map,
    walk_forward,
)
from bnfold.testing import (
    batchnorm_node,
    batchnorm_params,
    fold_and_compare,
    graph_signature,
    make_model,
    op_types,
)

FLOAT = TensorProto.FLOAT


def layout_graph(rng, input_shape, layout_nodes, channels=3):
    """Relu -> BN -> layout nodes ending in ``f``, as an onnx_ir model."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        *layout_nodes,
    ]
    inits = {**batchnorm_params(rng, channels), "flat": np.array([-1, 12], dtype=np.int64)}
    proto = make_model(nodes, [("x", FLOAT, input_shape)], ["f"], inits)
    return ir.serde.deserialize_model(proto)


def channel_map_after(model):
    [chain] = find_affine_chains(model.graph)
    channel_map = initial_channel_map(chain, 1, 3)
    for node in list(model.graph)[2:]:
        assert isinstance(channel_map, ChannelMap)
        channel_map = follow_layout(node, channel_map)
    return channel_map


def test_nchw_flatten_repeats_each_channel_per_pixel(rng):
    model = layout_graph(rng, ["N", 3, 2, 2], [helper.make_node("Flatten", ["n"], ["f"])])
    channel_map = channel_map_after(model)
    assert channel_map.dynamic == (True, False)
    assert channel_map.ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]]


def test_channels_last_flatten_tiles_the_channels(rng):
    nodes = [
        helper.make_node("Transpose", ["n"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "flat"], ["f"]),
    ]
    model = layout_graph(rng, ["N", 3, 2, 2], nodes)
    channel_map = channel_map_after(model)
    assert channel_map.ids.tolist() == [[0, 1, 2] * 4]
    features = features_to_channels(channel_map, 1, 12, next(iter(model.graph)))
    assert isinstance(features, np.ndarray)
    assert features.tolist() == [0, 1, 2] * 4


def test_a_feature_axis_that_mixes_channels_is_unproven(rng):
    model = layout_graph(rng, [2, 3, 2, 2], [helper.make_node("Identity", ["n"], ["f"])])
    channel_map = channel_map_after(model)
    node = next(iter(model.graph))
    skip = features_to_channels(channel_map, 2, 2, node)  # height: each row holds 3 channels
    assert isinstance(skip, Skip) and skip.reason is Reason.UNPROVEN_LAYOUT
    assert isinstance(features_to_channels(channel_map, 1, 3, node), np.ndarray)


def test_walk_forward_finds_readers_through_layout_and_blockers():
    proto = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="source"),
            helper.make_node("Identity", ["a"], ["b"], name="id"),
            helper.make_node("Flatten", ["b"], ["c"], name="flat"),
            helper.make_node("Relu", ["c"], ["y1"], name="reader1"),
            helper.make_node("Relu", ["a"], ["y2"], name="reader2"),
        ],
        [("x", FLOAT, [2, 3])],
        ["y1", "y2", "b"],
    )
    model = ir.serde.deserialize_model(proto)
    source = next(iter(model.graph))
    readers, blockers = walk_forward(source.outputs[0])
    found = {reader.node.name: [node.name for node in reader.layout] for reader in readers}
    assert found == {"reader1": ["id", "flat"], "reader2": []}
    assert blockers == ["b is a graph output"]


def test_global_pool_batchnorm_squeeze_gemm_head(rng):
    """A classifier head: GlobalAveragePool -> BN -> Squeeze -> Gemm."""
    inits = {
        "w": rng.normal(size=(4, 7)).astype(np.float32),
        "c": rng.normal(size=7).astype(np.float32),
        "axes": np.array([2, 3], dtype=np.int64),
        **batchnorm_params(rng, 4),
    }
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"], name="pool"),
        batchnorm_node("p", "n"),
        helper.make_node("Squeeze", ["n", "axes"], ["s"], name="squeeze"),
        helper.make_node("Gemm", ["s", "w", "c"], ["y"], name="head"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4, 5, 5])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["GlobalAveragePool", "Squeeze", "Gemm"]
    [entry] = result.entries
    assert (entry.outcome, entry.target, entry.via) == (
        Outcome.FOLDED_INTO_NEXT,
        ["head"],
        ["squeeze"],
    )
    assert check.max_rel <= 1e-5


def test_layout_op_with_a_second_reader_blocks(rng):
    inits = {
        "w": rng.normal(size=(12, 5)).astype(np.float32),
        **batchnorm_params(rng, 3),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("Flatten", ["n"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w"], ["y1"], name="dense"),
        helper.make_node("Sigmoid", ["f"], ["y2"], name="gate"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 3, 2, 2])], ["y1", "y2"], inits)
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.reason is Reason.CONSUMER_NOT_FOLDABLE
    assert "gate (Sigmoid) also reads it" in entry.detail
    assert graph_signature(folded) == graph_signature(model)
    assert check.max_abs == 0.0


def test_folding_twice_changes_nothing(rng):
    inits = {"w": rng.normal(size=(5, 4, 1, 1)).astype(np.float32), **batchnorm_params(rng, 4)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("Conv", ["n", "w"], ["y"], name="conv"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 4, 3, 3])], ["y"], inits)
    _, _, folded = fold_and_compare(model)
    again = ir.serde.deserialize_model(folded)
    result = fold_model(again)
    assert result.entries == []
    assert graph_signature(ir.serde.serialize_model(again)) == graph_signature(folded)


@pytest.mark.parametrize("shift_only", [True, False])
def test_input_normalisation_folds_into_the_first_conv(rng, shift_only):
    """``(x - mean) / std`` on the model input, then an unpadded Conv."""
    inits = {
        "w": rng.normal(size=(5, 3, 3, 3)).astype(np.float32),
        "mean": rng.normal(size=(3, 1, 1)).astype(np.float32),
        "std": rng.uniform(0.5, 2, size=(3, 1, 1)).astype(np.float32),
    }
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centred"], name="sub_mean")]
    if shift_only:
        conv_input = "centred"
    else:
        nodes.append(helper.make_node("Div", ["centred", "std"], ["scaled"], name="div_std"))
        conv_input = "scaled"
    nodes.append(helper.make_node("Conv", [conv_input, "w"], ["y"], name="conv"))
    model = make_model(nodes, [("x", FLOAT, ["N", 3, 6, 6])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Conv"]
    assert [entry.outcome for entry in result.folded] == [Outcome.FOLDED_INTO_NEXT]
    assert check.max_rel <= 1e-5


def test_reader_inside_a_subgraph_blocks(rng):
    """An If branch that convolves the BN output captured from the outer graph."""
    inits = {"w": rng.normal(size=(5, 4, 1, 1)).astype(np.float32), **batchnorm_params(rng, 4)}

    def branch(name):
        conv = helper.make_node("Conv", ["n", "w"], [f"{name}_y"], name=f"{name}_conv")
        out = helper.make_tensor_value_info(f"{name}_y", FLOAT, [1, 5, 3, 3])
        return helper.make_graph([conv], name, [], [out])

    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("Conv", ["n", "w"], ["y1"], name="outer_conv"),
        helper.make_node(
            "If", ["cond"], ["y2"], name="branch", then_branch=branch("a"), else_branch=branch("b")
        ),
    ]
    model = make_model(
        nodes,
        [("x", FLOAT, [1, 4, 3, 3]), ("cond", TensorProto.BOOL, [])],
        [("y1", FLOAT, [1, 5, 3, 3]), ("y2", FLOAT, [1, 5, 3, 3])],
        inits,
        infer_shapes=False,
    )
    result, check, folded = fold_and_compare(
        model,
        inputs={"x": rng.normal(size=(1, 4, 3, 3)).astype(np.float32), "cond": np.array(True)},
    )
    [entry] = result.entries
    assert entry.reason is Reason.CONSUMER_NOT_FOLDABLE
    assert "a_conv reads it inside a subgraph" in entry.detail
    assert graph_signature(folded) == graph_signature(model)
    assert check.max_abs == 0.0


def test_tf2onnx_flatten_with_a_shape_reader_folds(rng):
    """tf2onnx writes Keras' Flatten as Transpose + Reshape to a shape computed by Shape(x):
    the Shape reader only sees the shape, which the fold keeps."""
    inits = {
        "w": rng.normal(size=(12, 5)).astype(np.float32),
        "index": np.array([0], dtype=np.int64),
        "rest": np.array([12], dtype=np.int64),
        **batchnorm_params(rng, 3),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        batchnorm_node("r", "n"),
        helper.make_node("Transpose", ["n"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Shape", ["n"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "index"], ["batch"], name="batch"),
        helper.make_node("Concat", ["batch", "rest"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["t", "target"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w"], ["y"], name="dense"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 3, 2, 2])], [("y", FLOAT, ["N", 5])], inits)
    flat = next(info for info in model.graph.value_info if info.name == "f")
    assert not flat.type.tensor_type.shape.dim  # onnx cannot infer it; tf2onnx records it
    flat.CopyFrom(helper.make_tensor_value_info("f", FLOAT, ["N", 12]))
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert (entry.outcome, entry.via) == (Outcome.FOLDED_INTO_NEXT, ["to_nhwc", "flatten"])
    assert "BatchNormalization" not in op_types(folded)
    assert check.max_rel <= 1e-5


def test_affine_that_broadcasts_its_input_is_left(rng):
    inits = {
        "w": rng.normal(size=(5, 3, 1, 1)).astype(np.float32),
        "scale": rng.uniform(0.5, 2, size=(3, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "scale"], ["m"], name="expand"),  # [N,1,4,4] -> [N,3,4,4]
        helper.make_node("Conv", ["m", "w"], ["y"], name="conv"),
    ]
    model = make_model(nodes, [("x", FLOAT, ["N", 1, 4, 4])], ["y"], inits)
    result, check, folded = fold_and_compare(model)
    [entry] = result.entries
    assert entry.reason is Reason.CHANNEL_MISMATCH
    assert "broadcasts" in entry.detail
    assert graph_signature(folded) == graph_signature(model)
    assert check.max_abs == 0.0
