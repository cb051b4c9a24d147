"""A ResNet50 with BatchNormalization nodes after every convolution, as PyTorch's exporter
writes it in training-preserving mode (bias-free Conv -> BN), built directly in ONNX.

25.6 M parameters, about 102 MB: the size the fold-time benchmark needs, without TensorFlow
(tf2onnx's ResNet50 arrives with every BN already folded by TensorFlow's grappler).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STAGES = ((64, 256, 3, 1), (128, 512, 4, 2), (256, 1024, 6, 2), (512, 2048, 3, 2))


class _Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def _constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, cin: int, cout: int, kernel: int, stride: int, relu: bool) -> str:
        conv = self._name("conv")
        fan_in = cin * kernel * kernel
        weight = self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin, kernel, kernel))
        pad = kernel // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self._constant(f"{conv}.weight", weight)],
                [conv],
                name=conv,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        bn = conv.replace("conv", "bn")
        params = [
            self._constant(f"{bn}.weight", self.rng.uniform(0.5, 1.5, cout)),
            self._constant(f"{bn}.bias", self.rng.normal(0, 0.1, cout)),
            self._constant(f"{bn}.running_mean", self.rng.normal(0, 0.1, cout)),
            self._constant(f"{bn}.running_var", self.rng.uniform(0.5, 2.0, cout)),
        ]
        self.nodes.append(helper.make_node("BatchNormalization", [conv, *params], [bn], name=bn))
        if not relu:
            return bn
        out = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [bn], [out], name=out))
        return out

    def bottleneck(self, x: str, cin: int, width: int, cout: int, stride: int) -> str:
        y = self.conv_bn(x, cin, width, 1, 1, relu=True)
        y = self.conv_bn(y, width, width, 3, stride, relu=True)
        y = self.conv_bn(y, width, cout, 1, 1, relu=False)
        shortcut = (
            x if cin == cout and stride == 1 else self.conv_bn(x, cin, cout, 1, stride, False)
        )
        added, out = self._name("add"), self._name("relu")
        self.nodes.append(helper.make_node("Add", [y, shortcut], [added], name=added))
        self.nodes.append(helper.make_node("Relu", [added], [out], name=out))
        return out


def resnet50(seed: int = 0, image_size: int = 224) -> onnx.ModelProto:
    builder = _Builder(np.random.default_rng(seed))
    x = builder.conv_bn("input", 3, 64, 7, 2, relu=True)
    builder.nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        )
    )
    x, channels = "pool", 64
    for width, out, blocks, stride in STAGES:
        for block in range(blocks):
            x = builder.bottleneck(x, channels, width, out, stride if block == 0 else 1)
            channels = out
    builder.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    builder.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    fc_w = builder._constant("fc.weight", builder.rng.normal(0, 0.01, (1000, 2048)))
    fc_b = builder._constant("fc.bias", np.zeros(1000))
    builder.nodes.append(
        helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="fc", transB=1)
    )
    graph = helper.make_graph(
        builder.nodes,
        "resnet50",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["batch", 3, image_size, image_size]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        builder.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model
