"""Time bnfold's Keras path on ResNet50 (224x224) against tf2onnx's conversion alone.

    python benchmarks/keras_resnet50_time.py

One run of each, each in a fresh Python process so that neither profits from the other's
warm TensorFlow (graph tracing caches, loaded kernels):

- bnfold: load .h5 + fold on Keras + keras_to_onnx (tf2onnx, validation) + shape inference and
  the ONNX fold engine (what ``bnfold MODEL.h5 -o OUT.onnx`` runs, less the check and the write);
- tf2onnx alone: load .h5 + ``tf2onnx.convert.from_function`` on the unfolded model.

Imports are timed apart. The model is ResNet50 with weights=None and randomised BN statistics,
written to a temporary folder and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]


def write_model(path: Path) -> None:
    import numpy as np

    from bnfold.frontends.keras import import_keras, randomise_batchnorm_statistics

    keras, _ = import_keras()
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(input_shape=(224, 224, 3), weights=None)
    randomise_batchnorm_statistics(model, np.random.default_rng(0))
    model.save(path)


def stage_bnfold(path: Path) -> dict[str, float]:
    started = time.perf_counter()
    from bnfold.fold import fold_model
    from bnfold.frontends import keras as frontend
    from bnfold.frontends.onnx import infer_shapes

    frontend.import_tf2onnx()
    seconds = {"imports": time.perf_counter() - started}
    clock = time.perf_counter()
    model = frontend.load_keras_model(path)
    seconds["load"] = time.perf_counter() - clock
    clock = time.perf_counter()
    folded, entries = frontend.fold_keras_model(model)
    seconds["keras fold"] = time.perf_counter() - clock
    clock = time.perf_counter()
    onnx_model = frontend.keras_to_onnx(folded)
    seconds["keras_to_onnx"] = time.perf_counter() - clock
    clock = time.perf_counter()
    result = fold_model(infer_shapes(onnx_model))
    seconds["shape inference + onnx fold engine"] = time.perf_counter() - clock
    seconds["total (without imports)"] = sum(
        value for key, value in seconds.items() if key != "imports"
    )
    seconds["BN folded on Keras"] = float(sum(entry.folded for entry in entries))
    seconds["affines folded by the ONNX engine"] = float(len(result.folded))
    return seconds


def stage_tf2onnx(path: Path) -> dict[str, float]:
    started = time.perf_counter()
    import keras
    import tensorflow as tf
    import tf2onnx

    seconds = {"imports": time.perf_counter() - started}
    clock = time.perf_counter()
    model = keras.saving.load_model(path, compile=False)
    seconds["load"] = time.perf_counter() - clock
    clock = time.perf_counter()
    signature = [tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input")]
    function = tf.function(lambda x: model(x, training=False), input_signature=signature)
    tf2onnx.convert.from_function(function, input_signature=signature)
    seconds["tf2onnx conversion"] = time.perf_counter() - clock
    seconds["total (without imports)"] = seconds["load"] + seconds["tf2onnx conversion"]
    return seconds


def run_stage(stage: str, path: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--stage", stage, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("bnfold", "tf2onnx"))
    parser.add_argument("model", nargs="?", type=Path)
    arguments = parser.parse_args()
    if arguments.stage:
        stage = stage_bnfold if arguments.stage == "bnfold" else stage_tf2onnx
        print(json.dumps(stage(arguments.model)))
        return 0
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "resnet50.h5"
        write_model(path)
        print(
            f"ResNet50 224x224, weights=None, randomised BN: {path.stat().st_size / 1e6:.0f} MB .h5"
        )
        print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, one run each\n")
        for title, stage in (("bnfold Keras path", "bnfold"), ("tf2onnx alone", "tf2onnx")):
            print(title)
            for key, value in run_stage(stage, path).items():
                unit = "" if key.startswith(("BN", "affines")) else " s"
                print(f"  {key:36s} {value:8.2f}{unit}" if unit else f"  {key:36s} {value:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
