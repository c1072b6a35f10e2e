"""The hot path of small graphs (tensor operators, `_core.OpCode` / call1 / call2 / call_scalar,
the GIL kept for tiny inputs, same-shape binary kernels) computes exactly what the general path
(`_core.apply` by name, broadcasting views) computes, for every kind of operand."""

import operator

import numpy as np
import pytest

import batchgrad as bg
from batchgrad import _core

OPS = [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul), ("div", operator.truediv)]


def _bits(t):
    return np.asarray(t.numpy(), np.float32).view(np.uint32)


def _general(name, a, b):
    """The same op through `_core.apply` by name, the constant as a 0-d Var made in Python."""
    va = a._v if isinstance(a, bg.Tensor) else _core.scalar(float(a))
    vb = b._v if isinstance(b, bg.Tensor) else _core.scalar(float(b))
    return bg.Tensor(_core.apply(name, [va, vb]))


OPERANDS = [2.5, 3, -0.0, float("inf"), float("nan"), 1e-40]


@pytest.mark.parametrize("name,f", OPS)
@pytest.mark.parametrize("shape", [(), (1,), (5,), (3, 4), (1025,)])
def test_operators_equal_the_general_path_bitwise(name, f, shape, rng):
    x = bg.tensor(rng.normal(size=shape).astype(np.float32) + 0.5)
    w = bg.tensor(rng.normal(size=shape).astype(np.float32))
    for c in OPERANDS:
        assert np.array_equal(_bits(f(x, c)), _bits(_general(name, x, c)))
        assert np.array_equal(_bits(f(c, x)), _bits(_general(name, c, x)))
    assert np.array_equal(_bits(f(x, w)), _bits(_general(name, x, w)))
    # a same-shape pair takes the no-broadcast kernel; a broadcast pair the view kernel: same values
    ref = f(x.numpy().astype(np.float64), w.numpy().astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(f(x, w).numpy(), ref, rtol=1e-6)


@pytest.mark.parametrize("name,f", OPS)
def test_operand_kinds_and_gradients(name, f, rng):
    p = bg.nn.Parameter(rng.normal(size=(3,)).astype(np.float32) + 2.0)
    x = bg.tensor(rng.normal(size=(3,)).astype(np.float32) + 2.0, requires_grad=True)
    for other in (p, np.float32(1.5), np.float64(1.5), True, [1.0, 2.0, 3.0], np.ones(3, np.float32)):
        got = f(x, other)
        want = f(x.numpy(), np.asarray(other.numpy() if isinstance(other, bg.Tensor) else other, np.float32))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    # gradients through the fast path: d/dx of sum(f(x, 1.5) + f(1.5, x)) against finite differences in float64
    y = (f(x, 1.5) + f(1.5, x)).sum()
    y.backward()
    xs = x.numpy().astype(np.float64)
    eps = 1e-6
    fd = [(np.sum(f(xs + eps * e, 1.5) + f(1.5, xs + eps * e)) - np.sum(f(xs - eps * e, 1.5) + f(1.5, xs - eps * e)))
          / (2 * eps) for e in np.eye(3)]
    np.testing.assert_allclose(x.grad.numpy(), fd, rtol=1e-4)


def test_op_codes():
    mul = _core.op_code("mul")
    assert mul.name == "mul" and repr(mul) == 'OpCode("mul")'
    s = _core.op_code("sum", {"axes": [1], "keepdims": True})
    x = bg.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(bg.Tensor(_core.call1(s, x._v)).numpy(), [[3.0], [12.0]])
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        _core.op_code("nope")
    with pytest.raises(ValueError, match="broadcast"):
        _core.call2(mul, bg.ones(2)._v, bg.ones(3)._v)
    with pytest.raises(ValueError, match="expected 2 inputs"):
        _core.call1(mul, x._v)
    with pytest.raises(OverflowError):
        bg.ones(2) + 10**400
    with pytest.raises(TypeError, match="expected numbers"):
        bg.ones(2) + "a"


def test_results_keep_their_kind():
    x = bg.tensor([1.0, -2.0], requires_grad=True)
    m = x > 0
    assert (x * 2).grad_fn == "mul" and (2 - x).grad_fn == "sub" and (-x).grad_fn == "neg"
    assert not (m * 1.0)._bool and (m * 1.0).numpy().tolist() == [1.0, 0.0]
    with bg.no_grad():
        assert (x + 1).grad_fn is None and not (x + 1).requires_grad


def test_backward_takes_the_graph_and_puts_it_back_on_error():
    """A backward without retain_graph moves each node out of the graph as it walks it; when it
    then meets a node freed by an earlier backward, the nodes it took are put back: the graph is
    as it was, and the error names the freed op, the same on every try."""
    x = bg.tensor([0.5, 1.5], requires_grad=True)
    y = x.exp()
    (y * 2).sum().backward()  # frees y's node ('exp')
    w = (y + 1).tanh().sum()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="the graph of 'exp' was freed"):
            w.backward()
    assert w.grad_fn == "sum"
    # retain_graph keeps every node; a later plain backward frees them, a third one fails on them
    x2 = bg.tensor([0.5, 1.5], requires_grad=True)
    z = (x2 * x2).sum()
    z.backward(retain_graph=True)
    z.backward()
    np.testing.assert_allclose(x2.grad.numpy(), [2.0, 6.0])
    with pytest.raises(RuntimeError, match="the graph of 'sum' was freed"):
        z.backward()


def test_number_constants_are_shared_without_changing_any_result(rng):
    """A number operand becomes a 0-d constant that recent ops with the same value share (no Var
    allocated per op). Sharing must not show: traced graphs, vmap(grad) and compiled steps that
    use the same number many times give the values and gradients of numpy."""
    def f(x):
        return (((x * 0.5 + 0.5) * 0.5 - 0.5) / 0.5 * x).sum()

    def f_np(x):
        return float((((x * 0.5 + 0.5) * 0.5 - 0.5) / 0.5 * x).sum())

    xs = rng.normal(size=(4, 3)).astype(np.float32)
    g = bg.trace(f, bg.tensor(xs[0]))
    for row in xs[1:]:
        assert float(g.run(bg.tensor(row))) == pytest.approx(f_np(row.astype(np.float64)), rel=1e-6)
    per_example = bg.vmap(bg.grad(f))(bg.tensor(xs)).numpy()
    # d/dx of ((x/4 + 1/4 - 1/2) * 2) * x = (x/2 - 1/2) * x  ->  x - 1/2
    np.testing.assert_allclose(per_example, xs - 0.5, rtol=1e-6, atol=1e-7)
    # many distinct numbers (more than the few kept) still give the right values
    x = bg.tensor(xs[0], requires_grad=True)
    y = x
    for k in range(1, 40):
        y = y * (1 + k / 1000.0) + k / 100.0
    want = xs[0].astype(np.float64)
    for k in range(1, 40):
        want = want * np.float32(1 + k / 1000.0) + np.float32(k / 100.0)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.prod([np.float32(1 + k / 1000.0) for k in range(1, 40)]) * np.ones(3),
                               rtol=1e-5)


def test_linear_reads_its_parameters_however_they_were_set(rng):
    """Linear.forward reads weight and bias from the parameter registry directly; assigning
    `bias = None` keeps the (empty) slot as in PyTorch, and a plain tensor assigned over a
    parameter is used as an attribute."""
    x = rng.normal(size=(2, 3)).astype(np.float32)
    m = bg.nn.Linear(3, 2, seed=0)
    w = m.weight.numpy().copy()
    m.bias = None
    assert "bias" in m._parameters and m._parameters["bias"] is None and m.bias is None
    assert [k for k, _ in m.named_parameters()] == ["weight"]
    np.testing.assert_allclose(m(x).numpy(), x @ w, rtol=1e-6)
    m.bias = bg.ones(2)  # a plain tensor, not a Parameter: an attribute, not registered
    np.testing.assert_allclose(m(x).numpy(), x @ w + 1, rtol=1e-6)
    m.weight = bg.nn.Parameter(np.eye(3, 2, dtype=np.float32))
    np.testing.assert_allclose(m(x).numpy(), x @ np.eye(3, 2) + 1, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_fast_path_equals_the_checked_path(reduction):
    """Integer numpy labels and float32 Tensor labels go straight to the op (which checks them);
    a list takes the checked path. Same loss and gradient bits, and the same errors."""
    F = bg.nn.functional
    r = np.random.default_rng(0)
    logits = r.normal(size=(7, 5)).astype(np.float32) * 3
    labels = r.integers(0, 5, 7)
    outs = []
    for target in (labels.tolist(), labels, labels.astype(np.uint8), bg.tensor(labels.astype(np.float32))):
        z = bg.tensor(logits, requires_grad=True)
        loss = F.cross_entropy(z, target, reduction=reduction)
        loss.sum().backward()
        outs.append((loss.numpy().tobytes(), z.grad.numpy().tobytes()))
    assert all(o == outs[0] for o in outs[1:])
    z = bg.tensor(logits)
    for bad, msg in ((np.array([0, 1, 2, 3, 4, 5, 0]), "label 5 is out of range for 5 classes"),
                     (np.array([0, -1, 2, 3, 4, 0, 0]), "label -1 is out of range for 5 classes"),
                     (bg.tensor(np.array([0, 1, 2, 3, 4, 0, 1.5], np.float32)), "non-integer label 1.5"),
                     (bg.tensor(np.array([0, 1, 2, 3, 4, 0, np.nan], np.float32)), "non-integer label nan"),
                     (np.array([0, 1, 2, 2**40, 4, 0, 0]), f"label {2**40} is out of range")):
        with pytest.raises(ValueError, match=msg):
            F.cross_entropy(z, bad)
