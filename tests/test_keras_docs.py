"""The `bnfold ...` commands in docs/keras.md, executed, so that the page cannot go stale."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.keras
REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "keras.md"


def documented_commands() -> list[str]:
    blocks = re.findall(r"```\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    lines = (line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line.startswith("bnfold ")]


def test_page_documents_the_everyday_and_forward_fold_commands() -> None:
    assert documented_commands() == [
        "bnfold models/iris_mlp.h5 -o folded.onnx",
        "bnfold models/small_cnn.keras -o folded.keras",
        "bnfold models/iris_mlp.h5 -o folded.keras",
        "bnfold models/flatten_bn_classifier.keras -o folded.keras",
    ]


@pytest.mark.parametrize("command", documented_commands())
def test_documented_command_runs(command: str, tmp_path: Path) -> None:
    (tmp_path / "models").symlink_to(REPO / "models")
    arguments = shlex.split(command)[1:]
    done = subprocess.run(
        [sys.executable, "-m", "bnfold", *arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / arguments[-1]).stat().st_size > 0
    assert "pass" in done.stdout
