"""Helpers shared by the lab experiments: output folder, figures, markdown tables, timing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DPI = 80  # small, commit-sized PNGs


def out_dir(out: str | os.PathLike) -> str:
    path = os.fspath(out)
    os.makedirs(path, exist_ok=True)
    return path


PLOT_HINT = 'pip install "batchgrad[plot]"'
SKIPPED_NOTE = (f"plots skipped: matplotlib is not installed ({PLOT_HINT} to draw them); "
                "the tables and the markdown report are written as usual")
_skip_noted = False


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (the lab's plots need it; nothing else does)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def can_plot(verbose: bool = True) -> bool:
    """True if matplotlib is there to draw an experiment's plots. Otherwise False, after saying so
    in one line (once per process, and only when `verbose`): the experiment then skips its PNGs
    and still prints its tables and writes its report."""
    global _skip_noted
    if have_matplotlib():
        return True
    if verbose and not _skip_noted:
        print(SKIPPED_NOTE, flush=True)
        _skip_noted = True
    return False


def md_image(name: str, png: str | None) -> str:
    """The markdown for an experiment's plot: the image, or a line saying why it is missing."""
    if png:
        return f"![{name}]({os.path.basename(png)})"
    return f"*(plot not drawn: matplotlib was not installed; `{PLOT_HINT}` and run again to get {name}.png)*"


def written(*paths: str | None) -> list[str]:
    """The files an experiment wrote (a skipped plot is None)."""
    return [p for p in paths if p]


def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.4, 4.4)) -> tuple[Any, Any]:
    """A matplotlib Figure (object API, Agg canvas: no display, no global pyplot state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"the batchgrad lab draws its plots with matplotlib: {PLOT_HINT} "
                          "(or pip install matplotlib)") from None
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def savefig(fig: Any, path: str, dpi: int = DPI) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def fmt(v: Any, digits: int = 5) -> str:
    """A number for a table: `digits` significant digits, scientific for very large/small values."""
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not np.isfinite(v):
            return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-4):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (also readable as plain text on a terminal)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def write_md(path: str, title: str, body: str) -> str:
    with open(path, "w") as f:
        f.write(f"## {title}\n\n{body.strip()}\n")
    return path


def median_time(step: Callable[[], Any], min_repeats: int = 3, max_repeats: int = 50, min_total_s: float = 0.15,
                warmup: int = 1) -> tuple[float, int]:
    """Median wall time of `step()` over repeats (after `warmup` untimed calls): at least
    `min_repeats`, then more until `min_total_s` seconds are spent or `max_repeats` reached."""
    for _ in range(warmup):
        step()
    ts: list[float] = []
    total = 0.0
    while len(ts) < min_repeats or (total < min_total_s and len(ts) < max_repeats):
        t0 = time.perf_counter()
        step()
        dt = time.perf_counter() - t0
        ts.append(dt)
        total += dt
    return float(np.median(ts)), len(ts)


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bundled digits with the CLI's fixed 80/20 split: X_train, y_train, X_test, y_test."""
    from .. import datasets

    X_tr, X_te, y_tr, y_te = datasets.train_test_split_digits(test_fraction=0.2, seed=seed)
    return X_tr, y_tr, X_te, y_te


def xent_one(logits: Any, label: Any) -> Any:
    """Cross-entropy of ONE example (logits (C,), a 0-d float label) built from the registry op
    `softmax_xent`, so it can be traced and vmapped (no numpy reads of the label)."""
    from .. import _core
    from ..tensor import Tensor, reshape

    z = reshape(logits, (1, -1))
    return Tensor(_core.apply("softmax_xent", [z._v, reshape(label, (1,))._v], None)).sum()


def mlp_params(model: Any) -> dict[str, Any]:
    """The weights of a `bg.nn.MLP` as a flat dict {"W0", "b0", "W1", "b1", ...} of its Parameters."""
    from ..nn import Linear

    p: dict[str, Any] = {}
    for i, layer in enumerate(m for m in model if isinstance(m, Linear)):
        p[f"W{i}"] = layer.weight
        if layer.bias is not None:
            p[f"b{i}"] = layer.bias
    return p


def mlp_example_loss(activation: str = "relu") -> Callable[[dict, Any, Any], Any]:
    """loss(params, x, y) of ONE example for the MLP whose weights `mlp_params` returns."""
    from ..tensor import relu, sigmoid, tanh

    act = {"relu": relu, "tanh": tanh, "sigmoid": sigmoid}[activation]

    def loss(p: dict, x: Any, y: Any) -> Any:
        n = sum(1 for k in p if k.startswith("W"))
        h = x
        for i in range(n):
            h = h @ p[f"W{i}"]
            if f"b{i}" in p:
                h = h + p[f"b{i}"]
            if i < n - 1:
                h = act(h)
        return xent_one(h, y)

    return loss
