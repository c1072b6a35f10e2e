"""bg.profile(): per-op timings of the Rust kernels run inside the block."""
import numpy as np

import batchgrad as bg


def test_profile_counts_each_kernel_by_op_and_shapes(rng):
    x = bg.tensor(rng.standard_normal((4, 3)).astype(np.float32))
    w = bg.tensor(rng.standard_normal((3, 5)).astype(np.float32), requires_grad=True)
    with bg.profile() as prof:
        for _ in range(3):
            y = x @ w
        y.relu().sum().backward()
    got = {(e.op, e.shapes): e.calls for e in prof.entries}
    assert got[("matmul", "[4, 3], [3, 5]")] == 3
    assert got[("relu", "[4, 5]")] == 1
    # the backward replay is profiled too: the weight gradient is xᵀ·g, a (3 x 4)·(4 x 5) product
    assert any(op == "matmul" and calls == 1 for (op, _), calls in got.items())
    assert all(e.seconds >= 0 for e in prof.entries)
    assert abs(prof.total - sum(e.seconds for e in prof.entries)) < 1e-12
    assert "matmul" in prof.table()
    # nothing is recorded outside the block; a new block starts from an empty table
    x @ w
    assert bg._core.profile_report() == [(e.op, e.shapes, e.calls, e.seconds) for e in prof.entries]
    with bg.profile() as prof2:
        pass
    assert prof2.entries == []


def test_profile_sees_inside_a_compiled_step(rng):
    model = bg.nn.MLP([6, 8, 3])
    opt = bg.optim.SGD(model.parameters(), lr=0.1)
    X, y = rng.standard_normal((5, 6)).astype(np.float32), rng.integers(0, 3, 5)
    step = bg.compile_step(model, bg.nn.functional.cross_entropy, opt, (X, y))
    with bg.profile() as prof:
        step(X, y)
        step(X, y)
    ops: dict[str, int] = {}
    for e in prof.entries:
        ops[e.op] = ops.get(e.op, 0) + e.calls
    assert ops["softmax_xent"] == 2
    # plain SGD: each weight's gradient product lands in the weight (the fused epilogue)
    assert ops["matmul+sgd_update"] == 2 * sum(step.fused(X, y))
