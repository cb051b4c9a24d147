"""Let the ``bnfold`` process start without importing sympy.

onnx_ir imports sympy when it is imported (``onnx_ir._core``, and its expression parser
``onnx_ir._symbolic_shapes``, whose table of functions reads ``sympy.Max`` and the like), for
arithmetic on symbolic dimensions that bnfold never does: about 0.35 s and 34 MB of a fold
that otherwise takes a second or two. ``defer_sympy`` puts a stand-in for each of the two
modules in ``sys.modules``: an ``import`` of it finds the stand-in, and the first attribute
read from it imports the real module and answers from it, so anything that does use sympy
works as before. (``importlib.util.LazyLoader`` cannot do this: an ``import`` statement reads
the lazy module's ``__spec__``, which loads it.)

It changes ``sys.modules`` for the whole process, so only the command line calls it, first
thing, in a process that is bnfold's own; ``import bnfold`` in someone else's program leaves
their imports alone.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

DEFERRED = ("sympy", "onnx_ir._symbolic_shapes")


class _Deferred(types.ModuleType):
    """A found, not yet executed module: the first attribute read imports it."""

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__(spec.name)
        self.__spec__ = spec  # what ``import`` checks, so an import does not load it

    def __getattr__(self, attribute: str) -> Any:
        real = self.__dict__.get("_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
            self.__dict__["_real"] = real
        return getattr(real, attribute)


def defer_sympy() -> None:
    """Put stand-ins for sympy and onnx_ir's expression parser in ``sys.modules``; nothing
    happens when either is imported already, or cannot be found (a newer onnx_ir may have
    moved or dropped it)."""
    if any(name in sys.modules for name in ("sympy", "onnx_ir", *DEFERRED)):
        return
    package = importlib.util.find_spec("onnx_ir")  # finds the package; does not import it
    if package is None or not package.submodule_search_locations:
        return
    parser = importlib.machinery.PathFinder.find_spec(
        "onnx_ir._symbolic_shapes", list(package.submodule_search_locations)
    )
    sympy = importlib.util.find_spec("sympy")
    if parser is None or sympy is None:
        return
    for spec in (sympy, parser):
        sys.modules[spec.name] = _Deferred(spec)


__all__ = ["defer_sympy"]
