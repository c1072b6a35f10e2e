"""`accumulate`: the averaging batch need not be the compute batch.

One optimizer step on a batch of k*b examples, and the same step computed as k micro-batches of
b: each micro-batch's mean loss is scaled by b/(k b) and back-propagated, the gradients add up in
`.grad` (backward accumulates until `zero_grad`), then one `optimizer.step()`. The gradient of a
mean over k*b examples is the mean of the k micro-batch means, so the updates are identical up
to float rounding. `bg.fit(..., accumulate=k)` does the same. What differs is the cost: k smaller
GEMMs and k times the fixed per-pass overhead.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _common as C


def _model(seed: int, hidden: int) -> Any:
    from .. import nn

    return nn.MLP([64, hidden, 10], seed=seed)


def _params(model: Any) -> np.ndarray:
    return np.concatenate([p.numpy().ravel() for p in model.parameters()]).astype(np.float64)


def step_whole(model: Any, opt: Any, X: np.ndarray, y: np.ndarray) -> None:
    """One optimizer step on the whole batch (X, y)."""
    from .. import nn

    opt.zero_grad()
    nn.CrossEntropyLoss()(model(X), y).backward()
    opt.step()


def step_accumulated(model: Any, opt: Any, X: np.ndarray, y: np.ndarray, k: int) -> None:
    """The same step from k micro-batches: backward of each scaled mean loss, one update."""
    from .. import nn

    loss_fn = nn.CrossEntropyLoss()
    n = len(y)
    opt.zero_grad()
    for part in np.array_split(np.arange(n), k):
        (loss_fn(model(X[part]), y[part]) * (len(part) / n)).backward()  # .grad accumulates
    opt.step()


def run(out: str = "batchgrad-lab", seed: int = 0, quick: bool = False, k: int = 4, b: int = 32, steps: int | None = None,
        lr: float = 0.1, momentum: float = 0.9, hidden: int = 128, total: int = 256, verbose: bool = True) -> dict[str, Any]:
    """Compare k x b accumulated with one batch of k*b over `steps` SGD(momentum) steps, check
    `bg.fit(accumulate=k)` too, and time a step of `total` examples split into 1..total micro-batches."""
    from .. import data, nn, optim
    from ..train import fit

    out = C.out_dir(out)
    X, y, _, _ = C.digits_split()
    steps = (3 if quick else 5) if steps is None else steps
    n = k * b
    order = np.random.default_rng(seed).permutation(len(y))

    models = {}
    for name in ("one batch", "accumulated", "bg.fit(accumulate=k)"):
        m = _model(seed, hidden)
        models[name] = (m, optim.SGD(m.parameters(), lr=lr, momentum=momentum))
    start = _params(models["one batch"][0])
    for s in range(steps):
        idx = order[(s * n) % len(y):][:n]
        step_whole(*models["one batch"], X[idx], y[idx])
        step_accumulated(*models["accumulated"], X[idx], y[idx], k)
    m, opt = models["bg.fit(accumulate=k)"]
    sel = np.concatenate([order[(s * n) % len(y):][:n] for s in range(steps)])
    loader = data.DataLoader(data.ArrayDataset(X[sel], y[sel]), batch_size=b, shuffle=False)
    fit(m, nn.CrossEntropyLoss(), opt, loader, epochs=1, accumulate=k, progress=False)
    ref = _params(models["one batch"][0])
    moved = float(np.abs(ref - start).max())
    diffs = {name: float(np.abs(_params(mm) - ref).max()) for name, (mm, _) in models.items() if name != "one batch"}

    # ---- cost of one optimizer step of `total` examples computed as `kk` micro-batches
    splits = [1, 4, 16, 64] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    splits = [s for s in splits if s <= total]
    idx = order[:total]
    Xs, ys = X[idx], y[idx]
    timing = []
    for kk in splits:
        mm = _model(seed, hidden)
        oo = optim.SGD(mm.parameters(), lr=lr, momentum=momentum)
        if kk == 1:
            fn = lambda: step_whole(mm, oo, Xs, ys)  # noqa: E731
        else:
            fn = lambda kk=kk: step_accumulated(mm, oo, Xs, ys, kk)  # noqa: E731
        sec, _ = C.median_time(fn, min_repeats=3, max_repeats=10 if quick else 200, min_total_s=0.02 if quick else 0.25)
        timing.append({"micro_batches": kk, "micro_batch": total // kk, "step_ms": sec * 1e3})

    # ---- plot
    png = None
    if C.can_plot(verbose):
        fig, axes = C.figure(1, 1, size=(6.0, 4.0))
        ax = axes[0][0]
        ax.plot([t["micro_batches"] for t in timing], [t["step_ms"] for t in timing], "o-", color="tab:purple")
        for t in timing:
            ax.annotate(f"b={t['micro_batch']}", (t["micro_batches"], t["step_ms"]), textcoords="offset points",
                        xytext=(-10, 7), fontsize=7.5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"micro-batches k per step (k x b = {total} examples)")
        ax.set_ylabel("time per optimizer step (ms)")
        ax.set_title(f"same update, different cost (max |diff| {max(diffs.values()):.1e})")
        ax.grid(True, alpha=0.3)
        png = C.savefig(fig, os.path.join(out, "accumulate.png"))

    dtab = C.table(["method", f"max |param - one batch of {n}| after {steps} steps"],
                   [[name, f"{v:.3g}"] for name, v in diffs.items()])
    ttab = C.table(["micro-batches k", "micro-batch b", "ms per step", "vs k = 1"],
                   [[t["micro_batches"], t["micro_batch"], f"{t['step_ms']:.3f}", f"{t['step_ms'] / timing[0]['step_ms']:.2f}x"]
                    for t in timing])
    if verbose:
        print(f"accumulate: {k} micro-batches of {b} vs one batch of {n} ({steps} SGD momentum steps, parameters moved "
              f"up to {moved:.3g})\n" + dtab + "\n\ncost of one step of " + str(total) + " examples\n" + ttab)
    body = f"""MLP 64-{hidden}-10 on the digits, SGD(lr={lr:g}, momentum={momentum:g}), {steps} steps from the same init on
the same examples: one batch of {n} per step, against {k} micro-batches of {b} whose losses are scaled
by {b}/{n} and back-propagated into the same `.grad` before one `step()` (and against
`bg.fit(..., accumulate={k})`). The parameters moved by up to {moved:.3g}; they differ by:

{dtab}

So the averaging batch (what the optimizer step sees) and the compute batch (what one
forward/backward holds in memory) are separate choices: accumulate when {n} examples do not fit.
The price is time, not the result - one step of {total} examples computed as k micro-batches:

{C.md_image("accumulate", png)}

{ttab}

Smaller micro-batches mean smaller GEMMs and k times the fixed cost of a pass (see `throughput`);
and k steps of b, instead of one accumulated step of k*b, would cost about the same while moving
k times.
"""
    md = C.write_md(os.path.join(out, "accumulate.md"), "accumulate: k micro-batches of b = one batch of k*b", body)
    return {"k": k, "b": b, "steps": steps, "max_abs_diff": max(diffs.values()), "diffs": diffs, "moved": moved,
            "timing": timing, "files": C.written(png, md)}
