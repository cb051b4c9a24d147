"""The command line: ``bnfold MODEL -o OUT``, ``bnfold inspect``, ``bnfold check``,
``bnfold bench``. It parses options into settings (``options.py``), calls the pipeline
(``bnfold.api``), prints (``running.py``); nothing else.

The only package that prints or sets exit codes (docs/user-guide.md lists them):
0 done, 1 the folded model failed the check (nothing written), 2 usage error,
3 the input cannot be read or is not a model, 4 the output cannot be written,
5 internal error (a bug: please report it with the --debug traceback).

Heavy modules (numpy, onnx, onnxruntime, the report code) are imported inside the
commands, so ``bnfold --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from bnfold._version import __version__
from bnfold.cli.options import (
    DEFAULT_BENCH,
    bench_options,
    debug_option,
    fold_options,
    report_option,
    samples_option,
    seed_option,
    tolerance_options,
    with_options,
)
from bnfold.cli.running import (
    SIGINT_EXIT,
    Progress,
    echo_error_json,
    fail,
    run_command,
    show_document,
)
from bnfold.errors import CheckFailedError
from bnfold.settings import (
    LEVEL_CHOICES,
    BenchSettings,
    CheckSettings,
    FoldSettings,
    ReportSettings,
)


class DefaultToFold(click.Group):
    """``bnfold MODEL -o OUT`` means ``bnfold fold MODEL -o OUT``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["fold", *args]
        return super().parse_args(ctx, args)

    def main(  # type: ignore[override]  # one signature for both of click's overloads
        self, args: Any = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        """click's main, except that with ``--json`` a usage error (exit 2) also prints a JSON
        document on stdout, like every other exit, so a pipeline reading stdout gets one."""
        argv = list(sys.argv[1:] if args is None else args)
        extra["standalone_mode"] = False
        try:
            return super().main(argv, prog_name, **extra)
        except click.UsageError as error:
            if "--json" in argv:
                echo_error_json(error.format_message(), error.exit_code)
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            fail("interrupted", SIGINT_EXIT)


@click.group(cls=DefaultToFold, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnfold")
def cli() -> None:
    """Fold BatchNormalization into neighbouring layers of Keras and ONNX models.

    \b
      bnfold MODEL -o OUT          fold, check equivalence, write OUT if it passes
      bnfold inspect MODEL         list every BN: folded into what, or why not
        --fail-if-foldable         exit 1 if any could still fold (a CI gate)
      bnfold check A B             compare two models on the same inputs
      bnfold bench MODEL [FOLDED]  latency before and after, measured interleaved

    Exit codes: 0 done, 1 check failed (nothing written), 2 usage error,
    3 unreadable input, 4 output cannot be written, 5 internal error.
    """


def _load_settings(allow_unsafe: bool, opset: int | None = None) -> Any:
    from bnfold.frontends.base import LoadSettings

    return LoadSettings(allow_unsafe=allow_unsafe, opset=opset)


def _same_file(first: str, second: str) -> bool:
    return Path(first).resolve() == Path(second).resolve()


@cli.command("fold")
@click.argument("model", type=click.Path())  # a SavedModel is a directory
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the folded model: .onnx, or .keras/.h5 for Keras input.",
)
@click.option("--no-check", is_flag=True, help="Skip the equivalence check (not recommended).")
@with_options(fold_options)
@with_options(tolerance_options)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--opset", type=int, default=None, help="ONNX opset for Keras to ONNX conversion.")
@click.option(
    "--allow-unsafe",
    is_flag=True,
    help="Let Keras deserialise custom code (Lambda layers). Only for files you trust.",
)
@click.option("--overwrite-input", is_flag=True, help="Allow OUT to be the input file.")
@click.option(
    "--bench", is_flag=True, help="Also time the original and the folded model (bnfold bench)."
)
@report_option
@debug_option
def fold_command(
    model: str,
    output: str,
    no_check: bool,
    keep: tuple[str, ...],
    no_forward: bool,
    atol: float | None,
    rtol: float | None,
    inputs_path: str | None,
    dims: dict[str, int],
    seed: int,
    as_json: bool,
    opset: int | None,
    allow_unsafe: bool,
    overwrite_input: bool,
    bench: bool,
    report_path: str | None,
    debug: bool,
) -> None:
    """Fold MODEL, check it against the original and write OUT only if the check passes."""
    if bench and Path(output).suffix.lower() != ".onnx":
        raise click.BadParameter(
            "--bench times ONNX models; write the folded model as .onnx", param_hint="--bench"
        )
    if overwrite_input and (bench or report_path) and _same_file(model, output):
        # Both compare against the input, which the write has replaced by then.
        raise click.BadParameter(
            "--bench and --report compare with the input; they cannot go with "
            "--overwrite-input onto it",
            param_hint="--overwrite-input",
        )
    measured = bench or report_path is not None
    check = CheckSettings(inputs_path, dims, seed, 1, rtol, atol, float64=measured)
    timing = BenchSettings(seed=seed) if bench else None
    progress = Progress(DEFAULT_BENCH.runs * len(DEFAULT_BENCH.levels))

    def show(result: Any) -> None:
        from bnfold import report

        show_document(report.result_document(result, source=model), as_json, report_path)

    def action() -> None:
        from bnfold import api

        try:
            result = api.fold(
                model,
                output,
                check=None if no_check else check,
                load=_load_settings(allow_unsafe, opset),
                bench=timing,
                report=ReportSettings(sizes=measured, progress=progress),
                overwrite_input=overwrite_input,
                fold=FoldSettings(keep, forward=not no_forward),
            )
        except CheckFailedError as error:
            if error.result is not None:
                show(error.result)
            raise
        finally:
            progress.close()
        show(result)

    run_command(debug, as_json, action)


@cli.command("inspect")
@click.argument("model", type=click.Path())  # a SavedModel is a directory
@click.option("--json", "as_json", is_flag=True, help="Print the log as JSON on stdout.")
@click.option("--allow-unsafe", is_flag=True, help="Let Keras deserialise custom code.")
@with_options(fold_options)
@click.option(
    "--fail-if-foldable",
    is_flag=True,
    help="Exit 1 when any BN or BN-like affine could still fold (a CI gate), naming them.",
)
@debug_option
def inspect_command(
    model: str,
    as_json: bool,
    allow_unsafe: bool,
    keep: tuple[str, ...],
    no_forward: bool,
    fail_if_foldable: bool,
    debug: bool,
) -> None:
    """List every BN in MODEL: folded into what, or left and why. Writes nothing.

    With --fail-if-foldable, exits 1 when any BN could still fold: is MODEL folded already?"""
    settings = FoldSettings(keep, forward=not no_forward)

    def action() -> None:
        from bnfold import api, report

        result = api.inspect(model, load=_load_settings(allow_unsafe), fold=settings)
        show_document(
            report.result_document(result, source=model, command="inspect"), as_json, None
        )
        if fail_if_foldable:
            _fail_if_foldable(result)

    run_command(debug, as_json, action)


def _fail_if_foldable(result: Any) -> None:
    """The CI gate: a BN the log shows as folded is one the model still holds."""
    foldable = [entry.name for entry in result.folded if entry.kind == "batchnorm"]
    if foldable:
        click.echo(f"bnfold: {len(foldable)} BN could still fold: {', '.join(foldable)}", err=True)
        sys.exit(1)


@cli.command("check")
@click.argument("reference", type=click.Path())
@click.argument("candidate", type=click.Path())
@with_options(tolerance_options)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
@click.option("--allow-unsafe", is_flag=True, help="Let Keras deserialise custom code.")
@samples_option
@debug_option
def check_command(
    reference: str,
    candidate: str,
    atol: float | None,
    rtol: float | None,
    inputs_path: str | None,
    dims: dict[str, int],
    seed: int,
    as_json: bool,
    allow_unsafe: bool,
    samples: int,
    debug: bool,
) -> None:
    """Run REFERENCE and CANDIDATE on the same inputs and compare every output.

    Exits 1 when an output differs beyond the tolerances."""
    if samples > 1 and inputs_path is not None:
        raise click.BadParameter(
            "--samples draws random inputs; it cannot go with --inputs", param_hint="--samples"
        )
    settings = CheckSettings(inputs_path, dims, seed, samples, rtol, atol, float64=samples > 1)

    def action() -> None:
        from bnfold import api, report

        result = api.check(
            reference, candidate, settings=settings, load=_load_settings(allow_unsafe)
        )
        document = report.check_document(result, reference=reference, candidate=candidate)
        show_document(document, as_json, None)
        if not result.passed:
            raise CheckFailedError(f"{candidate} differs from {reference}")

    run_command(debug, as_json, action)


@cli.command("bench")
@click.argument("model", type=click.Path())  # a SavedModel is a directory
@click.argument("folded", type=click.Path(dir_okay=False), required=False)
@with_options(bench_options)
@samples_option
@seed_option
@click.option("--no-check", is_flag=True, help="Time only; skip the equivalence check.")
@report_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--allow-unsafe", is_flag=True, help="Let Keras deserialise custom code.")
@debug_option
def bench_command(
    model: str,
    folded: str | None,
    runs: int,
    warmup: int,
    time_budget: float | None,
    threads: int,
    batch: int,
    provider: str,
    level: str,
    samples: int,
    seed: int,
    no_check: bool,
    report_path: str | None,
    as_json: bool,
    allow_unsafe: bool,
    debug: bool,
) -> None:
    """Time MODEL against FOLDED in onnxruntime, interleaved, after warm-up runs.

    Without FOLDED, MODEL is folded in memory first (nothing is written). Reports p50/p90/p99
    per model and the speedup with a bootstrap interval, at each optimisation level, with
    threads, batch size, provider and machine stated; also sizes and the equivalence check.
    Exits 1 when FOLDED does not compute the same function as MODEL.
    """
    levels = LEVEL_CHOICES[level]
    timing = BenchSettings(levels, runs, warmup, time_budget, threads, batch, provider, seed)
    check = None if no_check else CheckSettings(seed=seed, samples=samples, float64=True)

    def action() -> None:
        from bnfold import api, report

        progress = Progress(runs * len(levels))
        try:
            measured = api.benchmark(
                model,
                folded,
                bench=timing,
                check=check,
                load=_load_settings(allow_unsafe),
                progress=progress,
            )
        finally:
            progress.close()
        show_document(
            report.bench_document(measured, source=model, candidate=folded), as_json, report_path
        )
        if measured.check is not None and not measured.check.passed:
            raise CheckFailedError(
                f"{folded or 'the folded model'} differs from {model} "
                f"(max rel {measured.check.max_rel:.3g})"
            )

    run_command(debug, as_json, action)


SIGTERM_EXIT = 143  # 128 + 15, as SIGINT_EXIT is 128 + 2


class Terminated(BaseException):
    """SIGTERM, raised where the run is: it unwinds (temporary files removed, renames already
    begun completed) instead of dying in the middle of a write. A ``BaseException``, like
    ``KeyboardInterrupt``, so that no ``except Exception`` on the way swallows it."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def main() -> None:
    """The console script. SIGINT is Python's KeyboardInterrupt (exit 130, ``run_command``); SIGTERM
    becomes ``Terminated`` (exit 143). Either way OUT is absent or complete."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    from bnfold.lazy_sympy import defer_sympy

    defer_sympy()  # 0.35 s of every run that onnx_ir spends importing sympy for nothing
    try:
        cli(prog_name="bnfold")
    except Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the line
        fail("terminated", SIGTERM_EXIT)
