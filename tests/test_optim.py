"""Optimizers and LR schedulers: fused Rust updates vs hand-written numpy and vs torch.optim."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import batchgrad as bg
from batchgrad import optim
from batchgrad.nn import Parameter
from batchgrad.optim import lr_scheduler

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

SHAPES = [(3, 4), (4,)]
STEPS = 3


def _init():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _grads():
    rng = np.random.default_rng(1)
    # the last gradient is small so that amsgrad's running max matters
    return [[(rng.standard_normal(s) * (0.01 if k == STEPS - 1 else 1.0)).astype(np.float32) for s in SHAPES]
            for k in range(STEPS)]


def run_bg(cls, kw, steps=STEPS):
    ps = [Parameter(p) for p in _init()]
    opt = cls(ps, **kw)
    for gs in _grads()[:steps]:
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
    return [p.numpy().copy() for p in ps], opt


def run_torch(name, kw, steps=STEPS):
    ps = [torch.tensor(p, requires_grad=True) for p in _init()]
    opt = getattr(torch.optim, name)(ps, **kw)
    for gs in _grads()[:steps]:
        for p, g in zip(ps, gs):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy().copy() for p in ps], opt


# ---- float64 numpy references (the update rules as documented by PyTorch) -----------------------

def ref_sgd(lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False):
    ps = [p.astype(np.float64) for p in _init()]
    bufs = [None] * len(ps)
    for gs in _grads():
        for i, g in enumerate(gs):
            g = -g.astype(np.float64) if maximize else g.astype(np.float64)
            g = g + weight_decay * ps[i]
            if momentum:
                bufs[i] = g.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * g
                g = g + momentum * bufs[i] if nesterov else bufs[i]
            ps[i] = ps[i] - lr * g
    return ps


def ref_adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False, decoupled=False):
    b1, b2 = betas
    ps = [p.astype(np.float64) for p in _init()]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    vmax = [np.zeros_like(p) for p in ps]
    for t, gs in enumerate(_grads(), start=1):
        for i, g in enumerate(gs):
            g = -g.astype(np.float64) if maximize else g.astype(np.float64)
            if decoupled:
                ps[i] = ps[i] * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * ps[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            vmax[i] = np.maximum(vmax[i], v[i])
            vv = vmax[i] if amsgrad else v[i]
            denom = np.sqrt(vv) / math.sqrt(1 - b2**t) + eps
            ps[i] = ps[i] - lr / (1 - b1**t) * m[i] / denom
    return ps


def ref_rmsprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False):
    ps = [p.astype(np.float64) for p in _init()]
    sq = [np.zeros_like(p) for p in ps]
    ga = [np.zeros_like(p) for p in ps]
    buf = [np.zeros_like(p) for p in ps]
    for gs in _grads():
        for i, g in enumerate(gs):
            g = -g.astype(np.float64) if maximize else g.astype(np.float64)
            g = g + weight_decay * ps[i]
            sq[i] = alpha * sq[i] + (1 - alpha) * g * g
            if centered:
                ga[i] = alpha * ga[i] + (1 - alpha) * g
                avg = np.sqrt(sq[i] - ga[i] ** 2) + eps
            else:
                avg = np.sqrt(sq[i]) + eps
            if momentum > 0:
                buf[i] = momentum * buf[i] + g / avg
                ps[i] = ps[i] - lr * buf[i]
            else:
                ps[i] = ps[i] - lr * g / avg
    return ps


def ref_adagrad(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, maximize=False):
    ps = [p.astype(np.float64) for p in _init()]
    s = [np.full_like(p, initial_accumulator_value) for p in ps]
    for t, gs in enumerate(_grads(), start=1):
        clr = lr / (1 + (t - 1) * lr_decay)
        for i, g in enumerate(gs):
            g = -g.astype(np.float64) if maximize else g.astype(np.float64)
            g = g + weight_decay * ps[i]
            s[i] = s[i] + g * g
            ps[i] = ps[i] - clr * g / (np.sqrt(s[i]) + eps)
    return ps


CASES = [
    ("SGD", optim.SGD, ref_sgd, dict(lr=0.1)),
    ("SGD", optim.SGD, ref_sgd, dict(lr=0.1, weight_decay=0.05, maximize=True)),
    ("SGD", optim.SGD, ref_sgd, dict(lr=0.1, momentum=0.9)),
    ("SGD", optim.SGD, ref_sgd, dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", optim.SGD, ref_sgd, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01, maximize=True)),
    ("Adam", optim.Adam, ref_adam, dict(lr=0.01)),
    ("Adam", optim.Adam, ref_adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("Adam", optim.Adam, ref_adam, dict(lr=0.01, amsgrad=True)),
    ("Adam", optim.Adam, ref_adam, dict(lr=0.01, amsgrad=True, weight_decay=0.01, maximize=True)),
    ("AdamW", optim.AdamW, lambda **k: ref_adam(decoupled=True, **{"weight_decay": 1e-2, **k}), dict(lr=0.01)),
    ("AdamW", optim.AdamW, lambda **k: ref_adam(decoupled=True, **k), dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", optim.RMSprop, ref_rmsprop, dict(lr=0.01)),
    ("RMSprop", optim.RMSprop, ref_rmsprop, dict(lr=0.01, alpha=0.9, weight_decay=0.01)),
    ("RMSprop", optim.RMSprop, ref_rmsprop, dict(lr=0.01, momentum=0.9)),
    ("RMSprop", optim.RMSprop, ref_rmsprop, dict(lr=0.01, centered=True)),
    ("RMSprop", optim.RMSprop, ref_rmsprop, dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01, maximize=True)),
    ("Adagrad", optim.Adagrad, ref_adagrad, dict(lr=0.1)),
    ("Adagrad", optim.Adagrad, ref_adagrad, dict(lr=0.1, lr_decay=0.1, weight_decay=0.01, initial_accumulator_value=0.1)),
    ("Adagrad", optim.Adagrad, ref_adagrad, dict(lr=0.1, eps=1e-6, maximize=True)),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, _, _, kw in CASES]


@pytest.mark.parametrize("name,cls,ref,kw", CASES, ids=IDS)
def test_matches_numpy_reference(name, cls, ref, kw):
    got, _ = run_bg(cls, kw)
    want = ref(**kw)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@needs_torch
@pytest.mark.parametrize("name,cls,ref,kw", CASES, ids=IDS)
def test_matches_torch(name, cls, ref, kw):
    got, opt = run_bg(cls, kw)
    want, topt = run_torch(name, kw)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    # the state buffers agree too, under torch's names (looser: centered RMSprop amplifies rounding)
    ours = opt.state_dict()["state"]
    theirs = topt.state_dict()["state"]
    assert set(ours) == set(theirs)
    for i in ours:
        for k, v in ours[i].items():
            tv = theirs[i][k]
            if k == "step":
                assert v == int(tv)
            else:
                np.testing.assert_allclose(v, tv.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"state {k} of param {i}")


def test_update_goes_through_kernel_in_place():
    p = Parameter(np.ones(3, np.float32))
    opt = optim.SGD([p], lr=0.5, momentum=0.9)
    p.grad = np.array([1.0, 2.0, 3.0], np.float32)
    opt.step()
    np.testing.assert_array_equal(p.numpy(), [0.5, 0.0, -0.5])
    buf = opt.state[p]["momentum_buffer"]
    assert isinstance(buf, bg.Tensor)
    np.testing.assert_array_equal(buf.numpy(), [1.0, 2.0, 3.0])
    assert p.is_leaf and p.requires_grad


def test_params_without_grad_are_skipped():
    a, b = Parameter(np.ones(2, np.float32)), Parameter(np.ones(2, np.float32))
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = np.ones(2, np.float32)
    opt.step()
    np.testing.assert_array_equal(b.numpy(), [1.0, 1.0])
    assert b not in opt.state and opt.state[a]["step"] == 1
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    opt.step()  # nothing has a gradient: a no-op
    assert opt.state[a]["step"] == 1


@needs_torch
@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01)),
                                     ("Adagrad", dict(lr=0.1, lr_decay=0.5)), ("RMSprop", dict(lr=0.01, centered=True))])
def test_params_at_different_step_counts_match_torch(name, kw):
    # param 1 has no gradient on the first step, so the two params are at different steps
    ps = [Parameter(p) for p in _init()]
    tps = [torch.tensor(p, requires_grad=True) for p in _init()]
    opt = getattr(optim, name)(ps, **kw)
    topt = getattr(torch.optim, name)(tps, **kw)
    for k, gs in enumerate(_grads()):
        for i, g in enumerate(gs):
            keep = not (k == 0 and i == 1)
            ps[i].grad = g if keep else None
            tps[i].grad = torch.tensor(g) if keep else None
        opt.step()
        topt.step()
    for p, t in zip(ps, tps):
        np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=1e-6, atol=1e-6)


@needs_torch
def test_param_groups_with_different_lr_match_torch():
    p0 = _init()
    ps = [Parameter(p) for p in p0]
    tps = [torch.tensor(p, requires_grad=True) for p in p0]
    opt = optim.SGD([{"params": [ps[0]], "lr": 0.5}, {"params": [ps[1]]}], lr=0.01, momentum=0.9)
    topt = torch.optim.SGD([{"params": [tps[0]], "lr": 0.5}, {"params": [tps[1]]}], lr=0.01, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.01]
    assert opt.param_groups[1]["momentum"] == 0.9
    for gs in _grads():
        for p, tp, g in zip(ps, tps, gs):
            p.grad, tp.grad = g, torch.tensor(g)
        opt.step()
        topt.step()
    for p, t in zip(ps, tps):
        np.testing.assert_allclose(p.numpy(), t.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_add_param_group():
    a, b = Parameter(np.zeros(2, np.float32)), Parameter(np.zeros(3, np.float32))
    opt = optim.Adam([a], lr=0.1, betas=(0.8, 0.9))
    opt.add_param_group({"params": b, "lr": 0.2})
    assert opt.param_groups[1]["lr"] == 0.2 and opt.param_groups[1]["betas"] == (0.8, 0.9)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(ValueError, match="learning rate"):
        opt.add_param_group({"params": [Parameter(np.zeros(1))], "lr": -1.0})


@pytest.mark.parametrize("cls,kw", [
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (optim.SGD, dict(lr=0.1)),
    (optim.Adam, dict(lr=0.01, amsgrad=True)),
    (optim.AdamW, dict(lr=0.01)),
    (optim.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    (optim.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.5)),
])
def test_state_dict_round_trip_continues_exactly(cls, kw, tmp_path):
    grads = _grads() * 2
    ps = [Parameter(p) for p in _init()]
    opt = cls(ps, **kw)
    for gs in grads[:3]:
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
    bg.save({"params": [p.numpy() for p in ps], "opt": opt.state_dict()}, tmp_path / "ckpt.safetensors")
    ck = bg.load(tmp_path / "ckpt.safetensors")
    ps2 = [Parameter(p) for p in ck["params"]]
    opt2 = cls(ps2, lr=1.0)  # hyperparameters come back from the state dict
    opt2.load_state_dict(ck["opt"])
    assert opt2.param_groups[0]["lr"] == kw["lr"]
    for gs in grads[3:]:
        for p, p2, g in zip(ps, ps2, gs):
            p.grad = g
            p2.grad = g
        opt.step()
        opt2.step()
    for p, p2 in zip(ps, ps2):
        np.testing.assert_array_equal(p.numpy(), p2.numpy())
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for i in s1["state"]:
        for k, v in s1["state"][i].items():
            np.testing.assert_array_equal(v, s2["state"][i][k])


def test_state_dict_is_a_snapshot_and_numbers_params_in_group_order():
    a, b, c = (Parameter(np.zeros(2, np.float32)) for _ in range(3))
    opt = optim.Adam([{"params": [a, b]}, {"params": [c], "lr": 0.5}], lr=0.1)
    for p in (a, b, c):
        p.grad = np.ones(2, np.float32)
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sd["state"][2]["step"] == 1
    before = sd["state"][0]["exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], before)


def test_load_state_dict_validates():
    a = Parameter(np.zeros(2, np.float32))
    opt = optim.Adam([a], lr=0.1)
    a.grad = np.ones(2, np.float32)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="parameter groups"):
        optim.Adam([{"params": [Parameter(np.zeros(2))]}, {"params": [Parameter(np.zeros(2))]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match="has 1 parameters"):
        optim.Adam([Parameter(np.zeros(2)), Parameter(np.zeros(2))]).load_state_dict(sd)
    with pytest.raises(ValueError, match="shape"):
        optim.Adam([Parameter(np.zeros(3))]).load_state_dict(sd)


@pytest.mark.parametrize("make,match", [
    (lambda p: optim.SGD(p, lr=0.0), "learning rate: 0.0"),
    (lambda p: optim.SGD(p, lr=-0.1), "learning rate: -0.1"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), "momentum value: -0.5"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "Nesterov"),
    (lambda p: optim.SGD(p, lr=0.1, weight_decay=-1), "weight_decay"),
    (lambda p: optim.Adam(p, lr=-1e-3), "learning rate: -0.001"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.999)), "beta parameter at index 0: 1.0"),
    (lambda p: optim.Adam(p, betas=(0.9, -0.1)), "beta parameter at index 1: -0.1"),
    (lambda p: optim.AdamW(p, eps=-1.0), "epsilon"),
    (lambda p: optim.RMSprop(p, momentum=-0.1), "momentum value: -0.1"),
    (lambda p: optim.RMSprop(p, alpha=-0.1), "alpha"),
    (lambda p: optim.Adagrad(p, lr_decay=-0.1), "lr_decay"),
    (lambda p: optim.Adagrad(p, initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (lambda p: optim.SGD([], lr=0.1), "empty parameter list"),
    (lambda p: optim.SGD(p + p, lr=0.1), "more than one parameter group"),
])
def test_invalid_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make([Parameter(np.zeros(2, np.float32))])


def test_bad_params_raise():
    x = bg.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError):
        optim.SGD(x, lr=0.1)  # a bare tensor, not an iterable of them
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([x * 2], lr=0.1)
    with pytest.raises(TypeError):
        optim.SGD([np.zeros(2)], lr=0.1)


def test_closure_and_generator_params():
    model = bg.nn.Linear(2, 1, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.1)  # a generator is fine
    assert len(opt.param_groups[0]["params"]) == 2
    x = bg.tensor([[1.0, 2.0]])

    def closure():
        opt.zero_grad()
        loss = model(x).sum()
        loss.backward()
        return loss

    w0 = model.weight.numpy().copy()
    loss = opt.step(closure)
    assert isinstance(loss, bg.Tensor)
    np.testing.assert_allclose(model.weight.numpy(), w0 - 0.1 * np.array([[1.0], [2.0]]), rtol=1e-6)


def test_zero_grad_set_to_zeros():
    p = Parameter(np.ones(2, np.float32))
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.ones(2, np.float32)
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad.numpy(), [0.0, 0.0])
    opt.zero_grad()
    assert p.grad is None


# ---- LR schedulers -------------------------------------------------------------------------------

SCHEDULES = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=5, eta_min=0.001)),
    ("CosineAnnealingLR", dict(T_max=4)),
    ("LinearLR", dict(start_factor=0.25, total_iters=4)),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.1, total_iters=3)),
]


def _sched_lrs(mod, opt_cls, p, name, kw, n=15):
    opt = opt_cls([{"params": [p[0]], "lr": 0.1}, {"params": [p[1]], "lr": 0.02}], lr=0.1)
    sched = getattr(mod, name)(opt, **kw)
    out = [sched.get_last_lr()]
    for _ in range(n):
        opt.step()
        sched.step()
        out.append(sched.get_last_lr())
        assert out[-1] == [g["lr"] for g in opt.param_groups]
    return out


@needs_torch
@pytest.mark.parametrize("name,kw", SCHEDULES)
def test_schedulers_match_torch(name, kw):
    import warnings

    ours = _sched_lrs(lr_scheduler, optim.SGD, [Parameter(np.zeros(1)), Parameter(np.zeros(1))], name, kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _sched_lrs(torch.optim.lr_scheduler, torch.optim.SGD,
                            [torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)], name, kw)
    np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-12, atol=0)


def test_scheduler_closed_forms():
    p = Parameter(np.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    s = lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    lrs = [s.get_last_lr()[0]]
    for _ in range(5):
        s.step()
        lrs.append(s.get_last_lr()[0])
    np.testing.assert_allclose(lrs, [1, 1, 0.1, 0.1, 0.01, 0.01])
    opt = optim.SGD([p], lr=1.0)
    s = lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    for t in range(1, 5):
        s.step()
        assert s.get_last_lr()[0] == pytest.approx((1 + math.cos(math.pi * t / 4)) / 2, abs=1e-12)
    opt = optim.SGD([p], lr=1.0)
    s = lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=2)
    got = [s.get_last_lr()[0]]
    for _ in range(3):
        s.step()
        got.append(s.get_last_lr()[0])
    np.testing.assert_allclose(got, [0.5, 0.75, 1.0, 1.0])


def test_scheduler_state_dict_round_trip():
    def make():
        opt = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
        return opt, lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=0.01)

    opt, s = make()
    for _ in range(4):
        s.step()
    opt2, s2 = make()
    s2.load_state_dict(s.state_dict())
    opt2.load_state_dict(opt.state_dict())
    for _ in range(5):
        s.step()
        s2.step()
        assert s.get_last_lr() == s2.get_last_lr()
    assert "optimizer" not in s.state_dict()


def test_scheduler_validation():
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError):
        lr_scheduler.StepLR(opt, step_size=0)
    with pytest.raises(ValueError):
        lr_scheduler.LinearLR(opt, start_factor=0.0)
    with pytest.raises(ValueError):
        lr_scheduler.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(TypeError):
        lr_scheduler.StepLR(object(), step_size=1)
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(optim.SGD([Parameter(np.zeros(1))], lr=0.1), step_size=1, last_epoch=3)


# ---- gradient clipping ---------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("max_norm,norm_type", [(1.0, 2.0), (100.0, 2.0), (0.5, 1.0), (0.1, math.inf), (0.3, 3.0)])
def test_clip_grad_norm_matches_torch(max_norm, norm_type):
    gs = _grads()[0]
    ps = [Parameter(p) for p in _init()]
    tps = [torch.tensor(p, requires_grad=True) for p in _init()]
    for p, tp, g in zip(ps, tps, gs):
        p.grad, tp.grad = g, torch.tensor(g)
    total = bg.nn.utils.clip_grad_norm_(ps, max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tps, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(float(ttotal), rel=1e-6)
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_clip_grad_norm_semantics():
    a, b, c = Parameter(np.zeros(2)), Parameter(np.zeros(1)), Parameter(np.zeros(3))
    a.grad = np.array([3.0, 0.0], np.float32)
    b.grad = np.array([4.0], np.float32)
    total = bg.nn.utils.clip_grad_norm_([a, b, c], max_norm=1.0)  # c has no grad: ignored
    assert total == pytest.approx(5.0)
    np.testing.assert_allclose(a.grad.numpy(), [3.0 / (5 + 1e-6), 0.0], rtol=1e-6)
    np.testing.assert_allclose(b.grad.numpy(), [4.0 / (5 + 1e-6)], rtol=1e-6)
    assert c.grad is None
    # below the threshold: untouched
    a.grad = np.array([0.3, 0.4], np.float32)
    assert bg.nn.utils.clip_grad_norm_(a, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(a.grad.numpy(), np.array([0.3, 0.4], np.float32))
    a.grad = np.array([np.nan, 1.0], np.float32)
    with pytest.raises(RuntimeError, match="non-finite"):
        bg.nn.utils.clip_grad_norm_(a, 1.0, error_if_nonfinite=True)


def test_optimizer_updates_are_the_same_bits_at_every_simd_level():
    """The update loops (every RMSprop buffer combination included) are compiled per instruction set (AVX-512 / AVX2 / baseline, picked at
    run time); every level must give the same bits (BATCHGRAD_NO_SIMD forces the baseline)."""
    import subprocess
    import sys

    code = r'''
import numpy as np, batchgrad as bg, sys
r = np.random.default_rng(0)
mk = [lambda p: bg.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
      lambda p: bg.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1, maximize=True),
      lambda p: bg.optim.Adam(p, lr=1e-3), lambda p: bg.optim.AdamW(p, lr=1e-3, weight_decay=0.1),
      lambda p: bg.optim.Adam(p, lr=1e-3, betas=(0.3, 0.999), amsgrad=True, weight_decay=0.01, maximize=True),
      lambda p: bg.optim.RMSprop(p, lr=1e-3), lambda p: bg.optim.RMSprop(p, lr=1e-3, momentum=0.5),
      lambda p: bg.optim.RMSprop(p, lr=1e-3, centered=True, maximize=True),
      lambda p: bg.optim.RMSprop(p, lr=1e-3, centered=True, momentum=0.5, weight_decay=0.01),
      lambda p: bg.optim.Adagrad(p, lr=0.1, lr_decay=0.01, weight_decay=0.01)]
out = []
for f in mk:
    p = bg.tensor(r.normal(size=(1001,)).astype(np.float32), requires_grad=True)
    o = f([p])
    for i in range(4):
        p.grad = bg.tensor(r.normal(size=(1001,)).astype(np.float32) * 10.0 ** (i - 2))
        o.step()
    out.append(p.numpy())
sys.stdout.write(np.concatenate(out).tobytes().hex())
'''
    env = {k: v for k, v in os.environ.items() if k != "BATCHGRAD_NO_SIMD"}
    fast = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    base = subprocess.run([sys.executable, "-c", code], env=dict(env, BATCHGRAD_NO_SIMD="1"), capture_output=True,
                          text=True, check=True).stdout
    assert len(fast) > 1000 and fast == base
