"""bg.fit / bg.evaluate: gradient accumulation, NaN guard, checkpoint resume, and the CLI."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import batchgrad as bg
from batchgrad import nn
from batchgrad.__main__ import main
from batchgrad.data import ArrayDataset, DataLoader


def _data(n, seed=0, d=5, c=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    W = np.random.default_rng(1234).standard_normal((d, c))  # the same task for every seed
    y = np.argmax(X @ W + 0.3 * rng.standard_normal((n, c)), axis=1).astype(np.int64)
    return X, y


def _loader(X, y, bs, shuffle=False, seed=0):
    return DataLoader(ArrayDataset(X, y), batch_size=bs, shuffle=shuffle, seed=seed, prefetch=0)


def _params(model):
    return [p.numpy().copy() for p in model.parameters()]


# ---- gradient accumulation -----------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n,b,k", [(12, 3, 4), (10, 3, 4), (14, 3, 2), (20, 4, 3), (9, 2, 1)])
def test_accumulation_equals_one_big_batch(n, b, k, reduction):
    """k micro-batches of b == one batch of k*b (also a smaller last micro-batch / group)."""
    X, y = _data(n)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    big = nn.MLP([5, 8, 3], seed=0)
    opt_big = bg.optim.SGD(big.parameters(), lr=0.05, momentum=0.9)
    h_big = bg.fit(big, loss_fn, opt_big, _loader(X, y, b * k), epochs=2, progress=False)
    small = nn.MLP([5, 8, 3], seed=0)
    opt_small = bg.optim.SGD(small.parameters(), lr=0.05, momentum=0.9)
    h_small = bg.fit(small, loss_fn, opt_small, _loader(X, y, b), epochs=2, accumulate=k, progress=False)
    assert h_big.steps == h_small.steps == 2 * -(-n // (b * k))
    # the last group's gradients are still there: they agree too
    for p, q in zip(big.parameters(), small.parameters()):
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-6, atol=1e-6)
    for p, q in zip(_params(big), _params(small)):
        np.testing.assert_allclose(q, p, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h_small.loss, h_big.loss, rtol=1e-6)
    np.testing.assert_allclose(h_small.train_loss, h_big.train_loss, rtol=1e-6)


def test_accumulation_with_function_loss_and_mse():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((11, 4)).astype(np.float32)
    Y = rng.standard_normal((11, 2)).astype(np.float32)
    runs = []
    for bs, k in ((11, 1), (2, 6)):
        m = nn.Linear(4, 2, seed=0)
        opt = bg.optim.Adam(m.parameters(), lr=0.01)
        bg.fit(m, bg.nn.functional.mse_loss, opt, DataLoader(ArrayDataset(X, Y), batch_size=bs), epochs=3,
               accumulate=k, progress=False)
        runs.append(_params(m))
    for p, q in zip(*runs):
        np.testing.assert_allclose(q, p, rtol=1e-5, atol=1e-6)


# ---- fit and evaluate ----------------------------------------------------------------------------

def test_fit_returns_history_and_loss_decreases():
    X, y = _data(200, seed=2)
    Xv, yv = _data(60, seed=3)
    model = nn.MLP([5, 16, 3], seed=0)
    opt = bg.optim.Adam(model.parameters(), lr=0.01)
    sched = bg.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    h = bg.fit(model, nn.CrossEntropyLoss(), opt, _loader(X, y, 32, shuffle=True), epochs=6,
               val_loader=_loader(Xv, yv, 50), progress=False, scheduler=sched)
    assert isinstance(h, bg.train.History)
    assert h.epochs == 6 and h.steps == 6 * 7 and len(h.loss) == h.steps
    assert len(h.val_loss) == len(h.val_accuracy) == len(h.train_accuracy) == 6
    assert h.train_loss[-1] < 0.7 * h.train_loss[0]
    assert h.val_loss[-1] < h.val_loss[0]
    assert 0.5 < h.val_accuracy[-1] <= 1.0
    assert h.lr == [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025]
    assert np.mean(h.loss[-7:]) < np.mean(h.loss[:7])
    assert model.training
    loss, acc = bg.evaluate(model, _loader(Xv, yv, 50), nn.CrossEntropyLoss())
    assert loss == pytest.approx(h.val_loss[-1]) and acc == h.val_accuracy[-1]
    assert set(h.as_dict()) >= {"loss", "train_loss", "val_loss", "val_accuracy"}


def test_evaluate_weights_uneven_batches_and_restores_mode():
    X, y = _data(23, seed=4)
    model = nn.MLP([5, 8, 3], seed=1)
    model.train()
    loss, acc = bg.evaluate(model, _loader(X, y, 10), nn.CrossEntropyLoss())
    out = model(X)
    assert loss == pytest.approx(nn.CrossEntropyLoss()(out, y).item(), rel=1e-6)
    assert acc == pytest.approx(np.mean(out.numpy().argmax(1) == y))
    loss_sum, _ = bg.evaluate(model, _loader(X, y, 10), nn.CrossEntropyLoss(reduction="sum"))
    assert loss_sum == pytest.approx(loss, rel=1e-6)
    assert model.training
    model.eval()
    assert bg.evaluate(model, _loader(X, y, 10))[0] is None
    assert not model.training
    # regression: no accuracy
    r = nn.Linear(5, 1, seed=0)
    _, acc = bg.evaluate(r, DataLoader(ArrayDataset(X, X[:, :1]), batch_size=8), nn.MSELoss())
    assert acc is None


def test_bce_binary_accuracy():
    X, y = _data(64, seed=5, c=2)
    yt = y.astype(np.float32).reshape(-1, 1)
    model = nn.MLP([5, 8, 1], seed=0)
    h = bg.fit(model, nn.BCEWithLogitsLoss(), bg.optim.Adam(model.parameters(), lr=0.02),
               DataLoader(ArrayDataset(X, yt), batch_size=16), epochs=20,
               val_loader=DataLoader(ArrayDataset(X, yt), batch_size=64), progress=False)
    assert h.val_accuracy[-1] > 0.8


def test_nan_loss_raises_before_the_step():
    X, y = _data(12)
    X_bad = X.copy()
    X_bad[6] = np.nan  # in the second batch of 4
    model = nn.MLP([5, 8, 3], seed=0)
    opt = bg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(FloatingPointError, match=r"nan at epoch 1, step 2\b"):
        bg.fit(model, nn.CrossEntropyLoss(), opt, _loader(X_bad, y, 4), epochs=1, progress=False)
    # exactly one good step was taken: same parameters as a run over the first batch only
    ref = nn.MLP([5, 8, 3], seed=0)
    bg.fit(ref, nn.CrossEntropyLoss(), bg.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9),
           _loader(X[:4], y[:4], 4), epochs=1, progress=False)
    for p, q in zip(_params(model), _params(ref)):
        np.testing.assert_array_equal(p, q)
    assert all(p.grad is None for p in model.parameters())


def test_nan_in_a_later_micro_batch_leaves_parameters_untouched():
    X, y = _data(8)
    X_bad = X.copy()
    X_bad[5, 0] = np.inf
    model = nn.MLP([5, 8, 3], seed=0)
    before = _params(model)
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 1 .*micro-batch 2 of 2"):
        bg.fit(model, nn.CrossEntropyLoss(), bg.optim.Adam(model.parameters()), _loader(X_bad, y, 4),
               epochs=1, accumulate=2, progress=False, start_epoch=1)
    for p, q in zip(before, _params(model)):
        np.testing.assert_array_equal(p, q)


def test_fit_validation():
    X, y = _data(8)
    model = nn.MLP([5, 3], seed=0)
    opt = bg.optim.SGD(model.parameters(), lr=0.1)
    loader = _loader(X, y, 4)
    with pytest.raises(ValueError, match="accumulate"):
        bg.fit(model, nn.CrossEntropyLoss(), opt, loader, accumulate=0, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        bg.fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=-1, progress=False)
    with pytest.raises(ValueError, match="reduction"):
        bg.fit(model, nn.CrossEntropyLoss(reduction="none"), opt, loader, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(ArrayDataset(X, y), batch_size=0)
    with pytest.raises(ValueError, match="learning rate"):
        bg.optim.SGD(model.parameters(), lr=0)
    with pytest.raises(TypeError, match="pairs"):
        bg.fit(model, nn.CrossEntropyLoss(), opt, [(X,)], progress=False)


# ---- checkpoint resume ---------------------------------------------------------------------------

def _setup(seed):
    X, y = _data(50, seed=7)
    model = nn.MLP([5, 16, 3], seed=seed)
    opt = bg.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    sched = bg.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    loader = _loader(X, y, 8, shuffle=True, seed=11)
    return model, opt, sched, loader


@pytest.mark.parametrize("use_start_epoch", [True, False])
def test_resume_from_checkpoint_is_bit_exact(tmp_path, use_start_epoch):
    loss_fn = nn.CrossEntropyLoss()
    # uninterrupted: 4 epochs
    m1, o1, s1, l1 = _setup(0)
    h1 = bg.fit(m1, loss_fn, o1, l1, epochs=4, accumulate=2, scheduler=s1, progress=False, start_epoch=0)
    # interrupted after 2 epochs, checkpointed
    m2, o2, s2, l2 = _setup(0)
    bg.fit(m2, loss_fn, o2, l2, epochs=2, accumulate=2, scheduler=s2, progress=False, start_epoch=0)
    path = tmp_path / "ckpt.safetensors"
    bg.save({"model": m2.state_dict(), "optimizer": o2.state_dict(), "scheduler": s2.state_dict(), "epoch": 2}, path)
    del m2, o2, s2, l2
    # resumed in fresh objects (a different init, to be sure everything comes from the file)
    m3, o3, s3, l3 = _setup(123)
    ck = bg.load(path)
    m3.load_state_dict(ck["model"])
    o3.load_state_dict(ck["optimizer"])
    s3.load_state_dict(ck["scheduler"])
    if use_start_epoch:
        h3 = bg.fit(m3, loss_fn, o3, l3, epochs=2, accumulate=2, scheduler=s3, progress=False, start_epoch=ck["epoch"])
    else:
        l3.set_epoch(ck["epoch"])
        h3 = bg.fit(m3, loss_fn, o3, l3, epochs=2, accumulate=2, scheduler=s3, progress=False)
    for p, q in zip(_params(m1), _params(m3)):
        np.testing.assert_array_equal(p, q)
    assert h3.loss == h1.loss[-len(h3.loss):]
    assert s3.get_last_lr() == s1.get_last_lr()
    st1, st3 = o1.state_dict()["state"], o3.state_dict()["state"]
    for i in st1:
        for k in st1[i]:
            np.testing.assert_array_equal(st1[i][k], st3[i][k])


# ---- CLI -----------------------------------------------------------------------------------------

ACC = re.compile(r"test accuracy: (\d+\.\d)% \((\d+)/(\d+)\)")


def test_cli_short_run_prints_accuracy(capsys):
    assert main(["train", "--epochs", "2", "--no-progress", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    m = ACC.search(out)
    assert m, out
    assert int(m.group(3)) == 360 and float(m.group(1)) > 80


def test_cli_default_config_reaches_95_percent(capsys):
    assert main(["train", "--no-progress"]) == 0
    out = capsys.readouterr().out
    acc = float(ACC.search(out).group(1))
    assert acc >= 95.0, out


def test_cli_progress_bar_shows_running_loss(capsys):
    assert main(["train", "--epochs", "1", "--batch-size", "64"]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad"])
def test_cli_optimizers(opt, capsys):
    assert main(["train", "--optimizer", opt, "--epochs", "1", "--accumulate", "2", "--no-progress",
                 "--threads", "1"]) == 0
    assert ACC.search(capsys.readouterr().out)


def test_cli_data_plot_and_save(tmp_path, capsys):
    X, y = _data(100, seed=8, d=6, c=4)
    data = tmp_path / "d.npz"
    np.savez(data, X=X, y=y)
    png, ck = tmp_path / "loss.png", tmp_path / "model.safetensors"
    assert main(["train", "--data", str(data), "--epochs", "3", "--hidden", "16,8", "--no-progress",
                 "--plot", str(png), "--save", str(ck), "--schedule", "none"]) == 0
    out = capsys.readouterr().out
    assert "MLP 6-16-8-4" in out
    m = ACC.search(out)
    assert int(m.group(3)) == 20
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = bg.load(ck)
    model = nn.MLP(state["sizes"])
    model.load_state_dict(state["model"])
    np.savez(data, X_train=X[:80], y_train=y[:80], X_test=X[80:], y_test=y[80:])
    assert main(["train", "--data", str(data), "--epochs", "1", "--no-progress"]) == 0
    assert "(" in ACC.search(capsys.readouterr().out).group(0)


def test_cli_plot_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    png = tmp_path / "x.png"
    assert main(["train", "--epochs", "1", "--no-progress", "--plot", str(png)]) == 0
    cap = capsys.readouterr()
    assert "matplotlib is not installed" in cap.err
    assert not png.exists() and ACC.search(cap.out)


def test_cli_bad_arguments(tmp_path, capsys):
    for argv in (["train", "--batch-size", "0"], ["train", "--lr", "-1"], ["train", "--lr", "abc"],
                 ["train", "--optimizer", "lbfgs"], ["train", "--epochs", "-2"], ["train", "--threads", "100000"],
                 ["train", "--threads", "0"], [], ["nope"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    capsys.readouterr()
    bad = tmp_path / "bad.npz"
    np.savez(bad, A=np.zeros(3))
    assert main(["train", "--data", str(bad), "--no-progress"]) == 2
    assert "expected arrays X_train" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing.npz")]) == 2


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "batchgrad", "train", "--epochs", "1", "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert ACC.search(r.stdout)
