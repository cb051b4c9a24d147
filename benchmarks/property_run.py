"""Run the fold property of tests/test_property.py on many random graphs, once, for the notes.

    python benchmarks/property_run.py --examples 1000 [--seed 0]

Unlike the test (derandomized, 60 examples, stops at the first failure), this run records
every failing graph and goes on, then prints what was generated and folded: graphs, dtypes,
BN-like affines found, folded backward/forward, left by reason, and each failure.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_property import check_fold, random_graphs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    stats: collections.Counter[str] = collections.Counter()
    failures: list[str] = []

    @seed(args.seed)
    @settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(random_graphs())
    def one(graph: tuple[object, str]) -> None:
        proto, description = graph
        stats["graphs"] += 1
        stats["float16" if description.startswith("float16") else "float32"] += 1
        try:
            result = check_fold(proto, shapes=stats["graphs"] % 4 != 0)  # type: ignore[arg-type]
        except AssertionError as error:
            failures.append(f"{description}\n    {error}")
            return
        except Exception as error:  # anything but bnfold's own errors is a bug
            failures.append(f"{description}\n    {traceback.format_exception_only(error)[-1]}")
            return
        if result is None:
            stats["bnfold error"] += 1
            return
        for entry in result.entries:
            stats["affines folded" if entry.folded else "affines left"] += 1
            if entry.folded:
                stats[f"  {entry.outcome.value}"] += 1
            else:
                stats[f"  left: {entry.reason.value if entry.reason else '?'}"] += 1
        stats["graphs with a fold" if result.changed else "graphs with no fold"] += 1

    started = time.perf_counter()
    one()
    elapsed = time.perf_counter() - started
    print(f"{stats['graphs']} random graphs in {elapsed:.0f} s (seed {args.seed})")
    for key, count in sorted(stats.items()):
        print(f"  {key}: {count}")
    print(f"failures: {len(failures)}")
    for failure in failures:
        print(f"- {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
