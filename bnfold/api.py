"""The pipeline: ``fold``, ``check``, ``inspect`` and ``benchmark``, usable without the CLI.

    result = bnfold.fold("model.onnx", "folded.onnx")   # raises CheckFailedError
    print(result.counts(), result.check.max_rel)

Every model goes through the same steps, each once: load (its front end) -> [convert to ONNX]
-> fold -> check -> write. A front end (``bnfold.frontends.base.Frontend``) is picked from the
input (a file's suffix, an object's type); the output's format follows its suffix. The run
record (check, timings, sizes, latency, output path) is the pipeline's ``FoldResult``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from bnfold.errors import CheckFailedError, InputError, UsageError
from bnfold.foldlog import BATCHNORM, FoldEntry
from bnfold.frontends.base import Arrays, FoldOutcome, Frontend, LoadSettings
from bnfold.results import BenchResult, CheckResult, FoldResult, SizeComparison
from bnfold.settings import BenchSettings, CheckSettings, FoldSettings, ReportSettings

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
ONNX_SUFFIXES = (".onnx",)
Progress = Callable[[int], None]
PathLike = str | os.PathLike[str]
# The defaults of the functions below (frozen, so one shared instance each is safe).
DEFAULT_CHECK = CheckSettings()
DEFAULT_LOAD = LoadSettings()
DEFAULT_BENCH = BenchSettings()
DEFAULT_FOLD = FoldSettings()
DEFAULT_REPORT = ReportSettings()
BENCH_CHECK = CheckSettings(float64=True)  # a benchmark's report shows the float64 columns


def _suffix(path: PathLike) -> str:
    return Path(path).suffix.lower()


def _is_path(model: Any) -> bool:
    return isinstance(model, str | os.PathLike)


def frontend_for(model: Any) -> Frontend:
    """The front end of ``model``: a Keras file or ``keras.Model``, else ONNX (whose loader
    says in one line why a file is not a model)."""
    # A directory is a SavedModel (the Keras front end says in one line when it is not one).
    keras_path = _is_path(model) and (_suffix(model) in KERAS_SUFFIXES or Path(model).is_dir())
    if keras_path or hasattr(model, "get_config"):
        from bnfold.frontends.keras import KerasFrontend

        # cast: KerasFrontend.suffixes is inferred as a fixed-length tuple, not tuple[str, ...]
        return cast(Frontend, KerasFrontend())
    from bnfold.frontends.onnx_frontend import OnnxFrontend

    return OnnxFrontend()


def _label(model: Any) -> str:
    return str(model) if _is_path(model) else "the model"


def _validate_output(source: Any, output: PathLike | None, overwrite_input: bool) -> None:
    if output is None:
        return
    suffix = _suffix(output)
    if suffix not in ONNX_SUFFIXES + KERAS_SUFFIXES:
        raise UsageError(f"{output}: output must end in .onnx, .keras or .h5")
    if suffix in KERAS_SUFFIXES and frontend_for(source).name != "keras":
        raise UsageError(f"{output}: Keras output needs a Keras input; write .onnx instead")
    same = _is_path(source) and Path(source).resolve() == Path(output).resolve()
    if same and not overwrite_input:
        raise UsageError(f"{output} is the input file; pass --overwrite-input to replace it")


def _gated(settings: CheckSettings, frontend: Frontend, model: Any) -> CheckSettings:
    """The settings with the gate of the dtype the model computes in, where the caller set
    none and it differs from the outputs' (a Keras mixed-precision model: float16's)."""
    dtype = frontend.compute_dtype(model)
    if dtype is None or (settings.rtol is not None and settings.atol is not None):
        return settings
    from bnfold.comparison import DEFAULT_TOLERANCES

    rtol, atol = DEFAULT_TOLERANCES.get(dtype, (settings.rtol, settings.atol))
    return dataclasses.replace(
        settings,
        rtol=settings.rtol if settings.rtol is not None else rtol,
        atol=settings.atol if settings.atol is not None else atol,
    )


def _unfolded_onnx(frontend: Frontend, model: Any, load: LoadSettings) -> Any:
    """``model`` as ONNX, unfolded and frozen (call before folding): the baseline a fold is
    sized, timed and float64-checked against."""
    unfolded = getattr(frontend, "unfolded_onnx", None)
    if unfolded is not None:
        return unfolded(model, load)
    # KerasFrontend has no unfolded_onnx yet: its to_onnx folds what the conversion left.
    from bnfold.frontends.keras import keras_to_onnx

    return keras_to_onnx(model, opset=load.opset)


class _Reference:
    """The original's side of a check, taken before the fold changes anything: its input
    sets, its outputs on them and (with ``float64``) its float64 outputs."""

    def __init__(self, frontend: Frontend, model: Any, settings: CheckSettings, baseline: Any):
        from bnfold.check.equivalence import float64_outputs

        self.settings = _gated(settings, frontend, model)
        dtype = frontend.compute_dtype(model)
        # Say which dtype set a gate the user did not give (a mixed-precision model's).
        self.gate_note = (
            f"gate of {dtype}: the model computes in {dtype}"
            if dtype is not None and self.settings != settings
            else ""
        )
        self.specs = frontend.input_specs(model)
        self.feed_sets, self.description, self.expected = _run_original(
            frontend, model, self.specs, self.settings
        )
        self.float64 = float64_outputs(baseline, self.feed_sets) if settings.float64 else ([], "")

    def compare(self, run: Callable[[Arrays], Arrays]) -> CheckResult:
        from bnfold.check.equivalence import compare_runs

        actual = [run(feeds) for feeds in self.feed_sets]
        result = compare_runs(self.expected, actual, self.settings, self.description, self.float64)
        result.gate_note = self.gate_note
        return result


def _size_hints(frontend: Frontend, model: Any) -> dict[Any, Any]:
    """The sizes ``model``'s graph fixes for its dynamic input dims, by (input, axis), from
    the front end's optional ``size_hints(model)`` (none when it has no such method)."""
    hints = getattr(frontend, "size_hints", None)
    return dict(hints(model)) if hints is not None else {}


def _run_original(
    frontend: Frontend, model: Any, specs: list[Any], settings: CheckSettings
) -> tuple[list[Arrays], str, list[Arrays]]:
    """Input sets, their description and the original's outputs on them. Dynamic dimensions
    nobody sized take the sizes the graph fixes (a weight's K, a constant they are broadcast
    with), the others the default sizes, then each fallback size (a detector may need
    multiples of 32; a model without a batch axis many frames), until the original runs; the
    description says where each size came from. When none runs, the error names every shape
    tried and the way out."""
    from bnfold.check import equivalence

    attempts = equivalence.sizing_attempts(specs, settings, _size_hints(frontend, model))
    tried: list[str] = []
    failure: InputError | None = None
    for sizing in attempts:
        try:
            feed_sets, description = equivalence.check_feeds(specs, settings, sizing)
            return feed_sets, description, [frontend.run(model, feeds) for feeds in feed_sets]
        except InputError as error:
            if len(attempts) == 1:
                raise
            failure = failure or error  # the first says why; the others repeat it, or worse
            tried.append(
                ", ".join(
                    f"{spec.name}{list(equivalence.concrete_shape(spec, settings.dims, sizing))}"
                    for spec in specs
                )
            )
    assert failure is not None
    raise InputError(
        f"{failure} (shapes tried: {'; '.join(tried)}); give the sizes of dynamic dimensions "
        "with --dim NAME=SIZE or real inputs with --inputs"
    ) from failure


def _sizes_for_proofs(
    frontend: Frontend, model: Any, reference: _Reference | None
) -> contextlib.AbstractContextManager[None]:
    """While an ONNX model folds, its values have the shapes inference finds: symbolic
    (``inspect``, ``--no-check``: the batch ``N`` of a Reshape's input is the ``N`` of its
    output), and static at the check's first input set (``--dim``, ``--inputs``, the fallback
    sizes), where the check confirms the fold at those sizes. The model keeps its dynamic
    dims."""
    if frontend.name != "onnx":
        return contextlib.nullcontext()
    from bnfold.frontends.onnx_sizes import sized_shapes

    if reference is None or not reference.feed_sets:
        return sized_shapes(model)
    first = reference.feed_sets[0]
    return sized_shapes(model, {name: array.shape for name, array in first.items()})


def _stage(seconds: dict[str, float], name: str, started: float) -> float:
    now = time.perf_counter()
    seconds[name] = seconds.get(name, 0.0) + now - started
    return now


def _writer(frontend: Frontend, output: PathLike | None) -> Frontend:
    """The front end of the output: Keras for a Keras file, else ONNX (the input's own front
    end when it is ONNX, so that it can copy a file nothing was folded in)."""
    wants_keras = output is not None and _suffix(output) in KERAS_SUFFIXES
    if wants_keras or frontend.name == "onnx":
        return frontend
    from bnfold.frontends.onnx_frontend import OnnxFrontend

    return OnnxFrontend()


def _save(writer: Frontend, model: Any, output: PathLike) -> None:
    if writer.name != "keras":
        writer.save(model, output)
        return
    # KerasFrontend.save writes straight to its path; staged here so a failure leaves nothing.
    from bnfold.atomic import write_atomically

    write_atomically(output, lambda staged: writer.save(model, staged))


@dataclasses.dataclass
class _Run:
    """One pass of the pipeline; ``fold`` below says what each setting does."""

    source: Any
    output: PathLike | None
    check: CheckSettings | None
    load: LoadSettings
    bench: BenchSettings | None
    report: ReportSettings
    fold: FoldSettings = DEFAULT_FOLD

    def execute(self) -> FoldResult:
        seconds: dict[str, float] = {}
        frontend = frontend_for(self.source)  # its imports are not the model's load time
        started = time.perf_counter()
        original = frontend.load(self.source, self.load)
        started = _stage(seconds, "load", started)
        wants_baseline = self.report.sizes or self.bench is not None
        wants_baseline = wants_baseline or (self.check is not None and self.check.float64)
        baseline = _unfolded_onnx(frontend, original, self.load) if wants_baseline else None
        reference = _Reference(frontend, original, self.check, baseline) if self.check else None
        started = _stage(seconds, "check", started) if reference else started
        with _sizes_for_proofs(frontend, original, reference):
            outcome = frontend.fold(original, self.fold)
        started = _stage(seconds, "fold", started)
        writer = _writer(frontend, self.output)
        if writer is not frontend:
            converted = frontend.to_onnx(outcome, self.load, self.fold)
            started = _stage(seconds, "convert", started)
            outcome = converted
        _check_keep_patterns(self.fold, outcome.entries, self.source)
        result = FoldResult(outcome.model, outcome.entries, seconds=seconds)
        _add_weight_ranges(result, outcome)
        result.loaded_with = frontend.describe(original)
        if reference is not None:
            result.check = reference.compare(lambda feeds: writer.run(outcome.model, feeds))
            started = _stage(seconds, "check", started)
        if baseline is not None and writer.name == "onnx":
            result.sizes = _compare_sizes(baseline, outcome.model)
        self._write(writer, outcome, result)
        if self.bench is not None and writer.name == "onnx" and not _failed(result.check):
            names = (_label(self.source), "folded")
            result.latency = _time(baseline, outcome.model, self.bench, names, self.report.progress)
        return result

    def _write(self, writer: Frontend, outcome: FoldOutcome, result: FoldResult) -> None:
        if self.output is None:
            return
        if result.check is not None and not result.check.passed:
            raise CheckFailedError(
                f"the folded model differs from the original "
                f"(max rel {result.check.max_rel:.3g}); {self.output} not written",
                result,
            )
        started = time.perf_counter()
        _save(writer, outcome.model, self.output)
        result.output = str(self.output)
        _stage(result.seconds, "write", started)


def _add_weight_ranges(result: FoldResult, outcome: FoldOutcome) -> None:
    """The rows the front end measured (every fold, Keras or ONNX, and an ONNX pass after a
    conversion) and the quantization line they call for."""
    if outcome.weight_ranges is None:
        return
    from bnfold.weight_ranges import quantization_warning

    result.weight_ranges = outcome.weight_ranges
    result.weight_range_warning = quantization_warning(outcome.weight_ranges)


def _check_keep_patterns(settings: FoldSettings, entries: list[FoldEntry], source: Any) -> None:
    """A keep pattern that matches no BN is a typo, not a wish: a usage error naming it."""
    names = [entry.name for entry in entries if entry.kind == BATCHNORM]
    unmatched = settings.unmatched(names)
    if unmatched:
        examples = ", ".join(names[:3]) if names else "none found"
        raise UsageError(
            f"--keep {unmatched[0]!r} matches no BN in {_label(source)} "
            f"(BNs are named as the log prints them: {examples})"
        )


def _failed(check: CheckResult | None) -> bool:
    return check is not None and not check.passed


def _compare_sizes(baseline: Any, folded: Any) -> SizeComparison:
    from bnfold.check.sizes import compare_sizes

    return compare_sizes(baseline, folded)


def _time(
    baseline: Any,
    candidate: Any,
    settings: BenchSettings,
    names: tuple[str, str],
    progress: Progress | None,
) -> Any:
    from bnfold.check import latency
    from bnfold.frontends.onnx import as_ir, input_specs

    specs = input_specs(as_ir(baseline))
    return latency.benchmark(baseline, candidate, specs, settings, names=names, progress=progress)


def fold(
    model: Any,
    output: PathLike | None = None,
    *,
    check: CheckSettings | None = DEFAULT_CHECK,
    load: LoadSettings = DEFAULT_LOAD,
    bench: BenchSettings | None = None,
    report: ReportSettings = DEFAULT_REPORT,
    overwrite_input: bool = False,
    fold: FoldSettings = DEFAULT_FOLD,
) -> FoldResult:
    """Fold every BN ``model`` allows, check the result against the original, write ``output``.

    ``model`` is an ONNX or Keras path, an ``onnx.ModelProto``, an ``onnx_ir.Model`` (folded
    in place) or a ``keras.Model``. ``output``'s suffix picks the format (``.onnx``; ``.keras``
    or ``.h5`` for Keras input); it is written atomically, only when the check passes
    (otherwise ``CheckFailedError`` carries the result), and never over the input unless
    ``overwrite_input``. ``check`` says how the original (onnxruntime with optimisations
    disabled, or Keras) and the folded model are compared; ``None`` skips the check. ``load``
    says how files are read, ``fold`` which BNs stay (``keep`` patterns, a usage error when
    one matches no BN) and whether folds into the next layer are allowed. ``report.sizes`` counts nodes and weights before and after,
    ``bench`` also times both models in onnxruntime (``report.progress`` gets 1 per timed
    pair); both need ONNX output, and a Keras input is then timed as its unfolded conversion.
    """
    _validate_output(model, output, overwrite_input)
    return _Run(model, output, check, load, bench, report, fold).execute()


def inspect(
    model: Any, *, load: LoadSettings = DEFAULT_LOAD, fold: FoldSettings = DEFAULT_FOLD
) -> FoldResult:
    """The fold log of ``model`` without checking or writing anything, as ``fold`` (the
    settings) allows; a BN logged as folded is one that could still fold."""
    decide_only = dataclasses.replace(fold, rebuild=False)
    return _Run(model, None, None, load, None, DEFAULT_REPORT, decide_only).execute()


def _compare(
    reference: tuple[Frontend, Any],
    candidate: tuple[Frontend, Any],
    settings: CheckSettings,
    load: LoadSettings,
) -> CheckResult:
    (ref_frontend, ref_model), (cand_frontend, cand_model) = reference, candidate
    baseline = _unfolded_onnx(ref_frontend, ref_model, load) if settings.float64 else None
    checked = _Reference(ref_frontend, ref_model, settings, baseline)
    return checked.compare(lambda feeds: cand_frontend.run(cand_model, feeds))


def _loaded(model: Any, load: LoadSettings) -> tuple[Frontend, Any]:
    frontend = frontend_for(model)
    return frontend, frontend.load(model, load)


def check(
    reference: Any,
    candidate: Any,
    *,
    settings: CheckSettings = DEFAULT_CHECK,
    load: LoadSettings = DEFAULT_LOAD,
) -> CheckResult:
    """Run both models (ONNX in onnxruntime without optimisations, Keras in Keras) on the same
    inputs and compare every output of ``reference``; inputs are shaped after ``reference``."""
    return _compare(_loaded(reference, load), _loaded(candidate, load), settings, load)


def save(model: Any, path: PathLike) -> None:
    """Write a folded ONNX model atomically (external data when it is large)."""
    from bnfold.frontends.onnx import save_onnx

    save_onnx(model, path)


def benchmark(
    model: Any,
    folded: Any = None,
    *,
    bench: BenchSettings = DEFAULT_BENCH,
    check: CheckSettings | None = BENCH_CHECK,
    load: LoadSettings = DEFAULT_LOAD,
    progress: Progress | None = None,
) -> BenchResult:
    """Time ``model`` against ``folded`` (an ONNX model) in onnxruntime, interleaved, at each
    level of ``bench``, after comparing them with ``check`` (``None``: time only).

    Without ``folded``, ``model`` is folded in memory first; a Keras model is then timed as
    its unfolded conversion to ONNX. ``progress`` gets 1 per timed pair.
    """
    from bnfold.check.latency import validate_settings

    validate_settings(bench)
    if folded is None:
        measured = ReportSettings(sizes=True, progress=progress)
        result = fold(model, check=check, load=load, bench=bench, report=measured)
        assert result.sizes is not None and result.latency is not None
        return BenchResult(result, result.check, result.sizes, result.latency)
    reference = _loaded(model, load)
    from bnfold.frontends.onnx_frontend import OnnxFrontend

    candidate_frontend = OnnxFrontend()
    candidate = (candidate_frontend, candidate_frontend.load(folded, load))
    baseline = _unfolded_onnx(*reference, load)
    checked = _compare(reference, candidate, check, load) if check is not None else None
    target = candidate_frontend.unfolded_onnx(candidate[1], load)
    names = (_label(model), _label(folded))
    latency = _time(baseline, target, bench, names, progress)
    return BenchResult(None, checked, _compare_sizes(baseline, target), latency)


__all__ = [
    "BenchResult",
    "CheckResult",
    "FoldResult",
    "benchmark",
    "check",
    "fold",
    "frontend_for",
    "inspect",
    "save",
]
