"""Per-example gradients of an MLP 784-256-256-10 (B = 128), side by side in one process.

    python benches/per_example.py [--batch 128] [--threads 1 2] [--repeats 15]

Columns: batchgrad vmap(grad), a Python loop of B batchgrad backward() calls, torch.func
vmap(grad), a PyTorch loop of B backward passes, a hand-written numpy version, JAX vmap(grad) when
jax is installed, and the floor: writing the (B x 269,322)-float output once into memory that is
already mapped. Also `vmap(f)` against the same model written with an explicit batch dimension.
Medians; ratios are against batchgrad vmap(grad) from the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import batchgrad as bg

SIZES = [784, 256, 256, 10]


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def make_params(seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    p = {}
    for i in range(3):
        p[f"W{i}"] = (r.normal(size=(SIZES[i], SIZES[i + 1])) * np.sqrt(2 / SIZES[i])).astype(np.float32)
        p[f"b{i}"] = np.zeros(SIZES[i + 1], np.float32)
    return p


def bg_loss(p, x, y):
    h = x
    for i in range(3):
        h = h @ p[f"W{i}"] + p[f"b{i}"]
        if i < 2:
            h = h.relu()
    return bg.nn.functional.cross_entropy(h, y)


def numpy_per_example(p, X, Y):
    """Hand-written per-example backward: activations batched, weight gradients as outer products."""
    hs, h = [X], X
    for i in range(3):
        h = h @ p[f"W{i}"] + p[f"b{i}"]
        if i < 2:
            h = np.maximum(h, 0)
        hs.append(h)
    z = hs[-1]
    e = np.exp(z - z.max(1, keepdims=True))
    g = e / e.sum(1, keepdims=True)
    g[np.arange(len(Y)), Y] -= 1
    out = {}
    for i in (2, 1, 0):
        out[f"W{i}"] = np.einsum("bi,bj->bij", hs[i], g)
        out[f"b{i}"] = g
        if i > 0:
            g = (g @ p[f"W{i}"].T) * (hs[i] > 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    B = a.batch
    r = np.random.default_rng(1)
    pn = make_params()
    Xn = r.normal(size=(B, 784)).astype(np.float32)
    Yn = r.integers(0, 10, B)
    p = {k: bg.tensor(v) for k, v in pn.items()}
    X, Y = bg.tensor(Xn), bg.tensor(Yn)
    n_params = sum(v.size for v in pn.values())
    print(f"per-example gradients of MLP 784-256-256-10, B={B}: output {B} x {n_params:,} floats = {B * n_params * 4 / 1e6:.0f} MB")
    pe = bg.vmap(bg.grad(bg_loss), in_axes=(None, 0, 0))
    vf = bg.vmap(bg_loss, in_axes=(None, 0, 0))
    floor_buf = np.empty(B * n_params, np.float32)

    torch = None
    try:
        import torch  # noqa: F811
        from torch.func import grad as tgrad
        from torch.func import vmap as tvmap
    except ImportError:
        pass
    jax = None
    try:
        import jax  # noqa: F811
        import jax.numpy as jnp
    except ImportError:
        pass

    rows = []
    for th in a.threads:
        bg.set_num_threads(th)
        res: dict[str, float] = {}
        res["batchgrad vmap(grad)"] = median_ms(lambda: pe(p, X, Y), a.repeats)

        def bg_loop():
            out = []
            for i in range(B):
                for v in p.values():
                    v.requires_grad = True
                    v.zero_grad()
                bg_loss(p, X[i], Y[i]).backward()
                out.append([v.grad for v in p.values()])
            for v in p.values():
                v.requires_grad = False
            return out
        res["batchgrad loop of B backward()"] = median_ms(bg_loop, max(3, a.repeats // 3))
        res["numpy hand-written"] = median_ms(lambda: numpy_per_example(pn, Xn, Yn), a.repeats)
        res["floor: write output once"] = median_ms(lambda: floor_buf.fill(1.0), a.repeats)
        if torch is not None:
            torch.set_num_threads(th)
            tp = {k: torch.tensor(v) for k, v in pn.items()}
            tX, tY = torch.tensor(Xn), torch.tensor(Yn)

            def tl(p, x, y):
                h = x
                for i in range(3):
                    h = h @ p[f"W{i}"] + p[f"b{i}"]
                    if i < 2:
                        h = h.relu()
                return torch.nn.functional.cross_entropy(h[None], y[None])
            tf = tvmap(tgrad(tl), in_dims=(None, 0, 0))
            res["torch.func vmap(grad)"] = median_ms(lambda: tf(tp, tX, tY), a.repeats)
            tpg = {k: v.clone().requires_grad_(True) for k, v in tp.items()}

            def t_loop():
                out = []
                for i in range(B):
                    for v in tpg.values():
                        v.grad = None
                    tl(tpg, tX[i], tY[i]).backward()
                    out.append([v.grad for v in tpg.values()])
                return out
            res["torch loop of B backward()"] = median_ms(t_loop, max(3, a.repeats // 3))
        if jax is not None:
            jp = {k: jnp.asarray(v) for k, v in pn.items()}

            def jl(p, x, y):
                h = x
                for i in range(3):
                    h = h @ p[f"W{i}"] + p[f"b{i}"]
                    if i < 2:
                        h = jax.nn.relu(h)
                return -jax.nn.log_softmax(h)[y]
            jf = jax.jit(jax.vmap(jax.grad(jl), in_axes=(None, 0, 0)))
            jX, jY = jnp.asarray(Xn), jnp.asarray(Yn)
            res["jax vmap(grad) (jit; threads not pinned)"] = median_ms(lambda: jax.block_until_ready(jf(jp, jX, jY)), a.repeats)
        res["batchgrad vmap(loss)"] = median_ms(lambda: vf(p, X, Y), a.repeats * 3)

        def explicit():
            h = X
            for i in range(3):
                h = h @ p[f"W{i}"] + p[f"b{i}"]
                if i < 2:
                    h = h.relu()
            return bg.nn.functional.cross_entropy(h, Y, reduction="none")
        res["batchgrad explicit batch dim"] = median_ms(explicit, a.repeats * 3)
        rows.append((th, res))

    ref = "batchgrad vmap(grad)"
    names = list(rows[0][1])
    print("\n| | " + " | ".join(f"{th} thread{'s' if th > 1 else ''} (ms)" for th, _ in rows) + " | " +
          " | ".join(f"x vs ours, {th}t" for th, _ in rows) + " |")
    print("|---" * (1 + 2 * len(rows)) + "|")
    for n in names:
        cells = [f"{res.get(n, float('nan')):.2f}" for _, res in rows]
        ratios = [f"{res.get(n, float('nan')) / res[ref]:.2f}" for _, res in rows]
        print(f"| {n} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    for th, res in rows:
        print(f"\n{th} thread(s): vmap(loss) / explicit batch = {res['batchgrad vmap(loss)'] / res['batchgrad explicit batch dim']:.2f}; "
              f"vmap(grad) / floor = {res[ref] / res['floor: write output once']:.2f}")


if __name__ == "__main__":
    main()
