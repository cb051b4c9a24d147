"""Open an HTML report in headless Chromium: save a screenshot and fail on console errors.

    python benchmarks/html_screenshot.py report.html docs/report-screenshot.png

Exit 0 when the page rendered (its DOM holds the latency plot) and logged nothing to the
console; 1 otherwise, with what went wrong on stderr. The report has no script and loads
nothing, so any console line or network request is a bug.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
]
CONSOLE = re.compile(r":CONSOLE[:(]|Uncaught|Failed to load resource|net::ERR_")


def chromium(args: list[str], profile: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("chromium not found (apt-get install -y chromium)")
    return subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check_page(html: Path, png: Path, size: str = "1200,1600") -> list[str]:
    """Screenshot ``html`` into ``png``; return the problems found (empty: all good)."""
    url = html.resolve().as_uri()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bnfold-chromium-") as profile:
        shot = chromium(
            [
                "--enable-logging=stderr",
                "--v=0",
                f"--screenshot={png.resolve()}",
                f"--window-size={size}",
                url,
            ],
            Path(profile),
        )
        problems += [line for line in shot.stderr.splitlines() if CONSOLE.search(line)]
        if not png.exists() or png.stat().st_size == 0:
            problems.append(f"no screenshot written (exit {shot.returncode})")
        dom = chromium(["--dump-dom", url], Path(profile))
        if "<svg" not in dom.stdout or 'class="ecdf' not in dom.stdout:
            problems.append("the rendered DOM has no latency plot")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    html, png = Path(argv[0]), Path(argv[1])
    problems = check_page(html, png)
    for problem in problems:
        print(f"html_screenshot: {problem}", file=sys.stderr)
    if not problems:
        print(f"{png}: {png.stat().st_size} bytes, no console errors")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
