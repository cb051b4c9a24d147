"""Every command block of README.md and docs/*.md, run as written, so the docs cannot go stale.

How a page's blocks are run (the convention for whoever writes one):

- A fenced block whose language is ``bash`` or ``sh`` is a command block; one test per block,
  named ``page:line`` of its opening fence. Each command in it (a trailing backslash joins
  lines) runs in bash, with ``bnfold`` and ``python`` those of the test's interpreter.
- The blocks of one page run in order in one temporary folder holding the repository's
  ``models/`` and ``benchmarks/`` and a copy of ``docs/``, so a block may read what an earlier
  block of the same page wrote (a block run alone first runs the earlier ones it may need).
- Lines starting with ``make`` or ``pip`` set up the environment the tests already run in;
  they are not run.
- A block that names a Keras file (``.h5``, ``.hdf5``, ``.keras``) needs TensorFlow: its test
  is marked ``keras``. It must not write a file that a later block without Keras reads.
- An HTML comment on the line before a block changes how it runs:
  ``<!-- docs: not run: REASON -->`` shows the block as skipped with REASON (long benchmark
  runs), ``<!-- docs: needs PROGRAM -->`` skips it where PROGRAM is not installed.
- A command with ``-o OUT`` must leave OUT behind.

Other fences (``text``, ``python``, bare) hold output or code; README's sample output and its
Python example are checked by the last tests here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("README.md", *sorted(f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")))
COMMAND_LANGUAGES = ("bash", "sh")
SETUP_COMMANDS = ("make", "pip")
KERAS_FILE = re.compile(r"\.(h5|hdf5|keras)\b")
DIRECTIVE = re.compile(r"<!--\s*docs:\s*(not run|needs)\s*:?\s*(.*?)\s*-->")
COMMAND_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    commands: tuple[str, ...]
    not_run: str | None = None  # the reason a block is shown but not run
    needs: str | None = None  # a program it needs on PATH

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def keras(self) -> bool:
        return any(KERAS_FILE.search(command) for command in self.commands)

    def skip_reason(self) -> str | None:
        if self.not_run is not None:
            return f"not run: {self.not_run}"
        if self.needs is not None and shutil.which(self.needs) is None:
            return f"needs {self.needs}"
        return None


def commands_of(lines: list[str]) -> tuple[str, ...]:
    joined: list[str] = []
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    commands = (line.strip() for line in joined)
    return tuple(
        command
        for command in commands
        if command and not command.startswith("#") and command.split()[0] not in SETUP_COMMANDS
    )


def page_blocks(page: str) -> list[Block]:
    """The command blocks of a page that hold at least one command, in page order."""
    lines = (ROOT / page).read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = re.match(r"^```(\w*)\s*$", lines[index])
        if opening is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        commands = commands_of(lines[index + 1 : end])
        directive = DIRECTIVE.search(lines[index - 1]) if index else None
        if opening.group(1) in COMMAND_LANGUAGES and commands:
            kind, value = directive.groups() if directive else ("", "")
            blocks.append(
                Block(
                    page,
                    index + 1,
                    commands,
                    not_run=value if kind == "not run" else None,
                    needs=value if kind == "needs" else None,
                )
            )
        index = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in page_blocks(page)]


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    return environment


def run_command(command: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def output_of(command: str) -> str | None:
    words = command.split()
    return words[words.index("-o") + 1] if "-o" in words[:-1] else None


def new_folder(factory: pytest.TempPathFactory, name: str) -> Path:
    folder = factory.mktemp(re.sub(r"\W", "_", name))
    for shared in ("models", "benchmarks"):
        (folder / shared).symlink_to(ROOT / shared)
    shutil.copytree(ROOT / "docs", folder / "docs")  # a page may write into docs/
    return folder


class PageFolders:
    """One folder per page; remembers which blocks ran in it."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self.folders: dict[str, Path] = {}
        self.ran: set[str] = set()

    def folder(self, page: str) -> Path:
        if page not in self.folders:
            self.folders[page] = new_folder(self.factory, page)
        return self.folders[page]

    def run(self, block: Block) -> None:
        folder = self.folder(block.page)
        for earlier in BLOCKS:  # what a block run alone may need; in a full run, none
            if earlier.page != block.page or earlier.line >= block.line:
                continue
            if earlier.name not in self.ran and not earlier.keras and not earlier.skip_reason():
                self._run_block(earlier, folder)
        self._run_block(block, folder)

    def _run_block(self, block: Block, folder: Path) -> None:
        self.ran.add(block.name)
        for command in block.commands:
            done = run_command(command, folder)
            assert done.returncode == 0, (
                f"{block.name}: `{command}` exited {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
            if (output := output_of(command)) is not None:
                assert (folder / output).stat().st_size > 0, f"{block.name}: no {output}"


@pytest.fixture(scope="module")
def page_folders(tmp_path_factory: pytest.TempPathFactory) -> PageFolders:
    return PageFolders(tmp_path_factory)


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(block, id=block.name, marks=[pytest.mark.keras] if block.keras else [])
        for block in BLOCKS
    ],
)
def test_command_block_runs(block: Block, page_folders: PageFolders) -> None:
    if reason := block.skip_reason():
        pytest.skip(reason)
    if block.keras:
        pytest.importorskip("tensorflow")
    page_folders.run(block)


def test_the_pages_with_commands_have_runnable_blocks() -> None:
    runnable = {block.page for block in BLOCKS if block.not_run is None}
    assert {"README.md", "docs/user-guide.md", "docs/keras.md", "docs/reports.md"} <= runnable
    assert sum(len(block.commands) for block in BLOCKS if block.page == "README.md") >= 8


def test_directives_name_a_block() -> None:
    """A ``<!-- docs: ... -->`` comment not right before a command block changes nothing:
    a typo, or a block that moved."""
    for page in PAGES:
        lines = (ROOT / page).read_text().splitlines()
        for index, line in enumerate(lines):
            if DIRECTIVE.search(line):
                after = lines[index + 1] if index + 1 < len(lines) else ""
                assert after.startswith(("```bash", "```sh")), f"{page}:{index + 1}"


# --------------------------------------------------------------------------- README


README = (ROOT / "README.md").read_text()


def fenced_blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_readme_shows_the_two_front_door_commands() -> None:
    assert "make demo" in README and "make test" in README


def test_readme_sample_output_is_what_bnfold_prints(tmp_path_factory) -> None:
    folder = new_folder(tmp_path_factory, "sample")
    sample = fenced_blocks("text")[1]
    completed = run_command("bnfold models/pytorch_style.onnx -o sample.onnx", folder)
    assert completed.returncode == 0, completed.stderr
    # The log, the check's header and its verdict are exact; timings vary from run to run.
    expected = [line for line in sample.splitlines() if not line.startswith("Wrote")]
    actual = completed.stdout.splitlines()
    assert len(expected) == 7
    for line in expected[:6]:
        assert line in actual
    assert expected[6].split()[0] == "logits" and expected[6].endswith(
        "rtol 0.0001 x max|orig| 265 + atol 1e-05"
    )
    assert any(line.endswith(expected[6][-40:]) for line in actual)


def test_readme_python_example_runs(tmp_path_factory, monkeypatch) -> None:
    folder = new_folder(tmp_path_factory, "python")
    monkeypatch.chdir(folder)
    for block in fenced_blocks("python"):
        exec(compile(block, "README.md", "exec"), {})
    assert (folder / "folded_lib.onnx").exists()
