"""The tape: gradient accumulation, graph lifetime, no_grad, long chains, a two-layer network
against a hand-written numpy backward and against PyTorch, error types and messages, and the
flat program export."""

from __future__ import annotations

import gc
import re

import numpy as np
import pytest

import batchgrad as bg

F32 = np.float32


def shape_re(shape: tuple[int, ...]) -> str:
    """A shape as the message may print it: (2, 3) or [2, 3]."""
    inner = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    return r"[\(\[]" + re.escape(inner).replace(",", ",?") + r"[\)\]]"


def assert_names(msg: str, op: str, *shapes: tuple[int, ...]) -> None:
    assert op in msg, f"message does not name the op '{op}': {msg}"
    for s in shapes:
        assert re.search(shape_re(s), msg), f"message does not name the shape {s}: {msg}"


# ---- accumulation and graph lifetime -------------------------------------------------------------------
def test_gradients_accumulate_across_backward_calls():
    x = bg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 7.0, 9.0])


def test_zero_grad_and_grad_setter():
    x = bg.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    x.zero_grad()
    assert x.grad is None
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])
    x.grad = None
    assert x.grad is None
    x.grad = bg.tensor([0.5, 0.5])
    (x * 1.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.5, 1.5])
    with pytest.raises(ValueError, match="shape"):
        x.grad = bg.ones(3)


def test_retain_graph_allows_a_second_backward():
    x = bg.tensor([1.0, -2.0], requires_grad=True)
    y = (x.tanh() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first, rtol=1e-6)


def test_second_backward_without_retain_graph_raises():
    x = bg.tensor([1.0, -2.0], requires_grad=True)
    y = (x.exp() * 2.0).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time") as e:
        y.backward()
    assert "retain_graph" in str(e.value)
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.exp([1.0, -2.0]), rtol=1e-6)  # untouched by the failed call


def test_backward_frees_only_the_graph_it_used():
    x = bg.tensor([1.0, 2.0], requires_grad=True)
    shared = x * 2.0
    a, b = (shared * 3.0).sum(), (shared + 1.0).sum()
    a.backward()
    with pytest.raises(RuntimeError):
        b.backward()  # the shared node was freed with a's graph, as in PyTorch


def test_no_grad_records_nothing():
    x = bg.tensor([1.0, 2.0], requires_grad=True)
    with bg.no_grad():
        assert not bg.is_grad_enabled()
        y = (x * x).exp().sum()
        with bg.enable_grad():
            z = (x * 2.0).sum()
    assert bg.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None and y.is_leaf
    assert z.requires_grad and z.grad_fn == "sum"
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()

    @bg.no_grad()
    def f(t):
        return t * t

    assert not f(x).requires_grad and bg.is_grad_enabled()


def test_no_grad_restores_state_after_an_exception():
    with pytest.raises(ValueError):
        with bg.no_grad():
            bg.ones(2) + bg.ones(3)
    assert bg.is_grad_enabled()


def test_fan_out_sums_gradients():
    x = bg.tensor([0.5, -1.5], requires_grad=True)
    y = x * x + x.exp() + x  # x used by four ops
    y.sum().backward()
    xv = np.array([0.5, -1.5])
    np.testing.assert_allclose(x.grad.numpy(), 2 * xv + np.exp(xv) + 1, rtol=1e-6)
    w = bg.tensor(3.0, requires_grad=True)
    (w * w * w).backward()
    assert abs(w.grad.item() - 27.0) < 1e-5


def test_non_scalar_backward_takes_a_gradient():
    x = bg.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    y = x * x
    y.backward(bg.tensor([[1.0, 0.0], [0.5, 2.0]]))
    np.testing.assert_array_equal(x.grad.numpy(), [[2.0, 0.0], [3.0, 16.0]])
    z = x * 3.0
    z.backward(np.ones((2, 2)))  # array-like gradient
    np.testing.assert_array_equal(x.grad.numpy(), [[5.0, 3.0], [6.0, 19.0]])


def test_non_scalar_backward_without_gradient_raises():
    x = bg.tensor([[1.0, 2.0]], requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar") as e:
        (x * 2.0).backward()
    assert re.search(shape_re((1, 2)), str(e.value))
    with pytest.raises(ValueError) as e:
        (x * 2.0).backward(bg.ones(3))
    assert re.search(shape_re((3,)), str(e.value)) and re.search(shape_re((1, 2)), str(e.value))
    (x * 2.0).sum(keepdims=True).backward()  # one element: fine, like torch
    np.testing.assert_array_equal(x.grad.numpy(), [[2.0, 2.0]])


def test_backward_on_a_constant_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        bg.ones(2).sum().backward()


def test_requires_grad_leaf_rules():
    x = bg.tensor([1.0, 2.0])
    assert not x.requires_grad and x.is_leaf and x.grad_fn is None
    x.requires_grad = True
    y = x * 2.0
    assert y.requires_grad and not y.is_leaf and y.grad_fn == "mul"
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad = False
    d = y.detach()
    assert not d.requires_grad and d.is_leaf
    np.testing.assert_array_equal(d.numpy(), [2.0, 4.0])
    (y * d).sum().backward()  # d is a constant: gradient only through y
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 8.0])
    assert y.grad is None  # intermediate results keep no .grad
    assert x.requires_grad_(False) is x and not x.requires_grad


def test_only_inputs_that_require_grad_get_gradients():
    a = bg.tensor([1.0, 2.0], requires_grad=True)
    b = bg.tensor([3.0, 4.0])
    (a * b).sum().backward()
    assert b.grad is None
    np.testing.assert_array_equal(a.grad.numpy(), [3.0, 4.0])


def test_functional_grad_leaves_dot_grad_alone():
    x = bg.tensor([1.0, 2.0], requires_grad=True)
    (g,) = bg._core.grad([(x * x).sum()._v], [None], [x._v], False, False)
    np.testing.assert_array_equal(g.numpy(), [2.0, 4.0])
    assert x.grad is None


def test_ten_thousand_op_chain():
    x = bg.tensor([1.0, -0.5], requires_grad=True)
    y = x
    for i in range(10_000):
        y = y * 1.0001 if i % 2 else y + 0.001
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0001 ** 5000] * 2, rtol=1e-3)
    del y
    gc.collect()


def test_dropping_a_long_graph_does_not_recurse():
    x = bg.tensor([1.0], requires_grad=True)
    y = x
    for _ in range(50_000):
        y = y + 1.0
    del y  # a recursive drop would overflow the stack here
    gc.collect()
    assert x.grad is None


# ---- a two-layer network against a hand-written backward and against PyTorch ---------------------------
def mlp_data(rng):
    x = rng.standard_normal((8, 5)).astype(F32)
    params = {
        "W1": (rng.standard_normal((5, 16)) * 0.5).astype(F32),
        "b1": (rng.standard_normal(16) * 0.1).astype(F32),
        "W2": (rng.standard_normal((16, 3)) * 0.5).astype(F32),
        "b2": (rng.standard_normal(3) * 0.1).astype(F32),
    }
    y = rng.standard_normal((8, 3)).astype(F32)
    return x, params, y


def mlp_bg(x, params, y):
    p = {k: bg.tensor(v, requires_grad=True) for k, v in params.items()}
    xt = bg.tensor(x, requires_grad=True)
    h = bg.tanh(xt @ p["W1"] + p["b1"])
    out = h @ p["W2"] + p["b2"]
    loss = ((out - bg.tensor(y)) ** 2).mean()
    loss.backward()
    return loss.item(), {k: t.grad.numpy() for k, t in p.items()} | {"x": xt.grad.numpy()}


def mlp_numpy(x, params, y):
    """Forward and backward by hand, in float64."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    W1, b1, W2, b2 = (params[k].astype(np.float64) for k in ("W1", "b1", "W2", "b2"))
    h = np.tanh(x @ W1 + b1)
    out = h @ W2 + b2
    loss = np.mean((out - y) ** 2)
    d_out = 2 * (out - y) / out.size
    d_h = d_out @ W2.T
    d_z = d_h * (1 - h ** 2)
    grads = {"W2": h.T @ d_out, "b2": d_out.sum(0), "W1": x.T @ d_z, "b1": d_z.sum(0), "x": d_z @ W1.T}
    return loss, grads


def test_two_layer_network_matches_hand_written_backward(rng):
    x, params, y = mlp_data(rng)
    loss, grads = mlp_bg(x, params, y)
    ref_loss, ref = mlp_numpy(x, params, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for k in ref:
        assert grads[k].shape == ref[k].shape
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_two_layer_network_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, params, y = mlp_data(rng)
    loss, grads = mlp_bg(x, params, y)
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = torch.tanh(tx @ tp["W1"] + tp["b1"]) @ tp["W2"] + tp["b2"]
    tl = ((out - torch.tensor(y, dtype=torch.float64)) ** 2).mean()
    tl.backward()
    np.testing.assert_allclose(loss, tl.item(), rtol=1e-5)
    for k, t in list(tp.items()) + [("x", tx)]:
        np.testing.assert_allclose(grads[k], t.grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def test_classifier_with_cross_entropy_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, params, _ = mlp_data(rng)
    labels = rng.integers(0, 3, 8)
    p = {k: bg.tensor(v, requires_grad=True) for k, v in params.items()}
    logits = bg.relu(bg.tensor(x) @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
    loss = bg.Tensor(bg._core.apply("softmax_xent", [logits._v, bg.tensor(labels)._v])).mean()
    loss.backward()
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    tlogits = torch.relu(torch.tensor(x, dtype=torch.float64) @ tp["W1"] + tp["b1"]) @ tp["W2"] + tp["b2"]
    tl = torch.nn.functional.cross_entropy(tlogits, torch.tensor(labels))
    tl.backward()
    np.testing.assert_allclose(loss.item(), tl.item(), rtol=1e-5)
    for k in tp:
        np.testing.assert_allclose(p[k].grad.numpy(), tp[k].grad.numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def test_ops_match_torch_on_one_graph(rng):
    """softmax, log_softmax, logsumexp, max, slicing, take, concatenate, where, clip, sigmoid in one loss."""
    torch = pytest.importorskip("torch")
    a = rng.standard_normal((4, 6)).astype(F32)
    t = bg.tensor(a, requires_grad=True)
    idx = [3, -1, 0, 3]
    y = (bg.softmax(t[:, ::-2], axis=0) * 2.0).sum() + bg.log_softmax(t).max(axis=1).sum()
    y = y + bg.logsumexp(bg.concatenate([t, t[1:3]], axis=0), axis=(0, 1)) + bg.take(t, idx, axis=1).sigmoid().sum()
    y = y + bg.where(t > 0, t.clip(-0.5, 0.5), t * t).mean()
    y.backward()
    u = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    z = (torch.softmax(u.flip(1)[:, ::2], dim=0) * 2.0).sum() + torch.log_softmax(u, 1).max(dim=1).values.sum()
    z = z + torch.logsumexp(torch.cat([u, u[1:3]], 0), dim=(0, 1)) + u[:, [3, 5, 0, 3]].sigmoid().sum()
    z = z + torch.where(u > 0, u.clip(-0.5, 0.5), u * u).mean()
    z.backward()
    np.testing.assert_allclose(y.item(), z.item(), rtol=1e-5)
    np.testing.assert_allclose(t.grad.numpy(), u.grad.numpy(), rtol=1e-5, atol=1e-6)


# ---- errors: type, message and no abort ---------------------------------------------------------------
@pytest.mark.parametrize(
    "op, f, shapes",
    [
        ("add", lambda: bg.ones(2, 3) + bg.ones(4, 3), [(2, 3), (4, 3)]),
        ("sub", lambda: bg.ones(3) - bg.ones(4), [(3,), (4,)]),
        ("mul", lambda: bg.ones(2, 3) * bg.ones(2, 2), [(2, 3), (2, 2)]),
        ("maximum", lambda: bg.maximum(bg.ones(2, 5), bg.ones(3, 1)), [(2, 5), (3, 1)]),
        ("where", lambda: bg.where(bg.ones(2, 3) > 0, bg.ones(4), 1.0), [(2, 3), (4,)]),
        ("matmul", lambda: bg.ones(2, 3) @ bg.ones(4, 5), [(2, 3), (4, 5)]),
        ("matmul", lambda: bg.ones(2, 3, 4) @ bg.ones(3, 4, 2), [(2, 3, 4), (3, 4, 2)]),
        ("concatenate", lambda: bg.concatenate([bg.ones(2, 3), bg.ones(2, 4)], axis=0), [(2, 3), (2, 4)]),
        ("concatenate", lambda: bg.concatenate([bg.ones(2, 3), bg.ones(3)], axis=0), [(2, 3), (3,)]),
        ("stack", lambda: bg.stack([bg.ones(2, 3), bg.ones(3, 2)]), [(2, 3), (3, 2)]),
        ("reshape", lambda: bg.ones(2, 3).reshape(4, 2), [(2, 3), (4, 2)]),
        ("reshape", lambda: bg.ones(2, 3).reshape(-1, 4), [(2, 3), (-1, 4)]),
        ("broadcast_to", lambda: bg.broadcast_to(bg.ones(2, 3), (4, 3)), [(2, 3), (4, 3)]),
        ("cross_entropy", lambda: bg._core.apply("softmax_xent", [bg.ones(3, 4)._v, bg.zeros(2)._v]), [(3, 4), (2,)]),
    ],
)
def test_shape_mismatch_raises_value_error_naming_op_and_shapes(op, f, shapes):
    with pytest.raises(ValueError) as e:
        f()
    assert_names(str(e.value), op, *shapes)


def test_shape_errors_under_backward_name_the_shapes():
    x = bg.ones(2, 3, requires_grad=True)
    with pytest.raises(ValueError) as e:
        (x * 2.0).backward(bg.ones(3, 2))
    assert_names(str(e.value), "backward", (3, 2), (2, 3))


@pytest.mark.parametrize(
    "f",
    [
        lambda: bg.tensor("abc"),
        lambda: bg.ones(2) + "a",
        lambda: "a" * bg.ones(2),
        lambda: bg.tensor(np.array([object()])),
        lambda: bg.ones(2) @ "x",
        lambda: bg.maximum(bg.ones(2), None),
        lambda: bg.where(bg.ones(2) > 0, "a", 1.0),
        lambda: bg.tensor([1.0]) < "b",
        lambda: bg.Tensor(np.ones(2)),
        lambda: bg._core.apply("sum", [bg.ones(2)._v], {"axes": "x"}),
        lambda: bg._core.apply("reshape", [bg.ones(2)._v]),
    ],
)
def test_wrong_types_raise_type_error(f):
    with pytest.raises(TypeError):
        f()


def test_unknown_op_is_a_value_error():
    with pytest.raises(ValueError, match="unknown op 'frobnicate'"):
        bg._core.apply("frobnicate", [bg.ones(2)._v])


@pytest.mark.parametrize(
    "f, shape",
    [
        (lambda: bg.zeros(10**7, 10**7), (10**7, 10**7)),
        (lambda: bg.ones(10**6, 10**6, requires_grad=True), (10**6, 10**6)),
        (lambda: bg.full((10**7, 10**7), 2.0), (10**7, 10**7)),
        (lambda: bg.randn(10**7, 10**7, seed=0), (10**7, 10**7)),
        (lambda: bg.zeros(2**62, 2**62), None),  # the element count overflows
    ],
)
def test_huge_allocations_raise_memory_error(f, shape):
    with pytest.raises(MemoryError) as e:
        f()
    if shape is not None:
        assert re.search(shape_re(shape), str(e.value)), str(e.value)


@pytest.mark.parametrize(
    "op, f, shapes",
    [
        ("broadcast_to", lambda: bg.broadcast_to(bg.ones(1), (10**6, 10**6)), [(1,), (10**6, 10**6)]),
        ("matmul", lambda: bg.ones(10**6, 1) @ bg.ones(1, 10**6), [(10**6, 1), (1, 10**6)]),
        ("add", lambda: bg.ones(10**6, 1) + bg.ones(1, 10**6), [(10**6, 1), (1, 10**6)]),
        ("take", lambda: bg.take(bg.ones(1, 10**6), [0] * 10**6, axis=0), [(1, 10**6)]),
    ],
)
def test_huge_results_inside_ops_raise_memory_error(op, f, shapes):
    with pytest.raises(MemoryError, match="allocate") as e:
        f()
    assert_names(str(e.value), op, *shapes)


def test_memory_error_leaves_the_library_usable():
    with pytest.raises(MemoryError):
        bg.ones(10**6, 1) * bg.ones(1, 10**6)
    np.testing.assert_array_equal((bg.ones(2) * 3.0).numpy(), [3.0, 3.0])


@pytest.mark.parametrize(
    "f",
    [
        lambda: bg.ones(3, 4)[3],
        lambda: bg.ones(3, 4)[-4],
        lambda: bg.ones(3, 4)[0, 4],
        lambda: bg.ones(3, 4)[:, [0, 4]],
        lambda: bg.ones(3, 4)[[-4]],
        lambda: bg.ones(3, 4)[0, 0, 0],
        lambda: bg.take(bg.ones(3, 4), [3]),
        lambda: bg._core.apply("take", [bg.ones(3)._v], {"idx": [5], "axis": 0}),
        lambda: bg._core.apply("slice", [bg.ones(3)._v], {"start": [1], "step": [1], "len": [3]}),
    ],
)
def test_out_of_range_index_raises_index_error(f):
    with pytest.raises(IndexError, match="out of bounds|too many"):
        f()


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [0.5, 1], [np.nan, 0]])
def test_cross_entropy_labels_out_of_range_raise_value_error(labels):
    z = bg.ones(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="label") as e:
        bg._core.apply("softmax_xent", [z._v, bg.tensor(labels)._v])
    assert "3 classes" in str(e.value)


def test_axis_errors_are_value_errors():
    for f in (lambda: bg.ones(2).sum(axis=1), lambda: bg.softmax(bg.ones(2, 2), axis=-3), lambda: bg.stack([bg.ones(2)], axis=2),
              lambda: bg.concatenate([bg.ones(2)], axis=1), lambda: bg.take(bg.ones(2), [0], axis=1)):
        with pytest.raises(ValueError, match="axis"):
            f()


# ---- program export ------------------------------------------------------------------------------------
def test_program_export_replays_the_forward(rng):
    x0 = rng.standard_normal((4, 3)).astype(F32)
    W = bg.tensor(rng.standard_normal((3, 2)).astype(F32), requires_grad=True)
    x = bg.tensor(x0, requires_grad=True)
    loss = ((bg.tanh(x @ W) - 0.5) ** 2).mean()
    prog = bg._core.Program.from_graph([x._v], [loss._v])
    nodes = prog.nodes()
    names = {d["name"] for d in bg.op_table()}
    ops = [n["op"] for n in nodes if n["kind"] == "node"]
    assert set(ops) <= names and {"matmul", "tanh", "sub", "pow_scalar", "mean"} <= set(ops)
    assert [n["kind"] for n in nodes].count("input") == 1 and nodes[0]["kind"] == "input"
    assert any(n["kind"] == "captured" and n["shape"] == [3, 2] for n in nodes)
    for n in nodes:  # arguments come before their readers: a topological order
        assert all(a < n["id"] for a in n.get("args", []))
    (out,) = prog.run([x._v])
    assert out.numpy() == pytest.approx(loss.item(), rel=1e-6)
    assert prog.outputs == [len(nodes) - 1]

    x1 = rng.standard_normal((4, 3)).astype(F32)  # a new input
    (out1,) = prog.run([bg.tensor(x1)._v])
    ref = np.mean((np.tanh(x1.astype(np.float64) @ W.numpy()) - 0.5) ** 2)
    assert out1.numpy() == pytest.approx(ref, rel=1e-5)

    W._v.assign(bg.tensor(np.zeros((3, 2), F32))._v)  # captured values are read at replay time
    (out2,) = prog.run([x._v])
    assert out2.numpy() == pytest.approx(0.25, rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        prog.run([bg.ones(5, 3)._v])
    with pytest.raises(ValueError, match="inputs"):
        prog.run([])


def test_program_round_trips_through_nodes(rng):
    x = bg.tensor(rng.standard_normal((2, 3)).astype(F32), requires_grad=True)
    y = bg.softmax(x[:, ::-1], axis=-1).sum(axis=0)
    prog = bg._core.Program.from_graph([x._v], [y._v])
    again = bg._core.Program.from_nodes(prog.nodes(), prog.outputs)
    np.testing.assert_array_equal(again.run([x._v])[0].numpy(), y.numpy())


# ---- threads ---------------------------------------------------------------------------------------------
def test_no_grad_is_per_thread():
    import threading

    entered, release, seen = threading.Event(), threading.Event(), {}

    def other():
        with bg.no_grad():
            entered.set()
            release.wait(5)
            seen["other"] = bg.is_grad_enabled()

    th = threading.Thread(target=other)
    th.start()
    entered.wait(5)
    y = bg.ones(2, requires_grad=True) * 2.0  # this thread still records
    release.set()
    th.join()
    assert y.requires_grad and seen["other"] is False and bg.is_grad_enabled()


def test_concurrent_backward_in_threads(rng):
    import threading

    a = rng.standard_normal((64, 64)).astype(F32) * 0.1

    def run(out, i):
        x = bg.tensor(a * (i + 1), requires_grad=True)
        for _ in range(10):
            (x @ x).tanh().sum().backward()
        out[i] = x.grad.numpy().copy()

    par, seq = {}, {}
    ts = [threading.Thread(target=run, args=(par, i)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    for i in range(4):
        run(seq, i)
        np.testing.assert_array_equal(par[i], seq[i])


def test_program_rejects_placeholders_that_are_not_on_the_tape():
    """Ops on an input that does not require grad are not recorded, so a program would replay their
    trace-time values: from_graph refuses such a placeholder instead of silently baking it in."""
    x, m = bg.tensor([1.0, -1.0], requires_grad=True), bg.tensor([1.0, 0.0])
    y = bg.where(m, x, 0.0).sum()
    with pytest.raises(ValueError, match="input 1 .*requires_grad=True"):
        bg._core.Program.from_graph([x._v, m._v], [y._v])


@pytest.mark.parametrize(
    "f",
    [
        lambda z, y: bg.logsumexp(z, axis=1),
        lambda z, y: bg.logsumexp(z, axis=(0, 1)),
        lambda z, y: bg.softmax(z, axis=0),
        lambda z, y: bg.log_softmax(z),
        lambda z, y: bg.Tensor(bg._core.apply("softmax_xent", [z._v, y._v])),
    ],
    ids=["logsumexp", "logsumexp_all", "softmax", "log_softmax", "softmax_xent"],
)
def test_replayed_gradients_follow_the_new_inputs_at_any_scale(f, rng):
    """A backward rule must take every input-dependent value from the graph (a value computed at
    trace time, e.g. a detached shift, would overflow when the replayed inputs are 1000x larger)."""
    z0 = rng.standard_normal((4, 5)).astype(F32)
    y0 = rng.integers(0, 5, 4).astype(F32)
    z, y = bg.tensor(z0, requires_grad=True), bg.tensor(y0, requires_grad=True)
    G = bg.tensor(rng.standard_normal(f(z, y).shape).astype(F32))
    out = f(z, y)
    (gz,) = bg._core.grad([(out * G).sum()._v], [None], [z._v], True, True)
    prog = bg._core.Program.from_graph([z._v, y._v], [out._v, gz])
    z1 = z0 * 1000.0
    r_out, r_g = prog.run([bg.tensor(z1)._v, bg.tensor(y0)._v])
    u = bg.tensor(z1, requires_grad=True)
    e = f(u, bg.tensor(y0))
    (e * G).sum().backward()
    assert np.isfinite(r_g.numpy()).all()
    np.testing.assert_allclose(r_out.numpy(), e.numpy(), rtol=1e-6)
    np.testing.assert_allclose(r_g.numpy(), u.grad.numpy(), rtol=1e-5, atol=1e-6)
