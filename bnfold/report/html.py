"""A self-contained HTML page (inline CSS and SVG: no script, no network)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from bnfold.report.document import (
    CHECK_HEADER,
    WEIGHT_RANGE_HEADER,
    Document,
    check_cells,
    conditions,
    entry_outcome,
    gate,
    log_tables,
    size_rows,
    speedup,
    summary,
    weight_range_rows,
)

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


def _sizes(sizes: dict[str, Any]) -> list[str]:
    rows = [
        [_h(label), f"{before:,}", f"{after:,}", _h(change)]
        for label, before, after, change in size_rows(sizes)
    ]
    return ["<h2>Sizes</h2>", _table(["", "before", "after", "change"], rows)]


def _latency(latency: dict[str, Any]) -> list[str]:
    names = {"baseline": latency["baseline"], "candidate": latency["candidate"]}
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
            [_h(level["ort_level"]), "<b>speedup</b>", f"<b>{_h(speedup(level))}</b>"] + [""] * 5
        )
    header = ["level", "model", "p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms", "runs"]
    figures = "".join(
        f"<figure>{latency_svg(level, names)}</figure>" for level in latency["levels"]
    )
    return [
        "<h2>Latency</h2>",
        f'<p class="note">{_h(conditions(latency))}</p>',
        _table(header, rows, text_columns=(0, 1)),
        '<p class="note">Runs were timed interleaved (baseline, candidate, baseline, ...); '
        "the speedup is the ratio of medians with a bootstrap interval over the pairs.</p>",
        f'<div class="plots">{figures}</div>',
    ]


def _check(check: dict[str, Any]) -> list[str]:
    samples = f", {check['samples']} samples" if check.get("samples", 1) > 1 else ""
    rows = []
    for output in check["outputs"]:
        css = "pass" if output["passed"] else "fail"
        verdict = f'<span class="{css}">{_h(gate(output))}</span> {_h(output["detail"])}'
        rows.append([*(_h(cell) for cell in check_cells(output)), verdict])
    parts = [
        "<h2>Equivalence</h2>",
        f'<p class="note">On {_h(check["inputs"])}{samples}.</p>',
        _table([*CHECK_HEADER, "gate"], rows, text_columns=(0, 6)),
    ]
    if check.get("gate_note"):
        parts.append(f'<p class="note">{_h(check["gate_note"])}</p>')
    if check.get("float64_note"):
        parts.append(f'<p class="note">{_h(check["float64_note"])}</p>')
    return parts


def _log(title: str, entries: list[dict[str, Any]], first_column: str) -> list[str]:
    rows = [
        [_h(entry["name"]), _h("+".join(entry["ops"])), _h(entry_outcome(entry))]
        for entry in entries
    ]
    return [f"<h2>{_h(title)}</h2>", _table([first_column, "ops", "outcome"], rows, (0, 1, 2))]


def _weight_ranges(ranges: dict[str, Any]) -> list[str]:
    title = f"Weight ranges of the layers the fold changed ({len(ranges['layers'])})"
    parts = [f"<h2>{_h(title)}</h2>"]
    if ranges.get("warning"):
        parts.append(f'<p class="fail">{_h(ranges["warning"])}</p>')
    rows = [[_h(cell) for cell in row] for row in weight_range_rows(ranges)]
    parts.append(_table([_h(cell) for cell in WEIGHT_RANGE_HEADER], rows, (0, 1)))
    parts.append(
        '<p class="note">max|W|: the per-tensor range; channel spread: the largest output '
        "channel's range over the median one; ! past 8x growth or 16x spread</p>"
    )
    return parts


def render_html(document: Document) -> str:
    """One self-contained page: summary, sizes, latency table and plots, check, fold log."""
    title = document.get("input") or document.get("reference") or "model"
    body = [f"<h1>bnfold report: <code>{_h(title)}</code></h1>"]
    body.append(f'<p class="summary">{_h(summary(document))}</p>')
    if document.get("output"):
        body.append(f"<p>Wrote <code>{_h(document['output'])}</code></p>")
    if document.get("sizes") is not None:
        body += _sizes(document["sizes"])
    if document.get("latency") is not None:
        body += _latency(document["latency"])
    if document.get("check") is not None:
        body += _check(document["check"])
    for title, entries, first_column in log_tables(document):
        body += _log(title, entries, first_column)
    if (document.get("weight_ranges") or {}).get("layers"):
        body += _weight_ranges(document["weight_ranges"])
    body.append(
        f'<p class="note">bnfold {_h(document["bnfold_version"])}, '
        f"schema {_h(document['schema'])}</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>bnfold report: {_h(title)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
