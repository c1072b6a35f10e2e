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
