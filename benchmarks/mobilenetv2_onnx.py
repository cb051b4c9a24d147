"""A MobileNetV2 (1.0, 224) with a BatchNormalization node after every convolution, as
PyTorch's exporter writes it in training-preserving mode, built directly in ONNX.

Stem 3x3/2 conv (32), 17 inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear
project; the residual Add where stride is 1 and the width stays), a 1x1 conv to 1280, global
average pool and a 1000-way Gemm: 52 Conv -> BN pairs, 3.5 M parameters. ReLU6 is ``Clip``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class _Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = [
            numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"),
            numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"),
        ]
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def _constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(
        self, x: str, cin: int, cout: int, kernel: int, stride: int, *, group: int, relu6: bool
    ) -> str:
        conv = self._name("conv")
        fan_in = cin // group * kernel * kernel
        shape = (cout, cin // group, kernel, kernel)
        weight = self.rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self._constant(f"{conv}.weight", weight)],
                [conv],
                name=conv,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[kernel // 2] * 4,
                group=group,
            )
        )
        bn = conv.replace("conv", "bn")
        params = [
            self._constant(f"{bn}.weight", np.ones(cout)),
            self._constant(f"{bn}.bias", np.zeros(cout)),
            self._constant(f"{bn}.running_mean", np.zeros(cout)),
            self._constant(f"{bn}.running_var", np.ones(cout)),
        ]
        self.nodes.append(helper.make_node("BatchNormalization", [conv, *params], [bn], name=bn))
        if not relu6:
            return bn
        out = self._name("relu6")
        self.nodes.append(helper.make_node("Clip", [bn, "relu6_min", "relu6_max"], [out], name=out))
        return out

    def inverted_residual(self, x: str, cin: int, cout: int, stride: int, expand: int) -> str:
        hidden = cin * expand
        y = x
        if expand != 1:
            y = self.conv_bn(y, cin, hidden, 1, 1, group=1, relu6=True)
        y = self.conv_bn(y, hidden, hidden, 3, stride, group=hidden, relu6=True)
        y = self.conv_bn(y, hidden, cout, 1, 1, group=1, relu6=False)
        if stride != 1 or cin != cout:
            return y
        added = self._name("add")
        self.nodes.append(helper.make_node("Add", [y, x], [added], name=added))
        return added


def mobilenetv2(seed: int = 0, image_size: int = 224) -> onnx.ModelProto:
    """BN statistics are the identity (mean 0, var 1, gamma 1, beta 0): a caller sets them."""
    builder = _Builder(np.random.default_rng(seed))
    x = builder.conv_bn("input", 3, 32, 3, 2, group=1, relu6=True)
    channels = 32
    for expand, out, repeats, stride in BLOCKS:
        for index in range(repeats):
            x = builder.inverted_residual(x, channels, out, stride if index == 0 else 1, expand)
            channels = out
    x = builder.conv_bn(x, channels, 1280, 1, 1, group=1, relu6=True)
    builder.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    builder.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    fc_w = builder._constant("fc.weight", builder.rng.normal(0, 0.01, (1000, 1280)))
    fc_b = builder._constant("fc.bias", np.zeros(1000))
    builder.nodes.append(
        helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="fc", transB=1)
    )
    graph = helper.make_graph(
        builder.nodes,
        "mobilenetv2",
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
