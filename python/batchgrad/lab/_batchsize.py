"""`batchsize`: what batch size to use.

An MLP trained on the bundled digits for a fixed number of epochs with plain SGD, for several
batch sizes and seeds, (a) at one fixed learning rate and (b) with the learning rate scaled
linearly with the batch size (lr = lr0 * B / B0). The final training loss (over the whole
training set) and test accuracy are reported as mean and spread over the seeds.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from . import _common as C


def train_once(X: np.ndarray, y: np.ndarray, X_te: np.ndarray, y_te: np.ndarray, batch: int, lr: float, epochs: int,
               seed: int, hidden: int) -> dict[str, Any]:
    """One SGD run with `bg.fit`; a divergence (nan/inf loss) is recorded, not raised."""
    from .. import data, nn, optim
    from ..train import evaluate, fit

    model = nn.MLP([X.shape[1], hidden, 10], seed=seed)
    opt = optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    loader = data.DataLoader(data.ArrayDataset(X, y), batch_size=batch, shuffle=True, seed=seed)
    t0 = time.perf_counter()
    try:
        hist = fit(model, loss_fn, opt, loader, epochs=epochs, progress=False)
    except FloatingPointError:
        return {"diverged": True, "train_loss": math.nan, "test_acc": math.nan, "epoch_loss": [], "steps": 0,
                "seconds": time.perf_counter() - t0}
    secs = time.perf_counter() - t0
    tr_loss, _ = evaluate(model, data.DataLoader(data.ArrayDataset(X, y), batch_size=4096), loss_fn)
    _, te_acc = evaluate(model, data.DataLoader(data.ArrayDataset(X_te, y_te), batch_size=4096), loss_fn)
    diverged = not math.isfinite(tr_loss)
    return {"diverged": diverged, "train_loss": tr_loss, "test_acc": te_acc, "epoch_loss": hist.train_loss,
            "steps": hist.steps, "seconds": secs}


def run(out: str = "batchgrad-lab", seed: int = 0, quick: bool = False, batch_sizes: list[int] | None = None,
        seeds: int | None = None, epochs: int | None = None, lr: float = 0.1, ref_batch: int = 16, hidden: int = 32,
        n_examples: int | None = None, verbose: bool = True) -> dict[str, Any]:
    """Sweep batch sizes x {fixed lr, lr scaled as lr * B / ref_batch} x seeds (seed, seed+1, ...)."""
    out = C.out_dir(out)
    X, y, X_te, y_te = C.digits_split()
    if n_examples is None and quick:
        n_examples = 300
    if n_examples is not None and n_examples < len(y):
        keep = np.sort(np.random.default_rng(seed).choice(len(y), n_examples, replace=False))
        X, y = X[keep], y[keep]
    N = len(y)
    if batch_sizes is None:
        batch_sizes = [4, 32, N] if quick else [1, 4, 16, 64, 256, N]
    batch_sizes = [min(int(b), N) for b in batch_sizes]
    seeds = (2 if quick else 3) if seeds is None else seeds
    epochs = (2 if quick else 10) if epochs is None else epochs
    modes = {"fixed": lambda b: lr, "scaled": lambda b: lr * b / ref_batch}

    runs: dict[str, dict[int, list[dict[str, Any]]]] = {m: {} for m in modes}
    t0 = time.perf_counter()
    for mode, lr_of in modes.items():
        for b in batch_sizes:
            if mode == "scaled" and b == ref_batch and b in runs["fixed"]:
                runs[mode][b] = runs["fixed"][b]  # the same runs: lr * B / B0 == lr
                continue
            runs[mode][b] = [train_once(X, y, X_te, y_te, b, lr_of(b), epochs, seed + s, hidden) for s in range(seeds)]
    elapsed = time.perf_counter() - t0

    def stats(rs: list[dict[str, Any]], key: str) -> tuple[float, float]:
        v = np.array([r[key] for r in rs], float)
        v = v[np.isfinite(v)]
        return (float(v.mean()), float(v.std())) if len(v) else (math.nan, math.nan)

    summary: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for mode, lr_of in modes.items():
        for b in batch_sizes:
            rs = runs[mode][b]
            lm, ls = stats(rs, "train_loss")
            am, as_ = stats(rs, "test_acc")
            summary[mode].append({"batch": b, "lr": lr_of(b), "steps_per_epoch": math.ceil(N / b), "train_loss": lm,
                                  "train_loss_std": ls, "test_acc": am, "test_acc_std": as_,
                                  "diverged": sum(r["diverged"] for r in rs), "seeds": len(rs)})

    # ---- plot
    png = None
    if C.can_plot(verbose):
        fig, axes = C.figure(3, 1, size=(4.4, 4.0))
        a1, a2, a3 = axes[0]
        styles = {"fixed": ("tab:blue", "o", f"fixed lr = {lr:g}"), "scaled": ("tab:red", "s", f"lr = {lr:g} * B / {ref_batch}")}
        for mode, (col, mk, lab) in styles.items():
            S = summary[mode]
            bs = [s["batch"] for s in S]
            a1.errorbar(bs, [s["train_loss"] for s in S], yerr=[s["train_loss_std"] for s in S], fmt=mk + "-", color=col,
                         capsize=3, label=lab)
            a2.errorbar(bs, [100 * s["test_acc"] for s in S], yerr=[100 * s["test_acc_std"] for s in S], fmt=mk + "-",
                        color=col, capsize=3, label=lab)
        for a_ in (a1, a2):
            a_.set_xscale("log", base=2)
            a_.set_xlabel("batch size B")
            a_.legend(fontsize=8)
            a_.grid(True, alpha=0.3)
        a1.set_yscale("log")
        a1.set_ylabel(f"training loss after {epochs} epochs")
        a1.set_title(f"final training loss (mean +- sd, {seeds} seeds)")
        a2.set_ylabel("test accuracy (%)")
        a2.set_title("test accuracy")
        cmap = [f"C{i}" for i in range(10)]
        for i, b in enumerate(batch_sizes):
            curves = [r["epoch_loss"] for r in runs["fixed"][b] if not r["diverged"] and r["epoch_loss"]]
            if curves:
                m = np.mean(np.array(curves), axis=0)
                a3.plot(np.arange(1, len(m) + 1), m, "o-", ms=3, color=cmap[i % 10],
                        label=f"B={b} ({math.ceil(N / b)} steps/epoch)")
        a3.set_yscale("log")
        a3.set_xlabel("epoch")
        a3.set_ylabel("mean training loss during the epoch")
        a3.set_title(f"fixed lr = {lr:g}: loss per epoch")
        a3.legend(fontsize=7.5)
        png = C.savefig(fig, os.path.join(out, "batchsize.png"))

    rows = []
    for mode in modes:
        for s in summary[mode]:
            rows.append([mode, s["batch"], f"{s['lr']:.4g}", s["steps_per_epoch"] * epochs,
                         f"{s['train_loss']:.4f} +- {s['train_loss_std']:.4f}",
                         f"{100 * s['test_acc']:.1f} +- {100 * s['test_acc_std']:.1f}",
                         f"{s['diverged']}/{s['seeds']}"])
    tab = C.table(["lr", "batch", "lr value", "steps", "final train loss", "test acc (%)", "diverged"], rows)
    head = (f"MLP {X.shape[1]}-{hidden}-10, plain SGD, {epochs} epochs over N = {N} digits, seeds {seed}..{seed + seeds - 1}; "
            f"{elapsed:.1f} s")
    if verbose:
        print("batchsize: " + head + "\n" + tab)
    fixed, scaled = summary["fixed"], summary["scaled"]
    best = min(fixed, key=lambda s: s["train_loss"] if math.isfinite(s["train_loss"]) else math.inf)
    body = f"""{head}.

{C.md_image("batchsize", png)}

{tab}

Read it as the seeds' last question. With the learning rate fixed, an epoch of batch B is N/B
steps: the full batch (B = {N}) takes {epochs} steps in {epochs} epochs and is far from trained
(loss {fixed[-1]['train_loss']:.3f}), it needs many more epochs. Small batches take many cheap,
noisy steps; the best final loss here is at B = {best['batch']} ({best['train_loss']:.4f}). The
smallest batch (B = {fixed[0]['batch']}) is the least stable: its spread over seeds is
{fixed[0]['train_loss_std']:.3f} against {best['train_loss_std']:.3f} at B = {best['batch']}: one example's
gradient is a very noisy estimate (see `noise`), so its learning rate must be smaller.
Scaling the learning rate with B (lr * B / {ref_batch}) keeps the progress per epoch roughly the same
while the step stays small enough, and fails once lr * B / {ref_batch} is too large for the loss's
curvature (B = {scaled[-1]['batch']}: lr = {scaled[-1]['lr']:.3g}, loss {scaled[-1]['train_loss']:.3f}).
In practice: the smallest batch that keeps the hardware busy (see `throughput`), tens to a few
hundred, with the learning rate tuned for it.
"""
    md = C.write_md(os.path.join(out, "batchsize.md"), "batchsize: final loss and accuracy against batch size", body)
    return {"N": N, "epochs": epochs, "seeds": seeds, "batch_sizes": batch_sizes, "summary": summary,
            "seconds": elapsed, "files": C.written(png, md)}
