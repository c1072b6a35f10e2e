"""Lowering of rust/ops/binary.rs's ops (and `where`): one broadcasting elementwise launch each
(kernels/binary.wgsl)."""

from __future__ import annotations

from .base import Lowering, Node, elementwise_meta, threads

OPS = ("add", "sub", "mul", "div", "maximum", "minimum", "lt", "le", "gt", "ge", "eq", "ne", "relu_grad", "add_relu", "where")


def binary(lw: Lowering, n: Node) -> None:
    meta = elementwise_meta(n.op, n.out.shape, [b.shape for b in n.ins])
    lw.launch("binary", "op_" + n.op, n.ins, [n.out], meta, threads(n.out.numel))


RULES = {op: binary for op in OPS}
