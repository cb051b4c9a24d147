"""The fold log: one entry per BatchNormalization (or BN-shaped affine) found in a model, and
one per other constant affine that was folded too (a conv bias ``Add``, an input scaling
``Mul``), kept apart by ``kind`` so that ``found`` counts BNs only."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# "batchnorm": a BatchNormalization node or layer, or a BN-shaped Mul/Add chain; "affine": any
# other constant affine the engine folded (never counted as a BN).
EntryKind = Literal["batchnorm", "affine"]
BATCHNORM: EntryKind = "batchnorm"
AFFINE: EntryKind = "affine"


class Outcome(str, enum.Enum):
    FOLDED_INTO_PREVIOUS = "folded_into_previous"
    FOLDED_INTO_NEXT = "folded_into_next"
    # The converter (TensorFlow's graph optimiser, under tf2onnx) folded it while writing ONNX.
    REMOVED_BY_CONVERTER = "removed_by_converter"
    LEFT = "left"


class Reason(str, enum.Enum):
    """Why an affine was left; docs/user-guide.md explains each and what the user can do."""

    NO_LINEAR_NEIGHBOUR = "no_linear_neighbour"
    SHARED_OUTPUT = "shared_output"
    GRAPH_OUTPUT = "graph_output"
    WEIGHT_NOT_CONSTANT = "weight_not_constant"
    PARAMS_NOT_CONSTANT = "params_not_constant"
    TRAINING_MODE = "training_mode"
    CHANNEL_MISMATCH = "channel_mismatch"
    UNPROVEN_LAYOUT = "unproven_layout"
    PADDING = "padding"
    SHIFT_NOT_BIAS = "shift_not_bias"
    INVALID_PARAMS = "invalid_params"
    DTYPE_RANGE = "dtype_range"
    UNSUPPORTED_DTYPE = "unsupported_dtype"
    UNSUPPORTED_LAYER = "unsupported_layer"
    CONSUMER_NOT_FOLDABLE = "consumer_not_foldable"
    NEGATIVE_SCALE = "negative_scale"
    NOT_COMMUTING = "not_commuting"
    KEPT_BY_USER = "kept_by_user"  # matched a keep pattern (--keep, FoldSettings.keep)
    REBUILD_FAILED = "rebuild_failed"


@dataclass(frozen=True)
class Skip:
    """A rule declined: ``reason`` is the stable code, ``detail`` one line for the user."""

    reason: Reason
    detail: str


@dataclass
class FoldEntry:
    """What happened to one BN or other constant affine.

    ``name`` is the BN's node (or layer) name, ``ops`` the op types that formed the affine,
    ``target`` the layer(s) it was folded into, ``via`` the layout ops it was folded through,
    ``kind`` whether it is a BN (``"batchnorm"``) or another constant affine (``"affine"``).
    """

    name: str
    ops: list[str]
    outcome: Outcome
    target: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)
    reason: Reason | None = None
    detail: str = ""
    stage: str = "onnx"  # "keras" for folds done on the Keras model before conversion
    kind: EntryKind = BATCHNORM

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["reason"] = self.reason.value if self.reason else None
        return data

    @property
    def folded(self) -> bool:
        return self.outcome is not Outcome.LEFT


def count_entries(entries: list[FoldEntry]) -> dict[str, Any]:
    """The log's counts: ``found`` and the outcomes count BNs only; ``affines_folded`` counts
    the other constant affines folded (an ``affine`` entry is only logged when folded)."""
    batchnorms = [entry for entry in entries if entry.kind == BATCHNORM]
    reasons: dict[str, int] = {}
    for entry in batchnorms:
        if entry.reason is not None and not entry.folded:
            reasons[entry.reason.value] = reasons.get(entry.reason.value, 0) + 1
    return {
        "found": len(batchnorms),
        "folded_into_previous": sum(e.outcome is Outcome.FOLDED_INTO_PREVIOUS for e in batchnorms),
        "folded_into_next": sum(e.outcome is Outcome.FOLDED_INTO_NEXT for e in batchnorms),
        "removed_by_converter": sum(e.outcome is Outcome.REMOVED_BY_CONVERTER for e in batchnorms),
        "left": sum(not e.folded for e in batchnorms),
        "left_by_reason": reasons,
        "affines_folded": sum(e.folded for e in entries if e.kind == AFFINE),
    }


class FoldLog:
    """What every holder of a fold log (the engine's pass, the pipeline's record) offers."""

    entries: list[FoldEntry]

    @property
    def folded(self) -> list[FoldEntry]:
        """Every entry folded, BN or other affine."""
        return [entry for entry in self.entries if entry.folded]

    @property
    def left(self) -> list[FoldEntry]:
        return [entry for entry in self.entries if not entry.folded]

    @property
    def changed(self) -> bool:
        return bool(self.folded)

    def counts(self) -> dict[str, Any]:
        return count_entries(self.entries)
