"""Deferred weight gradients at batch 1 (`tape::Grad::Outer`).

`backward` keeps the gradient of a leaf that is the right operand of a one-row product (a Linear
layer's weight at batch 1) as the two vectors of its outer product. Reading `.grad` computes it;
the eager optimizer computes it block by block while it updates the weight (plain SGD: in the same
pass). Every element is one float32 product, the same bits whichever way it is computed, so each
test below compares with deferral turned off (`_core.set_deferred_grads(False)`) for exact
equality, and with numpy or torch for the values.
"""
import numpy as np
import pytest

import batchgrad as bg
from batchgrad import _core, nn, optim
from batchgrad.nn import functional as F


@pytest.fixture
def deferral():
    """Run a function with deferral on and off; restores the setting."""
    prev = _core.set_deferred_grads(True)

    def both(fn):
        out = []
        for on in (True, False):
            _core.set_deferred_grads(on)
            out.append(fn())
        _core.set_deferred_grads(True)
        return out

    yield both
    _core.set_deferred_grads(prev)


def _mlp_run(opt_cls, steps=4, batch=1, read_grads=False, seed=0, **kw):
    rng = np.random.default_rng(seed)
    m = nn.MLP([12, 9, 7, 4], seed=seed)
    o = opt_cls(m.parameters(), **kw)
    losses = []
    for _ in range(steps):
        X = rng.normal(size=(batch, 12)).astype(np.float32)
        y = rng.integers(0, 4, size=batch)
        o.zero_grad()
        loss = F.cross_entropy(m(X), y)
        loss.backward()
        # the three weights are deferred at batch 1 (when deferral is on), never the biases
        on = _deferring()
        assert [p._v.grad_deferred for p in m.parameters()] == [on and batch == 1 and n.endswith("weight") for n, _ in m.named_parameters()]
        if read_grads:
            [p.grad for p in m.parameters()]
        o.step()
        losses.append(loss.item())
    return [p.numpy().copy() for p in m.parameters()], losses


def _same_bits(a, b):
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_batch_one_weight_gradient_is_the_outer_product(deferral, rng):
    x = rng.normal(size=(1, 30)).astype(np.float32)
    w = rng.normal(size=(30, 20)).astype(np.float32)
    c = rng.normal(size=(1, 20)).astype(np.float32)

    def run():
        W = bg.tensor(w, requires_grad=True)
        ((bg.tensor(x) @ W) * bg.tensor(c)).sum().backward()
        deferred = W._v.grad_deferred
        g = W.grad.numpy().copy()
        assert not W._v.grad_deferred  # computed once, then stored
        return deferred, g

    (d_on, on), (d_off, off) = deferral(run)
    assert d_on and not d_off
    assert on.tobytes() == off.tobytes()
    # d/dW sum(c * (x W)) = xᵀ c: one float32 product per element, as numpy's outer product
    assert on.tobytes() == np.outer(x[0], c[0]).astype(np.float32).tobytes()


def test_reading_grad_twice_gives_the_same_tensor_values(rng):
    W = bg.tensor(rng.normal(size=(5, 3)).astype(np.float32), requires_grad=True)
    (bg.tensor(rng.normal(size=(1, 5)).astype(np.float32)) @ W).sum().backward()
    g1 = W.grad.numpy().copy()
    g2 = W.grad.numpy()
    assert g1.tobytes() == g2.tobytes()


@pytest.mark.parametrize("opt_cls,kw", [
    (optim.SGD, dict(lr=0.1)),
    (optim.SGD, dict(lr=0.1, maximize=True)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (optim.SGD, dict(lr=0.1, weight_decay=0.01)),
    (optim.Adam, dict(lr=0.01, amsgrad=True)),
    (optim.AdamW, dict(lr=0.01)),
    (optim.RMSprop, dict(lr=0.01, centered=True, momentum=0.5)),
    (optim.Adagrad, dict(lr=0.1)),
])
def test_optimizers_on_deferred_gradients_give_the_same_bits(deferral, opt_cls, kw):
    """Plain SGD's fused pass and every other rule's block-by-block update equal the update on
    the stored gradient, bit for bit, over several steps; so does reading `.grad` first."""
    on, off = deferral(lambda: _mlp_run(opt_cls, **kw))
    _same_bits(on[0], off[0])
    assert on[1] == off[1]
    read, _ = deferral(lambda: _mlp_run(opt_cls, read_grads=True, **kw))
    _same_bits(on[0], read[0])


def test_large_layer_crosses_update_blocks_and_matches_torch(deferral):
    """A 784 x 300 weight (235,200 elements: many of the update's blocks, rows of 300 that do not
    divide them) gives the same bits with and without deferral, and torch's values."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    w0 = rng.normal(scale=0.05, size=(784, 300)).astype(np.float32)
    xs = [rng.normal(size=(1, 784)).astype(np.float32) for _ in range(3)]
    cs = [rng.normal(size=(1, 300)).astype(np.float32) for _ in range(3)]

    def run():
        W = bg.tensor(w0, requires_grad=True)
        o = optim.SGD([W], lr=0.05)
        for x, c in zip(xs, cs):
            o.zero_grad()
            ((bg.tensor(x) @ W) * bg.tensor(c)).sum().backward()
            o.step()
        return W.numpy().copy()

    on, off = deferral(run)
    assert on.tobytes() == off.tobytes()
    Wt = torch.tensor(w0, requires_grad=True)
    ot = torch.optim.SGD([Wt], lr=0.05)
    for x, c in zip(xs, cs):
        ot.zero_grad()
        ((torch.tensor(x) @ Wt) * torch.tensor(c)).sum().backward()
        ot.step()
    np.testing.assert_allclose(on, Wt.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_accumulation_and_a_weight_used_twice(deferral, rng):
    """A second backward adds to a deferred gradient, and a weight feeding two products in one
    graph sums both contributions: the same bits as without deferral, numpy's values."""
    x1, x2 = (rng.normal(size=(1, 6)).astype(np.float32) for _ in range(2))
    w = rng.normal(size=(6, 4)).astype(np.float32)

    def run():
        W = bg.tensor(w, requires_grad=True)
        (bg.tensor(x1) @ W).sum().backward()
        (bg.tensor(x2) @ W).sum().backward()
        acc = W.grad.numpy().copy()
        W.grad = None
        ((bg.tensor(x1) @ W) * 2.0 + bg.tensor(x2) @ W).sum().backward()
        return acc, W.grad.numpy().copy()

    (acc_on, two_on), (acc_off, two_off) = deferral(run)
    assert acc_on.tobytes() == acc_off.tobytes()
    assert two_on.tobytes() == two_off.tobytes()
    ones = np.ones(4, np.float32)
    np.testing.assert_allclose(acc_on, np.outer(x1[0], ones) + np.outer(x2[0], ones), rtol=1e-6)
    np.testing.assert_allclose(two_on, np.outer(2 * x1[0], ones) + np.outer(x2[0], ones), rtol=1e-6)


def test_factor_that_is_a_parameter_keeps_its_old_value(deferral, rng):
    """loss = sum(A @ B) with A (1 x 5) and B both parameters: B's deferred gradient holds A's
    value, and the optimizer updates A first. B's update and a later read of B.grad still use the
    A the backward saw (copy-on-write), as without deferral."""
    a0 = rng.normal(size=(1, 5)).astype(np.float32)
    b0 = rng.normal(size=(5, 3)).astype(np.float32)

    def run():
        A = bg.tensor(a0, requires_grad=True)
        B = bg.tensor(b0, requires_grad=True)
        o = optim.SGD([A, B], lr=0.5)
        (A @ B).sum().backward()
        o.step()
        return A.numpy().copy(), B.numpy().copy(), B.grad.numpy().copy()

    on, off = deferral(run)
    _same_bits(on, off)
    np.testing.assert_array_equal(on[2], np.outer(a0[0], np.ones(3, np.float32)))
    np.testing.assert_allclose(on[1], b0 - 0.5 * np.outer(a0[0], np.ones(3, np.float32)), rtol=1e-6)


def _deferring():
    on = _core.set_deferred_grads(True)
    _core.set_deferred_grads(on)
    return on


@pytest.mark.parametrize("act", ["linear", "tanh"])
def test_double_backward_through_a_transposed_product(deferral, rng, act):
    """A gradient penalty: the graph of dL/dx (create_graph) multiplies by Wᵀ, so the second
    backward meets W as the transposed right operand of a one-row product. With a linear model
    that is W's only path (its gradient stays deferred); with tanh a second path through x @ W
    adds to it (computed, then summed). Same bits with and without deferral, and the value of
    central differences in float64."""
    x0 = rng.normal(size=(1, 4)).astype(np.float32)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    c0 = rng.normal(size=(1, 3)).astype(np.float32)

    def model(x, W):
        y = x @ W
        return (bg.tanh(y) if act == "tanh" else y * bg.tensor(c0)).sum()

    def run():
        W = bg.tensor(w0, requires_grad=True)
        x = bg.tensor(x0, requires_grad=True)
        gx = bg.grad(lambda x: model(x, W))(x)
        (gx * gx).sum().backward()
        assert W._v.grad_deferred == (_deferring() and act == "linear")
        return W.grad.numpy().copy()

    on, off = deferral(run)
    assert on.tobytes() == off.tobytes()

    def f64(w):
        if act == "tanh":
            t = np.tanh(x0.astype(np.float64) @ w)
            gx = (1 - t * t) @ w.T
        else:
            gx = c0.astype(np.float64) @ w.T
        return float((gx * gx).sum())

    eps, num = 1e-6, np.zeros(w0.shape)
    w64 = w0.astype(np.float64)
    for i in np.ndindex(w0.shape):
        d = np.zeros_like(w64)
        d[i] = eps
        num[i] = (f64(w64 + d) - f64(w64 - d)) / (2 * eps)
    np.testing.assert_allclose(on, num, rtol=2e-4, atol=2e-5)


def test_zero_grad_without_none_clip_and_grad_norm_see_the_values(deferral, rng):
    x = rng.normal(size=(1, 8)).astype(np.float32)
    w = rng.normal(size=(8, 6)).astype(np.float32)

    def run():
        W = bg.tensor(w, requires_grad=True)
        (bg.tensor(x) @ W).sum().backward()
        norm = nn.utils.clip_grad_norm_([W], 0.5)
        clipped = W.grad.numpy().copy()
        o = optim.SGD([W], lr=0.1)
        o.zero_grad(set_to_none=False)
        return float(norm), clipped, W.grad.numpy().copy()

    on, off = deferral(run)
    assert on[0] == off[0]
    assert on[1].tobytes() == off[1].tobytes()
    np.testing.assert_allclose(on[0], np.linalg.norm(np.outer(x[0], np.ones(6))), rtol=1e-5)
    assert not on[2].any()


def test_batch_two_and_functional_grad_are_never_deferred(deferral, rng):
    """Only one-row products are deferred: at batch 2, and for `bg.grad`, the results (and the
    path) are the ordinary ones; the bits agree either way."""
    on, off = deferral(lambda: _mlp_run(optim.SGD, batch=2, lr=0.1))
    _same_bits(on[0], off[0])
    x = bg.tensor(rng.normal(size=(1, 5)).astype(np.float32))
    W = bg.tensor(rng.normal(size=(5, 2)).astype(np.float32), requires_grad=True)
    g = bg.grad(lambda W: (x @ W).sum())(W)
    assert W.grad is None
    np.testing.assert_array_equal(g.numpy(), np.outer(x.numpy()[0], np.ones(2, np.float32)))


def test_threads_give_the_same_bits(deferral):
    """The update of a deferred gradient is elementwise, so 1 and 2 threads agree exactly."""
    prev = bg.get_num_threads()
    try:
        res = []
        for t in (1, 2):
            bg.set_num_threads(t)
            res.append(_mlp_run(optim.Adam, steps=3, lr=0.01)[0])
    finally:
        bg.set_num_threads(prev)
    _same_bits(res[0], res[1])


def test_optimizer_without_gradient_skips_and_errors_stay(rng):
    W = bg.tensor(rng.normal(size=(3, 2)).astype(np.float32), requires_grad=True)
    V = bg.tensor(rng.normal(size=(3, 2)).astype(np.float32), requires_grad=True)
    o = optim.SGD([W, V], lr=0.1)
    (bg.tensor(np.ones((1, 3), np.float32)) @ W).sum().backward()
    v0 = V.numpy().copy()
    o.step()
    assert V.grad is None and V.numpy().tobytes() == v0.tobytes()
    np.testing.assert_allclose(W.grad.numpy(), np.ones((3, 2)))


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_update_on_the_spinning_team_gives_the_same_bits(deferral, opt_name):
    """At 2 threads a product split on the spinning team right before `step()` (a batch-1 step
    itself splits none) leaves its helper awake, so the 803k-parameter update runs on the team in
    chunks: plain SGD's one-pass update and Adam's block-by-block one on deferred gradients give
    the same bits as on stored gradients, and as 1 thread."""
    def run(threads):
        prev = bg.get_num_threads()
        bg.set_num_threads(threads)
        try:
            rng = np.random.default_rng(5)
            m = nn.MLP([784, 1024, 10], seed=1)
            o = optim.SGD(m.parameters(), lr=0.05) if opt_name == "sgd" else optim.Adam(m.parameters(), lr=1e-3)
            big = bg.tensor(rng.normal(size=(256, 256)).astype(np.float32))
            before = _core.team_updates()
            for _ in range(4):
                X = rng.normal(size=(1, 784)).astype(np.float32)
                o.zero_grad()
                F.cross_entropy(m(X), rng.integers(0, 10, size=1)).backward()
                big @ big  # 33 MFLOP: split on the team, whose helper then spins for a while
                o.step()
            return [p.numpy().copy() for p in m.parameters()], _core.team_updates() - before
        finally:
            bg.set_num_threads(prev)

    (one_on, n1), (one_off, _) = deferral(lambda: run(1))
    assert n1 == 0
    _same_bits(one_on, one_off)
    for _ in range(5):  # the team path needs the helper awake when step() runs: retry a few times
        (two_on, n_on), (two_off, _) = deferral(lambda: run(2))
        if n_on:
            break
    assert n_on > 0, "no update with deferred gradients ran on the team at 2 threads"
    _same_bits(two_on, one_on)
    _same_bits(two_off, one_on)
