"""The Keras Applications matrix, shared by its tests (``tests/test_keras_applications.py``)
and its benchmark (``benchmarks/keras_applications.py``): each family built at its smallest
input with ``weights=None`` and randomised BN statistics, folded to ``.keras``, ``.h5`` and
``.onnx``, the written file read back and compared with the Keras original, and the BNs the
log calls left counted in the file itself. TensorFlow is imported only when a model is built.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# name: (smallest input side the family accepts, its number of BatchNormalization layers)
APPLICATIONS: dict[str, tuple[int, int]] = {
    "ResNet50": (32, 53),
    "ResNet50V2": (32, 49),
    "MobileNet": (32, 27),
    "MobileNetV2": (32, 52),
    "MobileNetV3Small": (32, 34),
    "EfficientNetB0": (32, 49),
    "EfficientNetV2B0": (32, 59),
    "DenseNet121": (32, 121),
    "Xception": (71, 40),
    "InceptionV3": (75, 94),
    "InceptionResNetV2": (75, 204),
    "NASNetMobile": (32, 192),
    "RegNetX002": (32, 44),  # in tf_keras (Keras 2) only
    "ConvNeXtTiny": (32, 0),
}
SUFFIXES = (".keras", ".h5", ".onnx")
BATCH = 2


def build_application(name: str, seed: int = 0) -> Any:
    """Keras Application ``name`` at its smallest input, no weights downloaded, BN
    statistics randomised (an untrained BN is an identity and would hide a wrong fold)."""
    import keras

    from bnfold.frontends.keras import randomise_batchnorm_statistics

    side, _ = APPLICATIONS[name]
    keras.utils.set_random_seed(seed)
    build = getattr(keras.applications, name, None)
    if build is None:  # RegNet is in tf_keras (Keras 2) only
        import tf_keras

        tf_keras.utils.set_random_seed(seed)
        build = getattr(tf_keras.applications, name)
    model = build(weights=None, input_shape=(side, side, 3))
    randomise_batchnorm_statistics(model, np.random.default_rng(seed))
    return model


def batchnorms_in_file(path: Path, layer_names: list[str] | None = None) -> int:
    """BatchNormalization layers in a Keras file (nested ones too); BN nodes and BN-shaped
    Mul/Add chains in an ONNX file, as the fold engine finds them. With ``layer_names`` (the
    source model's BN layers) an ONNX chain counts only in one of their name scopes: a
    Rescaling layer's scalar Mul/Add is BN-shaped, but it is no BN."""
    if path.suffix == ".onnx":
        import onnx_ir

        from bnfold.graph import iter_graphs
        from bnfold.rules.affines import find_affine_chains

        model = onnx_ir.load(path)
        chains = [c for g in iter_graphs(model.graph) for c in find_affine_chains(g)]
        chains = [chain for chain in chains if chain.is_bn_like]
        if layer_names is None:
            return len(chains)
        scopes = [re.compile(rf"(^|/){re.escape(name)}(_\d+)?(/|$)") for name in layer_names]
        names = [[node.name or "" for node in chain.nodes] for chain in chains]
        return sum(any(p.search(n) for p in scopes for n in chain) for chain in names)
    from bnfold.frontends.keras import load_keras_model

    written = load_keras_model(path)
    layers = written._flatten_layers(include_self=False)
    return sum(type(layer).__name__ == "BatchNormalization" for layer in layers)


def batchnorm_layer_names(model: Any) -> list[str]:
    layers = model._flatten_layers(include_self=False)
    return [layer.name for layer in layers if type(layer).__name__ == "BatchNormalization"]


def run_written(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The written file's outputs: ONNX in onnxruntime with optimisations disabled, Keras in
    the Keras that reads it back."""
    if path.suffix == ".onnx":
        from bnfold.frontends.onnx_frontend import OnnxFrontend

        frontend = OnnxFrontend()
        return frontend.run(frontend.load(str(path), _load_settings()), feeds)
    from bnfold.frontends.keras import load_keras_model, predict_keras

    return predict_keras(load_keras_model(path), feeds)


def _load_settings() -> Any:
    from bnfold.frontends.base import LoadSettings

    return LoadSettings()


@dataclass
class MatrixRow:
    """One model folded to one format: the log's counts, the BNs left in the file, the
    written file's largest error relative to the Keras original's largest output."""

    model: str
    suffix: str
    found: int
    folded: int
    left: int
    left_in_file: int
    max_rel: float
    seconds: float
    reasons: dict[str, int] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)
    error: str = ""  # bnfold's one line when it refused the output (exit code 1 to 4)


def fold_to(model: Any, name: str, path: Path) -> MatrixRow:
    """Fold ``model`` into ``path`` with the pipeline (check on), then read the file back."""
    import bnfold
    from bnfold.frontends.keras import keras_input_specs, predict_keras

    rng = np.random.default_rng(1)
    feeds = {
        spec.name: rng.normal(size=(BATCH, *(int(d or 1) for d in spec.shape[1:]))).astype(
            spec.dtype
        )
        for spec in keras_input_specs(model)
    }
    expected = predict_keras(model, feeds)
    started = time.perf_counter()
    try:
        result = bnfold.fold(model, path)
    except bnfold.BnfoldError as error:
        seconds = time.perf_counter() - started
        return MatrixRow(name, path.suffix, 0, 0, 0, 0, float("nan"), seconds, error=str(error))
    seconds = time.perf_counter() - started
    actual = run_written(path, feeds)
    worst = max(
        float(np.max(np.abs(actual[key] - value)) / np.max(np.abs(value)))
        for key, value in expected.items()
    )
    counts = result.counts()
    stages: dict[str, int] = {}
    for entry in result.entries:
        if entry.kind == "batchnorm" and entry.folded:
            stages[entry.stage] = stages.get(entry.stage, 0) + 1
    return MatrixRow(
        name,
        path.suffix,
        found=counts["found"],
        folded=counts["found"] - counts["left"],
        left=counts["left"],
        left_in_file=batchnorms_in_file(path, batchnorm_layer_names(model)),
        max_rel=worst,
        seconds=seconds,
        reasons=dict(counts.get("left_by_reason", {})),
        stages=stages,
    )
