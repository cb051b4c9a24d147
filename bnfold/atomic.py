"""Atomic writes, for every writer of bnfold (models, external data, reports).

A file is written into a ``.bnfold-*`` folder beside its target and renamed into place, so
a reader never sees half a file and a failure or an interrupt leaves nothing behind: the
folder is removed on the way out, whatever the way out is (an ``OSError``, Ctrl-C, the
``SIGTERM`` the command line turns into an exception). The renames themselves run with
SIGINT and SIGTERM held back (``signals_deferred``), so a signal lands before or after them,
never between two renames that belong together (a model file and its weights file).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from bnfold.errors import OutputError

SCRATCH_PREFIX = ".bnfold-"
_DEFERRED = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive in the block take effect when it is done: their Python
    handlers are swapped for a recorder, and the first signal recorded is raised again
    afterwards. (Masking the thread would not do: onnxruntime's and BLAS's threads take a
    signal sent to the process, and the main thread then runs the handler all the same.)
    Python runs handlers in the main thread only, so elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {number: signal.getsignal(number) for number in _DEFERRED}
    swapped = {number: handler for number, handler in previous.items() if handler is not None}
    for number in swapped:
        signal.signal(number, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for number, handler in swapped.items():
            signal.signal(number, handler)
        if caught:
            signal.raise_signal(caught[0])


# Less free space than this after a short write means the disk is full.
FULL_DISK_BYTES = 1 << 20


def cannot_write(path: Path, error: OSError) -> OutputError:
    """The one line for an output that cannot be written. A short write (numpy's ``tofile``:
    "N requested and M written") carries no errno: on a full disk it is said as one."""
    reason = error.strerror or str(error)
    if error.errno is None and "requested and" in reason and _free_bytes(path) < FULL_DISK_BYTES:
        reason = os.strerror(errno.ENOSPC)
    return OutputError(f"{path}: cannot write ({reason})")


def _free_bytes(path: Path) -> int:
    try:
        stats = os.statvfs(path.parent)
    except (AttributeError, OSError):  # no statvfs (Windows), or the folder went away
        return FULL_DISK_BYTES
    return stats.f_bavail * stats.f_frsize


def _check_target(target: Path) -> None:
    folder = target.parent
    if not folder.is_dir():
        if folder.exists():
            raise OutputError(f"{folder}: is not a folder, so {target.name} cannot go in it")
        raise OutputError(f"{folder}: output folder does not exist")
    if target.is_dir():
        raise OutputError(f"{target}: is a folder")


def _make_scratch(folder: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=folder))
    except OSError as error:
        raise OutputError(f"{folder}: cannot write ({error.strerror})") from error


@contextlib.contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target``; whatever the caller writes there and moves out
    stays, the rest is removed on any way out (an error, an interrupt)."""
    _check_target(target)
    scratch: Path | None = None
    try:
        with signals_deferred():  # a signal lands once the folder is known, so it goes too
            scratch = _make_scratch(target.parent)
        yield scratch
    finally:
        if scratch is not None:
            with signals_deferred():  # a second Ctrl-C does not stop the clean-up halfway
                shutil.rmtree(scratch, ignore_errors=True)


def write_atomically(target: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """``write(staged)`` writes the whole file at ``staged``, beside ``target``; it then
    replaces ``target`` in one rename. An ``OSError`` is an ``OutputError`` naming ``target``."""
    target = Path(target)
    with atomic_folder(target) as scratch:
        staged = scratch / target.name
        try:
            write(staged)
            with signals_deferred():
                os.replace(staged, target)
        except OSError as error:
            raise cannot_write(target, error) from error


__all__ = [
    "SCRATCH_PREFIX",
    "atomic_folder",
    "cannot_write",
    "signals_deferred",
    "write_atomically",
]
