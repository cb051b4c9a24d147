"""What a Keras layer description writes with: the call it describes (``Call``), the
``Emitter`` that adds ONNX nodes and constants tagged with the layer's path, and the names of
the layer kinds the descriptions know."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt
import onnx_ir as ir

Array = npt.NDArray[Any]

OPAQUE_DOMAIN = "bnfold.keras"
IDENTITY_LAYERS = frozenset(
    {
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "Identity",
    }
)
CONV_LAYERS = frozenset({"Conv1D", "Conv2D", "Conv3D"})
DEPTHWISE_LAYERS = frozenset({"DepthwiseConv1D", "DepthwiseConv2D"})
SEPARABLE_LAYERS = frozenset({"SeparableConv1D", "SeparableConv2D"})
TRANSPOSE_LAYERS = frozenset({"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"})
LINEAR_LAYERS = CONV_LAYERS | DEPTHWISE_LAYERS | SEPARABLE_LAYERS | TRANSPOSE_LAYERS | {"Dense"}


class Emitter:
    """What a description writes with: the graph, a constant maker, the node table."""

    def __init__(self, graph: ir.Graph, path: str, layer: str) -> None:
        self.graph = graph
        self.path = path  # unique per call: node and constant names start with it
        self.layer = layer  # the Keras layer's path, the same for all its calls
        self.nodes: list[ir.Node] = []

    def constant(self, array: Array, role: str) -> ir.Value:
        name = f"{self.path}/{role}"
        value = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            const_value=ir.tensor(array, name=name),
        )
        self.graph.register_initializer(value)
        return value

    def node(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        role: str,
        shape: ir.Shape | None,
        attributes: dict[str, Any] | None = None,
        domain: str = "",
    ) -> ir.Value:
        name = self.path if role == "" else f"{self.path}/{role}"
        attrs = [ir.convenience.convert_attribute(k, v) for k, v in (attributes or {}).items()]
        node = ir.Node(domain, op_type, list(inputs), attrs, name=name, num_outputs=1)
        node.metadata_props["keras_layer"] = self.layer
        node.metadata_props["keras_role"] = role
        output = node.outputs[0]
        output.name = name if role == "" else f"{self.path}/{role}:0"
        output.shape = shape
        output.type = ir.TensorType(ir.DataType.FLOAT)
        self.graph.append(node)
        self.nodes.append(node)
        return output


@dataclass(frozen=True)
class Call:
    """One call of a layer: its config, weights, input values and shapes, output shape."""

    class_name: str
    config: dict[str, Any]
    weights: list[Array]
    inputs: list[ir.Value]
    input_shape: tuple[int | None, ...] | None
    output_shape: tuple[int | None, ...] | None


def ir_shape(shape: tuple[int | None, ...] | None) -> ir.Shape | None:
    if shape is None:
        return None
    return ir.Shape(["batch" if i == 0 and d is None else d for i, d in enumerate(shape)])
