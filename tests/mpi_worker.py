"""Run by tests/test_distributed.py under `mpirun -n W python tests/mpi_worker.py SCENARIO OUT`.

Every rank runs the same scenario; rank 0 writes the results to OUT (an .npz). The data is a
fixed slice of the bundled digits, so the test process can rebuild every rank's batches.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

import batchgrad as bg

N_TRAIN, N_VAL, BATCH, SIZES = 60, 40, 8, [64, 32, 10]


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = bg.datasets.load_digits()
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:N_TRAIN + N_VAL], y[N_TRAIN:N_TRAIN + N_VAL]


def make(opt_name: str, rank: int) -> tuple[bg.nn.Module, bg.optim.Optimizer]:
    # a different init on every rank: fit(distributed=True) must broadcast rank 0's
    model = bg.nn.MLP(SIZES, seed=rank)
    if opt_name == "momentum":
        opt = bg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = bg.optim.Adam(model.parameters(), lr=0.01)
    return model, opt


def params(model: bg.nn.Module) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in model.state_dict().items()}


def train(scenario: str, out: str) -> None:
    world = bg.distributed.init()
    reducers: list[bg.distributed.GradientReducer] = []  # every reducer made (fit makes its own), to report how it sums
    make_reducer = bg.distributed.GradientReducer.__init__

    def record(self, *a, **k) -> None:
        make_reducer(self, *a, **k)
        reducers.append(self)

    bg.distributed.GradientReducer.__init__ = record
    _, opt_name, *rest = scenario.split("-")  # train-<momentum|adam>[-acc2][-compiled]
    X, y, Xv, yv = data()
    ds = bg.data.ArrayDataset(X, y)
    model, opt = make(opt_name, world.rank)
    loss_fn = bg.nn.CrossEntropyLoss()
    sampler = bg.distributed.DistributedSampler(ds, shuffle=True, seed=3)
    loader = bg.data.DataLoader(ds, batch_size=BATCH, sampler=sampler)
    val = bg.data.DataLoader(bg.data.ArrayDataset(Xv, yv), batch_size=16,
                             sampler=bg.distributed.DistributedSampler(Xv, shuffle=False))
    extra: dict[str, np.ndarray] = {}
    if "uneven" in rest:  # rank 0 takes 8 examples per step, rank 1 takes 4 (no sampler)
        lo, hi = (0, 8) if world.rank == 0 else (8, 12)
        loader = [(X[k + lo: k + hi], y[k + lo: k + hi]) for k in range(0, N_TRAIN, 12)]
        if "compiled" in rest:
            step = bg.compile_step(model, loss_fn, opt, distributed=True)
            extra["loss"] = np.array([float(step(xb, yb)) for xb, yb in loader])
        else:
            h = bg.fit(model, loss_fn, opt, loader, epochs=1, distributed=True, progress=False)
            extra["loss"] = np.array(h.loss)
    elif "compiled" in rest:
        # -buckets: the all-reduce in buckets of 1 KiB (2 here), the first sent during the backward
        step = bg.compile_step(model, loss_fn, opt, distributed=True, bucket_mb=2**-10 if "buckets" in rest else 0)
        losses = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            losses += [float(step(xb, yb)) for xb, yb in loader]
        extra["loss"] = np.array(losses)
        extra["buckets"] = np.array(len(step.reducer.buckets))
        extra["early_sends"] = np.array(step.reducer.early_sends)
    else:
        acc = 2 if "acc2" in rest else 1
        ckpt = os.path.join(os.path.dirname(out), "ckpt.safetensors")
        h = bg.fit(model, loss_fn, opt, loader, epochs=2, accumulate=acc, val_loader=val, start_epoch=0,
                   distributed=True, checkpoint=ckpt, progress=world.rank == 0)
        extra = {"loss": np.array(h.loss), "val_loss": np.array(h.val_loss), "val_acc": np.array(h.val_accuracy),
                 "train_acc": np.array(h.train_accuracy), "steps": np.array(h.steps)}
    extra["shared"] = np.array([r.shared for r in reducers])
    p = params(model)
    gathered = bg.distributed.allgather(p)
    same = all(all(np.array_equal(g[k], p[k]) for k in p) for g in gathered)
    if world.rank == 0:
        np.savez(out, same_on_all_ranks=np.array(same), size=np.array(world.size), **extra,
                 **{"param." + k: v for k, v in p.items()})


def fail(scenario: str, out: str) -> None:
    """fail-raise / fail-nan / fail-kill / fail-hang / fail-val / fail-shape / fail-shapeb / fail-midb: rank 1 misbehaves."""
    world = bg.distributed.init(timeout=float(os.environ.get("WORKER_TIMEOUT", "300")))
    X, y, Xv, yv = data()
    ds = bg.data.ArrayDataset(X, y)
    model, opt = make("momentum", world.rank)
    calls = [0]
    kind = scenario.split("-")[1]

    def loss_fn(out: bg.Tensor, t: bg.Tensor) -> bg.Tensor:
        calls[0] += 1
        if world.rank == 1 and calls[0] == 3:
            if kind == "raise":
                raise ValueError("rank one's loss exploded on purpose")
            if kind == "nan":
                return bg.nn.functional.cross_entropy(out, t) * float("nan")
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "hang":
                time.sleep(120)
        return bg.nn.functional.cross_entropy(out, t)

    class BadVal:
        def __len__(self) -> int:
            return 1

        def __iter__(self):
            if world.rank == 1:
                raise OSError("rank one cannot read its validation shard")
            yield Xv, yv

    loader = bg.data.DataLoader(ds, batch_size=BATCH, sampler=bg.distributed.DistributedSampler(ds, seed=0))

    def run() -> None:
        if kind in ("shape", "shapeb", "midb"):  # compiled step: rank 1's third batch has 10 features, not 64
            # shapeb: with buckets, rank 0 has sent its first bucket during the backward;
            # midb: rank 1 fails in the middle of its third backward, after sending its first bucket
            step = bg.compile_step(model, bg.nn.CrossEntropyLoss(), opt, distributed=True,
                                   bucket_mb=0 if kind == "shape" else 2**-10)
            red, ready = step.reducer, step.reducer.ready

            def failing_ready(i: int) -> None:
                ready(i)
                if world.rank == 1 and red.step == 2 and red.early_sends == 3:
                    raise MemoryError("rank one ran out of memory in its backward")

            if kind == "midb":
                red.ready = failing_ready
            for k, (xb, yb) in enumerate(loader):
                step(xb[:, :10] if kind != "midb" and world.rank == 1 and k == 2 else xb, yb)
        else:
            bg.fit(model, loss_fn, opt, loader, epochs=2, distributed=True, progress=False,
                   val_loader=BadVal() if kind == "val" else None)

    try:
        run()
    except bg.distributed.DistributedError as e:
        print(f"RANK {world.rank} CAUGHT DistributedError: {e}", flush=True)
        with open(f"{out}.rank{world.rank}", "w") as f:
            f.write(str(e))
        return
    print(f"RANK {world.rank} FINISHED", flush=True)

if __name__ == "__main__":
    scenario, out = sys.argv[1], sys.argv[2]
    (train if scenario.startswith("train") else fail)(scenario, out)
