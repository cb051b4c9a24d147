"""The commands in README.md and docs/ are run as written, so the docs cannot go stale."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# Pages whose ```bash blocks are run in order after the README's (paths relative to ROOT).
DOC_PAGES = ("docs/user-guide.md",)
# `make` and `pip` set up the environment these tests already run in.
SETUP_COMMANDS = ("make ", "pip ")


def fenced_blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def readme_commands(text: str = README) -> list[str]:
    commands = []
    for block in fenced_blocks("bash", text):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith(SETUP_COMMANDS):
                commands.append(command)
    return commands


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    (folder / "models").symlink_to(ROOT / "models")
    return folder


def as_argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "bnfold":
        return [sys.executable, "-m", "bnfold", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    raise AssertionError(f"README command the test does not know how to run: {command}")


def test_readme_shows_the_two_front_door_commands():
    assert "make demo" in README and "make test" in README


def test_readme_commands_succeed_in_order(workdir):
    commands = readme_commands()
    assert len(commands) >= 8
    for command in commands:
        completed = subprocess.run(
            as_argv(command), cwd=workdir, capture_output=True, text=True, env=os.environ.copy()
        )
        assert completed.returncode == 0, f"{command}\n{completed.stdout}\n{completed.stderr}"


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_page_commands_succeed(workdir, page):
    commands = readme_commands((ROOT / page).read_text())
    assert commands
    for command in commands:
        completed = subprocess.run(as_argv(command), cwd=workdir, capture_output=True, text=True)
        assert completed.returncode == 0, f"{page}: {command}\n{completed.stderr}"


def test_readme_sample_output_is_what_bnfold_prints(workdir):
    sample = fenced_blocks("text")[1]
    completed = subprocess.run(
        as_argv("bnfold models/pytorch_style.onnx -o sample.onnx"),
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    # The log, the check's header and its verdict are exact; timings vary from run to run.
    expected = [line for line in sample.splitlines() if not line.startswith("Wrote")]
    actual = completed.stdout.splitlines()
    assert len(expected) == 7
    for line in expected[:6]:
        assert line in actual
    assert expected[6].split()[0] == "logits" and expected[6].endswith(
        "pass (atol 1e-05, rtol 0.0001)"
    )
    assert any(line.endswith(expected[6][-40:]) for line in actual)


def test_readme_python_example_runs(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    for block in fenced_blocks("python"):
        exec(compile(block, "README.md", "exec"), {})
    assert (workdir / "folded_lib.onnx").exists()
