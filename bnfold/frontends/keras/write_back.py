"""Write the fold core's decisions back into a Keras model: folded BN layers dropped from
the config of the model (or nested model) that lists them, linear layers given their folded
weights, the model rebuilt from the rewired config.

Each rebuilt layer is paired with its original by name (with the renames made here mapped
back), never by position: Keras lists a rebuilt functional model's layers in its own
traversal order, which moves once BN layers are dropped and rewired. Every pair's weight
shapes are verified before the first ``set_weights``, so a write-back that cannot pair
fails whole, with one line naming the layer, and nothing is half-written.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnfold.frontends.keras.lowering import LayerRecord, all_layers, is_model
from bnfold.frontends.keras.runtime import first_line
from bnfold.frontends.keras.wiring import ModelGraph, mutable_copy


class RewriteError(Exception):
    """The Keras model cannot be rebuilt with the folds applied; one line says why."""


@dataclass
class Rewrites:
    """What the fold changed, in Keras terms: folded weights by layer path, layers that
    gained a bias, BN layers to drop."""

    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)
    gained_bias: set[str] = field(default_factory=set)
    dropped: list[LayerRecord] = field(default_factory=list)


class _Configs:
    """The model's config and the wiring of each (nested) model in it, by path."""

    def __init__(self, model: Any) -> None:
        self.config = mutable_copy(model.get_config())
        sequential = type(model).__name__ == "Sequential"
        self.graphs = {"": ModelGraph(self.config, sequential=sequential)}

    def graph(self, owner: str) -> ModelGraph:
        if owner not in self.graphs:
            parent, _, name = owner.rpartition("/")
            layer = self.graph(parent).layers[name]
            sequential = layer.class_name == "Sequential"
            self.graphs[owner] = ModelGraph(layer.layer_config, sequential=sequential)
        return self.graphs[owner]

    def layer_config(self, path: str) -> dict[str, Any]:
        owner, _, name = path.rpartition("/")
        config = self.graph(owner).layers[name].layer_config
        inner = config.get("layer")  # TimeDistributed
        return inner["config"] if isinstance(inner, dict) and "config" in inner else config


def apply_rewrites(model: Any, changes: Rewrites) -> tuple[Any, dict[str, str]]:
    """The folded model, rebuilt from the rewired config with the new weights, and the
    renames made (a top-level layer that now writes a model output takes the name of the BN
    that wrote it, so the output keeps its name). ``model`` itself is never changed."""
    try:
        configs = _Configs(model)
        for path in changes.gained_bias:
            configs.layer_config(path)["use_bias"] = True
        renames: dict[str, str] = {}
        for record in changes.dropped:
            source = configs.graph(record.owner).drop(record.name)
            if source is not None and record.owner == "" and source in configs.graphs[""].layers:
                renames[source] = record.name
        for old, new in renames.items():
            configs.graphs[""].rename(old, new)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise RewriteError(
            f"bnfold cannot rewire the model's config: {first_line(error)}"
        ) from error
    try:
        rebuilt = _rebuild(model, configs.config)
    except Exception as error:  # Keras raises any type from a layer's from_config
        raise RewriteError(f"Keras cannot rebuild the folded model: {first_line(error)}") from error
    pairs = pair_layers(model, rebuilt, {r.path for r in changes.dropped}, renames)
    _copy_weights(pairs, changes.weights)
    return rebuilt, renames


def _original_path(path: str, back: dict[str, str]) -> str:
    """The original's path of a rebuilt layer: a renamed top-level layer (and, when it is a
    nested model, every layer under it) maps back through ``back`` (new name -> old)."""
    head, sep, rest = path.partition("/")
    return back.get(head, head) + sep + rest


def pair_layers(
    model: Any, rebuilt: Any, dropped: set[str], renames: dict[str, str]
) -> list[tuple[str, Any, Any]]:
    """``(original path, original layer, rebuilt layer)`` for every layer of ``rebuilt``,
    paired by name. A rebuilt layer whose name matches none (a custom layer whose config
    leaves its name out, so Keras names it anew) pairs with the one unpaired original of its
    class, if exactly one is left; anything else is a ``RewriteError`` naming the layer."""
    originals = {path: layer for path, layer in all_layers(model) if path not in dropped}
    back = {new: old for old, new in renames.items()}
    pairs: list[tuple[str, Any, Any]] = []
    unnamed: list[tuple[str, Any]] = []
    for path, new_layer in all_layers(rebuilt):
        source = _original_path(path, back)
        layer = originals.pop(source, None)
        if layer is None:
            unnamed.append((path, new_layer))
        else:
            pairs.append((source, layer, new_layer))
    for path, new_layer in unnamed:
        same_class = [p for p, layer in originals.items() if type(layer) is type(new_layer)]
        if len(same_class) != 1:
            raise RewriteError(
                f"the rebuilt layer '{path}' ({type(new_layer).__name__}) pairs with no "
                f"layer of the original ({len(same_class)} unpaired of its class)"
            )
        pairs.append((same_class[0], originals.pop(same_class[0]), new_layer))
    if originals:
        missing = next(iter(originals))
        raise RewriteError(f"the original's layer '{missing}' is missing from the rebuilt model")
    return pairs


def _copy_weights(pairs: list[tuple[str, Any, Any]], folded: dict[str, list[np.ndarray]]) -> None:
    """Each rebuilt layer takes the folded weights of its original, or the original's own;
    every pair's shapes are verified before the first weight is set."""
    plan: list[tuple[Any, list[np.ndarray]]] = []
    for path, layer, new_layer in pairs:
        if is_model(layer):
            continue  # its own layers are paired one by one
        weights = folded.get(path)
        if weights is None:
            weights = layer.get_weights()
        have = [tuple(np.shape(w)) for w in weights]
        want = [tuple(int(d) for d in v.shape) for v in new_layer.weights]
        if have != want:
            raise RewriteError(
                f"layer '{path}' has weights of shapes {have}, its rebuilt counterpart "
                f"'{new_layer.name}' expects {want}"
            )
        plan.append((new_layer, weights))
    for new_layer, weights in plan:
        new_layer.set_weights(weights)


def _rebuild(model: Any, config: dict[str, Any]) -> Any:
    scope: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if any(type(layer).__name__ == "Lambda" for _, layer in all_layers(model)):
        # The model is in memory already (the user allowed its code): no new code runs.
        from keras.src.saving.serialization_lib import SafeModeScope

        scope = SafeModeScope(False)
    with scope:
        return type(model).from_config(config)
