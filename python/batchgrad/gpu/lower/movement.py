"""Lowering of rust/ops/movement.rs's ops (kernels/movement.wgsl): strided gathers for the views,
a lattice test for slice_grad, index tables (constant buffers) for take / scatter_add, and one
copy launch per input for concatenate / stack. Every output element is written by one thread."""

from __future__ import annotations

import math

import numpy as np

from .base import GpuLimitError, Lowering, Node, broadcast_strides, check_rank, collapse, contiguous_strides, threads

F32_EXACT = 1 << 24  # index tables hold f32 values: integers are exact up to 2**24


def _axis(a: int, nd: int) -> int:
    return a + nd if a < 0 else a


def _gather(lw: Lowering, n: Node, offset: int, strides: list[int]) -> None:
    """out[i] = in0[offset + sum_d idx_d(i) * strides[d]] over the output's shape."""
    check_rank(n.op, n.ins[0].shape, n.out.shape)
    shape, (st,) = collapse(n.out.shape, [strides])  # fewer index steps: contiguous runs merge
    meta = [n.out.numel, len(shape), offset, 0, *shape, *st]
    lw.launch("movement", "op_" + n.op, n.ins, [n.out], meta, threads(n.out.numel))


def reshape(lw: Lowering, n: Node) -> None:
    _gather(lw, n, 0, contiguous_strides(n.out.shape))  # collapses to one contiguous dimension


def transpose(lw: Lowering, n: Node) -> None:
    sh = n.ins[0].shape
    perm = [_axis(int(p), len(sh)) for p in n.attrs.get("perm", ())] or list(range(len(sh)))[::-1]
    st = contiguous_strides(sh)
    _gather(lw, n, 0, [st[p] for p in perm])


def broadcast_to(lw: Lowering, n: Node) -> None:
    _gather(lw, n, 0, broadcast_strides(n.ins[0].shape, n.out.shape))


def slice_(lw: Lowering, n: Node) -> None:
    st = contiguous_strides(n.ins[0].shape)
    start, step = n.attrs["start"], n.attrs["step"]
    off = sum(int(s) * st[d] for d, s in enumerate(start)) if n.out.numel else 0
    _gather(lw, n, off, [int(step[d]) * st[d] if d < len(step) else st[d] for d in range(len(st))])


def slice_grad(lw: Lowering, n: Node) -> None:
    g, shape = n.ins[0].shape, n.out.shape
    check_rank(n.op, g, shape)
    start, step, gst = n.attrs["start"], n.attrs["step"], contiguous_strides(g)
    # per dimension (size, start, step, len, gradient stride); unsliced ones are (size, 0, 1, size)
    dims = [(shape[d], int(start[d]), int(step[d]), g[d], gst[d]) if d < len(start) else (shape[d], 0, 1, g[d], gst[d])
            for d in range(len(shape))]
    merged: list[tuple] = []
    for dm in dims:  # merge runs of whole dimensions (start 0, step 1, full length): one index step each
        if merged and dm[1:3] == (0, 1) and dm[0] == dm[3] and merged[-1][1:3] == (0, 1) and merged[-1][0] == merged[-1][3]:
            merged[-1] = (merged[-1][0] * dm[0], 0, 1, merged[-1][3] * dm[3], dm[4])
        else:
            merged.append(dm)
    meta = [n.out.numel, len(merged)]
    for dm in merged:
        meta += list(dm)
    lw.launch("movement", "op_slice_grad", n.ins, [n.out], meta, threads(n.out.numel))


def _norm_idx(n: Node, dim: int) -> np.ndarray:
    ix = np.asarray(n.attrs["idx"], np.int64).reshape(-1)
    ix = np.where(ix < 0, ix + dim, ix)
    if ix.size and (ix.min() < 0 or ix.max() >= dim):
        raise IndexError(f"{n.op}: an index is out of bounds for an axis of size {dim}")
    return ix


def _limit(op: str, what: str, v: int) -> None:
    if v > F32_EXACT:
        raise GpuLimitError(f"{op}: {what} {v} exceeds the GPU index tables' limit of {F32_EXACT}")


def take(lw: Lowering, n: Node) -> None:
    sh = n.ins[0].shape
    check_rank(n.op, sh, n.out.shape)
    a = _axis(int(n.attrs.get("axis", 0)), len(sh))
    ix = _norm_idx(n, sh[a])
    _limit(n.op, "axis size", sh[a])
    tab = lw.scratch((len(ix),), "take indices")
    tab.data = ix.astype(np.float32)  # uploaded once by the plan
    meta = [n.out.numel, len(ix), sh[a], math.prod(sh[a + 1:])]
    lw.launch("movement", "op_take", [n.ins[0], tab], [n.out], meta, threads(n.out.numel))


def scatter_add(lw: Lowering, n: Node) -> None:
    sh = n.ins[0].shape
    check_rank(n.op, sh, n.out.shape)
    a = _axis(int(n.attrs.get("axis", 0)), len(sh))
    dim = n.out.shape[a]
    ix = _norm_idx(n, dim)
    _limit(n.op, "index count", len(ix))
    # CSR of the inverse map: row i's sources js[start[i]:start[i+1]] in increasing j (a stable
    # sort), so each output element sums its sources in the CPU's order
    js = np.argsort(ix, kind="stable")
    start = np.concatenate([[0], np.cumsum(np.bincount(ix, minlength=dim))])
    tab = lw.scratch((dim + 1 + len(ix),), "scatter_add index table")
    tab.data = np.concatenate([start, js]).astype(np.float32)
    meta = [n.out.numel, len(ix), dim, math.prod(sh[a + 1:])]
    lw.launch("movement", "op_scatter_add", [n.ins[0], tab], [n.out], meta, threads(n.out.numel))


def concat(lw: Lowering, n: Node) -> None:
    out = n.out.shape
    check_rank(n.op, out)
    stack = n.op == "stack"
    a = _axis(int(n.attrs.get("axis", 0)), len(out))
    inner = math.prod(out[a + 1:])
    at = 0
    for x in n.ins:  # one launch per input: any number of inputs
        w = (1 if stack else x.shape[a]) * inner
        lw.launch("movement", "op_" + n.op, [x], [n.out], [x.numel, w, out[a] * inner, at], threads(x.numel))
        at += w


RULES = {"reshape": reshape, "transpose": transpose, "broadcast_to": broadcast_to, "slice": slice_, "slice_grad": slice_grad,
         "take": take, "scatter_add": scatter_add, "concatenate": concat, "stack": concat}
