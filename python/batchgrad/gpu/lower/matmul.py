"""Lowering of `matmul` (kernels/matmul.wgsl): batched, broadcast batch dims, `ta`/`tb` as strides.

Per problem (M, N, K, batch) the rule picks one of three tile shapes and a number of K-splits with
a small cost model of a large GPU (`cost`): bigger tiles do more work per byte of workgroup
memory, smaller ones waste less on ragged edges and make more workgroups; splitting K (partial
products into scratch, then `matmul_splitk_sum` adds them in a fixed order) fills the GPU when the
output has few tiles and K is long (the weight gradients of a training step: X^T G with K = batch).
"""

from __future__ import annotations

import math

from .base import GpuLimitError, Lowering, Node, broadcast_strides, collapse, grid, threads

# entry point: (square output tile, K per slice, relative multiply-add rate of one SM,
# workgroups per SM to reach that rate: fewer run at rate x count / that). Guesses from the
# register blocking (8x8, 4x4, 4x1 outputs per thread: multiply-adds per workgroup-memory read),
# to be refined with `benches/gpu_matmul.py --sweep` on a real GPU.
KERNELS = {
    "mm_big": (128, 8, 1.0, 2),
    "mm_mid": (64, 16, 0.55, 4),
    "mm_small": (32, 32, 0.25, 4),
}
SMS = 132  # multiprocessors of the GPU the model imagines (an H100); only shapes the choice
MAX_BATCH_RANK = 6
MIN_CHUNK = 256  # K-slices of a split are at least this deep
MAX_SPLITS = 64
MAX_PARTIALS = 1 << 24  # floats of split-K scratch (64 MiB)
SPLIT_FLOAT = 0.1  # cost of one partial float (written, read back, added), in per-SM multiply-adds
SPLIT_LAUNCH = 5e4  # cost of the extra summing launch (a few microseconds), same unit
STAGE_LATENCY = 5e3  # a K-slice's global-load latency, paid once per slice (small problems)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def cost(entry: str, M: int, N: int, K: int, nb: int, splits: int) -> tuple[float, int]:
    """Modelled time of a launch plan and its K chunk, in multiply-adds of one SM at mm_big's full
    rate: the busiest SM's workgroups at their rate, plus the latency of each K-slice (which
    dominates when the GPU is nearly idle), plus the split-K traffic and launch."""
    tile, bk, rate, occ = KERNELS[entry]
    kc = cdiv(cdiv(K, splits), bk) * bk
    wgs = nb * cdiv(M, tile) * cdiv(N, tile) * cdiv(K, kc) if K else nb * cdiv(M, tile) * cdiv(N, tile)
    per_sm = cdiv(wgs, SMS)  # workgroups on the busiest multiprocessor
    t = per_sm * tile * tile * max(kc, bk) / (rate * min(1.0, per_sm / occ)) + STAGE_LATENCY * cdiv(kc, bk)
    if splits > 1:
        t += SPLIT_FLOAT * splits * nb * M * N + SPLIT_LAUNCH
    return t, kc


def choose(M: int, N: int, K: int, nb: int) -> tuple[str, int]:
    """(entry point, splits) of least modelled cost."""
    best = None
    for entry in KERNELS:
        top = min(MAX_SPLITS, K // MIN_CHUNK, MAX_PARTIALS // max(1, nb * M * N))
        for s in range(1, max(1, top) + 1):
            t, kc = cost(entry, M, N, K, nb, s)
            if K and cdiv(K, kc) < s:  # rounding the chunk up left fewer splits: seen already
                continue
            if best is None or t < best[0]:
                best = (t, entry, s)
    return best[1], best[2]


def matmul(lw: Lowering, n: Node, entry: str | None = None, splits: int | None = None) -> None:
    """The rule; `entry` / `splits` force a kernel and a split count (benches, tests)."""
    a, b = n.ins
    ta, tb = bool(n.attrs.get("ta", False)), bool(n.attrs.get("tb", False))
    sa, sb, out = a.shape, b.shape, n.out.shape
    batch = out[:-2]
    M, N = out[-2], out[-1]
    K = sa[-2] if ta else sa[-1]
    nb = math.prod(batch)
    if M * N * nb == 0:
        return
    # element strides of op(A) along (m, k) and op(B) along (k, n) inside one matrix
    sam, sak = (1, sa[-1]) if ta else (sa[-1], 1)
    sbk, sbn = (1, sb[-1]) if tb else (sb[-1], 1)
    amat, bmat = sa[-2] * sa[-1], sb[-2] * sb[-1]
    bshape, (ast, bst) = collapse(batch, [broadcast_strides(sa[:-2], batch), broadcast_strides(sb[:-2], batch)])
    if len(bshape) > MAX_BATCH_RANK:
        raise GpuLimitError(f"matmul: {len(bshape)} batch dimensions (shapes {list(sa)} and {list(sb)}); the GPU kernel takes at most {MAX_BATCH_RANK}")
    if entry is None:
        entry, splits = choose(M, N, K, nb)
    tile, bk = KERNELS[entry][:2]
    splits = max(1, min(splits or 1, K))
    kc = cdiv(cdiv(K, splits), bk) * bk
    splits = cdiv(K, kc) if K else 1
    pad = [0] * (MAX_BATCH_RANK - len(bshape))
    meta = [M, N, K, sam, sak, sbk, sbn, nb, len(bshape), kc, splits, 0,
            *bshape, *pad, *[s * amat for s in ast], *pad, *[s * bmat for s in bst], *pad]
    groups = grid(nb * splits * cdiv(M, tile) * cdiv(N, tile))
    if splits == 1:
        lw.launch("matmul", entry, [a, b], [n.out], meta, groups, f"matmul {entry}")
        return
    part = lw.scratch((splits, nb * M * N), "matmul split-K partials")
    lw.launch("matmul", entry, [a, b], [part], meta, groups, f"matmul {entry} split {splits}")
    lw.launch("matmul", "matmul_splitk_sum", [part], [n.out], [nb * M * N, splits], threads(nb * M * N), "matmul split-K sum")


RULES = {"matmul": matmul}
