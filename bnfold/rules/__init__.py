"""The fold rules, listed explicitly: backward rules are tried first (DESIGN.md section 1)."""

from __future__ import annotations

from bnfold.rules.base import Rule
from bnfold.rules.conv import ConvThenAffine
from bnfold.rules.conv_transpose import ConvTransposeThenAffine
from bnfold.rules.gemm import GemmThenAffine
from bnfold.rules.matmul import MatMulThenAffine

BACKWARD_RULES: tuple[Rule, ...] = (
    ConvThenAffine(),
    ConvTransposeThenAffine(),
    GemmThenAffine(),
    MatMulThenAffine(),
)

FORWARD_RULES: tuple[Rule, ...] = ()

__all__ = ["BACKWARD_RULES", "FORWARD_RULES", "Rule"]
