"""THE table of GPU kernels: registry op name -> lowering rule (which WGSL entry points of
kernels/<family>.wgsl it launches, with what parameters and grid). Families mirror
rust/ops/<family>.rs; a test walks `op_table()` against this table."""

from __future__ import annotations

from . import binary, matmul, movement, nn, reduce, unary
from .base import Lowering, Node, Rule

TABLE: dict[str, Rule] = {}
for _m in (unary, binary, reduce, movement, matmul, nn):
    TABLE.update(_m.RULES)

__all__ = ["TABLE", "Lowering", "Node", "Rule"]
