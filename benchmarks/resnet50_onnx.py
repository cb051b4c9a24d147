"""A ResNet50 with BatchNormalization nodes after every convolution, as PyTorch's exporter
writes it in training-preserving mode (bias-free Conv -> BN), built directly in ONNX.

25.6 M parameters, about 102 MB: the size the fold-time benchmark needs, without TensorFlow
(tf2onnx's ResNet50 arrives with every BN already folded by TensorFlow's grappler).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from onnx_builder import OnnxBuilder

STAGES = ((64, 256, 3, 1), (128, 512, 4, 2), (256, 1024, 6, 2), (512, 2048, 3, 2))


class _Builder(OnnxBuilder):
    def _stats(self, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Trained-looking BN parameters: gamma, beta, running mean and running var."""
        return (
            self.rng.uniform(0.5, 1.5, channels),
            self.rng.normal(0, 0.1, channels),
            self.rng.normal(0, 0.1, channels),
            self.rng.uniform(0.5, 2.0, channels),
        )

    def conv_bn_relu(
        self, x: str, cin: int, cout: int, kernel: int, stride: int, relu: bool
    ) -> str:
        bn = self.conv_bn(x, cin, cout, kernel, stride, self._stats)
        if not relu:
            return bn
        out = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [bn], [out], name=out))
        return out

    def bottleneck(self, x: str, cin: int, width: int, cout: int, stride: int) -> str:
        y = self.conv_bn_relu(x, cin, width, 1, 1, relu=True)
        y = self.conv_bn_relu(y, width, width, 3, stride, relu=True)
        y = self.conv_bn_relu(y, width, cout, 1, 1, relu=False)
        shortcut = (
            x if cin == cout and stride == 1 else self.conv_bn_relu(x, cin, cout, 1, stride, False)
        )
        added, out = self.name("add"), self.name("relu")
        self.nodes.append(helper.make_node("Add", [y, shortcut], [added], name=added))
        self.nodes.append(helper.make_node("Relu", [added], [out], name=out))
        return out


def resnet50(seed: int = 0, image_size: int = 224) -> onnx.ModelProto:
    builder = _Builder(np.random.default_rng(seed))
    x = builder.conv_bn_relu("input", 3, 64, 7, 2, relu=True)
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
    builder.classifier(x, channels)
    return builder.model("resnet50", image_size)
