"""The command line: ``bnfold MODEL -o OUT``, ``bnfold inspect``, ``bnfold check``,
``bnfold bench``.

The only module that prints or sets exit codes (docs/user-guide.md lists them):
0 done, 1 the folded model failed the check (nothing written), 2 usage error,
3 the input cannot be read or is not a model, 4 the output cannot be written,
5 internal error (a bug: please report it with the --debug traceback).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from bnfold._version import __version__
from bnfold.errors import BnfoldError, CheckFailedError, UsageError

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
        # onnx_ir warns about odd fields of damaged files; bnfold's own line says what matters.
        logging.getLogger("onnx_ir").setLevel(logging.ERROR)
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
    from bnfold.report import json_text

    click.echo(json_text(document))


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
      bnfold MODEL -o OUT          fold, check equivalence, write OUT if it passes
      bnfold inspect MODEL         list every BN: folded into what, or why not
      bnfold check A B             compare two models on the same inputs
      bnfold bench MODEL [FOLDED]  latency before and after, measured interleaved

    Exit codes: 0 done, 1 check failed (nothing written), 2 usage error,
    3 unreadable input, 4 output cannot be written, 5 internal error.
    """


REPORT_SUFFIXES = (".json", ".md", ".html")
LEVEL_CHOICES = {"all": ("all",), "disable": ("disable",), "both": ("all", "disable")}


def _report_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and Path(value).suffix.lower() not in REPORT_SUFFIXES:
        raise click.BadParameter(f"{value!r} must end in .json, .md or .html", ctx, param)
    return value


report_option = click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    callback=_report_path,
    help="Write the fold log, check, sizes and latency to FILE: .json, .md or .html.",
)
bench_options = [
    click.option(
        "--runs",
        type=click.IntRange(min=1),
        default=50,
        show_default=True,
        help="Timed runs of each model per level (interleaved A B A B).",
    ),
    click.option(
        "--warmup",
        type=click.IntRange(min=0),
        default=5,
        show_default=True,
        help="Untimed runs of each model first.",
    ),
    click.option(
        "--time-budget",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Stop a level after this many seconds even if --runs are not done.",
    ),
    click.option(
        "--threads",
        type=click.IntRange(min=0),
        default=1,
        show_default=True,
        help="onnxruntime intra-op threads (0: onnxruntime's default).",
    ),
    click.option(
        "--batch",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Size of the dynamic batch dimension.",
    ),
    click.option(
        "--provider",
        default="CPUExecutionProvider",
        show_default=True,
        help="onnxruntime execution provider (any available one).",
    ),
    click.option(
        "--level",
        type=click.Choice(sorted(LEVEL_CHOICES)),
        default="both",
        show_default=True,
        help="Graph optimisation: all (ORT_ENABLE_ALL), disable (ORT_DISABLE_ALL).",
    ),
]


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (click hides the bar, not the label, off a terminal)."""
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def _write_report(path: str, document: dict[str, Any]) -> None:
    """Render by suffix and write atomically: a temporary file beside it, then a rename."""
    from bnfold import report
    from bnfold.errors import OutputError
    from bnfold.frontends.onnx import atomic_folder

    target = Path(path)
    text = report.render_report(document, target.suffix)
    with atomic_folder(target) as scratch:
        staged = scratch / target.name
        try:
            staged.write_text(text, encoding="utf-8")
            os.replace(staged, target)
        except OSError as error:
            raise OutputError(f"{path}: cannot write ({error.strerror or error})") from error


def _measure(
    baseline: Any, candidate: Any, specs: Any, settings: dict[str, Any], names: tuple[str, str]
) -> Any:
    from bnfold.check import latency

    levels = LEVEL_CHOICES[settings["level"]]
    with _progress(settings["runs"] * len(levels), "Timing (interleaved)") as progress:
        return latency.benchmark(
            baseline,
            candidate,
            specs,
            levels=levels,
            threads=settings["threads"],
            batch=settings["batch"],
            provider=settings["provider"],
            warmup=settings["warmup"],
            runs=settings["runs"],
            time_budget_s=settings["time_budget"],
            seed=settings.get("seed", 0),
            baseline_name=names[0],
            candidate_name=names[1],
            progress=progress,
        )


DEFAULT_BENCH = {
    "runs": 50,
    "warmup": 5,
    "time_budget": None,
    "threads": 1,
    "batch": 1,
    "provider": "CPUExecutionProvider",
    "level": "both",
}


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
@click.option(
    "--bench", is_flag=True, help="Also time the original and the folded model (bnfold bench)."
)
@report_option
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
    bench: bool,
    report_path: str | None,
    debug: bool,
) -> None:
    """Fold MODEL, check it against the original and write OUT only if the check passes."""
    from bnfold import api, report

    dim_sizes = _parse_dims(dims)
    if bench and not _is_onnx(output):
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

    def show(result: Any) -> None:
        extras = _fold_extras(
            result,
            model,
            bench,
            report_path,
            inputs_path,
            dim_sizes,
            seed,
            allow_unsafe,
            (rtol, atol),
        )
        if as_json:
            _emit_json(report.result_document(result, source=model, **extras))
        else:
            click.echo(
                report.format_report(result, **extras) if extras else report.format_result(result)
            )
        if report_path is not None:
            _write_report(report_path, report.result_document(result, source=model, **extras))

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


def _is_onnx(path: str) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def _fold_extras(
    result: Any,
    model: str,
    bench: bool,
    report_path: str | None,
    inputs_path: str | None,
    dims: dict[str, int],
    seed: int,
    allow_unsafe: bool,
    tolerances: tuple[float | None, float | None],
) -> dict[str, Any]:
    """Sizes, the detailed check (float64 reference, top-1) and latency for --report/--bench.
    For Keras input the check stays the fold's own (the reference is the Keras model)."""
    if not bench and report_path is None:
        return {}
    from bnfold import api
    from bnfold.check import equivalence
    from bnfold.frontends.onnx import input_specs
    from bnfold.sizes import compare_sizes

    extras: dict[str, Any] = {}
    if result.model is None:
        return extras  # Keras to Keras: nothing in ONNX to count or time
    specs = input_specs(result.model)
    baseline: Any = model
    if not _is_onnx(model):
        baseline = api.keras_as_onnx(model, allow_unsafe)
        specs = input_specs(baseline)
    extras["sizes"] = compare_sizes(baseline, result.model)
    if result.check is not None and _is_onnx(model):
        feeds = equivalence.load_npz_inputs(inputs_path, specs) if inputs_path is not None else None
        extras["check"] = equivalence.detailed_check(
            model,
            result.model,
            specs,
            seed=seed,
            dims=dims,
            inputs=feeds,
            description=result.check.inputs,
            rtol=tolerances[0],
            atol=tolerances[1],
        )
    if bench:
        extras["latency"] = _measure(
            baseline, result.model, specs, {**DEFAULT_BENCH, "seed": seed}, (model, "folded")
        )
    return extras


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
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Seeded random input sets (ONNX models); more than 1 also adds the float64 "
    "reference and top-1 columns.",
)
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
    samples: int,
    debug: bool,
) -> None:
    """Run REFERENCE and CANDIDATE on the same inputs and compare every output.

    Exits 1 when an output differs beyond the tolerances."""
    from bnfold import api, report

    dim_sizes = _parse_dims(dims)

    def detailed() -> Any:
        from bnfold.check import equivalence
        from bnfold.frontends.onnx import input_specs, load_onnx

        if inputs_path is not None:
            raise UsageError("--samples draws random inputs; it cannot go with --inputs")
        if not (_is_onnx(reference) and _is_onnx(candidate)):
            raise UsageError("--samples compares ONNX models")
        load_onnx(candidate)  # one clear line for a file that is not a model
        specs = input_specs(load_onnx(reference))
        return equivalence.detailed_check(
            reference,
            candidate,
            specs,
            samples=samples,
            seed=seed,
            dims=dim_sizes,
            rtol=rtol,
            atol=atol,
        )

    def action() -> None:
        result = (
            detailed()
            if samples > 1
            else api.check(
                reference,
                candidate,
                inputs=inputs_path,
                dims=dim_sizes,
                seed=seed,
                rtol=rtol,
                atol=atol,
                allow_unsafe=allow_unsafe,
            )
        )
        if as_json:
            _emit_json(report.check_document(result, reference=reference, candidate=candidate))
        else:
            click.echo(report.format_check(result))
        if not result.passed:
            raise CheckFailedError(f"{candidate} differs from {reference}")

    _run(debug, action)


@cli.command("bench")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("folded", type=click.Path(dir_okay=False), required=False)
@with_options(bench_options)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Seeded random input sets for the equivalence check.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random inputs.")
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
    from bnfold import api, report

    levels = LEVEL_CHOICES[level]

    def action() -> None:
        with _progress(runs * len(levels), "Timing (interleaved)") as progress:
            measured = api.benchmark(
                model,
                folded,
                levels=levels,
                runs=runs,
                warmup=warmup,
                time_budget_s=time_budget,
                threads=threads,
                batch=batch,
                provider=provider,
                samples=samples,
                seed=seed,
                check=not no_check,
                allow_unsafe=allow_unsafe,
                progress=progress,
            )
        result, check = measured.fold, measured.check
        document = report.result_document(
            result,
            source=model,
            candidate=folded,
            check=check,
            sizes=measured.sizes,
            latency=measured.latency,
            command="bench",
        )
        if as_json:
            _emit_json(document)
        else:
            click.echo(
                report.format_report(
                    result, check=check, sizes=measured.sizes, latency=measured.latency
                )
            )
        if report_path is not None:
            _write_report(report_path, document)
        if check is not None and not check.passed:
            raise CheckFailedError(
                f"{folded or 'the folded model'} differs from {model} (max rel {check.max_rel:.3g})"
            )

    _run(debug, action)


def _same_file(first: str, second: str) -> bool:
    return Path(first).resolve() == Path(second).resolve()


def main() -> None:
    cli(prog_name="bnfold")
