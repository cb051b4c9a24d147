"""The Keras layer descriptions without TensorFlow: weights survive lower -> read back, and
the lowered ops compute what the Keras layer computes (checked in onnxruntime on layers
whose Keras meaning is a few lines of numpy)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from bnfold.frontends.keras.batchnorm import batchnorm_affine
from bnfold.frontends.keras.emit import Call, Emitter, ir_shape
from bnfold.frontends.keras.layers import LOWERINGS
from bnfold.frontends.keras.read_back import read_back


def lowered(
    class_name: str, config: dict[str, Any], weights: list[np.ndarray], shapes: tuple[Any, Any]
) -> tuple[ir.Graph, dict[str, ir.Node]]:
    data = ir.Value(name="x", shape=ir_shape(shapes[0]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([data], [], nodes=[], opset_imports={"": 17}, name="layer")
    emit = Emitter(graph, "layer", "layer")
    call = Call(class_name, config, weights, [data], shapes[0], shapes[1])
    graph.outputs.append(LOWERINGS[class_name](emit, call))
    nodes = {node.metadata_props["keras_role"]: node for node in emit.nodes}
    return graph, nodes


def run(graph: ir.Graph, x: np.ndarray) -> np.ndarray:
    model = ir.Model(graph, ir_version=10)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        ir.serde.serialize_model(model).SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    return np.asarray(session.run(None, {"x": x})[0])


Shape = tuple[int | None, ...]
CASES: dict[str, tuple[dict[str, Any], list[tuple[int, ...]], Shape, Shape]] = {
    # class name: (config, weight shapes, input shape, output shape)
    "Dense": ({}, [(4, 3), (3,)], (None, 4), (None, 3)),
    "Conv2D": (
        {"padding": "same", "strides": 2},
        [(3, 3, 2, 5), (5,)],
        (None, 6, 6, 2),
        (None, 3, 3, 5),
    ),
    "DepthwiseConv2D": (
        {"depth_multiplier": 2},
        [(1, 1, 3, 2), (6,)],
        (None, 4, 4, 3),
        (None, 4, 4, 6),
    ),
    "SeparableConv2D": ({}, [(3, 3, 2, 2), (1, 1, 4, 5), (5,)], (None, 5, 5, 2), (None, 3, 3, 5)),
    "Conv2DTranspose": ({"strides": 2}, [(2, 2, 4, 3), (4,)], (None, 3, 3, 3), (None, 6, 6, 4)),
}


@pytest.mark.parametrize("class_name", list(CASES))
def test_weights_survive_lowering_and_reading_back(
    class_name: str, rng: np.random.Generator
) -> None:
    config, shapes, in_shape, out_shape = CASES[class_name]
    weights = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
    _, nodes = lowered(class_name, config, weights, (in_shape, out_shape))
    back, has_bias = read_back(class_name, nodes, weights)
    assert has_bias
    assert len(back) == len(weights)
    for got, want in zip(back, weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_dense_computes_x_at_kernel_plus_bias(rng: np.random.Generator) -> None:
    kernel, bias = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    graph, _ = lowered("Dense", {}, [kernel, bias], ((None, 4), (None, 3)))
    x = rng.normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(run(graph, x), x @ kernel + bias, rtol=1e-6, atol=1e-6)


def test_depthwise_output_channel_is_input_times_multiplier_plus_m(
    rng: np.random.Generator,
) -> None:
    """Keras writes depthwise output channel ``c*mult + m``; a 1x1 kernel makes it a product."""
    kernel = rng.normal(size=(1, 1, 3, 2)).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    graph, _ = lowered(
        "DepthwiseConv2D",
        {"depth_multiplier": 2},
        [kernel, bias],
        ((None, 4, 4, 3), (None, 4, 4, 6)),
    )
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    expected = (x[..., :, None] * kernel[0, 0]).reshape(2, 4, 4, 6) + bias
    np.testing.assert_allclose(run(graph, x), expected, rtol=1e-5, atol=1e-6)


def test_same_padding_is_written_as_the_pads_tensorflow_uses() -> None:
    """TF's SAME pads (total // 2) before and the rest after: 6 wide, kernel 3, stride 2."""
    config, shapes, in_shape, out_shape = CASES["Conv2D"]
    weights = [np.zeros(shape, np.float32) for shape in shapes]
    _, nodes = lowered("Conv2D", config, weights, (in_shape, out_shape))
    pads = nodes[""].attributes["pads"].value
    assert list(pads) == [0, 0, 1, 1]


def test_batchnorm_affine_reads_gamma_and_beta_only_when_the_layer_has_them() -> None:
    mean, variance = np.array([1.0, -1.0]), np.array([4.0, 0.25])
    affine = batchnorm_affine(
        {"scale": False, "center": True, "epsilon": 0.0}, [np.array([0.5, 0.5]), mean, variance]
    )
    np.testing.assert_allclose(affine.scale, [0.5, 2.0])
    np.testing.assert_allclose(affine.shift, [0.5 - 0.5, 0.5 + 2.0])
