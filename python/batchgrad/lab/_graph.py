"""`graph`: what a minibatch is in the computational graph.

The loss of ONE example of a small MLP (3 inputs, 2 tanh units, 2 classes, cross-entropy) is
traced as a graph of registry ops. A minibatch of B examples can be built from it in two ways
that give the same gradient: (2) REPLICATE the graph B times (one copy per example, same shared
parameters) and add a node summing the B losses - the picture students draw; (3) BATCH it
(`bg.vmap`): every node that depends on the data gets a leading batch dimension, so the B
matrix-vector products become one matrix-matrix product (GEMM) - what frameworks run. The
replicated graph grows with B; the batched one keeps its size and only its shapes change.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import numpy as np

from . import _common as C


def tiny_mlp(seed: int = 0, d: int = 3, h: int = 2, c: int = 2) -> dict[str, Any]:
    from ..tensor import tensor

    r = np.random.default_rng(seed)
    return {"W0": tensor(r.normal(size=(d, h)) * 0.5), "b0": tensor(r.normal(size=h) * 0.1),
            "W1": tensor(r.normal(size=(h, c)) * 0.5), "b1": tensor(r.normal(size=c) * 0.1)}


def graph_sizes(loss: Any, params: dict[str, Any], X: Any, Y: Any, B: int) -> dict[str, Any]:
    """Op counts of the replicated and the batched graph for a minibatch of B, and the max abs
    difference of their gradients."""
    from .. import transforms

    Xb, Yb = X[:B], Y[:B]
    rep = transforms.replicate(loss, B, in_axes=(None, 0, 0))
    bat = lambda p, x, y: transforms.vmap(loss, in_axes=(None, 0, 0))(p, x, y).sum()  # noqa: E731
    g_rep = transforms.trace(rep, params, Xb, Yb, batched_args=(1, 2))
    g_bat = transforms.trace(bat, params, Xb, Yb, batched_args=(1, 2))
    gr = transforms.grad(rep)(params, Xb, Yb)
    gb = transforms.grad(bat)(params, Xb, Yb)
    diff = max(float(np.abs(gr[k].numpy() - gb[k].numpy()).max()) for k in params)
    count = lambda g: (sum(n["kind"] == "node" for n in g.nodes), g.op_counts().get("matmul", 0))  # noqa: E731
    (nr, mr), (nb, mb) = count(g_rep), count(g_bat)
    return {"B": B, "replicated_ops": nr, "replicated_matmuls": mr, "batched_ops": nb, "batched_matmuls": mb,
            "grad_max_abs_diff": diff}


def _with_dpi(dot: str, dpi: int) -> str:
    return re.sub(r"^digraph G \{", f"digraph G {{\n  dpi={dpi};", dot, count=1)


def run(out: str = "batchgrad-lab", seed: int = 0, quick: bool = False, B: int = 2, dpi: int = 60,
        verbose: bool = True) -> dict[str, Any]:
    """Render the three graphs to graphs.svg and graphs.png (Graphviz; without it the DOT text is
    written instead) and count the ops of the replicated vs batched graph for several B."""
    from .. import transforms
    from ..tensor import tensor

    out = C.out_dir(out)
    params = tiny_mlp(seed)
    loss = C.mlp_example_loss("tanh")
    r = np.random.default_rng(seed + 1)
    Bmax = 4 if quick else 16
    X = tensor(r.normal(size=(Bmax, 3)))
    Y = tensor(r.integers(0, 2, size=Bmax).astype(np.float32))

    svg = os.path.join(out, "graphs.svg")
    dot = transforms.render_minibatch_graphs(loss, params, X, Y, svg, B=B)
    dot_path = os.path.join(out, "graphs.dot")
    with open(dot_path, "w") as f:
        f.write(dot)
    png = os.path.join(out, "graphs.png")
    have_dot = shutil.which("dot") is not None
    transforms.render_dot(_with_dpi(dot, dpi), png)
    files = [dot_path] + ([svg, png] if have_dot else [svg + ".dot", png + ".dot"])

    sizes = [graph_sizes(loss, params, X, Y, b) for b in ([1, 2, 4] if quick else [1, 2, 4, 8, 16])]
    one = transforms.trace(loss, params, X[0], Y[0])
    n_one = sum(n["kind"] == "node" for n in one.nodes)
    tab = C.table(["B", "replicated: ops", "replicated: matmuls", "batched: ops", "batched: matmuls",
                   "max |grad replicated - grad batched|"],
                  [[s["B"], s["replicated_ops"], s["replicated_matmuls"], s["batched_ops"], s["batched_matmuls"],
                    f"{s['grad_max_abs_diff']:.2g}"] for s in sizes])
    if verbose:
        print(f"graph: one example's loss is {n_one} ops; minibatch graphs of B examples:\n" + tab)
        print("rendered: " + ", ".join(os.path.basename(f) for f in files)
              + ("" if have_dot else " (Graphviz 'dot' not installed: DOT text only)"))
    body = f"""The loss of ONE example of a tiny MLP (3 inputs, 2 tanh units, 2 classes, cross-entropy),
and the two ways to make a minibatch of B = {B} from it (`bg.render_minibatch_graphs`): (1) the
per-example graph; (2) replicated: B copies sharing the parameters W0, b0, W1, b1 plus a node
adding the B losses; (3) batched (`bg.vmap`): the same graph, with a batch dimension `B=` on every
node that depends on the data (orange). Both have the same gradient.

![graphs](graphs.png)

One example's loss is {n_one} ops. Ops in the forward graph of a minibatch of B:

{tab}

The replicated graph grows linearly with B (B matrix-vector products per layer); the batched graph
has the same ops for every B, its matmuls are matrix-matrix products of B rows (one GEMM per layer),
which is what makes batches fast (see `throughput`). Indexing with a batch dimension is just the
bookkeeping of construction (3).
"""
    md = C.write_md(os.path.join(out, "graph.md"), "graph: a minibatch in the computational graph", body)
    files.append(md)
    return {"ops_one_example": n_one, "sizes": sizes, "graphviz": have_dot, "files": files}
