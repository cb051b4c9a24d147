"""The command line: ``bnfold MODEL -o OUT``, ``bnfold inspect``, ``bnfold check``.

The only module that prints or sets exit codes (docs/user-guide.md lists them):
0 done, 1 the folded model failed the check (nothing written), 2 usage error,
3 the input cannot be read or is not a model, 4 the output cannot be written,
5 internal error (a bug: please report it with the --debug traceback).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import click

from bnfold._version import __version__
from bnfold.errors import BnfoldError, CheckFailedError

INTERNAL_ERROR_EXIT = 5


class DefaultToFold(click.Group):
    """``bnfold MODEL -o OUT`` means ``bnfold fold MODEL -o OUT``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["fold", *args]
        return super().parse_args(ctx, args)


def _parse_dims(values: tuple[str, ...]) -> dict[str, int]:
    dims = {}
    for value in values:
        name, _, size = value.partition("=")
        if not name or not size.isdigit() or int(size) < 1:
            raise click.BadParameter(f"{value!r} is not NAME=SIZE", param_hint="--dim")
        dims[name] = int(size)
    return dims


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"bnfold: error: {message}", err=True)
    sys.exit(code)


def _run(debug: bool, action: Callable[[], None]) -> None:
    """Run a command body: bnfold's errors become one line and their exit code."""
    if debug:
        os.environ["BNFOLD_DEBUG"] = "1"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        action()
    except BnfoldError as error:
        if debug:
            traceback.print_exc()
        _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as error:
        if debug:
            traceback.print_exc()
        _fail(
            f"internal error: {type(error).__name__}: {error} (run with --debug for the traceback)",
            INTERNAL_ERROR_EXIT,
        )


def _emit_json(document: dict[str, Any]) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


debug_option = click.option(
    "-v", "--debug", is_flag=True, help="Show tracebacks and the runtimes' own logs."
)
tolerance_options = [
    click.option("--atol", type=float, default=None, help="Absolute tolerance of the check."),
    click.option("--rtol", type=float, default=None, help="Relative tolerance of the check."),
    click.option(
        "--inputs",
        "inputs_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="An .npz with one array per model input (default: seeded random values).",
    ),
    click.option(
        "--dim",
        "dims",
        multiple=True,
        metavar="NAME=SIZE",
        help="Size of a named dynamic dimension for random inputs (repeatable).",
    ),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of random inputs."),
]


def with_options(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorate(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@click.group(cls=DefaultToFold, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnfold")
def cli() -> None:
    """Fold BatchNormalization into neighbouring layers of Keras and ONNX models.

    \b
      bnfold MODEL -o OUT        fold, check equivalence, write OUT if it passes
      bnfold inspect MODEL       list every BN: folded into what, or why not
      bnfold check A B           compare two models on the same inputs

    Exit codes: 0 done, 1 check failed (nothing written), 2 usage error,
    3 unreadable input, 4 output cannot be written, 5 internal error.
    """


@cli.command("fold")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the folded model: .onnx, or .keras/.h5 for Keras input.",
)
@click.option("--no-check", is_flag=True, help="Skip the equivalence check (not recommended).")
@with_options(tolerance_options)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--opset", type=int, default=None, help="ONNX opset for Keras to ONNX conversion.")
@click.option(
    "--allow-unsafe",
    is_flag=True,
    help="Let Keras deserialise custom code (Lambda layers). Only for files you trust.",
)
@click.option("--overwrite-input", is_flag=True, help="Allow OUT to be the input file.")
@debug_option
def fold_command(
    model: str,
    output: str,
    no_check: bool,
    atol: float | None,
    rtol: float | None,
    inputs_path: str | None,
    dims: tuple[str, ...],
    seed: int,
    as_json: bool,
    opset: int | None,
    allow_unsafe: bool,
    overwrite_input: bool,
    debug: bool,
) -> None:
    """Fold MODEL, check it against the original and write OUT only if the check passes."""
    from bnfold import api, report

    dim_sizes = _parse_dims(dims)

    def show(result: Any) -> None:
        if as_json:
            _emit_json(report.result_document(result, source=model))
        else:
            click.echo(report.format_result(result))

    def action() -> None:
        try:
            result = api.fold(
                model,
                output=output,
                check=not no_check,
                inputs=inputs_path,
                dims=dim_sizes,
                seed=seed,
                rtol=rtol,
                atol=atol,
                allow_unsafe=allow_unsafe,
                opset=opset,
                overwrite_input=overwrite_input,
            )
        except CheckFailedError as error:
            if error.result is not None:
                show(error.result)
            raise
        show(result)

    _run(debug, action)


@cli.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the log as JSON on stdout.")
@click.option("--allow-unsafe", is_flag=True, help="Let Keras deserialise custom code.")
@debug_option
def inspect_command(model: str, as_json: bool, allow_unsafe: bool, debug: bool) -> None:
    """List every BN in MODEL: folded into what, or left and why. Writes nothing."""
    from bnfold import api, report

    def action() -> None:
        result = api.inspect(model, allow_unsafe=allow_unsafe)
        if as_json:
            _emit_json(report.result_document(result, source=model))
        else:
            click.echo(report.format_log(result))

    _run(debug, action)


@cli.command("check")
@click.argument("reference", type=click.Path(dir_okay=False))
@click.argument("candidate", type=click.Path(dir_okay=False))
@with_options(tolerance_options)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
@click.option("--allow-unsafe", is_flag=True, help="Let Keras deserialise custom code.")
@debug_option
def check_command(
    reference: str,
    candidate: str,
    atol: float | None,
    rtol: float | None,
    inputs_path: str | None,
    dims: tuple[str, ...],
    seed: int,
    as_json: bool,
    allow_unsafe: bool,
    debug: bool,
) -> None:
    """Run REFERENCE and CANDIDATE on the same inputs and compare every output.

    Exits 1 when an output differs beyond the tolerances."""
    from bnfold import api, report

    dim_sizes = _parse_dims(dims)

    def action() -> None:
        result = api.check(
            reference,
            candidate,
            inputs=inputs_path,
            dims=dim_sizes,
            seed=seed,
            rtol=rtol,
            atol=atol,
            allow_unsafe=allow_unsafe,
        )
        if as_json:
            _emit_json(report.check_document(result, reference=reference, candidate=candidate))
        else:
            click.echo(report.format_check(result))
        if not result.passed:
            raise CheckFailedError(f"{candidate} differs from {reference}")

    _run(debug, action)


def main() -> None:
    cli(prog_name="bnfold")
