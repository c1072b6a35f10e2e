"""Graph transforms: trace, grad, vmap, replicate, and the agreement of the two constructions of
a minibatch (replicated per-example graphs vs one batched graph)."""

import shutil

import numpy as np
import pytest

import batchgrad as bg
from batchgrad.transforms import BATCH_RULES


def xent(logits, label):
    """Cross-entropy of ONE example: logits (C,), integer label (0-d)."""
    z = bg.reshape(logits, (1, -1))
    return bg.Tensor(bg._core.apply("softmax_xent", [z._v, bg.reshape(label, (1,))._v])).sum()


def mlp_loss(p, x, y):
    h = bg.tanh(x @ p["W1"] + p["b1"])
    return xent(h @ p["W2"] + p["b2"], y)


def mlp_params(seed=0, d=6, h=5, c=3):
    r = np.random.default_rng(seed)
    return {"W1": bg.tensor(r.normal(size=(d, h)) * 0.5), "b1": bg.tensor(r.normal(size=h) * 0.1),
            "W2": bg.tensor(r.normal(size=(h, c)) * 0.5), "b2": bg.tensor(r.normal(size=c) * 0.1)}


def data(B=8, d=6, c=3, seed=1):
    r = np.random.default_rng(seed)
    return bg.tensor(r.normal(size=(B, d))), bg.tensor(r.integers(0, c, size=B).astype(np.float32))


def close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def test_trace_prints_calls_and_replays():
    W = bg.randn(3, 4, seed=0)
    f = lambda x: (x @ W).tanh().sum()  # noqa: E731
    x = bg.randn(3, seed=1)
    g = bg.trace(f, x)
    text = str(g)
    assert "matmul" in text and "tanh" in text and "captured" in text and "input[0]" in text
    assert g.op_counts()["matmul"] == 1
    x2 = bg.randn(3, seed=5)
    assert g(x2).item() == pytest.approx(f(x2).item(), rel=1e-6)
    assert g.run(x2).item() == pytest.approx(f(x2).item(), rel=1e-6)


def test_trace_sees_updated_parameters():
    W = bg.ones(2, requires_grad=True)
    g = bg.trace(lambda x: (x * W).sum(), bg.ones(2))
    W._v.assign(bg.full((2,), 3.0)._v)
    assert g.run(bg.ones(2)).item() == 6.0


def test_untraceable_function_raises():
    def f(x):
        if (x.sum() > 0):
            return x * 2
        return x
    with pytest.raises(bg.TracingError, match="not traceable"):
        bg.trace(f, bg.ones(3))
    with pytest.raises(bg.TracingError):
        bg.vmap(lambda x: x * float(x.sum()))(bg.ones((2, 3)))


def test_grad_matches_finite_differences_on_pytree():
    p = mlp_params()
    X, Y = data(1)
    g = bg.grad(mlp_loss)(p, X[0], Y[0])
    assert set(g) == {"W1", "b1", "W2", "b2"}
    eps = 1e-2
    for k in ["W1", "b2"]:
        base = p[k].numpy().astype(np.float64)
        num = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            for s in (1, -1):
                q = dict(p)
                v = base.copy()
                v[idx] += s * eps
                q[k] = bg.tensor(v)
                num[idx] += s * mlp_loss(q, X[0], Y[0]).item() / (2 * eps)
        close(g[k].numpy(), num, rtol=2e-3, atol=2e-4)


def test_value_and_grad_and_argnums():
    f = lambda a, b: (a * b * b).sum()  # noqa: E731
    a, b = bg.tensor([1.0, 2.0]), bg.tensor([3.0, -1.0])
    v, (ga, gb) = bg.value_and_grad(f, argnums=(0, 1))(a, b)
    assert v.item() == pytest.approx(9.0 + 2.0)
    close(ga.numpy(), [9.0, 1.0])
    close(gb.numpy(), [6.0, -4.0])
    with pytest.raises(TypeError, match="scalar"):
        bg.grad(lambda a: a * 2)(a)


def test_grad_of_grad():
    # f = x^3 -> f'' = 6x
    d2 = bg.grad(bg.grad(lambda x: (x ** 3).sum()))
    assert d2(bg.tensor(2.0)).item() == pytest.approx(12.0, rel=1e-5)


def test_vmap_matches_a_loop_and_handles_axes():
    W = bg.randn(3, 4, seed=0)
    f = lambda x, s: ((x @ W) * s).softmax()  # noqa: E731
    X = bg.randn(5, 3, seed=2)
    out = bg.vmap(f, in_axes=(0, None))(X, bg.tensor(2.0))
    ref = np.stack([f(X[i], bg.tensor(2.0)).numpy() for i in range(5)])
    close(out.numpy(), ref)
    # in_axes=1 and out_axes=1
    out = bg.vmap(f, in_axes=(1, None), out_axes=1)(X.T, bg.tensor(2.0))
    close(out.numpy(), ref.T)
    # vmap of vmap
    X3 = bg.randn(2, 5, 3, seed=3)
    out = bg.vmap(bg.vmap(f, in_axes=(0, None)), in_axes=(0, None))(X3, bg.tensor(1.0))
    close(out.numpy(), np.stack([[f(X3[i, j], bg.tensor(1.0)).numpy() for j in range(5)] for i in range(2)]))
    # an output that does not depend on the batch is broadcast
    out = bg.vmap(lambda x: W.sum())(X)
    assert out.shape == (5,)


def test_vmap_turns_matrix_vector_products_into_one_gemm():
    W = bg.randn(3, 4, seed=0)
    f = lambda x: (x @ W).relu().sum()  # noqa: E731
    X = bg.randn(16, 3, seed=2)
    g = bg.trace(lambda X: bg.vmap(f)(X), X, batched_args=(0,))
    mm = [n for n in g.nodes if n["kind"] == "node" and n["op"] == "matmul"]
    assert len(mm) == 1 and mm[0]["shape"] == [16, 4]  # (B, 3) @ (3, 4): one GEMM, not 16
    assert all(n["shape"][0] == 16 for n in g.nodes if n["id"] in g.batched_slots() and n["shape"])


def test_vmap_bad_input():
    f = lambda x, y: (x * y).sum()  # noqa: E731
    with pytest.raises(ValueError, match="in_axes has 3 entries"):
        bg.vmap(f, in_axes=(0, 0, 0))(bg.ones((2, 3)), bg.ones((2, 3)))
    with pytest.raises(ValueError, match="different sizes"):
        bg.vmap(f)(bg.ones((2, 3)), bg.ones((4, 3)))
    with pytest.raises(ValueError, match="no argument is batched"):
        bg.vmap(f, in_axes=None)(bg.ones(3), bg.ones(3))
    with pytest.raises(ValueError, match="in_axes=2"):
        bg.vmap(f, in_axes=(2, 0))(bg.ones((2, 3)), bg.ones((2, 3)))


def _tree_np(t):
    return {k: v.numpy().astype(np.float64) for k, v in t.items()}


@pytest.mark.parametrize("B", [1, 4, 9])
def test_three_constructions_of_a_minibatch_agree_on_an_mlp(B):
    p = mlp_params()
    X, Y = data(B)
    # per-example gradients in one batched pass
    pe = bg.vmap(bg.grad(mlp_loss), in_axes=(None, 0, 0))(p, X, Y)
    assert pe["W1"].shape == (B, 6, 5)
    loop = [_tree_np(bg.grad(mlp_loss)(p, X[i], Y[i])) for i in range(B)]
    for k in p:
        close(pe[k].numpy(), np.stack([l[k] for l in loop]), rtol=1e-5, atol=1e-6)
    summed = {k: pe[k].numpy().astype(np.float64).sum(0) for k in p}
    # (a) replicated graph: B copies + a sum node
    g_rep = _tree_np(bg.grad(bg.replicate(mlp_loss, B, in_axes=(None, 0, 0)))(p, X, Y))
    # (b) batched graph: vmap of the per-example loss, then a sum
    g_bat = _tree_np(bg.grad(lambda p, X, Y: bg.vmap(mlp_loss, in_axes=(None, 0, 0))(p, X, Y).sum())(p, X, Y))
    # (c) the same model written with an explicit batch dimension
    def batch_loss(p, X, Y):
        h = bg.tanh(X @ p["W1"] + p["b1"])
        return bg.Tensor(bg._core.apply("softmax_xent", [(h @ p["W2"] + p["b2"])._v, Y._v])).sum()
    g_exp = _tree_np(bg.grad(batch_loss)(p, X, Y))
    for k in p:
        for other in (g_rep, g_bat, g_exp):
            close(other[k], summed[k], rtol=1e-5, atol=1e-6)
    # mean instead of sum only rescales by B
    g_mean = _tree_np(bg.grad(bg.replicate(mlp_loss, B, in_axes=(None, 0, 0), reduction="mean"))(p, X, Y))
    for k in p:
        close(g_mean[k] * B, summed[k], rtol=1e-5, atol=1e-6)


def test_seed_regression_example():
    """The 1-parameter regression of the seeds: L(w) = sum_n (y_n - x_n w)^2."""
    x = bg.tensor([2.0, 4.0, -1.0, 5.0])
    y = bg.tensor([4.0, 9.0, -2.0, 15.0])
    loss = lambda w, xn, yn: (yn - xn * w) ** 2  # noqa: E731
    w = bg.tensor(1.5)
    per_ex = bg.vmap(bg.grad(loss), in_axes=(None, 0, 0))(w, x, y).numpy()
    expect = -2 * x.numpy() * (y.numpy() - x.numpy() * 1.5)
    close(per_ex, expect)
    full = bg.grad(bg.replicate(loss, 4, in_axes=(None, 0, 0)))(w, x, y).item()
    batched = bg.grad(lambda w, x, y: bg.vmap(loss, in_axes=(None, 0, 0))(w, x, y).sum())(w, x, y).item()
    assert full == pytest.approx(per_ex.sum(), rel=1e-6) and batched == pytest.approx(per_ex.sum(), rel=1e-6)
    # minibatches B1 = {1, 2}, B2 = {3, 4}: their gradients add up to the full one
    b1 = bg.grad(bg.replicate(loss, 2, in_axes=(None, 0, 0)))(w, x[:2], y[:2]).item()
    b2 = bg.grad(bg.replicate(loss, 2, in_axes=(None, 0, 0)))(w, x[2:], y[2:]).item()
    assert b1 + b2 == pytest.approx(full, rel=1e-6)


def test_every_registry_op_has_a_batching_rule():
    assert set(BATCH_RULES) == {d["name"] for d in bg.op_table()}


BATCH_CASES = {
    "elementwise": (lambda x: bg.where(x > 0, bg.sqrt(bg.abs(x) + 1) * x.sigmoid(), bg.minimum(bg.exp(x), -x).clip(-1, None)), (4, 3)),
    "log/pow/max": (lambda x: bg.log(x * x + 1) ** 1.5 + bg.maximum(x, 0.2) - x.sign() / 3, (4, 3)),
    "reductions": (lambda x: x.sum(axis=0) + x.mean(axis=1).sum() + x.max(axis=(0, 1)) + bg.logsumexp(x, axis=1, keepdims=True).sum(), (4, 3)),
    "0-d reductions": (lambda x: x.sum().mean() + x.max().max(keepdims=True).sum() + bg.logsumexp(x.sum()) * x.mean(axis=0), (4, 3)),
    "softmax": (lambda x: x.softmax(axis=0) * bg.log_softmax(x, axis=-1), (4, 3)),
    "movement": (lambda x: bg.concatenate([x.T, x[1:, ::-1].reshape(3, -1).T], axis=1).broadcast_to((2, 3, 7)).transpose((2, 0, 1)), (4, 3)),
    "stack/take": (lambda x: bg.stack([x[[2, 0, 0]], x[::-1]], axis=1) + bg.take(x, [-1, 1], axis=1).sum(), (3, 2)),
    "matmul": (lambda x: (x @ x.T) @ bg.ones((4, 2)) + (bg.ones((2, 4)) @ x).sum() + (x[0] @ x.T).reshape(4, 1), (4, 3)),
}


@pytest.mark.parametrize("name", list(BATCH_CASES))
def test_batching_rules_match_a_loop_values_and_gradients(name):
    f, shape = BATCH_CASES[name]
    X = bg.tensor(np.random.default_rng(3).normal(size=(5,) + shape))
    out = bg.vmap(f)(X)
    close(out.numpy(), np.stack([f(X[i]).numpy() for i in range(5)]), rtol=1e-5, atol=1e-5)
    # the batched graph is differentiable and per-example gradients agree with a loop
    pe = bg.vmap(bg.grad(lambda x: f(x).sum()))(X)
    close(pe.numpy(), np.stack([bg.grad(lambda x: f(x).sum())(X[i]).numpy() for i in range(5)]), rtol=1e-4, atol=1e-5)


def test_pictures(tmp_path, capsys):
    p = mlp_params(d=3, h=2, c=2)
    X, Y = data(2, d=3, c=2)
    g = bg.trace(lambda p, X, Y: bg.vmap(mlp_loss, in_axes=(None, 0, 0))(p, X, Y).sum(), p, X, Y, batched_args=(1, 2))
    dot = g.to_dot("batched")
    assert "matmul" in dot and "B=2" in dot and "digraph" in dot
    path = str(tmp_path / "g.svg")
    text = bg.render_minibatch_graphs(mlp_loss, p, X, Y, path, B=2)
    assert "(2) replicated, B=2" in text and "(3) batched, B=2" in text
    if shutil.which("dot"):
        assert (tmp_path / "g.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    else:
        assert (tmp_path / "g.svg.dot").exists() and "not installed" in capsys.readouterr().out


def test_vmap_of_a_loss_with_mean_reduction_over_one_example():
    p = mlp_params()
    X, Y = data(6)

    def loss(p, x, y):
        return bg.nn.functional.cross_entropy(bg.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"], y)

    per = bg.vmap(loss, in_axes=(None, 0, 0))(p, X, Y).numpy()
    np.testing.assert_allclose(per, [loss(p, X[i], Y[i]).item() for i in range(6)], rtol=1e-5)
    assert bg.replicate(loss, 6, in_axes=(None, 0, 0))(p, X, Y).item() == pytest.approx(per.sum(), rel=1e-5)


def test_zero_d_arguments_keep_their_shape():
    assert bg.grad(lambda w: (w * w).sum())(bg.tensor(3.0)).shape == ()
    g = bg.trace(lambda w: w * 2, bg.tensor(1.0))
    assert g.nodes[0]["shape"] == []


def test_transform_outputs_are_freed_without_the_garbage_collector():
    import gc
    import weakref
    p = mlp_params()
    X, Y = data(4)
    gc.disable()
    try:
        out = bg.vmap(bg.grad(mlp_loss), in_axes=(None, 0, 0))(p, X, Y)
        ref = weakref.ref(out["W1"])
        del out
        assert ref() is None  # no reference cycle keeps large per-example buffers alive
    finally:
        gc.enable()


def test_vmap_fast_path_replays_one_program_and_matches_the_interpreter():
    W = bg.randn(3, 4, seed=0)
    f = lambda x: (x @ W).tanh().sum()  # noqa: E731
    X = bg.randn(6, 3, seed=1)
    fast = bg.vmap(f)
    a, b = fast(X), fast(X)  # second call replays the cached batched program
    slow = bg.vmap(f, cache=False)(X)
    np.testing.assert_array_equal(a.numpy(), slow.numpy())
    np.testing.assert_array_equal(b.numpy(), slow.numpy())
    # with an input that requires grad the result stays on the tape
    Xg = bg.randn(6, 3, seed=1, requires_grad=True)
    fast(Xg).sum().backward()
    assert Xg.grad is not None and Xg.grad.shape == (6, 3)
