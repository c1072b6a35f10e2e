"""Forward values against numpy for every public op and method, numpy/PyTorch API conventions,
tensor creation, zero-size tensors, numerical stability at large |x|, IEEE NaN/inf propagation,
and hypothesis property tests of broadcasting (values and gradient shapes)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import batchgrad as bg
from batchgrad import _core

F32 = np.float32


def close(got, expected, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    got = got.numpy() if isinstance(got, bg.Tensor) else np.asarray(got)
    expected = np.asarray(expected)
    assert got.shape == expected.shape, f"shape {got.shape} != numpy's {expected.shape}"
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)


def same(got, expected) -> None:
    """Equal with NaN == NaN, the same inf signs, shape and dtype."""
    got = got.numpy() if isinstance(got, bg.Tensor) else got
    expected = np.asarray(expected)
    assert got.shape == expected.shape, f"shape {got.shape} != numpy's {expected.shape}"
    assert got.dtype == (np.bool_ if expected.dtype == np.bool_ else np.float32), got.dtype
    assert np.array_equal(got, expected.astype(got.dtype), equal_nan=True), f"\n got {got}\n numpy {expected}"


def np_sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def np_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_logsumexp(x, axis=None, keepdims=False):
    """As scipy.special.logsumexp: an infinite max is not subtracted (log(sum(exp([inf, 1]))) = inf)."""
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def xent(z: bg.Tensor, y) -> bg.Tensor:
    return bg.Tensor(bg._core.apply("softmax_xent", [z._v, bg.tensor(y)._v]))


def np_xent(z, y):
    z = np.asarray(z, np.float64)
    return np_logsumexp(z, axis=1) - z[np.arange(len(y)), np.asarray(y, np.int64)]


# ---- creation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        [[1, 2, 3], [4, 5, 6]],
        [1.5, -2.25],
        3,
        2.5,
        True,
        np.float64(1.25),
        np.arange(6, dtype=np.float64).reshape(2, 3) / 7,
        np.arange(6, dtype=np.int32).reshape(3, 2),
        np.arange(5, dtype=np.uint8),
        np.array(4.0),
        [],
        np.zeros((0, 3)),
    ],
    ids=repr,
)
def test_tensor_from_data_matches_numpy(data):
    t = bg.tensor(data)
    expected = np.asarray(data)
    assert t.shape == expected.shape and t.ndim == expected.ndim and t.size == expected.size
    if expected.dtype == np.bool_:
        assert t.dtype == np.bool_
    else:
        assert t.dtype == np.float32
    same(t, expected.astype(np.bool_ if expected.dtype == np.bool_ else F32))


def test_tensor_from_fortran_and_non_contiguous_arrays(rng):
    a = rng.standard_normal((4, 5, 6))
    for view in [np.asfortranarray(a), a[::2, :, ::-3], a.transpose(2, 0, 1), a[:, 1], np.broadcast_to(a[:1], (3, 5, 6))]:
        same(bg.tensor(view), view.astype(F32))


def test_tensor_copies_its_input():
    a = np.ones(3, F32)
    t = bg.tensor(a)
    a[0] = 5.0
    assert t.numpy()[0] == 1.0


@pytest.mark.parametrize(
    "data",
    ["abc", np.array(["a", "b"]), np.array([object()]), np.array([1, "x"], dtype=object), None, {"a": 1}, 1 + 2j, np.array([1 + 1j])],
    ids=repr,
)
def test_tensor_rejects_non_numbers_with_type_error(data):
    with pytest.raises(TypeError, match="dtype|number"):
        bg.tensor(data)


def test_ragged_data_is_a_value_error():
    with pytest.raises(ValueError, match="ragged|malformed"):
        bg.tensor([[1, 2], [3]])


def test_numpy_is_a_read_only_view_without_copy():
    t = bg.tensor(np.arange(12.0).reshape(3, 4))
    a, b = t.numpy(), t.numpy()
    assert a.dtype == F32 and np.shares_memory(a, b)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    del t  # the view keeps the buffer alive
    assert a[2, 3] == 11.0
    assert np.asarray(bg.tensor([1.0, 2.0])).dtype == F32


def test_numpy_view_stays_valid_after_grad_and_updates():
    w = bg.tensor([1.0, 2.0], requires_grad=True)
    view = w.numpy()
    (w * w).sum().backward()
    assert np.array_equal(view, [1.0, 2.0]) and np.array_equal(w.grad.numpy(), [2.0, 4.0])


def test_item_len_repr_and_conversions():
    assert bg.tensor([[3.5]]).item() == 3.5 and isinstance(bg.tensor(2).item(), float)
    assert bg.tensor(True).item() is True
    with pytest.raises(ValueError, match=r"one element|\(2,\)|\[2\]"):
        bg.tensor([1.0, 2.0]).item()
    assert len(bg.zeros(4, 2)) == 4
    with pytest.raises(TypeError):
        len(bg.tensor(1.0))
    assert float(bg.tensor([2.5])) == 2.5 and int(bg.tensor(3.0)) == 3
    assert repr(bg.tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert "requires_grad=True" in repr(bg.tensor([1.0], requires_grad=True))
    assert "grad_fn=mul" in repr(bg.tensor([1.0], requires_grad=True) * 2)
    assert bg.tensor([[1, 2], [3, 4]]).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert [r.tolist() for r in bg.tensor([[1, 2], [3, 4]])] == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(ValueError, match="ambiguous"):
        bool(bg.tensor([1.0, 2.0]))
    assert bool(bg.tensor([1.0])) and not bool(bg.tensor(0.0))


def test_tensors_are_immutable():
    with pytest.raises(TypeError, match="immutable"):
        bg.zeros(3)[0] = 1.0


def test_factories():
    same(bg.zeros(2, 3), np.zeros((2, 3)))
    same(bg.zeros((2, 3)), np.zeros((2, 3)))
    same(bg.ones(4), np.ones(4))
    same(bg.full((2, 2), 7.5), np.full((2, 2), 7.5))
    same(bg.zeros(()), np.zeros(()))
    same(bg.zeros_like(bg.ones(3, 1)), np.zeros((3, 1)))
    same(bg.ones_like(bg.zeros(2)), np.ones(2))
    assert bg.ones(2, requires_grad=True).requires_grad
    with pytest.raises(ValueError, match="negative"):
        bg.zeros(2, -1)


def test_randn_and_rand_are_deterministic_by_seed():
    a, b, c = bg.randn(3, 4, seed=7), bg.randn(3, 4, seed=7), bg.randn(3, 4, seed=8)
    assert a.shape == (3, 4) and np.array_equal(a.numpy(), b.numpy()) and not np.array_equal(a.numpy(), c.numpy())
    same(a, np.random.default_rng(7).standard_normal((3, 4), dtype=F32))
    r = bg.rand(1000, seed=1).numpy()
    assert np.array_equal(r, bg.rand(1000, seed=1).numpy()) and r.min() >= 0 and r.max() < 1
    assert bg.randn(seed=0).shape == ()


@pytest.mark.parametrize("args", [(5,), (2, 7), (1, 2, 0.25), (5, 0, -1), (0,), (3.5,), (-2, 2, 0.5)], ids=str)
def test_arange(args):
    same(bg.arange(*args), np.arange(*args).astype(F32))


# ---- elementwise ----------------------------------------------------------------------------------------
UNARY = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh, "sigmoid": np_sigmoid,
    "relu": lambda x: np.maximum(x, 0), "abs": np.abs, "sign": np.sign, "square": np.square,
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_function_and_method(name, rng):
    x = rng.standard_normal((3, 4)).astype(F32) * 2
    if name in ("log", "sqrt"):
        x = np.abs(x) + 0.1
    t = bg.tensor(x)
    expected = UNARY[name](x.astype(np.float64))
    close(getattr(bg, name)(t), expected)
    close(getattr(t, name)(), expected)
    close(getattr(bg, name)(x), expected)  # numpy input
    close(getattr(bg, name)(bg.tensor(x[0, 0])), expected[0, 0])  # 0-d


def test_arithmetic_operators_with_scalars_and_arrays(rng):
    a = rng.standard_normal((2, 3)).astype(F32)
    b = rng.uniform(0.5, 2, (3,)).astype(F32)
    t, u = bg.tensor(a), bg.tensor(b)
    for got, expected in [
        (t + u, a + b), (t - u, a - b), (t * u, a * b), (t / u, a / b),
        (t + 2, a + 2), (2 + t, 2 + a), (t - 2, a - 2), (2 - t, 2 - a), (t * 3, a * 3), (3 * t, 3 * a),
        (t / 4, a / 4), (4 / u, 4 / b), (-t, -a), (+t, a), (abs(t), np.abs(a)),
        (t + b, a + b), (a + u, a + b), (a * u, a * b), (b - t, b - a),  # numpy arrays on either side
        (t + [1, 2, 3], a + [1, 2, 3]), (t + np.float64(0.5), a + 0.5), (t * True, a),
        (u ** 2, b ** 2), (u ** 3, b ** 3), (u ** 0.5, b ** 0.5), (u ** -1, 1 / b), (u ** 0, np.ones(3)),
        (bg.pow(u, 1.5), b ** 1.5), (2 ** u, 2 ** b.astype(np.float64)), (u ** u, b.astype(np.float64) ** b),
    ]:
        assert isinstance(got, bg.Tensor)
        close(got, expected)


def test_maximum_minimum_accept_scalars_arrays_and_tensors(rng):
    a = rng.standard_normal((3, 4)).astype(F32)
    t = bg.tensor(a)
    close(bg.maximum(t, 0), np.maximum(a, 0))
    close(bg.maximum(0.5, t), np.maximum(0.5, a))
    close(bg.minimum(t, -0.25), np.minimum(a, -0.25))
    close(bg.minimum(a[:1], t), np.minimum(a[:1], a))
    close(bg.maximum(t, bg.tensor(a[:, :1])), np.maximum(a, a[:, :1]))
    close(bg.maximum(2, 3), np.maximum(2, 3))


def test_maximum_ties_split_the_gradient():
    a = bg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = bg.tensor([1.0, 5.0, 0.0], requires_grad=True)
    bg.maximum(a, b).sum().backward()
    same(a.grad, [0.5, 0.0, 1.0])
    same(b.grad, [0.5, 1.0, 0.0])
    x = bg.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], requires_grad=True)
    x.max(axis=1).sum().backward()
    close(x.grad, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])


@pytest.mark.parametrize("lo, hi", [(-0.5, 0.5), (None, 0.5), (-0.5, None), (0, 0), (1, -1)])
def test_clip_with_open_sides(lo, hi, rng):
    a = rng.standard_normal((4, 5)).astype(F32)
    expected = np.clip(a, lo, hi)
    close(bg.clip(bg.tensor(a), lo, hi), expected)
    close(bg.tensor(a).clip(lo, hi), expected)


def test_clip_needs_a_bound():
    with pytest.raises(ValueError, match="clip"):
        bg.clip(bg.ones(2), None, None)


def test_clip_with_tensor_bounds(rng):
    a, lo = rng.standard_normal((3, 4)).astype(F32), rng.standard_normal((4,)).astype(F32) - 1
    close(bg.clip(bg.tensor(a), bg.tensor(lo), 0.5), np.clip(a, lo, 0.5))


COMPARISONS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal, "!=": np.not_equal}


@pytest.mark.parametrize("op", sorted(COMPARISONS))
def test_comparisons_give_boolean_masks(op, rng):
    a = rng.integers(-2, 3, (3, 4)).astype(F32)
    b = rng.integers(-2, 3, (4,)).astype(F32)
    f = {"<": lambda x, y: x < y, "<=": lambda x, y: x <= y, ">": lambda x, y: x > y,
         ">=": lambda x, y: x >= y, "==": lambda x, y: x == y, "!=": lambda x, y: x != y}[op]
    for got, expected in [
        (f(bg.tensor(a), bg.tensor(b)), COMPARISONS[op](a, b)),
        (f(bg.tensor(a), 0), COMPARISONS[op](a, 0)),
        (f(1.0, bg.tensor(a)), COMPARISONS[op](1.0, a)),  # reflected
        (f(bg.tensor(a), b), COMPARISONS[op](a, b)),
    ]:
        assert got.dtype == np.bool_ and got.numpy().dtype == np.bool_
        same(got, expected)
    mask = f(bg.tensor(a), bg.tensor(b))
    same(bg.where(mask, bg.tensor(a), -1.0), np.where(COMPARISONS[op](a, b), a, -1.0))
    assert not f(bg.tensor(a, requires_grad=True), 0).requires_grad


def test_where_accepts_numpy_masks_and_python_scalars(rng):
    a = rng.standard_normal((3, 4)).astype(F32)
    m = a > 0
    t = bg.tensor(a)
    same(bg.where(m, t, 0.0), np.where(m, a, 0.0))
    same(bg.where(m, 1, -1), np.where(m, 1, -1).astype(F32))
    same(bg.where(m[0], t, t * 2), np.where(m[0], a, a * 2))
    same(bg.where(t > 0, 0.0, t), np.where(m, 0.0, a))
    same(bg.where(True, t, 0.0), a)
    same(bg.where([True, False, True, False], t, 5.0), np.where([True, False, True, False], a, 5.0))
    same(bg.where(a, 1.0, 0.0), np.where(a, 1.0, 0.0))  # nonzero floats are true, as in numpy


def test_logical_mask_methods():
    m = bg.tensor([1.0, -1.0]) > 0
    assert m.any() and not m.all()


# ---- reductions -----------------------------------------------------------------------------------------
REDUCTIONS = {"sum": np.sum, "mean": np.mean, "max": np.max, "logsumexp": np_logsumexp}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2), (2, 0), (0, 1, 2), ()], ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(name, axis, keepdims, rng):
    a = rng.standard_normal((2, 3, 4)).astype(F32)
    expected = REDUCTIONS[name](a.astype(np.float64), axis=axis, keepdims=keepdims)
    close(getattr(bg, name)(bg.tensor(a), axis, keepdims), expected)
    close(getattr(bg.tensor(a), name)(axis=axis, keepdims=keepdims), expected)


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_full_reductions_return_shape_0d(name):
    t = bg.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = getattr(t, name)()
    assert out.shape == () and out.ndim == 0 and isinstance(out.item(), float)
    assert getattr(bg.tensor(5.0), name)().shape == ()


def test_reduction_axis_errors():
    with pytest.raises(ValueError, match=r"axis 3 .*dimension 2"):
        bg.ones(2, 3).sum(axis=3)
    with pytest.raises(ValueError, match="duplicate|repeated"):
        bg.ones(2, 3).sum(axis=(1, -1))


def test_sum_is_accurate_for_long_inputs():
    n = 1_000_003
    a = np.full(n, 0.1, F32)
    close(bg.tensor(a).sum(), np.sum(a, dtype=np.float64), rtol=1e-6)
    close(bg.tensor(a).mean(), 0.1, rtol=1e-6)


def test_softmax_and_log_softmax_default_to_the_last_axis(rng):
    a = rng.standard_normal((2, 3, 4)).astype(F32)
    for axis in (-1, 0, 1, 2, -2):
        close(bg.softmax(bg.tensor(a), axis=axis), np_softmax(a, axis))
        close(bg.tensor(a).log_softmax(axis), np_log_softmax(a, axis))
    close(bg.softmax(bg.tensor(a)), np_softmax(a, -1))
    close(bg.tensor(a).log_softmax(), np_log_softmax(a, -1))
    with pytest.raises(ValueError, match="axis"):
        bg.softmax(bg.tensor(a), axis=3)


# ---- movement -------------------------------------------------------------------------------------------
def test_reshape_variants(rng):
    a = rng.standard_normal((2, 3, 4)).astype(F32)
    t = bg.tensor(a)
    for args in [(-1,), (6, 4), ((6, 4),), ([4, -1],), (2, -1, 3), (24, 1), (1, 2, 1, 12)]:
        same(t.reshape(*args), a.reshape(*args))
    same(bg.reshape(t, -1), a.reshape(-1))
    same(bg.reshape(t, (3, 8)), a.reshape(3, 8))
    same(bg.tensor(7.0).reshape(1, 1), np.full((1, 1), 7.0))
    same(bg.tensor([7.0]).reshape(()), np.array(7.0))


def test_transpose_variants(rng):
    a = rng.standard_normal((2, 3, 4)).astype(F32)
    t = bg.tensor(a)
    same(t.T, a.T)
    same(t.transpose(), a.transpose())
    same(t.transpose((1, 0, 2)), a.transpose((1, 0, 2)))
    same(t.transpose(2, 0, 1), a.transpose(2, 0, 1))
    same(t.transpose([-1, 0, 1]), a.transpose([-1, 0, 1]))
    same(bg.transpose(t, (0, 2, 1)), np.transpose(a, (0, 2, 1)))
    same(bg.transpose(t), np.transpose(a))
    same(bg.tensor([1.0, 2.0]).T, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="transpose"):
        t.transpose((0, 0, 1))
    with pytest.raises(ValueError, match="transpose"):
        t.transpose((0, 1))


def test_broadcast_to(rng):
    a = rng.standard_normal((3, 1)).astype(F32)
    same(bg.broadcast_to(bg.tensor(a), (2, 3, 4)), np.broadcast_to(a, (2, 3, 4)))
    same(bg.tensor(a).broadcast_to((3, 5)), np.broadcast_to(a, (3, 5)))
    same(bg.broadcast_to(bg.tensor(2.0), 3), np.broadcast_to(2.0, 3))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_concatenate_and_stack(axis, rng):
    parts = [rng.standard_normal((2, 3, 4)).astype(F32) for _ in range(3)]
    same(bg.stack([bg.tensor(p) for p in parts], axis=axis), np.stack(parts, axis=axis))
    sizes = [1, 2, 3]
    pieces = []
    for s in sizes:
        shape = [2, 3, 4]
        shape[axis] = s
        pieces.append(rng.standard_normal(shape).astype(F32))
    same(bg.concatenate([bg.tensor(p) for p in pieces], axis=axis), np.concatenate(pieces, axis=axis))


def test_concatenate_and_stack_accept_arrays_and_tuples():
    same(bg.concatenate((np.ones(2), bg.zeros(3))), np.r_[np.ones(2), np.zeros(3)])
    same(bg.stack((bg.tensor(1.0), 2.0)), np.array([1.0, 2.0]))
    same(bg.stack([bg.ones(2)], axis=1), np.ones((2, 1)))
    with pytest.raises(ValueError):
        bg.concatenate([])
    with pytest.raises(ValueError):
        bg.stack([])


# ---- matmul ---------------------------------------------------------------------------------------------
MATMUL_SHAPES = [
    ((3, 4), (4, 5)), ((1, 1), (1, 1)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)), ((1, 2, 3), (4, 1, 3, 2)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
    ((2, 3, 4), (4,)), ((4,), (2, 4, 3)), ((64, 70), (70, 33)), ((3, 0), (0, 2)), ((0, 3), (3, 2)),
]


@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES, ids=str)
def test_matmul_matches_numpy(sa, sb, rng):
    a, b = rng.standard_normal(sa).astype(F32), rng.standard_normal(sb).astype(F32)
    expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
    close(bg.tensor(a) @ bg.tensor(b), expected, 1e-5, 1e-5)
    close(bg.matmul(a, b), expected, 1e-5, 1e-5)
    close(a @ bg.tensor(b), expected, 1e-5, 1e-5)  # reflected


def test_matmul_rejects_scalars_and_misaligned_shapes():
    with pytest.raises(ValueError, match="scalar"):
        bg.matmul(bg.tensor(2.0), bg.ones(2))
    with pytest.raises(ValueError, match=r"matmul.*\(?\[?2, 3\]?\)?.*\(?\[?4, 5\]?\)?"):
        bg.ones(2, 3) @ bg.ones(4, 5)
    with pytest.raises(ValueError, match="matmul"):
        bg.ones(2, 2, 3) @ bg.ones(3, 3, 2)  # batch dims 2 and 3 do not broadcast


def test_matmul_large_is_accurate(rng):
    a, b = rng.standard_normal((300, 257)).astype(F32), rng.standard_normal((257, 190)).astype(F32)
    close(bg.tensor(a) @ bg.tensor(b), a.astype(np.float64) @ b.astype(np.float64), 1e-4, 1e-4)


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m, k, n", [(1, 1, 300), (300, 1, 20), (3, 1, 1), (1, 100, 70), (2, 100, 70), (7, 64, 9),
                                     (12, 130, 33), (13, 130, 33), (8, 10, 256), (5, 3, 2), (2, 2, 2), (17, 65, 3),
                                     (1, 300, 513), (1, 3, 32), (40, 300, 10), (64, 100, 300), (128, 17, 5),
                                     (8, 40, 50), (200, 33, 47), (130, 300, 70), (37, 256, 10), (9, 16, 16), (3, 20, 1)])
def test_matmul_kernel_paths_match_numpy(m, k, n, ta, tb, rng):
    """Every kernel path (outer products, row-wise A·Bᵀ for a few rows, row dot products, A·Bᵀ as
    a transpose of B (16x16 tiles and edges) then A·B, narrow A·B, the packed GEMM), through
    the matmul op's transpose flags as the backward pass uses them, and batched."""
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(F32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(F32)
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    got = bg.Tensor(_core.apply("matmul", [bg.tensor(a)._v, bg.tensor(b)._v], {"ta": ta, "tb": tb}))
    close(got, want, 1e-4, 1e-4)  # k up to 130 float32 terms
    a3, b3 = np.stack([a, 2 * a, -a]), np.stack([b, b[::-1].copy(), 0.5 * b])
    want3 = np.stack([(x.T if ta else x).astype(np.float64) @ (y.T if tb else y).astype(np.float64) for x, y in zip(a3, b3)])
    got3 = bg.Tensor(_core.apply("matmul", [bg.tensor(a3)._v, bg.tensor(b3)._v], {"ta": ta, "tb": tb}))
    close(got3, want3, 1e-4, 1e-4)


# ---- indexing -------------------------------------------------------------------------------------------
A = np.arange(120, dtype=F32).reshape(4, 5, 6)
KEYS = [
    0, -1, 3, (1, 2), (1, 2, 3), (-1, -2, -3),
    np.s_[:], np.s_[1:3], np.s_[::2], np.s_[::-1], np.s_[::-2], np.s_[3:0:-1], np.s_[-1:-5:-2], np.s_[2:2],
    np.s_[10:20], np.s_[-100:100], np.s_[1:100:3], np.s_[100:-100:-1], np.s_[:, ::-1], np.s_[:, 1:4, ::-3],
    np.s_[..., 0], np.s_[..., ::-1], np.s_[1, ...], np.s_[..., 2, :], np.s_[1, ..., 2],
    np.s_[None], np.s_[:, None], np.s_[None, 1, None, ::2], np.s_[..., None], np.s_[None, ..., None, 0],
    np.s_[[0, 2]], np.s_[[-1, 0, -1, 3]], np.s_[:, [4, -5, 4]], np.s_[..., [0, -1]], np.s_[1, [0, 1], :],
    np.s_[1, :, [0, 3]], np.s_[:, [1, -1], 2], np.s_[0, [1, 2], 3], np.s_[np.array([2, 0])], np.s_[[]],
    np.s_[np.array([[0, 1], [2, 3]])], np.s_[:, np.array([[0], [4]])],
    np.s_[np.array([True, False, True, False])], np.s_[:, np.array([True, False, True, False, True])],
    np.s_[A > 60], np.s_[(A > 60)[:, :, 0]], np.s_[np.zeros(4, bool)],
]


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_indexing_matches_numpy(key):
    got = bg.tensor(A)[key]
    same(got, A[key])


def test_indexing_with_tensors_and_0d():
    t = bg.tensor(A)
    same(t[bg.tensor(2.0)], A[2])
    same(t[bg.tensor(A[:, 0, 0]) > 50], A[A[:, 0, 0] > 50])
    same(t[bg.tensor([3, 1])], A[[3, 1]])
    s = bg.tensor(3.0)
    same(s[()], np.array(3.0))
    same(s[None], np.array([3.0]))
    same(s[...], np.array(3.0))


@pytest.mark.parametrize(
    "key, exc",
    [(4, IndexError), (-5, IndexError), ((0, 5), IndexError), ((0, 0, 6), IndexError), ([0, 4], IndexError),
     (np.s_[:, [-6]], IndexError), ((0, 0, 0, 0), IndexError), (np.s_[..., ...], IndexError),
     (np.array([True, False]), IndexError), (1.5, IndexError), ("a", IndexError)],
    ids=repr,
)
def test_bad_indices_raise(key, exc):
    with pytest.raises(exc):
        bg.tensor(A[:4])[key]


def test_slice_step_zero_is_an_error():
    with pytest.raises(ValueError):
        bg.tensor(A)[::0]


def test_take(rng):
    a = rng.standard_normal((4, 5)).astype(F32)
    for idx, axis in [([2, -1, 0, 2], 0), ([-5, 4, 4], 1), ([[0, 1], [1, -1]], -1), (np.array([3]), 0), ([], 1)]:
        same(bg.take(bg.tensor(a), idx, axis=axis), np.take(a, idx, axis=axis))
    with pytest.raises(IndexError, match="out of bounds"):
        bg.take(bg.tensor(a), [5], axis=1)
    with pytest.raises(IndexError, match="integers"):
        bg.take(bg.tensor(a), [0.5])


# ---- zero-size tensors ----------------------------------------------------------------------------------
def test_zero_size_tensors_work_where_numpy_does():
    z = np.zeros((0, 3), F32)
    t = bg.tensor(z)
    same(t.exp(), np.exp(z))
    same(t + bg.ones(3), z + np.ones(3))
    same(bg.zeros(0, 1) * bg.ones(1, 3), np.zeros((0, 3)))
    same(t.sum(axis=0), z.sum(axis=0))
    same(t.sum(), z.sum())
    same(t.sum(axis=1), z.sum(axis=1))
    same(t.max(axis=1), z.max(axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        same(t.mean(axis=0), z.mean(axis=0))  # NaN, as numpy
        same(bg.zeros(0).mean(), np.zeros(0).mean())
    same(t.T, z.T)
    same(t.reshape(-1, 3), z.reshape(-1, 3))
    same(t.reshape(3, -1), z.reshape(3, -1))
    same(t @ bg.ones(3, 2), z @ np.ones((3, 2)))
    same(bg.ones(2, 0) @ bg.ones(0, 4), np.ones((2, 0)) @ np.ones((0, 4)))
    same(bg.concatenate([t, bg.ones(2, 3)]), np.concatenate([z, np.ones((2, 3))]))
    same(bg.stack([bg.zeros(0), bg.zeros(0)]), np.stack([np.zeros(0), np.zeros(0)]))
    same(bg.softmax(t), np.zeros((0, 3)))
    same(bg.logsumexp(bg.zeros(2, 0), axis=1), np.full(2, -np.inf))  # log(sum([])) = log 0
    same(bg.tensor(A)[2:1], A[2:1])
    same(bg.where(t > 0, 1.0, t), np.where(z > 0, 1.0, z))
    same(bg.take(t, [2, 0], axis=1), np.take(z, [2, 0], axis=1))
    with pytest.raises(ValueError, match="zero-size"):
        t.max(axis=0)  # numpy raises too: no identity
    with pytest.raises(ValueError):
        np.zeros((0, 3)).max(axis=0)


def test_zero_size_backward():
    x = bg.zeros(0, 3, requires_grad=True)
    w = bg.ones(3, 2, requires_grad=True)
    ((x @ w).tanh().sum() + x.sum()).backward()
    same(x.grad, np.zeros((0, 3)))
    same(w.grad, np.zeros((3, 2)))


# ---- numerical stability at large |x| -------------------------------------------------------------------
BIG = np.array([[-1e4, 0.0, 1e4], [1e30, -1e30, 0.0], [-1e4, -1e4, -1e4], [1e6, 1e6 + 0.5, 1e6 - 1], [3e38, 3e38, -3e38], [-88.5, -104.0, 89.0]], F32)


def test_sigmoid_and_tanh_are_stable():
    x = np.array([-3e38, -1e30, -1e4, -100, -20, -1, 0, 1, 20, 100, 1e4, 1e30, 3e38], F32)
    for f, ref, dref in [(bg.sigmoid, np_sigmoid, lambda y: y * (1 - y)), (bg.tanh, np.tanh, lambda y: 1 - y * y)]:
        t = bg.tensor(x, requires_grad=True)
        y = f(t)
        close(y, ref(x.astype(np.float64)), 1e-6, 1e-44)  # sigmoid(-100) is subnormal in float32
        y.sum().backward()
        assert np.isfinite(t.grad.numpy()).all()
        close(t.grad, dref(ref(x.astype(np.float64))), 1e-5, 1e-7)
    assert bg.sigmoid(bg.tensor(-100.0)).item() > 0  # exp(-100) is a normal float32 away from 0


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_softmax_family_is_stable_and_accurate(name):
    x = BIG[[0, 1, 2, 3, 5]]
    ref = {"softmax": np_softmax, "log_softmax": np_log_softmax, "logsumexp": lambda a: np_logsumexp(a, axis=-1)}[name]
    f = {"softmax": bg.softmax, "log_softmax": bg.log_softmax, "logsumexp": lambda a: bg.logsumexp(a, axis=-1)}[name]
    t = bg.tensor(x, requires_grad=True)
    y = f(t)
    assert np.isfinite(y.numpy()).all()
    close(y, ref(x), 1e-6, 1e-6)
    G = np.linspace(-1, 1, y.size).reshape(y.shape).astype(F32)
    (y * bg.tensor(G)).sum().backward()
    g = t.grad.numpy()
    assert np.isfinite(g).all()
    p = np_softmax(x)
    if name == "softmax":
        expected = p * (G - (G * p).sum(-1, keepdims=True))
    elif name == "log_softmax":
        expected = G - p * G.sum(-1, keepdims=True)
    else:
        expected = G[:, None] * p
    close(g, expected, 1e-5, 1e-6)


def test_softmax_family_overflows_only_where_the_math_does():
    x = bg.tensor(BIG[4])  # [3e38, 3e38, -3e38]
    same(bg.softmax(x), [0.5, 0.5, 0.0])
    close(bg.logsumexp(x), np.float64(3e38) + np.log(2), 1e-6)  # finite: 3e38 + log 2 fits in float32
    ls = bg.log_softmax(x).numpy()  # -6e38 does not fit: -inf is the IEEE answer
    close(ls[:2], [-np.log(2)] * 2)
    assert ls[2] == -np.inf


def test_cross_entropy_is_stable_and_accurate():
    z = BIG[[0, 1, 2, 3, 5]]
    y = np.array([0, 1, 2, 1, 1], F32)
    t = bg.tensor(z, requires_grad=True)
    loss = xent(t, y)
    assert np.isfinite(loss.numpy()).all()
    close(loss, np_xent(z, y), 1e-6, 1e-6)
    loss.sum().backward()
    expected = np_softmax(z) - np.eye(3)[y.astype(int)]
    close(t.grad, expected, 1e-5, 1e-6)


def test_cross_entropy_matches_log_softmax(rng):
    z = rng.standard_normal((6, 5)).astype(F32) * 3
    y = rng.integers(0, 5, 6)
    close(xent(bg.tensor(z), y), -np_log_softmax(z)[np.arange(6), y], 1e-5, 1e-6)


# ---- NaN and inf propagate as numpy's do ---------------------------------------------------------------
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, 1e30, -1e30, 3e38], F32)
UNARY_IEEE = {
    "exp": (bg.exp, np.exp), "log": (bg.log, np.log), "sqrt": (bg.sqrt, np.sqrt), "tanh": (bg.tanh, np.tanh),
    "sigmoid": (bg.sigmoid, np_sigmoid), "relu": (bg.relu, lambda a: np.maximum(a, 0)), "abs": (bg.abs, np.abs),
    "sign": (bg.sign, np.sign), "neg": (lambda t: -t, np.negative), "square": (bg.square, np.square),
    "cube": (lambda t: t ** 3, lambda a: a ** 3), "pow0.5": (lambda t: t ** 0.5, lambda a: a ** 0.5),
    "pow-1": (lambda t: t ** -1, lambda a: a ** -1.0), "pow0": (lambda t: t ** 0, lambda a: a ** 0.0),
    "pow1.5": (lambda t: t ** 1.5, lambda a: a ** 1.5), "clip": (lambda t: bg.clip(t, -1, 1), lambda a: np.clip(a, -1, 1)),
    "clip_lo": (lambda t: bg.clip(t, 0, None), lambda a: np.clip(a, 0, None)),
}


@pytest.mark.parametrize("name", sorted(UNARY_IEEE))
def test_unary_nan_and_inf_as_numpy(name):
    f, ref = UNARY_IEEE[name]
    with np.errstate(all="ignore"):
        expected = ref(SPECIAL.astype(np.float64)).astype(F32)
    got = f(bg.tensor(SPECIAL)).numpy()
    assert np.array_equal(np.isnan(got), np.isnan(expected)), f"NaN positions differ: {got} vs {expected}"
    assert np.array_equal(got[np.isinf(expected)], expected[np.isinf(expected)]), f"{got} vs {expected}"
    close(got, expected, 1e-6, 1e-30)
    zero = expected == 0
    if name not in ("relu", "clip_lo"):  # numpy's maximum(-0., 0.) sign is platform dependent
        assert np.array_equal(np.signbit(got[zero]), np.signbit(expected[zero])), "signed zeros differ"


BINARY_IEEE = {
    "add": (lambda a, b: a + b, np.add), "sub": (lambda a, b: a - b, np.subtract), "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide), "maximum": (bg.maximum, np.maximum), "minimum": (bg.minimum, np.minimum),
    "lt": (lambda a, b: a < b, np.less), "le": (lambda a, b: a <= b, np.less_equal), "gt": (lambda a, b: a > b, np.greater),
    "ge": (lambda a, b: a >= b, np.greater_equal), "eq": (lambda a, b: a == b, np.equal), "ne": (lambda a, b: a != b, np.not_equal),
}


@pytest.mark.parametrize("name", sorted(BINARY_IEEE))
def test_binary_nan_and_inf_as_numpy(name):
    f, ref = BINARY_IEEE[name]
    a, b = SPECIAL[:, None], SPECIAL[None, :]  # every pair, by broadcasting
    with np.errstate(all="ignore"):
        expected = ref(a, b)
    got = f(bg.tensor(a), bg.tensor(b)).numpy()
    assert np.array_equal(got, expected, equal_nan=True), f"\n{got}\n{expected}"


def test_reductions_and_matmul_propagate_nan_and_inf():
    a = np.array([[1.0, np.nan, 2.0], [np.inf, 1.0, -np.inf], [np.inf, 1.0, 2.0], [-np.inf, -np.inf, 0.0]], F32)
    with np.errstate(all="ignore"):
        for name, ref in [("sum", np.sum), ("mean", np.mean), ("max", np.max), ("logsumexp", np_logsumexp)]:
            for axis in (None, 0, 1):
                same(getattr(bg, name)(bg.tensor(a), axis), ref(a.astype(np.float64), axis=axis).astype(F32))
        # softmax: a NaN poisons its row, +inf gives NaN (inf/inf) where it sits, an all -inf row is 0/0
        sm = bg.softmax(bg.tensor(np.array([[1.0, np.nan, 2.0], [np.inf, 1.0, 2.0], [-np.inf, -np.inf, -np.inf], [-np.inf, 0.0, 0.0]], F32))).numpy()
        assert np.isnan(sm[0]).all() and np.isnan(sm[1, 0]) and np.isnan(sm[2]).all()
        same(sm[3], [0.0, 0.5, 0.5])
        same(bg.tensor([[np.inf, 0.0]]) @ bg.tensor([[0.0], [1.0]]), np.array([[np.inf, 0.0]]) @ np.array([[0.0], [1.0]]))
        same(bg.tensor([[np.nan, 1.0]]) @ bg.ones(2, 3), np.array([[np.nan, 1.0]]) @ np.ones((2, 3)))
        big = np.ones((40, 50), F32)
        big[3, 7] = np.nan
        big[5, 2] = np.inf
        same(bg.tensor(big) @ bg.ones(50, 30), (big @ np.ones((50, 30))).astype(F32))
    same(bg.where(bg.tensor([np.nan, 0.0]), 1.0, 2.0), np.where([np.nan, 0.0], 1.0, 2.0))


def test_gradients_propagate_nan():
    x = bg.tensor([1.0, np.nan], requires_grad=True)
    (x * 2).sum().backward()
    same(x.grad, [2.0, 2.0])
    y = bg.tensor([1.0, np.nan], requires_grad=True)
    (y * y).sum().backward()
    same(y.grad, [2.0, np.nan])


# ---- hypothesis: broadcasting of the binary ops and where -----------------------------------------------
def unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """numpy's adjoint of broadcasting: sum over the broadcast axes."""
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead)))
    return g.sum(axis=tuple(i for i, d in enumerate(shape) if d == 1), keepdims=True).reshape(shape)


BINARY_GRADS = {  # name: (op, forward, d/da, d/db)
    "add": (lambda a, b: a + b, np.add, lambda a, b: np.ones_like(a * b), lambda a, b: np.ones_like(a * b)),
    "sub": (lambda a, b: a - b, np.subtract, lambda a, b: np.ones_like(a * b), lambda a, b: -np.ones_like(a * b)),
    "mul": (lambda a, b: a * b, np.multiply, lambda a, b: b + 0 * a, lambda a, b: a + 0 * b),
    "div": (lambda a, b: a / b, np.divide, lambda a, b: 1 / b + 0 * a, lambda a, b: -a / b ** 2),
    "maximum": (bg.maximum, np.maximum, lambda a, b: (a > b) * 1.0, lambda a, b: (b > a) * 1.0),
    "minimum": (bg.minimum, np.minimum, lambda a, b: (a < b) * 1.0, lambda a, b: (b < a) * 1.0),
}
shape_pairs = mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=1, max_side=4)


@pytest.mark.parametrize("name", sorted(BINARY_GRADS))
@settings(max_examples=40, deadline=None)
@given(shapes=shape_pairs, seed=st.integers(0, 2**32 - 1))
def test_binary_broadcasting_property(name, shapes, seed):
    op, fwd, da, db = BINARY_GRADS[name]
    (sa, sb), out_shape = shapes.input_shapes, shapes.result_shape
    r = np.random.default_rng(seed)
    a = (r.integers(-3, 4, sa) + 0.25 + r.uniform(-0.1, 0.1, sa)).astype(F32)  # no ties for maximum/minimum
    b = (r.choice([-1, 1], sb) * r.uniform(0.5, 2, sb)).astype(F32)  # away from 0 for div
    ta, tb = bg.tensor(a, requires_grad=True), bg.tensor(b, requires_grad=True)
    out = op(ta, tb)
    assert out.shape == out_shape == np.broadcast_shapes(sa, sb)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    close(out, fwd(a64, b64), 1e-6, 1e-6)
    G = r.standard_normal(out_shape).astype(F32)
    out.backward(bg.tensor(G))
    assert ta.grad.shape == sa and tb.grad.shape == sb
    close(ta.grad, unbroadcast(G * da(a64, b64), sa), 1e-5, 1e-5)
    close(tb.grad, unbroadcast(G * db(a64, b64), sb), 1e-5, 1e-5)


@settings(max_examples=50, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=4, min_side=1, max_side=4), seed=st.integers(0, 2**32 - 1))
def test_where_broadcasting_property(shapes, seed):
    sc, sa, sb = shapes.input_shapes
    r = np.random.default_rng(seed)
    c = r.random(sc) < 0.5
    a, b = r.standard_normal(sa).astype(F32), r.standard_normal(sb).astype(F32)
    ta, tb = bg.tensor(a, requires_grad=True), bg.tensor(b, requires_grad=True)
    out = bg.where(c, ta, tb)
    same(out, np.where(c, a, b))
    assert out.shape == shapes.result_shape
    G = r.standard_normal(out.shape).astype(F32)
    out.backward(bg.tensor(G))
    cb = np.broadcast_to(c, out.shape)
    close(ta.grad, unbroadcast(np.where(cb, G, 0.0), sa), 1e-5, 1e-6)
    close(tb.grad, unbroadcast(np.where(cb, 0.0, G), sb), 1e-5, 1e-6)
    same(bg.where(bg.tensor(c), a, b), np.where(c, a, b))  # a bool Tensor mask too


@settings(max_examples=50, deadline=None)
@given(shapes=shape_pairs)
def test_incompatible_shapes_raise_value_error_naming_both(shapes):
    sa, _ = shapes.input_shapes
    if len(sa) == 0:
        return
    bad = list(sa)
    bad[-1] = sa[-1] + 1 if sa[-1] != 1 else 2
    if bad[-1] == 1 or sa[-1] == 1:
        return  # 1 broadcasts with anything
    a, b = bg.ones(*sa), bg.ones(*bad)
    with pytest.raises(ValueError) as e:
        a + b
    msg = str(e.value)
    assert "add" in msg and str(list(sa)) in msg and str(bad) in msg


# ---- methods mirror the module functions ------------------------------------------------------------------
def test_methods_mirror_module_functions(rng):
    a = rng.uniform(0.5, 2, (3, 4)).astype(F32)
    t, u = bg.tensor(a), bg.tensor(a[0])
    same(t.pow(3), bg.pow(t, 3))
    same(t.maximum(u), bg.maximum(t, u))
    same(t.minimum(1.0), bg.minimum(t, 1.0))
    same(t.matmul(u), bg.matmul(t, u))
    same(t.square(), bg.square(t))


# ---- large inputs: the parallel kernel paths ---------------------------------------------------------------
@pytest.fixture
def threads():
    before = bg.get_num_threads()
    yield
    bg.set_num_threads(before)


@pytest.mark.parametrize("m, k, n, ta, tb", [(32, 256, 256, False, False), (32, 784, 256, False, False), (784, 32, 256, True, False),
                                            (256, 2048, 10, True, False), (2048, 256, 10, False, False), (300, 40, 70, False, True),
                                            (1, 784, 256, False, False), (64, 512, 2048, False, False),
                                            (32, 256, 256, False, True), (100, 50, 30, False, True), (512, 256, 784, False, True),
                                            (8, 256, 784, False, True), (16, 256, 256, False, True), (128, 256, 256, False, True),
                                            (40, 100, 50, False, True), (512, 10, 256, False, True), (1000, 256, 10, False, False),
                                            (8, 784, 256, False, False), (8, 256, 256, False, False), (256, 256, 256, False, False),
                                            (512, 784, 256, False, False), (784, 512, 256, True, False), (1024, 1024, 1024, False, False),
                                            (4096, 256, 784, False, True), (256, 4096, 256, True, False)])
def test_matmul_is_thread_count_independent(m, k, n, ta, tb, rng, threads):
    """Every way a product is split across threads (rows, columns, the crate's own, tiles of the
    narrow AᵀB kernel) gives bit-identical results."""
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(F32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(F32)
    outs = []
    for t in (1, 2):
        bg.set_num_threads(t)
        outs.append(bg.Tensor(_core.apply("matmul", [bg.tensor(a)._v, bg.tensor(b)._v], {"ta": ta, "tb": tb})).numpy())
    assert np.array_equal(outs[0], outs[1])
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    close(outs[0], want, 1e-3, 1e-3)


@pytest.mark.parametrize("shape, axis", [((2048, 256), 0), ((3, 1000, 70), 1), ((129, 5), 0), ((300, 2, 300), (0, 2))])
def test_long_axis_reductions_are_thread_count_independent(shape, axis, rng, threads):
    """A long reduced axis is summed in fixed blocks of rows, whatever the thread count."""
    a = rng.standard_normal(shape).astype(F32)
    a[1, 1] = np.nan if len(shape) == 2 and shape[1] == 5 else a[1, 1]
    got = {}
    for t in (1, 2):
        bg.set_num_threads(t)
        got[t] = (bg.tensor(a).sum(axis=axis).numpy(), bg.tensor(a).max(axis=axis).numpy())
    for k in range(2):
        assert np.array_equal(got[1][k], got[2][k], equal_nan=True)
    close(got[1][0], a.astype(np.float64).sum(axis=axis), 1e-5, 1e-4)
    close(got[1][1], a.max(axis=axis))


def test_outputs_larger_than_the_cache_are_streamed_exactly(rng, threads):
    """Unary maps whose output exceeds 3/4 of the last-level cache write it with non-temporal
    stores from L1-sized blocks: every element (unaligned head, blocks, tail) must be written,
    with the same bits as the in-cache path and at any thread count."""
    n = _core.stream_min_bytes() // 4 + 1003
    if n > 80_000_000:
        pytest.skip(f"last-level cache too large to test the streamed path cheaply ({n} floats)")
    a = rng.standard_normal(n).astype(F32) * 30
    a[[0, 17, n // 2, n - 1]] = [np.nan, np.inf, -np.inf, 100.0]
    small = a[:40_000]  # below the threshold: plain stores
    got = {}
    for t in (1, 2):
        bg.set_num_threads(t)
        # a sliced input (offset by 3 floats) moves the output blocks against the input's alignment
        x = bg.tensor(a)
        got[t] = [f(x).numpy().copy() for f in (bg.relu, bg.exp, bg.tanh)] + [bg.exp(x[3:]).numpy().copy()]
    for g1, g2 in zip(got[1], got[2]):
        assert np.array_equal(g1, g2, equal_nan=True)
    relu, ex, th, ex3 = got[1]
    assert np.array_equal(relu[1:], np.maximum(a[1:], 0)) and np.isnan(relu[0])
    assert np.array_equal(ex3, ex[3:], equal_nan=True)
    with np.errstate(over="ignore"):
        close(ex[1:], np.exp(a[1:].astype(np.float64)).astype(F32), 4e-7, 1e-44)  # overflow: inf in float32
    close(th[1:], np.tanh(a[1:].astype(np.float64)), 4e-7, 1e-7)
    assert np.isnan(ex[0]) and np.isnan(th[0])
    # the streamed and the cached paths give the same bits
    assert np.array_equal(bg.exp(bg.tensor(small)).numpy(), ex[:40_000], equal_nan=True)
    assert np.array_equal(bg.tanh(bg.tensor(small)).numpy(), th[:40_000], equal_nan=True)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_large_inputs_match_numpy(n_threads, rng, threads):
    bg.set_num_threads(n_threads)
    assert bg.get_num_threads() == n_threads
    a = rng.standard_normal((64, 300, 40)).astype(F32)  # 768k elements: above the parallel threshold
    b = rng.standard_normal((300, 1)).astype(F32)
    t, u, a64 = bg.tensor(a), bg.tensor(b), a.astype(np.float64)
    close(t.tanh(), np.tanh(a64))
    close(t + u, a64 + b)
    close(bg.where(t > 0, t, u), np.where(a > 0, a, b))
    for axis in [None, 0, 1, 2, (0, 1), (1, 2), (0, 2)]:
        close(t.sum(axis=axis), a64.sum(axis=axis), 1e-5, 1e-3)
        close(t.mean(axis=axis), a64.mean(axis=axis), 1e-5, 1e-5)
        close(t.max(axis=axis), a64.max(axis=axis))
        close(bg.logsumexp(t, axis=axis), np_logsumexp(a64, axis=axis), 1e-5, 1e-5)
    for axis in (0, 1, 2):
        close(bg.softmax(t, axis=axis), np_softmax(a64, axis), 1e-5, 1e-7)
        close(bg.log_softmax(t, axis=axis), np_log_softmax(a64, axis), 1e-5, 1e-5)
    same(t.transpose(2, 0, 1), a.transpose(2, 0, 1))
    same(t[::-3, 5:290:7, ::-1], a[::-3, 5:290:7, ::-1])
    same(bg.take(t, [5, -1, 5, 0] * 50, axis=1), np.take(a, [5, -1, 5, 0] * 50, axis=1))
    same(bg.concatenate([t, t[:, :7]], axis=1), np.concatenate([a, a[:, :7]], axis=1))
    m1, m2 = rng.standard_normal((512, 300)).astype(F32), rng.standard_normal((300, 260)).astype(F32)
    close(bg.tensor(m1) @ bg.tensor(m2), m1.astype(np.float64) @ m2, 1e-4, 1e-4)
    x = bg.tensor(a, requires_grad=True)
    G = rng.standard_normal((64, 40)).astype(F32)
    (x.max(axis=1) * bg.tensor(G)).sum().backward()
    same(x.grad, (a == a.max(1, keepdims=True)) * G[:, None, :])


def test_results_do_not_depend_on_the_thread_count(rng, threads):
    a = rng.standard_normal((300, 1000)).astype(F32)
    outs = []
    for n in (1, 2, 3):
        bg.set_num_threads(n)
        t = bg.tensor(a, requires_grad=True)
        y = t.sum() + t.sum(axis=0).sum() + bg.logsumexp(t, axis=1).sum() + (t @ t[:50].T).mean()
        y.backward()
        outs.append((y.numpy().copy(), t.grad.numpy().copy()))
    for y, g in outs[1:]:
        assert np.array_equal(y, outs[0][0]) and np.array_equal(g, outs[0][1])


def test_set_num_threads_rejects_bad_values(threads):
    # 10**9 used to try to start a billion threads (the call never returned)
    for bad in (0, -1, 1.5, "2", True, 1025, 10**9):
        with pytest.raises(ValueError, match="set_num_threads"):
            bg.set_num_threads(bad)
    with pytest.raises(ValueError, match="1..=1024"):
        _core.set_num_threads(10**9)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_computes_in_parallel_without_hanging(rng, threads, tmp_path):
    """Threads do not survive fork(): the child rebuilds the pool and the spinning team on first
    use instead of waiting forever for the parent's workers (as torch's DataLoader workers fork)."""
    import os
    import time

    bg.set_num_threads(2)
    a, b = rng.standard_normal((64, 256)).astype(F32), rng.standard_normal((256, 256)).astype(F32)
    x = rng.standard_normal(1 << 20).astype(F32)
    ta, tb, tx = bg.tensor(a), bg.tensor(b), bg.tensor(x)
    want = [(ta @ tb).numpy(), (tx * tx + tx).numpy(), np.array([(ta @ tb.T).sum().item()], F32)]  # team, rayon, both
    out = tmp_path / "child.bin"
    pid = os.fork()
    if pid == 0:  # child: compute the same things, write the bytes, exit without cleanup
        try:
            got = [(ta @ tb).numpy(), (tx * tx + tx).numpy(), np.array([(ta @ tb.T).sum().item()], F32)]
            out.write_bytes(b"".join(g.tobytes() for g in got))
        finally:
            os._exit(0)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in a parallel kernel")
        time.sleep(0.01)
    assert out.read_bytes() == b"".join(g.tobytes() for g in want)


def test_fma_peak_is_a_finite_rate_and_rejects_a_bad_thread_count():
    """`_core.fma_peak` (the benchmarks' reference for GEMM GFLOP/s) times FMA chains on one and
    two threads; its value is a rate, finite and positive (no speed is asserted here), and a
    thread count of 0 is a ValueError that names the argument."""
    for t in (1, 2):
        p = _core.fma_peak(t, rounds=20_000, repeats=2)
        assert np.isfinite(p) and p > 0
    with pytest.raises(ValueError, match="threads"):
        _core.fma_peak(0)
