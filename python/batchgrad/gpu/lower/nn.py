"""Lowering of rust/ops/nn.rs's ops (softmax family, fused softmax cross-entropy): one launch
each (kernels/nn.wgsl), rows laid out by lower/reduce.py `row_meta`."""

from __future__ import annotations

from .base import Lowering, Node, check_rank, grid
from .reduce import norm_axes, row_meta


def along_axis(lw: Lowering, n: Node) -> None:
    """softmax / log_softmax: rows through every element along `axis` (written in place of the input's)."""
    shape = n.ins[0].shape
    nd = len(shape)
    axis = int(n.attrs.get("axis", -1))
    if nd == 0 or not -nd <= axis < nd:
        raise ValueError(f"{n.op}: axis {axis} is out of bounds for a tensor of dimension {nd}")
    meta, groups = row_meta(n.op, shape, [axis % nd])
    lw.launch("nn", "op_" + n.op, [n.ins[0]], [n.out], meta, grid(groups if n.out.numel else 0))


def logsumexp(lw: Lowering, n: Node) -> None:
    shape = n.ins[0].shape
    check_rank(n.op, n.out.shape)
    meta, groups = row_meta(n.op, shape, norm_axes(n.op, n.attrs.get("axes", ()), len(shape)))
    lw.launch("nn", "op_logsumexp", [n.ins[0]], [n.out], meta, grid(groups if n.out.numel else 0))


def _xent_shapes(n: Node) -> None:
    z, y = n.ins[0].shape, n.ins[1].shape
    if len(z) != 2 or len(y) != 1 or y[0] != z[0]:
        raise ValueError(f"{n.op}: expected logits of shape (N, C) and labels of shape (N,), got {list(z)} and {list(y)}")


def softmax_xent(lw: Lowering, n: Node) -> None:
    _xent_shapes(n)
    meta, groups = row_meta(n.op, n.ins[0].shape, [1])
    lw.launch("nn", "op_softmax_xent", n.ins[:2], [n.out], meta, grid(groups if n.out.numel else 0))


def softmax_xent_backward(lw: Lowering, n: Node) -> None:
    _xent_shapes(n)
    rows, gs = n.ins[0].shape[0], n.ins[2].shape
    if tuple(gs) != (rows,) and n.ins[2].numel != 1:
        raise ValueError(f"softmax_xent_backward: gradient of shape {list(gs)} does not match {rows} examples")
    # s0: the stride of g over the rows (one element broadcasts)
    meta, groups = row_meta(n.op, n.ins[0].shape, [1], 0 if n.ins[2].numel == 1 else 1)
    lw.launch("nn", "op_softmax_xent_backward", n.ins[:3], [n.out], meta, grid(groups if n.out.numel else 0))


RULES = {"softmax": along_axis, "log_softmax": along_axis, "logsumexp": logsumexp,
         "softmax_xent": softmax_xent, "softmax_xent_backward": softmax_xent_backward}
