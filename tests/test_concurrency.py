"""``bnfold.fold`` on different ONNX models at once, from four threads and from a pool of four
processes (issue 16, item 4): every result (the bytes written, the fold log, the check)
equals the one a serial run gives. Nothing in bnfold may be shared between two folds."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import bnfold
from bnfold.testing import pytorch_style_model

MODELS = Path(__file__).resolve().parent.parent / "models"
WORKERS = 4
ROUNDS = 3  # each model folded this many times at once with the others, for overlap


def fold_one(source: str, output: str) -> dict[str, Any]:
    """Fold ``source`` into ``output``; what a run leaves: its log, its check, its files."""
    result = bnfold.fold(source, output)
    assert result.check is not None
    folder = Path(output).parent
    return {
        "log": [entry.to_dict() for entry in result.entries],
        "max_abs": result.check.max_abs,
        "max_rel": result.check.max_rel,
        "files": {path.name: path.read_bytes() for path in sorted(folder.iterdir())},
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Four models of different shapes: two converted from Keras, a PyTorch-style one, and
    one with external data (written to OUT.data beside OUT)."""
    root = tmp_path_factory.mktemp("sources")
    external = root / "external" / "model.onnx"
    external.parent.mkdir()
    proto = pytorch_style_model(np.random.default_rng(7))
    onnx.save(proto, external, save_as_external_data=True, size_threshold=0)
    return [
        str(MODELS / "pytorch_style.onnx"),
        str(MODELS / "tf2onnx_cnn.onnx"),
        str(MODELS / "tf2onnx_mlp.onnx"),
        str(external),
    ]


def outputs(root: Path, count: int = WORKERS) -> list[str]:
    """One folder per run, so each run's files can be compared whole."""
    paths = []
    for index in range(count):
        (root / str(index)).mkdir(parents=True)
        paths.append(str(root / str(index) / "out.onnx"))
    return paths


@pytest.fixture(scope="module")
def serial(sources: list[str], tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("serial")
    return [fold_one(source, output) for source, output in zip(sources, outputs(root), strict=True)]


def test_serial_runs_fold_and_write_every_model(serial: list[dict[str, Any]]) -> None:
    assert all(any(entry["outcome"] != "left" for entry in run["log"]) for run in serial)
    assert sorted(serial[3]["files"]) == ["out.onnx", "out.onnx.data"]


def test_four_threads_give_the_serial_results(
    sources: list[str], serial: list[dict[str, Any]], tmp_path: Path
) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        runs = list(pool.map(fold_one, sources * ROUNDS, outputs(tmp_path, WORKERS * ROUNDS)))
    assert runs == serial * ROUNDS


def test_four_processes_give_the_serial_results(
    sources: list[str], serial: list[dict[str, Any]], tmp_path: Path
) -> None:
    # spawn: a forked child would inherit onnxruntime's thread pools mid-state.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        runs = list(pool.map(fold_one, sources * ROUNDS, outputs(tmp_path, WORKERS * ROUNDS)))
    assert runs == serial * ROUNDS
