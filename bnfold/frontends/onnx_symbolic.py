"""Symbolic shapes from onnxruntime's symbolic shape inference: where ONNX's own inference
stops, it follows shapes computed at run time (``x.view(x.size(0), x.size(1), -1)``:
``Shape -> Slice -> Concat -> Reshape`` gives ``[N, C, H*W]``) and torch's computed ``Pad``
pads, writing the dims it derives as expressions of the input's symbols (``H*W``).

Driven step by step rather than through ``SymbolicShapeInference.infer_shapes``: that one
writes ``sym_shape_infer_temp.onnx`` into the working directory when a shape stays unknown
(an op it does not know), and drops what it found; here what it found is kept. Symbols are
never merged (``auto_merge=False``): two dims broadcast together are not assumed equal.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

import onnx

# sympy's functions in the expressions it writes (floor(T/4) - 1).
_FUNCTIONS = frozenset({"floor", "ceiling", "Max", "Min", "Mod"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Its warnings (an op it does not know) are not bnfold's user's business."""
    logger = logging.getLogger(name)
    level, logger.level = logger.level, logging.CRITICAL + 1
    try:
        yield
    finally:
        logger.level = level


def _symbolic_model(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        from onnxruntime.tools import symbolic_shape_infer as module

        with _quiet(module.__name__):
            inference = module.SymbolicShapeInference(2**31 - 1, False, False, 0)
            inference._preprocess(proto)
            while inference.run_:
                inference._infer_impl()
            inference._update_output_from_vi()
            return inference.out_mp_
    except Exception:  # an op it cannot handle, or another onnxruntime version's internals
        return None


def ort_symbolic_dims(
    proto: onnx.ModelProto, symbols: set[str], prefix: str
) -> dict[str, list[int | str | None]]:
    """Every value's dims that the inference finds (main graph): sizes, and expressions of
    the graph inputs' ``symbols``; a symbol it made up is renamed with ``prefix`` so that it
    can never equal one of another inference."""
    inferred = _symbolic_model(proto)
    if inferred is None:
        return {}
    found: dict[str, list[int | str | None]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            continue
        dims: list[int | str | None] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            elif dim.HasField("dim_param"):
                names = set(_NAME.findall(dim.dim_param)) - _FUNCTIONS
                own = names <= symbols
                dims.append(dim.dim_param if own else f"{prefix}{dim.dim_param}")
            else:
                dims.append(None)
        found[info.name] = dims
    return found


__all__ = ["ort_symbolic_dims"]
