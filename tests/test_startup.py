"""What a ``bnfold`` process imports (issue 16, item 5): a fold without the check loads
neither sympy (onnx_ir imports it for symbolic dimensions bnfold never computes with) nor
onnxruntime, and sympy still works for whoever does use it in that process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "models" / "pytorch_style.onnx"


def run_python(script: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return completed.stdout.strip()


def test_a_fold_without_the_check_imports_neither_sympy_nor_onnxruntime(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        f"sys.argv = ['bnfold', {str(DEMO)!r}, '-o', {str(tmp_path / 'f.onnx')!r}, '--no-check']\n"
        "from bnfold.cli import main\n"
        "main()\n"
        "loaded = ('sympy.core', 'onnxruntime', 'onnx_ir')\n"
        "print(sorted(m for m in loaded if m in sys.modules))\n"
    )
    assert run_python(script).splitlines()[-1] == "['onnx_ir']"
    assert (tmp_path / "f.onnx").exists()


def test_deferred_sympy_works_when_it_is_used() -> None:
    script = (
        "import sys\n"
        "from bnfold.lazy_sympy import defer_sympy\n"
        "defer_sympy()\n"
        "import onnx_ir as ir\n"
        "assert 'sympy.core' not in sys.modules\n"
        "print(ir.SymbolicDim('N') * 2, ir.SymbolicDim('max(N, 3) + 1').evaluate({'N': 5}))\n"
        "import sympy\n"
        "from sympy import Symbol\n"
        "print(type(sympy).__name__, sympy.simplify(Symbol('x') + Symbol('x')))\n"
    )
    assert run_python(script).splitlines() == ["2*N 6", "module 2*x"]
