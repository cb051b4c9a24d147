"""bnfold: fold BatchNormalization into neighbouring layers, prove it, measure it.

Names are imported on first use (module ``__getattr__``): ``import bnfold`` and
``bnfold --help`` do not load numpy, onnx or onnxruntime.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from bnfold._version import __version__

if TYPE_CHECKING:
    from bnfold.api import benchmark, check, fold, inspect, save
    from bnfold.errors import BnfoldError, CheckFailedError, InputError, OutputError, UsageError
    from bnfold.fold import FoldPass, fold_model
    from bnfold.foldlog import FoldEntry, Outcome, Reason
    from bnfold.frontends.base import LoadSettings
    from bnfold.results import BenchResult, CheckResult, FoldResult
    from bnfold.settings import BenchSettings, CheckSettings, FoldSettings, ReportSettings

_WHERE = {
    "benchmark": "bnfold.api",
    "check": "bnfold.api",
    "fold": "bnfold.api",
    "inspect": "bnfold.api",
    "save": "bnfold.api",
    "BnfoldError": "bnfold.errors",
    "CheckFailedError": "bnfold.errors",
    "InputError": "bnfold.errors",
    "OutputError": "bnfold.errors",
    "UsageError": "bnfold.errors",
    "FoldPass": "bnfold.fold",
    "fold_model": "bnfold.fold",
    "FoldEntry": "bnfold.foldlog",
    "Outcome": "bnfold.foldlog",
    "Reason": "bnfold.foldlog",
    "LoadSettings": "bnfold.frontends.base",
    "BenchResult": "bnfold.results",
    "CheckResult": "bnfold.results",
    "FoldResult": "bnfold.results",
    "BenchSettings": "bnfold.settings",
    "CheckSettings": "bnfold.settings",
    "FoldSettings": "bnfold.settings",
    "ReportSettings": "bnfold.settings",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bnfold' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


class _Package(types.ModuleType):
    """``bnfold.fold`` and ``bnfold.check`` are functions and also a module and a subpackage:
    importing the module would make Python rebind the package's name to it, so that one
    rebinding is ignored and the name stays the function (found by ``__getattr__``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("fold", "check") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "BenchResult",
    "BenchSettings",
    "BnfoldError",
    "CheckFailedError",
    "CheckResult",
    "CheckSettings",
    "FoldEntry",
    "FoldPass",
    "FoldResult",
    "FoldSettings",
    "InputError",
    "LoadSettings",
    "Outcome",
    "OutputError",
    "Reason",
    "ReportSettings",
    "UsageError",
    "__version__",
    "benchmark",
    "check",
    "fold",
    "fold_model",
    "inspect",
    "save",
]
