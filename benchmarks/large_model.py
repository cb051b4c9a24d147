"""Fold a model with more float32 weights than one protobuf can hold, and measure memory.

    python benchmarks/large_model.py [--gigabytes 2.6] [--channels 1024] [--keep]

Builds ``Conv(3x3, C->C) -> BatchNormalization -> Relu`` blocks until the weights reach
``--gigabytes``, written straight to an external data file one block at a time (never two
copies in memory), then runs ``bnfold.fold(path, output=...)`` with the check (batch 1,
4x4 spatial). Reports the wall time of each phase (load, fold, check, write, from
``FoldResult.seconds``), the peak resident memory over the whole fold (VmHWM) and within each
phase (sampled every 20 ms), all against the size of the weights. The goal is a peak near
twice the weights: the folded weights plus one onnxruntime session.

Everything is written to a temporary folder (``--keep`` keeps it); it needs about three
times the weights on disk: the input, the check's copy of the folded model, the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GIB = 1024**3


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


class Sampler(threading.Thread):
    """Resident memory every ``interval`` seconds, with the time it was taken."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.perf_counter(), rss_bytes()))
            time.sleep(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def peak_between(self, start: float, end: float) -> int:
        inside = [rss for moment, rss in self.samples if start <= moment <= end]
        return max(inside, default=0)


def build_model(folder: Path, gigabytes: float, channels: int, seed: int = 0) -> tuple[Path, int]:
    """Conv->BN->Relu blocks with external weights; returns the path and the weight bytes."""
    rng = np.random.default_rng(seed)
    per_block = channels * channels * 9 * 4
    blocks = max(1, int(np.ceil(gigabytes * GIB / per_block)))
    data_name = "large.onnx.data"
    nodes, initializers = [], []
    offset = 0
    current = "x"
    with open(folder / data_name, "wb") as data:
        for index in range(blocks):
            weight = (rng.standard_normal((channels, channels, 3, 3), np.float32)) / np.float32(
                np.sqrt(channels * 9)
            )
            raw = weight.tobytes()
            data.write(raw)
            tensor = TensorProto(name=f"w{index}", data_type=TensorProto.FLOAT, dims=weight.shape)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", offset), ("length", len(raw))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(value)
            offset += len(raw)
            del weight, raw
            initializers.append(tensor)
            params = {
                f"g{index}": rng.uniform(0.5, 1.5, channels),
                f"b{index}": rng.normal(0.0, 0.1, channels),
                f"m{index}": rng.normal(0.0, 0.1, channels),
                f"v{index}": rng.uniform(0.5, 1.5, channels),
            }
            initializers.extend(
                numpy_helper.from_array(array.astype(np.float32), name)
                for name, array in params.items()
            )
            nodes += [
                helper.make_node(
                    "Conv", [current, f"w{index}"], [f"c{index}"], name=f"conv{index}", pads=[1] * 4
                ),
                helper.make_node(
                    "BatchNormalization", [f"c{index}", *params], [f"n{index}"], name=f"bn{index}"
                ),
                helper.make_node("Relu", [f"n{index}"], [f"r{index}"], name=f"relu{index}"),
            ]
            current = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, 4, 4])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", channels, 4, 4])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    path = folder / "large.onnx"
    onnx.save(model, path)
    return path, offset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=2.6, help="float32 weights, GiB")
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    import bnfold

    folder = Path(tempfile.mkdtemp(prefix="bnfold-large-", dir=os.environ.get("TMPDIR")))
    started = time.perf_counter()
    source, weight_bytes = build_model(folder, args.gigabytes, args.channels)
    built = time.perf_counter() - started
    baseline = rss_bytes()
    out_dir = folder / "out"
    out_dir.mkdir()
    sampler = Sampler()
    sampler.start()
    fold_started = time.perf_counter()
    result = bnfold.fold(
        source, out_dir / "folded.onnx", check=bnfold.CheckSettings(dims={"batch": 1})
    )
    fold_ended = time.perf_counter()
    sampler.stop()
    assert result.check is not None
    phases = {}
    moment = fold_started
    for phase in ("load", "fold", "check", "write"):
        seconds = result.seconds.get(phase, 0.0)
        phases[phase] = {
            "seconds": round(seconds, 2),
            "peak_rss_gib": round(sampler.peak_between(moment, moment + seconds) / GIB, 2),
        }
        moment += seconds
    peak = peak_rss_bytes()
    outputs = sorted(path.name for path in out_dir.iterdir())
    figures = {
        "weights_gib": round(weight_bytes / GIB, 2),
        "blocks": len([n for n in onnx.load(source, load_external_data=False).graph.node]) // 3,
        "build_seconds": round(built, 1),
        "rss_before_fold_gib": round(baseline / GIB, 2),
        "peak_rss_gib": round(peak / GIB, 2),
        "peak_over_weights": round(peak / weight_bytes, 2),
        "total_seconds": round(fold_ended - fold_started, 1),
        "phases": phases,
        "folded": len(result.folded),
        "left": len(result.left),
        "max_rel": result.check.max_rel,
        "outputs": outputs,
        "output_gib": round(sum((out_dir / name).stat().st_size for name in outputs) / GIB, 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"weights {figures['weights_gib']} GiB in {figures['blocks']} Conv->BN blocks; "
            f"peak RSS {figures['peak_rss_gib']} GiB ({figures['peak_over_weights']}x weights); "
            f"{figures['folded']} folded, {figures['left']} left, max rel {figures['max_rel']:.2g}"
        )
        for phase, numbers in phases.items():
            print(
                f"  {phase:6s} {numbers['seconds']:7.2f} s   peak RSS {numbers['peak_rss_gib']} GiB"
            )
        print(f"  output: {', '.join(outputs)} ({figures['output_gib']} GiB)")
    if args.keep:
        print(f"kept {folder}", file=sys.stderr)
    else:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
