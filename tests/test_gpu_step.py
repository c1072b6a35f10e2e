"""The GPU training step: the same recorded program as the CPU step, replayed on the GPU with
the optimizer update, one submit per step. Runs on lavapipe in CI."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import batchgrad as bg
from batchgrad import nn, optim

F = nn.functional


def _setup(opt_cls, **kw):
    m = nn.MLP([20, 16, 16, 5], seed=0)
    return m, opt_cls(m.parameters(), **kw)


def _batches(n=20, B=8, seed=1):
    r = np.random.default_rng(seed)
    return [(r.normal(size=(B, 20)).astype(np.float32), r.integers(0, 5, B)) for _ in range(n)]


OPTIMIZERS = [
    (optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (optim.Adam, {"lr": 1e-2}),
    (optim.SGD, {"lr": 0.1}),
    (optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "maximize": True}),
    (optim.SGD, {"lr": 0.05, "momentum": 0.5, "dampening": 0.3}),
    (optim.Adam, {"lr": 1e-2, "amsgrad": True, "weight_decay": 1e-3}),
    (optim.AdamW, {"lr": 1e-2}),
    (optim.RMSprop, {"lr": 1e-2, "momentum": 0.5, "centered": True}),
    (optim.RMSprop, {"lr": 1e-2}),
    (optim.Adagrad, {"lr": 1e-1, "lr_decay": 1e-2, "initial_accumulator_value": 0.1}),
]


def _close(a, b, what, atol=1e-6):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol, err_msg=what)


@pytest.mark.parametrize("opt_cls,kw", OPTIMIZERS, ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_twenty_gpu_steps_equal_cpu_steps(gpu, opt_cls, kw):
    m1, o1 = _setup(opt_cls, **kw)
    m2, o2 = _setup(opt_cls, **kw)
    before = {k: v.copy() for k, v in m2.state_dict().items()}
    cpu = bg.compile_step(m1, F.cross_entropy, o1)
    gstep = bg.compile_step(m2, F.cross_entropy, o2, device="gpu")
    batches = _batches()
    cpu_losses = [cpu(X, y) for X, y in batches]
    gpu_losses = [gstep(X, y) for X, y in batches]
    # nothing on the host moved until asked
    for k, v in m2.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert o2.state == {}
    _close(np.array([float(l) for l in gpu_losses]), np.array(cpu_losses), "losses")
    _close(np.array(gstep.gpu.losses()), np.array(cpu_losses), "losses read in one go")
    gstep.to_model()
    # centered RMSprop divides by sqrt(E[g^2] - E[g]^2), which magnifies the float32 rounding of
    # the gradients (the GPU sums products in another order): 5e-6 absolute after 20 steps
    atol = 1e-5 if kw.get("centered") else 1e-6
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        _close(b, a, k, atol)
    s1, s2 = o1.state_dict()["state"], gstep.optimizer_state()["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        assert s1[i].keys() == s2[i].keys()
        for name in s1[i]:
            _close(s2[i][name], s1[i][name], f"{i}.{name}", atol)
    # the host optimizer continues on the CPU where the GPU stopped
    X, y = batches[0]
    o1.zero_grad(); F.cross_entropy(m1(bg.tensor(X)), y).backward(); o1.step()
    o2.zero_grad(); F.cross_entropy(m2(bg.tensor(X)), y).backward(); o2.step()
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        _close(b, a, "after one more CPU step: " + k, atol)


def test_last_batch_of_another_size_gets_its_own_plan(gpu):
    m1, o1 = _setup(optim.SGD, lr=0.1, momentum=0.9)
    m2, o2 = _setup(optim.SGD, lr=0.1, momentum=0.9)
    cpu = bg.compile_step(m1, F.cross_entropy, o1)
    g = bg.compile_step(m2, F.cross_entropy, o2, device="gpu")
    batches = _batches(3, 8) + _batches(1, 5, seed=2) + _batches(2, 8, seed=3)
    for X, y in batches:
        cpu(X, y)
        g(X, y)
    assert len({k[:2] for k in g.gpu.plans}) == 2
    g.to_model()
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        _close(b, a, k)


def test_lr_scheduler_on_the_host_optimizer_reaches_the_gpu_step(gpu):
    m1, o1 = _setup(optim.SGD, lr=0.1)
    m2, o2 = _setup(optim.SGD, lr=0.1)
    s1, s2 = optim.lr_scheduler.StepLR(o1, 1, gamma=0.5), optim.lr_scheduler.StepLR(o2, 1, gamma=0.5)
    cpu = bg.compile_step(m1, F.cross_entropy, o1)
    g = bg.compile_step(m2, F.cross_entropy, o2, device="gpu")
    for X, y in _batches(4):
        cpu(X, y); s1.step()
        g(X, y); s2.step()
    g.to_model()
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        _close(b, a, k)


class _Counter:
    """Counts calls to wgpu object methods by patching their classes."""

    def __init__(self, monkeypatch, wgpu_objs):
        self.n: dict[str, int] = {}
        for obj, names in wgpu_objs:
            cls = type(obj)
            for name in names:
                orig = getattr(cls, name)

                def wrapped(self_, *a, __orig=orig, __name=name, **k):
                    self.n[__name] = self.n.get(__name, 0) + 1
                    return __orig(self_, *a, **k)

                monkeypatch.setattr(cls, name, wrapped)


def test_steady_state_step_is_one_submit_one_pass_and_creates_nothing(gpu, monkeypatch):
    m, o = _setup(optim.Adam, lr=1e-2)
    g = bg.compile_step(m, F.cross_entropy, o, device="gpu")
    batches = _batches(5)
    for X, y in batches[:2]:
        g(X, y)
    enc = gpu.device.create_command_encoder()
    cpass = enc.begin_compute_pass()
    cpass.end()
    enc.finish()
    c = _Counter(monkeypatch, [
        (gpu.device, ["create_buffer", "create_bind_group", "create_compute_pipeline", "create_shader_module",
                      "create_command_encoder"]),
        (gpu.queue, ["submit", "read_buffer", "write_buffer"]),
        (enc, ["begin_compute_pass", "copy_buffer_to_buffer"]),
        (cpass, ["dispatch_workgroups"]),
    ])
    loss = g(*batches[2])
    n = c.n
    assert n.get("submit") == 1 and n.get("begin_compute_pass") == 1 and n.get("create_command_encoder") == 1, n
    for k in ("create_buffer", "create_bind_group", "create_compute_pipeline", "create_shader_module", "read_buffer"):
        assert n.get(k, 0) == 0, (k, n)
    # uploads: the minibatch (X, y) and the optimizer's per-step constants
    assert n.get("write_buffer") == 3, n
    assert n.get("dispatch_workgroups", 0) >= 10
    # the loss is read only when asked
    v = float(loss)
    assert np.isfinite(v) and c.n.get("read_buffer") == 1


def test_gpu_step_leaves_host_untouched_on_a_bad_batch(gpu):
    m, o = _setup(optim.SGD, lr=0.1, momentum=0.9)
    before = copy.deepcopy(m.state_dict())
    g = bg.compile_step(m, F.cross_entropy, o, device="gpu")
    with pytest.raises(ValueError):
        g(np.zeros((8, 7), np.float32), np.zeros(8))  # 7 features for a 20-input model
    X, y = _batches(1)[0]
    float(g(X, y))
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert o.state == {}


def test_lost_device_raises_a_clear_error_and_host_is_untouched(gpu, monkeypatch):
    from batchgrad.gpu import device as D

    m, o = _setup(optim.SGD, lr=0.1)
    before = copy.deepcopy(m.state_dict())
    g = bg.compile_step(m, F.cross_entropy, o, device="gpu")
    X, y = _batches(1)[0]
    float(g(X, y))
    g.gpu.dev.lost = True  # what a device-lost callback or a failing call marks
    try:
        with pytest.raises(bg.gpu.GpuError, match="lost"):
            g(X, y)
        with pytest.raises(bg.gpu.GpuError, match="lost"):
            g.to_model()
    finally:
        g.gpu.dev.lost = False
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_wgsl_compile_error_is_a_clear_gpu_error(gpu, monkeypatch):
    from importlib import resources

    dev = bg.gpu.device.get()
    real = resources.files

    class Bad:
        def __init__(self, p):
            self.p = p

        def __truediv__(self, k):
            return Bad(self.p / k)

        def read_text(self):
            t = self.p.read_text()
            return t + "\nfn broken( { }\n" if str(self.p).endswith("unary.wgsl") else t

    monkeypatch.setattr(resources, "files", lambda pkg: Bad(real(pkg)))
    saved = dev._modules.pop("unary", None), {k: v for k, v in dev._pipelines.items() if k[0] == "unary"}
    for k in saved[1]:
        del dev._pipelines[k]
    try:
        with pytest.raises(bg.gpu.GpuError, match="unary.wgsl"):
            dev.pipeline("unary", "op_exp")
    finally:
        if saved[0] is not None:
            dev._modules["unary"] = saved[0]
        dev._pipelines.update(saved[1])


def test_buffer_beyond_the_device_limit_is_refused_naming_it(gpu):
    lim = int(gpu.limits["max-storage-buffer-binding-size"])
    with pytest.raises(bg.gpu.GpuLimitError, match="max-storage-buffer-binding-size"):
        gpu.check_size(lim + 4, "a tensor")


def test_import_batchgrad_does_not_import_wgpu():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, batchgrad; print('wgpu' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_wgpu_gives_one_clear_error():
    import subprocess
    import sys

    code = ("import sys; sys.modules['wgpu'] = None\n"
            "import batchgrad as bg\n"
            "assert not bg.gpu.is_available()\n"
            "try:\n    bg.gpu.info()\nexcept bg.gpu.GpuUnavailableError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'batchgrad[gpu]'" in out.stdout


def test_info_names_the_adapter(gpu):
    i = bg.gpu.info()
    assert i["name"] and i["backend"] and i["type"]
    assert i["limits"]["max-storage-buffer-binding-size"] > 0
