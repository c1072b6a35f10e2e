"""Pooled storage: a reused buffer never leaks stale values into a result."""
import numpy as np

import batchgrad as bg


def test_reused_buffers_give_exact_results():
    r = np.random.default_rng(0)
    a = r.normal(size=(300, 400)).astype(np.float32)
    b = r.normal(size=(400,)).astype(np.float32)
    idx = r.integers(0, 300, 300)
    for _ in range(3):  # each round frees buffers of the sizes the next round allocates
        ta = bg.tensor(a)
        np.testing.assert_array_equal((ta + b).numpy(), a + b)
        np.testing.assert_allclose(ta.exp().numpy(), np.exp(a), rtol=1e-6)
        np.testing.assert_array_equal(ta.T.numpy(), a.T)
        np.testing.assert_array_equal(ta[idx].numpy(), a[idx])
        np.testing.assert_array_equal(bg.concatenate([ta, ta], axis=1).numpy(), np.concatenate([a, a], axis=1))
        np.testing.assert_allclose(bg.softmax(ta).numpy(), np.exp(a - np.log(np.exp(a).sum(-1, keepdims=True))), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose((ta @ ta.T).numpy(), a @ a.T, rtol=1e-4, atol=1e-3)
        x = bg.tensor(a, requires_grad=True)
        x[idx].sum().backward()  # scatter_add needs zeroed storage
        np.testing.assert_array_equal(x.grad.numpy(), np.bincount(idx, minlength=300)[:, None] * np.ones((1, 400), np.float32))
        del ta, x
