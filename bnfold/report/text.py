"""The terminal's text, rendered from the report document (``document.py``)."""

from __future__ import annotations

from typing import Any

from bnfold.report.document import (
    Document,
    affine_entries,
    batchnorm_entries,
    conditions,
    entry_outcome,
    g,
    gate,
    percent,
    size_rows,
    speedup,
)


def _entry_lines(entries: list[dict[str, Any]]) -> list[str]:
    width = min(max(len(entry["name"]) for entry in entries), 48)
    ops_width = min(max(len("+".join(entry["ops"])) for entry in entries), 28)
    return [
        f"{entry['name']:<{width}}  {'+'.join(entry['ops']):<{ops_width}}  {entry_outcome(entry)}"
        for entry in entries
    ]


def format_log(document: Document) -> str:
    """One line per BN, the other constant affines folded apart, then the counts."""
    batchnorms, affines = batchnorm_entries(document), affine_entries(document)
    if not batchnorms and not affines:
        return "No BatchNormalization or BN-like affine found."
    lines = _entry_lines(batchnorms) if batchnorms else []
    if affines:
        lines.append(f"Other constant affines folded: {len(affines)} (not counted as BN)")
        lines += ["  " + line for line in _entry_lines(affines)]
    counts = document["counts"]
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(counts["left_by_reason"].items()))
    lines.append(
        f"Found {counts['found']}: {counts['folded_into_previous']} folded into previous, "
        f"{counts['folded_into_next']} into next, "
        + (
            f"{counts['removed_by_converter']} removed by the converter, "
            if counts.get("removed_by_converter")
            else ""
        )
        + f"{counts['left']} left"
        + (f" ({reasons})" if reasons else "")
    )
    warning = (document.get("weight_ranges") or {}).get("warning")
    if warning:
        lines.append(warning)  # the log's last line: what the fold did to int8 weights
    return "\n".join(lines)


def format_check(check: dict[str, Any]) -> str:
    lines = [f"Check on {check['inputs']}" if check["inputs"] else "Check"]
    outputs = check["outputs"]
    width = max([len(output["name"]) for output in outputs] + [6])
    has_float64 = any(output.get("candidate_vs_float64") is not None for output in outputs)
    has_top1 = any(output.get("top1_agreement") is not None for output in outputs)
    extra = ""
    if has_float64:
        extra += f"  {'orig~f64':>10}  {'fold~f64':>10}"
    if has_top1:
        extra += f"  {'top-1':>7}"
    lines.append(
        f"  {'output':<{width}}  {'max abs':>10}  {'max rel':>10}  {'mean abs':>10}{extra}  gate"
    )
    for output in outputs:
        detail = f"  {output['detail']}" if output["detail"] else ""
        columns = ""
        if has_float64:
            columns += (
                f"  {g(output.get('reference_vs_float64')):>10}"
                f"  {g(output.get('candidate_vs_float64')):>10}"
            )
        if has_top1:
            columns += f"  {percent(output.get('top1_agreement')):>7}"
        lines.append(
            f"  {output['name']:<{width}}  {g(output['max_abs']):>10}  {g(output['max_rel']):>10}"
            f"  {g(output['mean_abs']):>10}{columns}  {gate(output)}{detail}"
        )
    if check.get("gate_note"):
        lines.append(f"  {check['gate_note']}")
    if check.get("samples", 1) > 1:
        lines.append(f"  over {check['samples']} input samples")
    if has_float64:
        lines.append("  orig~f64, fold~f64: max rel error of each model against float64")
    elif check.get("float64_note"):
        lines.append(f"  {check['float64_note']}")
    return "\n".join(lines)


def format_sizes(sizes: dict[str, Any]) -> str:
    lines = ["Sizes", f"  {'':<26}  {'before':>12}  {'after':>12}  {'change':>10}"]
    for label, before, after, change in size_rows(sizes):
        lines.append(f"  {label:<26}  {before:>12,}  {after:>12,}  {change:>10}")
    return "\n".join(lines)


def format_latency(latency: dict[str, Any]) -> str:
    lines = [f"Latency in ms ({conditions(latency)})"]
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
            f"  {'':<8}  speedup {speedup(level)} at {level['ort_level']}"
            + (" (stopped by the time budget)" if level["stopped_by"] == "time budget" else "")
        )
    return "\n".join(lines)


def format_seconds(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())


def render_text(document: Document) -> str:
    """Whatever the document holds, in this order: fold log, check, sizes, latency, the file
    written."""
    parts = []
    if document.get("loaded_with"):
        parts.append(f"Read {document['loaded_with']}")
    if document.get("counts") is not None:
        parts.append(format_log(document))
    if document.get("check") is not None:
        parts.append(format_check(document["check"]))
    if document.get("sizes") is not None:
        parts.append(format_sizes(document["sizes"]))
    if document.get("latency") is not None:
        parts.append(format_latency(document["latency"]))
    if document.get("output") is not None:
        parts.append(f"Wrote {document['output']} ({format_seconds(document['seconds'])})")
    return "\n".join(parts)
