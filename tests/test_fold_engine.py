"""The engine as a whole: repeat until stable, idempotence, what it keeps, subgraphs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from bnfold.errors import InputError
from bnfold.fold import METADATA_KEY, fold_model
from bnfold.foldlog import Reason
from bnfold.frontends.onnx import load_onnx
from bnfold.testing import (
    batchnorm_node,
    batchnorm_params,
    fold_and_compare,
    graph_signature,
    make_model,
    op_types,
    pytorch_style_model,
)

FLOAT = TensorProto.FLOAT


def test_pytorch_style_graph_folds_completely(rng):
    model = pytorch_style_model(rng)
    result, check, folded = fold_and_compare(model)
    assert "BatchNormalization" not in op_types(folded)
    assert [entry.target for entry in result.entries] == [["conv"], ["deconv"], ["fc"]]
    assert check.max_rel <= 1e-5


def test_folding_a_folded_model_folds_nothing(rng):
    _, _, folded = fold_and_compare(pytorch_style_model(rng))
    again, check, refolded = fold_and_compare(folded)
    assert again.entries == []
    assert graph_signature(refolded) == graph_signature(folded)
    assert check.max_abs == 0.0


def test_model_without_batchnorm_is_unchanged(rng):
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, [("x", FLOAT, [1, 3, 5, 5])], ["y"], inits)
    result, _, folded = fold_and_compare(model)
    assert result.entries == [] and not result.changed
    assert graph_signature(folded) == graph_signature(model)


def test_fold_keeps_what_the_user_relies_on(rng):
    model = pytorch_style_model(rng)
    model.ir_version = 7
    helper.set_model_props(model, {"author": "team", "license": "internal"})
    folded = ir.serde.serialize_model(fold_model(ir.serde.deserialize_model(model)).model)
    assert folded.ir_version == 7
    assert [(o.domain, o.version) for o in folded.opset_import] == [("", 14)]
    assert [i.name for i in folded.graph.input] == ["x"]
    assert [o.name for o in folded.graph.output] == ["logits"]
    assert folded.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    props = {entry.key: entry.value for entry in folded.metadata_props}
    assert props["author"] == "team" and props["license"] == "internal"
    assert json.loads(props[METADATA_KEY]) == {
        "found": 3,
        "folded_into_previous": 3,
        "folded_into_next": 0,
        "left": 0,
        "affines_folded": 0,
    }
    # The BN parameters and the replaced weights are gone.
    names = {tensor.name for tensor in folded.graph.initializer}
    assert not any(name.startswith("bn") for name in names)


def test_initializer_that_is_also_a_graph_input_is_not_folded(rng):
    """An overridable initializer can change at run time: folding into it would be wrong."""
    inits = {"w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32), **batchnorm_params(rng, 4)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), batchnorm_node("c", "y")]
    model = make_model(
        nodes, [("x", FLOAT, [1, 3, 2, 2]), ("w", FLOAT, [4, 3, 1, 1])], ["y"], inits
    )
    result, _, folded = fold_and_compare(
        model,
        inputs={
            "x": rng.normal(size=(1, 3, 2, 2)).astype(np.float32),
        },
    )
    assert result.entries[0].reason.value == "weight_not_constant"
    assert op_types(folded) == ["Conv", "BatchNormalization"]


def test_constant_nodes_feed_folds_and_are_dropped(rng):
    params = batchnorm_params(rng, 4)
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["w"],
            value=onnx.numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32)),
        ),
        *[
            helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(value))
            for name, value in params.items()
        ],
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        batchnorm_node("c", "y"),
    ]
    model = make_model(nodes, [("x", FLOAT, [1, 3, 2, 2])], ["y"])
    _, check, folded = fold_and_compare(model)
    assert op_types(folded) == ["Conv"]
    assert check.max_rel <= 1e-5


def test_batchnorm_inside_an_if_branch_is_folded(rng):
    def branch(name: str) -> onnx.GraphProto:
        params = batchnorm_params(rng, 4, f"{name}_bn")
        weight = onnx.numpy_helper.from_array(
            rng.normal(size=(4, 3, 1, 1)).astype(np.float32), f"{name}_w"
        )
        return helper.make_graph(
            [
                helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_c"], name=f"{name}_conv"),
                batchnorm_node(f"{name}_c", f"{name}_y", f"{name}_bn"),
            ],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", FLOAT, [1, 4, 2, 2])],
            [weight, *(onnx.numpy_helper.from_array(v, k) for k, v in params.items())],
        )

    nodes = [
        helper.make_node(
            "If", ["flag"], ["y"], then_branch=branch("then"), else_branch=branch("else")
        )
    ]
    model = make_model(
        nodes,
        [("x", FLOAT, [1, 3, 2, 2]), ("flag", TensorProto.BOOL, [])],
        [("y", FLOAT, [1, 4, 2, 2])],
    )
    for flag in (True, False):
        feeds = {
            "x": rng.normal(size=(1, 3, 2, 2)).astype(np.float32),
            "flag": np.array(flag),
        }
        result, check, folded = fold_and_compare(model, inputs=feeds)
        assert len(result.folded) == 2
        assert check.max_rel <= 1e-5
    branches = [attr.g for attr in folded.graph.node[0].attribute]
    assert all(op_types(onnx.ModelProto(graph=g)) == ["Conv"] for g in branches)


def _bad_group_model(rng, op_type):
    """A grouped layer whose group (4) does not divide its weight's axis 0 (6), then a BN;
    onnx.checker's basic check accepts it."""
    shape = (6, 2, 1, 1)
    inits = {"w": rng.normal(size=shape).astype(np.float32), **batchnorm_params(rng, 8)}
    nodes = [
        helper.make_node(op_type, ["x", "w"], ["c"], name="layer", group=4),
        batchnorm_node("c", "y"),
    ]
    return make_model(
        nodes, [("x", FLOAT, [1, 8, 4, 4])], [("y", FLOAT, [1, 8, 4, 4])], inits, infer_shapes=False
    )


@pytest.mark.parametrize("op_type", ["Conv", "ConvTranspose"])
def test_group_that_does_not_divide_the_channels_is_declined_not_a_crash(rng, op_type):
    model = ir.serde.deserialize_model(_bad_group_model(rng, op_type))
    before = ir.serde.serialize_model(model).SerializeToString()
    result = fold_model(model)
    [entry] = result.entries
    assert entry.reason is Reason.INVALID_PARAMS
    assert "group 4 does not divide" in entry.detail
    assert ir.serde.serialize_model(model).SerializeToString() == before


@pytest.mark.parametrize("op_type", ["Conv", "ConvTranspose"])
def test_loader_refuses_a_group_that_does_not_divide_the_channels(rng, tmp_path, op_type):
    path = tmp_path / "bad_group.onnx"
    onnx.save(_bad_group_model(rng, op_type), path)
    with pytest.raises(InputError, match="group 4 does not divide the weight's 6") as caught:
        load_onnx(path)
    assert caught.value.exit_code == 3
    assert "\n" not in str(caught.value)
