"""Turn a fold result, a check, sizes and latency into text for the terminal, a JSON document
for pipelines (docs/report.schema.json), Markdown for a pull-request comment and a
self-contained HTML page (inline CSS and SVG: no script, no network).

Nothing is computed here: the numbers come from the fold log, the check, the size counts and
the latency measurement; Markdown and HTML are rendered from the JSON document, so a saved
document can be rendered again.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bnfold._version import __version__
from bnfold.comparison import CheckResult
from bnfold.fold import FoldResult
from bnfold.foldlog import FoldEntry, Outcome

if TYPE_CHECKING:  # the latency module imports onnxruntime; the report only formats
    from bnfold.check.latency import LatencyResult
    from bnfold.sizes import SizeComparison

SCHEMA = "bnfold.report/1"


def describe_entry(entry: FoldEntry) -> str:
    via = f" through {', '.join(entry.via)}" if entry.via else ""
    stage = " (Keras)" if entry.stage == "keras" else ""
    if entry.outcome is Outcome.FOLDED_INTO_PREVIOUS:
        return f"folded into previous {', '.join(entry.target)}{via}{stage}"
    if entry.outcome is Outcome.FOLDED_INTO_NEXT:
        return f"folded into next {', '.join(entry.target)}{via}{stage}"
    assert entry.reason is not None
    return f"left: {entry.reason.value}: {entry.detail}"


def format_log(result: FoldResult) -> str:
    if not result.entries:
        return "No BatchNormalization or BN-like affine found."
    width = min(max(len(entry.name) for entry in result.entries), 48)
    ops_width = min(max(len("+".join(entry.ops)) for entry in result.entries), 28)
    lines = [
        f"{entry.name:<{width}}  {'+'.join(entry.ops):<{ops_width}}  {describe_entry(entry)}"
        for entry in result.entries
    ]
    counts = result.counts()
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(counts["left_by_reason"].items()))
    lines.append(
        f"Found {counts['found']}: {counts['folded_into_previous']} folded into previous, "
        f"{counts['folded_into_next']} into next, {counts['left']} left"
        + (f" ({reasons})" if reasons else "")
    )
    return "\n".join(lines)


def format_check(check: CheckResult) -> str:
    lines = [f"Check on {check.inputs}" if check.inputs else "Check"]
    width = max([len(output.name) for output in check.outputs] + [6])
    has_float64 = any(output.candidate_vs_float64 is not None for output in check.outputs)
    has_top1 = any(output.top1_agreement is not None for output in check.outputs)
    extra = ""
    if has_float64:
        extra += f"  {'orig~f64':>10}  {'fold~f64':>10}"
    if has_top1:
        extra += f"  {'top-1':>7}"
    lines.append(
        f"  {'output':<{width}}  {'max abs':>10}  {'max rel':>10}  {'mean abs':>10}{extra}  gate"
    )
    for output in check.outputs:
        verdict = "pass" if output.passed else "FAIL"
        gate = f"{verdict} (atol {output.atol:g}, rtol {output.rtol:g})"
        detail = f"  {output.detail}" if output.detail else ""
        columns = ""
        if has_float64:
            columns += (
                f"  {_g(output.reference_vs_float64):>10}  {_g(output.candidate_vs_float64):>10}"
            )
        if has_top1:
            columns += f"  {_percent(output.top1_agreement):>7}"
        lines.append(
            f"  {output.name:<{width}}  {output.max_abs:>10.3g}  {output.max_rel:>10.3g}  "
            f"{output.mean_abs:>10.3g}{columns}  {gate}{detail}"
        )
    if check.samples > 1:
        lines.append(f"  over {check.samples} input samples")
    if has_float64:
        lines.append("  orig~f64, fold~f64: max rel error of each model against float64")
    elif check.float64_note:
        lines.append(f"  {check.float64_note}")
    return "\n".join(lines)


def _g(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_seconds(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())


def format_result(result: FoldResult) -> str:
    parts = [format_log(result)]
    if result.check is not None:
        parts.append(format_check(result.check))
    if result.output is not None:
        parts.append(f"Wrote {result.output} ({format_seconds(result.seconds)})")
    return "\n".join(parts)


def result_document(
    result: FoldResult | None,
    *,
    source: str | None = None,
    latency: LatencyResult | None = None,
    sizes: SizeComparison | None = None,
    check: CheckResult | None = None,
    candidate: str | None = None,
    command: str = "fold",
) -> dict[str, Any]:
    """The JSON report (docs/report.schema.json); keys are stable within a schema version.

    ``result`` may be ``None`` (``bnfold bench A B`` folds nothing); ``check`` replaces the
    result's own check when given.
    """
    check = check if check is not None else (result.check if result is not None else None)
    return {
        "schema": SCHEMA,
        "bnfold_version": __version__,
        "command": command,
        "input": source,
        "candidate": candidate,
        "output": result.output if result is not None else None,
        "counts": result.counts() if result is not None else None,
        "entries": [entry.to_dict() for entry in result.entries] if result is not None else [],
        "check": check.to_dict() if check is not None else None,
        "seconds": dict(result.seconds) if result is not None else {},
        "sizes": sizes.to_dict() if sizes is not None else None,
        "latency": latency.to_dict() if latency is not None else None,
    }


def check_document(check: CheckResult, *, reference: str, candidate: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "bnfold_version": __version__,
        "reference": reference,
        "candidate": candidate,
        "check": check.to_dict(),
    }


# --------------------------------------------------------------------------- terminal


def _conditions(latency: dict[str, Any]) -> str:
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


def _speedup(level: dict[str, Any]) -> str:
    low, high = level["speedup_ci"]
    return f"{level['speedup']:.3f}x ({100 * level['confidence']:.0f}% CI {low:.3f}-{high:.3f})"


def format_latency_document(latency: dict[str, Any]) -> str:
    lines = [f"Latency in ms ({_conditions(latency)})"]
    names = {"baseline": latency["baseline"], "candidate": latency["candidate"]}
    width = max(len(name) for name in names.values())
    lines.append(
        f"  {'level':<8}  {'model':<{width}}  {'p50':>9}  {'p90':>9}  {'p99':>9}  "
        f"{'mean':>9}  {'min':>9}  {'runs':>5}"
    )
    for level in latency["levels"]:
        for key in ("baseline", "candidate"):
            stats = level[key]
            label = level["level"] if key == "baseline" else ""
            lines.append(
                f"  {label:<8}  {names[key]:<{width}}  {stats['p50']:>9.3f}  {stats['p90']:>9.3f}"
                f"  {stats['p99']:>9.3f}  {stats['mean']:>9.3f}  {stats['min']:>9.3f}"
                f"  {stats['runs']:>5}"
            )
        lines.append(
            f"  {'':<8}  speedup {_speedup(level)} at {level['ort_level']}"
            + (" (stopped by the time budget)" if level["stopped_by"] == "time budget" else "")
        )
    return "\n".join(lines)


def format_latency(latency: LatencyResult) -> str:
    return format_latency_document(latency.to_dict())


SIZE_ROWS = (
    ("nodes", "nodes"),
    ("parameters", "parameters"),
    ("weight_bytes", "weight bytes"),
    ("batchnorm_nodes", "BatchNormalization nodes"),
    ("affine_nodes", "BN/affine nodes"),
)


def _size_rows(sizes: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    rows = []
    for key, label in SIZE_ROWS:
        before, after = sizes["before"][key], sizes["after"][key]
        change = f"{after - before:+,d}" if before != after else "="
        rows.append((label, before, after, change))
    return rows


def format_sizes_document(sizes: dict[str, Any]) -> str:
    lines = ["Sizes", f"  {'':<26}  {'before':>12}  {'after':>12}  {'change':>10}"]
    for label, before, after, change in _size_rows(sizes):
        lines.append(f"  {label:<26}  {before:>12,}  {after:>12,}  {change:>10}")
    return "\n".join(lines)


def format_sizes(sizes: SizeComparison) -> str:
    return format_sizes_document(sizes.to_dict())


def format_report(
    result: FoldResult | None,
    *,
    latency: LatencyResult | None = None,
    sizes: SizeComparison | None = None,
    check: CheckResult | None = None,
) -> str:
    """The terminal text of a fold and/or bench: fold log, check, sizes, latency."""
    parts = []
    if result is not None:
        parts.append(format_result(result) if check is None else format_log(result))
    if check is not None:
        parts.append(format_check(check))
    if sizes is not None:
        parts.append(format_sizes(sizes))
    if latency is not None:
        parts.append(format_latency(latency))
    if result is not None and check is not None and result.output is not None:
        parts.append(f"Wrote {result.output} ({format_seconds(result.seconds)})")
    return "\n".join(parts)


# --------------------------------------------------------------------------- files


def _entry_outcome(entry: dict[str, Any]) -> str:
    if entry["outcome"] == Outcome.LEFT.value:
        return f"left: {entry['reason']}: {entry['detail']}"
    where = "previous" if entry["outcome"] == Outcome.FOLDED_INTO_PREVIOUS.value else "next"
    via = f" through {', '.join(entry['via'])}" if entry["via"] else ""
    return f"folded into {where} {', '.join(entry['target'])}{via}"


def _summary(document: dict[str, Any]) -> str:
    parts = []
    counts = document.get("counts")
    if counts is not None:
        parts.append(
            f"{counts['found']} BN found, "
            f"{counts['folded_into_previous'] + counts['folded_into_next']} folded, "
            f"{counts['left']} left"
        )
    check = document.get("check")
    if check is not None:
        verdict = "passed" if check["passed"] else "FAILED"
        parts.append(f"check {verdict} (max rel {check['max_rel']:.3g})")
    latency = document.get("latency")
    if latency is not None:
        for level in latency["levels"]:
            parts.append(f"speedup {level['speedup']:.2f}x at {level['level']}")
    return "; ".join(parts)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(document: dict[str, Any]) -> str:
    """A report that fits a pull-request comment: tables, the fold log folded away."""
    title = document.get("input") or "model"
    lines = [f"### bnfold report: `{title}`", "", f"**{_summary(document)}**", ""]
    sizes = document.get("sizes")
    if sizes is not None:
        lines += ["| | before | after | change |", "|---|---:|---:|---:|"]
        lines += [
            f"| {label} | {before:,} | {after:,} | {change} |"
            for label, before, after, change in _size_rows(sizes)
        ]
        lines.append("")
    latency = document.get("latency")
    if latency is not None:
        lines += [
            f"Latency in ms: {_md(_conditions(latency))}.",
            "",
            "| level | model | p50 | p90 | p99 | mean | min | runs |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for level in latency["levels"]:
            for key in ("baseline", "candidate"):
                stats = level[key]
                lines.append(
                    f"| {level['ort_level']} | {_md(latency[key])} | {stats['p50']:.3f} | "
                    f"{stats['p90']:.3f} | {stats['p99']:.3f} | {stats['mean']:.3f} | "
                    f"{stats['min']:.3f} | {stats['runs']} |"
                )
            lines.append(f"| {level['ort_level']} | **speedup** | **{_speedup(level)}** |||||")
        lines.append("")
    check = document.get("check")
    if check is not None:
        lines += [
            f"Equivalence on {_md(check['inputs'])}"
            + (f" ({check['samples']} samples)" if check.get("samples", 1) > 1 else "")
            + ".",
            "",
            "| output | max abs | max rel | original vs float64 | folded vs float64 | top-1 | gate |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for output in check["outputs"]:
            verdict = "pass" if output["passed"] else "**FAIL**"
            lines.append(
                f"| {_md(output['name'])} | {output['max_abs']:.3g} | {output['max_rel']:.3g} | "
                f"{_g(output.get('reference_vs_float64'))} | "
                f"{_g(output.get('candidate_vs_float64'))} | "
                f"{_percent(output.get('top1_agreement'))} | {verdict} |"
            )
        if check.get("float64_note"):
            lines += ["", f"_{_md(check['float64_note'])}_"]
        lines.append("")
    entries = document.get("entries") or []
    if entries:
        lines += [
            f"<details><summary>Fold log ({len(entries)} BN)</summary>",
            "",
            "| BN | ops | outcome |",
            "|---|---|---|",
        ]
        lines += [
            f"| {_md(entry['name'])} | {'+'.join(entry['ops'])} | {_md(_entry_outcome(entry))} |"
            for entry in entries
        ]
        lines += ["", "</details>", ""]
    lines.append(f"<sub>bnfold {document['bnfold_version']}, schema {document['schema']}</sub>")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTML

COLOURS = {"baseline": "#6b7280", "candidate": "#d9480f"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#1f2328;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:right}
.text{text-align:left}
th{background:#f6f8fa}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:700}
.summary{font-size:1.05em;font-weight:600}.note{color:#57606a;font-size:.9em}
.plots{display:flex;flex-wrap:wrap;gap:1em}figure{margin:.5em 0}
svg text{font-family:inherit}
"""


def _h(value: Any) -> str:
    return html.escape(str(value))


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low if high > low else abs(high) or 1.0
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + 1e-12 * step:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _ecdf_points(values: Sequence[float]) -> list[tuple[float, float]]:
    ordered = sorted(values)
    n = len(ordered)
    return [(value, (index + 1) / n) for index, value in enumerate(ordered)]


def latency_svg(level: dict[str, Any], names: dict[str, str], width: int = 520) -> str:
    """Both latency distributions of one level as empirical CDFs (a step line per model,
    a dashed line at each median) in inline SVG."""
    height, left, right, top, bottom = 300, 56, 16, 34, 44
    series = {key: level.get(f"{key}_ms") or [] for key in ("baseline", "candidate")}
    values = [value for samples in series.values() for value in samples]
    if not values:
        return '<p class="note">no samples recorded</p>'
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 or max(high * 0.05, 1e-3)
    low, high = max(0.0, low - pad), high + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * plot_w

    def y(fraction: float) -> float:
        return top + (1.0 - fraction) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="latency distributions at {_h(level["ort_level"])}">',
        f'<text x="{left}" y="18" font-size="13" font-weight="600">'
        f"{_h(level['ort_level'])}: cumulative share of runs by latency</text>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#d0d7de"/>',
    ]
    for tick in _nice_ticks(low, high):
        tx = x(tick)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + plot_h}" stroke="#eef1f4"/>'
            f'<text x="{tx:.1f}" y="{top + plot_h + 16}" font-size="11" text-anchor="middle">'
            f"{tick:g}</text>"
        )
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        ty = y(fraction)
        parts.append(
            f'<line x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}" '
            f'stroke="#eef1f4"/><text x="{left - 6}" y="{ty + 4:.1f}" font-size="11" '
            f'text-anchor="end">{fraction:g}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" font-size="12" '
        'text-anchor="middle">latency per run (ms)</text>'
    )
    for key, samples in series.items():
        if not samples:
            continue
        colour = COLOURS[key]
        points = _ecdf_points(samples)
        path = [f"M{x(points[0][0]):.2f},{y(0.0):.2f}"]
        previous = 0.0
        for value, fraction in points:
            path.append(f"L{x(value):.2f},{y(previous):.2f}L{x(value):.2f},{y(fraction):.2f}")
            previous = fraction
        path.append(f"L{left + plot_w:.2f},{y(1.0):.2f}")
        median = level[key]["p50"]
        parts.append(
            f'<path d="{"".join(path)}" fill="none" stroke="{colour}" stroke-width="2" '
            f'class="ecdf {key}"/>'
            f'<line x1="{x(median):.2f}" y1="{top}" x2="{x(median):.2f}" y2="{top + plot_h}" '
            f'stroke="{colour}" stroke-dasharray="4 3"/>'
        )
    for row, key in enumerate(("baseline", "candidate")):
        ly = top + plot_h - 26 + row * 16  # bottom right: where a CDF never is
        parts.append(
            f'<line x1="{left + plot_w - 190}" y1="{ly - 4}" x2="{left + plot_w - 170}" '
            f'y2="{ly - 4}" stroke="{COLOURS[key]}" stroke-width="2"/>'
            f'<text x="{left + plot_w - 164}" y="{ly}" font-size="11">'
            f"{_h(names[key][:22])} p50 {level[key]['p50']:.3f}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: Sequence[int] = (0,)
) -> str:
    """A table whose columns are right-aligned numbers except ``text_columns``."""

    def cell(tag: str, index: int, content: str) -> str:
        css = ' class="text"' if index in text_columns else ""
        return f"<{tag}{css}>{content}</{tag}>"

    head = "".join(cell("th", index, text) for index, text in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", index, text) for index, text in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(document: dict[str, Any]) -> str:
    """One self-contained page: summary, sizes, latency table and plots, check, fold log."""
    title = document.get("input") or "model"
    body = [f"<h1>bnfold report: <code>{_h(title)}</code></h1>"]
    body.append(f'<p class="summary">{_h(_summary(document))}</p>')
    if document.get("output"):
        body.append(f"<p>Wrote <code>{_h(document['output'])}</code></p>")
    sizes = document.get("sizes")
    if sizes is not None:
        body.append("<h2>Sizes</h2>")
        body.append(
            _table(
                ["", "before", "after", "change"],
                [
                    [_h(label), f"{before:,}", f"{after:,}", _h(change)]
                    for label, before, after, change in _size_rows(sizes)
                ],
            )
        )
    latency = document.get("latency")
    if latency is not None:
        names = {"baseline": latency["baseline"], "candidate": latency["candidate"]}
        body.append("<h2>Latency</h2>")
        body.append(f'<p class="note">{_h(_conditions(latency))}</p>')
        rows = []
        for level in latency["levels"]:
            for key in ("baseline", "candidate"):
                stats = level[key]
                rows.append(
                    [_h(level["ort_level"]), _h(names[key])]
                    + [f"{stats[p]:.3f}" for p in ("p50", "p90", "p99", "mean", "min")]
                    + [str(stats["runs"])]
                )
            rows.append(
                [_h(level["ort_level"]), "<b>speedup</b>", f"<b>{_h(_speedup(level))}</b>"]
                + [""] * 5
            )
        body.append(
            _table(
                ["level", "model", "p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms", "runs"],
                rows,
                text_columns=(0, 1),
            )
        )
        body.append(
            '<p class="note">Runs were timed interleaved (baseline, candidate, baseline, ...); '
            "the speedup is the ratio of medians with a bootstrap interval over the pairs.</p>"
        )
        figures = "".join(
            f"<figure>{latency_svg(level, names)}</figure>" for level in latency["levels"]
        )
        body.append(f'<div class="plots">{figures}</div>')
    check = document.get("check")
    if check is not None:
        body.append("<h2>Equivalence</h2>")
        samples = f", {check['samples']} samples" if check.get("samples", 1) > 1 else ""
        body.append(f'<p class="note">On {_h(check["inputs"])}{samples}.</p>')
        rows = []
        for output in check["outputs"]:
            verdict = (
                '<span class="pass">pass</span>'
                if output["passed"]
                else '<span class="fail">FAIL</span>'
            )
            rows.append(
                [
                    _h(output["name"]),
                    f"{output['max_abs']:.3g}",
                    f"{output['max_rel']:.3g}",
                    _g(output.get("reference_vs_float64")),
                    _g(output.get("candidate_vs_float64")),
                    _percent(output.get("top1_agreement")),
                    f"{verdict} (atol {output['atol']:g}, rtol {output['rtol']:g}) "
                    f"{_h(output['detail'])}",
                ]
            )
        gate_column = 6
        body.append(
            _table(
                [
                    "output",
                    "max abs",
                    "max rel",
                    "original vs float64",
                    "folded vs float64",
                    "top-1",
                    "gate",
                ],
                rows,
                text_columns=(0, gate_column),
            )
        )
        if check.get("float64_note"):
            body.append(f'<p class="note">{_h(check["float64_note"])}</p>')
    entries = document.get("entries") or []
    if entries:
        body.append(f"<h2>Fold log ({len(entries)} BN)</h2>")
        body.append(
            _table(
                ["BN", "ops", "outcome"],
                [
                    [
                        _h(entry["name"]),
                        _h("+".join(entry["ops"])),
                        _h(_entry_outcome(entry)),
                    ]
                    for entry in entries
                ],
                text_columns=(0, 1, 2),
            )
        )
    body.append(
        f'<p class="note">bnfold {_h(document["bnfold_version"])}, '
        f"schema {_h(document['schema'])}</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>bnfold report: {_h(title)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


REPORT_SUFFIXES = (".json", ".md", ".html")


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    return value


def json_text(document: dict[str, Any]) -> str:
    """Strict JSON: an error that is not finite (a shape mismatch, NaN in one model only)
    is written as null, since ``Infinity`` and ``NaN`` are not JSON."""
    return json.dumps(_finite_or_null(document), indent=2, default=str, allow_nan=False)


def render_report(document: dict[str, Any], suffix: str) -> str:
    """The report file's text for a suffix in ``REPORT_SUFFIXES``."""
    suffix = suffix.lower()
    if suffix == ".json":
        return json_text(document) + "\n"
    if suffix == ".md":
        return render_markdown(document)
    if suffix in (".html", ".htm"):
        return render_html(document)
    raise ValueError(f"no report format for {suffix!r}: use .json, .md or .html")
