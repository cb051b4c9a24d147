"""What the Keras forward fold buys on real pre-activation architectures, end to end.

Builds ResNet50V2 and DenseNet121 (``weights=None``, 64x64x3 input, ``classifier_activation=None``
so the error is not squashed by a softmax), randomises every BN's gamma, beta, moving mean and
moving variance with a seeded generator, saves each as ``.h5`` in a temporary folder and runs
``bnfold.fold(path, output=...)`` once to ``.onnx`` and once to ``.keras``. Per model and output it
prints the BN layers before, how many were folded backward and forward (and at which stage:
on the Keras model, or by the ONNX engine after tf2onnx), what was left and why, the max
relative error of bnfold's own check (``max|folded - original| / max|original|`` against Keras'
prediction of the original), and the wall time of ``bnfold.fold``.

    python benchmarks/keras_forward_counts.py [--models ResNet50V2 DenseNet121] [--batch 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

import bnfold
from bnfold.foldlog import Outcome
from bnfold.frontends.keras import import_keras, randomise_batchnorm_statistics, save_keras_model

INPUT_SHAPE = (64, 64, 3)


def summarise(result: Any) -> dict[str, Any]:
    stages: Counter[str] = Counter()
    for entry in result.entries:
        if entry.outcome is not Outcome.LEFT:
            stages[f"{entry.outcome.value}/{entry.stage}"] += 1
    counts = result.counts()
    return {
        "entries": counts["found"],
        "backward": counts["folded_into_previous"],
        "forward": counts["folded_into_next"],
        "by_stage": dict(sorted(stages.items())),
        "left": counts["left_by_reason"],
        "max_rel": result.check.max_rel,
    }


def measure(name: str, seed: int, batch: int, folder: Path) -> None:
    keras, _ = import_keras()
    keras.utils.set_random_seed(seed)
    build = getattr(keras.applications, name)
    model = build(weights=None, input_shape=INPUT_SHAPE, classifier_activation=None)
    before = randomise_batchnorm_statistics(model, np.random.default_rng(seed))
    path = folder / f"{name}.h5"
    save_keras_model(model, path)
    for suffix in (".onnx", ".keras"):
        started = time.perf_counter()
        result = bnfold.fold(
            path,
            folder / f"{name}_folded{suffix}",
            check=bnfold.CheckSettings(seed=seed, dims={"batch": batch}),
        )
        seconds = time.perf_counter() - started
        summary = summarise(result)
        print(
            f"{name} -> {suffix}: BN before {before}, log entries {summary['entries']}, "
            f"backward {summary['backward']}, forward {summary['forward']} "
            f"{summary['by_stage']}, left {summary['left'] or 0}, "
            f"max rel {summary['max_rel']:.2e}, time {seconds:.1f} s "
            f"({', '.join(f'{k} {v:.1f}' for k, v in result.seconds.items())})",
            flush=True,
        )
        examples = {entry.reason: entry for entry in result.left}
        for reason, entry in examples.items():
            assert reason is not None
            print(f"    e.g. {reason.value}: {entry.name} {entry.detail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ResNet50V2", "DenseNet121"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as folder:
        for name in arguments.models:
            measure(name, arguments.seed, arguments.batch, Path(folder))


if __name__ == "__main__":
    main()
