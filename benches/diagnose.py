"""Measurements behind the shortfall list in benches/RESULTS.md (not a benchmark of record).

    python benches/diagnose.py [--quick]

Prints markdown tables:
  1. per-call overhead of tiny ops (1x1 tensors): batchgrad Tensor API vs raw `_core.apply` vs torch
     vs numpy, recording and not recording;
  2. the GEMMs of one MLP 784-256-256-10 training step, at 1 and 2 threads, per batch size
     (forward NN, and the backward's TN / NT reads);
  3. whether `_core.sgd_step` updates parameters in place (buffer address before / after) and its
     time against an in-place numpy update of the same parameters;
  4. elementwise ops and the bias-gradient column sum at the step's activation sizes (B x 256), at 1
     and 2 threads (where the kernels' parallel threshold starts to apply).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

import batchgrad as bg

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

perf = time.perf_counter
REPEATS = 9


def med_time(f, target: float = 0.02) -> float:
    """Median seconds per call over REPEATS repeats of a calibrated loop."""
    for _ in range(3):
        f()
    n = 1
    while True:
        t0 = perf()
        for _ in range(n):
            f()
        dt = perf() - t0
        if dt > target / 4:
            break
        n *= 4
    n = max(1, int(n * target / dt))
    out = []
    for _ in range(REPEATS):
        t0 = perf()
        for _ in range(n):
            f()
        out.append((perf() - t0) / n)
    return statistics.median(out)


def table(title, head, rows):
    print(f"### {title}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def tiny_ops() -> None:
    bg.set_num_threads(1)
    a, b = bg.tensor([[1.5]]), bg.tensor([[2.0]])
    ag = bg.tensor([[1.5]], requires_grad=True)
    va, vb, vag = a._v, b._v, ag._v
    core = bg._core
    rows = []
    cases = [
        ("add", lambda: a + b, lambda: core.apply("add", [va, vb]), "a + b"),
        ("mul by python float", lambda: a * 2.0, lambda: core.apply("mul", [va, core.scalar(2.0)]), "a * 2.0"),
        ("matmul", lambda: a @ b, lambda: core.apply("matmul", [va, vb]), "a @ b"),
        ("relu", lambda: bg.relu(a), lambda: core.apply("relu", [va]), "relu"),
        ("sum", lambda: a.sum(), lambda: core.apply("sum", [va], {"axes": [], "keepdims": False}), "sum"),
    ]
    if torch is not None:
        torch.set_num_threads(1)
        ta, tb = torch.tensor([[1.5]]), torch.tensor([[2.0]])
        tag = torch.tensor([[1.5]], requires_grad=True)
        tfn = {"a + b": (lambda: ta + tb, lambda: tag + tb), "a * 2.0": (lambda: ta * 2.0, lambda: tag * 2.0),
               "a @ b": (lambda: ta @ tb, lambda: tag @ tb), "relu": (lambda: torch.relu(ta), lambda: torch.relu(tag)),
               "sum": (lambda: ta.sum(), lambda: tag.sum())}
    na, nb = np.array([[1.5]], np.float32), np.array([[2.0]], np.float32)
    nfn = {"a + b": lambda: na + nb, "a * 2.0": lambda: na * 2.0, "a @ b": lambda: na @ nb,
           "relu": lambda: np.maximum(na, 0), "sum": lambda: na.sum()}
    grad_cases = {"a + b": lambda: ag + b, "a * 2.0": lambda: ag * 2.0, "a @ b": lambda: ag @ b,
                  "relu": lambda: bg.relu(ag), "sum": lambda: ag.sum()}
    raw_grad = {"a + b": lambda: core.apply("add", [vag, vb]), "a * 2.0": lambda: core.apply("mul", [vag, core.scalar(2.0)]),
                "a @ b": lambda: core.apply("matmul", [vag, vb]), "relu": lambda: core.apply("relu", [vag]),
                "sum": lambda: core.apply("sum", [vag], {"axes": [], "keepdims": False})}
    for name, f_api, f_raw, key in cases:
        with bg.no_grad():
            t_api, t_raw = med_time(f_api), med_time(f_raw)
        t_api_g, t_raw_g = med_time(grad_cases[key]), med_time(raw_grad[key])
        t_np = med_time(nfn[key])
        if torch is not None:
            with torch.no_grad():
                t_th = med_time(tfn[key][0])
            t_th_g = med_time(tfn[key][1])
        else:
            t_th = t_th_g = float("nan")
        us = lambda v: f"{v * 1e6:.2f}"  # noqa: E731
        rows.append([name, us(t_api), us(t_raw), us(t_api_g), us(t_raw_g), us(t_th), us(t_th_g), us(t_np)])
    table("1. Per-call time of tiny ops (1x1 float32), microseconds (median)",
          ["op", "bg Tensor, no_grad", "bg `_core.apply`, no_grad", "bg Tensor, recording", "bg `_core.apply`, recording",
           "torch, no_grad", "torch, recording", "numpy"], rows)


def step_gemms(batches) -> None:
    rng = np.random.default_rng(0)
    rows = []
    tot = {}

    def T(*s):
        return bg.tensor(rng.standard_normal(s, dtype=np.float32))

    for b in batches:
        cases = [("fwd x@W1", T(b, 784), T(784, 256), 0, 0), ("fwd h1@W2", T(b, 256), T(256, 256), 0, 0),
                 ("fwd h2@W3", T(b, 256), T(256, 10), 0, 0), ("dW3 = h2^T g (TN)", T(b, 256), T(b, 10), 1, 0),
                 ("dh2 = g W3^T (NT)", T(b, 10), T(256, 10), 0, 1), ("dW2 = h1^T g (TN)", T(b, 256), T(b, 256), 1, 0),
                 ("dh1 = g W2^T (NT)", T(b, 256), T(256, 256), 0, 1), ("dW1 = x^T g (TN)", T(b, 784), T(b, 256), 1, 0)]
        for name, x, y, ta, tb in cases:
            r = []
            for t in (1, 2):
                bg.set_num_threads(t)
                with bg.no_grad():
                    r.append(med_time(lambda: bg._core.apply("matmul", [x._v, y._v], {"ta": bool(ta), "tb": bool(tb)})))
            sa, sb = x.shape, y.shape
            m = sa[1] if ta else sa[0]
            k = sa[0] if ta else sa[1]
            n = sb[0] if tb else sb[1]
            tot.setdefault(b, [0.0, 0.0])
            tot[b][0] += r[0]
            tot[b][1] += r[1]
            rows.append([str(b), name, f"{m}x{k}x{n}", f"{r[0] * 1e6:.1f}", f"{r[1] * 1e6:.1f}", f"{r[0] / r[1]:.2f}"])
        rows.append([str(b), "**all 8 GEMMs**", "", f"{tot[b][0] * 1e6:.1f}", f"{tot[b][1] * 1e6:.1f}", f"{tot[b][0] / tot[b][1]:.2f}"])
    table("2. The GEMMs of one training step (m x k x n), microseconds at 1 and 2 threads",
          ["batch", "product", "m x k x n", "t1 us", "t2 us", "t2 speed-up"], rows)


def sgd_inplace() -> None:
    rng = np.random.default_rng(0)
    shapes = [(784, 256), (256,), (256, 256), (256,), (256, 10), (10,)]
    ps = [bg.tensor(rng.standard_normal(s, dtype=np.float32), requires_grad=True) for s in shapes]
    for p in ps:
        p.grad = bg.tensor(rng.standard_normal(p.shape, dtype=np.float32))
    vs = [p._v for p in ps]

    def addr(p):
        a = p._v.numpy()
        v = a.__array_interface__["data"][0]
        del a
        return v

    moved = 0
    for _ in range(4):
        before = addr(ps[0])
        bg._core.sgd_step(vs, [], 0.01, 0.0, 0.0, False, 0.0, False, False)
        moved += addr(ps[0]) != before
    rows = []
    for t in (1, 2):
        bg.set_num_threads(t)
        rows.append([f"bg `_core.sgd_step`, {t} thread(s)",
                     f"{med_time(lambda: bg._core.sgd_step(vs, [], 0.01, 0.0, 0.0, False, 0.0, False, False)) * 1e6:.1f}"])
    nps = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    ngs = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    tmp = [np.empty_like(g) for g in ngs]

    def np_inplace():
        for p, g, t in zip(nps, ngs, tmp):
            np.multiply(g, -0.01, out=t)
            np.add(p, t, out=p)

    rows.append(["numpy in place (`multiply(out=)`, `add(out=)`), 1 thread", f"{med_time(np_inplace) * 1e6:.1f}"])
    if torch is not None:
        torch.set_num_threads(1)
        tps = [torch.from_numpy(p.copy()) for p in nps]
        tgs = [torch.from_numpy(g.copy()) for g in ngs]
        rows.append(["torch `p.add_(g, alpha=-lr)` per parameter, 1 thread",
                     f"{med_time(lambda: [p.add_(g, alpha=-0.01) for p, g in zip(tps, tgs)]) * 1e6:.1f}"])
    print(f"_core.sgd_step moved the 784x256 weight's buffer to a new address in {moved} of 4 steps "
          f"({'copy-on-write copy every step' if moved else 'in place'}).\n")
    table("3. SGD update of the MLP's 269,322 parameters, microseconds (median)", ["update", "us"], rows)


def small_maps(batches=(64, 128, 512, 2048)) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        x = bg.tensor(rng.standard_normal((b, 256), dtype=np.float32))
        bias = bg.tensor(rng.standard_normal(256, dtype=np.float32))
        ops = [("relu(x)", lambda: bg.relu(x)), ("x + bias", lambda: x + bias), ("x.sum(axis=0)", lambda: x.sum(axis=0))]
        for name, f in ops:
            r = []
            for t in (1, 2):
                bg.set_num_threads(t)
                with bg.no_grad():
                    r.append(med_time(f))
            rows.append([f"{b} x 256 ({b * 256:,})", name, f"{r[0] * 1e6:.1f}", f"{r[1] * 1e6:.1f}", f"{r[0] / r[1]:.2f}"])
    table("4. Elementwise ops at the step's activation sizes, microseconds at 1 and 2 threads",
          ["shape (elements)", "op", "t1 us", "t2 us", "t2 speed-up"], rows)


def main() -> None:
    global REPEATS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        REPEATS = 5
    print(f"batchgrad {bg.__version__}, numpy {np.__version__}, torch {torch.__version__ if torch else '-'}, "
          f"nproc {os.cpu_count()}\n")
    tiny_ops()
    step_gemms((1, 32, 128, 512))
    sgd_inplace()
    small_maps()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
