"""`noise`: why minibatch descent approximates gradient descent.

The gradient of a minibatch of B examples drawn WITHOUT replacement from N is an unbiased
estimate of the full gradient g (the mean of the N per-example gradients g_i), and its error
shrinks like 1/B:

    E || g_B - g ||^2 = (sigma^2 / B) * (N - B) / (N - 1),    sigma^2 = (1/N) sum_i || g_i - g ||^2

(the variance of a sample mean without replacement: the 1/B law times the finite-population
correction, which reaches 0 at B = N where the minibatch IS the full batch). The per-example
gradients g_i come from ONE batched pass, `bg.vmap(bg.grad(loss), in_axes=(None, 0, 0))`,
over the digits training set; minibatches are then drawn at random and their squared errors
averaged. The measured points, the 1/B law and the corrected law are drawn on a log-log plot.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from . import _common as C


def per_example_gradients(model: Any, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(N, P) float64 matrix of the per-example gradients of the cross-entropy of a `bg.nn.MLP`,
    from one `vmap(grad(loss))` pass; and the parameter names in column order."""
    from .. import transforms
    from ..tensor import tensor

    params = {k: v.detach() for k, v in C.mlp_params(model).items()}
    loss = C.mlp_example_loss(getattr(model, "activation", "relu"))
    G = transforms.vmap(transforms.grad(loss), in_axes=(None, 0, 0))(params, tensor(X), tensor(np.asarray(y, np.float32)))
    names = list(params)
    return np.concatenate([G[k].numpy().reshape(len(X), -1) for k in names], axis=1).astype(np.float64), names


def minibatch_sq_errors(K: np.ndarray, B: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """|| g_S - g ||^2 for `reps` random subsets S of size B (without replacement), from the Gram
    matrix K = (G - g)(G - g)^T of the centred per-example gradients: sum_{i,j in S} K_ij / B^2."""
    N = K.shape[0]
    out = np.empty(reps)
    chunk = max(1, min(reps, 2_000_000 // max(N, B * B)))
    for s in range(0, reps, chunk):
        r = min(chunk, reps - s)
        keys = rng.random((r, N))
        idx = np.argpartition(keys, B - 1, axis=1)[:, :B] if B < N else np.tile(np.arange(N), (r, 1))
        if B * B <= 4 * N:
            out[s:s + r] = K[idx[:, :, None], idx[:, None, :]].sum(axis=(1, 2))
        else:
            Z = np.zeros((r, N))
            np.put_along_axis(Z, idx, 1.0, axis=1)
            out[s:s + r] = np.einsum("rn,rn->r", Z @ K, Z)
    return out / float(B * B)


def fit_slope(B: np.ndarray, v: np.ndarray) -> float:
    """Least-squares slope of log v against log B."""
    return float(np.polyfit(np.log(B), np.log(v), 1)[0])


def run(out: str = "batchgrad-lab", seed: int = 0, quick: bool = False, hidden: int = 32, n_examples: int | None = None,
        warmup_epochs: int | None = None, reps: int | None = None, verbose: bool = True) -> dict[str, Any]:
    """Measure the minibatch gradient variance against B at the parameters reached after
    `warmup_epochs` epochs of SGD (batch 32, lr 0.1) from a seeded init."""
    from .. import data, nn, optim
    from ..train import fit

    out = C.out_dir(out)
    rng = np.random.default_rng(seed)
    X, y, _, _ = C.digits_split()
    if n_examples is None:
        n_examples = 400 if quick else len(y)
    if n_examples < len(y):
        keep = np.sort(rng.choice(len(y), n_examples, replace=False))
        X, y = X[keep], y[keep]
    N = len(y)
    warmup_epochs = (0 if quick else 1) if warmup_epochs is None else warmup_epochs
    reps = (1000 if quick else 3000) if reps is None else reps

    model = nn.MLP([X.shape[1], hidden, 10], seed=seed)
    if warmup_epochs:
        loader = data.DataLoader(data.ArrayDataset(X, y), batch_size=32, shuffle=True, seed=seed)
        fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), loader, epochs=warmup_epochs, progress=False)
    t0 = time.perf_counter()
    G, names = per_example_gradients(model, X, y)
    t_grads = time.perf_counter() - t0
    g = G.mean(axis=0)
    Gc = G - g
    K = Gc @ Gc.T
    sigma2 = float(np.trace(K) / N)
    signal = float(g @ g)

    Bs = [2 ** k for k in range(20) if 2 ** k < N]
    meas, sem, law, fpc = [], [], [], []
    for B in Bs:
        v = minibatch_sq_errors(K, B, reps if B * B <= 4 * N else max(reps // 3, 100), rng)
        meas.append(float(v.mean()))
        sem.append(float(v.std(ddof=1) / np.sqrt(len(v))))
        law.append(sigma2 / B)
        fpc.append(sigma2 / B * (N - B) / (N - 1))
    Bn, meas_a, fpc_a = np.array(Bs, float), np.array(meas), np.array(fpc)
    small = Bn <= max(N / 16, 4)
    slope_small = fit_slope(Bn[small], meas_a[small])
    slope_all = fit_slope(Bn, meas_a)
    ratio = meas_a / fpc_a
    noise_scale = sigma2 / signal  # B at which the (with-replacement) noise equals the signal ||g||^2

    # ---- plot
    png = None
    if C.can_plot(verbose):
        fig, axes = C.figure(2, 1, size=(5.0, 4.2))
        a1, a2 = axes[0]
        Bline = np.unique(np.concatenate([np.geomspace(1, N - 1, 200), Bn]))
        a1.plot(Bline, sigma2 / Bline, "--", color="gray", label=r"$\sigma^2/B$ (with replacement)")
        a1.plot(Bline, sigma2 / Bline * (N - Bline) / (N - 1), "-", color="tab:blue",
                label=r"$\sigma^2/B \cdot (N-B)/(N-1)$ (without replacement)")
        a1.errorbar(Bn, meas_a, yerr=2 * np.array(sem), fmt="o", color="tab:red", ms=5, capsize=2,
                    label=f"measured ({reps} random minibatches per B)")
        a1.axhline(signal, color="tab:green", ls=":", lw=1.2, label=r"signal $\|g\|^2$ (full gradient)")
        a1.axvline(noise_scale, color="tab:green", ls=":", lw=0.8)
        a1.text(noise_scale * 1.1, signal * 1.3, f"noise = signal\nat B ~ {noise_scale:.0f}", fontsize=8, color="tab:green")
        a1.set_xscale("log", base=2)
        a1.set_yscale("log")
        a1.set_ylim(min(meas) / 4, max(max(meas), signal) * 2)
        a1.set_xlabel("minibatch size B")
        a1.set_ylabel(r"$E\,\|g_B - g\|^2$")
        a1.set_title(f"minibatch gradient noise, N = {N} digits (slope {slope_small:.3f})")
        a1.legend(fontsize=7.5, loc="lower left")
        a2.plot(Bn, meas_a / np.array(law), "s-", color="gray", label="measured / (1/B law)")
        a2.plot(Bn, ratio, "o-", color="tab:blue", label="measured / corrected law")
        a2.axhline(1.0, color="k", lw=0.8)
        a2.set_xscale("log", base=2)
        a2.set_ylim(0, 1.3)
        a2.set_xlabel("minibatch size B")
        a2.set_ylabel("ratio")
        a2.set_title("the finite-population correction matters as B -> N")
        a2.legend(fontsize=8, loc="lower left")
        png = C.savefig(fig, os.path.join(out, "noise.png"))

    rows = [[B, f"{m:.5g}", f"{2 * s:.2g}", f"{l_:.5g}", f"{f:.5g}", f"{m / f:.3f}"] for B, m, s, l_, f in zip(Bs, meas, sem, law, fpc)]
    tab = C.table(["B", "measured E||g_B - g||^2", "+- 2 s.e.", "sigma^2/B", "sigma^2/B (N-B)/(N-1)", "measured / corrected"], rows)
    n_params = G.shape[1]
    summary = (f"N = {N} examples, {n_params} parameters (MLP {X.shape[1]}-{hidden}-10, after {warmup_epochs} epoch(s) of SGD); "
               f"per-example gradients by one vmap(grad) pass in {t_grads * 1e3:.0f} ms. sigma^2 = {sigma2:.4g}, "
               f"||g||^2 = {signal:.4g}. Fitted log-log slope for B <= {int(Bn[small][-1])}: {slope_small:.3f} "
               f"(all B: {slope_all:.3f}); measured / corrected law in [{ratio.min():.3f}, {ratio.max():.3f}].")
    if verbose:
        print("noise: variance of the minibatch gradient around the full gradient\n" + tab + "\n" + summary)
    body = f"""Per-example gradients of the digits MLP from one batched pass
(`bg.vmap(bg.grad(loss), in_axes=(None, 0, 0))(params, X, Y)`), then {reps} random minibatches per
size B drawn without replacement; the squared distance of their mean gradient from the full one,
averaged.

{C.md_image("noise", png)}

{summary}

The minibatch gradient is an unbiased estimate of the full gradient whose squared error falls like
1/B: that is why a step on "the ground of one minibatch" approximates a step of gradient descent,
and why the gradient is averaged (a mean keeps the step size independent of B; a sum would grow
with B). Drawing without replacement adds the factor (N - B)/(N - 1): the error vanishes at B = N.
The noise equals the signal ||g||^2 near B ~ {noise_scale:.0f} (the "gradient noise scale"
sigma^2 / ||g||^2): far below it a step is mostly noise, far above it extra examples buy little
accuracy per step.

{tab}
"""
    md = C.write_md(os.path.join(out, "noise.md"), "noise: the 1/B law of the minibatch gradient", body)
    return {"N": N, "n_params": n_params, "batch_sizes": Bs, "measured": meas, "sem": sem, "law": law, "fpc_law": fpc,
            "sigma2": sigma2, "signal": signal, "noise_scale": noise_scale, "slope_small_B": slope_small,
            "slope_all": slope_all, "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
            "grad_seconds": t_grads, "files": C.written(png, md)}
