"""The Keras Applications matrix: every family folded to .keras, .h5 and .onnx, and bnfold's
fold rate beside the IJCAI-2022 paper "To Fold or Not to Fold".

Each model is built at its smallest input (``weights=None``, BN statistics randomised), folded
with ``bnfold.fold`` (check on), the written file read back and compared with the Keras
original (max |written - original| / max |original|), and the BNs the log calls left counted
in the file itself. Each model runs in a child process, so one model's memory is not the
next one's. ``--write-docs`` puts the matrix into docs/keras.md and the paper table into
docs/benchmarks.md, between their ``<!-- keras-applications -->`` markers.

    python benchmarks/keras_applications.py [--models Xception NASNetMobile] [--write-docs]
    python benchmarks/keras_applications.py --rows rows.json --models Xception  # adds rows
    python benchmarks/keras_applications.py --rows rows.json --render --write-docs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bnfold.testing_keras import APPLICATIONS, SUFFIXES, MatrixRow, build_application, fold_to

ROOT = Path(__file__).resolve().parents[1]
# "To Fold or Not to Fold" (IJCAI 2022), tensorflow-batchnorm-folding: (folded, not folded).
PAPER = {
    "ResNet50": (53, 0),
    "MobileNetV2": (52, 0),
    "EfficientNetB0": (49, 0),
    "InceptionResNetV2": (204, 0),
    "NASNetMobile": (28, 164),
    "DenseNet121": (59, 62),
}
MARK = "keras-applications"


def run_one(name: str, suffixes: tuple[str, ...]) -> list[dict[str, Any]]:
    model = build_application(name)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for suffix in suffixes:
            row = fold_to(model, name, Path(folder) / f"{name}{suffix}")
            rows.append(dataclasses.asdict(row))
    return rows


def run_child(name: str, suffixes: tuple[str, ...]) -> list[MatrixRow]:
    command = [sys.executable, __file__, "--one", name, "--formats", *suffixes]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return [MatrixRow(**row) for row in json.loads(done.stdout.strip().splitlines()[-1])]


def _reasons(row: MatrixRow) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(row.reasons.items())) or "-"


def _stages(row: MatrixRow) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(row.stages.items())) or "-"


def matrix_table(rows: list[MatrixRow]) -> str:
    lines = [
        "| model | output | found | folded (stage) | left (reasons) | BN in file | max rel | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.error:
            lines.append(f"| {row.model} | {row.suffix} | not written: {row.error} |||||| ")
            continue
        lines.append(
            f"| {row.model} | {row.suffix} | {row.found} | {row.folded} ({_stages(row)}) "
            f"| {row.left} ({_reasons(row)}) | {row.left_in_file} | {row.max_rel:.1e} "
            f"| {row.seconds:.1f} |"
        )
    return "\n".join(lines)


def paper_table(rows: list[MatrixRow]) -> str:
    lines = [
        "| model | paper folded / not | bnfold .keras folded / left | bnfold .onnx folded / left |",
        "|---|---|---|---|",
    ]
    by_key = {(row.model, row.suffix): row for row in rows}
    for name, (folded, not_folded) in PAPER.items():
        cells = []
        for suffix in (".keras", ".onnx"):
            row = by_key.get((name, suffix))
            cells.append(f"{row.folded} / {row.left}" if row and not row.error else "not run")
        lines.append(f"| {name} | {folded} / {not_folded} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def write_between_marks(path: Path, text: str) -> None:
    page = path.read_text(encoding="utf-8")
    start, end = f"<!-- {MARK}:start -->", f"<!-- {MARK}:end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(page):
        raise SystemExit(f"{path}: no {start} ... {end} markers")
    path.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", page), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(APPLICATIONS))
    parser.add_argument("--formats", nargs="*", default=list(SUFFIXES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child's model
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument(
        "--rows", type=Path, help="a JSON file the rows are added to (and read from, with --render)"
    )
    parser.add_argument("--render", action="store_true", help="only render the --rows file")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, tuple(args.formats))))
        return
    saved = json.loads(args.rows.read_text()) if args.rows and args.rows.exists() else []
    rows = [MatrixRow(**row) for row in saved]
    for name in [] if args.render else args.models:
        rows = [row for row in rows if row.model != name]
        rows += run_child(name, tuple(args.formats))
        if args.rows:
            args.rows.write_text(json.dumps([dataclasses.asdict(row) for row in rows]))
        print("\n".join(matrix_table(rows[-len(args.formats) :]).splitlines()[2:]), flush=True)
    order = list(APPLICATIONS)
    rows.sort(key=lambda row: (order.index(row.model), SUFFIXES.index(row.suffix)))
    print(matrix_table(rows))
    print()
    print(paper_table(rows))
    if args.write_docs:
        write_between_marks(ROOT / "docs" / "keras.md", matrix_table(rows))
        write_between_marks(ROOT / "docs" / "benchmarks.md", paper_table(rows))


if __name__ == "__main__":
    main()
