"""compile_step replays forward + backward + the optimizer update in one call: same updates as the eager step."""
import numpy as np
import pytest

import batchgrad as bg
from batchgrad import nn, optim

F = nn.functional


def _setup(opt_cls=optim.SGD, **kw):
    m = nn.MLP([20, 16, 16, 5], seed=0)
    return m, opt_cls(m.parameters(), **kw)


def _batches(n=4, B=8, seed=1):
    r = np.random.default_rng(seed)
    return [(bg.tensor(r.normal(size=(B, 20))), r.integers(0, 5, B)) for _ in range(n)]


OPTIMIZERS = [
    (optim.SGD, {"lr": 0.1}),
    (optim.SGD, {"lr": 0.1, "maximize": True}),
    (optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    (optim.SGD, {"lr": 0.1, "weight_decay": 1e-2}),
    (optim.Adam, {"lr": 1e-2}),
    (optim.Adam, {"lr": 1e-2, "amsgrad": True, "weight_decay": 1e-3}),
    (optim.AdamW, {"lr": 1e-2}),
    (optim.RMSprop, {"lr": 1e-2, "momentum": 0.5, "centered": True}),
    (optim.Adagrad, {"lr": 1e-1, "lr_decay": 1e-2}),
]


@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("opt_cls,kw", OPTIMIZERS, ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_compiled_step_equals_eager_step(opt_cls, kw, B):
    m1, o1 = _setup(opt_cls, **kw)
    m2, o2 = _setup(opt_cls, **kw)
    batches = _batches(B=B)
    step = bg.compile_step(m2, F.cross_entropy, o2, batches[0])
    for X, y in batches:
        o1.zero_grad()
        l1 = F.cross_entropy(m1(X), y)
        l1.backward()
        o1.step()
        l2 = step(X, y)
        assert l2 == pytest.approx(l1.item(), rel=1e-6, abs=1e-7)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=k)
    # the optimizer's own state (step counts, buffers) advanced exactly as the eager one's
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        for name in s1[i]:
            np.testing.assert_allclose(s1[i][name], s2[i][name], rtol=1e-6, atol=1e-7, err_msg=f"{i}.{name}")


def test_plain_sgd_writes_weight_gradients_into_the_weights():
    """Plain SGD fuses each Linear weight's gradient matmul into its update (no gradient buffer);
    biases (a sum, not a matmul) and any optimizer with state go the unfused way."""
    m, o = _setup(optim.SGD, lr=0.1)
    X, y = _batches(1)[0]
    step = bg.compile_step(m, F.cross_entropy, o, (X, y))
    names = [n for n, _ in m.named_parameters()]
    fused = step.fused(X, y)
    assert fused == [n.endswith("weight") for n in names], list(zip(names, fused))
    o.param_groups[0]["momentum"] = 0.9
    assert not any(step.fused(X, y))


def test_param_groups_with_different_rules_and_a_scheduler():
    def run(compiled):
        m = nn.MLP([20, 16, 16, 5], seed=0)
        o = optim.SGD([{"params": m[0].parameters(), "lr": 0.2},
                       {"params": m[2].parameters(), "momentum": 0.9},
                       {"params": m[4].parameters(), "weight_decay": 0.1}], lr=0.1)
        sched = optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)
        step = bg.compile_step(m, F.cross_entropy, o) if compiled else None
        losses = []
        for X, y in _batches(6):
            if compiled:
                losses.append(step(X, y))
            else:
                o.zero_grad()
                loss = F.cross_entropy(m(X), y)
                loss.backward()
                o.step()
                losses.append(loss.item())
            sched.step()
        return losses, m.state_dict()

    (l1, s1), (l2, s2) = run(False), run(True)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for k in s1:
        np.testing.assert_allclose(s1[k], s2[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("kw", [{"lr": 0.1}, {"lr": 1e-2, "momentum": 0.9}])
def test_steady_state_steps_allocate_no_tensor_storage(kw):
    m, o = _setup(optim.SGD, **kw)
    X, y = _batches(1, B=16)[0]
    y = bg.tensor(y.astype(np.float32))  # numpy labels would be converted (allocated) per call, outside the step
    step = bg.compile_step(m, F.cross_entropy, o, (X, y))
    step(X, y)  # the first call fills the step's arena
    before = bg._core.fresh_allocations()
    for _ in range(20):
        step(X, y)
    assert bg._core.fresh_allocations() == before


@pytest.mark.parametrize("batch", [32, 512, 2048])  # the kernels split C by rows / columns / the crate's threads
def test_compiled_steps_are_deterministic_and_thread_count_independent(batch):
    def run(threads):
        prev = bg.get_num_threads()
        bg.set_num_threads(threads)
        try:
            m = nn.MLP([784, 256, 256, 10], seed=3)
            o = optim.SGD(m.parameters(), lr=0.05)
            r = np.random.default_rng(0)
            X, y = bg.tensor(r.normal(size=(batch, 784))), r.integers(0, 10, batch)
            step = bg.compile_step(m, F.cross_entropy, o)
            losses = [step(X, y) for _ in range(3)]
            return losses, m.state_dict()
        finally:
            bg.set_num_threads(prev)

    (l1, s1), (l1b, s1b), (l2, s2) = run(1), run(1), run(2)
    assert l1 == l1b == l2
    for k in s1:
        assert np.array_equal(s1[k], s1b[k]) and np.array_equal(s1[k], s2[k]), k


def test_one_program_per_batch_shape():
    m, o = _setup(lr=0.1)
    step = bg.compile_step(m, F.cross_entropy, o, _batches(1)[0])
    for X, y in _batches(3):
        step(X, y)
    assert len(step.programs) == 1
    X, y = _batches(1, B=3)[0]
    step(X, y)
    assert len(step.programs) == 2
    ops = {n["op"] for n in step.programs[((8, 20), (8,))].nodes() if n["kind"] == "node"}
    assert {"matmul", "softmax_xent", "softmax_xent_backward"} <= ops  # forward and backward in one program


def test_unknown_device_is_a_value_error_naming_it():
    m, o = _setup(lr=0.1)
    with pytest.raises(ValueError, match="'tpu'"):
        bg.compile_step(m, F.cross_entropy, o, device="tpu")


def test_bad_update_calls_raise_instead_of_crashing():
    m, o = _setup(optim.SGD, lr=0.1)
    X, y = _batches(1)[0]
    step = bg.compile_step(m, F.cross_entropy, o, (X, y))
    ts = step.step_for(X, bg.tensor(np.asarray(y, np.float32)))
    Xv, yv = X._v, bg.tensor(np.asarray(y, np.float32))._v
    w = [p._v for p in m.parameters()]
    adam_scalars = (1e-3, 0.9, 0.999, 1e-8, 0.0, 1, False, False)
    with pytest.raises(ValueError, match="state list"):
        ts.run([Xv, yv], [("adam", [0], [None, None, None], adam_scalars)])
    with pytest.raises(ValueError, match="buffers for 2 parameters"):
        ts.run([Xv, yv], [("adam", [0, 1], [[w[0]], [w[0]], None], adam_scalars)])
    with pytest.raises(ValueError, match="out of range or updated twice"):
        ts.run([Xv, yv], [("sgd", [0, 0], [None], (0.1, 0.0, 0.0, False, 0.0, False, False))])
    with pytest.raises(ValueError, match="unknown rule"):
        ts.run([Xv, yv], [("lion", [0], [], (0.1,))])
    with pytest.raises(ValueError, match="scalars"):
        ts.run([Xv, yv], [("sgd", [0], [None], (0.1,))])


# --- split step: grads_into (forward + backward into a flat buffer) then update_from -------------
# (the two halves of `run`, with an MPI all-reduce of the flat gradients in between)


def _split_setup(opt_cls, **kw):
    m = nn.MLP([8, 16, 4], seed=0)
    o = opt_cls(m.parameters(), **kw)
    return m, o, bg.compile_step(m, F.cross_entropy, o)


def _split_batches(n=5, B=6, seed=2):
    r = np.random.default_rng(seed)
    return [(bg.tensor(r.normal(size=(B, 8))), bg.tensor(r.integers(0, 4, B).astype(np.float32))) for _ in range(n)]


def _numel(m):
    return sum(int(np.prod(p.shape)) for p in m.parameters())


def test_grads_into_writes_the_programs_gradients_bitwise():
    m, o, step = _split_setup(optim.SGD, lr=0.1)
    X, y = _split_batches(1)[0]
    ts = step.step_for(X, y)
    outs = ts.program.run([X._v, y._v])
    want = np.concatenate([g.numpy().ravel() for g in outs[1:]])
    flat = np.full(_numel(m), np.nan, np.float32)
    loss = ts.grads_into([X._v, y._v], flat)
    assert want.size == flat.size == _numel(m)
    assert np.array_equal(flat.view(np.uint32), want.view(np.uint32))
    assert np.float32(loss).view(np.uint32) == outs[0].numpy().astype(np.float32).view(np.uint32)
    # parameter order, one contiguous slice each, and no update made
    off = 0
    for p, g in zip(step.params, outs[1:]):
        n = int(np.prod(p.shape))
        assert np.array_equal(flat[off:off + n].reshape(p.shape), g.numpy())
        off += n
    before = [p.numpy().copy() for p in m.parameters()]
    ts.grads_into([X._v, y._v], flat)
    assert all(np.array_equal(a, p.numpy()) for a, p in zip(before, m.parameters()))
    # scale multiplies as it copies: float32 products, as numpy makes them
    for scale in (0.5, 1 / 3):
        ts.grads_into([X._v, y._v], flat, scale)
        assert np.array_equal(flat, want * np.float32(scale))


def test_grads_into_scale_at_batch_one():
    """The weight gradients' products write `scale` x product straight into the buffer: with a
    power of two that is exactly the scaled product; with another scale the GEMM may apply it to
    an operand at batch 1, which may differ in the last bit (documented), never more."""
    m, o, step = _split_setup(optim.SGD, lr=0.1)
    X, y = _split_batches(1, B=1)[0]
    ts = step.step_for(X, y)
    want = np.concatenate([g.numpy().ravel() for g in ts.program.run([X._v, y._v])[1:]])
    flat = np.zeros(_numel(m), np.float32)
    for scale in (0.5, 0.25, 2.0):
        ts.grads_into([X._v, y._v], flat, scale)
        assert np.array_equal(flat, want * np.float32(scale))
    ts.grads_into([X._v, y._v], flat, 1 / 3)
    np.testing.assert_allclose(flat, want * np.float32(1 / 3), rtol=1.2e-7, atol=0)


def test_grads_into_calls_ready_as_each_gradient_is_final():
    """With `ready`, each gradient is in the buffer when ready(i) is called (the backward goes on
    afterwards: the last layer's gradients come first), and the buffer ends up the same bits."""
    m, o, step = _split_setup(optim.SGD, lr=0.1)
    X, y = _split_batches(1)[0]
    ts = step.step_for(X, y)
    n = _numel(m)
    want = np.empty(n, np.float32)
    l0 = ts.grads_into([X._v, y._v], want, 0.5)
    offs = np.cumsum([0] + [int(np.prod(p.shape)) for p in step.params])
    flat = np.full(n, np.nan, np.float32)
    seen = []

    def ready(i):
        # parameter i's slice is final now; the slices of parameters not yet reported are untouched
        assert np.array_equal(flat[offs[i]:offs[i + 1]], want[offs[i]:offs[i + 1]])
        for j in range(len(offs) - 1):
            if j != i and j not in seen:
                assert np.isnan(flat[offs[j]:offs[j + 1]]).all()
        seen.append(i)

    l1 = ts.grads_into([X._v, y._v], flat, 0.5, ready)
    assert sorted(seen) == list(range(len(step.params)))
    assert seen[0] > seen[-1]  # the backward reaches the last layer first
    assert np.float32(l0).view(np.uint32) == np.float32(l1).view(np.uint32)
    assert flat.tobytes() == want.tobytes()

    class Boom(Exception):
        pass

    def bad(i):
        raise Boom(f"no room for {i}")

    with pytest.raises(Boom, match="no room for"):  # the callback's own exception, unchanged
        ts.grads_into([X._v, y._v], flat, 0.5, bad)


@pytest.mark.parametrize("opt_cls,kw", [(optim.SGD, {"lr": 0.1, "momentum": 0.9}), (optim.Adam, {"lr": 1e-2})],
                         ids=["sgd-momentum", "adam"])
def test_grads_into_then_update_from_equals_the_one_call_step_bitwise(opt_cls, kw):
    m1, o1, s1 = _split_setup(opt_cls, **kw)
    m2, o2, s2 = _split_setup(opt_cls, **kw)
    flat = np.empty(_numel(m2), np.float32)
    for X, y in _split_batches(5):
        l1 = s1(X, y)
        ts = s2.step_for(X, y)
        assert not any(s2.fused(X, y))  # never fused: `run` takes the same unfused path
        l2 = ts.grads_into([X._v, y._v], flat)
        ts.update_from(flat, s2._calls())
        assert np.float32(l1).view(np.uint32) == np.float32(l2).view(np.uint32)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), k
    st1, st2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert st1.keys() == st2.keys() and st1
    for i in st1:
        assert st1[i].keys() == st2[i].keys()
        for name in st1[i]:
            a, b = np.asarray(st1[i][name]), np.asarray(st2[i][name])
            assert a.shape == b.shape and np.array_equal(a, b), f"{i}.{name}"
            if a.dtype == np.float32:
                assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), f"{i}.{name}"
    # the update really moved the parameters (not two no-ops agreeing)
    m0 = nn.MLP([8, 16, 4], seed=0)
    assert not np.array_equal(m0.state_dict()["0.weight"], m2.state_dict()["0.weight"])


def test_split_step_flat_buffer_errors():
    m, o, step = _split_setup(optim.SGD, lr=0.1, momentum=0.9)
    X, y = _split_batches(1)[0]
    ts = step.step_for(X, y)
    n = _numel(m)
    ins = [X._v, y._v]
    with pytest.raises(ValueError, match=rf"\b{n - 1}\b.*\b{n}\b"):
        ts.grads_into(ins, np.zeros(n - 1, np.float32))
    with pytest.raises(ValueError, match=rf"\b{n + 3}\b.*\b{n}\b"):
        ts.update_from(np.zeros(n + 3, np.float32), step._calls())
    strided = np.zeros(2 * n, np.float32)[::2]
    assert strided.size == n and not strided.flags.c_contiguous
    with pytest.raises((ValueError, TypeError), match="contiguous"):
        ts.grads_into(ins, strided)
    with pytest.raises((ValueError, TypeError), match="contiguous"):
        ts.update_from(strided, step._calls())
    with pytest.raises((ValueError, TypeError)):
        ts.grads_into(ins, np.zeros(n, np.float64))  # wrong dtype
    ro = np.zeros(n, np.float32)
    ro.flags.writeable = False
    with pytest.raises((ValueError, TypeError), match="writeable"):
        ts.grads_into(ins, ro)
    # bad calls are checked as `run` checks them, before any update
    w = [p.numpy().copy() for p in m.parameters()]
    with pytest.raises(ValueError, match="out of range or updated twice"):
        ts.update_from(np.zeros(n, np.float32), [("sgd", [0, 0], [None], (0.1, 0.0, 0.0, False, 0.0, False, False))])
    assert all(np.array_equal(a, p.numpy()) for a, p in zip(w, m.parameters()))
    # after the errors the step still works
    flat = np.zeros(n, np.float32)
    assert np.isfinite(ts.grads_into(ins, flat)) and np.any(flat != 0)


@pytest.mark.parametrize("opt_cls,kw", [(optim.SGD, {"lr": 0.1}), (optim.SGD, {"lr": 0.1, "maximize": True}),
                                         (optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
                                         (optim.Adam, {"lr": 1e-2, "weight_decay": 0.01})],
                         ids=["sgd", "sgd-maximize", "sgd-nesterov", "adam"])
@pytest.mark.parametrize("k", [2, 3])
def test_update_from_a_list_adds_the_buffers_in_order_bitwise(opt_cls, kw, k):
    """update_from([g0, g1, ...]) (the ranks' gradients in shared memory) is update_from of
    ((g0 + g1) + g2) summed by numpy, bit for bit: plain SGD on two buffers in one pass, the
    other cases block by block; the 200 x 100 weight crosses the update's 16k-float blocks."""
    r = np.random.default_rng(5)
    X, y = bg.tensor(r.normal(size=(4, 200))), bg.tensor(r.integers(0, 4, 4).astype(np.float32))
    ms, steps = [], []
    for _ in range(2):
        m = nn.MLP([200, 100, 4], seed=0)
        ms.append(m)
        steps.append(bg.compile_step(m, F.cross_entropy, opt_cls(m.parameters(), **kw)))
    n = _numel(ms[0])
    assert max(int(np.prod(p.shape)) for p in ms[0].parameters()) > 1 << 14
    for _ in range(3):
        bufs = [r.normal(size=n).astype(np.float32) * np.float32(10.0 ** -i) for i in range(k)]
        total = bufs[0].copy()
        for b in bufs[1:]:
            total += b
        steps[0].step_for(X, y).update_from(total, steps[0]._calls())
        steps[1].step_for(X, y).update_from(bufs, steps[1]._calls())
    for (name, a), (_, b) in zip(ms[0].state_dict().items(), ms[1].state_dict().items()):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), name
    assert not np.array_equal(nn.MLP([200, 100, 4], seed=0).state_dict()["0.weight"], ms[1].state_dict()["0.weight"])
    # one term fewer gives other parameters: every buffer is read
    m3 = nn.MLP([200, 100, 4], seed=0)
    s3 = bg.compile_step(m3, F.cross_entropy, opt_cls(m3.parameters(), **kw))
    for _ in range(3):
        s3.step_for(X, y).update_from(bufs[:-1], s3._calls())
    assert not np.array_equal(m3.state_dict()["0.weight"], ms[1].state_dict()["0.weight"])


def test_update_from_a_list_errors():
    m, o, step = _split_setup(optim.SGD, lr=0.1, momentum=0.9)
    X, y = _split_batches(1)[0]
    ts = step.step_for(X, y)
    n = _numel(m)
    w = [p.numpy().copy() for p in m.parameters()]
    with pytest.raises(ValueError, match="no gradient buffer"):
        ts.update_from([], step._calls())
    with pytest.raises(ValueError, match=rf"\b{n + 1}\b.*\b{n}\b"):
        ts.update_from([np.zeros(n, np.float32), np.zeros(n + 1, np.float32)], step._calls())
    with pytest.raises(TypeError, match="float32 array or a list of them"):
        ts.update_from([np.zeros(n, np.float32), np.zeros(n, np.float64)], step._calls())
    with pytest.raises(TypeError, match="float32 array or a list of them"):
        ts.update_from("gradients", step._calls())
    with pytest.raises((ValueError, TypeError), match="contiguous"):
        ts.update_from([np.zeros(n, np.float32), np.zeros(2 * n, np.float32)[::2]], step._calls())
    assert all(np.array_equal(a, p.numpy()) for a, p in zip(w, m.parameters()))  # nothing applied


@pytest.mark.parametrize("kw", [{"lr": 0.1}, {"lr": 1e-2, "momentum": 0.9}])
def test_steady_state_split_steps_allocate_no_tensor_storage(kw):
    m, o, step = _split_setup(optim.SGD, **kw)
    X, y = _split_batches(1, B=16)[0]
    ts = step.step_for(X, y)
    flat = np.empty(_numel(m), np.float32)
    ts.grads_into([X._v, y._v], flat)  # the first call fills the step's arena
    ts.update_from(flat, step._calls())
    before = bg._core.fresh_allocations()
    for _ in range(20):
        ts.grads_into([X._v, y._v], flat)
        ts.update_from(flat, step._calls())
    assert bg._core.fresh_allocations() == before
