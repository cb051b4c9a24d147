"""A MobileNetV2 (1.0, 224) with a BatchNormalization node after every convolution, as
PyTorch's exporter writes it in training-preserving mode, built directly in ONNX.

Stem 3x3/2 conv (32), 17 inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear
project; the residual Add where stride is 1 and the width stays), a 1x1 conv to 1280, global
average pool and a 1000-way Gemm: 52 Conv -> BN pairs, 3.5 M parameters. ReLU6 is ``Clip``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx_builder import OnnxBuilder

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


def _identity_stats(channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """gamma 1, beta 0, mean 0, var 1: the caller sets the statistics it studies."""
    return np.ones(channels), np.zeros(channels), np.zeros(channels), np.ones(channels)


class _Builder(OnnxBuilder):
    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__(
            rng,
            [
                numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"),
                numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"),
            ],
        )

    def conv_bn_relu6(
        self, x: str, cin: int, cout: int, kernel: int, stride: int, *, group: int, relu6: bool
    ) -> str:
        bn = self.conv_bn(x, cin, cout, kernel, stride, _identity_stats, group=group)
        if not relu6:
            return bn
        out = self.name("relu6")
        self.nodes.append(helper.make_node("Clip", [bn, "relu6_min", "relu6_max"], [out], name=out))
        return out

    def inverted_residual(self, x: str, cin: int, cout: int, stride: int, expand: int) -> str:
        hidden = cin * expand
        y = x
        if expand != 1:
            y = self.conv_bn_relu6(y, cin, hidden, 1, 1, group=1, relu6=True)
        y = self.conv_bn_relu6(y, hidden, hidden, 3, stride, group=hidden, relu6=True)
        y = self.conv_bn_relu6(y, hidden, cout, 1, 1, group=1, relu6=False)
        if stride != 1 or cin != cout:
            return y
        added = self.name("add")
        self.nodes.append(helper.make_node("Add", [y, x], [added], name=added))
        return added


def mobilenetv2(seed: int = 0, image_size: int = 224) -> onnx.ModelProto:
    """BN statistics are the identity (mean 0, var 1, gamma 1, beta 0): a caller sets them."""
    builder = _Builder(np.random.default_rng(seed))
    x = builder.conv_bn_relu6("input", 3, 32, 3, 2, group=1, relu6=True)
    channels = 32
    for expand, out, repeats, stride in BLOCKS:
        for index in range(repeats):
            x = builder.inverted_residual(x, channels, out, stride if index == 0 else 1, expand)
            channels = out
    x = builder.conv_bn_relu6(x, channels, 1280, 1, 1, group=1, relu6=True)
    builder.classifier(x, channels=1280)
    return builder.model("mobilenetv2", image_size)
