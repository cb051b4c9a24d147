"""The fold log: one entry per BatchNormalization (or BN-like affine) found in a model."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Outcome(str, enum.Enum):
    FOLDED_INTO_PREVIOUS = "folded_into_previous"
    FOLDED_INTO_NEXT = "folded_into_next"
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
    INVALID_PARAMS = "invalid_params"
    DTYPE_RANGE = "dtype_range"
    UNSUPPORTED_DTYPE = "unsupported_dtype"
    UNSUPPORTED_LAYER = "unsupported_layer"
    CONSUMER_NOT_FOLDABLE = "consumer_not_foldable"
    NEGATIVE_SCALE = "negative_scale"
    NOT_COMMUTING = "not_commuting"


@dataclass(frozen=True)
class Skip:
    """A rule declined: ``reason`` is the stable code, ``detail`` one line for the user."""

    reason: Reason
    detail: str


@dataclass
class FoldEntry:
    """What happened to one BN or BN-like affine.

    ``name`` is the BN's node (or layer) name, ``ops`` the op types that formed the affine,
    ``target`` the layer(s) it was folded into, ``via`` the layout ops it was folded through.
    """

    name: str
    ops: list[str]
    outcome: Outcome
    target: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)
    reason: Reason | None = None
    detail: str = ""
    stage: str = "onnx"  # "keras" for folds done on the Keras model before conversion

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["reason"] = self.reason.value if self.reason else None
        return data

    @property
    def folded(self) -> bool:
        return self.outcome is not Outcome.LEFT
