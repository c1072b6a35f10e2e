"""pytest-benchmark: one SGD step of an MLP 784-256-256-10 (relu, softmax cross-entropy) in batchgrad.

    pytest benches/py --benchmark-only                      # all
    pytest benches/py --benchmark-only --benchmark-columns=median,iqr,rounds

Not collected by the default `python -m pytest` (pyproject's testpaths = ["tests"]). Each result
carries `extra_info["examples_per_s"]` (batch / median step time) and the thread count.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import batchgrad as bg

pytest.importorskip("pytest_benchmark")

DIMS = (784, 256, 256, 10)
LR = 0.01
BATCHES = [1, 32, 128, 512]
THREADS = sorted({1, os.cpu_count() or 1})


def _loss_fn(y: np.ndarray):
    """Softmax cross-entropy of logits against labels `y`: bg.nn's when present, else the registry op."""
    nn = getattr(bg, "nn", None)
    ce = getattr(getattr(nn, "functional", None), "cross_entropy", None) if nn else None
    if ce is not None:
        yi = y.astype(np.int64)
        return lambda z: ce(z, yi)
    yb = bg.tensor(y.astype(np.float32))
    return lambda z: bg.Tensor(bg._core.apply("softmax_xent", [z._v, yb._v])).mean()


def _sgd(params: list):
    """SGD update + zero_grad: bg.optim.SGD when present, else the fused kernel directly."""
    optim = getattr(bg, "optim", None)
    if optim is not None and hasattr(optim, "SGD"):
        opt = optim.SGD(params, lr=LR)

        def update() -> None:
            opt.step()
            opt.zero_grad()

        return update
    vs = [p._v for p in params]

    def update() -> None:
        bg._core.sgd_step(vs, [], LR, 0.0, 0.0, False, 0.0, False, False)
        for p in params:
            p.zero_grad()

    return update


def make_step(batch: int):
    rng = np.random.default_rng(0)
    params = []
    for fi, fo in zip(DIMS[:-1], DIMS[1:]):
        bound = 1 / np.sqrt(fi)
        params.append(bg.tensor(rng.uniform(-bound, bound, (fi, fo)).astype(np.float32), requires_grad=True))
        params.append(bg.tensor(rng.uniform(-bound, bound, (fo,)).astype(np.float32), requires_grad=True))
    x = bg.tensor(rng.standard_normal((batch, DIMS[0]), dtype=np.float32))
    loss_fn = _loss_fn(rng.integers(0, DIMS[-1], batch))
    update = _sgd(params)
    w1, b1, w2, b2, w3, b3 = params

    def step() -> bg.Tensor:
        h = bg.relu(x @ w1 + b1)
        h = bg.relu(h @ w2 + b2)
        loss = loss_fn(h @ w3 + b3)
        loss.backward()
        update()
        return loss

    return step


@pytest.fixture
def threads(request):
    prev = bg.get_num_threads()
    bg.set_num_threads(request.param)
    yield request.param
    bg.set_num_threads(prev)


@pytest.mark.parametrize("threads", THREADS, indirect=True, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
def test_train_step(benchmark, batch, threads):
    step = make_step(batch)
    first = step().item()
    benchmark.group = f"train_step b{batch}"
    benchmark.extra_info["batch"] = batch
    benchmark.extra_info["threads"] = threads
    benchmark(step)
    assert np.isfinite(first) and np.isfinite(step().item())
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["examples_per_s"] = batch / stats.stats.median
