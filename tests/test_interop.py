"""DLPack export (zero copy) and import, pickle and deepcopy of tensors, modules, optimizers."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import batchgrad as bg
from batchgrad import nn, optim


def test_numpy_from_dlpack_shares_memory():
    t = bg.randn(3, 4, seed=0)
    a = np.from_dlpack(t)
    np.testing.assert_array_equal(a, t.numpy())
    assert a.ctypes.data == t.numpy().ctypes.data


def test_torch_from_dlpack_shares_memory_and_back():
    torch = pytest.importorskip("torch")
    t = bg.randn(2, 5, seed=1)
    tt = torch.from_dlpack(t)
    assert tt.data_ptr() == t.numpy().ctypes.data
    np.testing.assert_array_equal(tt.numpy(), t.numpy())
    back = bg.from_dlpack(torch.arange(6, dtype=torch.float32).reshape(2, 3))
    np.testing.assert_array_equal(back.numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_from_dlpack_of_numpy_converts_to_float32():
    x = bg.from_dlpack(np.arange(4, dtype=np.float64))
    assert x.numpy().dtype == np.float32 and x.shape == (4,)


def test_tensor_pickles_with_grad_and_requires_grad():
    x = bg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    y = pickle.loads(pickle.dumps(x))
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    assert y.requires_grad and y.is_leaf
    np.testing.assert_array_equal(y.grad.numpy(), [2.0, 4.0, 6.0])
    z = copy.deepcopy(x)
    np.testing.assert_array_equal(z.grad.numpy(), x.grad.numpy())


def test_module_and_optimizer_deepcopy_and_pickle_are_independent_snapshots():
    m = nn.MLP([4, 8, 3], seed=0)
    o = optim.Adam(m.parameters(), lr=1e-2)
    X, y = bg.randn(5, 4, seed=2), np.array([0, 1, 2, 0, 1])
    o.zero_grad(); nn.functional.cross_entropy(m(X), y).backward(); o.step()
    for snap in (copy.deepcopy((m, o)), pickle.loads(pickle.dumps((m, o)))):
        m2, o2 = snap
        for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
            np.testing.assert_array_equal(a, b, err_msg=k)
        # the optimizer copy refers to the module copy's parameters (identity kept by the memo)
        assert {id(p) for p in m2.parameters()} == {id(p) for g in o2.param_groups for p in g["params"]}
        s1, s2 = o.state_dict(), o2.state_dict()
        for i in s1["state"]:
            for name, v in s1["state"][i].items():
                np.testing.assert_array_equal(np.asarray(v), np.asarray(s2["state"][i][name]))
        # training the copy leaves the original alone
        before = {k: v.copy() for k, v in m.state_dict().items()}
        o2.zero_grad(); nn.functional.cross_entropy(m2(X), y).backward(); o2.step()
        for k, v in m.state_dict().items():
            np.testing.assert_array_equal(v, before[k])


def test_jax_from_dlpack_reads_the_tensor():
    jnp = pytest.importorskip("jax.numpy")
    t = bg.randn(3, 2, seed=4)
    j = jnp.from_dlpack(t)
    np.testing.assert_array_equal(np.asarray(j), t.numpy())
    back = bg.from_dlpack(jnp.arange(3.0))
    np.testing.assert_array_equal(back.numpy(), [0.0, 1.0, 2.0])
