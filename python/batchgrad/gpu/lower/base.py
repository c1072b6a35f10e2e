"""The contract between the registry's program and the WGSL kernels.

A program node (a registry op with its attributes, input buffers and output buffer) is lowered by
its family's rule into one or more `Launch` es: a WGSL entry point of `kernels/<family>.wgsl`, the
buffers it reads (bound to ``in0..in3``) and writes (``out0..out3``), up to 64 words of
parameters (``prm``: shapes, strides, scalars) and a workgroup grid. Rules are pure functions of
shapes and attributes: they run once per plan (per batch shape), never per step, and never
compute a derivative (the gradient nodes come from the registry's VJP rules like any other node).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_RANK = 8  # dimensions a kernel indexes (the parameter block holds shapes and strides)
META_WORDS = 64  # words of parameters per launch (one 256-byte uniform slice)
WG = 256  # threads per workgroup of the 1-D kernels (`lin` in prelude.wgsl)
MAX_GROUPS = 65535  # workgroups per grid dimension (WebGPU's default limit)


class GpuLimitError(ValueError):
    """A tensor or launch beyond what the device (or a kernel) supports, naming the limit."""


@dataclass(eq=False)
class Buf:
    """A GPU buffer of a plan: a program slot's value, a parameter, or scratch space."""

    shape: tuple[int, ...]
    label: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        # zero-size tensors still get a (never read) 16-byte buffer: bindings cannot be empty
        return max(4 * self.numel, 16)


@dataclass(eq=False)
class Launch:
    family: str
    entry: str
    reads: list[Buf]
    writes: list[Buf]
    meta: list
    groups: tuple[int, int, int]
    label: str = ""


@dataclass(eq=False)
class Node:
    op: str
    attrs: dict
    ins: list[Buf]
    out: Buf


def words(meta: Sequence) -> np.ndarray:
    """Parameters as u32 words: ints as u32 / i32 two's complement, floats as f32 bits."""
    if len(meta) > META_WORDS:
        raise GpuLimitError(f"kernel parameters: {len(meta)} words, the limit is {META_WORDS} (too many dimensions?)")
    w = np.zeros(META_WORDS, np.uint32)
    for i, v in enumerate(meta):
        if isinstance(v, (bool, int, np.integer)):
            w[i] = int(v) & 0xFFFFFFFF
        else:
            w[i] = np.float32(v).view(np.uint32)
    return w


def grid(groups: int) -> tuple[int, int, int]:
    """A 2-D grid of `groups` workgroups (x first, up to 65535 per dimension)."""
    if groups <= 0:
        return (0, 1, 1)
    gx = min(groups, MAX_GROUPS)
    gy = -(-groups // gx)
    if gy > MAX_GROUPS:
        raise GpuLimitError(f"{groups} workgroups exceed the grid limit of {MAX_GROUPS}x{MAX_GROUPS}")
    return (gx, gy, 1)


def threads(n: int) -> tuple[int, int, int]:
    """Grid for one thread per element of an n-element 1-D launch (workgroups of WG threads)."""
    return grid(-(-n // WG))


def check_rank(op: str, *shapes: Sequence[int]) -> None:
    for s in shapes:
        if len(s) > MAX_RANK:
            raise GpuLimitError(f"{op}: tensors of {len(s)} dimensions (shape {list(s)}); the GPU kernels index at most {MAX_RANK}")


def contiguous_strides(shape: Sequence[int]) -> list[int]:
    st, acc = [0] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        st[d] = acc
        acc *= shape[d]
    return st


def broadcast_strides(shape: Sequence[int], out: Sequence[int]) -> list[int]:
    """Strides of `shape` read at the broadcast shape `out` (0 along broadcast dimensions)."""
    pad = len(out) - len(shape)
    st = contiguous_strides(shape)
    return [0] * pad + [0 if shape[d] == 1 and out[pad + d] != 1 else st[d] for d in range(len(shape))]


def collapse(out: Sequence[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge adjacent dimensions that are contiguous for every operand (fewer index steps per
    element: same-shape operands become one dimension), and drop size-1 dimensions."""
    dims = [(out[d], [s[d] for s in strides]) for d in range(len(out)) if out[d] != 1]
    if not dims:
        return [1], [[0] for _ in strides]
    merged = [dims[0]]
    for size, st in dims[1:]:
        psize, pst = merged[-1]
        if all(p == s * size for p, s in zip(pst, st)):
            merged[-1] = (psize * size, st)
        else:
            merged.append((size, st))
    return [m[0] for m in merged], [[m[1][k] for m in merged] for k in range(len(strides))]


def elementwise_meta(op: str, out: Sequence[int], ins: Sequence[Sequence[int]], scalars: Sequence[float] = ()) -> list:
    """Parameters of a broadcasting elementwise launch (`ew_off` in unary.wgsl / binary.wgsl):
    [n, rank, s0, s1, s2, s3, shape[rank], strides of in0[rank], in1[rank], ...]."""
    check_rank(op, out, *ins)
    shape, strides = collapse(out, [broadcast_strides(s, out) for s in ins])
    sc = list(scalars) + [0.0] * (4 - len(scalars))
    meta = [math.prod(out), len(shape), *sc, *shape]
    for s in strides:
        meta += s
    return meta


Rule = Callable[["Lowering", Node], None]


@dataclass
class Lowering:
    """Collects the launches of a plan; rules call `launch` and `scratch`."""

    launches: list[Launch] = field(default_factory=list)
    scratch_bufs: list[Buf] = field(default_factory=list)

    def scratch(self, shape: Sequence[int], label: str = "scratch") -> Buf:
        b = Buf(tuple(int(d) for d in shape), label)
        self.scratch_bufs.append(b)
        return b

    def launch(self, family: str, entry: str, reads: Sequence[Buf], writes: Sequence[Buf], meta: Sequence,
               groups: tuple[int, int, int], label: str = "") -> None:
        if len(reads) > 4 or len(writes) > 4:
            raise ValueError(f"{family}.{entry}: at most 4 read and 4 written buffers per launch")
        words(meta)  # check the size now, where the rule can be named
        self.launches.append(Launch(family, entry, list(reads), list(writes), list(meta), groups, label))
