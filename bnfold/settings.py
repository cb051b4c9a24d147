"""How a fold, a check and a benchmark run: every default is written here, once.

The command line builds one ``FoldSettings``, ``CheckSettings`` and ``BenchSettings`` from its
options and passes them down whole; the library takes the same objects. Standard library only,
so the command line can read the defaults for ``--help`` without importing numpy or onnxruntime.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

# Arrays by input name, or an .npz file holding them.
Inputs = Mapping[str, Any] | str | os.PathLike[str]

# The graph-optimisation levels a benchmark can time, by the command line's --level choice.
LEVEL_CHOICES: dict[str, tuple[str, ...]] = {
    "all": ("all",),
    "disable": ("disable",),
    "both": ("all", "disable"),
}


@dataclass(frozen=True)
class FoldSettings:
    """What may fold: ``keep`` holds glob patterns (``fnmatch``, case-sensitive) on a BN's
    name or path as the log prints it (``bn1``, ``base/*`` for a whole nested Keras model);
    a BN they match is left in place with reason ``kept_by_user``. ``forward=False`` allows
    only folds into the layer before a BN, never into the layers after it. ``rebuild=False``
    only decides where a front end rebuilds a model to apply its folds (Keras): the log says
    what would fold and nothing is rebuilt (``bnfold inspect``)."""

    keep: tuple[str, ...] = ()
    forward: bool = True
    rebuild: bool = True

    def __post_init__(self) -> None:
        # keep="bn1" means one pattern, not the patterns "b", "n" and "1".
        keep = (self.keep,) if isinstance(self.keep, str) else tuple(self.keep)
        object.__setattr__(self, "keep", keep)

    def kept_by(self, name: str) -> str | None:
        """The first ``keep`` pattern that matches ``name``, or ``None``."""
        return next((pattern for pattern in self.keep if fnmatchcase(name, pattern)), None)

    def unmatched(self, names: list[str]) -> list[str]:
        """The ``keep`` patterns that match none of ``names`` (a usage error: a typo)."""
        return [p for p in self.keep if not any(fnmatchcase(name, p) for name in names)]


@dataclass(frozen=True)
class CheckSettings:
    """How the original and the folded model are compared.

    ``inputs``: arrays by input name or an .npz path (default: seeded random normal values);
    ``dims``: sizes of named dynamic dimensions for random inputs; ``seed``: the first seed;
    ``samples``: random input sets compared (seeds ``seed .. seed + samples - 1``);
    ``rtol``/``atol``: the gate (``None``: by the output's dtype, see
    ``bnfold.comparison.DEFAULT_TOLERANCES``); ``float64``: also run the original cast to
    float64, so a report shows whether an error is the fold's or float32's.
    """

    inputs: Inputs | None = None
    dims: Mapping[str, int] = field(default_factory=dict)
    seed: int = 0
    samples: int = 1
    rtol: float | None = None
    atol: float | None = None
    float64: bool = False


@dataclass(frozen=True)
class ReportSettings:
    """What a fold measures beside its log and check, for a report: ``sizes`` counts nodes
    and weights before and after (a Keras model is then also converted unfolded to ONNX);
    ``progress`` gets 1 per timed pair when the fold is also benchmarked."""

    sizes: bool = False
    progress: Callable[[int], None] | None = None


@dataclass(frozen=True)
class BenchSettings:
    """How latency is measured: ``levels`` (``"all"``: ORT_ENABLE_ALL, what users deploy;
    ``"disable"``: ORT_DISABLE_ALL, what the graph itself costs), ``runs`` timed pairs per
    level after ``warmup`` untimed runs of each model, or fewer when ``time_budget_s`` (per
    level) runs out; ``threads`` intra-op threads (0: onnxruntime's default), ``batch`` the
    size of a dynamic first dimension, ``provider`` the execution provider, ``seed`` the seed
    of the random inputs and of the bootstrap interval."""

    levels: tuple[str, ...] = LEVEL_CHOICES["both"]
    runs: int = 50
    warmup: int = 5
    time_budget_s: float | None = None
    threads: int = 1
    batch: int = 1
    provider: str = "CPUExecutionProvider"
    seed: int = 0


__all__ = [
    "LEVEL_CHOICES",
    "BenchSettings",
    "CheckSettings",
    "FoldSettings",
    "Inputs",
    "ReportSettings",
]
