"""compile_step replays forward + backward as one flat program: same updates as the eager step."""
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


@pytest.mark.parametrize("opt_cls,kw", [(optim.SGD, {"lr": 0.1, "momentum": 0.9}), (optim.Adam, {"lr": 1e-2})])
def test_compiled_step_equals_eager_step(opt_cls, kw):
    m1, o1 = _setup(opt_cls, **kw)
    m2, o2 = _setup(opt_cls, **kw)
    batches = _batches()
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


def test_gpu_device_is_not_there_yet():
    m, o = _setup(lr=0.1)
    with pytest.raises(NotImplementedError, match="gpu"):
        bg.compile_step(m, F.cross_entropy, o, device="gpu")
