"""Where a data-parallel step's time goes, phase by phase, on 1 and 2 ranks.

    python benches/mpi_phases.py            # runs itself under mpirun -n 2, then alone

MLP 784-256-256-10, per-rank batch 256, 1 thread per rank (``--bind-to core``). Two ranks time
``TrainStep.grads_into`` (forward + backward into the rank's buffer), ``GradientReducer.reduce``
(the exchange and the metadata, including the wait for the other rank) and ``update_from``, for the
default shared-memory exchange and for one MPI all-reduce (``shared=False``), in the same processes,
alternating blocks of 100 steps. One rank times the fused one-call step and the same split phases.
Medians of each phase over all blocks of a kind, rank by rank.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import numpy as np


def main() -> None:
    import batchgrad as bg

    world = bg.distributed.init()
    rng = np.random.default_rng(world.rank)
    b = 256
    X = bg.tensor(rng.normal(size=(b, 784)).astype(np.float32))
    y = bg.tensor(rng.integers(0, 10, size=b).astype(np.float32))
    opt_name = sys.argv[1] if len(sys.argv) > 1 else "sgd"

    def make(**kw):
        model = bg.nn.MLP([784, 256, 256, 10], seed=0)
        opt = bg.optim.SGD(model.parameters(), lr=0.01, momentum=0.9 if opt_name == "momentum" else 0.0)
        step = bg.compile_step(model, bg.nn.CrossEntropyLoss(), opt, (X, y), **kw)
        return step, step.step_for(X, y)

    med = lambda v: statistics.median(v) * 1e3  # noqa: E731
    if world.size == 1:
        step, _ = make()
        split, ts = make()
        flat = np.zeros(sum(int(np.prod(p.shape)) for p in split.params), np.float32)
        fused, g, u = [], [], []
        for _ in range(600):
            t0 = time.perf_counter()
            step(X, y)
            t1 = time.perf_counter()
            ts.grads_into([X._v, y._v], flat, 1.0)
            t2 = time.perf_counter()
            ts.update_from(flat, split._calls())
            t3 = time.perf_counter()
            fused.append(t1 - t0), g.append(t2 - t1), u.append(t3 - t2)
        print(f"| {opt_name} | 1 rank | - | {med(g):.3f} | - | {med(u):.3f} | {med(fused):.3f} (the one-call step{', SGD fused into the GEMMs' if opt_name == 'sgd' else ''}); "
              f"split {med(g) + med(u):.3f} |")
        return
    steps = {"shared memory": make(distributed=True), "MPI all-reduce": make(distributed=True)}
    # the second step's reducer all-reduces instead (the same as BATCHGRAD_MPI_SHARED=0)
    s2 = steps["MPI all-reduce"][0]
    s2.reducer = bg.distributed.GradientReducer([p.shape for p in s2.params], n_stats=1, shared=False)
    assert steps["shared memory"][0].reducer.shared and not s2.reducer.shared
    times: dict[str, list[list[float]]] = {k: [[], [], [], []] for k in steps}
    for _ in range(6):
        for name, (step, ts) in steps.items():
            red = step.reducer
            bg.distributed.barrier()
            for _ in range(100):
                t0 = time.perf_counter()
                loss = ts.grads_into([X._v, y._v], red.flat, 1.0 / world.size)
                t1 = time.perf_counter()
                red.reduce(lambda s, again: None, b, True, [loss * b], None)
                t2 = time.perf_counter()
                ts.update_from(red.summed(), step._calls())
                t3 = time.perf_counter()
                for v, t in zip(times[name], (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                    v.append(t)
    lines = [f"| {opt_name} | rank {world.rank} | {name} | {med(g):.3f} | {med(r):.3f} | {med(u):.3f} | {med(t):.3f} |"
             for name, (g, r, u, t) in times.items()]
    for r_, ls in enumerate(bg.distributed.allgather(lines)):
        if world.rank == 0:
            print("\n".join(ls))


if __name__ == "__main__":
    if os.environ.get("OMPI_COMM_WORLD_SIZE") is None and "--alone" not in sys.argv:
        env = dict(os.environ, BATCHGRAD_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        print("| optimizer | rank | exchange | grads_into, ms | reduce, ms | update_from, ms | step, ms |")
        print("|---|---|---|---:|---:|---:|---:|")
        for opt in ("sgd", "momentum"):
            subprocess.run(["mpirun", "-n", "2", "--oversubscribe", "--bind-to", "core", sys.executable, __file__, opt],
                           env=env, check=True)
            subprocess.run([sys.executable, __file__, opt, "--alone"], env=env, check=True)
    else:
        main()
