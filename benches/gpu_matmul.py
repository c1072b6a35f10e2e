"""The WGSL matmul (kernels/matmul.wgsl) alone: TFLOP/s at n = 1024, 2048, 4096 square and at
the products of an MLP 784-256-256-10 training step (forward, X^T G weight gradients with
`ta`, G W^T input gradients with `tb`) at batch 128, 2048, 8192; beside torch.matmul on CUDA
(float32, TF32 off) when torch with CUDA is there.

    python benches/gpu_matmul.py            # full sizes (a real GPU)
    python benches/gpu_matmul.py --quick    # small sizes, few repeats (lavapipe)
    python benches/gpu_matmul.py --sweep    # also every entry point, unsplit and split (tuning
                                            # lower/matmul.py's KERNELS table)

Ours: the launches of the `matmul` rule (the cost model's kernel and K-splits, or forced ones)
`--inner` times back to back in one compute pass of one command buffer (encoded before the
clock starts), closed by one 4-byte read-back that waits for the GPU; median over `--repeats`.
Each case is first checked against numpy in float64 (output poisoned with NaN beforehand).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from batchgrad.gpu import device as _device
from batchgrad.gpu.lower import matmul as mm
from batchgrad.gpu.lower.base import Buf, Lowering, Node

R = np.random.default_rng(0)


def out_shape(sa, sb, ta, tb):
    M = sa[-1] if ta else sa[-2]
    N = sb[-2] if tb else sb[-1]
    batch = np.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2]))
    return (*batch, M, N)


def reference(A, B, ta, tb):
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    return np.matmul(np.swapaxes(A64, -1, -2) if ta else A64, np.swapaxes(B64, -1, -2) if tb else B64)


class Case:
    """One product on the device: its buffers, launches (pipelines, bind groups) and timing."""

    def __init__(self, A: np.ndarray, B: np.ndarray, ta=False, tb=False, entry=None, splits=None):
        dev = self.dev = _device.get()
        self.A, self.B, self.ta, self.tb = A, B, ta, tb
        a, b = Buf(A.shape, "A"), Buf(B.shape, "B")
        self.c = Buf(out_shape(A.shape, B.shape, ta, tb), "C")
        lw = Lowering()
        mm.matmul(lw, Node("matmul", {"ta": ta, "tb": tb}, [a, b], self.c), entry, splits)
        self.launches = [l for l in lw.launches if l.groups[0] > 0]
        self.what = " + ".join(l.label.replace("matmul ", "") for l in self.launches if "sum" not in l.entry) or "none"
        self.bufs = {x: dev.buffer(x.nbytes, x.label) for x in (a, b, self.c, *lw.scratch_bufs)}
        for x, v in ((a, A), (b, B)):
            if v.size:
                dev.queue.write_buffer(self.bufs[x], 0, np.ascontiguousarray(v, np.float32))
        meta, offs = dev.meta_buffer(self.launches)
        self.cmds = [(dev.pipeline(l.family, l.entry), dev.bind_group(l, self.bufs, meta, o), l.groups)
                     for l, o in zip(self.launches, offs)]

    def command(self, inner: int):
        enc = self.dev.device.create_command_encoder()
        cp = enc.begin_compute_pass()
        for _ in range(inner):
            for pipe, bg, groups in self.cmds:
                cp.set_pipeline(pipe)
                cp.set_bind_group(0, bg)
                cp.dispatch_workgroups(*groups)
        cp.end()
        return enc.finish()

    def run(self) -> np.ndarray:
        """One product, output poisoned with NaN first (every element must be written)."""
        q, cb = self.dev.queue, self.bufs[self.c]
        if self.c.numel:
            q.write_buffer(cb, 0, np.full(self.c.numel, np.nan, np.float32))
        q.submit([self.command(1)])
        if not self.c.numel:
            return np.zeros(self.c.shape, np.float32)
        return np.frombuffer(q.read_buffer(cb, 0, 4 * self.c.numel), np.float32).reshape(self.c.shape).copy()

    def error(self, ref: np.ndarray) -> float:
        """||C - ref|| / ||ref|| against the float64 product (inf if any output is not finite)."""
        got = self.run()
        if not np.all(np.isfinite(got)):
            return float("inf")
        return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))

    def seconds(self, repeats: int, inner: int) -> float:
        q, cb = self.dev.queue, self.bufs[self.c]
        q.submit([self.command(1)])
        q.read_buffer(cb, 0, 4)  # warm-up
        ts = []
        for _ in range(repeats):
            cmd = self.command(inner)
            t0 = time.perf_counter()
            q.submit([cmd])
            q.read_buffer(cb, 0, 4)
            ts.append((time.perf_counter() - t0) / inner)
        return float(np.median(ts))


def torch_seconds(A, B, ta, tb, repeats: int, inner: int):
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = torch.from_numpy(A).cuda(), torch.from_numpy(B).cuda()
    a, b = (a.mT if ta else a), (b.mT if tb else b)
    torch.matmul(a, b)
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(inner):
            torch.matmul(a, b)
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) / 1e3 / inner)
    return float(np.median(ts))


def mlp_cases(B: int):
    """The products of one SGD step of the MLP 784-256-256-10 (nn.Linear: y = x @ W)."""
    r = lambda *s: R.standard_normal(s, dtype=np.float32)  # noqa: E731
    return [
        (f"B={B} X@W1", r(B, 784), r(784, 256), False, False),
        (f"B={B} H1@W2", r(B, 256), r(256, 256), False, False),
        (f"B={B} H2@W3", r(B, 256), r(256, 10), False, False),
        (f"B={B} dW3=H2^T G", r(B, 256), r(B, 10), True, False),
        (f"B={B} dH2=G W3^T", r(B, 10), r(256, 10), False, True),
        (f"B={B} dW2=H1^T G", r(B, 256), r(B, 256), True, False),
        (f"B={B} dH1=G W2^T", r(B, 256), r(256, 256), False, True),
        (f"B={B} dW1=X^T G", r(B, 784), r(B, 256), True, False),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (software adapters)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--inner", type=int, default=None, help="back-to-back launches per timed submit")
    ap.add_argument("--sweep", action="store_true", help="also time every entry point, unsplit and at its best split")
    args = ap.parse_args()
    squares = (64, 128, 256) if args.quick else (1024, 2048, 4096)
    batches = (32, 128) if args.quick else (128, 2048, 8192)
    repeats = args.repeats or (3 if args.quick else 15)
    inner = args.inner or (2 if args.quick else 20)
    dev = _device.get()
    print(f"# WGSL matmul on {dev.name}; median of {repeats} x {inner} back-to-back launches")
    cases = [(f"n={n}", R.standard_normal((n, n), dtype=np.float32), R.standard_normal((n, n), dtype=np.float32), False, False)
             for n in squares]
    for B in batches:
        cases += mlp_cases(B)
    print("| case | M x N x K | kernel | rel. error | ms | TFLOP/s | torch ms | torch TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, A, Bm, ta, tb in cases:
        *_, M, N = out_shape(A.shape, Bm.shape, ta, tb)
        K = A.shape[-2] if ta else A.shape[-1]
        flop = 2.0 * M * N * K
        variants = [(None, None)]
        if args.sweep:
            for e in mm.KERNELS:
                best = min(range(1, max(1, min(mm.MAX_SPLITS, K // mm.MIN_CHUNK)) + 1), key=lambda s: mm.cost(e, M, N, K, 1, s)[0])
                variants += [(e, 1)] + ([(e, best)] if best > 1 else [])
        ref = reference(A, Bm, ta, tb)
        tt = torch_seconds(A, Bm, ta, tb, repeats, inner)
        tcol = f"{tt * 1e3:.3f} | {flop / tt / 1e12:.3g}" if tt else "- | -"
        for entry, splits in variants:
            c = Case(A, Bm, ta, tb, entry, splits)
            err = c.error(ref)
            t = c.seconds(repeats, inner)
            label = c.what if entry is None else f"(forced) {c.what}"
            print(f"| {name} | {M}x{N}x{K} | {label} | {err:.1e} | {t * 1e3:.3f} | {flop / t / 1e12:.3g} | {tcol} |")
            sys.stdout.flush()
            if not err < 1e-5:
                print(f"ERROR: {name} {label}: relative error {err}", file=sys.stderr)


if __name__ == "__main__":
    main()
