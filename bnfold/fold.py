"""The fold engine: find every affine, let the rules fold it, repeat until nothing changes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx_ir as ir

from bnfold.foldlog import AFFINE, BATCHNORM, FoldEntry, FoldLog, Outcome, Reason, Skip
from bnfold.graph import NameFactory, iter_graphs, node_label
from bnfold.rules import BACKWARD_RULES, FORWARD_RULES, Rule
from bnfold.rules.affines import AffineChain, find_affine_chains, refreshed
from bnfold.rules.base import FoldContext, Folded
from bnfold.settings import FoldSettings

METADATA_KEY = "bnfold"
ALL_FOLDS = FoldSettings()  # frozen, so one shared default is safe


@dataclass
class FoldPass(FoldLog):
    """What the engine returns: the folded model (the input model, changed in place) and one
    log entry per BN, plus one per other constant affine it folded (``kind="affine"``). The
    run record (check, timings, output) is the pipeline's ``bnfold.results.FoldResult``."""

    model: ir.Model
    entries: list[FoldEntry] = field(default_factory=list)


def _try_rules(
    context: FoldContext, chain: AffineChain, rules: Sequence[Rule]
) -> Folded | Skip | None:
    first_skip: Skip | None = None
    for rule in rules:
        answer = rule.fold(context, chain)
        if isinstance(answer, Folded):
            return answer
        if isinstance(answer, Skip) and first_skip is None:
            first_skip = answer
    return first_skip


def _fold_chain(
    context: FoldContext,
    chain: AffineChain,
    backward: Sequence[Rule],
    forward: Sequence[Rule],
    settings: FoldSettings,
) -> FoldEntry:
    """Prefer the layer before; the reason reported for a left BN is the backward one when
    a backward rule matched, since that is the fold the user expects first."""
    kind = BATCHNORM if chain.is_bn_like else AFFINE
    entry = FoldEntry(chain.label, chain.op_types, Outcome.LEFT, kind=kind)
    if chain.is_bn_like and settings.kept_by(entry.name) is not None:
        # No layer name in the detail: the Keras front end rewrites names it finds there.
        entry.reason, entry.detail = Reason.KEPT_BY_USER, "a keep pattern matches it"
        return entry
    if chain.skip is not None:
        entry.reason, entry.detail = chain.skip.reason, chain.skip.detail
        return entry
    backward_answer = _try_rules(context, chain, backward)
    answer = backward_answer
    if not isinstance(answer, Folded):
        forward_answer = _try_rules(context, chain, forward)
        if isinstance(forward_answer, Folded) or answer is None:
            answer = forward_answer
    if isinstance(answer, Folded):
        entry.outcome, entry.target, entry.via = answer.outcome, answer.target, answer.via
    elif isinstance(answer, Skip):
        entry.reason, entry.detail = answer.reason, answer.detail
    else:
        producer = chain.input.producer()
        where = f"{node_label(producer)}" if producer is not None else "the graph input"
        entry.reason = Reason.NO_LINEAR_NEIGHBOUR
        entry.detail = f"follows {where}, which no rule can fold into"
    return entry


def _fold_graph(
    graph: ir.Graph,
    names: NameFactory,
    backward: Sequence[Rule],
    forward: Sequence[Rule],
    settings: FoldSettings,
) -> list[FoldEntry]:
    context = FoldContext(graph, names)
    folded: list[FoldEntry] = []
    while True:
        left: list[FoldEntry] = []
        changed = False
        for chain in find_affine_chains(graph):
            if any(node.graph is not graph for node in chain.nodes):
                continue  # removed by an earlier fold in this pass
            current = refreshed(chain) if changed else chain
            if current is None:
                continue  # rewritten by an earlier fold in this pass: found again in the next
            entry = _fold_chain(context, current, backward, forward, settings)
            if entry.folded:
                folded.append(entry)
                changed = True
            elif chain.is_bn_like:
                left.append(entry)
        if not changed:
            return folded + left


def _dead_initializer_names(graph: ir.Graph) -> set[str]:
    return {
        name
        for name, value in graph.initializers.items()
        if not list(value.uses()) and not value.is_graph_input() and not value.is_graph_output()
    }


def _live_constants(graph: ir.Graph) -> set[int]:
    return {
        id(node)
        for node in graph
        if node.op_type == "Constant"
        and any(list(out.uses()) or out.is_graph_output() for out in node.outputs)
    }


def _drop_constants_made_dead(graph: ir.Graph, live_before: set[int]) -> None:
    live_now = _live_constants(graph)
    dead = [node for node in graph if id(node) in live_before and id(node) not in live_now]
    graph.remove(dead, safe=True)


def fold_model(
    model: ir.Model,
    *,
    settings: FoldSettings = ALL_FOLDS,
    backward_rules: Sequence[Rule] = BACKWARD_RULES,
    forward_rules: Sequence[Rule] = FORWARD_RULES,
) -> FoldPass:
    """Fold every BN and BN-like affine the rules can take, in place, and log each one.

    ``settings`` says which BNs stay (``keep``) and whether folds into the layers after a BN
    are allowed (``forward``). A model with nothing to fold comes back untouched (no
    metadata added, nothing dropped).
    """
    names = NameFactory(model)
    result = FoldPass(model)
    for graph in iter_graphs(model.graph):
        dead_before = _dead_initializer_names(graph)
        live_constants = _live_constants(graph)
        forward = forward_rules if settings.forward else ()
        entries = _fold_graph(graph, names, backward_rules, forward, settings)
        result.entries.extend(entries)
        if any(entry.folded for entry in entries):
            for name in _dead_initializer_names(graph) - dead_before:
                graph.initializers.pop(name)
            _drop_constants_made_dead(graph, live_constants)
    if result.changed:
        counts = result.counts()
        model.metadata_props[METADATA_KEY] = json.dumps(
            {
                key: counts[key]
                for key in (
                    "found",
                    "folded_into_previous",
                    "folded_into_next",
                    "left",
                    "affines_folded",
                )
            },
            sort_keys=True,
        )
    return result


__all__ = ["ALL_FOLDS", "METADATA_KEY", "FoldPass", "fold_model"]
