"""Fold time and peak memory of a ResNet50-size ONNX model against onnx.load + onnx.save.

Builds the PyTorch-style ResNet50 of benchmarks/resnet50_onnx.py (53 Conv -> BN pairs,
102 MB) and runs, each in its own process so that each has its own peak RSS:
  1. floor: ``python -c "onnx.save(onnx.load(src), dst)"`` (any tool that rewrites the file
     pays this; its own load + save seconds are printed too),
  2. ``bnfold src -o out --no-check`` (the CLI, as a user runs it),
  3. ``bnfold src -o out`` (the same with the equivalence check, batch 2).
Every process is timed from start to exit (interpreter start and imports included on both
sides); the ratios divide by the floor process. Peak RSS comes from ``os.wait4`` on each child.
Each command runs ``--repeat`` times, interleaved; the table shows the fastest run and the
largest peak RSS.

Run: .venv/bin/python benchmarks/fold_time.py [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from resnet50_onnx import resnet50

BNFOLD = str(Path(sys.executable).with_name("bnfold"))
FLOOR_SCRIPT = (
    "import sys, time, onnx\n"
    "started = time.perf_counter()\n"
    "onnx.save(onnx.load(sys.argv[1]), sys.argv[2])\n"
    "print(f'{time.perf_counter() - started:.3f}')\n"
)
# The goals of issue 9: fold time against the floor, and peak RSS against the weights.
GOAL_NO_CHECK, GOAL_CHECK, GOAL_RSS = 1.5, 2.5, 2.0


@dataclass
class Measured:
    label: str
    command: list[str]
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    stdout: str = ""


def run_child(measured: Measured) -> None:
    """Run the command once, reaping it with ``os.wait4`` to read its own peak RSS (the
    children's rusage of ``getrusage`` is the largest over all children so far)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(measured.command, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(measured.command)} failed:\n{err.read().decode()}")
        measured.stdout = out.read().decode()
    measured.seconds.append(seconds)
    measured.peak_bytes = max(measured.peak_bytes, usage.ru_maxrss * 1024)  # KiB on Linux


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(tensor.raw_data) for tensor in model.graph.initializer)


def print_table(rows: list[Measured], floor: Measured, weights: int) -> None:
    base = min(floor.seconds)
    in_process = float(floor.stdout.strip() or "nan")
    print(f"\n{'command':<34} {'seconds':>8} {'vs floor':>9} {'peak RSS':>10} {'/ weights':>10}")
    for row in rows:
        best = min(row.seconds)
        print(
            f"{row.label:<34} {best:8.2f} {best / base:8.2f}x "
            f"{row.peak_bytes / 1e6:8.0f} MB {row.peak_bytes / weights:9.2f}x"
        )
    print(f"(floor's own onnx.load + onnx.save inside its process: {in_process:.2f} s)")
    no_check, with_check = (min(row.seconds) / base for row in rows[1:3])
    print(
        f"goals: no check {no_check:.2f}x <= {GOAL_NO_CHECK}x, "
        f"check {with_check:.2f}x <= {GOAL_CHECK}x, "
        f"peak RSS <= {GOAL_RSS}x weights ({weights / 1e6:.0f} MB)"
    )


def profile(source: Path, folder: Path, check: bool) -> None:
    """cProfile of the CLI in this process: the top functions by cumulative time."""
    import cProfile
    import pstats

    from click.testing import CliRunner

    from bnfold.cli import main as cli_main

    arguments = [str(source), "-o", str(folder / "profiled.onnx")]
    arguments += [] if check else ["--no-check"]
    profiler = cProfile.Profile()
    profiler.enable()
    result = CliRunner().invoke(cli_main, arguments, catch_exceptions=False)
    profiler.disable()
    print(f"\nprofile of bnfold {' '.join(arguments[1:])} (exit {result.exit_code}):")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command")
    parser.add_argument("--profile", action="store_true", help="also cProfile the CLI")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        source = folder / "resnet50.onnx"
        model = resnet50()
        onnx.save(model, source)
        weights = weight_bytes(model)
        del model
        print(f"PyTorch-style ResNet50: {source.stat().st_size / 1e6:.1f} MB file, ", end="")
        print(f"{weights / 1e6:.1f} MB of weights; {options.repeat} runs of each command")
        floor = Measured(
            "floor: onnx.load + onnx.save",
            [sys.executable, "-c", FLOOR_SCRIPT, str(source), str(folder / "copy.onnx")],
        )
        rows = [
            floor,
            Measured("bnfold --no-check", [BNFOLD, str(source), "-o", str(folder / "a.onnx")]),
            Measured("bnfold (check)", [BNFOLD, str(source), "-o", str(folder / "b.onnx")]),
        ]
        rows[1].command.append("--no-check")
        for _ in range(options.repeat):
            for row in rows:
                run_child(row)
        print_table(rows, floor, weights)
        if options.profile:
            profile(source, folder, check=False)
            profile(source, folder, check=True)


if __name__ == "__main__":
    main()
