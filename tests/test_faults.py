"""Faults survived, nothing lost (issue 16, item 4): SIGINT and SIGTERM at each phase of a fold
of a 100 MB model, a full disk and a read-only folder. Afterwards OUT is absent or complete
(it loads and passes ``bnfold check`` against the input), nothing else is beside it, no
temporary file is left anywhere, the input is byte-identical and the exit code is the
documented one (130 SIGINT, 143 SIGTERM, 4 for an output that cannot be written).

A phase is hit without any hook in bnfold: the ``bnfold`` subprocess gets a test-only
``sitecustomize.py`` on ``PYTHONPATH`` that wraps one function of the phase, writes the
phase's name to a status file and sleeps; the test sends the signal when it reads the name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import bnfold
from bnfold import atomic
from bnfold.cli import cli

BNFOLD = str(Path(sys.executable).with_name("bnfold"))
CHANNELS, BLOCKS = 512, 11  # 11 Conv 3x3 512->512: 104 MB of float32 weights

# Imported by the bnfold child at start-up (PYTHONPATH); test-only, bnfold has no such hook.
SITECUSTOMIZE = textwrap.dedent(
    '''
    import os
    import time
    import types

    AT, STATUS = os.environ.get("FAULT_PAUSE_AT"), os.environ.get("FAULT_STATUS")


    def pause(phase, seconds=60.0):
        with open(STATUS, "a") as status:
            status.write(phase + "\\n")
        time.sleep(seconds)  # the signal lands here, inside the phase


    def after(function, phase, when=lambda: True):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            if AT == phase and when():
                pause(phase)
            return result
        return wrapper


    class HalfWritten:
        """A file that pauses once half the model is written into the scratch folder."""

        def __init__(self, file):
            self.file, self.written = file, 0

        def write(self, data):
            self.file.write(data)
            self.written += len(data)
            if self.written > 50_000_000 and AT == "write":
                pause("write")


    if AT:
        import bnfold.frontends.onnx as onnx_io
        import bnfold.frontends.onnx_frontend as frontend

        folded = []
        onnx_io.read_model = after(onnx_io.read_model, "load")
        real_fold = frontend.fold_model
        frontend.fold_model = lambda *args, **kwargs: folded.append(1) or real_fold(*args, **kwargs)
        frontend.fold_model = after(frontend.fold_model, "fold")
        frontend.OnnxFrontend.run = after(frontend.OnnxFrontend.run, "check", lambda: folded)
        real_write = onnx_io.write_model
        onnx_io.write_model = lambda model, file, *args: real_write(model, HalfWritten(file), *args)
        real_replace = os.replace

        def replace(source, target, **kwargs):
            # Between the weights' rename and the model's: signals are held back there.
            real_replace(source, target, **kwargs)
            if AT == "rename" and str(target).endswith(".data"):
                pause("rename", seconds=1.0)

        onnx_io.os = types.SimpleNamespace(**{**vars(os), "replace": replace})
    '''
)


def conv_bn_model(channels: int, blocks: int, seed: int = 0) -> onnx.ModelProto:
    """``blocks`` x Conv(3x3, channels->channels) -> BatchNormalization -> Relu."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    current = "x"
    for index in range(blocks):
        weight = rng.standard_normal((channels, channels, 3, 3), np.float32) / 48
        weights.append(numpy_helper.from_array(weight, f"w{index}"))
        params = [rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels)]
        params += [rng.normal(0, 0.1, channels), rng.uniform(0.5, 1.5, channels)]
        names = [f"{kind}{index}" for kind in "gbmv"]
        weights += [
            numpy_helper.from_array(p.astype(np.float32), n)
            for p, n in zip(params, names, strict=True)
        ]
        nodes += [
            helper.make_node("Conv", [current, f"w{index}"], [f"c{index}"], pads=[1] * 4),
            helper.make_node("BatchNormalization", [f"c{index}", *names], [f"n{index}"]),
            helper.make_node("Relu", [f"n{index}"], [f"r{index}"]),
        ]
        current = f"r{index}"
    shape: list[int | str] = ["batch", channels, 4, 4]
    graph = helper.make_graph(
        nodes,
        "faults",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, shape)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path, external: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save(model, path, save_as_external_data=True, location=f"{path.name}.data")
    else:
        onnx.save(model, path)
    return path


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir()}


@pytest.fixture(scope="module")
def large_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 100 MB model once inline and once with external data, each in its own folder."""
    root = tmp_path_factory.mktemp("large")
    model = conv_bn_model(CHANNELS, BLOCKS)
    return {
        "inline": save(model, root / "inline" / "big.onnx", external=False),
        "external": save(model, root / "external" / "big.onnx", external=True),
    }


@pytest.fixture(scope="module")
def hook_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hook")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def wait_for(status: Path, phase: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if status.exists() and phase in status.read_text().split():
            return
        if child.poll() is not None:
            _, stderr = child.communicate()
            raise AssertionError(f"bnfold ended ({child.returncode}) before {phase}: {stderr!r}")
        time.sleep(0.02)
    raise AssertionError(f"bnfold never reached {phase}")


SIGNALS = {
    "SIGINT": (signal.SIGINT, 130, "interrupted"),
    "SIGTERM": (signal.SIGTERM, 143, "terminated"),
}
# phase -> (model layout, what OUT's folder holds afterwards)
PHASES = {
    "load": ("inline", []),
    "fold": ("inline", []),
    "check": ("inline", []),
    "write": ("inline", []),  # half the model written into the scratch folder
    "rename": ("external", ["out.onnx", "out.onnx.data"]),  # between the two renames
}
CASES = [(name, phase) for phase in PHASES for name in SIGNALS]


@pytest.mark.slow
@pytest.mark.parametrize(("signal_name", "phase"), CASES)
def test_a_signal_at_each_phase_leaves_out_absent_or_complete(
    signal_name: str,
    phase: str,
    large_models: dict[str, Path],
    hook_folder: Path,
    tmp_path: Path,
) -> None:
    number, exit_code, line = SIGNALS[signal_name]
    layout, expected_files = PHASES[phase]
    source = large_models[layout]
    before = digests(source.parent)
    out_dir, scratch = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    scratch.mkdir()
    status = tmp_path / "status"
    environment = {
        **os.environ,
        "PYTHONPATH": str(hook_folder),
        "FAULT_PAUSE_AT": phase,
        "FAULT_STATUS": str(status),
        "TMPDIR": str(scratch),  # the check's temporary folders must go too
    }
    command = [BNFOLD, str(source), "-o", str(out_dir / "out.onnx")]
    child = subprocess.Popen(
        command,
        env=environ_without_debug(environment),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        preexec_fn=default_sigint,
    )
    try:
        wait_for(status, phase, child)
        child.send_signal(number)
        _, stderr = child.communicate(timeout=120)
    finally:
        child.kill()

    assert child.returncode == exit_code, stderr.decode()
    assert stderr.decode().strip().splitlines() == [f"bnfold: error: {line}"]
    assert sorted(path.name for path in out_dir.iterdir()) == expected_files
    assert temporary_files(scratch) == []
    assert digests(source.parent) == before
    if expected_files:
        onnx.checker.check_model(str(out_dir / "out.onnx"))
        check = bnfold.check(source, out_dir / "out.onnx")
        assert check.passed and check.max_rel < 1e-5


def default_sigint() -> None:
    """A job started in the background by a shell ignores SIGINT, and Python keeps an ignored
    SIGINT ignored: the child gets Python's usual Ctrl-C whoever runs the tests."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def temporary_files(folder: Path) -> list[str]:
    """What bnfold's temporary files are named like (``bnfold-*``, tempfile's ``tmp*``); this
    machine's shell leaves a ``.ses`` file of its own in TMPDIR."""
    return [path.name for path in folder.iterdir() if path.name.startswith(("bnfold", "tmp"))]


def environ_without_debug(environment: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in environment.items() if key != "BNFOLD_DEBUG"}


# --------------------------------------------------------------------------- full, read-only


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (skipped where mounting is not allowed: not root, no CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if shutil.which("mount") is None or mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(scope="module")
def small_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2.4 MB of weights: more than the 1 MiB tmpfs holds."""
    root = tmp_path_factory.mktemp("small")
    model = conv_bn_model(128, 4)
    return {
        "inline": save(model, root / "inline" / "m.onnx", external=False),
        "external": save(model, root / "external" / "m.onnx", external=True),
    }


def fold_into(source: Path, folder: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(source), "-o", str(folder / "out.onnx")])
    return result.exit_code, result.stderr


def previous_output(folder: Path, layout: str) -> dict[str, bytes]:
    """An OUT (and OUT.data) from an earlier run, which a failed write must leave as it was."""
    names = ["out.onnx", "out.onnx.data"] if layout == "external" else ["out.onnx"]
    for name in names:
        (folder / name).write_bytes(b"earlier " + name.encode())
    return {name: (folder / name).read_bytes() for name in names}


def left_in(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.mark.parametrize("layout", ["inline", "external"])
def test_a_full_disk_is_exit_4_and_leaves_the_earlier_output(
    layout: str, small_models: dict[str, Path], tmpfs: Path
) -> None:
    source = small_models[layout]
    before = digests(source.parent)
    earlier = previous_output(tmpfs, layout)

    code, stderr = fold_into(source, tmpfs)

    assert code == 4, stderr
    lines = stderr.strip().splitlines()
    assert lines == [f"bnfold: error: {tmpfs / 'out.onnx'}: cannot write (No space left on device)"]
    assert left_in(tmpfs) == earlier  # no .bnfold-* folder, the earlier OUT untouched
    assert digests(source.parent) == before


@pytest.mark.parametrize("layout", ["inline", "external"])
def test_a_read_only_folder_is_exit_4_and_leaves_it_as_it_was(
    layout: str, small_models: dict[str, Path], tmpfs: Path
) -> None:
    """A read-only mount, since root writes into a folder whatever its permission bits."""
    earlier = previous_output(tmpfs, layout)
    remounted = subprocess.run(
        ["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True, check=False
    )
    if remounted.returncode != 0:
        pytest.skip("cannot remount the tmpfs read-only")

    code, stderr = fold_into(small_models[layout], tmpfs)

    assert code == 4, stderr
    assert stderr.strip().splitlines() == [
        f"bnfold: error: {tmpfs}: cannot write (Read-only file system)"
    ]
    assert left_in(tmpfs) == earlier


# --------------------------------------------------------------------------- bnfold.atomic


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """Python's Ctrl-C handler for the test: a job started in the background (nohup, ``&``
    in a script, some CI runners) inherits SIGINT ignored, and then no signal arrives."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_sigint")
def test_a_signal_in_a_deferred_block_takes_effect_after_it() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), atomic.signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler would have run by now
        steps.append("after the signal")
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.usefixtures("python_sigint")
def test_a_signal_while_the_scratch_folder_is_made_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_mkdtemp = atomic.tempfile.mkdtemp

    def interrupted_mkdtemp(**kwargs: Any) -> str:
        made = real_mkdtemp(**kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return made

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", interrupted_mkdtemp)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomically(tmp_path / "out.txt", lambda staged: staged.write_text("x"))
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_leaves_nothing_and_a_finished_one_the_whole_file(
    tmp_path: Path,
) -> None:
    def write_then_interrupt(staged: Path) -> None:
        staged.write_text("half")
        raise KeyboardInterrupt

    (tmp_path / "out.txt").write_text("earlier")
    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomically(tmp_path / "out.txt", write_then_interrupt)
    assert left_in(tmp_path) == {"out.txt": b"earlier"}
    atomic.write_atomically(tmp_path / "out.txt", lambda staged: staged.write_text("whole"))
    assert left_in(tmp_path) == {"out.txt": b"whole"}
