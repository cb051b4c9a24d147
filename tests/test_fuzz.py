"""A small, seeded version of benchmarks/fuzz_loader.py: 200 mutated demo models through
``bnfold.inspect`` and ``bnfold.fold``; nothing but ``BnfoldError`` may escape, the input is
never changed and no temporary folder is left (the full run: docs/hardening.md)."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

FUZZER = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_loader.py"


def load_fuzzer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_loader", FUZZER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_loader"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [0, 1])
def test_mutated_models_raise_only_bnfold_errors(tmp_path: Path, seed: int):
    fuzzer = load_fuzzer()
    models = fuzzer.demo_models()
    escaped, results = [], set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy on NaN weights, by design
        for iteration in range(100):
            for outcome in fuzzer.run_one(iteration, seed, models, tmp_path):
                results.add(outcome.result)
                if outcome.escaped:
                    escaped.append(outcome)
    assert escaped == []
    # The mutations reach both ends: rejected files and models that fold.
    assert {"ok", "BnfoldError:3"} <= results
