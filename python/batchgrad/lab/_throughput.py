"""`throughput`: why batching saves time.

One SGD training step (forward, softmax cross-entropy, backward, update) of an MLP
784-256-256-10 on random MNIST-sized inputs, timed for batch sizes 1, 2, 4, ..., 4096 on 1 and
on 2 CPU threads (median of repeats). With B examples the three matrix-vector products per layer
become matrix-matrix products (GEMM): the weights are read once per batch instead of once per
example, SIMD lanes and cores get full tiles, and the fixed Python/dispatch cost of a step is
shared by B examples. Time per example falls until the GEMMs are compute-bound; from there
examples/s stays flat ("saturation") and a bigger batch only makes each step slower.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _common as C

SIZES = [784, 256, 256, 10]


def gpu_backend() -> str | None:
    """The GPU adapter's name (marked "software" for a CPU-emulated one such as lavapipe), or
    None without wgpu or an adapter."""
    from .. import gpu

    try:
        return gpu.device.get().name
    except gpu.GpuError:
        return None


def time_gpu_step(batch: int, seed: int = 0, min_total_s: float = 0.15, max_repeats: int = 30, inner: int = 5) -> tuple[float, int]:
    """Median seconds of one GPU training step (`compile_step(device="gpu")`), from `inner`
    back-to-back steps and a read of the last loss (which waits for them)."""
    from .. import compile_step, nn, optim

    rng = np.random.default_rng(seed)
    model = nn.MLP(SIZES, seed=seed)
    step = compile_step(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.01), device="gpu")
    x = rng.random((batch, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], size=batch)

    def steps() -> None:
        for _ in range(inner - 1):
            step(x, y)
        float(step(x, y))

    s, n = C.median_time(steps, min_repeats=3, max_repeats=max_repeats, min_total_s=min_total_s, warmup=1)
    return s / inner, n


def saturation(batches: list[int], per_sec: list[float], frac: float = 0.9) -> int:
    """The smallest batch size whose examples/s reach `frac` of the best measured."""
    peak = max(per_sec)
    for b, v in zip(batches, per_sec):
        if v >= frac * peak:
            return b
    return batches[-1]


def time_step(batch: int, threads: int, seed: int = 0, min_total_s: float = 0.15, max_repeats: int = 30) -> tuple[float, int]:
    """Median seconds of one SGD step of the MLP on a batch of `batch` random examples."""
    from .. import nn, optim
    from ..tensor import set_num_threads, tensor

    set_num_threads(threads)
    rng = np.random.default_rng(seed)
    model = nn.MLP(SIZES, seed=seed)
    opt = optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    x = tensor(rng.random((batch, SIZES[0]), dtype=np.float32))
    y = rng.integers(0, SIZES[-1], size=batch)

    def step() -> None:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return C.median_time(step, min_repeats=3, max_repeats=max_repeats, min_total_s=min_total_s, warmup=1)


def plot(batch_sizes: list[int], res: dict[Any, dict[str, Any]], path: str, gpu: str | None = None) -> str:
    """Draw time per example and examples/s against B for each thread count of `res`
    ({threads: {"per_example_s", "examples_per_s", "saturation"}}) into `path`."""
    threads = list(res)
    fig, axes = C.figure(2, 1, size=(5.0, 4.0))
    a1, a2 = axes[0]
    colors = {1: "tab:blue", 2: "tab:orange"}
    colors["gpu"] = "tab:green"
    for th in threads:
        r, col = res[th], colors.get(th)
        lab = f"GPU: {gpu}" if th == "gpu" else f"{th} CPU thread{'s' * (th > 1)}"
        a1.plot(batch_sizes, np.array(r["per_example_s"]) * 1e6, "o-", color=col, label=lab)
        a2.plot(batch_sizes, r["examples_per_s"], "o-", color=col, label=lab)
        sb = r["saturation"]
        v = r["examples_per_s"][batch_sizes.index(sb)]
        a2.axvline(sb, color=col, ls=":", lw=1.2)
        k = threads.index(th)
        a2.annotate(f"saturates at B={sb}\n({v:,.0f} ex/s)", (sb, v), textcoords="axes fraction",
                    xytext=(0.6 + 0.38 * k, 0.36 - 0.16 * k), ha="right", fontsize=8, color=col,
                    arrowprops={"arrowstyle": "->", "color": col})
    b0 = batch_sizes[0]
    t0 = res[threads[0]]["per_example_s"][0] * 1e6
    a1.plot(batch_sizes, [t0 * b0 / b for b in batch_sizes], ":", color="gray", lw=1, label="perfect amortisation ~ 1/B")
    for a_ in (a1, a2):
        a_.set_xscale("log", base=2)
        a_.set_yscale("log")
        a_.set_xlabel("batch size B")
        a_.grid(True, which="major", alpha=0.3)
        a_.legend(fontsize=8)
    a1.set_ylim(bottom=min(min(res[t]["per_example_s"]) for t in threads) * 1e6 / 3)
    a1.set_ylabel("time per example (microseconds)")
    a1.set_title("one SGD step of MLP 784-256-256-10")
    a2.set_ylabel("examples per second")
    a2.set_title("examples per second" + ("" if gpu else " (CPU only: no GPU adapter here)"))
    return C.savefig(fig, path)


def run(out: str = "batchgrad-lab", seed: int = 0, quick: bool = False, batch_sizes: list[int] | None = None,
        threads: tuple[int, ...] = (1, 2), verbose: bool = True) -> dict[str, Any]:
    from ..tensor import get_num_threads, set_num_threads

    out = C.out_dir(out)
    if batch_sizes is None:
        batch_sizes = [1, 4, 16, 64, 256] if quick else [2 ** k for k in range(13)]
    min_total = 0.02 if quick else 0.25
    prev = get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    res: dict[int, dict[str, list[float]]] = {th: {"step_s": [], "repeats": []} for th in threads}
    try:
        # interleaved (each batch size on every thread count in turn), so that a busy neighbour on a
        # shared machine disturbs the curves alike rather than one whole curve
        for b in batch_sizes:
            for th in threads:
                s, n = time_step(b, th, seed=seed, min_total_s=min_total, max_repeats=10 if quick else 30)
                res[th]["step_s"].append(s)
                res[th]["repeats"].append(n)
    finally:
        set_num_threads(prev)
    for th in threads:
        secs = res[th]["step_s"]
        res[th]["per_example_s"] = [s / b for s, b in zip(secs, batch_sizes)]
        res[th]["examples_per_s"] = [b / s for s, b in zip(secs, batch_sizes)]
    for th in threads:
        res[th]["saturation"] = saturation(batch_sizes, res[th]["examples_per_s"])
        res[th]["peak_examples_per_s"] = max(res[th]["examples_per_s"])
    gpu = gpu_backend()
    if gpu is not None:
        g = res["gpu"] = {"step_s": [], "repeats": []}
        for b in batch_sizes:
            s, n = time_gpu_step(b, seed=seed, min_total_s=min_total, max_repeats=5 if quick else 20, inner=2 if quick else 5)
            g["step_s"].append(s)
            g["repeats"].append(n)
        g["per_example_s"] = [s / b for s, b in zip(g["step_s"], batch_sizes)]
        g["examples_per_s"] = [b / s for s, b in zip(g["step_s"], batch_sizes)]
        g["saturation"] = saturation(batch_sizes, g["examples_per_s"])
        g["peak_examples_per_s"] = max(g["examples_per_s"])
    curves = list(threads) + (["gpu"] if gpu else [])

    png = None
    if C.can_plot(verbose):
        png = plot(batch_sizes, {k: res[k] for k in curves}, os.path.join(out, "throughput.png"), gpu)

    # ---- table and report
    name = {th: f"{th}T" for th in threads} | {"gpu": "GPU"}
    headers = ["batch"] + [h for th in curves for h in (f"{name[th]} step (ms)", f"{name[th]} us/example", f"{name[th]} examples/s")]
    rows = []
    for i, b in enumerate(batch_sizes):
        row: list[Any] = [b]
        for th in curves:
            r = res[th]
            row += [f"{r['step_s'][i] * 1e3:.3f}", f"{r['per_example_s'][i] * 1e6:.2f}", f"{r['examples_per_s'][i]:,.0f}"]
        rows.append(row)
    tab = C.table(headers, rows)
    summary = "; ".join(f"{th} thread{'s' * (th > 1)}: saturates at B = {res[th]['saturation']} "
                        f"(peak {res[th]['peak_examples_per_s']:,.0f} examples/s, "
                        f"{res[th]['peak_examples_per_s'] / res[th]['examples_per_s'][0]:.0f}x the B = {batch_sizes[0]} rate)"
                        for th in threads)
    crossover = None
    if 1 in res and 2 in res:
        faster = [b for i, b in enumerate(batch_sizes) if res[2]["step_s"][i] < res[1]["step_s"][i]]
        crossover = next((b for b in batch_sizes if all(x in faster for x in batch_sizes[batch_sizes.index(b):])), None)
        summary += (f"; 2 threads beat 1 from B = {crossover} on" if crossover else "; 2 threads never beat 1 here")
    cross_txt = (f"here from B = {crossover}" if crossover else
                 "in this run never: another process may have been busy on the second core")
    if gpu:
        gr = res["gpu"]
        gpu_line = (f"GPU ({gpu}, `compile_step(device='gpu')`: one submit per step): saturates at B = {gr['saturation']} "
                    f"(peak {gr['peak_examples_per_s']:,.0f} examples/s)"
                    + (". This is a software adapter emulating a GPU on the CPU: its curve shows the shape, not GPU speed."
                       if "software" in gpu else "."))
    else:
        gpu_line = ("GPU: no column - no GPU adapter here (`pip install 'batchgrad[gpu]'` and a Vulkan/Metal/DX12 driver). "
                    "A GPU would push saturation to much larger B: it has thousands of lanes to fill.")
    if verbose:
        print("throughput: one SGD step of MLP 784-256-256-10 (median of repeats)\n" + tab + "\n" + summary + "\n" + gpu_line)
    body = f"""One SGD step (forward, softmax cross-entropy, backward, update) of an MLP 784-256-256-10 on
random inputs, median of repeats, on 1 and on 2 CPU threads (`bg.set_num_threads`). "Saturates"
is the smallest batch reaching 90% of the best examples/s.

{C.md_image("throughput", png)}

{summary}. (Load average {load:.2f} on {os.cpu_count()} cores when the timing started: other
processes running at the same time make single points noisy.)

{gpu_line}

Why it pays: with B = 1 each layer is a matrix-vector product, which reads every weight once to do
2 flops with it, and a step also pays a fixed cost (Python, dispatch, the update) of tens of
microseconds. A batch turns the products into matrix-matrix products (GEMM) that reuse each weight
B times from cache and fill the SIMD lanes, and it shares the fixed cost among B examples. A second
thread only pays once each GEMM is big enough to split between the cores ({cross_txt}); below
that, splitting costs more than it saves. So 2 threads saturate at a larger batch. Past saturation the arithmetic units are busy: doubling B doubles the step time.

{tab}
"""
    md = C.write_md(os.path.join(out, "throughput.md"), "throughput: why batching saves time", body)
    return {"batch_sizes": batch_sizes, "threads": {th: res[th] for th in curves}, "gpu": gpu,
            "saturation": {th: res[th]["saturation"] for th in curves}, "two_threads_win_from": crossover,
            "load_average": load,
            "files": C.written(png, md)}
