"""The command line's options, shared by its commands: each parses its value into what a
settings object takes (``--dim NAME=SIZE`` into a dict, ``--keep`` patterns), with click's
own validation, so a bad value is a usage error (exit 2) naming the option."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bnfold.settings import LEVEL_CHOICES, BenchSettings, CheckSettings

REPORT_SUFFIXES = (".json", ".md", ".html")
DEFAULT_BENCH = BenchSettings()
DEFAULT_CHECK = CheckSettings()


def _parse_dims(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    dims = {}
    for value in values:
        name, _, size = value.partition("=")
        if not name or not size.isdigit() or int(size) < 1:
            raise click.BadParameter(f"{value!r} is not NAME=SIZE", ctx, param)
        dims[name] = int(size)
    return dims


def _report_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and Path(value).suffix.lower() not in REPORT_SUFFIXES:
        raise click.BadParameter(f"{value!r} must end in .json, .md or .html", ctx, param)
    return value


def _keep_patterns(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    if any(not value.strip() for value in values):
        raise click.BadParameter("a keep pattern cannot be empty", ctx, param)
    return values


def with_options(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorate(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


debug_option = click.option(
    "-v", "--debug", is_flag=True, help="Show tracebacks and the runtimes' own logs."
)
seed_option = click.option(
    "--seed", type=int, default=DEFAULT_CHECK.seed, show_default=True, help="Seed of random inputs."
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
        callback=_parse_dims,
        help="Size of a named dynamic dimension for random inputs (repeatable).",
    ),
    seed_option,
]
report_option = click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    default=None,
    callback=_report_path,
    help="Write the fold log, check, sizes and latency to FILE: .json, .md or .html.",
)
samples_option = click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=DEFAULT_CHECK.samples,
    show_default=True,
    help="Seeded random input sets compared; more than 1 also adds the float64 reference "
    "and top-1 columns.",
)
fold_options = [
    click.option(
        "--keep",
        multiple=True,
        metavar="PATTERN",
        callback=_keep_patterns,
        help="Leave the BNs whose name or path, as the log prints it, matches this glob "
        "('bn_out', 'base/*'); repeatable. A pattern matching no BN is an error.",
    ),
    click.option(
        "--no-forward",
        is_flag=True,
        help="Fold only into the layer before a BN, never into the layers after it.",
    ),
]
bench_options = [
    click.option(
        "--runs",
        type=click.IntRange(min=1),
        default=DEFAULT_BENCH.runs,
        show_default=True,
        help="Timed runs of each model per level (interleaved A B A B).",
    ),
    click.option(
        "--warmup",
        type=click.IntRange(min=0),
        default=DEFAULT_BENCH.warmup,
        show_default=True,
        help="Untimed runs of each model first.",
    ),
    click.option(
        "--time-budget",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_BENCH.time_budget_s,
        help="Stop a level after this many seconds even if --runs are not done.",
    ),
    click.option(
        "--threads",
        type=click.IntRange(min=0),
        default=DEFAULT_BENCH.threads,
        show_default=True,
        help="onnxruntime intra-op threads (0: onnxruntime's default).",
    ),
    click.option(
        "--batch",
        type=click.IntRange(min=1),
        default=DEFAULT_BENCH.batch,
        show_default=True,
        help="Size of the dynamic batch dimension.",
    ),
    click.option(
        "--provider",
        default=DEFAULT_BENCH.provider,
        show_default=True,
        help="onnxruntime execution provider (any available one).",
    ),
    click.option(
        "--level",
        type=click.Choice(sorted(LEVEL_CHOICES)),
        default=next(k for k, v in LEVEL_CHOICES.items() if v == DEFAULT_BENCH.levels),
        show_default=True,
        help="Graph optimisation: all (ORT_ENABLE_ALL), disable (ORT_DISABLE_ALL).",
    ),
]
