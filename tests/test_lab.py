"""The minibatch lab (`batchgrad lab`, `bg.lab`): the numbers each experiment measures, with tiny
(`quick=True`) settings; the pictures are only checked to be written."""

import os
import shutil

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import batchgrad as bg  # noqa: E402
from batchgrad.__main__ import main  # noqa: E402

X = np.array([2.0, 4.0, -1.0, 5.0])
Y = np.array([4.0, 9.0, -2.0, 15.0])


def _written(res, *names):
    files = {os.path.basename(f): f for f in res["files"]}
    for n in names:
        assert n in files, f"{n} not among {sorted(files)}"
        assert os.path.getsize(files[n]) > 0


def test_regression_minimisers_are_the_closed_forms(tmp_path):
    res = bg.lab.regression(out=tmp_path, quick=True, verbose=False)
    m = res["minimisers"]
    # w* = sum(x y) / sum(x^2): 121/46 for all four examples, 44/20 for B1 = {1, 2}, 77/26 for B2 = {3, 4}
    for key, idx, expect in [("L (all)", slice(None), 121 / 46), ("L' (B1)", slice(0, 2), 44 / 20), ("L'' (B2)", slice(2, 4), 77 / 26)]:
        closed = np.sum(X[idx] * Y[idx]) / np.sum(X[idx] ** 2)
        assert closed == pytest.approx(expect)
        assert m[key]["closed_form"] == pytest.approx(closed, rel=1e-12)
        assert m[key]["batchgrad"] == pytest.approx(closed, rel=1e-5)  # Newton step with bg.grad of bg.grad
    _written(res, "regression.png", "regression.md")


def test_regression_steps_are_hand_computed_gradient_steps(tmp_path):
    res = bg.lab.regression(out=tmp_path, quick=True, verbose=False)
    lr, w0 = res["lr"], res["w0"]
    # full-batch gradient descent: dL/dw = sum_n -2 x_n (y_n - x_n w)
    w = w0
    for row in res["gd"][:3]:
        g = np.sum(-2 * X * (Y - X * w))
        assert row["batch"] == "all"
        assert row["w"] == pytest.approx(w, rel=1e-5, abs=1e-6)
        assert row["grad"] == pytest.approx(g, rel=1e-5)
        assert row["batch_loss"] == pytest.approx(np.sum((Y - X * w) ** 2), rel=1e-5)
        w = w - lr * g
        assert row["w_next"] == pytest.approx(w, rel=1e-5)
    # minibatch descent alternates B1 = {1, 2} and B2 = {3, 4}
    w = w0
    for t, row in enumerate(res["minibatch"][:4]):
        idx = slice(0, 2) if t % 2 == 0 else slice(2, 4)
        assert row["batch"] == ("B1" if t % 2 == 0 else "B2")
        g = np.sum(-2 * X[idx] * (Y[idx] - X[idx] * w))
        assert row["grad"] == pytest.approx(g, rel=1e-5)
        assert row["full_loss"] == pytest.approx(np.sum((Y - X * w) ** 2), rel=1e-5)
        w = w - lr * g
        assert row["w_next"] == pytest.approx(w, rel=1e-5)
    assert w0 == 0 and res["minibatch"][0]["w_next"] == pytest.approx(lr * 2 * 44)  # -lr * dL'/dw(0) = 88 lr
    a, b = res["cycle"]
    assert a < 121 / 46 < b  # the 2-cycle of minibatch descent brackets the full minimiser


def test_noise_follows_the_1_over_B_law_without_replacement(tmp_path):
    res = bg.lab.noise(out=tmp_path, quick=True, verbose=False)
    assert -1.2 <= res["slope_small_B"] <= -0.8
    B = np.array(res["batch_sizes"], float)
    N = res["N"]
    meas = np.array(res["measured"])
    fpc = res["sigma2"] / B * (N - B) / (N - 1)
    np.testing.assert_allclose(res["fpc_law"], fpc, rtol=1e-12)
    np.testing.assert_allclose(meas, fpc, rtol=0.15)  # the finite-population-corrected law
    # near B = N the plain 1/B law is clearly too large, the corrected one is not
    assert meas[-1] < 0.6 * res["sigma2"] / B[-1]
    _written(res, "noise.png", "noise.md")


def test_accumulation_is_exact(tmp_path):
    res = bg.lab.accumulate(out=tmp_path, quick=True, verbose=False)
    assert res["moved"] > 1e-2  # the parameters did move, so the comparison means something
    assert res["max_abs_diff"] <= 1e-6
    assert set(res["diffs"]) == {"accumulated", "bg.fit(accumulate=k)"}
    assert all(t["step_ms"] > 0 for t in res["timing"])
    _written(res, "accumulate.png", "accumulate.md")


def test_throughput_quick(tmp_path):
    res = bg.lab.throughput(out=tmp_path, quick=True, batch_sizes=[1, 8, 64], verbose=False)
    assert res["batch_sizes"] == [1, 8, 64]
    for th in (1, 2):
        r = res["threads"][th]
        assert len(r["examples_per_s"]) == 3 and all(v > 0 for v in r["examples_per_s"])
        assert res["saturation"][th] in (1, 8, 64)
    assert bg.get_num_threads() >= 1
    if res["gpu"] is None:
        assert "no GPU adapter" in (tmp_path / "throughput.md").read_text()
    else:  # a GPU curve labelled with the adapter's name
        assert res["gpu"] in (tmp_path / "throughput.md").read_text()
        assert len(res["threads"]["gpu"]["examples_per_s"]) == 3
    _written(res, "throughput.png", "throughput.md")


def test_batchsize_quick(tmp_path):
    res = bg.lab.batchsize(out=tmp_path, quick=True, verbose=False)
    for mode in ("fixed", "scaled"):
        rows = res["summary"][mode]
        assert [r["batch"] for r in rows] == res["batch_sizes"]
        assert all(np.isfinite(r["train_loss"]) and 0 <= r["test_acc"] <= 1 for r in rows)
    # at a fixed learning rate and few epochs the full batch (fewest steps) is the least trained
    fixed = res["summary"]["fixed"]
    assert fixed[0]["train_loss"] < fixed[-1]["train_loss"]
    _written(res, "batchsize.png", "batchsize.md")


def test_graph_quick(tmp_path):
    res = bg.lab.graph(out=tmp_path, quick=True, verbose=False)
    sizes = res["sizes"]
    assert len({s["batched_ops"] for s in sizes}) == 1  # the batched graph does not grow with B
    assert [s["replicated_matmuls"] for s in sizes] == [2 * s["B"] for s in sizes]
    assert all(s["batched_matmuls"] == 2 for s in sizes)
    assert all(s["grad_max_abs_diff"] < 1e-5 for s in sizes)
    if shutil.which("dot"):
        _written(res, "graphs.png", "graphs.svg", "graph.md")
        assert (tmp_path / "graphs.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    else:
        _written(res, "graphs.png.dot", "graphs.svg.dot", "graph.md")


def test_cli_lab_regression_and_all(tmp_path, capsys):
    assert main(["lab", "regression", "--out", str(tmp_path / "r"), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "closed form" in out and "2.630435" in out
    assert (tmp_path / "r" / "regression.png").exists() and (tmp_path / "r" / "regression.md").exists()
    assert main(["lab", "all", "--out", str(tmp_path / "a"), "--quick", "--seed", "1"]) == 0
    report = (tmp_path / "a" / "report.md").read_text()
    for name in bg.lab.EXPERIMENTS:
        assert (tmp_path / "a" / f"{name}.md").exists()
    assert "## noise" in report and "## regression" in report


def test_unknown_experiment():
    with pytest.raises(ValueError, match="unknown lab experiment"):
        bg.lab.run("nope")
    with pytest.raises(SystemExit):
        main(["lab", "nope"])
