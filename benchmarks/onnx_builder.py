"""The parts the benchmarks' ONNX CNNs share (resnet50_onnx.py, mobilenetv2_onnx.py): node
names, float32 initializers, a Conv -> BatchNormalization pair written as PyTorch's exporter
writes it in training-preserving mode, the GlobalAveragePool / Flatten / Gemm head and the
model around it (opset 13, IR 8, input ``[batch, 3, size, size]``, output ``logits``).

Every random draw is made in the order the caller asks, so a model is a function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# The BN's (gamma, beta, running mean, running var) for ``channels`` outputs.
BatchNormStats = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


class OnnxBuilder:
    """Nodes and initializers in the order they are written; ``count`` numbers the names."""

    def __init__(
        self, rng: np.random.Generator, initializers: list[onnx.TensorProto] | None = None
    ) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = list(initializers or [])
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(
        self,
        x: str,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        stats: BatchNormStats,
        group: int | None = None,
    ) -> str:
        """A bias-free He-initialised Conv ("convN") read by a BN ("bnN"); the BN's output.
        ``group=None`` writes no ``group`` attribute (ONNX's default, 1)."""
        conv = self.name("conv")
        groups = group or 1
        fan_in = cin // groups * kernel * kernel
        shape = (cout, cin // groups, kernel, kernel)
        weight = self.rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        grouping = {} if group is None else {"group": group}
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.constant(f"{conv}.weight", weight)],
                [conv],
                name=conv,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[kernel // 2] * 4,
                **grouping,
            )
        )
        bn = conv.replace("conv", "bn")
        suffixes = ("weight", "bias", "running_mean", "running_var")
        params = [
            self.constant(f"{bn}.{suffix}", array)
            for suffix, array in zip(suffixes, stats(cout), strict=True)
        ]
        self.nodes.append(helper.make_node("BatchNormalization", [conv, *params], [bn], name=bn))
        return bn

    def classifier(self, x: str, channels: int, classes: int = 1000) -> str:
        """GlobalAveragePool, Flatten and a Gemm ``fc`` (weight ``[classes, channels]``,
        ``transB``, zero bias) to ``logits``."""
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
        self.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
        fc_w = self.constant("fc.weight", self.rng.normal(0, 0.01, (classes, channels)))
        fc_b = self.constant("fc.bias", np.zeros(classes))
        self.nodes.append(
            helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="fc", transB=1)
        )
        return "logits"

    def model(self, name: str, image_size: int, classes: int = 1000) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [
                helper.make_tensor_value_info(
                    "input", TensorProto.FLOAT, ["batch", 3, image_size, image_size]
                )
            ],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        return model
