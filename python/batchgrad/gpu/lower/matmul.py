"""Lowering of `matmul` (kernels/matmul.wgsl): batched, broadcast batch dims, `ta`/`tb` as strides,
split K when the output tiles alone would leave the GPU mostly idle (the weight gradients of a
training step: X^T G with K = batch)."""

from __future__ import annotations

import math

from .base import MAX_GROUPS, GpuLimitError, Lowering, Node, broadcast_strides, threads

TILE, TK = 64, 16
MAX_BATCH_RANK = 6
MIN_GROUPS = 128  # aim for at least this many workgroups before splitting K


def splits_for(tiles: int, K: int) -> int:
    """How many K-slices: enough workgroups to fill a GPU, each slice at least 256 deep."""
    if tiles >= MIN_GROUPS or K < 512:
        return 1
    return max(1, min(-(-MIN_GROUPS // tiles), K // 256, 64))


def matmul(lw: Lowering, n: Node) -> None:
    a, b = n.ins
    ta, tb = bool(n.attrs.get("ta", False)), bool(n.attrs.get("tb", False))
    sa, sb, out = a.shape, b.shape, n.out.shape
    batch = out[:-2]
    if len(batch) > MAX_BATCH_RANK:
        raise GpuLimitError(f"matmul: {len(batch)} batch dimensions (shapes {list(sa)} and {list(sb)}); the GPU kernel takes at most {MAX_BATCH_RANK}")
    M, N = out[-2], out[-1]
    K = sa[-2] if ta else sa[-1]
    # element strides of op(A) (m, k) and op(B) (k, n) inside one matrix
    sam, sak = (1, sa[-1]) if ta else (sa[-1], 1)
    sbk, sbn = (1, sb[-1]) if tb else (sb[-1], 1)
    amat, bmat = sa[-2] * sa[-1], sb[-2] * sb[-1]
    ast = [s * amat for s in broadcast_strides(sa[:-2], batch)]
    bst = [s * bmat for s in broadcast_strides(sb[:-2], batch)]
    nb = math.prod(batch)
    if M * N * nb == 0:
        return
    tiles = -(-M // TILE) * -(-N // TILE)
    splits = splits_for(tiles * nb, K)
    kchunk = -(-K // splits) if K else 0
    kchunk = -(-kchunk // TK) * TK
    splits = -(-K // kchunk) if kchunk else 1
    if nb * splits > MAX_GROUPS:
        raise GpuLimitError(f"matmul: {nb} batches exceed the grid limit of {MAX_GROUPS} (shapes {list(sa)} and {list(sb)})")
    pad = [0] * (MAX_BATCH_RANK - len(batch))
    meta = [M, N, K, sam, sak, sbk, sbn, nb, len(batch), kchunk, splits, 0,
            *batch, *pad, *ast, *pad, *bst, *pad]
    grid = (-(-N // TILE), -(-M // TILE), nb * splits)
    if grid[0] > MAX_GROUPS or grid[1] > MAX_GROUPS:
        raise GpuLimitError(f"matmul: output {M}x{N} needs a grid beyond {MAX_GROUPS} workgroups per dimension")
    if splits == 1:
        lw.launch("matmul", "op_matmul", [a, b], [n.out], meta, grid)
        return
    part = lw.scratch((splits, nb * M * N), "matmul split-K partials")
    lw.launch("matmul", "op_matmul", [a, b], [part], meta, grid)
    lw.launch("matmul", "matmul_splitk_sum", [part], [n.out], [nb * M * N, splits], threads(nb * M * N))


RULES = {"matmul": matmul}
