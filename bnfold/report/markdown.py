"""Markdown that fits a pull-request comment: tables, the fold log folded away."""

from __future__ import annotations

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


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _sizes(sizes: dict[str, Any]) -> list[str]:
    lines = ["| | before | after | change |", "|---|---:|---:|---:|"]
    lines += [
        f"| {label} | {before:,} | {after:,} | {change} |"
        for label, before, after, change in size_rows(sizes)
    ]
    return [*lines, ""]


def _latency(latency: dict[str, Any]) -> list[str]:
    lines = [
        f"Latency in ms: {_md(conditions(latency))}.",
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
        lines.append(f"| {level['ort_level']} | **speedup** | **{speedup(level)}** |||||")
    return [*lines, ""]


def _check(check: dict[str, Any]) -> list[str]:
    samples = f" ({check['samples']} samples)" if check.get("samples", 1) > 1 else ""
    lines = [
        f"Equivalence on {_md(check['inputs'])}{samples}.",
        "",
        "| " + " | ".join([*CHECK_HEADER, "gate"]) + " |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for output in check["outputs"]:
        verdict = gate(output)
        verdict = verdict if output["passed"] else verdict.replace("FAIL", "**FAIL**", 1)
        cells = [*(_md(cell) for cell in check_cells(output)), _md(verdict)]
        lines.append("| " + " | ".join(cells) + " |")
    if check.get("gate_note"):
        lines += ["", f"_{_md(check['gate_note'])}_"]
    if check.get("float64_note"):
        lines += ["", f"_{_md(check['float64_note'])}_"]
    return [*lines, ""]


def _log(title: str, entries: list[dict[str, Any]], first_column: str) -> list[str]:
    lines = [f"<details><summary>{title}</summary>", "", f"| {first_column} | ops | outcome |"]
    lines.append("|---|---|---|")
    lines += [
        f"| {_md(entry['name'])} | {'+'.join(entry['ops'])} | {_md(entry_outcome(entry))} |"
        for entry in entries
    ]
    return [*lines, "", "</details>", ""]


def _weight_ranges(ranges: dict[str, Any]) -> list[str]:
    lines = [f"**{_md(ranges['warning'])}**", ""] if ranges.get("warning") else []
    title = f"Weight ranges of the layers the fold changed ({len(ranges['layers'])})"
    lines += [f"<details><summary>{title}</summary>", ""]
    lines.append("| " + " | ".join(_md(cell) for cell in WEIGHT_RANGE_HEADER) + " |")
    lines.append("|---|---|" + "---:|" * (len(WEIGHT_RANGE_HEADER) - 2))
    lines += [
        "| " + " | ".join(_md(cell) for cell in row) + " |" for row in weight_range_rows(ranges)
    ]
    return [*lines, "", "</details>", ""]


def render_markdown(document: Document) -> str:
    title = document.get("input") or document.get("reference") or "model"
    lines = [f"### bnfold report: `{title}`", "", f"**{summary(document)}**", ""]
    if document.get("sizes") is not None:
        lines += _sizes(document["sizes"])
    if document.get("latency") is not None:
        lines += _latency(document["latency"])
    if document.get("check") is not None:
        lines += _check(document["check"])
    for title, entries, first_column in log_tables(document):
        lines += _log(title, entries, first_column)
    if (document.get("weight_ranges") or {}).get("layers"):
        lines += _weight_ranges(document["weight_ranges"])
    lines.append(f"<sub>bnfold {document['bnfold_version']}, schema {document['schema']}</sub>")
    return "\n".join(lines) + "\n"
