"""Minibatching as a graph transformation: `trace`, `grad`, `value_and_grad`, `vmap`, `replicate`.

A user writes the loss of ONE example. `trace` records it as a flat program of registry ops (the
same program the Rust executor replays). `vmap` transforms that per-example graph into a batched
one: a node gets a leading batch dimension exactly when it depends on a batched input, and each
op's batching rule (one per registry op, in `BATCH_RULES`) rewrites it into registry ops on the
batched values - so a batched vector times an unbatched matrix becomes ONE matrix-matrix product.
`replicate` is the picture students draw instead: B copies of the per-example graph plus a node
that sums the B losses. Both give the same gradients (tests show it).

The transforms compose: `grad` records its backward pass as registry ops when it is traced, so
`vmap(grad(loss), in_axes=(None, 0, 0))` yields per-example gradients in one batched pass, and
`vmap(vmap(f))` works.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import sys

from . import _args, _core
from .tensor import Tensor

T = sys.modules[__package__ + ".tensor"]  # the module (the package attribute `tensor` is bg.tensor())

__all__ = ["Graph", "trace", "grad", "value_and_grad", "vmap", "replicate", "render_minibatch_graphs", "TracingError",
           "tree_flatten", "tree_unflatten", "BATCH_RULES"]


class TracingError(RuntimeError):
    """The function cannot be traced (e.g. Python control flow on tensor values)."""


@contextlib.contextmanager
def _tracing():
    T._TRACE_DEPTH[0] += 1
    try:
        with T.enable_grad():
            yield
    finally:
        T._TRACE_DEPTH[0] -= 1


# ---- pytrees ------------------------------------------------------------------------------------
def _flatten(v: Any, leaves: list[Tensor]) -> Any:
    if isinstance(v, dict):
        keys = list(v.keys())
        return ("dict", keys, [_flatten(v[k], leaves) for k in keys])
    if isinstance(v, (list, tuple)):
        return ("list" if isinstance(v, list) else "tuple", None, [_flatten(c, leaves) for c in v])
    if v is None:
        return ("none", None, None)
    leaves.append(T.as_tensor(v))
    return ("leaf", None, None)


def tree_flatten(x: Any) -> tuple[list[Tensor], Any]:
    """Leaves (Tensors; numpy arrays and numbers are converted) and a structure to rebuild from."""
    # module-level recursion, not a self-referencing closure: a closure cycle would keep the
    # leaves (and their large buffers) alive until the garbage collector runs
    leaves: list[Tensor] = []
    return leaves, _flatten(x, leaves)


def tree_paths(tree: Any, prefix: str = "") -> list[str]:
    """A readable name per leaf: dict keys, list positions (e.g. "W1", "x", "1.b")."""
    kind, keys, kids = tree
    if kind == "leaf":
        return [prefix]
    if kind == "none":
        return []
    labels = keys if kind == "dict" else [str(i) for i in range(len(kids))]
    out: list[str] = []
    for k, c in zip(labels, kids):
        out += tree_paths(c, f"{prefix}.{k}" if prefix else str(k))
    return out


def _unflatten(t: Any, it: Any) -> Any:
    kind, keys, kids = t
    if kind == "leaf":
        return next(it)
    if kind == "none":
        return None
    if kind == "dict":
        return {k: _unflatten(c, it) for k, c in zip(keys, kids)}
    vals = [_unflatten(c, it) for c in kids]
    return vals if kind == "list" else tuple(vals)


def tree_unflatten(tree: Any, leaves: Sequence[Any]) -> Any:
    return _unflatten(tree, iter(leaves))


# ---- the traced graph ---------------------------------------------------------------------------
def _fmt_shape(s: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in s) + "]"


class Graph:
    """A traced function: a flat program of registry ops, callable and printable.

    `nodes` is a list of dicts (one per slot, in topological order): kind "input" (an argument
    leaf), "captured" (a tensor the function closed over, e.g. a parameter, read at call time) or
    "node" (op, attrs, args = slot ids, shape).
    """

    def __init__(self, program: Any, in_tree: Any, out_tree: Any, n_inputs: int, batched_inputs: Sequence[int] = (),
                 names: Sequence[str] | None = None) -> None:
        self.program = program
        self.nodes: list[dict] = list(program.nodes())
        self.outputs: list[int] = list(program.outputs)
        self.in_tree, self.out_tree, self.n_inputs = in_tree, out_tree, n_inputs
        self.batched_inputs = set(batched_inputs)
        self.names = list(names) if names else [f"x{i}" for i in range(n_inputs)]

    # -- running
    def __call__(self, *args: Any) -> Any:
        """Replay op by op through the tape (differentiable, composable with other transforms)."""
        leaves, _ = tree_flatten(args)
        vals = _interpret(self.nodes, self.outputs, leaves, None, 0)
        return tree_unflatten(self.out_tree, [v for v, _ in vals])

    def run(self, *args: Any, device: str = "cpu") -> Any:
        """Replay in ONE call to the Rust executor (no Python per op, nothing recorded), or with
        ``device="gpu"`` as one submit on the GPU (plan built once; captured tensors are read
        at call time on both)."""
        leaves, _ = tree_flatten(args)
        if device == "gpu":
            from .gpu.plan import run_program

            if not hasattr(self, "_gpu_cache"):
                self._gpu_cache: dict = {}
            outs = run_program(self.program, [np.asarray(x.numpy(), np.float32) for x in leaves], self._gpu_cache)
            return tree_unflatten(self.out_tree, [T.tensor(o) for o in outs])
        if device != "cpu":
            raise ValueError(f"Graph.run: device must be 'cpu' or 'gpu', got {device!r}")
        outs = self.program.run([x._v for x in leaves])
        return tree_unflatten(self.out_tree, [Tensor(o) for o in outs])

    # -- inspecting
    def op_counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for n in self.nodes:
            if n["kind"] == "node":
                c[n["op"]] = c.get(n["op"], 0) + 1
        return c

    def batched_slots(self) -> set[int]:
        """Slots that depend on a batched input (those carry the batch dimension)."""
        b: set[int] = set()
        for n in self.nodes:
            if n["kind"] == "input" and n["index"] in self.batched_inputs:
                b.add(n["id"])
            elif n["kind"] == "node" and any(a in b for a in n["args"]):
                b.add(n["id"])
        return b

    def __str__(self) -> str:
        lines = []
        bset = self.batched_slots()
        for n in self.nodes:
            mark = "  # batched" if n["id"] in bset else ""
            shp = _fmt_shape(n["shape"])
            if n["kind"] == "input":
                lines.append(f"%{n['id']} = input[{n['index']}] {self.names[n['index']]} : f32{shp}{mark}")
            elif n["kind"] == "captured":
                lines.append(f"%{n['id']} = captured : f32{shp}")
            else:
                args = ", ".join(f"%{a}" for a in n["args"])
                attrs = {k: v for k, v in n["attrs"].items() if not (k == "idx" and len(v) > 8)}
                at = (" " + ", ".join(f"{k}={v}" for k, v in attrs.items())) if attrs else ""
                lines.append(f"%{n['id']} = {n['op']}({args}){at} : f32{shp}{mark}")
        lines.append("return " + ", ".join(f"%{o}" for o in self.outputs))
        return "\n".join(lines)

    def __repr__(self) -> str:
        n = sum(1 for x in self.nodes if x["kind"] == "node")
        return f"<Graph: {self.n_inputs} inputs, {n} ops, {len(self.outputs)} outputs>"

    # -- pictures
    def to_dot(self, title: str | None = None, _prefix: str = "n", _cluster: bool = False) -> str:
        """Graphviz DOT: inputs as ellipses, parameters green, ops as boxes labelled with op and
        shape; nodes that carry the batch dimension are orange, with the batch dim marked `B=`."""
        bset = self.batched_slots()
        bsize = {n["shape"][0] for n in self.nodes if n["kind"] == "input" and n["id"] in bset and n["shape"]}
        # a node carries the batch dimension when its leading dim is B and it comes from a node
        # that carries it (so a per-example copy whose width happens to equal B is not marked)
        marked: set[int] = set()
        for n in self.nodes:
            lead = n["shape"][0] if n["shape"] else None
            if n["id"] in bset and lead in bsize and (n["kind"] == "input" or any(a in marked for a in n.get("args", []))):
                marked.add(n["id"])
        out = []
        for n in self.nodes:
            i, shp = n["id"], list(n["shape"])
            batched = i in bset
            if i in marked:
                shape_lbl = f"[B={shp[0]}" + ("" if len(shp) == 1 else ", " + ", ".join(map(str, shp[1:]))) + "]"
            else:
                shape_lbl = _fmt_shape(shp)
            if n["kind"] == "input":
                fill = "#f4a259" if batched else "#bde0fe"
                lbl = f"{self.names[n['index']]}\\n{shape_lbl}"
                out.append(f'{_prefix}{i} [shape=ellipse, style=filled, fillcolor="{fill}", label="{lbl}"];')
            elif n["kind"] == "captured":
                out.append(f'{_prefix}{i} [shape=box, style="rounded,filled", fillcolor="#b7e4c7", label="param\\n{shape_lbl}"];')
            else:
                fill = "#ffd6a5" if batched else "#ffffff"
                pen = ", penwidth=2" if batched else ""
                out.append(f'{_prefix}{i} [shape=box, style=filled, fillcolor="{fill}"{pen}, label="{n["op"]}\\n{shape_lbl}"];')
                for a in n["args"]:
                    out.append(f"{_prefix}{a} -> {_prefix}{i};")
        for k, o in enumerate(self.outputs):
            out.append(f'{_prefix}out{k} [shape=plaintext, label="output {k}"]; {_prefix}{o} -> {_prefix}out{k};')
        body = "\n  ".join(out)
        if _cluster:
            return f'subgraph cluster_{_prefix} {{\n  label="{title or ""}"; fontsize=18;\n  {body}\n}}'
        head = f'  label="{title}"; labelloc=t; fontsize=18;\n' if title else ""
        return f"digraph G {{\n  rankdir=TB; node [fontname=Helvetica];\n{head}  {body}\n}}"

    def render(self, path: str, title: str | None = None) -> str:
        """Render to SVG or PNG (by the suffix of `path`) with Graphviz's `dot`; see `render_dot`."""
        return render_dot(self.to_dot(title), path)


def render_dot(dot: str, path: str) -> str:
    """Write `dot` rendered to `path` (.svg/.png/.pdf) with Graphviz. Without the `dot` program,
    write the DOT text to `path` + '.dot', print a clear message, and return the DOT text."""
    fmt = path.rsplit(".", 1)[-1].lower() if "." in path else "svg"
    exe = shutil.which("dot")
    if exe is None or fmt == "dot":
        target = path if fmt == "dot" else path + ".dot"
        with open(target, "w") as f:
            f.write(dot)
        if exe is None and fmt != "dot":
            print(f"Graphviz 'dot' is not installed (Debian: apt-get install graphviz); wrote the DOT text to {target}")
        return dot
    subprocess.run([exe, f"-T{fmt}", "-o", path], input=dot.encode(), check=True)
    return dot


def trace(f: Callable[..., Any], *example_args: Any, batched_args: Sequence[int] = ()) -> Graph:
    """Record `f(*example_args)` as a Graph. Arguments may be tensors, arrays or pytrees of them;
    tensors `f` closes over (parameters) become captured slots read at call time. `batched_args`
    names arguments whose leading dimension is a batch (only for highlighting in pictures)."""
    leaves, tree = tree_flatten(example_args)
    phs = [Tensor(_core.from_numpy(np.asarray(x._v.numpy(), dtype=np.float32, order="C"), True), x._bool) for x in leaves]
    with _tracing():
        out = f(*tree_unflatten(tree, phs))
    out_leaves, out_tree = tree_flatten(out)
    prog = _core.Program.from_graph([p._v for p in phs], [o._v for o in out_leaves])
    # map argument indices to leaf indices for highlighting
    bl: list[int] = []
    at = 0
    for i, a in enumerate(example_args):
        n = len(tree_flatten(a)[0])
        if i in set(batched_args):
            bl.extend(range(at, at + n))
        at += n
    names = tree_paths(tree)
    if len(example_args) == 1:
        names = [n.split(".", 1)[1] if "." in n else "x" for n in names]
    else:
        names = [n.split(".", 1)[1] if "." in n else f"arg{n}" for n in names]
    return Graph(prog, tree, out_tree, len(leaves), bl, names)


# ---- grad ---------------------------------------------------------------------------------------
def _diff_point(x: Tensor) -> Tensor:
    """A fresh node to differentiate at: an identity op on a tensor with history (so only this
    call's uses count), or a new leaf that requires grad."""
    if x.requires_grad:
        return T.reshape(x, x.shape)
    return Tensor(_core.from_numpy(np.asarray(x._v.numpy(), dtype=np.float32, order="C"), True))


def _value_and_grad(f: Callable[..., Any], argnums: int | Sequence[int], args: tuple) -> tuple[Tensor, Any]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if any(not -len(args) <= i < len(args) for i in nums):
        raise ValueError(f"grad: argnums {argnums} out of range for a function called with {len(args)} arguments")
    args = list(args)
    points: list[list[Tensor]] = []
    trees = []
    nested = T._TRACE_DEPTH[0] > 0
    for i in nums:
        leaves, tree = tree_flatten(args[i])
        nested = nested or any(x.requires_grad for x in leaves)
        pts = [_diff_point(x) for x in leaves]
        args[i] = tree_unflatten(tree, pts)
        points.append(pts)
        trees.append(tree)
    with T.enable_grad():
        out = f(*args)
    if not isinstance(out, Tensor) or out.size != 1:
        shape = out.shape if isinstance(out, Tensor) else type(out).__name__
        raise TypeError(f"grad: the function must return a scalar tensor (one element), got {shape}")
    flat = [p for pts in points for p in pts]
    gs = _core.grad([out._v], [None], [p._v for p in flat], nested, nested)
    res = [Tensor(g) if g is not None else T.zeros(p.shape) for g, p in zip(gs, flat)]
    grads, k = [], 0
    for pts, tree in zip(points, trees):
        grads.append(tree_unflatten(tree, res[k:k + len(pts)]))
        k += len(pts)
    value = out if nested else out.detach()
    return value, grads[0] if isinstance(argnums, int) else tuple(grads)


def grad(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """The gradient of a scalar function w.r.t. argument(s) `argnums` (tensors or pytrees), as
    `jax.grad` / `torch.func.grad`. Traced (inside vmap/trace/grad) it records its backward pass
    as registry ops, so it can be transformed again."""
    def g(*args: Any) -> Any:
        return _value_and_grad(f, argnums, args)[1]
    g.__name__ = f"grad({getattr(f, '__name__', 'f')})"
    return g


def value_and_grad(f: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """(f(*args), grad(f)(*args)) in one pass."""
    def g(*args: Any) -> Any:
        return _value_and_grad(f, argnums, args)
    g.__name__ = f"value_and_grad({getattr(f, '__name__', 'f')})"
    return g


# ---- batching rules: one per registry op ----------------------------------------------------------
# A rule gets (attrs, xs, bs, shapes, out_shape, B): the values (batched ones have a leading batch
# dim of size B), which are batched, their per-example shapes, and the node's per-example output
# shape; it returns the batched output, built only from registry ops.

def _apply(name: str, xs: Sequence[Tensor], attrs: dict | None = None) -> Tensor:
    return Tensor(_core.apply(name, [x._v for x in xs], attrs or None))


def _lift(x: Tensor, b: bool, shape: Sequence[int], rank: int, B: int) -> Tensor:
    """Batched x of per-example `shape`: insert 1s after the batch dim up to per-example `rank`
    (so numpy broadcasting lines up per-example dims from the right)."""
    if not b or len(shape) == rank:
        return x
    return T.reshape(x, (B,) + (1,) * (rank - len(shape)) + tuple(shape))


def _norm(a: int, n: int) -> int:
    return a + n if a < 0 else a


def _elementwise(name: str) -> Callable:
    def rule(attrs, xs, bs, shapes, out_shape, B):
        r = len(out_shape)
        return _apply(name, [_lift(x, b, s, r, B) for x, b, s in zip(xs, bs, shapes)], attrs)
    return rule


def _reduce_rule(name: str) -> Callable:
    def rule(attrs, xs, bs, shapes, out_shape, B):
        n = len(shapes[0])
        if n == 0:  # reducing a 0-d example is the identity (and an empty axis list would mean "all")
            return T.reshape(xs[0], (B,))
        axes = attrs.get("axes") or list(range(n))
        return _apply(name, xs, {**attrs, "axes": [_norm(a, n) + 1 for a in axes]})
    return rule


def _axis_rule(name: str, extra: int = 0) -> Callable:
    def rule(attrs, xs, bs, shapes, out_shape, B):
        return _apply(name, xs, {**attrs, "axis": _norm(attrs["axis"], len(shapes[0]) + extra) + 1})
    return rule


def _reshape_rule(attrs, xs, bs, shapes, out_shape, B):
    return T.reshape(xs[0], (B,) + tuple(out_shape))


def _transpose_rule(attrs, xs, bs, shapes, out_shape, B):
    n = len(shapes[0])
    perm = attrs["perm"] or list(range(n))[::-1]
    return _apply("transpose", xs, {"perm": [0] + [_norm(p, n) + 1 for p in perm]})


def _broadcast_rule(attrs, xs, bs, shapes, out_shape, B):
    x = _lift(xs[0], True, shapes[0], len(out_shape), B)
    return _apply("broadcast_to", [x], {"shape": [B] + list(out_shape)})


def _slice_rule(attrs, xs, bs, shapes, out_shape, B):
    return _apply("slice", xs, {"start": [0] + attrs["start"], "step": [1] + attrs["step"], "len": [B] + attrs["len"]})


def _slice_grad_rule(attrs, xs, bs, shapes, out_shape, B):
    return _apply("slice_grad", xs, {"in_shape": [B] + attrs["in_shape"], "start": [0] + attrs["start"], "step": [1] + attrs["step"]})


def _join_rule(name: str, extra: int) -> Callable:
    def rule(attrs, xs, bs, shapes, out_shape, B):
        full = [x if b else T.broadcast_to(x, (B,) + tuple(s)) for x, b, s in zip(xs, bs, shapes)]
        return _apply(name, full, {"axis": _norm(attrs["axis"], len(shapes[0]) + extra) + 1})
    return rule


def _matmul_rule(attrs, xs, bs, shapes, out_shape, B):
    (a, b), (ba, bb), (sa, sb) = xs, bs, shapes
    ta, tb = bool(attrs["ta"]), bool(attrs["tb"])
    if ba and not bb and not ta and len(sb) == 2:
        # B per-example products with the same matrix = ONE GEMM over the stacked rows
        m_rows = int(np.prod(sa[:-1], dtype=np.int64))
        flat = T.reshape(a, (B * m_rows, sa[-1]))
        out = _apply("matmul", [flat, b], attrs)
        return T.reshape(out, (B,) + tuple(out_shape))
    r = max(len(sa), len(sb))
    return _apply("matmul", [_lift(a, ba, sa, r, B), _lift(b, bb, sb, r, B)], attrs)


def _xent_rule(attrs, xs, bs, shapes, out_shape, B):
    # per-example logits (N, C), labels (N,), [g (N,) or ()]: fold the batch into N
    n, c = shapes[0]
    full = []
    for i, (x, b, s) in enumerate(zip(xs, bs, shapes)):
        if i == 0:
            x = x if b else T.broadcast_to(x, (B, n, c))
            full.append(T.reshape(x, (B * n, c)))
        else:
            x = _lift(x, b, s, 1, B) if b else x
            full.append(T.reshape(T.broadcast_to(x, (B, n)), (B * n,)))
    out = _apply("softmax_xent_backward" if len(xs) == 3 else "softmax_xent", full)
    return T.reshape(out, (B,) + tuple(out_shape))


def _scatter_rule(attrs, xs, bs, shapes, out_shape, B):
    return _apply("scatter_add", xs, {**attrs, "axis": _norm(attrs["axis"], len(shapes[0])) + 1})


BATCH_RULES: dict[str, Callable] = {
    **{k: _elementwise(k) for k in ["neg", "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs", "sign", "pow_scalar",
                                     "clip", "add", "sub", "mul", "div", "maximum", "minimum", "lt", "le", "gt", "ge",
                                     "eq", "ne", "where", "relu_grad", "add_relu"]},
    **{k: _reduce_rule(k) for k in ["sum", "mean", "max", "logsumexp"]},
    "softmax": _axis_rule("softmax"), "log_softmax": _axis_rule("log_softmax"),
    "reshape": _reshape_rule, "transpose": _transpose_rule, "broadcast_to": _broadcast_rule,
    "slice": _slice_rule, "slice_grad": _slice_grad_rule,
    "take": _axis_rule("take"), "scatter_add": _scatter_rule,
    "concatenate": _join_rule("concatenate", 0), "stack": _join_rule("stack", 1),
    "matmul": _matmul_rule, "softmax_xent": _xent_rule, "softmax_xent_backward": _xent_rule,
}


def _interpret(nodes: list[dict], outputs: list[int], inputs: Sequence[Tensor], batched: Sequence[bool] | None, B: int) -> list[tuple[Tensor, bool]]:
    """Replay a program through the tape; with `batched` flags, apply each op's batching rule."""
    vals: list[Any] = [None] * len(nodes)
    for n in nodes:
        i = n["id"]
        if n["kind"] == "input":
            vals[i] = (inputs[n["index"]], bool(batched[n["index"]]) if batched else False)
        elif n["kind"] == "captured":
            vals[i] = (Tensor(n["var"]), False)
        else:
            xs = [vals[a][0] for a in n["args"]]
            bs = [vals[a][1] for a in n["args"]]
            if any(bs):
                shapes = [tuple(nodes[a]["shape"]) for a in n["args"]]
                out = BATCH_RULES[n["op"]](n["attrs"], xs, bs, shapes, tuple(n["shape"]), B)
                vals[i] = (out, True)
            else:
                vals[i] = (_apply(n["op"], xs, n["attrs"]), False)
    return [vals[o] for o in outputs]


def _move_axis(x: Tensor, src: int, dst: int) -> Tensor:
    src, dst = _norm(src, x.ndim), _norm(dst, x.ndim)
    if src == dst:
        return x
    perm = [d for d in range(x.ndim) if d != src]
    perm.insert(dst, src)
    return T.transpose(x, perm)


def vmap(f: Callable[..., Any], in_axes: int | None | Sequence[int | None] = 0, out_axes: int | Sequence[int] = 0,
         cache: bool = True, device: str = "cpu") -> Callable[..., Any]:
    """Vectorise a per-example function over a batch dimension (as `jax.vmap`).

    `in_axes`: one int/None for all arguments, or one per argument (None = not batched, e.g. the
    parameters). The per-example function is traced, then each op's batching rule rewrites the
    graph: only nodes that depend on batched inputs get the batch dimension.

    With `cache=True` the per-example graph is traced once per argument structure and per-example
    shapes and reused (as `jax.jit` caches): tensors `f` closes over are read at call time, but
    Python values it closes over are baked in at the first call - pass anything that changes as an
    argument, or use `cache=False` to retrace on every call.

    `device="gpu"` replays the batched graph on the GPU (one submit per call; e.g.
    `vmap(grad(loss), in_axes=(None, 0, 0), device="gpu")` gives per-example gradients computed
    there). It needs a call with nothing to differentiate and outside a trace.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"vmap: device must be 'cpu' or 'gpu', got {device!r}")
    graphs: dict[Any, Graph] = {}
    batched_graphs: dict[Any, Graph] = {}

    def batched(*args: Any) -> Any:
        axes = list(in_axes) if isinstance(in_axes, (list, tuple)) else [in_axes] * len(args)
        if len(axes) != len(args):
            raise ValueError(f"vmap: in_axes has {len(axes)} entries but the function was called with {len(args)} arguments")
        leaves_all: list[Tensor] = []
        flags: list[bool] = []
        sizes: dict[int, int] = {}
        for k, (a, ax) in enumerate(zip(args, axes)):
            if ax is not None:  # operator.index: no floats, strings or bools (a TypeError, as numpy / jax)
                try:
                    ax = _args.index(ax, "in_axes", "vmap")
                except TypeError:
                    raise TypeError(f"vmap: in_axes entries must be an int or None, got {ax!r} for argument {k}") from None
            leaves, _ = tree_flatten(a)
            for x in leaves:
                if ax is None:
                    leaves_all.append(x)
                    flags.append(False)
                    continue
                if x.ndim == 0 or not -x.ndim <= ax < x.ndim:
                    raise _args.AxisError(f"vmap: in_axes={ax} for argument {k}, but it has shape {x.shape}")
                x = _move_axis(x, ax, 0)
                sizes.setdefault(x.shape[0], k)
                leaves_all.append(x)
                flags.append(True)
        if not sizes:
            raise ValueError("vmap: no argument is batched (all in_axes are None)")
        if len(sizes) > 1:
            detail = ", ".join(f"argument {k} has {b}" for b, k in sizes.items())
            raise ValueError(f"vmap: batch dimensions have different sizes: {detail}")
        B = next(iter(sizes))
        if B == 0:
            raise ValueError("vmap: the batch dimension has size 0")
        tree = tree_flatten(args)[1]
        key = (repr(tree), tuple(x.shape[1:] if b else x.shape for x, b in zip(leaves_all, flags)), tuple(flags))
        g = graphs.get(key) if cache else None
        if g is None:
            examples = [x[0] if b else x for x, b in zip(leaves_all, flags)]
            g = trace(f, *tree_unflatten(tree, examples))
            if cache:
                graphs[key] = g
        oax = list(out_axes) if isinstance(out_axes, (list, tuple)) else [out_axes] * len(g.outputs)
        if len(oax) != len(g.outputs):
            raise ValueError(f"vmap: out_axes has {len(oax)} entries but the function returned {len(g.outputs)} outputs")
        oax = [_args.axis(ax, None, "out_axes", "vmap") for ax in oax]

        def run_batched(*leaves: Tensor) -> list[Tensor]:
            res = []
            for (v, b), ax in zip(_interpret(g.nodes, g.outputs, leaves, flags, B), oax):
                if not b:
                    v = T.broadcast_to(v, (B,) + v.shape)
                res.append(_move_axis(v, 0, _args.axis(ax, v.ndim, "out_axes", "vmap")))
            return res

        # Nothing to differentiate and not inside a trace: replay the batched graph as ONE flat
        # program in Rust (built once per batch size) instead of op by op from Python.
        fast = cache and not T._TRACE_DEPTH[0] and not any(x.requires_grad for x in leaves_all) and not any(
            n["kind"] == "captured" and n["var"].requires_grad for n in g.nodes)
        if device == "gpu" and not fast:
            raise ValueError("vmap(device='gpu'): the batched graph runs on the GPU only with cache=True, outside a trace "
                             "and with no input requiring gradients (differentiate inside f, e.g. vmap(grad(f)))")
        if fast:
            bkey = (key, B)
            bg_graph = batched_graphs.get(bkey)
            if bg_graph is None:
                bg_graph = batched_graphs[bkey] = trace(run_batched, *leaves_all)
            if device == "gpu":
                outs = tree_flatten(bg_graph.run(*leaves_all, device="gpu"))[0]
            else:
                outs = [Tensor(o) for o in bg_graph.program.run([x._v for x in leaves_all])]
        else:
            outs = run_batched(*leaves_all)
        return tree_unflatten(g.out_tree, outs)

    batched.__name__ = f"vmap({getattr(f, '__name__', 'f')})"
    return batched


def replicate(f: Callable[..., Any], B: int, in_axes: int | None | Sequence[int | None] = 0, reduction: str = "sum") -> Callable[..., Any]:
    """Construction (a): B copies of the per-example graph of `f` (one per example of the batched
    arguments) and one node that sums (or averages) the B scalar results."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"replicate: reduction must be 'sum' or 'mean', got {reduction!r}")
    B = _args.size(B, "B", "replicate", minimum=1)

    def replicated(*args: Any) -> Tensor:
        axes = list(in_axes) if isinstance(in_axes, (list, tuple)) else [in_axes] * len(args)
        if len(axes) != len(args):
            raise ValueError(f"replicate: in_axes has {len(axes)} entries but the function was called with {len(args)} arguments")
        losses = []
        for i in range(B):
            ex = []
            for a, ax in zip(args, axes):
                if ax is None:
                    ex.append(a)
                else:
                    leaves, tree = tree_flatten(a)
                    for x in leaves:
                        ax = _args.axis(ax, x.ndim, "in_axes", "replicate")
                        if x.shape[ax] != B:
                            raise ValueError(f"replicate: expected B={B} examples along axis {ax}, got shape {x.shape}")
                    ex.append(tree_unflatten(tree, [T.take(x, [i], axis=ax).reshape(x.shape[:ax] + x.shape[ax + 1:]) for x in leaves]))
            losses.append(f(*ex))
        total = losses[0]
        for l in losses[1:]:
            total = total + l
        return total * (1.0 / B) if reduction == "mean" else total

    replicated.__name__ = f"replicate({getattr(f, '__name__', 'f')}, {B})"
    return replicated


def render_minibatch_graphs(f: Callable[..., Any], params: Any, X: Any, Y: Any, path: str, B: int = 2) -> str:
    """One picture, three graphs side by side for `loss = f(params, x, y)` of ONE example:
    the per-example graph, the replicated graph (B copies + a sum node) and the batched graph
    (vmap: a batch dimension on every node that depends on the data, then a sum)."""
    Xb, Yb = T.as_tensor(X)[:B], T.as_tensor(Y)[:B]
    g1 = trace(f, params, Xb[0], Yb[0])
    g2 = trace(replicate(f, B, in_axes=(None, 0, 0)), params, Xb, Yb, batched_args=(1, 2))
    g3 = trace(lambda p, x, y: T.sum(vmap(f, in_axes=(None, 0, 0))(p, x, y)), params, Xb, Yb, batched_args=(1, 2))
    parts = [g1.to_dot("(1) one example", "a", True), g2.to_dot(f"(2) replicated, B={B}", "b", True),
             g3.to_dot(f"(3) batched, B={B}", "c", True)]
    dot = "digraph G {\n  rankdir=TB; node [fontname=Helvetica]; newrank=true;\n" + "\n".join(parts) + "\n}"
    return render_dot(dot, path)
