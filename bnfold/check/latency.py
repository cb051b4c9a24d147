"""Latency of two ONNX models in onnxruntime, measured so that the comparison can be trusted.

- Interleaved: one run of the baseline, then one of the candidate, then the baseline again
  (A B A B ...), so drift in clock speed, caches or neighbours on the machine hits both alike.
- Warm-up runs of both are discarded; then ``runs`` pairs, or fewer if ``time_budget_s``
  runs out first (never fewer than ``MIN_PAIRS``).
- Per model p50/p90/p99/mean/min/max in milliseconds; the speedup is
  ``p50(baseline) / p50(candidate)`` (above 1: the candidate is faster) with a seeded
  percentile-bootstrap confidence interval over the *pairs* (each resample keeps a baseline
  run with the candidate run beside it).
- Once per graph-optimisation level asked for: ``all`` (ORT_ENABLE_ALL, what a deployment
  uses) and ``disable`` (ORT_DISABLE_ALL, what the graph itself costs).
- Threads, batch size, provider, machine and library versions are always recorded.

Pure measurement: nothing is printed; ``progress`` is called after each timed pair.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from bnfold._version import __version__
from bnfold.check.equivalence import concrete_shape, random_inputs
from bnfold.errors import UsageError
from bnfold.frontends.onnx_run import ModelSource, make_session, session_options
from bnfold.results import LatencyResult, LatencyStats, LevelLatency, Machine
from bnfold.settings import BenchSettings
from bnfold.specs import InputSpec

LEVELS = {"all": "ORT_ENABLE_ALL", "disable": "ORT_DISABLE_ALL"}
MIN_PAIRS = 3
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
BASELINE, CANDIDATE = "A", "B"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> Machine:
    return Machine(
        cpu=_cpu_name(),
        logical_cores=os.cpu_count() or 0,
        platform=platform.platform(),
        python=platform.python_version(),
        versions={
            "bnfold": __version__,
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "numpy": np.__version__,
        },
    )


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def bootstrap_speedup_ci(
    baseline_ms: Sequence[float],
    candidate_ms: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap of ``median(baseline) / median(candidate)`` resampling pairs."""
    a = np.asarray(baseline_ms, dtype=np.float64)
    b = np.asarray(candidate_ms, dtype=np.float64)
    if a.size != b.size or a.size == 0:
        raise ValueError("the bootstrap needs as many baseline runs as candidate runs")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, a.size, size=(resamples, a.size))
    ratios = np.median(a[picks], axis=1) / np.median(b[picks], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return float(low), float(high)


def _options(level: str, threads: int) -> ort.SessionOptions:
    options = session_options(level)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def benchmark_shapes(specs: list[InputSpec], batch: int | None) -> dict[str, tuple[int, ...]]:
    """Input shapes: a dynamic first dimension gets ``batch``, other dynamic dims the check's
    defaults."""
    shapes = {}
    for spec in specs:
        shape = list(concrete_shape(spec))
        if batch is not None and spec.shape and not isinstance(spec.shape[0], int):
            shape[0] = batch
        shapes[spec.name] = tuple(shape)
    return shapes


def _batch_of(feeds: Mapping[str, npt.NDArray[Any]]) -> int | None:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim > 0 else None


def _timed_run(session: ort.InferenceSession, feeds: Mapping[str, Any]) -> float:
    started = time.perf_counter_ns()
    session.run(None, feeds)
    return (time.perf_counter_ns() - started) / 1e6


def benchmark_session(
    source: ModelSource,
    *,
    level: str,
    threads: int = 1,
    provider: str = "CPUExecutionProvider",
) -> ort.InferenceSession:
    """A session set up for timing: ``level`` is ``all`` or ``disable``, ``threads`` intra-op
    threads, one inter-op thread, sequential execution."""
    if level not in LEVELS:
        raise UsageError(f"unknown optimisation level {level!r}: use all or disable")
    return make_session(source, providers=[provider], options=_options(level, threads))


def time_round_robin(
    sessions: Mapping[str, ort.InferenceSession],
    feeds: Mapping[str, npt.NDArray[Any]],
    *,
    runs: int,
    warmup: int = 0,
    time_budget_s: float | None = None,
    progress: Callable[[int], None] | None = None,
    rotate: bool = False,
) -> tuple[dict[str, list[float]], list[str], str]:
    """Time every session once per round, in the order given, for ``runs`` rounds after
    ``warmup`` untimed rounds: milliseconds per session, the order run, and what stopped it.

    With ``rotate`` round ``i`` starts at the ``i``-th session, so that with many models none
    always runs right after the same neighbour."""
    inputs = {
        name: {item.name: feeds[item.name] for item in session.get_inputs() if item.name in feeds}
        for name, session in sessions.items()
    }
    for _ in range(warmup):
        for name, session in sessions.items():
            session.run(None, inputs[name])
    timings: dict[str, list[float]] = {name: [] for name in sessions}
    order: list[str] = []
    deadline = None if time_budget_s is None else time.perf_counter() + time_budget_s
    stopped_by = "runs"
    for index in range(runs):
        if deadline is not None and index >= MIN_PAIRS and time.perf_counter() >= deadline:
            stopped_by = "time budget"
            break
        names = list(sessions)
        if rotate:
            shift = index % len(names)
            names = names[shift:] + names[:shift]
        for name in names:
            timings[name].append(_timed_run(sessions[name], inputs[name]))
            order.append(name)
        if progress is not None:
            progress(1)
    return timings, order, stopped_by


def measure_level(
    baseline: ModelSource,
    candidate: ModelSource,
    feeds: Mapping[str, npt.NDArray[Any]],
    level: str,
    settings: BenchSettings,
    progress: Callable[[int], None] | None = None,
) -> LevelLatency:
    """Time both models at one optimisation level, interleaved A B A B."""
    threads, provider = settings.threads, settings.provider
    sessions = {
        BASELINE: benchmark_session(baseline, level=level, threads=threads, provider=provider),
        CANDIDATE: benchmark_session(candidate, level=level, threads=threads, provider=provider),
    }
    timings, order, stopped_by = time_round_robin(
        sessions,
        feeds,
        runs=settings.runs,
        warmup=settings.warmup,
        time_budget_s=settings.time_budget_s,
        progress=progress,
    )
    a, b = timings[BASELINE], timings[CANDIDATE]
    base_stats, cand_stats = LatencyStats.of(a), LatencyStats.of(b)
    return LevelLatency(
        level=level,
        ort_level=LEVELS[level],
        baseline=base_stats,
        candidate=cand_stats,
        speedup=base_stats.p50 / cand_stats.p50 if cand_stats.p50 > 0 else float("inf"),
        speedup_ci=bootstrap_speedup_ci(a, b, seed=settings.seed),
        confidence=CONFIDENCE,
        order="".join(order),
        baseline_ms=a,
        candidate_ms=b,
        stopped_by=stopped_by,
    )


def validate_settings(settings: BenchSettings) -> None:
    """``UsageError`` for settings no measurement can honour (checked before any work)."""
    if settings.runs < 1 or settings.warmup < 0 or settings.threads < 0:
        raise UsageError("runs must be at least 1, warm-up and threads at least 0")
    if settings.batch < 1:
        raise UsageError("batch must be at least 1")
    unknown = [level for level in settings.levels if level not in LEVELS]
    if unknown:
        raise UsageError(f"unknown optimisation level {unknown[0]!r}: use all or disable")
    if settings.provider not in available_providers():
        raise UsageError(
            f"execution provider {settings.provider} is not available here "
            f"(available: {', '.join(available_providers())})"
        )


def benchmark(
    baseline: ModelSource,
    candidate: ModelSource,
    specs: list[InputSpec],
    settings: BenchSettings,
    *,
    names: tuple[str, str] = ("baseline", "candidate"),
    progress: Callable[[int], None] | None = None,
) -> LatencyResult:
    """Benchmark ``candidate`` against ``baseline`` on the same seeded random inputs (shaped by
    ``specs`` with a dynamic batch dimension set to ``settings.batch``); ``names`` are what
    the report calls the two models.

    ``settings.time_budget_s`` applies to each level separately; ``progress`` gets 1 per
    timed pair.
    """
    validate_settings(settings)
    seed = settings.seed
    feeds = random_inputs(specs, seed=seed, shapes=benchmark_shapes(specs, settings.batch))
    shown = ", ".join(f"{name}{list(array.shape)}" for name, array in feeds.items())
    result = LatencyResult(
        baseline=names[0],
        candidate=names[1],
        provider=settings.provider,
        threads=settings.threads,
        batch=_batch_of(feeds),
        inputs=f"random normal, seed {seed}: {shown}",
        warmup=settings.warmup,
        runs=settings.runs,
        time_budget_s=settings.time_budget_s,
        seed=seed,
        machine=machine_info(),
    )
    for level in settings.levels:
        result.levels.append(measure_level(baseline, candidate, feeds, level, settings, progress))
    return result


__all__ = [
    "LEVELS",
    "LatencyResult",
    "LatencyStats",
    "LevelLatency",
    "Machine",
    "available_providers",
    "benchmark",
    "benchmark_session",
    "benchmark_shapes",
    "bootstrap_speedup_ci",
    "machine_info",
    "measure_level",
    "time_round_robin",
    "validate_settings",
]
