"""`regression`: the textbook example of the seeds, run with batchgrad.

Four examples (x, y) = (2, 4), (4, 9), (-1, -2), (5, 15); the loss of one example is
(y - x w)^2 and the loss of a set of examples is their SUM. Minibatches B1 = {1, 2} and
B2 = {3, 4} have their own losses L'(w) (B1) and L''(w) (B2); full-batch gradient descent
walks down L, minibatch descent alternates between L' and L'' ("the ground beneath our feet
changes with every step").
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _common as C

X = np.array([2.0, 4.0, -1.0, 5.0])
Y = np.array([4.0, 9.0, -2.0, 15.0])
BATCHES = {"B1": [0, 1], "B2": [2, 3]}  # examples 1, 2 and 3, 4 (0-based indices)


def example_loss(w: Any, x: Any, y: Any) -> Any:
    """The loss of ONE example: (y - x w)^2."""
    return (y - x * w) ** 2


def batch_loss(w: Any, xs: Any, ys: Any) -> Any:
    """The loss of a set of examples: the per-example graph vmapped over the set, then summed."""
    from .. import transforms

    return transforms.vmap(example_loss, in_axes=(None, 0, 0))(w, xs, ys).sum()


def closed_form(idx: list[int] | None = None) -> float:
    """argmin_w sum_{n in idx} (y_n - x_n w)^2 = sum(x y) / sum(x^2) (all examples if idx is None)."""
    i = slice(None) if idx is None else idx
    return float(np.sum(X[i] * Y[i]) / np.sum(X[i] ** 2))


def _value_and_grad(w: float, idx: list[int]) -> tuple[float, float]:
    """(loss, dloss/dw) of the examples `idx` at w, computed by batchgrad (bg.value_and_grad)."""
    from .. import transforms
    from ..tensor import tensor

    v, g = transforms.value_and_grad(batch_loss)(tensor(w), tensor(X[idx]), tensor(Y[idx]))
    return float(v.item()), float(g.item())


def newton_minimiser(idx: list[int], w0: float = 0.0) -> float:
    """The minimiser found by batchgrad alone: one Newton step w0 - L'(w0) / L''(w0) with both
    derivatives from bg.grad (grad of grad); exact for a quadratic loss."""
    from .. import transforms
    from ..tensor import tensor

    xs, ys = tensor(X[idx]), tensor(Y[idx])
    d1 = transforms.grad(batch_loss)
    d2 = transforms.grad(lambda w, a, b: d1(w, a, b))
    g = float(d1(tensor(w0), xs, ys).item())
    h = float(d2(tensor(w0), xs, ys).item())
    return w0 - g / h


def trajectory(method: str, lr: float, w0: float, steps: int) -> list[dict[str, Any]]:
    """`steps` updates w <- w - lr * dL_batch/dw; method "full" uses all four examples each step,
    "minibatch" alternates B1, B2, B1, ... (one minibatch per step)."""
    full = [0, 1, 2, 3]
    rows = []
    w = float(w0)
    for t in range(steps):
        if method == "full":
            name, idx = "all", full
        else:
            name = "B1" if t % 2 == 0 else "B2"
            idx = BATCHES[name]
        loss, g = _value_and_grad(w, idx)
        full_loss = _value_and_grad(w, full)[0]
        w_next = w - lr * g
        rows.append({"step": t, "method": method, "batch": name, "w": w, "batch_loss": loss, "full_loss": full_loss,
                     "grad": g, "w_next": w_next})
        w = w_next
    return rows


def run(out: str = "batchgrad-lab", seed: int = 0, quick: bool = False, lr: float = 0.008, w0: float = 0.0,
        epochs: int | None = None, verbose: bool = True) -> dict[str, Any]:
    """Run the experiment; returns the minimisers, both trajectories and the files written.

    `epochs` passes over the four examples: full-batch GD takes one step per epoch, minibatch
    descent two (B1 then B2). The seed is unused (nothing is random here).
    """
    out = C.out_dir(out)
    epochs = (3 if quick else 6) if epochs is None else int(epochs)
    full = [0, 1, 2, 3]
    minimisers = {
        "L (all)": {"closed_form": closed_form(), "batchgrad": newton_minimiser(full)},
        "L' (B1)": {"closed_form": closed_form(BATCHES["B1"]), "batchgrad": newton_minimiser(BATCHES["B1"])},
        "L'' (B2)": {"closed_form": closed_form(BATCHES["B2"]), "batchgrad": newton_minimiser(BATCHES["B2"])},
    }
    gd = trajectory("full", lr, w0, epochs)
    mb = trajectory("minibatch", lr, w0, 2 * epochs)
    # minibatch descent settles into a 2-cycle: after a B1 step at a, after a B2 step at b
    cb1 = 1 - 2 * lr * np.sum(X[:2] ** 2)
    cb2 = 1 - 2 * lr * np.sum(X[2:] ** 2)
    ob1 = 2 * lr * np.sum(X[:2] * Y[:2])
    ob2 = 2 * lr * np.sum(X[2:] * Y[2:])
    a = (cb1 * ob2 + ob1) / (1 - cb1 * cb2) if abs(1 - cb1 * cb2) > 1e-12 else float("nan")
    cycle = (float(a), float(cb2 * a + ob2))

    # ---- plot: the losses with both descents (full view and zoom), and w per epoch
    png = None
    if C.can_plot(verbose):
        fig, axes = C.figure(3, 1, size=(4.4, 4.0))
        ax, axz, ax2 = axes[0]
        ws = np.linspace(-0.2, 4.2, 400)
        curves = [("L(w): all 4 examples", full, "k", "-"), ("L'(w): minibatch B1 = {1, 2}", BATCHES["B1"], "tab:blue", "--"),
                  ("L''(w): minibatch B2 = {3, 4}", BATCHES["B2"], "tab:orange", "--")]
        gw = [r["w"] for r in gd] + [gd[-1]["w_next"]]
        gl = [r["full_loss"] for r in gd] + [_value_and_grad(gd[-1]["w_next"], full)[0]]
        mw = [r["w"] for r in mb]
        ml = [r["batch_loss"] for r in mb]
        cols = ["tab:blue" if r["batch"] == "B1" else "tab:orange" for r in mb]
        for a_, zoom in ((ax, False), (axz, True)):
            for (label, idx, col, ls), (mname, m) in zip(curves, minimisers.items()):
                vals = ((Y[idx][None, :] - X[idx][None, :] * ws[:, None]) ** 2).sum(1)
                a_.plot(ws, vals, color=col, ls=ls, lw=1.6, label=label)
                wm = m["closed_form"]
                lm = float(((Y[idx] - X[idx] * wm) ** 2).sum())
                a_.plot([wm], [lm], marker="*", ms=14, color=col, mec="k", zorder=6,
                        label=f"minimiser of {mname.split()[0]}: w* = {wm:.3f}" if zoom else None)
            a_.plot(gw, gl, "o-", color="k", ms=5, lw=0.9, label=f"full-batch GD ({epochs} steps)", zorder=4)
            a_.plot(mw, ml, "-", color="tab:red", lw=0.8, alpha=0.6)
            a_.scatter(mw, ml, c=cols, s=30, marker="s", edgecolors="tab:red", zorder=5,
                       label=f"minibatch descent ({2 * epochs} steps),\nat the loss of the batch it uses")
            a_.set_xlabel("w")
        ax.set_xlim(ws[0], ws[-1])
        ax.set_ylim(0, 350)
        ax.set_ylabel("sum of squared errors")
        ax.set_title("L, L' (B1), L'' (B2) and the two descents")
        ax.legend(fontsize=7, loc="upper center")
        axz.set_xlim(2.0, 3.15)
        axz.set_ylim(0, 22)
        axz.set_title("zoom: each step descends a different curve")
        stars = [h for h, lab in zip(*axz.get_legend_handles_labels()) if lab.startswith("minimiser")]
        axz.legend(stars, [h.get_label() for h in stars], fontsize=7.5, loc="upper center")

        ax2.plot(np.arange(epochs + 1), gw, "o-", color="k", label="full-batch GD (1 step / epoch)")
        ax2.plot(np.arange(2 * epochs + 1) / 2, mw + [mb[-1]["w_next"]], "s-", color="tab:red", ms=4,
                 label="minibatch B1, B2 (2 steps / epoch)")
        for (mname, m), col in zip(minimisers.items(), ["k", "tab:blue", "tab:orange"]):
            ax2.axhline(m["closed_form"], color=col, ls=":", lw=1.2, label=f"w* of {mname}")
        ax2.set_xlabel("epoch (pass over the 4 examples)")
        ax2.set_ylabel("w")
        ax2.set_title(f"w per step (lr = {lr:g}, w0 = {w0:g})")
        ax2.legend(fontsize=7, loc="lower right")
        png = C.savefig(fig, os.path.join(out, "regression.png"))

    # ---- tables and report
    mtab = C.table(["loss", "closed form sum(xy)/sum(x^2)", "batchgrad (Newton step, bg.grad of bg.grad)"],
                   [[k, f"{v['closed_form']:.6f}", f"{v['batchgrad']:.6f}"] for k, v in minimisers.items()])
    rows = [[r["method"], r["step"], r["batch"], f"{r['w']:.5f}", f"{r['batch_loss']:.4f}", f"{r['full_loss']:.4f}",
             f"{r['grad']:.4f}", f"{r['w_next']:.5f}"] for r in gd + mb]
    stab = C.table(["method", "step", "batch", "w", "batch loss", "full loss L(w)", "gradient (bg.grad)", "w - lr*grad"], rows)
    if verbose:
        print("regression: minimisers\n" + mtab + "\n\nsteps (lr = %g, w0 = %g)\n" % (lr, w0) + stab)
        print(f"\nminibatch descent tends to a 2-cycle between w = {cycle[0]:.4f} (after B1) and {cycle[1]:.4f} "
              f"(after B2), around w* = {closed_form():.4f}")
    body = f"""The seeds' example: (x, y) = (2, 4), (4, 9), (-1, -2), (5, 15), loss = sum of (y - x w)^2,
minibatches B1 = {{1, 2}} and B2 = {{3, 4}}. Every gradient below comes from batchgrad
(`bg.value_and_grad` of the vmapped per-example loss, summed); the closed forms only check it.

{C.md_image("regression", png)}

{mtab}

Full-batch gradient descent converges to w* = {closed_form():.4f}. Minibatch descent with the same
learning rate takes a step on L'(w) (pulled towards {closed_form(BATCHES['B1']):.3f}), then one on L''(w)
(pulled towards {closed_form(BATCHES['B2']):.3f}): it never settles, but tends to a 2-cycle between
w = {cycle[0]:.4f} (after each B1 step) and {cycle[1]:.4f} (after each B2 step) that brackets w*. A smaller learning rate (or a bigger batch)
shrinks the cycle.

{stab}
"""
    md = C.write_md(os.path.join(out, "regression.md"), "regression: the seeds' 4-example least squares", body)
    return {"minimisers": minimisers, "gd": gd, "minibatch": mb, "cycle": cycle, "lr": lr, "w0": w0,
            "files": C.written(png, md)}
