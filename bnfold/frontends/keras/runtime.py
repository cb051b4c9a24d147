"""TensorFlow, Keras and tf2onnx, imported on first use with their start-up noise silenced.

The only place in bnfold that imports them; ``bnfold --help`` and the ONNX path never do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from bnfold.errors import InputError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
KERAS_EXTRA_MESSAGE = "reading Keras models needs the keras extra: pip install 'bnfold[keras]'"
TF_KERAS_MESSAGE = (
    "is a Keras 2 model (keras_version {version}); reading it needs tf_keras, "
    "in the keras extra: pip install 'bnfold[keras]'"
)
MAX_ONNX_IR_VERSION = 10  # the newest IR version onnxruntime 1.2x/1.3x all load
BATCH_DIMENSION = "batch"

log = logging.getLogger("bnfold.frontends.keras")


def debug() -> bool:
    return os.environ.get("BNFOLD_DEBUG") == "1"


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hide what TensorFlow's C++ code writes straight to file descriptor 2 (its start-up
    lines ignore TF_CPP_MIN_LOG_LEVEL); shown when BNFOLD_DEBUG=1."""
    if debug():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_keras() -> tuple[Any, Any]:
    """``keras`` and ``tensorflow``, imported on first use with their log noise silenced."""
    if not debug():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with quiet_native_stderr():
            import keras
            import tensorflow as tf
    except ImportError as error:
        raise InputError(KERAS_EXTRA_MESSAGE) from error
    if not debug():
        with contextlib.suppress(ImportError):
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
        tf.get_logger().setLevel(logging.ERROR)
        tf.autograph.set_verbosity(0)
    return keras, tf


def import_tf_keras() -> Any:
    """``tf_keras`` (Keras 2), for files written by tf.keras of TF <= 2.15; ``None`` when it is
    not installed (the caller names the file in its message)."""
    import_keras()
    try:
        with quiet_native_stderr():
            import tf_keras
    except ImportError:
        return None
    return tf_keras


def keras_of(model: Any) -> Any:
    """The Keras package a model object belongs to: ``tf_keras`` for a Keras 2 model (saved
    back with it, so the file loads where it came from), else ``keras``."""
    if type(model).__module__.startswith("tf_keras"):
        tf_keras = import_tf_keras()
        if tf_keras is not None:
            return tf_keras
    return import_keras()[0]


@contextlib.contextmanager
def quiet_keras() -> Iterator[None]:
    """Silence Keras' Python warnings (the functional "structure of `inputs`" warning, the
    legacy-HDF5 advice) and TensorFlow's native stderr; both shown when BNFOLD_DEBUG=1."""
    if debug():
        yield
        return
    with warnings.catch_warnings(), quiet_native_stderr():
        warnings.simplefilter("ignore")
        yield


def import_tf2onnx() -> Any:
    import_keras()
    try:
        with quiet_native_stderr():
            import tf2onnx
    except ImportError as error:
        raise InputError(KERAS_EXTRA_MESSAGE) from error
    if not debug():
        logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    return tf2onnx


def first_line(error: BaseException, limit: int = 240) -> str:
    text = [line for line in str(error).strip().splitlines() if line.strip()]
    if len(text) > 1 and text[0].startswith("Exception encountered when calling"):
        # Keras puts the layer first and the reason on the next line: say both.
        text = [f"{text[0].rstrip('.')}: {text[1]}"]
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
