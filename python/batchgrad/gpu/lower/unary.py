"""Lowering of rust/ops/unary.rs's ops: one broadcasting elementwise launch each (kernels/unary.wgsl)."""

from __future__ import annotations

from .base import Lowering, Node, elementwise_meta, threads

OPS = ("neg", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs", "sign", "pow_scalar", "clip")


def _scalars(n: Node) -> list[float]:
    if n.op == "pow_scalar":
        return [float(n.attrs["p"])]
    if n.op == "clip":
        return [float(n.attrs["lo"]), float(n.attrs["hi"])]
    return []


def unary(lw: Lowering, n: Node) -> None:
    meta = elementwise_meta(n.op, n.out.shape, [n.ins[0].shape], _scalars(n))
    lw.launch("unary", "op_" + n.op, n.ins, [n.out], meta, threads(n.out.numel))


RULES = {op: unary for op in OPS}
