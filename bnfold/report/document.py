"""The one report document (docs/report.schema.json) that every format renders: terminal
text, JSON, Markdown and HTML read the same counts, so they cannot disagree. Nothing is
computed here; the numbers come from the run record (``bnfold.results``)."""

from __future__ import annotations

from typing import Any

from bnfold._version import __version__
from bnfold.results import BenchResult, CheckResult, FoldResult, LatencyResult, SizeComparison

SCHEMA = "bnfold.report/1"
Document = dict[str, Any]


def result_document(
    result: FoldResult | None,
    *,
    source: str | None = None,
    command: str = "fold",
    candidate: str | None = None,
    check: CheckResult | None = None,
    sizes: SizeComparison | None = None,
    latency: LatencyResult | None = None,
) -> Document:
    """The JSON report; keys are stable within a schema version. ``result`` may be ``None``
    (``bnfold bench A B`` folds nothing); ``check``, ``sizes`` and ``latency`` default to the
    result's own."""
    if result is not None:
        check = check if check is not None else result.check
        sizes = sizes if sizes is not None else result.sizes
        latency = latency if latency is not None else result.latency
    return {
        "schema": SCHEMA,
        "bnfold_version": __version__,
        "command": command,
        "input": source,
        "loaded_with": result.loaded_with if result is not None else "",
        "candidate": candidate,
        "output": result.output if result is not None else None,
        "counts": result.counts() if result is not None else None,
        "entries": [entry.to_dict() for entry in result.entries] if result is not None else [],
        "check": check.to_dict() if check is not None else None,
        "seconds": dict(result.seconds) if result is not None else {},
        "sizes": sizes.to_dict() if sizes is not None else None,
        "latency": latency.to_dict() if latency is not None else None,
        "weight_ranges": _weight_ranges(result),
    }


def _weight_ranges(result: FoldResult | None) -> dict[str, Any] | None:
    """The rows of the layers a fold changed and the warning line; ``None`` when not measured
    (a Keras fold, ``bench A B``)."""
    if result is None or result.weight_ranges is None:
        return None
    return {
        "layers": [row.to_dict() for row in result.weight_ranges],
        "warning": result.weight_range_warning,
    }


def bench_document(measured: BenchResult, *, source: str, candidate: str | None) -> Document:
    return result_document(
        measured.fold,
        source=source,
        command="bench",
        candidate=candidate,
        check=measured.check,
        sizes=measured.sizes,
        latency=measured.latency,
    )


def check_document(check: CheckResult, *, reference: str, candidate: str) -> Document:
    return {
        "schema": SCHEMA,
        "bnfold_version": __version__,
        "reference": reference,
        "candidate": candidate,
        "check": check.to_dict(),
    }


def batchnorm_entries(document: Document) -> list[dict[str, Any]]:
    return [entry for entry in document.get("entries") or [] if _kind(entry) == "batchnorm"]


def affine_entries(document: Document) -> list[dict[str, Any]]:
    return [entry for entry in document.get("entries") or [] if _kind(entry) == "affine"]


def log_tables(document: Document) -> list[tuple[str, list[dict[str, Any]], str]]:
    """The log as the page formats show it: ``(title, entries, first column)`` for the BNs,
    then for the other constant affines folded, each only when it has entries."""
    batchnorms, affines = batchnorm_entries(document), affine_entries(document)
    tables = []
    if batchnorms:
        found = (document.get("counts") or {}).get("found", len(batchnorms))
        tables.append((f"Fold log ({found} BN)", batchnorms, "BN"))
    if affines:
        tables.append((f"Other constant affines folded ({len(affines)})", affines, "affine"))
    return tables


def _kind(entry: dict[str, Any]) -> str:
    return str(entry.get("kind", "batchnorm"))  # documents before "kind" held BNs only


def entry_outcome(entry: dict[str, Any]) -> str:
    """``folded into previous conv1 through Reshape (Keras)`` or ``left: reason: detail``."""
    if entry["outcome"] == "left":
        return f"left: {entry['reason']}: {entry['detail']}"
    if entry["outcome"] == "removed_by_converter":
        into = f" into {', '.join(entry['target'])}" if entry["target"] else ""
        detail = f": {entry['detail']}" if entry.get("detail") else ""
        return f"removed by the converter (folded{into} during conversion){detail}"
    where = "previous" if entry["outcome"] == "folded_into_previous" else "next"
    via = f" through {', '.join(entry['via'])}" if entry["via"] else ""
    stage = " (Keras)" if entry.get("stage") == "keras" else ""
    return f"folded into {where} {', '.join(entry['target'])}{via}{stage}"


def summary(document: Document) -> str:
    """One line: BNs found, folded, left; other affines; the check; the speedups."""
    parts = []
    counts = document.get("counts")
    if counts is not None:
        folded = counts["folded_into_previous"] + counts["folded_into_next"]
        removed = counts.get("removed_by_converter", 0)
        removed_text = f", {removed} removed by the converter" if removed else ""
        parts.append(
            f"{counts['found']} BN found, {folded} folded{removed_text}, {counts['left']} left"
        )
        if counts.get("affines_folded"):
            parts.append(f"{counts['affines_folded']} other constant affines folded")
    check = document.get("check")
    if check is not None:
        verdict = "passed" if check["passed"] else "FAILED"
        parts.append(f"check {verdict} (max rel {_g(check['max_rel'])})")
    latency = document.get("latency")
    if latency is not None:
        for level in latency["levels"]:
            parts.append(f"speedup {level['speedup']:.2f}x at {level['level']}")
    return "; ".join(parts)


def conditions(latency: dict[str, Any]) -> str:
    threads = latency["threads"]
    threads_text = "onnxruntime's default threads" if threads == 0 else f"{threads} thread(s)"
    machine = latency["machine"]
    budget = (
        f", time budget {latency['time_budget_s']:g} s per level"
        if latency.get("time_budget_s")
        else ""
    )
    return (
        f"{latency['provider']}, {threads_text}, batch {latency['batch']}, "
        f"{latency['warmup']} warm-up then up to {latency['runs']} interleaved pairs{budget}; "
        f"{machine['cpu']}, {machine['logical_cores']} logical cores, "
        f"onnxruntime {machine['versions'].get('onnxruntime', '?')}"
    )


def speedup(level: dict[str, Any]) -> str:
    low, high = level["speedup_ci"]
    return f"{level['speedup']:.3f}x ({100 * level['confidence']:.0f}% CI {low:.3f}-{high:.3f})"


SIZE_ROWS = (
    ("nodes", "nodes"),
    ("parameters", "parameters"),
    ("weight_bytes", "weight bytes"),
    ("batchnorm_nodes", "BatchNormalization nodes"),
    ("affine_nodes", "BN/affine nodes"),
)


WEIGHT_RANGE_HEADER = (
    "layer",
    "op",
    "channels",
    "max|W| before",
    "max|W| after",
    "growth",
    "channel spread before",
    "channel spread after",
)


def weight_range_rows(ranges: dict[str, Any]) -> list[list[str]]:
    """One row of text cells per layer (see ``WEIGHT_RANGE_HEADER``); a flagged layer's
    growth and spread end in ``!``."""
    rows = []
    for row in ranges["layers"]:
        mark = " !" if row["flagged"] else ""
        rows.append(
            [
                str(row["layer"]),
                str(row["op"]),
                str(row["channels"]),
                _g(row["before_max"]),
                _g(row["after_max"]),
                f"{_g(row['growth'])}x{mark}",
                f"{_g(row['spread_before'])}x",
                f"{_g(row['spread_after'])}x{mark}",
            ]
        )
    return rows


CHECK_HEADER = (
    "output",
    "max abs",
    "max rel",
    "original vs float64",
    "folded vs float64",
    "top-1",
)


def check_cells(output: dict[str, Any]) -> list[str]:
    """The text cells of one output's row of the check table (see ``CHECK_HEADER``); each
    format adds the ``gate`` cell in its own emphasis."""
    return [
        str(output["name"]),
        _g(output["max_abs"]),
        _g(output["max_rel"]),
        _g(output.get("reference_vs_float64")),
        _g(output.get("candidate_vs_float64")),
        percent(output.get("top1_agreement")),
    ]


def size_rows(sizes: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    rows = []
    for key, label in SIZE_ROWS:
        before, after = sizes["before"][key], sizes["after"][key]
        change = f"{after - before:+,d}" if before != after else "="
        rows.append((label, before, after, change))
    return rows


def gate(output: dict[str, Any]) -> str:
    """The verdict and the bound that decided it. An output passes when
    ``max_abs <= atol + rtol * max|original|``; the larger term is named, so a pass on the
    absolute bound of an output near zero does not read like a small relative error."""
    verdict = "pass" if output["passed"] else "FAIL"
    atol, rtol, scale = output["atol"], output["rtol"], output.get("scale")
    max_abs = output["max_abs"]
    if scale is None or max_abs is None:
        return f"{verdict} (atol {atol:g}, rtol {rtol:g})"
    sign = "<=" if output["passed"] else ">"
    relative = f"rtol {rtol:g} x max|orig| {scale:.3g}"
    # The deciding term first: an output near zero passes on atol, whatever max_rel says.
    terms = f"{relative} + atol {atol:g}" if rtol * scale > atol else f"atol {atol:g} + {relative}"
    return f"{verdict}: max abs {max_abs:.3g} {sign} {atol + rtol * scale:.3g} = {terms}"


def _g(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def g(value: float | None, digits: int = 3) -> str:
    """A number in ``digits`` significant digits, ``-`` when absent (or not finite in JSON)."""
    return _g(value, digits)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
