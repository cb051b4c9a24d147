"""The fold rules, listed explicitly: backward rules are tried first (DESIGN.md section 1)."""

from __future__ import annotations

from bnfold.rules.base import BackwardRule, Rule
from bnfold.rules.concat import ConcatThenAffine
from bnfold.rules.conv import ConvThenAffine
from bnfold.rules.conv_transpose import ConvTransposeThenAffine
from bnfold.rules.forward import AffineThenLinear
from bnfold.rules.forward_conv import AffineThenConv, AffineThenConvTranspose
from bnfold.rules.forward_gemm import AffineThenGemm
from bnfold.rules.forward_matmul import AffineThenMatMul
from bnfold.rules.gemm import GemmThenAffine
from bnfold.rules.matmul import MatMulThenAffine

LAYER_RULES: tuple[BackwardRule, ...] = (
    ConvThenAffine(),
    ConvTransposeThenAffine(),
    GemmThenAffine(),
    MatMulThenAffine(),
)

# Concat splits the affine over its inputs, each folded by the rule of its layer.
BACKWARD_RULES: tuple[Rule, ...] = (*LAYER_RULES, ConcatThenAffine(LAYER_RULES))

# One forward rule: a BN read by several layers folds into all of them or none, whatever
# their kinds, so the per-layer targets sit under one walk.
FORWARD_RULES: tuple[Rule, ...] = (
    AffineThenLinear(
        (AffineThenConv(), AffineThenConvTranspose(), AffineThenGemm(), AffineThenMatMul())
    ),
)

__all__ = ["BACKWARD_RULES", "FORWARD_RULES", "Rule"]
