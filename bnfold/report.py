"""Turn a fold result into text for the terminal and a JSON document for pipelines.

Nothing is computed here: the numbers come from the fold log and the check.
"""

from __future__ import annotations

from typing import Any

from bnfold._version import __version__
from bnfold.comparison import CheckResult
from bnfold.fold import FoldResult
from bnfold.foldlog import FoldEntry, Outcome

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
    lines.append(f"  {'output':<{width}}  {'max abs':>10}  {'max rel':>10}  {'mean abs':>10}  gate")
    for output in check.outputs:
        verdict = "pass" if output.passed else "FAIL"
        gate = f"{verdict} (atol {output.atol:g}, rtol {output.rtol:g})"
        detail = f"  {output.detail}" if output.detail else ""
        lines.append(
            f"  {output.name:<{width}}  {output.max_abs:>10.3g}  {output.max_rel:>10.3g}  "
            f"{output.mean_abs:>10.3g}  {gate}{detail}"
        )
    return "\n".join(lines)


def format_seconds(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())


def format_result(result: FoldResult) -> str:
    parts = [format_log(result)]
    if result.check is not None:
        parts.append(format_check(result.check))
    if result.output is not None:
        parts.append(f"Wrote {result.output} ({format_seconds(result.seconds)})")
    return "\n".join(parts)


def result_document(result: FoldResult, *, source: str | None = None) -> dict[str, Any]:
    """The JSON report; keys are stable within a schema version (docs/user-guide.md)."""
    return {
        "schema": SCHEMA,
        "bnfold_version": __version__,
        "input": source,
        "output": result.output,
        "counts": result.counts(),
        "entries": [entry.to_dict() for entry in result.entries],
        "check": result.check.to_dict() if result.check is not None else None,
        "seconds": result.seconds,
    }


def check_document(check: CheckResult, *, reference: str, candidate: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "bnfold_version": __version__,
        "reference": reference,
        "candidate": candidate,
        "check": check.to_dict(),
    }
