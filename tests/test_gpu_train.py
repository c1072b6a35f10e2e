"""Every recorded program on the GPU: Graph.run, vmapped per-example gradients, minibatch
prediction and evaluation, bg.fit and `batchgrad train --device gpu`. Runs on lavapipe in CI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import batchgrad as bg
from batchgrad import nn, optim

F = nn.functional


def mlp_loss(p, x, y):
    h = bg.tanh(x @ p["W1"] + p["b1"])
    return F.cross_entropy((h @ p["W2"] + p["b2"]).reshape(1, -1), y.reshape(1))


def mlp_params(seed=0, d=6, h=5, c=3):
    r = np.random.default_rng(seed)
    return {"W1": bg.tensor(r.normal(size=(d, h)) * 0.5), "b1": bg.tensor(r.normal(size=h) * 0.1),
            "W2": bg.tensor(r.normal(size=(h, c)) * 0.5), "b2": bg.tensor(r.normal(size=c) * 0.1)}


def test_graph_run_on_gpu_equals_cpu_and_reads_captured_values_at_call_time(gpu):
    W = bg.randn(7, 4, seed=0)
    f = lambda x: (x @ W).tanh().sum(axis=1)  # noqa: E731
    x = bg.randn(5, 7, seed=1)
    g = bg.trace(f, x)
    np.testing.assert_allclose(g.run(x, device="gpu").numpy(), g.run(x).numpy(), rtol=1e-5, atol=1e-6)
    W._v.assign(bg.randn(7, 4, seed=3)._v)  # a parameter updated in place: both executors see it
    np.testing.assert_allclose(g.run(x, device="gpu").numpy(), g.run(x).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="device"):
        g.run(x, device="tpu")


@pytest.mark.parametrize("B", [1, 9])
def test_vmap_grad_per_example_gradients_on_gpu_equal_cpu(gpu, B):
    p = mlp_params()
    r = np.random.default_rng(1)
    X = bg.tensor(r.normal(size=(B, 6)))
    Y = bg.tensor(r.integers(0, 3, size=B).astype(np.float32))
    cpu = bg.vmap(bg.grad(mlp_loss), in_axes=(None, 0, 0))(p, X, Y)
    gpu_ = bg.vmap(bg.grad(mlp_loss), in_axes=(None, 0, 0), device="gpu")(p, X, Y)
    assert gpu_["W1"].shape == (B, 6, 5)
    for k in p:
        np.testing.assert_allclose(gpu_[k].numpy(), cpu[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def test_predict_streams_minibatches_and_equals_the_cpu_forward(gpu):
    m = nn.MLP([20, 16, 5], seed=0)
    X = np.random.default_rng(0).normal(size=(1000, 20)).astype(np.float32)
    want = m(bg.tensor(X)).numpy()
    got = bg.gpu.predict(m, X, batch_size=128)  # 7 full batches and a last one of 104
    assert got.shape == (1000, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert bg.gpu.predict(m, X[:0], batch_size=8).shape == (0, 5)
    with pytest.raises(ValueError, match="batch_size"):
        bg.gpu.predict(m, X, batch_size=0)


def _loaders(n=300, bs=32):
    r = np.random.default_rng(0)
    X = r.normal(size=(n, 20)).astype(np.float32)
    y = (X[:, :5].argmax(axis=1)).astype(np.int64)
    ds = bg.data.ArrayDataset(X, y)
    return bg.data.DataLoader(ds, batch_size=bs, shuffle=True, seed=0), bg.data.DataLoader(ds, batch_size=64)


def test_evaluate_on_gpu_equals_cpu(gpu):
    m = nn.MLP([20, 16, 5], seed=0)
    _, test = _loaders()
    l1, a1 = bg.evaluate(m, test, nn.CrossEntropyLoss())
    l2, a2 = bg.evaluate(m, test, nn.CrossEntropyLoss(), device="gpu")
    assert l2 == pytest.approx(l1, rel=1e-5) and a2 == a1


def test_fit_on_gpu_equals_compiled_cpu_steps(gpu):
    m1, m2 = nn.MLP([20, 16, 5], seed=0), nn.MLP([20, 16, 5], seed=0)
    o1, o2 = optim.Adam(m1.parameters(), lr=1e-2), optim.Adam(m2.parameters(), lr=1e-2)
    train, test = _loaders()
    step = bg.compile_step(m1, nn.CrossEntropyLoss(), o1)
    losses = []
    for _ in range(2):
        for x, y in train:
            losses.append(step(x, y))
    train2, _ = _loaders()
    h = bg.fit(m2, nn.CrossEntropyLoss(), o2, train2, epochs=2, val_loader=test, progress=False, device="gpu", log_every=4)
    np.testing.assert_allclose(h.loss, losses, rtol=1e-4)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=k)
    assert h.val_loss[-1] == pytest.approx(bg.evaluate(m1, test, nn.CrossEntropyLoss())[0], rel=1e-4)
    assert h.steps == 2 * len(train)
    with pytest.raises(ValueError, match="accumulate=1"):
        bg.fit(m2, nn.CrossEntropyLoss(), o2, train2, accumulate=2, device="gpu", progress=False)


def test_fit_on_gpu_stops_on_a_non_finite_loss(gpu):
    m = nn.MLP([20, 16, 5], seed=0)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    o = optim.SGD(m.parameters(), lr=1e30)  # diverges to inf/nan within a few steps
    train, _ = _loaders()
    with pytest.raises(FloatingPointError, match="GPU step"):
        bg.fit(m, nn.CrossEntropyLoss(), o, train, epochs=3, progress=False, device="gpu", log_every=2)
    for k, v in m.state_dict().items():  # the host keeps the last synced (here: initial) parameters
        np.testing.assert_array_equal(v, before[k])


def test_cli_train_on_gpu(gpu):
    out = subprocess.run([sys.executable, "-m", "batchgrad", "train", "--device", "gpu", "--epochs", "1", "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "test accuracy" in out.stdout and f"on {gpu.name}" in out.stdout
    acc = float(out.stdout.split("test accuracy: ")[1].split("%")[0])
    assert acc > 80.0


def test_wgsl_files_ship_inside_the_package():
    from importlib import resources

    from batchgrad.gpu.lower import TABLE  # noqa: F401  (the families the table launches)

    kdir = resources.files("batchgrad.gpu") / "kernels"
    for fam in ("prelude", "unary", "binary", "reduce", "movement", "matmul", "nn", "optim"):
        assert "@compute" in (kdir / f"{fam}.wgsl").read_text() or fam == "prelude", fam
