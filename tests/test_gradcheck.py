"""Every op of the registry (`bg._core.op_table()`) checked against a float64 numpy reference.

`SPECS` maps each op name to a function building test cases: float32 inputs (broadcast shapes,
several axes, negative steps, repeated and negative indices...), how to call the op (through the
public API where there is one), and a float64 numpy forward. For every case:

- the forward matches the reference (~1e-5 relative);
- for differentiable ops, the VJP (backward of `(out * G).sum()` with a random `G`) matches
  central finite differences of the float64 reference, and so does the second-order VJP (the
  gradient of the first-order gradients, recorded with `create_graph=True`);
- for non-differentiable ops, nothing is recorded.

A test asserts that `SPECS` covers the registry exactly, so a new op without a spec (or a spec
for a removed op) fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pytest

import batchgrad as bg

F32 = np.float32
TABLE = {d["name"]: d for d in bg._core.op_table()}


def core(name: str, *xs: bg.Tensor, **attrs) -> bg.Tensor:
    """Call a registry op directly (for internal ops with no public function)."""
    return bg.Tensor(bg._core.apply(name, [x._v for x in xs], attrs or None))


@dataclasses.dataclass
class Case:
    inputs: list[np.ndarray]  # float32 values
    fn: Callable[..., bg.Tensor]  # Tensors -> Tensor, through the public API where possible
    ref: Callable[..., np.ndarray]  # float64 arrays -> float64 array
    wrt: tuple[int, ...] | None = None  # differentiable inputs (None: all)
    label: str = ""

    @property
    def grad_inputs(self) -> tuple[int, ...]:
        return tuple(range(len(self.inputs))) if self.wrt is None else self.wrt


# ---- input generators (float32, away from kinks where that matters) ------------------------------
def randn(rng: np.random.Generator, shape: Sequence[int], scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(F32)


def positive(rng: np.random.Generator, shape: Sequence[int], lo: float = 0.5, hi: float = 2.0) -> np.ndarray:
    return rng.uniform(lo, hi, shape).astype(F32)


def nonzero(rng: np.random.Generator, shape: Sequence[int], lo: float = 0.2, hi: float = 2.0) -> np.ndarray:
    """|x| in [lo, hi] with a random sign: away from the kinks of abs/relu/sign and the pole of 1/x."""
    return (rng.choice([-1.0, 1.0], shape) * rng.uniform(lo, hi, shape)).astype(F32)


def distinct(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """Values at least 0.2 apart (a unique max along every axis)."""
    n = int(np.prod(shape, dtype=np.int64))
    v = rng.permutation(n) * 0.3 - 0.15 * n + rng.uniform(-0.05, 0.05, n)
    return v.reshape(shape).astype(F32)


def apart(rng: np.random.Generator, sa: Sequence[int], sb: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Two arrays whose broadcast pairs differ by at least 0.3 (no ties for maximum/minimum)."""
    a = rng.integers(-2, 3, sa) + 0.25 + rng.uniform(-0.1, 0.1, sa)
    b = rng.integers(-2, 3, sb) - 0.25 + rng.uniform(-0.1, 0.1, sb)
    return a.astype(F32), b.astype(F32)


def away_from(rng: np.random.Generator, shape: Sequence[int], points: Sequence[float], gap: float = 0.1) -> np.ndarray:
    """Uniform values in [-1.5, 1.5] nudged at least `gap` away from each of `points` (clip bounds)."""
    x = rng.uniform(-1.5, 1.5, shape)
    for p in points:
        near = np.abs(x - p) < gap
        x = np.where(near, p + np.sign(x - p + 1e-12) * (gap + np.abs(x - p)), x)
    return x.astype(F32)


# ---- float64 references ----------------------------------------------------------------------------
def np_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_logsumexp(x: np.ndarray, axis=None, keepdims: bool = False) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def np_xent(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np_logsumexp(z, axis=1) - z[np.arange(len(y)), y.astype(np.int64)]


def np_xent_backward(z: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    onehot = np.eye(z.shape[1])[y.astype(np.int64)]
    return (np_softmax(z) - onehot) * np.reshape(g, (-1, 1))


def np_slice_grad(g: np.ndarray, in_shape, start, step) -> np.ndarray:
    out = np.zeros(in_shape, dtype=g.dtype)
    idx = tuple(s + p * np.arange(n) for s, p, n in zip(start, step, g.shape))
    out[np.ix_(*idx)] = g  # leading axes only; the rest are taken whole
    return out


def np_scatter_add(g: np.ndarray, idx, axis: int, dim: int) -> np.ndarray:
    shape = list(g.shape)
    shape[axis] = dim
    out = np.zeros(shape, dtype=g.dtype)
    np.add.at(out, (slice(None),) * (axis % g.ndim) + (np.asarray(idx),), g)
    return out


# ---- the spec table ----------------------------------------------------------------------------------
UNARY_SHAPES = [(2, 3, 4), (5,), ()]
BCAST = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)), ((2, 1, 3), (4, 1))]
# (axis, keepdims) for reductions of a (2, 3, 4) tensor
AXES = [(None, False), (0, False), (-1, True), ((0, 2), False), ((0, 2), True), ((1, 2), True), ((2, 0, 1), False)]


def unary(fns: Sequence[Callable], ref: Callable, gen: Callable, shapes=UNARY_SHAPES) -> Callable:
    """Cases over several shapes, alternating between the given call forms (function, method...)."""
    return lambda rng: [Case([gen(rng, s)], fns[i % len(fns)], ref, label=f"shape={s} call#{i % len(fns)}") for i, s in enumerate(shapes)]


def binary(fn: Callable, ref: Callable, gen: Callable | None = None, pairs=BCAST) -> Callable:
    def cases(rng):
        out = []
        for sa, sb in pairs:
            a, b = gen(rng, sa, sb) if gen else (randn(rng, sa), randn(rng, sb))
            out.append(Case([a, b], fn, ref, label=f"{sa} with {sb}"))
            if sa != sb:  # and the other way round
                b2, a2 = gen(rng, sb, sa) if gen else (randn(rng, sb), randn(rng, sa))
                out.append(Case([b2, a2], fn, ref, label=f"{sb} with {sa}"))
        return out
    return cases


def comparison(fn: Callable, ref: Callable) -> Callable:
    """Small integers, so ties occur and eq/ne/le/ge are exercised at equality."""
    return binary(fn, ref, lambda rng, sa, sb: (rng.integers(-1, 2, sa).astype(F32), rng.integers(-1, 2, sb).astype(F32)))


def reductions(fn: Callable, method: str, ref: Callable, gen: Callable = randn) -> Callable:
    def cases(rng):
        out = []
        for i, (axis, keep) in enumerate(AXES):
            if i % 2:
                call = lambda x, a=axis, k=keep: getattr(x, method)(axis=a, keepdims=k)  # noqa: E731
            else:
                call = lambda x, a=axis, k=keep: fn(x, a, k)  # noqa: E731
            out.append(Case([gen(rng, (2, 3, 4))], call, lambda x, a=axis, k=keep: ref(x, axis=a, keepdims=k), label=f"axis={axis} keepdims={keep}"))
        out.append(Case([gen(rng, (5,))], lambda x: fn(x, 0, False), lambda x: ref(x, axis=0, keepdims=False), label="1-d"))
        return out
    return cases


def gather_cases(rng):
    x = randn(rng, (4, 5))
    return [
        Case([x], lambda t: bg.take(t, [2, -1, 0, 2], axis=0), lambda a: np.take(a, [2, -1, 0, 2], axis=0), label="axis 0, repeated + negative"),
        Case([x], lambda t: bg.take(t, [-5, 4, 4], axis=1), lambda a: np.take(a, [-5, 4, 4], axis=1), label="axis 1"),
        Case([x], lambda t: bg.take(t, [[0, 1], [1, -1]], axis=-1), lambda a: np.take(a, [[0, 1], [1, -1]], axis=-1), label="2-d indices"),
        Case([x], lambda t: t[[3, -1, 3]], lambda a: a[[3, -1, 3]], label="x[[3, -1, 3]]"),
        Case([randn(rng, (2, 3, 4))], lambda t: t[:, [0, -2, 0]], lambda a: a[:, [0, -2, 0]], label="x[:, [0, -2, 0]]"),
        Case([randn(rng, (2, 3, 4))], lambda t: t[1, :, [0, 3, 0]], lambda a: a[1, :, [0, 3, 0]], label="x[1, :, [0, 3, 0]]"),
        Case([randn(rng, (3, 4))], lambda t: t[np.array([True, False, True])], lambda a: a[np.array([True, False, True])], label="bool mask"),
    ]


def slice_cases(rng):
    x = randn(rng, (4, 5, 6))
    keys = [
        np.s_[::-1], np.s_[1:3, ::-2], np.s_[..., 1], np.s_[None, :, 4:0:-2], np.s_[1:100, -100:2],
        np.s_[-1, 2], np.s_[:, ::3, -2:], np.s_[::-2, 3, ::-4], np.s_[2:1],
    ]
    return [Case([x], lambda t, k=k: t[k], lambda a, k=k: a[k], label=f"x[{k}]") for k in keys]


def slice_grad_cases(rng):
    geoms = [  # (gradient shape, in_shape, start, step)
        ((3, 3), [5, 6], [4, 1], [-2, 2]),
        ((2, 5, 2), [4, 5, 2], [1], [1]),
        ((2, 2), [4, 4], [3, 0], [-3, 3]),
    ]
    return [
        Case([randn(rng, gs)], lambda g, s=ins, a=st, p=sp: core("slice_grad", g, in_shape=s, start=a, step=p),
             lambda g, s=ins, a=st, p=sp: np_slice_grad(g, s, a, p), label=f"{gs} into {ins} start={st} step={sp}")
        for gs, ins, st, sp in geoms
    ]


def scatter_add_cases(rng):
    geoms = [((4, 3), [2, -1, 0, 2], 0, 5), ((2, 3), [0, 0, -1], 1, 4), ((2, 3, 2), [1, 1, 1], -2, 2)]
    return [
        Case([randn(rng, gs)], lambda g, i=idx, a=ax, d=dim: core("scatter_add", g, idx=i, axis=a, dim=d),
             lambda g, i=idx, a=ax, d=dim: np_scatter_add(g, i, a, d), label=f"{gs} idx={idx} axis={ax} dim={dim}")
        for gs, idx, ax, dim in geoms
    ]


def concatenate_cases(rng):
    geoms = [([(2, 3), (2, 1), (2, 4)], 1), ([(2, 3), (2, 1), (2, 4)], -1), ([(1, 3), (3, 3)], 0), ([(2, 2, 3), (2, 1, 3)], 1), ([(4,)], 0)]
    return [
        Case([randn(rng, s) for s in shapes], lambda *ts, a=ax: bg.concatenate(list(ts), axis=a),
             lambda *xs, a=ax: np.concatenate(xs, axis=a), label=f"{shapes} axis={ax}")
        for shapes, ax in geoms
    ]


def stack_cases(rng):
    return [
        Case([randn(rng, (2, 3)) for _ in range(3)], lambda *ts, a=ax: bg.stack(list(ts), axis=a),
             lambda *xs, a=ax: np.stack(xs, axis=a), label=f"axis={ax}")
        for ax in (0, 1, 2, -1, -3)
    ] + [Case([randn(rng, ())], lambda t: bg.stack([t, t * 2.0]), lambda x: np.stack([x, x * 2.0]), label="0-d, same input twice")]


def matmul_cases(rng):
    pairs = [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
             ((2, 3, 4), (4,)), ((3,), (2, 3, 2)), ((1, 2, 3), (3, 3, 2))]
    out = [Case([randn(rng, sa), randn(rng, sb)], lambda a, b: a @ b, np.matmul, label=f"{sa} @ {sb}") for sa, sb in pairs]
    out.append(Case([randn(rng, (3, 4)), randn(rng, (4, 2))], bg.matmul, np.matmul, label="bg.matmul"))
    for ta, tb, sa, sb in [(True, False, (2, 4, 3), (4, 5)), (False, True, (3, 4), (2, 5, 4)), (True, True, (4, 3), (5, 4))]:
        out.append(Case([randn(rng, sa), randn(rng, sb)], lambda a, b, ta=ta, tb=tb: core("matmul", a, b, ta=ta, tb=tb),
                        lambda a, b, ta=ta, tb=tb: np.matmul(np.swapaxes(a, -1, -2) if ta else a, np.swapaxes(b, -1, -2) if tb else b),
                        label=f"ta={ta} tb={tb} {sa} {sb}"))
    return out


def softmax_like(fn: Callable, method: str, ref: Callable) -> Callable:
    geoms = [((3, 4), -1), ((2, 3, 4), 1), ((2, 3, 4), 0), ((5,), 0), ((3, 1), -1)]
    def cases(rng):
        return [
            Case([randn(rng, s, 2.0)], (lambda t, a=ax: fn(t, axis=a)) if i % 2 == 0 else (lambda t, a=ax: getattr(t, method)(axis=a)),
                 lambda x, a=ax: ref(x, axis=a), label=f"shape={s} axis={ax}")
            for i, (s, ax) in enumerate(geoms)
        ]
    return cases


def labels(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    return rng.integers(0, c, n).astype(F32)


def xent_cases(rng):
    return [
        Case([randn(rng, (n, c), 2.0), labels(rng, n, c)], lambda z, y: core("softmax_xent", z, y), np_xent, wrt=(0,), label=f"N={n} C={c}")
        for n, c in [(5, 4), (1, 3), (6, 1)]
    ]


def xent_backward_cases(rng):
    return [
        Case([randn(rng, (n, c), 2.0), labels(rng, n, c), randn(rng, gs)], lambda z, y, g: core("softmax_xent_backward", z, y, g),
             np_xent_backward, wrt=(0, 2), label=f"N={n} C={c} g{gs}")
        for n, c, gs in [(5, 4, (5,)), (4, 3, ()), (3, 2, (1,))]
    ]


def where_cases(rng):
    out = []
    for sc, sa, sb in [((3, 4), (3, 4), (3, 4)), ((3, 1), (4,), (1,)), ((2, 3, 4), (3, 1), ()), ((), (2, 2), (2, 1))]:
        cond = rng.integers(0, 2, sc).astype(F32)
        out.append(Case([cond, randn(rng, sa), randn(rng, sb)], bg.where, lambda c, a, b: np.where(c != 0, a, b), wrt=(1, 2), label=f"{sc} {sa} {sb}"))
    mask = rng.integers(0, 2, (3, 4)).astype(bool)  # a numpy bool array as the condition
    out.append(Case([randn(rng, (4,)), randn(rng, (3, 1))], lambda a, b: bg.where(mask, a, b), lambda a, b: np.where(mask, a, b), label="numpy mask"))
    out.append(Case([nonzero(rng, (3, 4))], lambda a: bg.where(a > 0, a, 0.5), lambda a: np.where(a > 0, a, 0.5), label="tensor mask, scalar"))
    return out


def pow_cases(rng):
    return [
        Case([randn(rng, (2, 3))], lambda t: t ** 3, lambda x: x ** 3, label="x ** 3"),
        Case([randn(rng, (4,))], bg.square, np.square, label="bg.square"),
        Case([randn(rng, (2, 2))], lambda t: t ** 2, np.square, label="x ** 2"),
        Case([positive(rng, (5,))], lambda t: t ** 0.5, np.sqrt, label="x ** 0.5"),
        Case([positive(rng, (2, 3))], lambda t: bg.pow(t, -1.5), lambda x: x ** -1.5, label="bg.pow(x, -1.5)"),
        Case([positive(rng, ())], lambda t: t.square(), np.square, label="0-d .square()"),
    ]


def clip_cases(rng):
    x = lambda s: away_from(rng, s, [-0.5, 0.5])  # noqa: E731
    return [
        Case([x((2, 3, 4))], lambda t: bg.clip(t, -0.5, 0.5), lambda a: np.clip(a, -0.5, 0.5), label="both sides"),
        Case([x((6,))], lambda t: t.clip(None, 0.5), lambda a: np.clip(a, None, 0.5), label="hi only"),
        Case([x(())], lambda t: bg.clip(t, -0.5, None), lambda a: np.clip(a, -0.5, None), label="lo only, 0-d"),
    ]


def broadcast_to_cases(rng):
    geoms = [((3, 1), (2, 3, 4)), ((), (2, 3)), ((4,), (3, 4)), ((2, 1, 1), (2, 3, 1))]
    return [
        Case([randn(rng, s)], (lambda t, o=o: bg.broadcast_to(t, o)) if i % 2 == 0 else (lambda t, o=o: t.broadcast_to(o)),
             lambda x, o=o: np.broadcast_to(x, o), label=f"{s} -> {o}")
        for i, (s, o) in enumerate(geoms)
    ]


def reshape_cases(rng):
    x = lambda: randn(rng, (2, 3, 4))  # noqa: E731
    return [
        Case([x()], lambda t: t.reshape(-1, 4), lambda a: a.reshape(-1, 4), label="(-1, 4)"),
        Case([x()], lambda t: t.reshape((4, 6)), lambda a: a.reshape(4, 6), label="(4, 6) tuple"),
        Case([x()], lambda t: bg.reshape(t, (24,)), lambda a: a.reshape(24), label="bg.reshape"),
        Case([x()], lambda t: t.reshape(2, -1, 2), lambda a: a.reshape(2, -1, 2), label="(2, -1, 2)"),
        Case([randn(rng, (1,))], lambda t: t.reshape(()), lambda a: a.reshape(()), label="to 0-d"),
    ]


def transpose_cases(rng):
    return [
        Case([randn(rng, (2, 3, 4))], lambda t: t.T, lambda a: a.T, label=".T"),
        Case([randn(rng, (2, 3, 4))], lambda t: t.transpose((1, 0, 2)), lambda a: a.transpose(1, 0, 2), label="(1, 0, 2)"),
        Case([randn(rng, (2, 3, 4))], lambda t: bg.transpose(t, (2, 0, 1)), lambda a: np.transpose(a, (2, 0, 1)), label="bg.transpose"),
        Case([randn(rng, (2, 3, 4))], lambda t: t.transpose(-1, 0, 1), lambda a: a.transpose(-1, 0, 1), label="negative axes"),
        Case([randn(rng, (3, 5))], lambda t: t.transpose(), lambda a: a.transpose(), label="2-d default"),
    ]


SPECS: dict[str, Callable[[np.random.Generator], list[Case]]] = {
    "neg": unary([lambda t: -t, lambda t: core("neg", t)], np.negative, randn),
    "exp": unary([bg.exp, lambda t: t.exp()], np.exp, randn),
    "log": unary([bg.log, lambda t: t.log()], np.log, positive),
    "sqrt": unary([bg.sqrt, lambda t: t.sqrt()], np.sqrt, positive),
    "tanh": unary([bg.tanh, lambda t: t.tanh()], np.tanh, lambda rng, s: randn(rng, s, 2.0)),
    "sigmoid": unary([bg.sigmoid, lambda t: t.sigmoid()], lambda x: 1.0 / (1.0 + np.exp(-x)), lambda rng, s: randn(rng, s, 3.0)),
    "relu": unary([bg.relu, lambda t: t.relu()], lambda x: np.maximum(x, 0.0), nonzero),
    "abs": unary([bg.abs, abs, lambda t: t.abs()], np.abs, nonzero),
    "sign": unary([bg.sign, lambda t: t.sign()], np.sign, lambda rng, s: (rng.integers(-1, 2, s) * rng.uniform(0.5, 2, s)).astype(F32)),
    "pow_scalar": pow_cases,
    "clip": clip_cases,
    "add": binary(lambda a, b: a + b, np.add),
    "sub": binary(lambda a, b: a - b, np.subtract),
    "mul": binary(lambda a, b: a * b, np.multiply),
    "div": binary(lambda a, b: a / b, np.divide, lambda rng, sa, sb: (randn(rng, sa), nonzero(rng, sb, 0.5))),
    "maximum": binary(bg.maximum, np.maximum, apart),
    "minimum": binary(bg.minimum, np.minimum, apart),
    "lt": comparison(lambda a, b: a < b, np.less),
    "le": comparison(lambda a, b: a <= b, np.less_equal),
    "gt": comparison(lambda a, b: a > b, np.greater),
    "ge": comparison(lambda a, b: a >= b, np.greater_equal),
    "eq": comparison(lambda a, b: a == b, np.equal),
    "ne": comparison(lambda a, b: a != b, np.not_equal),
    "where": where_cases,
    "relu_grad": lambda rng: [dataclasses.replace(c, wrt=(0,)) for c in binary(  # the mask y has no gradient
        lambda g, y: bg.Tensor(bg._core.apply("relu_grad", [g._v, y._v])), lambda g, y: np.where(y > 0, g, 0.0),
        lambda rng, sa, sb: (randn(rng, sa), nonzero(rng, sb)))(rng)],
    "add_relu": binary(bg.nn.functional.add_relu, lambda a, b: np.maximum(a + b, 0.0),
                       lambda rng, sa, sb: ((rng.integers(-2, 3, sa) + 0.3 + rng.uniform(-0.02, 0.02, sa)).astype(F32),
                                            (rng.integers(-2, 3, sb) + 0.05 + rng.uniform(-0.02, 0.02, sb)).astype(F32))),
    "sum": reductions(bg.sum, "sum", np.sum),
    "mean": reductions(bg.mean, "mean", np.mean),
    "max": reductions(bg.max, "max", np.max, distinct),
    "logsumexp": reductions(bg.logsumexp, "logsumexp", np_logsumexp, lambda rng, s: randn(rng, s, 2.0)),
    "reshape": reshape_cases,
    "transpose": transpose_cases,
    "broadcast_to": broadcast_to_cases,
    "slice": slice_cases,
    "slice_grad": slice_grad_cases,
    "take": gather_cases,
    "scatter_add": scatter_add_cases,
    "concatenate": concatenate_cases,
    "stack": stack_cases,
    "matmul": matmul_cases,
    "softmax": softmax_like(bg.softmax, "softmax", np_softmax),
    "log_softmax": softmax_like(bg.log_softmax, "log_softmax", np_log_softmax),
    "softmax_xent": xent_cases,
    "softmax_xent_backward": xent_backward_cases,
}

NAMES = sorted(TABLE)
DIFF = sorted(n for n in TABLE if TABLE[n]["differentiable"])
NONDIFF = sorted(n for n in TABLE if not TABLE[n]["differentiable"])


# ---- helpers ---------------------------------------------------------------------------------------
def numeric_vjp(ref: Callable, xs: list[np.ndarray], G: np.ndarray, wrt: Sequence[int], eps: float = 1e-6) -> list[np.ndarray]:
    """Central differences of sum(ref(xs) * G) with respect to xs[i], i in wrt (float64)."""
    xs = [np.array(x, dtype=np.float64) for x in xs]
    out = []
    for i in wrt:
        x, g = xs[i], np.zeros(xs[i].shape)
        for j in np.ndindex(x.shape):
            orig = x[j]
            x[j] = orig + eps
            hi = np.sum(ref(*xs) * G)
            x[j] = orig - eps
            lo = np.sum(ref(*xs) * G)
            x[j] = orig
            g[j] = (hi - lo) / (2 * eps)
        out.append(g)
    return out


def close(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def build(case: Case, requires_grad: bool) -> list[bg.Tensor]:
    return [bg.tensor(x, requires_grad=requires_grad and i in case.grad_inputs) for i, x in enumerate(case.inputs)]


def recorded_ops(inputs: list[bg.Tensor], out: bg.Tensor) -> set[str]:
    nodes = bg._core.Program.from_graph([t._v for t in inputs], [out._v]).nodes()
    return {n["op"] for n in nodes if n["kind"] == "node"}


# ---- tests -------------------------------------------------------------------------------------------
def test_specs_cover_the_registry_exactly():
    assert set(SPECS) == set(TABLE), (
        f"ops without a gradcheck spec: {sorted(set(TABLE) - set(SPECS))}; specs for unknown ops: {sorted(set(SPECS) - set(TABLE))}"
    )


def test_op_table_rows_are_well_formed():
    for name, row in TABLE.items():
        assert row["arity"] in (-1, 1, 2, 3), name
        assert row["saves"] in ("none", "inputs", "output", "inputs+output"), name
        assert isinstance(row["differentiable"], bool) and row["doc"], name


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_numpy(name, rng):
    for case in SPECS[name](rng):
        out = case.fn(*build(case, requires_grad=False))
        expected = case.ref(*[x.astype(np.float64) for x in case.inputs])
        got = out.numpy()
        if got.dtype == np.bool_:  # comparisons give masks
            assert got.shape == np.shape(expected) and np.array_equal(got, expected), f"{name} [{case.label}]"
        else:
            assert got.dtype == np.float32, f"{name} [{case.label}]: dtype {got.dtype}"
            close(got, expected, 1e-5, f"{name} forward [{case.label}]")


@pytest.mark.parametrize("name", DIFF)
def test_vjp_matches_finite_differences(name, rng):
    for case in SPECS[name](rng):
        ts = build(case, requires_grad=True)
        out = case.fn(*ts)
        assert out.requires_grad, f"{name} [{case.label}]: result does not require grad"
        assert name in recorded_ops([ts[i] for i in case.grad_inputs], out), f"{name} [{case.label}]: the spec does not exercise '{name}'"
        G = rng.standard_normal(out.shape).astype(F32)
        (out * bg.tensor(G)).sum().backward()
        expected = numeric_vjp(case.ref, case.inputs, G.astype(np.float64), case.grad_inputs)
        for i, num in zip(case.grad_inputs, expected):
            g = ts[i].grad
            assert g is not None, f"{name} [{case.label}]: no gradient reached input {i}"
            close(g.numpy(), num, 1e-3, f"{name} VJP wrt input {i} [{case.label}]")
        for i, t in enumerate(ts):
            if i not in case.grad_inputs:
                assert t.grad is None


@pytest.mark.parametrize("name", DIFF)
def test_second_order_matches_finite_differences(name, rng):
    """Differentiate h = <G2, d<G1, f(x)>/dx> (first gradients recorded with create_graph=True) with
    respect to x and to the upstream gradient G1, against nested central differences in float64.
    d h / d G1 is the JVP J.G2, so this also checks each VJP rule as a graph that can be differentiated."""
    for case in SPECS[name](rng):
        wrt = case.grad_inputs
        ts = build(case, requires_grad=True)
        out = case.fn(*ts)
        G1 = bg.tensor(rng.standard_normal(out.shape).astype(F32), requires_grad=True)
        G2 = [rng.standard_normal(case.inputs[i].shape).astype(F32) for i in wrt]
        firsts = bg._core.grad([(out * G1).sum()._v], [None], [ts[i]._v for i in wrt], True, True)
        h = bg.tensor(0.0)
        for g, d in zip(firsts, G2):
            if g is not None:
                h = h + (bg.Tensor(g) * bg.tensor(d)).sum()
        *seconds, jvp = bg._core.grad([h._v], [None], [ts[i]._v for i in wrt] + [G1._v], False, False)

        xs64 = [x.astype(np.float64) for x in case.inputs]
        G1_64, G2_64 = G1.numpy().astype(np.float64), [d.astype(np.float64) for d in G2]
        e = 1e-4

        def along(xs, s):  # xs moved by s * G2 (the differentiable inputs only)
            ys = list(xs)
            for i, d in zip(wrt, G2_64):
                ys[i] = ys[i] + s * d
            return ys

        def h_ref(*xs):  # directional derivative of <G1, f> along G2
            return np.sum((case.ref(*along(xs, e)) - case.ref(*along(xs, -e))) * G1_64) / (2 * e)

        expected = numeric_vjp(lambda *xs: h_ref(*xs) * np.ones(()), xs64, np.ones(()), wrt, eps=1e-4)
        for i, g, num in zip(wrt, seconds, expected):
            got = np.zeros(case.inputs[i].shape) if g is None else g.numpy()
            close(got, num, 2e-3, f"{name} second-order wrt input {i} [{case.label}]")
        jvp_ref = (case.ref(*along(xs64, e)) - case.ref(*along(xs64, -e))) / (2 * e)
        assert jvp is not None, f"{name} [{case.label}]: the VJP does not depend on the upstream gradient"
        close(jvp.numpy(), jvp_ref, 1e-3, f"{name} JVP (d h / d G1) [{case.label}]")


@pytest.mark.parametrize("name", NAMES)
def test_exported_program_replays_forward_and_backward_on_new_inputs(name, rng):
    """Record out and its input gradients (create_graph=True) as one flat program, replay it on other
    inputs of the same shapes, and compare with running the op eagerly on those inputs: a VJP rule
    that bakes in a value from the recorded inputs (a detached tensor, a mask computed off the
    tape) would replay stale values, as compile_step and the GPU executor do."""
    diff = TABLE[name]["differentiable"]
    for case, other in zip(SPECS[name](rng), SPECS[name](np.random.default_rng(rng.integers(2**32)))):
        ts = [bg.tensor(x, requires_grad=True) for x in case.inputs]  # placeholders are on the tape (labels too)
        out = case.fn(*ts)
        G = bg.tensor(rng.standard_normal(out.shape).astype(F32))
        wrt = [ts[i]._v for i in case.grad_inputs]
        grads = bg._core.grad([(out * G).sum()._v], [None], wrt, True, True) if diff else []
        prog = bg._core.Program.from_graph([t._v for t in ts], [out._v] + [g for g in grads if g is not None])
        replayed = prog.run([bg.tensor(x)._v for x in other.inputs])

        us = build(other, requires_grad=True)
        expected_out = case.fn(*us)  # the recorded call (its constants), on the other inputs
        expected = [expected_out.numpy()]
        if diff:
            (expected_out * G).sum().backward()
            expected += [us[i].grad.numpy() for i, g in zip(case.grad_inputs, grads) if g is not None]
        assert len(replayed) == len(expected)
        for k, (r, e) in enumerate(zip(replayed, expected)):
            np.testing.assert_allclose(r.numpy(), np.asarray(e, np.float32), rtol=1e-6, atol=1e-6, err_msg=f"{name} output {k} [{case.label}]")


@pytest.mark.parametrize("name", NONDIFF)
def test_nondifferentiable_ops_record_nothing(name, rng):
    for case in SPECS[name](rng):
        ts = build(case, requires_grad=True)
        out = case.fn(*ts)
        assert out.grad_fn is None and not out.requires_grad and out.is_leaf, f"{name} [{case.label}]"


# ---- second order on composite functions, against hand-written first derivatives ------------------------
def grad2(f: Callable[[bg.Tensor], bg.Tensor], x: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d sum f(x) / dx, d <G, d sum f / dx> / dx), the first recorded with create_graph=True."""
    t = bg.tensor(x, requires_grad=True)
    (g1,) = bg._core.grad([f(t).sum()._v], [None], [t._v], False, True)
    g1 = bg.Tensor(g1)
    assert g1.requires_grad, "the first-order gradient was not recorded on the tape"
    (g2,) = bg._core.grad([(g1 * bg.tensor(G)).sum()._v], [None], [t._v], False, False)
    return g1.numpy(), bg.Tensor(g2).numpy()


@pytest.mark.parametrize(
    "f, df, gen",
    [
        (bg.tanh, lambda x: 1 - np.tanh(x) ** 2, lambda rng: randn(rng, (3, 4), 1.5)),
        (lambda t: t ** 3, lambda x: 3 * x ** 2, lambda rng: randn(rng, (5,))),
        (bg.sigmoid, lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2, lambda rng: randn(rng, (2, 3), 2.0)),
        (lambda t: t * bg.log(t), lambda x: np.log(x) + 1, lambda rng: positive(rng, (4,))),
        (lambda t: bg.exp(-t * t) / (t * t + 1.0), lambda x: np.exp(-x * x) * (-2 * x / (x * x + 1) - 2 * x / (x * x + 1) ** 2), lambda rng: randn(rng, (6,))),
        (lambda t: bg.softmax(t, axis=-1) * bg.arange(4.0), None, lambda rng: randn(rng, (3, 4))),
    ],
    ids=["tanh", "cube", "sigmoid", "xlogx", "exp_div", "softmax"],
)
def test_grad_of_grad_composites(f, df, gen, rng):
    x = gen(rng)
    x64 = x.astype(np.float64)
    if df is None:  # softmax weighted by c: d/dx_j sum_i c_i p_i = p_j (c_j - sum_i c_i p_i)
        c = np.arange(4.0)

        def df(z):
            p = np_softmax(z)
            return p * (c - (p * c).sum(-1, keepdims=True))
    G = rng.standard_normal(x.shape).astype(F32)
    g1, g2 = grad2(f, x, G)
    close(g1, df(x64), 1e-4, "first derivative")
    close(g2, numeric_vjp(df, [x64], G.astype(np.float64), [0])[0], 1e-3, "second derivative")


def test_grad_of_grad_softmax_cross_entropy(rng):
    """Weighted cross-entropy L = sum_i w_i xent(z_i, y_i): the Hessian-vector products in z and w."""
    n, c = 5, 4
    z0, y0, w0 = randn(rng, (n, c), 2.0), labels(rng, n, c), positive(rng, (n,))
    z, y, w = bg.tensor(z0, requires_grad=True), bg.tensor(y0), bg.tensor(w0, requires_grad=True)
    loss = (core("softmax_xent", z, y) * w).sum()
    (gz,) = bg._core.grad([loss._v], [None], [z._v], False, True)
    gz = bg.Tensor(gz)

    def dz(z64, w64):  # first derivative, by hand
        return np_xent_backward(z64, y0.astype(np.float64), w64)

    close(gz.numpy(), dz(z0.astype(np.float64), w0.astype(np.float64)), 1e-5, "d loss / dz")
    G = rng.standard_normal((n, c)).astype(F32)
    hz, hw = bg._core.grad([(gz * bg.tensor(G)).sum()._v], [None], [z._v, w._v], False, False)
    num_z, num_w = numeric_vjp(dz, [z0, w0], G.astype(np.float64), [0, 1])
    close(bg.Tensor(hz).numpy(), num_z, 1e-3, "d2 loss / dz2 . G")
    close(bg.Tensor(hw).numpy(), num_w, 1e-3, "d2 loss / dz dw . G")


def test_create_graph_false_gives_constants(rng):
    x = bg.tensor(randn(rng, (3,)), requires_grad=True)
    (g,) = bg._core.grad([bg.tanh(x).sum()._v], [None], [x._v], False, False)
    assert not g.requires_grad and g.is_leaf
