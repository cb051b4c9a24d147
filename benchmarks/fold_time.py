"""Fold time of a ResNet50-size ONNX model against onnx.load + onnx.save of the same file.

Builds the PyTorch-style ResNet50 of benchmarks/resnet50_onnx.py (53 Conv -> BN pairs,
102 MB) and measures, in one run:
  1. onnx.load + onnx.save (the floor for any tool that rewrites the file),
  2. bnfold.fold(path, output, check=False)  (load, fold, atomic write),
  3. bnfold.fold(path, output)               (the same plus the equivalence check, batch 1).

Run: .venv/bin/python benchmarks/fold_time.py
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import onnx

import bnfold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resnet50_onnx import resnet50


def timed(label: str, action) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    print(f"{label:<40} {seconds:7.2f} s")
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "resnet50.onnx"
        onnx.save(resnet50(), source)
        print(f"PyTorch-style ResNet50: {source.stat().st_size / 1e6:.1f} MB")
        baseline = timed(
            "onnx.load + onnx.save",
            lambda: onnx.save(onnx.load(source), Path(folder) / "copy.onnx"),
        )
        no_check = timed(
            "bnfold.fold(check=False), write included",
            lambda: bnfold.fold(source, output=Path(folder) / "a.onnx", check=False),
        )
        result = bnfold.fold(source, output=Path(folder) / "b.onnx", dims={"batch": 1})
        phases = ", ".join(f"{name} {value:.2f} s" for name, value in result.seconds.items())
        print(f"bnfold.fold with check, by phase: {phases}")
        assert result.check is not None
        print(f"counts: {result.counts()}")
        print(f"max rel error: {result.check.max_rel:.3g}")
        print(f"bnfold without check / (onnx.load + onnx.save): {no_check / baseline:.2f}x")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of the whole run: {peak:.0f} MB")


if __name__ == "__main__":
    main()
