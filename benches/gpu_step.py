"""GPU training step vs PyTorch, side by side in one process: one SGD step of the MLP
784-256-256-10 (relu, softmax cross-entropy) at batch 1 .. 8192.

    python benches/gpu_step.py            # full sweep (a real GPU: the H100 recipe in shared/gpu)
    python benches/gpu_step.py --quick    # small batches, few repeats (lavapipe)

Ours: `bg.compile_step(..., device="gpu")`, timed over `--inner` back-to-back steps closed by one
read of the last loss (which waits for the GPU), median of repeats. PyTorch: eager forward,
backward and `optimizer.step()` on CUDA when available (else its CPU), synchronised the same way.
Prints a markdown table (device, date, command) for benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time

import numpy as np

import batchgrad as bg

SIZES = (784, 256, 256, 10)


def median_ms(f, repeats: int, inner: int) -> float:
    f()  # warm-up: builds the plan / CUDA context
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t0) / inner)
    return 1e3 * float(np.median(ts))


def ours(B: int, repeats: int, inner: int) -> float:
    r = np.random.default_rng(0)
    model = bg.nn.MLP(list(SIZES), seed=0)
    step = bg.compile_step(model, bg.nn.CrossEntropyLoss(), bg.optim.SGD(model.parameters(), lr=0.01), device="gpu")
    x = r.random((B, SIZES[0]), dtype=np.float32)
    y = r.integers(0, SIZES[-1], B)

    def run():
        for _ in range(inner - 1):
            step(x, y)
        float(step(x, y))

    return median_ms(run, repeats, inner)


def torch_eager(B: int, repeats: int, inner: int):
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(torch.nn.Linear(SIZES[i], SIZES[i + 1]))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.rand(B, SIZES[0], device=dev)
    y = torch.randint(0, SIZES[-1], (B,), device=dev)
    lf = torch.nn.CrossEntropyLoss()

    def run():
        for _ in range(inner):
            opt.zero_grad(set_to_none=True)
            loss = lf(model(x), y)
            loss.backward()
            opt.step()
        loss.item()

    return median_ms(run, repeats, inner), f"torch {torch.__version__} {dev}" + (f" ({torch.cuda.get_device_name()})" if dev == "cuda" else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--inner", type=int, default=None)
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")] if a.batches else ([1, 8, 64] if a.quick else [1, 8, 32, 128, 512, 2048, 8192])
    repeats = a.repeats or (3 if a.quick else 15)
    inner = a.inner or (2 if a.quick else 20)
    if not bg.gpu.is_available():
        print("no GPU adapter:", file=sys.stderr)
        bg.gpu.info()
    name = bg.gpu.device.get().name
    print(f"device: {name}; date: {datetime.date.today()}; command: python benches/gpu_step.py {' '.join(sys.argv[1:])}")
    print(f"median ms per SGD step of MLP {'-'.join(map(str, SIZES))}, {inner} steps per timing, {repeats} timings\n")
    print("| batch | batchgrad GPU (ms) | PyTorch eager (ms) | PyTorch / batchgrad |")
    print("|---:|---:|---:|---:|")
    label = ""
    for B in batches:
        o = ours(B, repeats, inner)
        t, label = torch_eager(B, repeats, inner)
        ratio = f"{t / o:.2f}" if t else "-"
        print(f"| {B} | {o:.3f} | {t if t is None else f'{t:.3f}'} | {ratio} |", flush=True)
    print(f"\nPyTorch: {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
