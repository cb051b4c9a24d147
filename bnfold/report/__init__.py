"""Reports: one document (``document.py``, docs/report.schema.json) rendered as terminal text,
JSON for pipelines, Markdown for a pull-request comment and a self-contained HTML page. Every
format renders the same document, so their counts cannot disagree; a saved JSON document can
be rendered again. Nothing is computed here, and nothing here imports onnxruntime or onnx.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from bnfold.report.document import (
    SCHEMA,
    Document,
    bench_document,
    check_document,
    result_document,
)
from bnfold.report.html import latency_svg, render_html
from bnfold.report.markdown import render_markdown
from bnfold.report.text import render_text

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


def render_report(document: Document, suffix: str) -> str:
    """The report file's text for a suffix in ``REPORT_SUFFIXES``."""
    suffix = suffix.lower()
    if suffix == ".json":
        return json_text(document) + "\n"
    if suffix == ".md":
        return render_markdown(document)
    if suffix in (".html", ".htm"):
        return render_html(document)
    raise ValueError(f"no report format for {suffix!r}: use .json, .md or .html")


def write_report(document: Document, path: str | os.PathLike[str]) -> None:
    """Render by ``path``'s suffix and write atomically: a temporary file beside it, then a
    rename, so a pipeline never reads half a report."""
    from bnfold.atomic import write_atomically

    text = render_report(document, Path(path).suffix)
    write_atomically(path, lambda staged: staged.write_text(text, encoding="utf-8"))


__all__ = [
    "REPORT_SUFFIXES",
    "SCHEMA",
    "Document",
    "bench_document",
    "check_document",
    "json_text",
    "latency_svg",
    "render_html",
    "render_markdown",
    "render_report",
    "render_text",
    "result_document",
    "write_report",
]
