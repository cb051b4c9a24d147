"""Atomic writes, for every writer of bnfold (models, external data, reports).

A file is written into a ``.bnfold-*`` folder beside its target and renamed into place, so
a reader never sees half a file and a failure or an interrupt leaves nothing behind: the
folder is removed on the way out, whatever the way out is (an ``OSError``, Ctrl-C, the
``SIGTERM`` the command line turns into an exception). The renames themselves run with
SIGINT and SIGTERM held back (``signals_deferred``), so a signal lands before or after them,
never between two renames that belong together.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from bnfold.errors import OutputError

SCRATCH_PREFIX = ".bnfold-"
_DEFERRED = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (on POSIX; elsewhere nothing changes).
    Only the calling thread is masked: the main thread, where Python runs signal handlers,
    is the one that matters."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def cannot_write(path: Path, error: OSError) -> OutputError:
    """The one line for an output that cannot be written."""
    return OutputError(f"{path}: cannot write ({error.strerror or error})")


def _scratch_beside(target: Path) -> Path:
    folder = target.parent
    if not folder.is_dir():
        if folder.exists():
            raise OutputError(f"{folder}: is not a folder, so {target.name} cannot go in it")
        raise OutputError(f"{folder}: output folder does not exist")
    if target.is_dir():
        raise OutputError(f"{target}: is a folder")
    try:
        with signals_deferred():  # the folder is made and named together, or not at all
            return Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=folder))
    except OSError as error:
        raise OutputError(f"{folder}: cannot write ({error.strerror})") from error


@contextlib.contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target``; whatever the caller writes there and moves out
    stays, the rest is removed on any way out (an error, an interrupt)."""
    scratch = _scratch_beside(target)
    try:
        yield scratch
    finally:
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
