"""The command line contract: exit codes, one clear line for bad input, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from bnfold.cli import cli

MODELS = Path(__file__).resolve().parent.parent / "models"
DEMO = MODELS / "pytorch_style.onnx"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_fold_writes_output_and_prints_log_and_check(tmp_path):
    out = tmp_path / "folded.onnx"
    code, stdout, _ = run(str(DEMO), "-o", str(out))
    assert code == 0
    assert "bn1  BatchNormalization  folded into previous conv" in stdout
    assert "Found 3: 3 folded into previous, 0 into next, 0 left" in stdout
    assert "logits" in stdout and "pass" in stdout
    assert [n.op_type for n in onnx.load(out).graph.node].count("BatchNormalization") == 0


def test_fold_subcommand_name_is_optional(tmp_path):
    code, _, _ = run("fold", str(DEMO), "-o", str(tmp_path / "a.onnx"))
    assert code == 0 and (tmp_path / "a.onnx").exists()


def test_json_output_is_machine_readable(tmp_path):
    code, stdout, _ = run(str(DEMO), "-o", str(tmp_path / "f.onnx"), "--json")
    assert code == 0
    document = json.loads(stdout)
    assert document["schema"] == "bnfold.report/1"
    assert document["counts"]["folded_into_previous"] == 3
    assert document["check"]["passed"] is True
    assert {entry["name"] for entry in document["entries"]} == {"bn1", "bn2", "bn3"}


def test_failed_check_exits_1_and_writes_nothing(tmp_path):
    out = tmp_path / "folded.onnx"
    code, stdout, stderr = run(str(DEMO), "-o", str(out), "--rtol", "0", "--atol", "0")
    assert code == 1
    assert "FAIL" in stdout
    assert stderr.strip().splitlines()[-1].startswith("bnfold: error: the folded model differs")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_inspect_lists_every_batchnorm_and_writes_nothing(tmp_path):
    code, stdout, _ = run("inspect", str(DEMO))
    assert code == 0
    assert [line.split("  ")[-1] for line in stdout.splitlines()[:3]] == [
        "folded into previous conv",
        "folded into previous deconv",
        "folded into previous fc",
    ]


def test_check_command_compares_two_models(tmp_path):
    out = tmp_path / "f.onnx"
    assert run(str(DEMO), "-o", str(out))[0] == 0
    code, stdout, _ = run("check", str(DEMO), str(out), "--dim", "batch=3")
    assert code == 0
    assert "x[3, 3, 4, 4]" in stdout
    code, _, stderr = run("check", str(DEMO), str(MODELS / "tf2onnx_mlp.onnx"))
    assert code == 3
    assert "needs input(s) features" in stderr and len(stderr.strip().splitlines()) == 1


def test_inputs_from_npz(tmp_path):
    import numpy as np

    data = tmp_path / "inputs.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(5, 3, 4, 4)).astype(np.float32))
    code, stdout, _ = run(str(DEMO), "-o", str(tmp_path / "f.onnx"), "--inputs", str(data))
    assert code == 0
    assert f"Check on from {data}" in stdout


@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d: d / "missing.onnx", "no such file"),
        (lambda d: _write(d / "notes.onnx", b"this is not a model\n"), "not an ONNX model"),
        (lambda d: _write(d / "cut.onnx", DEMO.read_bytes()[:2000]), "not an ONNX model"),
        (lambda d: _write(d / "empty.onnx", b""), "not an ONNX model"),
    ],
)
def test_bad_input_is_one_line_exit_3_and_no_output(tmp_path, make_input, message):
    source = make_input(tmp_path)
    before = source.read_bytes() if source.exists() else None
    out = tmp_path / "out" / "folded.onnx"
    out.parent.mkdir()
    code, stdout, stderr = run(str(source), "-o", str(out))
    assert code == 3
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and message in stderr
    assert "Traceback" not in stderr
    assert list(out.parent.iterdir()) == []
    if before is not None:
        assert source.read_bytes() == before


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_usage_errors_exit_2(tmp_path):
    assert run(str(DEMO))[0] == 2  # no -o
    code, _, stderr = run(str(DEMO), "-o", str(tmp_path / "x.txt"))
    assert code == 2 and "must end in .onnx" in stderr
    code, _, stderr = run(str(DEMO), "-o", str(tmp_path / "x.keras"))
    assert code == 2 and "Keras output needs a Keras input" in stderr
    code, _, _ = run(str(DEMO), "-o", str(tmp_path / "f.onnx"), "--dim", "batch")
    assert code == 2


def test_output_equal_to_input_is_refused_unless_asked(tmp_path):
    source = tmp_path / "model.onnx"
    source.write_bytes(DEMO.read_bytes())
    code, _, stderr = run(str(source), "-o", str(source))
    assert code == 2 and "--overwrite-input" in stderr
    assert source.read_bytes() == DEMO.read_bytes()
    code, _, _ = run(str(source), "-o", str(source), "--overwrite-input")
    assert code == 0
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(source).graph.node}


def test_missing_output_folder_exits_4(tmp_path):
    code, _, stderr = run(str(DEMO), "-o", str(tmp_path / "nowhere" / "f.onnx"))
    assert code == 4 and "does not exist" in stderr


def test_help_and_onnx_path_never_import_tensorflow(tmp_path):
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from bnfold.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(cli, [{str(DEMO)!r}, '-o', {str(tmp_path / 'f.onnx')!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "[]"


def test_import_of_the_command_line_loads_no_runtime():
    """``bnfold --help`` answers at once: the command line imports numpy, onnx, onnx_ir,
    onnxruntime and TensorFlow only inside the commands that use them."""
    script = (
        "import sys\n"
        "import bnfold, bnfold.cli\n"
        "heavy = ('numpy', 'onnx', 'onnx_ir', 'onnxruntime', 'tensorflow', 'keras', 'sympy')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--no-such-option"], 2),  # a usage error, raised by click
        (["-o", "x.txt"], 2),  # a usage error, raised by bnfold
        (["-o", "f.onnx", "--rtol", "0", "--atol", "0"], 1),  # the report, with the failed check
    ],
)
def test_json_prints_a_document_on_every_exit(tmp_path, args, code):
    out_args = [str(tmp_path / a) if a.endswith((".onnx", ".txt")) else a for a in args]
    exit_code, stdout, _ = run(str(DEMO), *out_args, "--json")
    assert exit_code == code
    document = json.loads(stdout)
    if code == 1:
        assert document["check"]["passed"] is False
    else:
        assert document["exit_code"] == code and document["error"]


def test_json_error_document_for_an_unreadable_input(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    code, stdout, stderr = run("inspect", str(bad), "--json")
    assert code == 3
    assert json.loads(stdout)["exit_code"] == 3 and "bad.onnx" in json.loads(stdout)["error"]
    assert len(stderr.strip().splitlines()) == 1


def test_console_script_and_module_entry_points(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "bnfold", "--version"], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "bnfold, version 0.1.0"


def test_check_command_exits_1_when_outputs_differ(tmp_path):
    import numpy as np
    from onnx import numpy_helper

    model = onnx.load(DEMO)
    weight = next(t for t in model.graph.initializer if t.name == "conv_w")
    changed = numpy_helper.to_array(weight).copy()
    changed[0, 0, 0, 0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(changed.astype(np.float32), "conv_w"))
    other = tmp_path / "other.onnx"
    onnx.save(model, other)
    code, stdout, stderr = run("check", str(DEMO), str(other), "--json")
    assert code == 1
    document = json.loads(stdout)
    assert document["check"]["passed"] is False
    assert document["check"]["max_rel"] > 1e-3
    assert "differs from" in stderr


def test_json_is_strict_when_an_error_is_not_finite(tmp_path):
    """Outputs of different shapes have no finite error: JSON says null, not Infinity."""
    import numpy as np
    from onnx import TensorProto, helper

    from bnfold.testing import make_model

    paths = []
    for width in (4, 5):
        weight = np.ones((3, width), np.float32)
        model = make_model(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            [("x", TensorProto.FLOAT, ["N", 3])],
            ["y"],
            {"w": weight},
        )
        paths.append(tmp_path / f"width{width}.onnx")
        onnx.save(model, paths[-1])
    code, stdout, _ = run("check", str(paths[0]), str(paths[1]), "--json")
    assert code == 1
    assert "Infinity" not in stdout
    output = json.loads(stdout)["check"]["outputs"][0]
    assert output["max_abs"] is None and "shape" in output["detail"]


def test_report_cannot_measure_against_an_input_it_overwrites(tmp_path):
    source = tmp_path / "model.onnx"
    source.write_bytes(DEMO.read_bytes())
    for extra in (["--bench"], ["--report", str(tmp_path / "r.json")]):
        code, _, stderr = run(str(source), "-o", str(source), "--overwrite-input", *extra)
        assert code == 2 and "--overwrite-input" in stderr
    assert source.read_bytes() == DEMO.read_bytes()
    assert not (tmp_path / "r.json").exists()


def sized_model(path: Path, flat: int) -> Path:
    """Conv -> BN -> Reshape to [-1, flat]: runs only when 4*H*W*N divides by ``flat``."""
    import numpy as np
    from onnx import TensorProto, helper

    from bnfold.testing import batchnorm_node, batchnorm_params, make_model

    rng = np.random.default_rng(0)
    weights = {
        "w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32),
        "shape": np.array([-1, flat], np.int64),
        **batchnorm_params(rng, 4),
    }
    proto = make_model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            batchnorm_node("c", "b"),
            helper.make_node("Reshape", ["b", "shape"], ["y"], name="flatten"),
        ],
        [("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [("y", TensorProto.FLOAT, None)],
        weights,
    )
    onnx.save(proto, path)
    return path


def test_check_finds_sizes_the_model_runs_at(tmp_path):
    """4*16*16*2 = 2048 elements do not reshape to [-1, 4096]; at 32x32 they do."""
    source = sized_model(tmp_path / "m.onnx", 4096)
    code, stdout, stderr = run(str(source), "-o", str(tmp_path / "f.onnx"))
    assert code == 0, stderr
    assert "Check on random normal, seed 0: x[2, 3, 32, 32]" in stdout


def test_check_that_finds_no_size_names_the_shapes_tried_and_dim(tmp_path):
    source = sized_model(tmp_path / "m.onnx", 7777)
    out = tmp_path / "f.onnx"
    code, _, stderr = run(str(source), "-o", str(out))
    assert code == 3 and not out.exists()
    (line,) = stderr.strip().splitlines()
    assert "x[2, 3, 16, 16]; x[2, 3, 32, 32]; x[2, 3, 64, 64]" in line
    assert "--dim NAME=SIZE" in line and "--no-check" in line and "check=" not in line
