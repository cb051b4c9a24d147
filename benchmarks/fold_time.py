"""Fold time and peak memory of a ResNet50-size ONNX model against onnx.load + onnx.save.

Builds the PyTorch-style ResNet50 of benchmarks/resnet50_onnx.py (53 Conv -> BN pairs,
102 MB) and runs, each in its own process so that each has its own peak RSS:
  1. floor: ``python -c "onnx.save(onnx.load(src), dst)"`` (any tool that rewrites the file
     pays this; its own load + save seconds are printed too),
  2. ``bnfold src -o out --no-check`` (the CLI, as a user runs it),
  3. ``bnfold src -o out`` (the same with the equivalence check, batch 2).
Two ratios: *process* times each process from start to exit (interpreter start and imports
included on both sides, what a user waits for); *work* compares the floor's own load + save
with the phase seconds bnfold prints (load, fold, check, write), imports left out on both
sides, as issue 9's first figures were measured. Peak RSS comes from ``os.wait4`` on each
child; the floor's is what onnx alone needs to rewrite the file. Linux keeps a process's peak
RSS across ``exec``, so a child starts with its parent's RSS as its peak: this script builds
the model in a child of its own and never imports onnx or numpy, so that its own RSS (printed)
stays far below what it measures.
Each command runs ``--repeat`` times, interleaved; the table shows the fastest run and the
largest peak RSS.

Run: .venv/bin/python benchmarks/fold_time.py [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BNFOLD = str(Path(sys.executable).with_name("bnfold"))
FLOOR_SCRIPT = (
    "import sys, time, onnx\n"
    "started = time.perf_counter()\n"
    "onnx.save(onnx.load(sys.argv[1]), sys.argv[2])\n"
    "print(f'{time.perf_counter() - started:.3f}')\n"
)
# Builds the model in a child process, writes it and prints its weight bytes: a model built
# here would be counted in every child's peak RSS (see the docstring).
BUILD_SCRIPT = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "import onnx\n"
    "from resnet50_onnx import resnet50\n"
    "model = resnet50()\n"
    "onnx.save(model, sys.argv[2])\n"
    "print(sum(len(tensor.raw_data) for tensor in model.graph.initializer))\n"
)
# The goals of issue 16: whole processes against the floor's; peak RSS (issue 9) against
# the weights.
GOAL_NO_CHECK, GOAL_CHECK, GOAL_RSS = 1.25, 2.0, 2.0


@dataclass
class Measured:
    label: str
    command: list[str]
    seconds: list[float] = field(default_factory=list)
    work: list[float] = field(default_factory=list)
    peak_bytes: int = 0


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
        measured.work.append(work_seconds(out.read().decode()))
    measured.seconds.append(seconds)
    measured.peak_bytes = max(measured.peak_bytes, usage.ru_maxrss * 1024)  # KiB on Linux


def work_seconds(stdout: str) -> float:
    """The floor's own load + save, or the sum of the phase seconds bnfold prints."""
    phases = re.findall(r"\b(?:load|fold|check|write) (\d+\.\d+) s\b", stdout)
    if phases:
        return sum(float(value) for value in phases)
    try:
        return float(stdout.strip())
    except ValueError:
        return float("nan")


def build_model(source: Path) -> int:
    """Write the ResNet50 to ``source`` from a child process; its weight bytes."""
    folder = str(Path(__file__).resolve().parent)
    command = [sys.executable, "-c", BUILD_SCRIPT, folder, str(source)]
    return int(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def own_rss_bytes() -> int:
    """This process's resident memory, which each child's peak RSS may include."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def print_table(rows: list[Measured], weights: int) -> None:
    floor, base_work = min(rows[0].seconds), min(rows[0].work)
    print(
        f"\n{'command':<30} {'process':>8} {'ratio':>6} {'work':>6} {'ratio':>6} "
        f"{'peak RSS':>9} {'/ weights':>9}"
    )
    ratios = []
    for row in rows:
        best, work = min(row.seconds), min(row.work)
        ratios.append((best / floor, work / base_work))
        print(
            f"{row.label:<30} {best:7.2f}s {best / floor:5.2f}x {work:5.2f}s "
            f"{work / base_work:5.2f}x {row.peak_bytes / 1e6:6.0f} MB {row.peak_bytes / weights:8.2f}x"
        )
    (_, _), (no_check, no_check_work), (check, check_work) = ratios
    print(
        f"goals (process): no check {no_check:.2f}x <= {GOAL_NO_CHECK}x; "
        f"check {check:.2f}x <= {GOAL_CHECK}x (work: {no_check_work:.2f}x, {check_work:.2f}x); "
        f"peak RSS <= {GOAL_RSS}x the {weights / 1e6:.0f} MB of weights"
    )
    print("(fastest of the runs; work: in-process seconds, imports and interpreter start left out)")


def profile(source: Path, folder: Path, check: bool) -> None:
    """cProfile of the CLI in its own process: the top functions by cumulative time."""
    command = [sys.executable, "-m", "cProfile", "-s", "cumulative", "-m", "bnfold"]
    command += [str(source), "-o", str(folder / "profiled.onnx")]
    command += [] if check else ["--no-check"]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    start = lines.find("Ordered by")
    print(f"\nprofile of bnfold {'(check)' if check else '--no-check'}:")
    print("\n".join(lines[start:].splitlines()[:45]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command")
    parser.add_argument("--profile", action="store_true", help="also cProfile the CLI")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        source = folder / "resnet50.onnx"
        weights = build_model(source)
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
        print_table(rows, weights)
        print(f"(this script's own RSS, a floor under every peak: {own_rss_bytes() / 1e6:.0f} MB)")
        if options.profile:
            profile(source, folder, check=False)
            profile(source, folder, check=True)


if __name__ == "__main__":
    main()
