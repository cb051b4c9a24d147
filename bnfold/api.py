"""The library: ``fold``, ``check`` and ``inspect``, usable in a pipeline without the CLI.

result = bnfold.fold("model.onnx", output="folded.onnx")   # raises CheckFailedError
print(result.counts(), result.check.max_rel)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy.typing as npt
import onnx
import onnx_ir as ir

from bnfold.check.equivalence import (
    ModelSource,
    load_npz_inputs,
    random_inputs,
    run_model,
)
from bnfold.comparison import CheckResult, compare_outputs
from bnfold.errors import CheckFailedError, OutputError, UsageError
from bnfold.fold import FoldResult, fold_model
from bnfold.frontends.onnx import (
    ONNX_SUFFIXES,
    annotate_shapes,
    atomic_folder,
    has_external_tensors,
    infer_shapes,
    input_specs,
    load_onnx,
    needs_external_data,
    save_onnx,
)
from bnfold.specs import InputSpec

if TYPE_CHECKING:
    from bnfold.check.latency import LatencyResult
    from bnfold.sizes import SizeComparison

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
# What to do when the check cannot run the original (custom ops, invalid parameters).
NO_CHECK_HINT = "pass --no-check (check=False) to fold without the check"
ModelInput = ir.Model | onnx.ModelProto | str | os.PathLike[str]
Inputs = Mapping[str, npt.NDArray[Any]] | str | os.PathLike[str] | None


def _suffix(path: str | os.PathLike[str]) -> str:
    return Path(path).suffix.lower()


def _is_keras_path(model: Any) -> bool:
    return isinstance(model, str | os.PathLike) and _suffix(model) in KERAS_SUFFIXES


def _feeds(
    specs: list[InputSpec], inputs: Inputs, seed: int, dims: Mapping[str, int] | None
) -> tuple[dict[str, npt.NDArray[Any]], str]:
    if inputs is None:
        feeds = random_inputs(specs, seed=seed, dims=dims)
        shapes = ", ".join(f"{name}{list(array.shape)}" for name, array in feeds.items())
        return feeds, f"random normal, seed {seed}: {shapes}"
    if isinstance(inputs, str | os.PathLike):
        return load_npz_inputs(inputs, specs), f"from {inputs}"
    return dict(inputs), "given by the caller"


def _validate_output(
    source: Any, output: str | os.PathLike[str] | None, overwrite_input: bool
) -> None:
    if output is None:
        return
    suffix = _suffix(output)
    if suffix not in ONNX_SUFFIXES + KERAS_SUFFIXES:
        raise UsageError(f"{output}: output must end in .onnx, .keras or .h5")
    if suffix in KERAS_SUFFIXES and not _is_keras_path(source):
        raise UsageError(f"{output}: Keras output needs a Keras input; write .onnx instead")
    if (
        isinstance(source, str | os.PathLike)
        and Path(source).resolve() == Path(output).resolve()
        and not overwrite_input
    ):
        raise UsageError(f"{output} is the input file; pass --overwrite-input to replace it")


def _label(model: Any) -> str:
    return str(model) if isinstance(model, str | os.PathLike) else "the model"


def _reference_source(
    model: ModelInput, check: bool, scratch: contextlib.ExitStack
) -> tuple[ir.Model, ModelSource | None]:
    """The model to fold and a frozen copy of the original for the check (``None`` without
    the check). An in-memory model too large for one protobuf is frozen in a temporary folder
    with external data, which ``scratch`` removes."""
    if isinstance(model, ir.Model):
        if not check:
            return model, None
        if needs_external_data(model):
            folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="bnfold-")))
            ir.save(model, folder / "reference.onnx", external_data="reference.onnx.data")
            return model, folder / "reference.onnx"
        return model, ir.serde.serialize_model(model).SerializeToString()
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model), model.SerializeToString() if check else None
    return load_onnx(model), str(model) if check else None


def fold(
    model: ModelInput,
    *,
    output: str | os.PathLike[str] | None = None,
    check: bool = True,
    inputs: Inputs = None,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    allow_unsafe: bool = False,
    opset: int | None = None,
    overwrite_input: bool = False,
) -> FoldResult:
    """Fold every BN ``model`` allows, check the result against the original, write ``output``.

    ``model`` is an ONNX or Keras path, an ``onnx.ModelProto`` or an ``onnx_ir.Model`` (folded
    in place). With ``check`` the original (onnxruntime, optimisations disabled; Keras for
    Keras input) and the folded model run on the same ``inputs`` (a dict, an .npz path, or
    seeded random values with dynamic ``dims`` sized as given). ``output`` is written
    atomically, and only when the check passes; otherwise ``CheckFailedError`` carries the
    result.
    """
    _validate_output(model, output, overwrite_input)
    if _is_keras_path(model):
        assert isinstance(model, str | os.PathLike)
        return _fold_keras(
            Path(model),
            output=output,
            check=check,
            inputs=inputs,
            dims=dims,
            seed=seed,
            rtol=rtol,
            atol=atol,
            allow_unsafe=allow_unsafe,
            opset=opset,
        )
    started = time.perf_counter()
    with contextlib.ExitStack() as scratch:
        ir_model, reference = _reference_source(model, check, scratch)
        if not isinstance(model, str | os.PathLike):
            annotate_shapes(ir_model)  # a loaded file got its shapes in load_onnx
        loaded = time.perf_counter()
        feeds, description = (
            _feeds(input_specs(ir_model), inputs, seed, dims) if check else ({}, "")
        )
        result = fold_model(ir_model)
        folded = time.perf_counter()
        result.seconds = {"load": loaded - started, "fold": folded - loaded}
        if reference is not None:
            expected = run_model(reference, feeds, label=_label(model), hint=NO_CHECK_HINT)
            actual = run_model(ir_model, feeds)
            result.check = compare_outputs(
                expected, actual, rtol=rtol, atol=atol, inputs=description
            )
            result.seconds["check"] = time.perf_counter() - folded
    unchanged_file = (
        Path(model)
        if isinstance(model, str | os.PathLike)
        and not result.changed
        and not has_external_tensors(ir_model)
        else None
    )
    _write(result, output, copy_of=unchanged_file)
    return result


def _write(
    result: FoldResult, output: str | os.PathLike[str] | None, copy_of: Path | None = None
) -> None:
    """Write the folded model; ``copy_of`` names an input file to copy byte for byte
    because nothing in it was folded."""
    if output is None:
        return
    if result.check is not None and not result.check.passed:
        raise CheckFailedError(
            f"the folded model differs from the original (max rel {result.check.max_rel:.3g}); "
            f"{output} not written",
            result,
        )
    started = time.perf_counter()
    if _suffix(output) in KERAS_SUFFIXES:
        from bnfold.frontends import keras as keras_frontend

        _save_keras_atomically(keras_frontend, result.keras_model, Path(output))
    elif copy_of is not None:
        _copy_atomically(copy_of, Path(output))
    else:
        assert result.model is not None
        save_onnx(result.model, output)
    result.output = str(output)
    result.seconds["write"] = time.perf_counter() - started


def _copy_atomically(source: Path, path: Path) -> None:
    with atomic_folder(path) as scratch:
        staged = scratch / path.name
        try:
            shutil.copyfile(source, staged)
            os.replace(staged, path)
        except OSError as error:
            raise OutputError(f"{path}: cannot write ({error.strerror or error})") from error


def _save_keras_atomically(frontend: Any, keras_model: Any, path: Path) -> None:
    with atomic_folder(path) as scratch:
        staged = scratch / path.name
        frontend.save_keras_model(keras_model, staged)
        try:
            os.replace(staged, path)
        except OSError as error:
            raise OutputError(f"{path}: cannot write ({error.strerror or error})") from error


def _fold_keras(
    path: Path,
    *,
    output: str | os.PathLike[str] | None,
    check: bool,
    inputs: Inputs,
    dims: Mapping[str, int] | None,
    seed: int,
    rtol: float | None,
    atol: float | None,
    allow_unsafe: bool,
    opset: int | None,
) -> FoldResult:
    from bnfold.frontends import keras as keras_frontend

    started = time.perf_counter()
    original = keras_frontend.load_keras_model(path, allow_unsafe=allow_unsafe)
    loaded = time.perf_counter()
    feeds, description = (
        _feeds(keras_frontend.keras_input_specs(original), inputs, seed, dims)
        if check
        else ({}, "")
    )
    expected = keras_frontend.predict_keras(original, feeds) if check else {}
    folded_keras, keras_entries = keras_frontend.fold_keras_model(original)
    for entry in keras_entries:
        entry.stage = "keras"
    seconds = {"load": loaded - started, "fold": time.perf_counter() - loaded}
    to_onnx = output is None or _suffix(output) in ONNX_SUFFIXES
    if to_onnx:
        converted = time.perf_counter()
        onnx_model = infer_shapes(keras_frontend.keras_to_onnx(folded_keras, opset=opset))
        seconds["convert"] = time.perf_counter() - converted
        result = fold_model(onnx_model)
        from bnfold.frontends.keras.onnx_log import merge_stage_logs

        result.entries = merge_stage_logs(keras_entries, result.entries)
    else:
        result = FoldResult(None, keras_entries)
    result.keras_model = folded_keras
    result.seconds = seconds
    if check:
        checked = time.perf_counter()
        actual = (
            run_model(onnx_model, feeds)
            if to_onnx
            else keras_frontend.predict_keras(folded_keras, feeds)
        )
        result.check = compare_outputs(expected, actual, rtol=rtol, atol=atol, inputs=description)
        result.seconds["check"] = time.perf_counter() - checked
    _write(result, output)
    return result


def inspect(model: ModelInput, *, allow_unsafe: bool = False) -> FoldResult:
    """The fold log of ``model`` without checking or writing anything."""
    return fold(model, check=False, allow_unsafe=allow_unsafe)


def _outputs_of(
    model: ModelInput, feeds: Mapping[str, npt.NDArray[Any]], allow_unsafe: bool
) -> dict[str, npt.NDArray[Any]]:
    if _is_keras_path(model):
        from bnfold.frontends import keras as keras_frontend

        assert isinstance(model, str | os.PathLike)
        loaded = keras_frontend.load_keras_model(Path(model), allow_unsafe=allow_unsafe)
        return dict(keras_frontend.predict_keras(loaded, dict(feeds)))
    if isinstance(model, onnx.ModelProto):
        return run_model(model.SerializeToString(), feeds, label=_label(model))
    if isinstance(model, ir.Model):
        return run_model(model, feeds, label=_label(model))
    load_onnx(model)  # validates the file: one clear line instead of onnxruntime's error
    return run_model(str(model), feeds, label=_label(model))


def _specs_of(model: ModelInput, allow_unsafe: bool) -> list[InputSpec]:
    if _is_keras_path(model):
        from bnfold.frontends import keras as keras_frontend

        assert isinstance(model, str | os.PathLike)
        loaded = keras_frontend.load_keras_model(Path(model), allow_unsafe=allow_unsafe)
        return list(keras_frontend.keras_input_specs(loaded))
    if isinstance(model, ir.Model):
        return input_specs(model)
    if isinstance(model, onnx.ModelProto):
        return input_specs(ir.serde.deserialize_model(model))
    return input_specs(load_onnx(model))


def check(
    reference: ModelInput,
    candidate: ModelInput,
    *,
    inputs: Inputs = None,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    allow_unsafe: bool = False,
) -> CheckResult:
    """Run both models (ONNX in onnxruntime without optimisations, Keras in Keras) on the same
    inputs and compare every output of ``reference``; inputs are shaped after ``reference``."""
    feeds, description = _feeds(_specs_of(reference, allow_unsafe), inputs, seed, dims)
    expected = _outputs_of(reference, feeds, allow_unsafe)
    actual = _outputs_of(candidate, feeds, allow_unsafe)
    return compare_outputs(expected, actual, rtol=rtol, atol=atol, inputs=description)


def save(model: ir.Model, path: str | os.PathLike[str]) -> None:
    """Write a folded ONNX model atomically (external data when it is large)."""
    save_onnx(model, path)


@dataclass
class BenchResult:
    """What ``benchmark`` measured: the in-memory fold (when no folded model was given), the
    equivalence check (``None`` without it), sizes before and after, and the latency."""

    fold: FoldResult | None
    check: CheckResult | None
    sizes: SizeComparison
    latency: LatencyResult


def keras_as_onnx(path: str | os.PathLike[str], allow_unsafe: bool) -> ir.Model:
    """The unfolded Keras model converted to ONNX: the baseline a Keras fold is timed against."""
    from bnfold.frontends import keras as keras_frontend

    loaded = keras_frontend.load_keras_model(Path(path), allow_unsafe=allow_unsafe)
    return keras_frontend.keras_to_onnx(loaded)


def benchmark(
    model: ModelInput,
    folded: ModelInput | None = None,
    *,
    levels: Sequence[str] = ("all", "disable"),
    runs: int = 50,
    warmup: int = 5,
    time_budget_s: float | None = None,
    threads: int = 1,
    batch: int = 1,
    provider: str = "CPUExecutionProvider",
    samples: int = 1,
    seed: int = 0,
    check: bool = True,
    allow_unsafe: bool = False,
    progress: Callable[[int], None] | None = None,
) -> BenchResult:
    """Time ``model`` against ``folded`` in onnxruntime, interleaved, at each of ``levels``
    (``"all"``: what users deploy, ``"disable"``: a runtime without fusions).

    Without ``folded``, ``model`` is folded in memory first; a Keras model is then timed as
    tf2onnx converts it unfolded. With ``check`` both run on ``samples`` seeded input sets
    (and against a float64 reference where onnxruntime can run one) before timing.
    ``progress`` gets 1 per timed pair.
    """
    from bnfold.check.equivalence import detailed_check
    from bnfold.check.latency import benchmark as time_models
    from bnfold.check.latency import benchmark_shapes
    from bnfold.sizes import compare_sizes

    result: FoldResult | None = None
    candidate: ModelSource
    if folded is None:
        result = fold(model, check=False, allow_unsafe=allow_unsafe)
        assert result.model is not None
        candidate = result.model
        names = (_label(model), "folded in memory")
    else:
        if isinstance(folded, str | os.PathLike):
            load_onnx(folded)  # one clear line for a file that is not a model
        candidate = (
            folded if not isinstance(folded, onnx.ModelProto) else folded.SerializeToString()
        )
        names = (_label(model), _label(folded))
    baseline: ir.Model | str
    if _is_keras_path(model):
        assert isinstance(model, str | os.PathLike)
        baseline = keras_as_onnx(model, allow_unsafe)
    elif isinstance(model, str | os.PathLike):
        baseline = str(model)
    else:
        baseline = _reference_source(model, False, contextlib.ExitStack())[0]
    base_model = load_onnx(baseline) if isinstance(baseline, str) else baseline
    specs = input_specs(base_model)
    checked = None
    if check:
        checked = detailed_check(
            baseline,
            candidate,
            specs,
            samples=samples,
            seed=seed,
            shapes=benchmark_shapes(specs, batch),
        )
    sizes = compare_sizes(base_model, candidate)
    latency = time_models(
        baseline,
        candidate,
        specs,
        levels=levels,
        threads=threads,
        batch=batch,
        provider=provider,
        warmup=warmup,
        runs=runs,
        time_budget_s=time_budget_s,
        seed=seed,
        baseline_name=names[0],
        candidate_name=names[1],
        progress=progress,
    )
    return BenchResult(result, checked, sizes, latency)


__all__ = [
    "BenchResult",
    "CheckResult",
    "FoldResult",
    "benchmark",
    "check",
    "fold",
    "inspect",
    "save",
]
