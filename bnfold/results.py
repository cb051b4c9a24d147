"""What bnfold measured, as plain data: the fold's run record, the equivalence check, sizes
and latency. Nothing here runs a model, so the report code (and anything that only reads a
result) imports this module without onnxruntime, onnx or numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bnfold.foldlog import FoldEntry, FoldLog

# --------------------------------------------------------------------------- check


@dataclass
class OutputComparison:
    name: str
    dtype: str
    shape: list[int]
    max_abs: float
    max_rel: float
    mean_abs: float
    rtol: float
    atol: float
    passed: bool
    detail: str = ""
    # Filled only where known: the share of rows of a classifier-shaped output ([N, K], K > 1)
    # whose arg-max agrees, and each model's max relative error against a float64 reference.
    top1_agreement: float | None = None
    reference_vs_float64: float | None = None
    candidate_vs_float64: float | None = None
    # The largest |reference| value: the scale max_rel is relative to and rtol multiplies.
    scale: float | None = None


@dataclass
class CheckResult:
    """Per-output errors of a candidate against a reference, and whether the gate passed."""

    outputs: list[OutputComparison] = field(default_factory=list)
    inputs: str = ""
    samples: int = 1
    float64_note: str = ""  # why the float64 columns are empty, or how they were made
    gate_note: str = ""  # which dtype set the default gate, when not the outputs' own

    @property
    def passed(self) -> bool:
        return all(output.passed for output in self.outputs)

    @property
    def max_rel(self) -> float:
        return max((output.max_rel for output in self.outputs), default=0.0)

    @property
    def max_abs(self) -> float:
        return max((output.max_abs for output in self.outputs), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "inputs": self.inputs,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "samples": self.samples,
            "float64_note": self.float64_note,
            "gate_note": self.gate_note,
            "outputs": [asdict(output) for output in self.outputs],
        }


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class ModelSizes:
    """Counts over the main graph and every subgraph."""

    nodes: int
    parameters: int  # elements of initializers and Constant tensors
    weight_bytes: int  # bytes of those elements
    batchnorm_nodes: int
    affine_nodes: int  # nodes in BN-like affine chains, BatchNormalization included

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class SizeComparison:
    before: ModelSizes
    after: ModelSizes

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before.to_dict(), "after": self.after.to_dict()}


# --------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per run of one model."""

    runs: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float
    std: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> LatencyStats:
        import numpy as np  # only where timings are measured; readers of results skip it

        values = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(
            runs=int(values.size),
            p50=float(p50),
            p90=float(p90),
            p99=float(p99),
            mean=float(values.mean()),
            min=float(values.min()),
            max=float(values.max()),
            std=float(values.std()),
        )


@dataclass
class LevelLatency:
    """Both models at one graph-optimisation level."""

    level: str  # "all" or "disable"
    ort_level: str  # onnxruntime's name for it
    baseline: LatencyStats
    candidate: LatencyStats
    speedup: float  # p50(baseline) / p50(candidate)
    speedup_ci: tuple[float, float]
    confidence: float
    order: str  # the order runs were timed in, "ABAB..."; A = baseline, B = candidate
    baseline_ms: list[float] = field(default_factory=list)
    candidate_ms: list[float] = field(default_factory=list)
    stopped_by: str = "runs"  # "runs" or "time budget"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["speedup_ci"] = list(self.speedup_ci)
        return data


@dataclass(frozen=True)
class Machine:
    cpu: str
    logical_cores: int
    platform: str
    python: str
    versions: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LatencyResult:
    """What was measured and under which conditions."""

    baseline: str
    candidate: str
    provider: str
    threads: int  # intra-op threads; 0 is onnxruntime's default (one per physical core)
    batch: int | None  # first dimension of the first input as run; None for a scalar input
    inputs: str
    warmup: int
    runs: int  # pairs asked for
    time_budget_s: float | None
    seed: int
    machine: Machine
    levels: list[LevelLatency] = field(default_factory=list)

    def level(self, name: str) -> LevelLatency | None:
        return next((item for item in self.levels if item.level == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "provider": self.provider,
            "threads": self.threads,
            "batch": self.batch,
            "inputs": self.inputs,
            "warmup": self.warmup,
            "runs": self.runs,
            "time_budget_s": self.time_budget_s,
            "seed": self.seed,
            "machine": self.machine.to_dict(),
            "levels": [item.to_dict() for item in self.levels],
        }


# --------------------------------------------------------------------------- weight ranges


@dataclass(frozen=True)
class WeightRange:
    """What a fold did to one layer's weight, for int8 quantization (bnfold/weight_ranges.py):
    ``before_max``/``after_max`` are max|W| of the whole tensor (the per-tensor range) and
    ``growth`` their ratio; ``spread_before``/``spread_after`` the largest per-output-channel
    max|W| over the median one; ``flagged`` when per-tensor int8 would lose precision
    (growth past 8x or spread after past 16x)."""

    layer: str
    op: str
    channels: int
    before_max: float
    after_max: float
    growth: float
    spread_before: float
    spread_after: float
    flagged: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- run records


@dataclass
class FoldResult(FoldLog):
    """The pipeline's record of one fold (``bnfold.fold``).

    ``model`` is the folded model in the output's format: an ``onnx_ir.Model``, or a Keras
    model when a Keras input was folded to Keras output. ``entries`` is the fold log (one
    entry per BN, other constant affines apart), ``check`` the equivalence check (``None``
    without it), ``seconds`` the wall-clock time per stage, ``output`` the path written.
    ``sizes`` and ``latency`` are filled when asked for (reports, ``--bench``); ``loaded_with``
    says how the input was read when that matters (a Keras 2 file read with tf_keras).
    """

    model: Any
    entries: list[FoldEntry] = field(default_factory=list)
    check: CheckResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    output: str | None = None
    sizes: SizeComparison | None = None
    latency: LatencyResult | None = None
    loaded_with: str = ""  # how the front end read the input ("Keras 2 .h5, ... tf_keras")
    # One row per layer whose weight the fold changed (None: not measured, a SavedModel's bare
    # signature folded to Keras), and the one line that warns when per-tensor int8 would lose
    # precision ("" when none would).
    weight_ranges: list[WeightRange] | None = None
    weight_range_warning: str = ""


@dataclass
class BenchResult:
    """What ``bnfold.benchmark`` measured: the in-memory fold (``None`` when a folded model
    was given), the equivalence check (``None`` without it), sizes before and after, and the
    latency."""

    fold: FoldResult | None
    check: CheckResult | None
    sizes: SizeComparison
    latency: LatencyResult


__all__ = [
    "BenchResult",
    "CheckResult",
    "FoldResult",
    "LatencyResult",
    "LatencyStats",
    "LevelLatency",
    "Machine",
    "ModelSizes",
    "OutputComparison",
    "SizeComparison",
    "WeightRange",
]
