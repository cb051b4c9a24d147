"""How a command body runs and prints: bnfold's errors as one line and their exit code
(docs/user-guide.md lists them), a JSON document with ``--json``, the progress bar of a
benchmark, and the report document as text, JSON or a ``--report`` file."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import click

from bnfold.errors import BnfoldError, CheckFailedError

INTERNAL_ERROR_EXIT = 5
# 128 + the signal's number, what a shell reports for a process the signal killed.
SIGINT_EXIT = 130


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"bnfold: error: {message}", err=True)
    sys.exit(code)


def echo_error_json(message: str, code: int) -> None:
    click.echo(json.dumps({"error": message, "exit_code": code}, indent=2))


def run_command(debug: bool, as_json: bool, action: Callable[[], None]) -> None:
    """Run a command body: bnfold's errors become one line and their exit code (and, with
    ``--json``, a JSON document naming both on stdout unless the command printed one)."""
    if debug:
        os.environ["BNFOLD_DEBUG"] = "1"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # onnx_ir warns about odd fields of damaged files; bnfold's own line says what matters.
        logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    try:
        action()
    except BnfoldError as error:
        if debug:
            traceback.print_exc()
        if as_json and not isinstance(error, CheckFailedError):  # those print their report
            echo_error_json(str(error), error.exit_code)
        fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", SIGINT_EXIT)
    except Exception as error:
        if debug:
            traceback.print_exc()
        message = f"internal error: {type(error).__name__}: {error}"
        if as_json:
            echo_error_json(message, INTERNAL_ERROR_EXIT)
        fail(f"{message} (run with --debug for the traceback)", INTERNAL_ERROR_EXIT)


class Progress:
    """A progress bar on stderr, opened by the first timed pair (so it does not sit there
    while the model folds); click hides the bar, not the label, off a terminal."""

    def __init__(self, total: int, label: str = "Timing (interleaved)") -> None:
        self.total, self.label = total, label
        self.bar: Any = None

    def __call__(self, steps: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=self.total, label=self.label, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def show_document(document: dict[str, Any], as_json: bool, report_path: str | None) -> None:
    """Print the document (text or JSON) and write ``--report``: one document for all."""
    from bnfold import report

    click.echo(report.json_text(document) if as_json else report.render_text(document))
    if report_path is not None:
        report.write_report(document, report_path)
