"""bg.nn: modules, parameters, state dicts, initialisation, losses and penalties."""

from __future__ import annotations

import math

import numpy as np
import pytest

import batchgrad as bg
from batchgrad import nn
from batchgrad.nn import functional as F

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def np_log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


# ---- modules ------------------------------------------------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8, seed=1)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(8, 3, seed=2)
        self.scale = nn.Parameter(np.ones(3, np.float32))
        self.not_a_param = bg.tensor([1.0])  # plain tensors are not registered

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x))) * self.scale


def test_parameter_is_a_leaf_tensor():
    p = nn.Parameter([[1.0, 2.0]])
    assert isinstance(p, bg.Tensor) and p.is_leaf and p.requires_grad
    assert p.shape == (1, 2) and p.dtype == np.float32
    assert "Parameter containing" in repr(p)
    assert not nn.Parameter(np.zeros(2), requires_grad=False).requires_grad
    q = nn.Parameter(p)  # a copy, not an alias
    assert q is not p and q._v.id != p._v.id


def test_module_registration_and_names():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["scale", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert len(list(net.parameters())) == 5
    assert [n for n, _ in net.named_children()] == ["fc1", "act", "fc2"]
    assert net.fc1.weight.shape == (4, 8)
    # re-assigning replaces the registration, deleting removes it
    net.fc2 = nn.Linear(8, 3, bias=False, seed=0)
    assert [n for n, _ in net.named_parameters()][-1] == "fc2.weight"
    out = net(bg.randn(5, 4, seed=0))
    assert out.shape == (5, 3)
    del net.scale
    assert "scale" not in dict(net.named_parameters())
    with pytest.raises(AttributeError):
        _ = net.nope


def test_shared_parameters_listed_once():
    lin = nn.Linear(2, 2, seed=0)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(seq.parameters())) == 2
    assert list(seq.state_dict()) == ["0.weight", "0.bias"]


def test_module_without_super_init_raises_clearly():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter([1.0])

    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_train_eval_recursive():
    net = Net()
    assert net.training and net.fc1.training
    assert net.eval() is net
    assert not net.training and not net.fc1.training and not net.act.training
    net.train()
    assert all(m.training for m in net.modules())


def test_zero_grad():
    net = Net()
    net(bg.ones(2, 4)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(np.all(p.grad.numpy() == 0) for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_linear_forward_is_x_at_w_plus_b():
    lin = nn.Linear(3, 2, seed=0)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    want = x @ lin.weight.numpy() + lin.bias.numpy()
    np.testing.assert_allclose(lin(x).numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(lin(x[0]).numpy(), want[0], rtol=1e-6)  # 1-D input
    assert nn.Linear(3, 2, bias=False).bias is None
    with pytest.raises(ValueError, match="last dimension 3"):
        lin(np.zeros((2, 4), np.float32))
    assert "in_features=3, out_features=2" in repr(lin)


def test_linear_init_is_seeded_and_bounded():
    a, b, c = nn.Linear(50, 40, seed=7), nn.Linear(50, 40, seed=7), nn.Linear(50, 40, seed=8)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())
    assert not np.array_equal(a.weight.numpy(), c.weight.numpy())
    np.testing.assert_array_equal(a.bias.numpy(), np.zeros(40))
    w = a.weight.numpy()
    kb = math.sqrt(6 / 50)
    assert np.abs(w).max() <= kb and np.abs(w).max() > 0.9 * kb
    assert w.std() == pytest.approx(kb / math.sqrt(3), rel=0.1)  # uniform(-b, b) has std b/sqrt(3)
    x = nn.Linear(50, 40, init="xavier", seed=7).weight.numpy()
    xb = math.sqrt(6 / 90)
    assert np.abs(x).max() <= xb and np.abs(x).max() > 0.9 * xb
    with pytest.raises(ValueError, match="init"):
        nn.Linear(2, 2, init="normal")
    with pytest.raises(ValueError, match="in_features"):
        nn.Linear(0, 2)


def test_mlp_structure_and_determinism():
    m = nn.MLP([64, 32, 16, 10], seed=3)
    assert [type(l).__name__ for l in m] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert list(m.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    m2 = nn.MLP([64, 32, 16, 10], seed=3)
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(v, v2)
    assert not np.array_equal(nn.MLP([4, 4], seed=0)[0].weight.numpy(), nn.MLP([4, 4], seed=1)[0].weight.numpy())
    t = nn.MLP([4, 5, 2], activation="tanh")
    assert isinstance(t[1], nn.Tanh) and t[0].init == "xavier"
    with pytest.raises(ValueError):
        nn.MLP([4])
    with pytest.raises(ValueError, match="activation"):
        nn.MLP([4, 2], activation="gelu")


def test_sequential():
    s = nn.Sequential(nn.Linear(2, 3, seed=0), nn.Sigmoid())
    assert len(s) == 2 and isinstance(s[1], nn.Sigmoid)
    y = s(bg.ones(1, 2)).numpy()
    assert np.all((y > 0) & (y < 1))
    s.append(nn.Identity())
    assert len(s) == 3 and isinstance(s[-1], nn.Identity)
    assert isinstance(s[:2], nn.Sequential)
    with pytest.raises(TypeError):
        nn.Sequential(lambda x: x)


# ---- state dicts ---------------------------------------------------------------------------------

def test_state_dict_round_trip(tmp_path):
    a, b = nn.MLP([4, 6, 3], seed=0), nn.MLP([4, 6, 3], seed=1)
    x = bg.randn(5, 4, seed=2)
    assert not np.allclose(a(x).numpy(), b(x).numpy())
    sd = a.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in sd.values())
    bg.save({"model": sd}, tmp_path / "m.safetensors")
    params_before = list(b.parameters())
    res = b.load_state_dict(bg.load(tmp_path / "m.safetensors")["model"])
    assert res.missing_keys == [] and res.unexpected_keys == []
    np.testing.assert_array_equal(a(x).numpy(), b(x).numpy())
    assert all(p is q for p, q in zip(params_before, b.parameters()))  # loaded in place


def test_state_dict_is_a_copy():
    m = nn.Linear(2, 2, seed=0)
    sd = m.state_dict()
    sd["weight"][...] = 5.0
    assert not np.any(m.weight.numpy() == 5.0)
    opt = bg.optim.SGD(m.parameters(), lr=1.0)
    before = m.state_dict()
    m(bg.ones(1, 2)).sum().backward()
    opt.step()
    assert not np.array_equal(before["weight"], m.weight.numpy())


def test_load_state_dict_strict_errors():
    m = nn.MLP([4, 6, 3], seed=0)
    good = m.state_dict()
    w0 = m[0].weight.numpy().copy()
    missing = dict(good)
    del missing["2.bias"]
    with pytest.raises(RuntimeError, match=r"missing key\(s\).*'2\.bias'"):
        m.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected key\(s\).*'extra'"):
        m.load_state_dict({**good, "extra": np.zeros(1)})
    bad = dict(good)
    bad["0.weight"] = np.zeros((6, 4), np.float32)
    bad["0.bias"] = np.full(6, 9.0, np.float32)
    with pytest.raises(nn.StateDictError, match=r"size mismatch for '0\.weight'.*\(6, 4\).*\(4, 6\)"):
        m.load_state_dict(bad)
    # nothing was changed by the failed loads
    np.testing.assert_array_equal(m[0].weight.numpy(), w0)
    np.testing.assert_array_equal(m[0].bias.numpy(), good["0.bias"])
    res = m.load_state_dict(missing, strict=False)
    assert res.missing_keys == ["2.bias"]


# ---- losses vs numpy -----------------------------------------------------------------------------

def _reduce(per, reduction):
    return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_regression_losses_vs_numpy(reduction):
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    d = x.astype(np.float64) - t
    np.testing.assert_allclose(F.mse_loss(x, t, reduction=reduction).numpy(), _reduce(d**2, reduction), rtol=1e-5)
    np.testing.assert_allclose(F.l1_loss(bg.tensor(x), t, reduction=reduction).numpy(), _reduce(np.abs(d), reduction), rtol=1e-5)
    np.testing.assert_allclose(nn.MSELoss(reduction)(x, t).numpy(), _reduce(d**2, reduction), rtol=1e-5)
    np.testing.assert_allclose(nn.L1Loss(reduction)(x, t).numpy(), _reduce(np.abs(d), reduction), rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_vs_numpy(reduction):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((6, 4)).astype(np.float32) * 3
    y = np.array([0, 3, 1, 1, 2, 0])
    per = -np_log_softmax(z)[np.arange(6), y]
    got = F.cross_entropy(z, y, reduction=reduction)
    np.testing.assert_allclose(got.numpy(), _reduce(per, reduction), rtol=1e-5)
    np.testing.assert_allclose(nn.CrossEntropyLoss(reduction=reduction)(bg.tensor(z), y).numpy(), _reduce(per, reduction), rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_vs_numpy(reduction):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3)).astype(np.float32) * 4
    y = rng.random((4, 3)).astype(np.float32)
    xd = x.astype(np.float64)
    per = -(y * np.log(1 / (1 + np.exp(-xd))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-xd))))
    np.testing.assert_allclose(F.binary_cross_entropy_with_logits(x, y, reduction=reduction).numpy(),
                               _reduce(per, reduction), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nn.BCEWithLogitsLoss(reduction)(x, y).numpy(), _reduce(per, reduction), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn,args", [
    (F.cross_entropy, (np.random.default_rng(3).standard_normal((7, 5)).astype(np.float32), [0, 1, 2, 3, 4, 0, 1])),
    (F.mse_loss, (np.ones((3, 2), np.float32), np.zeros((3, 2), np.float32))),
    (F.l1_loss, (np.ones((3, 2), np.float32), np.arange(6, dtype=np.float32).reshape(3, 2))),
    (F.binary_cross_entropy_with_logits, (np.linspace(-3, 3, 6, dtype=np.float32), np.array([0, 1, 1, 0, 1, 0], np.float32))),
])
def test_reduction_none_gives_per_example_losses(fn, args):
    none = fn(*args, reduction="none").numpy()
    assert none.shape == np.shape(args[0])[:1] if fn is F.cross_entropy else none.shape == np.shape(args[0])
    assert fn(*args, reduction="mean").item() == pytest.approx(float(none.mean()), rel=1e-6)
    assert fn(*args, reduction="sum").item() == pytest.approx(float(none.sum()), rel=1e-6)
    assert fn(*args).item() == pytest.approx(float(none.mean()), rel=1e-6)  # default: mean


def test_cross_entropy_label_types_and_single_example():
    z = np.array([[1.0, 2.0, 0.5], [0.1, 0.2, 3.0]], np.float32)
    want = F.cross_entropy(z, np.array([1, 2])).item()
    assert F.cross_entropy(z, [1, 2]).item() == want
    assert F.cross_entropy(z, bg.tensor([1, 2])).item() == want
    assert F.cross_entropy(z, np.array([1.0, 2.0])).item() == want
    assert F.cross_entropy(z, np.array([1, 2], np.uint8)).item() == want
    one = F.cross_entropy(z[0], 1, reduction="none")
    assert one.shape == ()
    assert one.item() == pytest.approx(-np_log_softmax(z[0])[1], rel=1e-6)
    assert F.cross_entropy(bg.tensor(z[1]), np.array([2])).item() == pytest.approx(-np_log_softmax(z[1])[2], rel=1e-6)


def test_cross_entropy_stable_at_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]], np.float32)
    y = np.array([0, 0, 2])
    per = F.cross_entropy(bg.tensor(z, requires_grad=True), y, reduction="none").numpy()
    assert np.all(np.isfinite(per))
    np.testing.assert_allclose(per, [0.0, 2e4 + math.log(2), math.log(3)], rtol=1e-6)
    x = bg.tensor(z, requires_grad=True)
    F.cross_entropy(x, y, reduction="sum").backward()
    g = x.grad.numpy()
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [[0, 0, 0], [-1, 0.5, 0.5], [1 / 3, 1 / 3, -2 / 3]], atol=1e-6)


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((5, 4)).astype(np.float32)
    y = np.array([3, 0, 0, 2, 1])
    x = bg.tensor(z, requires_grad=True)
    F.cross_entropy(x, y).backward()
    p = np.exp(np_log_softmax(z))
    want = (p - np.eye(4)[y]) / 5
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-5, atol=1e-7)
    # and vs central finite differences of the float64 loss
    def loss64(zz):
        return float(-np_log_softmax(zz)[np.arange(5), y].mean())
    fd = np.zeros_like(z, dtype=np.float64)
    h = 1e-6
    for idx in np.ndindex(z.shape):
        zp, zm = z.astype(np.float64), z.astype(np.float64)
        zp[idx] += h
        zm[idx] -= h
        fd[idx] = (loss64(zp) - loss64(zm)) / (2 * h)
    np.testing.assert_allclose(x.grad.numpy(), fd, rtol=1e-4, atol=1e-6)


def test_bce_with_logits_stable_and_gradient():
    x = np.array([1e4, -1e4, 1e4, -1e4, 0.0, 2.0, -3.0], np.float32)
    y = np.array([1, 0, 0, 1, 1, 0, 0.25], np.float32)
    t = bg.tensor(x, requires_grad=True)
    per = F.binary_cross_entropy_with_logits(t, y, reduction="none")
    vals = per.numpy()
    assert np.all(np.isfinite(vals))
    np.testing.assert_allclose(vals[:5], [0.0, 0.0, 1e4, 1e4, math.log(2)], rtol=1e-6, atol=1e-7)
    per.sum().backward()
    sig = 0.5 * (1 + np.tanh(x.astype(np.float64) / 2))
    np.testing.assert_allclose(t.grad.numpy(), sig - y, atol=1e-6)  # incl. x = 0: 0.5 - y


@needs_torch
def test_losses_and_gradients_match_torch():
    rng = np.random.default_rng(5)
    z = (rng.standard_normal((8, 5)) * 5).astype(np.float32)
    y = rng.integers(0, 5, 8)
    x = bg.tensor(z, requires_grad=True)
    F.cross_entropy(x, y).backward()
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y))
    tl.backward()
    assert F.cross_entropy(z, y).item() == pytest.approx(tl.item(), rel=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), tz.grad.numpy(), rtol=1e-5, atol=1e-7)
    b = (rng.standard_normal((4, 3)) * 30).astype(np.float32)
    bt = rng.random((4, 3)).astype(np.float32)
    xb = bg.tensor(b, requires_grad=True)
    F.binary_cross_entropy_with_logits(xb, bt, reduction="sum").backward()
    tb = torch.tensor(b, requires_grad=True)
    tl = torch.nn.functional.binary_cross_entropy_with_logits(tb, torch.tensor(bt), reduction="sum")
    tl.backward()
    assert F.binary_cross_entropy_with_logits(b, bt, reduction="sum").item() == pytest.approx(tl.item(), rel=1e-5)
    np.testing.assert_allclose(xb.grad.numpy(), tb.grad.numpy(), rtol=1e-5, atol=1e-6)


# ---- bad inputs ----------------------------------------------------------------------------------

def test_loss_input_validation():
    z = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5,\)"):
        F.cross_entropy(z, [0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="label 3 is out of range for 3 classes"):
        F.cross_entropy(z, [0, 1, 3, 0])
    with pytest.raises(ValueError, match="label -1 is out of range for 3 classes"):
        nn.CrossEntropyLoss()(z, np.array([0, -1, 2, 0]))
    with pytest.raises(ValueError, match="non-integer label 1.5"):
        F.cross_entropy(z, np.array([0.0, 1.5, 2.0, 0.0]))
    with pytest.raises(ValueError, match="integer"):
        F.cross_entropy(z, np.array([True, False, True, False]))
    with pytest.raises(ValueError, match="integer"):
        F.cross_entropy(z, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="shape"):
        F.cross_entropy(np.zeros((2, 3, 4), np.float32), [0, 1])
    with pytest.raises(ValueError, match="single label"):
        F.cross_entropy(np.zeros(3, np.float32), [0, 1])
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(z, [0, 1, 2, 0], reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss(reduction="max")
    with pytest.raises(ValueError, match=r"\(4, 1\).*\(4,\)"):
        F.mse_loss(np.zeros((4, 1), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="shape"):
        F.binary_cross_entropy_with_logits(np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="reduction"):
        F.l1_loss(z, z, reduction=None)


# ---- penalties and activations -------------------------------------------------------------------

def test_penalties_values_and_gradients():
    m = nn.Linear(3, 2, seed=0)
    w, b = m.weight.numpy().astype(np.float64), m.bias.numpy()
    l2 = F.l2_penalty(m.parameters())
    assert l2.item() == pytest.approx(float((w**2).sum() + (b**2).sum()), rel=1e-6)
    assert F.l2_penalty(m).item() == pytest.approx(l2.item())
    l1 = F.l1_penalty([m.weight])
    assert l1.item() == pytest.approx(float(np.abs(w).sum()), rel=1e-6)
    x = bg.ones(4, 3)
    loss = F.mse_loss(m(x), np.zeros((4, 2), np.float32)) + 0.1 * F.l2_penalty(m) + 0.01 * F.l1_penalty([m.weight])
    loss.backward()
    y = np.ones((4, 3)) @ w + b
    want = np.ones((4, 3)).T @ (2 * y / 8) + 0.2 * w + 0.01 * np.sign(w)
    np.testing.assert_allclose(m.weight.grad.numpy(), want, rtol=1e-5, atol=1e-6)
    assert F.l2_penalty([]).item() == 0.0


def test_activation_reexports():
    x = np.array([[-1.0, 0.0, 2.0]], np.float32)
    np.testing.assert_allclose(F.relu(x).numpy(), [[0, 0, 2]])
    np.testing.assert_allclose(F.tanh(x).numpy(), np.tanh(x), rtol=1e-6)
    np.testing.assert_allclose(F.sigmoid(x).numpy(), 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(F.softmax(x, dim=-1).numpy(), np.exp(np_log_softmax(x)), rtol=1e-6)
    np.testing.assert_allclose(F.log_softmax(x, dim=1).numpy(), np_log_softmax(x), rtol=1e-6)
    np.testing.assert_allclose(nn.ReLU()(x).numpy(), [[0, 0, 2]])


def test_sequential_fuses_linear_relu_with_identical_values_and_gradients():
    """Linear -> ReLU inside Sequential runs as one add_relu op (backward: one relu_grad), and
    gives bit-identical values and gradients to running the layers one by one."""
    m = bg.nn.MLP([6, 5, 4, 3], seed=2)
    x = bg.tensor(np.random.default_rng(0).normal(size=(7, 6)))
    fused = m(x).sum()
    fused.backward()
    g_fused = [p.grad.numpy().copy() for p in m.parameters()]
    m.zero_grad() if hasattr(m, "zero_grad") else [setattr(p, "grad", None) for p in m.parameters()]
    h = x
    for layer in m:  # unfused: each module on its own
        h = layer(h)
    assert np.array_equal(h.sum().numpy(), fused.numpy())
    h.sum().backward()
    for a, p in zip(g_fused, m.parameters()):
        assert np.array_equal(a, p.grad.numpy())
    g = bg.trace(lambda t: m(t).sum(), x)
    ops = [n["op"] for n in g.program.nodes() if n["kind"] == "node"] if hasattr(g, "program") else str(g)
    assert "add_relu" in str(ops) and "relu" not in str(ops).replace("add_relu", "")
