"""Lowering of rust/ops/reduce.rs's ops (sum, mean, max over axes): one launch each
(kernels/reduce.wgsl), one tree reduction per output element. `row_meta` (the row layout) is
shared with lower/nn.py."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .base import WG, Lowering, Node, check_rank, collapse, contiguous_strides, grid


def norm_axes(op: str, axes: Sequence[int], ndim: int) -> list[int]:
    """rust/shape.rs norm_axes: an empty list is every axis; negative axes count from the end."""
    if not axes:
        return list(range(ndim))
    out = []
    for a in axes:
        if a < -ndim or a >= ndim:
            raise ValueError(f"{op}: axis {a} is out of bounds for a tensor of dimension {ndim}")
        a = a + ndim if a < 0 else a
        if a in out:
            raise ValueError(f"{op}: duplicate axis {a}")
        out.append(a)
    return sorted(out)


def _pow2_ceil(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def row_meta(op: str, shape: Sequence[int], axes: Sequence[int], s0: float | int = 0.0, s1: float | int = 0) -> tuple[list, int]:
    """Rows = elements of the kept dims, each reducing the `axes` (sorted, normalised) of a
    contiguous tensor of `shape`: parameters of kernels/reduce.wgsl / nn.wgsl and the number of
    workgroups. [nrows, n, G, blocked, kr, rr, s0, s1, kept shape, kept strides, red shape, red strides]
    with adjacent dims merged where the strides allow (and size-1 dims dropped)."""
    check_rank(op, shape)
    st = contiguous_strides(shape)
    kept = [d for d in range(len(shape)) if d not in axes]
    nrows = math.prod(shape[d] for d in kept)
    n = math.prod(shape[d] for d in axes)
    ksh, (kst,) = collapse([shape[d] for d in kept], [[st[d] for d in kept]])
    rsh, (rst,) = collapse([shape[d] for d in axes], [[st[d] for d in axes]])
    # lanes per row: a power of two up to the workgroup, no more than the row needs
    lanes = min(WG, _pow2_ceil(n))
    g, blocked = WG // lanes, 1
    if rst[-1] != 1 and kst[-1] == 1 and nrows > 1:
        # a column reduction (consecutive rows adjacent in memory, the reduced dims strided):
        # rows interleaved in the workgroup so a warp reads consecutive addresses; up to 16 rows
        # per workgroup, fewer while that leaves under 128 workgroups (keep a big GPU busy)
        gc = min(16, _pow2_floor(ksh[-1]))
        while gc > 1 and -(-nrows // gc) < 128:
            gc //= 2
        g, blocked = max(g, gc), 0
    elif rst[-1] != 1:
        blocked = 0
    meta = [nrows, n, g, blocked, len(ksh), len(rsh), s0, s1, *ksh, *kst, *rsh, *rst]
    return meta, -(-nrows // g)


def reduce(lw: Lowering, n: Node) -> None:
    shape = n.ins[0].shape
    check_rank(n.op, shape, n.out.shape)
    axes = norm_axes(n.op, n.attrs.get("axes", ()), len(shape))
    cnt = math.prod(shape[d] for d in axes)
    if n.op == "max" and cnt == 0:
        raise ValueError(f"max: cannot reduce a zero-size tensor of shape {list(shape)} (no identity)")
    inv = float(np.float32(1.0) / np.float32(cnt)) if cnt else 0.0  # the CPU's f32 1/n (mean)
    meta, groups = row_meta(n.op, shape, axes, inv)
    lw.launch("reduce", "op_" + n.op, [n.ins[0]], [n.out], meta, grid(groups if n.out.numel else 0))


RULES = {op: reduce for op in ("sum", "mean", "max")}
