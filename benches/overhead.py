"""Per-op overhead, measured against references in the same process (issue: small graphs).

    python benches/overhead.py                # 15 interleaved rounds
    python benches/overhead.py --rounds 31 --threads 1

(1) A chain of 10,000 scalar ops (`y = y * c; y = y + c`, c a Python float) from Python, forward
    + backward: batchgrad, micrograd (`pip install micrograd`; its recursive topological sort
    needs a higher recursion limit, which is set) and PyTorch 0-d tensors. The variants run in
    turn within each round, so a noisy stretch of the shared machine hits all of them; the
    table reports each variant's median and the median of the per-round ratios.
(2) The eager SGD step (forward, backward, `optimizer.step()`) of the MLP 784-256-256-10 at batch
    1 and 8 against the compiled step (`bg.compile_step`), interleaved the same way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import batchgrad as bg

N_OPS = 10_000
C = 1.0001


def chain(x, backward) -> tuple[float, float]:
    """(forward, backward) seconds of the chain from the leaf `x`, any library's."""
    y = x
    t0 = time.perf_counter()
    for _ in range(N_OPS // 2):
        y = y * C
        y = y + C
    t1 = time.perf_counter()
    backward(y)
    return t1 - t0, time.perf_counter() - t1


def bg_chain() -> tuple[float, float]:
    return chain(bg.tensor(1.0, requires_grad=True), lambda y: y.backward())


def micrograd_chain() -> tuple[float, float]:
    from micrograd.engine import Value

    return chain(Value(1.0), lambda y: y.backward())


def torch_chain() -> tuple[float, float]:
    import torch

    return chain(torch.tensor(1.0, requires_grad=True), lambda y: y.backward())


def steps(batch: int) -> dict:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    m1 = bg.nn.MLP([784, 256, 256, 10], seed=0)
    o1 = bg.optim.SGD(m1.parameters(), lr=0.01)
    loss_fn = bg.nn.CrossEntropyLoss()
    Xt, yt = bg.tensor(X), y

    def eager() -> None:
        o1.zero_grad()
        loss_fn(m1(Xt), yt).backward()
        o1.step()

    m2 = bg.nn.MLP([784, 256, 256, 10], seed=0)
    o2 = bg.optim.SGD(m2.parameters(), lr=0.01)
    step = bg.compile_step(m2, loss_fn, o2, (X, y))
    yf = bg.tensor(y.astype(np.float32))

    def compiled() -> None:
        step(Xt, yf)

    return {"eager": eager, "compiled": compiled}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="bg.set_num_threads (default: all cores)")
    ap.add_argument("--step-reps", type=int, default=200, help="steps timed per round and variant")
    args = ap.parse_args()
    if args.threads:
        bg.set_num_threads(args.threads)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * N_OPS))
    chains = {"batchgrad": bg_chain}
    try:
        import micrograd  # noqa: F401

        chains["micrograd"] = micrograd_chain
    except ImportError:
        print("micrograd not installed (pip install micrograd): skipped", file=sys.stderr)
    try:
        import torch

        torch.set_num_threads(bg.get_num_threads())
        chains["torch 0-d tensors"] = torch_chain
    except ImportError:
        print("torch not installed: skipped", file=sys.stderr)
    for f in chains.values():
        f()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in chains}
    for _ in range(args.rounds):
        for k, f in chains.items():
            times[k].append(f())
    tot = {k: [a + b for a, b in v] for k, v in times.items()}
    print(f"\n### (1) {N_OPS:,} scalar ops from Python, forward + backward ({args.rounds} interleaved rounds, "
          f"{bg.get_num_threads()} thread(s))\n")
    print("| variant | total ms (median) | us / op | forward us / op | backward us / op | "
          "that variant / batchgrad (median of per-round ratios) |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, v in tot.items():
        fw = statistics.median(a for a, _ in times[k]) / N_OPS * 1e6
        bw = statistics.median(b for _, b in times[k]) / N_OPS * 1e6
        ratio = statistics.median(x / y for x, y in zip(v, tot["batchgrad"]))
        print(f"| {k} | {statistics.median(v) * 1e3:.2f} | {statistics.median(v) / N_OPS * 1e6:.2f} | {fw:.2f} | "
              f"{bw:.2f} | {'-' if k == 'batchgrad' else f'**{ratio:.1f}x**'} |")
    print(f"\nbatchgrad's fastest round: {min(tot['batchgrad']) * 1e3:.2f} ms; slowest {max(tot['batchgrad']) * 1e3:.2f} ms.")
    print(f"\n### (2) SGD step of the MLP 784-256-256-10, eager vs compiled ({args.rounds} rounds of "
          f"{args.step_reps} steps each, median step time)\n")
    print("| batch | eager us | compiled us | eager / compiled (median of per-round ratios) |")
    print("|---:|---:|---:|---:|")
    for b in (1, 8):
        fns = steps(b)
        for f in fns.values():
            for _ in range(20):
                f()
        res: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, f in fns.items():
                ts = []
                for _ in range(args.step_reps):
                    t0 = time.perf_counter()
                    f()
                    ts.append(time.perf_counter() - t0)
                res[k].append(statistics.median(ts))
        ratio = statistics.median(e / c for e, c in zip(res["eager"], res["compiled"]))
        print(f"| {b} | {statistics.median(res['eager']) * 1e6:.1f} | {statistics.median(res['compiled']) * 1e6:.1f} | "
              f"**{ratio:.2f}x** |")


if __name__ == "__main__":
    main()
