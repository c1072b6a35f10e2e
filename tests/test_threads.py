"""Results are bit-identical whatever the thread count (fixed reduction order), and the thread
count is set by bg.set_num_threads or BATCHGRAD_NUM_THREADS."""
import os
import subprocess
import sys

import numpy as np
import pytest

import batchgrad as bg


def _step(seed=0):
    r = np.random.default_rng(seed)
    X = bg.tensor(r.normal(size=(512, 300)))
    W1 = bg.tensor(r.normal(size=(300, 200)) * 0.05, requires_grad=True)
    W2 = bg.tensor(r.normal(size=(200, 10)) * 0.05, requires_grad=True)
    y = bg.tensor(r.integers(0, 10, 512).astype(np.float32))
    h = (X @ W1).relu()
    z = h @ W2
    loss = bg.Tensor(bg._core.apply("softmax_xent", [z._v, y._v])).mean() + (h.sum(axis=0) ** 2).mean() * 1e-6 + bg.logsumexp(z, axis=0).sum()
    loss.backward()
    big = bg.tensor(r.normal(size=(3, 400_000)))
    return [loss.numpy().copy(), W1.grad.numpy().copy(), W2.grad.numpy().copy(), big.sum().numpy().copy(),
            big.sum(axis=1).numpy().copy(), big.max(axis=1).numpy().copy(), bg.softmax(big, axis=0).numpy().copy()]


def test_results_are_bit_identical_across_thread_counts():
    prev = bg.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            bg.set_num_threads(n)
            assert bg.get_num_threads() == n
            outs.append(_step())
        for other in outs[1:]:
            for a, b in zip(outs[0], other):
                assert a.tobytes() == b.tobytes()
    finally:
        bg.set_num_threads(prev)


def test_env_variable_sets_threads():
    env = dict(os.environ, BATCHGRAD_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", "import batchgrad as bg; print(bg.get_num_threads())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"


def test_bad_thread_count():
    with pytest.raises(ValueError, match=r"1\.\.1024, got 0"):
        bg.set_num_threads(0)


@pytest.mark.parametrize("value,want_warning", [("abc", True), ("0", True), ("1000000000", True), (" 1 ", False)])
def test_batchgrad_num_threads_is_validated_at_import(value, want_warning):
    """BATCHGRAD_NUM_THREADS outside 1..1024 is ignored (all cores) with a RuntimeWarning at
    import, instead of being ignored silently or starting a billion threads."""
    code = "import warnings; warnings.simplefilter('always'); import batchgrad as bg; print(bg.get_num_threads())"
    env = dict(os.environ, BATCHGRAD_NUM_THREADS=value)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    n = int(r.stdout.strip().splitlines()[-1])
    if want_warning:
        assert "RuntimeWarning" in r.stderr and "BATCHGRAD_NUM_THREADS" in r.stderr
        assert n == len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else n >= 1
    else:
        assert "BATCHGRAD_NUM_THREADS" not in r.stderr and n == 1


def _eager_run(threads, opt_name, steps=12):
    """An eager MLP at batch 8: its backward splits products on the spinning team, so at 2
    threads the optimizer update that follows runs on the team in chunks."""
    prev = bg.get_num_threads()
    bg.set_num_threads(threads)
    try:
        r = np.random.default_rng(0)
        X = bg.tensor(r.normal(size=(8, 784)).astype(np.float32))
        y = r.integers(0, 10, 8)
        m = bg.nn.MLP([784, 256, 256, 10], seed=0)
        opt = {"sgd": lambda p: bg.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
               "adam": lambda p: bg.optim.Adam(p, lr=1e-3, amsgrad=True),
               "rmsprop": lambda p: bg.optim.RMSprop(p, lr=1e-3, centered=True, momentum=0.5)}[opt_name](m.parameters())
        before = bg._core.team_updates()
        for _ in range(steps):
            opt.zero_grad()
            bg.nn.functional.cross_entropy(m(X), y).backward()
            opt.step()
        return [p.numpy().copy() for p in m.parameters()], bg._core.team_updates() - before
    finally:
        bg.set_num_threads(prev)


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "rmsprop"])
def test_eager_update_on_the_team_is_bit_identical(opt_name):
    one, on_team_1 = _eager_run(1, opt_name)
    assert on_team_1 == 0
    # the team path depends on its helper being awake when step() runs: retry a few times
    for _ in range(5):
        two, on_team = _eager_run(2, opt_name)
        if on_team:
            break
    assert on_team > 0, "no eager update ran on the team at 2 threads"
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()
