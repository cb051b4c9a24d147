"""bnfold: fold BatchNormalization into neighbouring layers, prove it, measure it."""

from __future__ import annotations

from bnfold._version import __version__
from bnfold.api import BenchResult, benchmark, check, fold, inspect, save
from bnfold.comparison import CheckResult
from bnfold.errors import BnfoldError, CheckFailedError, InputError, OutputError, UsageError
from bnfold.fold import FoldResult, fold_model
from bnfold.foldlog import FoldEntry, Outcome, Reason

__all__ = [
    "BenchResult",
    "BnfoldError",
    "CheckFailedError",
    "CheckResult",
    "FoldEntry",
    "FoldResult",
    "InputError",
    "Outcome",
    "OutputError",
    "Reason",
    "UsageError",
    "__version__",
    "benchmark",
    "check",
    "fold",
    "fold_model",
    "inspect",
    "save",
]
