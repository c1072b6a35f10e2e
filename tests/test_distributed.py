"""Data-parallel training on MPI (bg.distributed): `mpirun -n 2` runs tests/mpi_worker.py.

The exactness tests rebuild, in this process, every optimizer step's union of the two ranks'
batches and train one process on it: the parameters must agree to 1e-6 relative. Under CI=true
a missing mpirun or mpi4py fails instead of skipping (.ci/run installs Open MPI and mpi4py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import batchgrad as bg

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import mpi_worker as W  # noqa: E402

RTOL = 1e-6


def _need_mpi() -> None:
    missing = []
    if shutil.which("mpirun") is None:
        missing.append("mpirun (apt-get install openmpi-bin libopenmpi-dev)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        missing.append("mpi4py (pip install 'batchgrad[mpi]')")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail("the MPI tests must run in CI; missing " + ", ".join(missing))
        pytest.skip("needs " + ", ".join(missing))


def mpirun(n: int, scenario: str, out: Path, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    _need_mpi()
    e = dict(os.environ, BATCHGRAD_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
             OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONUNBUFFERED="1", **(env or {}))
    cmd = ["mpirun", "-n", str(n), "--oversubscribe", sys.executable, str(HERE / "mpi_worker.py"), scenario, str(out)]
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout)


def _union_batches(epochs: int, world: int, accumulate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The one-process batches: for each optimizer step and micro-batch j, the concatenation of
    every rank's micro-batch j (rank 0 first), from the same DistributedSampler partition."""
    X, y, _, _ = W.data()
    ds = bg.data.ArrayDataset(X, y)
    out = []
    for epoch in range(epochs):
        per_rank = []
        for r in range(world):
            s = bg.distributed.DistributedSampler(ds, num_replicas=world, rank=r, shuffle=True, seed=3)
            s.set_epoch(epoch)
            idx = s.indices()
            per_rank.append([idx[k: k + W.BATCH] for k in range(0, len(idx), W.BATCH)])
        for k in range(len(per_rank[0])):
            idx = np.concatenate([per_rank[r][k] for r in range(world)])
            out.append((X[idx], y[idx]))
    return out


def _reference(opt_name: str, accumulate: int, world: int = 2) -> tuple[dict, bg.train.History]:
    model, opt = W.make(opt_name, 0)
    batches = _union_batches(2, world, accumulate)
    h = bg.fit(model, bg.nn.CrossEntropyLoss(), opt, batches, epochs=1, accumulate=accumulate, progress=False)
    return W.params(model), h


def _assert_params_close(got: np.lib.npyio.NpzFile, ref: dict) -> None:
    for k, v in ref.items():
        g = got["param." + k]
        scale = np.abs(v).max()
        err = np.abs(g - v).max() / scale
        assert err <= RTOL, f"{k}: max |distributed - one process| / max |p| = {err:.2e} > {RTOL}"
        np.testing.assert_allclose(g, v, rtol=RTOL, atol=RTOL * scale)


@pytest.mark.parametrize("opt_name", ["momentum", "adam"])
@pytest.mark.parametrize("acc", [1, 2])
def test_two_ranks_equal_one_process_with_twice_the_batch(tmp_path, opt_name, acc):
    out = tmp_path / "r.npz"
    res = mpirun(2, f"train-{opt_name}" + ("-acc2" if acc == 2 else ""), out)
    assert res.returncode == 0, res.stdout + res.stderr
    got = np.load(out)
    assert int(got["size"]) == 2 and bool(got["same_on_all_ranks"])
    ref, h = _reference(opt_name, acc)
    _assert_params_close(got, ref)
    # the history is of both ranks' examples: the same losses as the one process
    assert int(got["steps"]) == h.steps
    np.testing.assert_allclose(got["loss"], h.loss, rtol=1e-5)
    # validation metrics reduced over the ranks' shards equal those of the whole set
    _, _, Xv, yv = W.data()
    model = bg.nn.MLP(W.SIZES, seed=0)
    model.load_state_dict({k: got["param." + k] for k in ref})
    vl, va = bg.evaluate(model, [(Xv, yv)], bg.nn.CrossEntropyLoss())
    assert got["val_loss"][-1] == pytest.approx(vl, rel=1e-5)
    assert got["val_acc"][-1] == pytest.approx(va)
    # rank 0 wrote the checkpoint of the last epoch, atomically (no temporary file left)
    ck = bg.load(tmp_path / "ckpt.safetensors")
    assert ck["epoch"] == 2
    for k in ref:
        np.testing.assert_array_equal(ck["model"][k], got["param." + k])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors", "r.npz"]


@pytest.mark.parametrize("opt_name", ["momentum", "adam"])
def test_compiled_step_distributed_equals_one_process(tmp_path, opt_name):
    out = tmp_path / "r.npz"
    res = mpirun(2, f"train-{opt_name}-compiled", out)
    assert res.returncode == 0, res.stdout + res.stderr
    got = np.load(out)
    assert bool(got["same_on_all_ranks"])
    model, opt = W.make(opt_name, 0)
    step = bg.compile_step(model, bg.nn.CrossEntropyLoss(), opt)
    losses = [float(step(x, y)) for x, y in _union_batches(2, 2, 1)]
    _assert_params_close(got, W.params(model))
    np.testing.assert_allclose(got["loss"], losses, rtol=1e-5)


def test_bucketed_all_reduce_overlaps_the_backward_and_changes_no_bit(tmp_path):
    """compile_step(..., bucket_mb=...): the last layer's gradients are all-reduced by a
    communication thread while the backward computes the first layer's; the parameters and
    losses are the same bits as with one all-reduce per step."""
    res = {}
    for name in ("compiled", "compiled-buckets"):
        out = tmp_path / f"{name}.npz"
        r = mpirun(2, f"train-momentum-{name}", out)
        assert r.returncode == 0, r.stdout + r.stderr
        res[name] = np.load(out)
    one, two = res["compiled"], res["compiled-buckets"]
    assert int(one["buckets"]) == 1 and int(one["early_sends"]) == 0
    steps = len(two["loss"])
    assert int(two["buckets"]) == 2
    assert int(two["early_sends"]) == steps  # every step sent its first bucket from inside the backward
    assert bool(two["same_on_all_ranks"])
    for k in one.files:
        if k.startswith("param.") or k == "loss":
            assert one[k].tobytes() == two[k].tobytes(), k


@pytest.mark.parametrize("scenario", ["train-momentum-compiled", "train-adam", "train-adam-uneven", "train-adam-uneven-compiled"])
def test_shared_memory_exchange_is_the_all_reduce_bit_for_bit(tmp_path, scenario):
    """On one machine the ranks sum through an MPI shared-memory window by default (each rank
    writes its gradients into its slot, one barrier, every rank adds all slots in rank order as
    it updates); BATCHGRAD_MPI_SHARED=0 takes MPI's all-reduce. Two ranks give the same bits
    either way: fit and the compiled step, equal and unequal batches (a second exchange)."""
    res = {}
    for flag in ("1", "0"):
        d = tmp_path / flag
        d.mkdir()
        r = mpirun(2, scenario, d / "r.npz", env={"BATCHGRAD_MPI_SHARED": flag})
        assert r.returncode == 0, r.stdout + r.stderr
        res[flag] = np.load(d / "r.npz")
        assert bool(res[flag]["same_on_all_ranks"])
    assert res["1"]["shared"].tolist() == [True] and res["0"]["shared"].tolist() == [False]
    one, two = res["1"], res["0"]
    keys = [k for k in one.files if k.startswith("param.") or k == "loss"]
    assert len(keys) == 5
    for k in keys:
        assert one[k].tobytes() == two[k].tobytes(), k
    m0 = bg.nn.MLP(W.SIZES, seed=0)
    assert not np.array_equal(one["param.0.weight"], m0.state_dict()["0.weight"])


def test_three_ranks_in_shared_memory_equal_one_process(tmp_path):
    """Three ranks (oversubscribed on two cores) add three slots, alternating slots each round:
    the parameters are one process's at three times the batch, and MPI's all-reduce's."""
    res = {}
    for flag in ("1", "0"):
        out = tmp_path / f"{flag}.npz"
        r = mpirun(3, "train-momentum-compiled", out, env={"BATCHGRAD_MPI_SHARED": flag})
        assert r.returncode == 0, r.stdout + r.stderr
        res[flag] = np.load(out)
        assert bool(res[flag]["same_on_all_ranks"]) and int(res[flag]["size"]) == 3
    assert res["1"]["shared"].tolist() == [True] and res["0"]["shared"].tolist() == [False]
    model, opt = W.make("momentum", 0)
    step = bg.compile_step(model, bg.nn.CrossEntropyLoss(), opt)
    losses = [float(step(x, y)) for x, y in _union_batches(2, 3, 1)]
    for got in res.values():
        _assert_params_close(got, W.params(model))
        np.testing.assert_allclose(got["loss"], losses, rtol=1e-5)
    for k in res["1"].files:
        if k.startswith("param."):
            np.testing.assert_allclose(res["1"][k], res["0"][k], rtol=0, atol=1e-6 * np.abs(res["0"][k]).max())


def test_reducer_shared_arguments(monkeypatch):
    shapes = [(4, 3), (3,)]
    assert not bg.distributed.GradientReducer(shapes).shared  # a 1-process world has no window
    for bad in ("yes", 1, 0.0):
        with pytest.raises(ValueError, match="shared must be None, True or False"):
            bg.distributed.GradientReducer(shapes, shared=bad)
    with pytest.raises(ValueError, match="takes no buckets"):
        bg.distributed.GradientReducer(shapes, bucket_bytes=64, shared=True)
    monkeypatch.setenv("BATCHGRAD_MPI_SHARED", "maybe")
    with pytest.raises(ValueError, match="BATCHGRAD_MPI_SHARED must be 0 or 1, got 'maybe'"):
        bg.distributed.GradientReducer(shapes)
    monkeypatch.setenv("BATCHGRAD_MPI_SHARED", "0")
    assert not bg.distributed.GradientReducer(shapes).shared


def test_reducer_buckets_and_arguments():
    shapes = [(4, 3), (3,), (3, 5), (5,)]  # 48, 12, 60, 20 bytes
    assert bg.distributed.GradientReducer(shapes).buckets == [(0, 4)]
    assert bg.distributed.GradientReducer(shapes, bucket_bytes=64).buckets == [(2, 4), (0, 2)]
    assert bg.distributed.GradientReducer(shapes, bucket_bytes=1).buckets == [(3, 4), (2, 3), (1, 2), (0, 1)]
    red = bg.distributed.GradientReducer(shapes, n_stats=1, bucket_bytes=64)
    for i in (3, 2, 1, 0):  # a 1-process world: ready() only keeps count
        red.ready(i)
    assert red.early_sends == 1
    with pytest.raises(ValueError, match="bucket_bytes"):
        bg.distributed.GradientReducer(shapes, bucket_bytes=-1)
    m = bg.nn.MLP([4, 3], seed=0)
    for bad in (-1, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="bucket_mb"):
            bg.compile_step(m, bg.nn.CrossEntropyLoss(), bg.optim.SGD(m.parameters(), lr=0.1), distributed=True,
                            bucket_mb=bad)
    with pytest.raises(ValueError, match="distributed=True only"):
        bg.compile_step(m, bg.nn.CrossEntropyLoss(), bg.optim.SGD(m.parameters(), lr=0.1), bucket_mb=1)
    assert not bg.distributed.spans_nodes()


@pytest.mark.parametrize("compiled", [False, True])
def test_unequal_batches_are_weighted_by_their_examples(tmp_path, compiled):
    """Rank 0 has 8 examples per step, rank 1 has 4: the step is still that of all 12 (each
    rank's mean gradient weighted 8/12 and 4/12, in a second all-reduce)."""
    out = tmp_path / "r.npz"
    res = mpirun(2, "train-adam-uneven" + ("-compiled" if compiled else ""), out)
    assert res.returncode == 0, res.stdout + res.stderr
    got = np.load(out)
    assert bool(got["same_on_all_ranks"])
    X, y, _, _ = W.data()
    model, opt = W.make("adam", 0)
    batches = [(X[k: k + 12], y[k: k + 12]) for k in range(0, W.N_TRAIN, 12)]
    h = bg.fit(model, bg.nn.CrossEntropyLoss(), opt, batches, epochs=1, progress=False)
    _assert_params_close(got, W.params(model))
    np.testing.assert_allclose(got["loss"], h.loss, rtol=1e-5)


def _wait_all(res: subprocess.CompletedProcess) -> str:
    return res.stdout + res.stderr


@pytest.mark.parametrize("kind", ["raise", "nan", "shape", "shapeb", "midb"])
def test_an_exception_on_one_rank_is_raised_on_every_rank(tmp_path, kind):
    out = tmp_path / "f"
    t0 = time.perf_counter()
    res = mpirun(2, f"fail-{kind}", out, timeout=120)
    text = _wait_all(res)
    assert res.returncode == 0, text
    assert time.perf_counter() - t0 < 60
    for r in (0, 1):
        assert f"RANK {r} CAUGHT DistributedError" in text, text
        msg = (tmp_path / f"f.rank{r}").read_text()
        assert "1 of 2 ranks failed at optimizer step" in msg
        assert "rank 1: " + {"raise": "ValueError: rank one's loss exploded on purpose",
                             "nan": "FloatingPointError: loss is nan",
                             "shape": "ValueError: ", "shapeb": "ValueError: ",
                             "midb": "MemoryError: rank one ran out of memory in its backward"}[kind] in msg
    assert "FINISHED" not in text


def test_a_killed_rank_stops_the_job(tmp_path):
    t0 = time.perf_counter()
    res = mpirun(2, "fail-kill", tmp_path / "f", timeout=120)
    text = _wait_all(res)
    assert res.returncode != 0
    assert time.perf_counter() - t0 < 90, "the job should end when a rank dies, not hang"
    assert "signal 9" in text or "Killed" in text or "killed" in text, text
    assert "FINISHED" not in text


@pytest.mark.parametrize("shared", ["1", "0"])
def test_a_hung_rank_times_out_and_aborts_the_job(tmp_path, shared):
    t0 = time.perf_counter()
    res = mpirun(2, "fail-hang", tmp_path / "f", timeout=120, env={"WORKER_TIMEOUT": "3", "BATCHGRAD_MPI_SHARED": shared})
    text = _wait_all(res)
    assert res.returncode != 0
    assert time.perf_counter() - t0 < 60, "the collective should time out after 3 s"
    assert "rank 0/2:" in text and "did not complete within 3 s" in text, text
    how = "exchange through shared memory" if shared == "1" else "all-reduce"
    assert re.search(rf"gradient {how} \(step \d+\) of \d+ float32 values did not complete" if shared == "0"
                     else rf"gradient {how} \(step \d+\) did not complete", text), text
    assert "FINISHED" not in text


def test_an_exception_outside_a_step_aborts_the_job(tmp_path):
    res = mpirun(2, "fail-val", tmp_path / "f", timeout=120)
    text = _wait_all(res)
    assert res.returncode != 0
    assert "rank 1/2: fit raised OSError: rank one cannot read its validation shard; aborting the job" in text, text


def test_cli_train_under_mpirun(tmp_path):
    _need_mpi()
    e = dict(os.environ, BATCHGRAD_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    ck = tmp_path / "m.safetensors"
    res = subprocess.run(["mpirun", "-n", "2", "--oversubscribe", sys.executable, "-m", "batchgrad", "train",
                          "--epochs", "4", "--no-progress", "--save", str(ck)],
                         env=e, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    # one report, from rank 0
    assert res.stdout.count("test accuracy:") == 1, res.stdout
    assert "2 ranks" in res.stdout
    acc = float(res.stdout.split("test accuracy:")[1].split("%")[0])
    assert acc > 80
    assert ck.exists()


# ---- the 1-process world (no mpirun) -------------------------------------------------------


def test_one_process_world_without_mpirun():
    code = ("import os, sys; [os.environ.pop(k, None) for k in list(os.environ) if k.startswith(('OMPI_', 'PMI'))]\n"
            "import batchgrad as bg; w = bg.distributed.init(); print(w.rank, w.size, w.comm is None)\n"
            "print('mpi4py' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["0", "1", "True", "False"], res.stdout + res.stderr


def test_launched_without_mpi4py_says_how_to_fix():
    code = ("import os, sys; os.environ['OMPI_COMM_WORLD_SIZE'] = '2'; sys.modules['mpi4py'] = None\n"
            "import batchgrad as bg\n"
            "try:\n    bg.distributed.init()\nexcept bg.distributed.DistributedError as e:\n    print('ERR', e)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "ERR" in res.stdout and "pip install 'batchgrad[mpi]'" in res.stdout, res.stdout + res.stderr


def test_fit_distributed_in_a_one_process_world_is_plain_fit():
    X, y, _, _ = W.data()
    runs = []
    for distributed in (False, True):
        model, opt = W.make("adam", 0)
        loader = bg.data.DataLoader(bg.data.ArrayDataset(X, y), batch_size=8, shuffle=True, seed=1)
        h = bg.fit(model, bg.nn.CrossEntropyLoss(), opt, loader, epochs=2, progress=False, distributed=distributed)
        runs.append((W.params(model), h.loss))
    for k in runs[0][0]:
        np.testing.assert_array_equal(runs[0][0][k], runs[1][0][k])
    assert runs[0][1] == runs[1][1]


def test_init_and_fit_argument_errors():
    with pytest.raises(ValueError, match="timeout"):
        bg.distributed.init(timeout=0)
    with pytest.raises(ValueError, match="timeout"):
        bg.distributed.init(timeout=float("nan"))
    model, opt = W.make("adam", 0)
    with pytest.raises(ValueError, match="distributed=True runs on the CPU"):
        bg.fit(model, bg.nn.CrossEntropyLoss(), opt, [], distributed=True, device="gpu")
    with pytest.raises(ValueError, match="op must be"):
        bg.distributed.allreduce_(np.zeros(3, np.float32), op="prod")
    with pytest.raises(TypeError, match="C-contiguous"):
        bg.distributed.allreduce_(np.zeros((3, 4), np.float32)[:, 1])


def test_reducer_in_one_process():
    """The reducer's bookkeeping without MPI: a mean loss's scale is 1 / W = 1, stats pass through,
    an error is raised as a DistributedError chained to it, no batch anywhere ends the epoch."""
    red = bg.distributed.GradientReducer([(2, 3), (3,)], n_stats=2)
    g = [np.arange(6, dtype=np.float32).reshape(2, 3), None]
    st, total = red.reduce(lambda s, again: red.pack(g, s), 5, True, [1.5, 2.0])
    assert total == 5 and list(st) == [1.5, 2.0]
    np.testing.assert_array_equal(red.grads[0], g[0])
    np.testing.assert_array_equal(red.grads[1], np.zeros(3))
    red.pack([g[0], np.ones(3)], 0.5)
    np.testing.assert_array_equal(red.grads[1], np.full(3, 0.5))
    assert red.reduce(lambda s, again: None, 0, True, has_batch=False) is None
    with pytest.raises(bg.distributed.DistributedError, match="rank 0: KeyError") as ei:
        red.reduce(lambda s, again: None, 5, True, [0, 0], KeyError("x"))
    assert isinstance(ei.value.__cause__, KeyError)
