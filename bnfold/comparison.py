"""Comparing two models' outputs, in numpy: the numbers behind the equivalence gate.

Relative error is ``max|folded - original| / max|original|`` per output: element-wise relative
error explodes near zero and says nothing (DESIGN.md section 4). An output passes when
``max_abs <= atol + rtol * max|original|``; integer and boolean outputs must match exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from bnfold.results import CheckResult, OutputComparison

# Gates, not targets: float32 folds land near 1e-6 relative.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-9),
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (5e-2, 1e-2),
}


def default_tolerances(dtype: np.dtype) -> tuple[float, float]:
    """(rtol, atol) for an output of this dtype."""
    return DEFAULT_TOLERANCES.get(np.dtype(dtype).name, (0.0, 0.0))


def compare_output(
    name: str,
    reference: npt.NDArray[Any],
    candidate: npt.NDArray[Any],
    *,
    rtol: float | None = None,
    atol: float | None = None,
) -> OutputComparison:
    default_rtol, default_atol = default_tolerances(reference.dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    shape = list(reference.shape)
    if reference.shape != candidate.shape:
        return OutputComparison(
            name,
            str(reference.dtype),
            shape,
            float("inf"),
            float("inf"),
            float("inf"),
            rtol,
            atol,
            False,
            f"shape {list(candidate.shape)} differs from {shape}",
        )
    if reference.dtype.kind not in "fc":
        mismatches = int(np.count_nonzero(reference != candidate))
        detail = f"{mismatches} elements differ" if mismatches else ""
        error = float(mismatches > 0)
        return OutputComparison(
            name, str(reference.dtype), shape, error, error, error, 0.0, 0.0, not mismatches, detail
        )
    ref64 = reference.astype(np.float64)
    cand64 = candidate.astype(np.float64)
    ref_nan, cand_nan = np.isnan(ref64), np.isnan(cand64)
    if np.any(ref_nan != cand_nan):
        count = int(np.count_nonzero(ref_nan != cand_nan))
        return OutputComparison(
            name,
            str(reference.dtype),
            shape,
            float("nan"),
            float("nan"),
            float("nan"),
            rtol,
            atol,
            False,
            f"NaN in {count} elements of one model only",
        )
    valid = ~ref_nan
    if not np.any(valid):
        return OutputComparison(name, str(reference.dtype), shape, 0.0, 0.0, 0.0, rtol, atol, True)
    with np.errstate(invalid="ignore"):
        diff = np.abs(cand64[valid] - ref64[valid])
    diff = np.where(np.isnan(diff), 0.0, diff)  # inf - inf at matching infinities
    max_abs = float(diff.max())
    scale = float(np.abs(ref64[valid]).max())
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = bool(max_abs <= atol + rtol * scale)
    return OutputComparison(
        name,
        str(reference.dtype),
        shape,
        max_abs,
        max_rel,
        float(diff.mean()),
        rtol,
        atol,
        passed,
        top1_agreement=top1_agreement(reference, candidate),
        scale=scale,
    )


def is_classifier_shaped(array: npt.NDArray[Any]) -> bool:
    """``[N, K]`` floating scores with ``K > 1``: a row's arg-max is its predicted class."""
    return array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f"


def top1_agreement(reference: npt.NDArray[Any], candidate: npt.NDArray[Any]) -> float | None:
    """Share of rows whose arg-max class agrees, for classifier-shaped outputs; else ``None``."""
    if not is_classifier_shaped(reference) or reference.shape != candidate.shape:
        return None
    if reference.shape[0] == 0:
        return None
    same = np.argmax(reference, axis=1) == np.argmax(candidate, axis=1)
    return float(np.mean(same))


def relative_error(reference: npt.NDArray[Any], candidate: npt.NDArray[Any]) -> float:
    """``max|candidate - reference| / max|reference|`` in float64, NaNs where both have them
    ignored; ``inf`` when shapes differ."""
    if reference.shape != candidate.shape:
        return float("inf")
    ref64 = np.asarray(reference, dtype=np.float64)
    cand64 = np.asarray(candidate, dtype=np.float64)
    ref_nan, cand_nan = np.isnan(ref64), np.isnan(cand64)
    if np.any(ref_nan != cand_nan):
        return float("nan")
    valid = ~ref_nan
    if not np.any(valid):
        return 0.0
    with np.errstate(invalid="ignore"):
        diff = np.abs(cand64[valid] - ref64[valid])
    diff = np.where(np.isnan(diff), 0.0, diff)  # inf - inf at matching infinities
    max_abs = float(diff.max())
    scale = float(np.abs(ref64[valid]).max())
    if scale > 0:
        return max_abs / scale
    return 0.0 if max_abs == 0 else float("inf")


def add_float64_errors(
    result: CheckResult,
    float64_reference: dict[str, npt.NDArray[Any]],
    reference: dict[str, npt.NDArray[Any]],
    candidate: dict[str, npt.NDArray[Any]],
) -> CheckResult:
    """Fill each float output's error of both models against a float64 run of the reference:
    if the candidate's error is no larger than the reference's own, folding added none."""
    for output in result.outputs:
        exact = float64_reference.get(output.name)
        if exact is None or exact.dtype.kind != "f":
            continue
        if output.name in reference:
            output.reference_vs_float64 = relative_error(exact, reference[output.name])
        if output.name in candidate:
            output.candidate_vs_float64 = relative_error(exact, candidate[output.name])
    return result


def compare_outputs(
    reference: dict[str, npt.NDArray[Any]],
    candidate: dict[str, npt.NDArray[Any]],
    *,
    rtol: float | None = None,
    atol: float | None = None,
    inputs: str = "",
) -> CheckResult:
    """Compare every reference output with the candidate output of the same name."""
    result = CheckResult(inputs=inputs)
    for name, expected in reference.items():
        if name not in candidate:
            result.outputs.append(
                OutputComparison(
                    name,
                    str(expected.dtype),
                    list(expected.shape),
                    float("inf"),
                    float("inf"),
                    float("inf"),
                    0.0,
                    0.0,
                    False,
                    "missing from the folded model",
                )
            )
            continue
        result.outputs.append(compare_output(name, expected, candidate[name], rtol=rtol, atol=atol))
    return result
