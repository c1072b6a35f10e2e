"""Every registry op on the GPU against the CPU executor: the same recorded program replayed by
both (float32, relative error <= 1e-5), with broadcasting, odd sizes, sizes that are not
multiples of the workgroup size, empty and 0-d tensors. The table walk fails for an op that has
no GPU kernel or no case here."""

from __future__ import annotations

import numpy as np
import pytest

import batchgrad as bg
from batchgrad import _core

R = np.random.default_rng(7)


def a(*shape, lo=-2.0, hi=2.0):
    return R.uniform(lo, hi, size=shape).astype(np.float32)


def pos(*shape):
    return R.uniform(0.1, 3.0, size=shape).astype(np.float32)


def labels(n, c):
    return R.integers(0, c, size=n).astype(np.float32)


def program(f, arrays, grad_of=None):
    """Record f on placeholders; with `grad_of` (argument indices), also the gradient program
    of sum(f * cotangent), so the registry's backward ops (slice_grad, scatter_add, matmul with
    ta/tb, relu_grad, softmax_xent_backward...) are in it."""
    phs = [bg.Tensor(_core.from_numpy(x, True)) for x in arrays]
    with bg.enable_grad():
        out = f(*phs)
        outs = [out._v]
        if grad_of is not None:
            ct = bg.tensor(a(*out.shape) if out.shape else np.float32(1.3))
            loss = (out * ct).sum()
            gs = _core.grad([loss._v], [None], [phs[i]._v for i in grad_of], True, True)
            outs += [g for g in gs if g is not None]
    return _core.Program.from_graph([p._v for p in phs], outs)


def take_idx(x):
    return bg.take(x, np.array([2, -1, 0, 2, 4]), axis=1)


# name, function of placeholders, input arrays, arguments to differentiate (None: forward only)
CASES = [
    ("neg", lambda x: -x, [a(3, 5)], None),
    ("exp", lambda x: x.exp(), [a(257) * 20], None),
    ("log", lambda x: x.log(), [pos(33, 9)], None),
    ("sqrt", lambda x: x.sqrt(), [pos(7, 37)], None),
    ("tanh", lambda x: x.tanh(), [a(300) * 5], [0]),
    ("tanh_small", lambda x: x.tanh(), [a(300) * 1e-2], None),
    ("sigmoid", lambda x: x.sigmoid(), [a(4, 65) * 30], [0]),
    ("relu", lambda x: x.relu(), [a(513)], [0]),
    ("abs", lambda x: abs(x), [a(2, 3, 4)], [0]),
    ("sign", lambda x: bg.sign(x) if hasattr(bg, "sign") else x.sign(), [np.array([-2, 0, 3, -0.0, 1e-30], np.float32)], None),
    ("pow_scalar", lambda x: x ** 3, [a(5, 6)], [0]),
    ("pow_scalar_frac", lambda x: x ** 1.5, [pos(5, 6)], None),
    ("pow_scalar_neg", lambda x: x ** -2, [pos(9)], None),
    ("clip", lambda x: bg.clip(x, -0.5, 0.7), [a(3, 77)], [0]),
    ("clip_open", lambda x: bg.clip(x, None, 0.2), [a(19)], None),
    ("add", lambda x, y: x + y, [a(4, 1, 5), a(3, 1)], [0, 1]),
    ("sub", lambda x, y: x - y, [a(2, 3), a(3)], [0, 1]),
    ("mul", lambda x, y: x * y, [a(259, 3), a(259, 1)], [0, 1]),
    ("div", lambda x, y: x / y, [a(6, 5), pos(5)], [0, 1]),
    ("maximum", lambda x, y: bg.maximum(x, y), [a(4, 6), a(6)], [0, 1]),
    ("minimum", lambda x, y: bg.minimum(x, y), [a(4, 6), a(4, 1)], [0, 1]),
    ("lt", lambda x, y: x < y, [a(5, 3), a(3)], None),
    ("le", lambda x, y: x <= y, [np.array([1, 2, 3], np.float32), np.array([2, 2, 2], np.float32)], None),
    ("gt", lambda x, y: x > y, [a(2, 2, 3), a(2, 1, 3)], None),
    ("ge", lambda x, y: x >= y, [np.array([1, 2, 3], np.float32), np.array([2, 2, 2], np.float32)], None),
    ("eq", lambda x, y: x == y, [np.array([1, 2, 3, 2], np.float32), np.array([2], np.float32)], None),
    ("ne", lambda x, y: x != y, [np.array([1, 2, 3, 2], np.float32), np.array([2], np.float32)], None),
    ("where", lambda c, x, y: bg.where(c, x, y), [(a(4, 5) > 0).astype(np.float32), a(4, 5), a(5)], [1, 2]),
    ("sum_all", lambda x: x.sum(), [a(1000)], [0]),
    ("sum_axis", lambda x: x.sum(axis=(0, 2), keepdims=True), [a(3, 4, 5)], [0]),
    ("mean", lambda x: x.mean(axis=1), [a(7, 300)], [0]),
    ("max", lambda x: x.max(axis=0), [a(513, 3)], [0]),
    ("max_ties", lambda x: x.max(axis=1), [np.array([[1, 3, 3], [2, 2, 0]], np.float32)], [0]),
    ("reshape", lambda x: x.reshape(6, -1), [a(2, 3, 4)], [0]),
    ("transpose", lambda x: x.transpose((2, 0, 1)), [a(2, 3, 4)], [0]),
    ("broadcast_to", lambda x: bg.broadcast_to(x, (3, 4, 5)), [a(4, 1)], [0]),
    # `** 2` on top of a linear op, so its backward (slice_grad, scatter_add...) reads a
    # recorded value and is not folded into a constant
    ("slice", lambda x: x[1:, ::-2] ** 2, [a(5, 7)], [0]),
    ("slice_step", lambda x: x[::3, 2:5, 1] ** 2, [a(10, 6, 3)], [0]),
    ("take", lambda x: take_idx(x) ** 2, [a(3, 5, 2)], [0]),
    ("concatenate", lambda x, y: bg.concatenate([x, y, x], axis=1) ** 2, [a(2, 3), a(2, 1)], [0, 1]),
    ("stack", lambda x, y: bg.stack([x, y], axis=1) ** 2, [a(3, 4), a(3, 4)], [0, 1]),
    ("matmul", lambda x, y: x @ y, [a(37, 19), a(19, 11)], [0, 1]),
    ("matmul_batched", lambda x, y: x @ y, [a(2, 1, 5, 3), a(4, 3, 6)], [0, 1]),
    ("matmul_big", lambda x, y: x @ y, [a(130, 257), a(257, 70)], [0, 1]),
    ("matmul_splitk", lambda x, y: x @ y, [a(3, 1030), a(1030, 5)], [0, 1]),
    ("matmul_vec", lambda x, y: x @ y, [a(4), a(4, 3)], [0, 1]),
    ("softmax", lambda x: x.softmax(axis=-1), [a(6, 300) * 50], [0]),
    ("softmax_axis0", lambda x: x.softmax(axis=0), [a(5, 3, 2)], [0]),
    ("log_softmax", lambda x: x.log_softmax(axis=1), [a(3, 10, 2) * 1e4], None),
    ("log_softmax_grad", lambda x: x.log_softmax(axis=-1), [a(4, 10)], [0]),
    ("logsumexp", lambda x: x.logsumexp(axis=1), [a(4, 333) * 30], [0]),
    ("logsumexp_all", lambda x: x.logsumexp(), [a(3, 2)], [0]),
    ("softmax_xent", lambda z, y: bg.Tensor(_core.apply("softmax_xent", [z._v, y._v], None)), [a(33, 10) * 5, labels(33, 10)], [0]),
    ("add_relu", lambda x, y: bg.Tensor(_core.apply("add_relu", [x._v, y._v], None)), [a(9, 300), a(300)], [0, 1]),
    # empty and 0-d tensors
    ("empty_add", lambda x, y: x + y, [a(0, 3), a(3)], None),
    ("empty_sum", lambda x: x.sum(axis=0), [a(0, 4)], None),
    ("empty_matmul", lambda x, y: x @ y, [a(0, 5), a(5, 2)], None),
    ("zero_d", lambda x, y: (x * y).exp(), [np.array(0.5, np.float32), np.array(-1.5, np.float32)], [0, 1]),
    ("zero_d_sum", lambda x: x.sum(), [np.array(2.5, np.float32)], [0]),
]


def _ops(prog) -> set[str]:
    return {n["op"] for n in prog.nodes() if n["kind"] == "node"}


def _check(prog, arrays) -> None:
    from batchgrad.gpu.plan import run_program

    want = [o.numpy() for o in prog.run([bg.tensor(x)._v for x in arrays])]
    got = run_program(prog, arrays)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape, f"output {k}: shape {g.shape} != {w.shape}"
        scale = float(np.max(np.abs(w[np.isfinite(w)]), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * max(scale, 1.0), err_msg=f"output {k} of {sorted(_ops(prog))}")


@pytest.mark.parametrize("name,f,arrays,grad_of", CASES, ids=[c[0] for c in CASES])
def test_op_gpu_matches_cpu(gpu, name, f, arrays, grad_of):
    _check(program(f, arrays, grad_of), arrays)


def test_every_registry_op_has_a_gpu_kernel_and_a_case(gpu):
    from batchgrad.gpu.lower import TABLE

    names = [r["name"] for r in bg.op_table()]
    missing = [n for n in names if n not in TABLE]
    assert not missing, f"ops without a GPU kernel: {missing}"
    covered: set[str] = set()
    for _, f, arrays, grad_of in CASES:
        covered |= _ops(program(f, arrays, grad_of))
    assert not set(names) - covered, f"ops with no GPU parity case: {sorted(set(names) - covered)}"


def test_nan_and_inf_propagate_like_the_cpu(gpu):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30], np.float32)
    for f in (lambda t: t.exp(), lambda t: t.relu(), lambda t: bg.maximum(t, 0.5), lambda t: t.tanh(), lambda t: t.sigmoid(),
              lambda t: bg.clip(t, -1.0, 1.0), lambda t: abs(t)):
        prog = program(f, [x])
        from batchgrad.gpu.plan import run_program

        got, want = run_program(prog, [x])[0], prog.run([bg.tensor(x)._v])[0].numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        fin = np.isfinite(want)
        np.testing.assert_array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)])
        np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("entry", ["mm_big", "mm_mid", "mm_small"])
@pytest.mark.parametrize("splits", [1, 3])
def test_every_matmul_kernel_and_split_k_match_the_cpu(gpu, monkeypatch, entry, splits):
    """The size rule picks one matmul kernel per shape: force each one (and a K split) on
    awkward sizes and every transpose combination."""
    from batchgrad.gpu.lower import matmul as mm

    monkeypatch.setattr(mm, "choose", lambda M, N, K, nb: (entry, splits))
    for ta in (False, True):
        for tb in (False, True):
            A = a(*((300, 37) if ta else (37, 300)))
            B = a(*((5, 300) if tb else (300, 5)))
            prog = _core.Program.from_nodes(
                [{"kind": "input", "index": 0, "shape": list(A.shape)}, {"kind": "input", "index": 1, "shape": list(B.shape)},
                 {"kind": "node", "op": "matmul", "attrs": {"ta": ta, "tb": tb}, "args": [0, 1], "shape": [37, 5]}], [2])
            _check(prog, [A, B])
