"""batchgrad against numpy / PyTorch / JAX, measured in one process, reported as medians and ratios.

    python benches/compare.py [--quick] [--threads 1 2] [--sections gemm step compiled breakdown overhead bandwidth] [--out FILE]

Prints one markdown table per section:
  (a) gemm       GEMM GFLOP/s: `bg.tensor(a) @ bg.tensor(b)` (inputs converted once, under
                 `bg.no_grad()`) vs numpy `a @ b` vs torch `a @ b`, square 256..2048 and the MLP
                 784-256-256-10 layer shapes, at each thread count.
  (b) step       examples/s of one SGD step (forward, softmax cross-entropy, backward, update) of an
                 MLP 784-256-256-10: batchgrad eager vs PyTorch eager (same thread count) vs JAX `jit`
                 of the whole step (when jax imports). JAX runs in a child process next to a second
                 batchgrad measurement (XLA's threads disturb torch's OpenMP pool in one process), at
                 its default thread count only (XLA sizes its pool at start-up).
  (b3) compiled   examples/s of `bg.compile_step` (forward + backward + update in one Rust call) vs
                 JAX `jit` of the whole step, each thread count in a child pinned to that many cores.
  (b2) breakdown  forward / backward / update time of that step, batchgrad vs torch.
  (c) overhead   a 10,000-op chain of scalar ops, forward + backward: batchgrad vs torch 0-d tensors.
  (d) bandwidth  GB/s of elementwise ops and reductions on 5e7 float32 elements (200 MB, several times any
                 last-level cache) vs numpy (and torch).

Method: every timed callable is warmed up, its inner loop count is calibrated so one repeat lasts
`--min-time` seconds, and the repeats run in per-library blocks repeated over a few rounds
(A A A B B B C C C, A A A B B B ...) so slow machine drift hits all libraries alike; before each block
at > 1 thread the script sleeps so the previous library's spinning worker threads (OpenBLAS, OpenMP)
go idle -- finely interleaved calls on a 2-core machine measure that contention, not the library.
Each cell is the median over the repeats of the time per call. Ratios are batchgrad / reference
(> 1 means batchgrad is faster).

On a shared machine: `--wait-idle S` waits (up to S seconds) for idle CPUs before each section, and
`--max-foreign F` re-measures any row during which other processes used more than F of the CPU time
(each table's note says how busy the machine was). The numbers of record were taken with
`--repeats 21 --max-foreign 0.15 --wait-idle 120`.

numpy's OpenBLAS reads OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE when it loads; if either is set the
script re-executes itself without them so numpy runs its own best kernel (the header says which
kernel threadpoolctl reports). numpy threads are limited with threadpoolctl when it is installed.
"""

from __future__ import annotations

import os
import sys

# --- before numpy is imported: drop OpenBLAS overrides from this process's environment ----------
_SCRUB = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if any(k in os.environ for k in _SCRUB) and "_BG_BENCH_SCRUBBED" not in os.environ:
    env = dict(os.environ)
    env["_BG_BENCH_SCRUBBED"] = ";".join(f"{k}={env.pop(k)}" for k in _SCRUB if k in env)
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager, nullcontext  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

import batchgrad as bg  # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover - optional reference
    torch = None
try:
    import threadpoolctl
except ImportError:  # pragma: no cover
    threadpoolctl = None
import importlib.util  # noqa: E402
import json  # noqa: E402

# JAX runs in a child process (see `jax_child`): once XLA's CPU client exists its worker threads
# keep 2 cores busy enough that PyTorch's OpenMP pool, in the same process, slows down by 10-40x
# at 2 threads. Here we only check that it is importable.
HAVE_JAX = importlib.util.find_spec("jax") is not None

perf = time.perf_counter


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
class Cfg:
    repeats = 15
    rounds = 3  # blocks per callable; repeats are split evenly over the rounds
    min_time = 0.05  # seconds per repeat
    warmup = 3
    settle = 0.3  # seconds of sleep before each block when more than one thread is in use
    threads = 1
    max_foreign = 1.0  # re-measure a row when other processes took more than this share of the CPUs
    retries = 3
    idle_wait = 60.0
    remeasured = 0  # rows measured again because the machine was busy
    still_busy = 0  # rows that stayed above max_foreign after all retries


def _loops(fn: Callable[[], object]) -> int:
    """Calls per repeat so that one repeat lasts about Cfg.min_time."""
    n = 1
    while True:
        t0 = perf()
        for _ in range(n):
            fn()
        dt = perf() - t0
        if dt >= Cfg.min_time / 4 or n >= 1 << 20:
            return max(1, int(round(n * Cfg.min_time / max(dt, 1e-9))))
        n *= 4


def _settle() -> None:
    # OpenBLAS workers busy-wait up to 2^28 cycles and libgomp's a while after each call: on a
    # 2-core machine the next library's threads would share the cores with them. Let them sleep.
    if Cfg.threads > 1:
        time.sleep(Cfg.settle)


def measure(fns: dict[str, Callable[[], object]], repeats: int | None = None) -> dict[str, float]:
    """`_measure`, repeated (after waiting for the machine to go idle) while other processes took
    more than Cfg.max_foreign of the CPUs."""
    for attempt in range(Cfg.retries + 1):
        with Load() as ld:
            res = _measure(fns, repeats)
        if ld.foreign <= Cfg.max_foreign:
            return res
        if attempt == Cfg.retries:
            Cfg.still_busy += 1
            return res
        Cfg.remeasured += 1
        print(f"  [other processes took {ld.foreign * 100:.0f}% of the CPUs: measuring again]", file=sys.stderr)
        wait_idle(Cfg.idle_wait)
    return res


def _measure(fns: dict[str, Callable[[], object]], repeats: int | None = None) -> dict[str, float]:
    """Median seconds per call of each callable.

    The repeats run in blocks, A A A, B B B, C C C, then again (Cfg.rounds times), so slow drift of
    the machine hits every callable alike, while no library runs while another's thread pool is
    still spinning (see `_settle`)."""
    repeats = repeats or Cfg.repeats
    rounds = max(1, min(Cfg.rounds, repeats))
    per = -(-repeats // rounds)
    gc.collect()
    loops = {}
    for k, f in fns.items():
        _settle()
        for _ in range(Cfg.warmup):
            f()
        loops[k] = _loops(f)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            _settle()
            f()
            n = loops[k]
            for _ in range(per):
                t0 = perf()
                for _ in range(n):
                    f()
                samples[k].append((perf() - t0) / n)
    return {k: statistics.median(v) for k, v in samples.items()}


@contextmanager
def threads(n: int):
    """Run batchgrad, torch and numpy's BLAS with n threads."""
    bg.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    Cfg.threads = n
    ctx = threadpoolctl.threadpool_limits(limits=n, user_api="blas") if threadpoolctl else nullcontext()
    with ctx:
        yield
    Cfg.threads = 1


def _jax_version() -> str:
    if not HAVE_JAX:
        return "not installed"
    try:
        from importlib.metadata import version
        return version("jax")
    except Exception:  # noqa: BLE001
        return "?"


class Load:
    """CPU time used by *other* processes while a section ran, as a fraction of all cores.

    The machine is shared: a compile or a test run elsewhere takes cores from a 2-thread benchmark
    (and makes barrier-synchronised pools such as OpenMP collapse), so every table says how busy
    the machine was."""

    @staticmethod
    def snap() -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(v[:8]) - v[3] - v[4]) / hz  # all but idle and iowait
        t = os.times()
        return perf(), busy, t.user + t.system + t.children_user + t.children_system

    def __enter__(self) -> "Load":
        self.s0 = self.snap()
        return self

    def __exit__(self, *exc) -> None:
        s1 = self.snap()
        wall = s1[0] - self.s0[0]
        other = (s1[1] - self.s0[1]) - (s1[2] - self.s0[2])
        self.foreign = max(0.0, other / max(wall, 1e-9) / (os.cpu_count() or 1))

    def __init__(self) -> None:
        self.counts = (Cfg.remeasured, Cfg.still_busy)

    def note(self) -> str:
        out = f"Other processes used {self.foreign * 100:.0f}% of the machine's CPU time while this section ran"
        re, busy = Cfg.remeasured - self.counts[0], Cfg.still_busy - self.counts[1]
        if Cfg.max_foreign < 1.0:
            out += (f"; {re} measurement(s) were repeated because others took > {Cfg.max_foreign * 100:.0f}% of the CPUs"
                    f", {busy} stayed above that after {Cfg.retries} retries")
        return out + "."


def wait_idle(max_s: float) -> None:
    """Wait (at most max_s) until other processes use < 10% of the CPUs for 3 consecutive seconds."""
    if max_s <= 0:
        return
    t_end, ok = perf() + max_s, 0
    while perf() < t_end:
        with Load() as ld:
            time.sleep(1.0)
        ok = ok + 1 if ld.foreign < 0.10 else 0
        if ok >= 3:
            return
    print(f"  [machine still busy after {max_s:.0f} s of waiting; measuring anyway]", file=sys.stderr)


def fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def table(title: str, head: list[str], rows: list[list[str]], note: str = "") -> str:
    out = [f"### {title}", ""]
    if note:
        out += [note, ""]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# environment header
# ----------------------------------------------------------------------------------------------
def header() -> str:
    lines = ["## Environment", ""]
    model, flags = "?", []
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for ln in out.splitlines():
            if ln.startswith("Model name:"):
                model = ln.split(":", 1)[1].strip()
            if ln.startswith("Flags:"):
                fl = ln.split(":", 1)[1].split()
                flags = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16") if f in fl]
    except OSError:
        pass
    lines.append(f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    lines.append(f"- cpu: {model}; flags: {' '.join(flags)}; nproc: {os.cpu_count()}; affinity: {len(os.sched_getaffinity(0))}")
    lines.append(f"- python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__ if torch else 'not installed'}, "
                 f"jax {_jax_version()}, batchgrad {bg.__version__} (simd: {bg._core.simd_level()})")
    scrubbed = os.environ.get("_BG_BENCH_SCRUBBED")
    lines.append(f"- OpenBLAS overrides removed for this run: {scrubbed}" if scrubbed else "- OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: not set")
    if threadpoolctl:
        for info in threadpoolctl.threadpool_info():
            if info.get("user_api") == "blas":
                lines.append(f"- numpy BLAS: {info.get('internal_api')} {info.get('version')}, kernel (architecture) "
                             f"{info.get('architecture')}, threading {info.get('threading_layer')}")
    else:
        lines.append("- threadpoolctl not installed: numpy's BLAS thread count is not controlled")
    if torch is not None:
        lines.append(f"- torch: MKL {torch.backends.mkl.is_available()}, oneDNN {torch.backends.mkldnn.is_available()}, "
                     f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    lines.append(f"- timing: median of {Cfg.repeats} repeats of >= {Cfg.min_time * 1e3:.0f} ms each (in {Cfg.rounds} rounds "
                 f"of per-library blocks, {Cfg.settle:.1f} s settle before each block at > 1 thread), {Cfg.warmup} warm-up "
                 f"calls, time.perf_counter")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# (a) GEMM
# ----------------------------------------------------------------------------------------------
def _gemm_shapes() -> list[tuple[str, int, int, int, bool, bool]]:
    """(label, m, k, n, ta, tb): C (m x n) = op(A) op(B); ta / tb: the operand is stored transposed
    and read through a transposed view (no copy), as the backward pass does."""
    shapes = [(f"{s}^3", s, s, s, False, False) for s in (256, 512, 1024, 2048)]
    for b in (32, 512, 4096):
        for k, n in ((784, 256), (256, 256), (256, 10)):
            shapes.append((f"{b}x{k} @ {k}x{n}", b, k, n, False, False))
    for b in (32, 512, 4096):
        for k, n in ((784, 256), (256, 256), (256, 10)):
            # the backward products of that layer: dX = G Wᵀ and dW = Xᵀ G
            shapes.append((f"dX: {b}x{n} @ ({k}x{n})ᵀ", b, n, k, False, True))
            shapes.append((f"dW: ({b}x{k})ᵀ @ {b}x{n}", k, b, n, True, False))
    return shapes


def _gemm_fn(lib: str, sa: np.ndarray, sb: np.ndarray, ta: bool, tb: bool) -> Callable[[], object]:
    if lib == "bg":
        ga, gb = bg.tensor(sa), bg.tensor(sb)

        def bg_mm():
            with bg.no_grad():
                if not (ta or tb):
                    return ga @ gb
                # the registry's matmul with its transpose flags: the op the backward pass runs
                return bg.Tensor(bg._core.apply("matmul", [ga._v, gb._v], {"ta": ta, "tb": tb}))

        return bg_mm
    if lib == "np":
        a, b = (sa.T if ta else sa), (sb.T if tb else sb)
        return lambda: a @ b
    tsa, tsb = torch.from_numpy(sa), torch.from_numpy(sb)
    tta, ttb = (tsa.T if ta else tsa), (tsb.T if tb else tsb)

    def th_mm():
        with torch.no_grad():
            return tta @ ttb

    return th_mm


def gemm_child(lib: str, t: int, quick: bool) -> None:
    """--gemm-child LIB T: one library alone in this process, pinned to T cores; GFLOP/s as JSON."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(cpus[:t]))
    # no settle pauses: no other library's pool is here to wait for, and an idle pause lets this
    # VM park the second vCPU (2-thread GEMMs then measured at 1-thread speed for a while)
    Cfg.settle = 0.0
    rng = np.random.default_rng(0)
    out = {}
    with threads(t):
        for label, m, k, n, ta, tb in _gemm_shapes():
            sa = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
            sb = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
            reps = 7 if (quick and m * n * k >= 1 << 30) else None
            med = measure({lib: _gemm_fn(lib, sa, sb, ta, tb)}, reps)
            out[label] = 2 * m * n * k / med[lib] / 1e9
    if lib == "bg":
        out[PEAK] = fma_peak(t)
    print(json.dumps(out))


PEAK = "_fma_peak"


def fma_peak(t: int) -> float:
    """The float32 FMA peak of t cores in GFLOP/s, measured now (`_core.fma_peak`: FMA chains on
    registers, no memory traffic; best of 5), in the process that measures the GEMMs."""
    return bg._core.fma_peak(t)


def step_flops(b: int) -> float:
    """Multiply-add flops of one SGD step of the MLP at batch b: the forward products, and in the
    backward pass dW of every layer and dX of every layer but the first (the input needs none)."""
    layers = list(zip(DIMS[:-1], DIMS[1:]))
    fwd = sum(2 * b * i * o for i, o in layers)
    bwd = sum(2 * b * i * o * (1 if j == 0 else 2) for j, (i, o) in enumerate(layers))
    return float(fwd + bwd)


def gemm_section(thread_counts: list[int], quick: bool) -> str:
    """Each library in its own child process pinned to the thread count's cores, one after the
    other (twice, in opposite orders, unless --quick): no library's thread pool shares the cores
    with another's, which on this 2-core VM moved 2-thread rows by up to 2x when they ran in one
    process."""
    libs = ["bg", "np"] + (["torch"] if torch is not None else [])
    orders = [libs] if quick else [libs, libs[::-1]]
    rows = []
    peaks: dict[int, float | None] = {}
    with Load() as ld:
        for t in thread_counts:
            got: dict[str, list[dict]] = {lib: [] for lib in libs}
            for order in orders:
                for lib in order:
                    res = run_child(["--gemm-child", lib, str(t)], quick, f"gemm {lib} t{t}")
                    if res is not None:
                        got[lib].append(res)
            peak = max((g[PEAK] for g in got["bg"]), default=None)
            peaks[t] = peak
            for label, *_ in _gemm_shapes():
                gf = {lib: statistics.mean(g[label] for g in runs) for lib, runs in got.items() if runs}
                rows.append([label, str(t), fmt(gf.get("bg")), fmt(gf.get("np")), fmt(gf.get("torch")),
                             ratio(gf.get("bg"), gf.get("np")), ratio(gf.get("bg"), gf.get("torch")),
                             f"{100 * gf['bg'] / peak:.0f}%" if peak and "bg" in gf else ""])
                print(f"  gemm {label} t{t}: " + ", ".join(f"{kk} {v:.1f}" for kk, v in gf.items()), file=sys.stderr)
    return table("(a) GEMM, GFLOP/s (2mnk / median time)",
                 ["shape (m x k @ k x n)", "threads", "batchgrad", "numpy", "torch", "bg / numpy", "bg / torch", "bg / FMA peak"], rows,
                 "batchgrad: `ga @ gb` on pre-built tensors under `bg.no_grad()` (includes the Python call and output "
                 "allocation); numpy: `a @ b`; torch: `ta @ tb` under `torch.no_grad()`. The dX / dW rows are the "
                 "layer's backward products with the stored operand read transposed, no copy: numpy and torch through a "
                 "`.T` view, batchgrad through the matmul op's transpose flags (`_core.apply('matmul', ..., {'ta': ..})`, "
                 "what its backward pass runs). Each library runs alone in a child process pinned to that many cores"
                 + ("" if quick else ", twice in opposite orders (mean of the two medians)") + ". **FMA peak**: "
                 + ", ".join(f"{p:.1f} GFLOP/s on {t} thread(s)" for t, p in peaks.items() if p)
                 + " (`bg._core.fma_peak`, measured in batchgrad's child: FMA chains on registers, no memory traffic, "
                 f"best of 5). {ld.note()}")


# ----------------------------------------------------------------------------------------------
# (b) training step
# ----------------------------------------------------------------------------------------------
DIMS = (784, 256, 256, 10)
LR = 0.01


def _init_params(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ps = []
    for fi, fo in zip(DIMS[:-1], DIMS[1:]):
        bound = 1 / np.sqrt(fi)
        ps.append(rng.uniform(-bound, bound, (fi, fo)).astype(np.float32))
        ps.append(rng.uniform(-bound, bound, (fo,)).astype(np.float32))
    return ps


def _bg_xent(y: np.ndarray):
    """(description, loss(logits), labels) using bg.nn if present, else the registry op.

    bg.nn.functional.cross_entropy takes integer class labels (here an int64 numpy array, as a
    user would pass them); the raw registry op takes float labels as a tensor."""
    nn = getattr(bg, "nn", None)
    ce = getattr(getattr(nn, "functional", None), "cross_entropy", None) if nn else None
    if ce is not None:
        yi = y.astype(np.int64)
        return "`bg.nn.functional.cross_entropy` (int64 numpy labels)", lambda z: ce(z, yi)
    yb = bg.tensor(y.astype(np.float32))
    return "`_core.apply('softmax_xent')` + `.mean()`", lambda z: bg.Tensor(bg._core.apply("softmax_xent", [z._v, yb._v])).mean()


def _bg_sgd(params: list):
    """(description, step()) using bg.optim.SGD if present, else the fused `_core.sgd_step`.

    Either way the update is the Rust kernel `optim::sgd` run through `_core.sgd_step`."""
    optim = getattr(bg, "optim", None)
    if optim is not None and hasattr(optim, "SGD"):
        try:
            opt = optim.SGD(params, lr=LR)

            def step():
                opt.step()
                opt.zero_grad()

            return "`bg.optim.SGD` (step + zero_grad)", step
        except Exception:  # noqa: BLE001 - API in flux: fall back to the kernel
            pass
    vs = [p._v for p in params]

    def step():
        bg._core.sgd_step(vs, [], LR, 0.0, 0.0, False, 0.0, False, False)
        for p in params:
            p.zero_grad()

    return "`_core.sgd_step` + `zero_grad`", step


def make_bg_parts(x: np.ndarray, y: np.ndarray):
    """(description, forward() -> loss, backward(loss), update()) for batchgrad eager."""
    params = [bg.tensor(p, requires_grad=True) for p in _init_params()]
    xb = bg.tensor(x)
    xdesc, xent = _bg_xent(y)
    odesc, update = _bg_sgd(params)
    w1, b1, w2, b2, w3, b3 = params

    def forward():
        h = bg.relu(xb @ w1 + b1)
        h = bg.relu(h @ w2 + b2)
        return xent(h @ w3 + b3)

    return f"{xdesc}, {odesc}", forward, lambda loss: loss.backward(), update


def make_bg_step(x: np.ndarray, y: np.ndarray):
    desc, forward, backward, update = make_bg_parts(x, y)

    def step():
        loss = forward()
        backward(loss)
        update()
        return loss

    return desc, step


def make_torch_parts(x: np.ndarray, y: np.ndarray):
    """(forward() -> loss, backward(loss), update()) for PyTorch eager."""
    ps = _init_params()
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    with torch.no_grad():
        for i, lin in enumerate([model[0], model[2], model[4]]):
            lin.weight.copy_(torch.from_numpy(ps[2 * i].T.copy()))
            lin.bias.copy_(torch.from_numpy(ps[2 * i + 1]))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def update():
        opt.step()
        opt.zero_grad(set_to_none=True)

    return lambda: TF.cross_entropy(model(xt), yt), lambda loss: loss.backward(), update


def make_torch_step(x: np.ndarray, y: np.ndarray):
    forward, backward, update = make_torch_parts(x, y)

    def step():
        loss = forward()
        backward(loss)
        update()
        return loss

    return step


def make_jax_step(x: np.ndarray, y: np.ndarray):
    import jax
    import jax.numpy as jnp

    params = [jnp.asarray(p) for p in _init_params()]

    def loss_fn(ps, xx, yy):
        h = jax.nn.relu(xx @ ps[0] + ps[1])
        h = jax.nn.relu(h @ ps[2] + ps[3])
        z = h @ ps[4] + ps[5]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), yy[:, None], axis=1))

    @jax.jit
    def train(ps, xx, yy):
        loss, g = jax.value_and_grad(loss_fn)(ps, xx, yy)
        return [p - LR * gi for p, gi in zip(ps, g)], loss

    xj, yj = jnp.asarray(x), jnp.asarray(y.astype(np.int32))
    state = [params]

    def step():
        state[0], loss = train(state[0], xj, yj)
        loss.block_until_ready()
        return loss

    return step


STEP_BATCHES = (1, 8, 32, 128, 512, 2048)


def _step_data(b: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + b)
    return rng.standard_normal((b, 784), dtype=np.float32), rng.integers(0, 10, b)


def jax_child(quick: bool) -> None:
    """--jax-child: batchgrad (at its default thread count) and JAX jit, timed in this process; JSON out."""
    import jax

    res = {"threads": bg.get_num_threads(), "jax": jax.__version__, "batches": {}}
    Cfg.threads = bg.get_num_threads()
    for b in STEP_BATCHES:
        x, y = _step_data(b)
        med = measure({"bg": make_bg_step(x, y)[1], "jax": make_jax_step(x, y)})
        res["batches"][str(b)] = med
    print(json.dumps(res))


def run_child(mode: list[str], quick: bool, what: str) -> dict | None:
    """Run this script as a child (`mode`: its --*-child flag and arguments) with this run's timing
    settings; the JSON it prints last, or None (reported) if it failed."""
    cmd = [sys.executable, os.path.abspath(__file__), *mode, "--repeats", str(Cfg.repeats),
           "--min-time", str(Cfg.min_time), "--max-foreign", str(Cfg.max_foreign),
           "--wait-idle", str(Cfg.idle_wait)] + (["--quick"] if quick else [])
    env = dict(os.environ)
    env.pop("BATCHGRAD_NUM_THREADS", None)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        print(f"  [{what} child failed: {r.stderr[-2000:]}]", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_jax_child(quick: bool) -> dict | None:
    return run_child(["--jax-child"], quick, "jax") if HAVE_JAX else None


def make_bg_compiled_step(x: np.ndarray, y: np.ndarray):
    """`bg.compile_step` of the same model / loss / SGD: one Rust call per step."""
    names = ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    model = bg.nn.MLP(list(DIMS))
    model.load_state_dict(dict(zip(names, _init_params())))
    opt = bg.optim.SGD(model.parameters(), lr=LR)
    xb, yb = bg.tensor(x), bg.tensor(y.astype(np.float32))
    step = bg.compile_step(model, bg.nn.functional.cross_entropy, opt, (xb, yb))
    return lambda: step(xb, yb)


def compiled_child(t: int) -> None:
    """--compiled-child T: pinned to T cores before JAX loads (XLA sizes its pool from the CPUs it
    may use), batchgrad at T threads; compiled step vs `jax.jit` of the step; JSON out."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(cpus[:t]))
    bg.set_num_threads(t)
    Cfg.threads = t
    res = {"threads": t, "jax": None, "batches": {}, "peak": fma_peak(t)}
    try:
        import jax

        res["jax"] = jax.__version__
    except Exception:
        pass
    for b in STEP_BATCHES:
        x, y = _step_data(b)
        fns = {"bgc": make_bg_compiled_step(x, y)}
        if res["jax"]:
            fns["jax"] = make_jax_step(x, y)
        res["batches"][str(b)] = measure(fns)
    print(json.dumps(res))


def compiled_section(thread_counts: list[int], quick: bool) -> str:
    """bg.compile_step vs jax.jit of the whole step, each thread count in its own pinned child."""
    rows = []
    jv = None
    peaks: dict[int, float] = {}
    with Load() as ld:
        for t in thread_counts:
            res = run_child(["--compiled-child", str(t)], quick, f"compiled t{t}")
            if res is None:
                continue
            jv = res["jax"] or jv
            peaks[t] = res["peak"]
            for b in STEP_BATCHES:
                m = res["batches"][str(b)]
                jx = m.get("jax")
                gfs = step_flops(b) / m["bgc"] / 1e9
                rows.append([str(b), str(t), fmt(b / m["bgc"], 0), fmt(b / jx, 0) if jx else "", ratio(jx, m["bgc"]) if jx else "",
                             f"{m['bgc'] * 1e6:.1f}", f"{gfs:.1f} ({100 * gfs / res['peak']:.0f}%)"])
                print(f"  compiled b{b} t{t}: bg {b / m['bgc']:,.0f} ex/s" + (f", jax {b / jx:,.0f} ex/s" if jx else ""), file=sys.stderr)
    note = (f"`bg.compile_step(model, F.cross_entropy, SGD, batch)`: forward + backward + update replayed in one Rust call. "
            f"JAX {jv or '(not installed)'}: `jax.jit` of value_and_grad + SGD. Each thread count runs in its own child process "
            f"pinned to that many cores before JAX loads, so XLA's pool and batchgrad's both use exactly that many. "
            f"GFLOP/s counts the step's products ({step_flops(1) / 1e6:.2f} MFLOP per example: the forward, dW of every layer, dX "
            f"of all but the first); the FMA peak is measured in the same child ("
            + ", ".join(f"{p:.1f} GFLOP/s on {t} thread(s)" for t, p in peaks.items()) + f"). {ld.note()}")
    return table("(b3) Compiled training step vs JAX jit, examples/s (same MLP, same SGD step)",
                 ["batch", "threads", "bg compiled", "jax jit", "bg / jax", "bg us/step", "bg GFLOP/s (of FMA peak)"], rows, note)


def step_section(thread_counts: list[int], quick: bool) -> str:
    rows = []
    desc = ""
    with Load() as ld:
        for t in thread_counts:
            with threads(t):
                for b in STEP_BATCHES:
                    x, y = _step_data(b)
                    desc, bstep = make_bg_step(x, y)
                    fns = {"bg": bstep}
                    if torch is not None:
                        fns["torch"] = make_torch_step(x, y)
                    med = measure(fns)
                    eps = {k: b / v for k, v in med.items()}
                    rows.append([str(b), str(t), fmt(eps["bg"], 0), fmt(eps.get("torch"), 0), "", ratio(eps["bg"], eps.get("torch")), "",
                                 f"{med['bg'] * 1e3:.3f}"])
                    print(f"  step b{b} t{t}: " + ", ".join(f"{k} {v:,.0f} ex/s" for k, v in eps.items()), file=sys.stderr)
        jx = run_jax_child(quick)
    if jx is not None:
        jt = jx["threads"]
        for r in rows:
            if r[1] == str(jt):
                m = jx["batches"][r[0]]
                b = int(r[0])
                r[4] = fmt(b / m["jax"], 0)
                r[6] = ratio(m["jax"], m["bg"])
                print(f"  step b{b} jax child (t{jt}): bg {b / m['bg']:,.0f} ex/s, jax {b / m['jax']:,.0f} ex/s", file=sys.stderr)
        jnote = (f"JAX {jx['jax']}: `jax.jit` of the whole step (value_and_grad + SGD, parameters passed in and returned), "
                 f"run in a child process, because XLA's worker threads slow PyTorch's OpenMP pool in the same process "
                 f"10-40x at 2 threads. XLA sizes its pool at start-up (all {jt} cores), so JAX appears in the {jt}-thread "
                 f"rows; its bg / jax ratio uses batchgrad timed in that child process (same process as JAX).")
    else:
        jnote = "JAX: not importable (`pip install 'jax[cpu]'` failed or was not run)." if not HAVE_JAX else "JAX: child process failed."
    return table("(b) Training step, examples/s (MLP 784-256-256-10, relu, softmax cross-entropy, SGD lr=0.01)",
                 ["batch", "threads", "batchgrad", "torch eager", "jax jit", "bg / torch", "bg / jax", "bg ms/step"], rows,
                 f"batchgrad eager: tensors, `@`, `+`, `bg.relu`, {desc}, `loss.backward()`. "
                 f"torch eager: `nn.Sequential(Linear, ReLU, ...)`, `F.cross_entropy`, `torch.optim.SGD`. {jnote} {ld.note()}")


def breakdown_section(thread_counts: list[int], batches=(1, 32, 512)) -> str:
    """Median forward / backward / update time of one step, each phase timed on its own."""
    rng = np.random.default_rng(3)
    rows = []
    n_iter = max(30, Cfg.repeats * 6)
    ld = Load().__enter__()
    for t in thread_counts:
        with threads(t):
            for b in batches:
                x = rng.standard_normal((b, 784), dtype=np.float32)
                y = rng.integers(0, 10, b)
                libs = {"batchgrad": make_bg_parts(x, y)[1:]}
                if torch is not None:
                    libs["torch"] = make_torch_parts(x, y)
                samples: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in libs}
                per = -(-n_iter // Cfg.rounds)
                for _ in range(Cfg.rounds):  # per-library blocks, repeated, as in `measure`
                    for name, (fw, bw, up) in libs.items():
                        _settle()
                        f_, b_, u_ = samples[name]
                        for i in range(per + Cfg.warmup):
                            t0 = perf()
                            loss = fw()
                            t1 = perf()
                            bw(loss)
                            t2 = perf()
                            up()
                            t3 = perf()
                            if i >= Cfg.warmup:
                                f_.append(t1 - t0)
                                b_.append(t2 - t1)
                                u_.append(t3 - t2)
                res = {name: [statistics.median(v) * 1e3 for v in samples[name]] for name in libs}
                for name, (f, bk, u) in res.items():
                    rows.append([str(b), str(t), name, f"{f:.3f}", f"{bk:.3f}", f"{u:.3f}", f"{f + bk + u:.3f}"])
                print(f"  breakdown b{b} t{t}: " + "; ".join(f"{k} " + "/".join(f"{v:.3f}" for v in r) for k, r in res.items()), file=sys.stderr)
    ld.__exit__()
    return table("(b2) Training step breakdown, ms (median of each phase timed on its own)",
                 ["batch", "threads", "library", "forward", "backward", "update (+ zero_grad)", "sum"], rows,
                 f"Same step as (b). Forward includes the loss; update is the optimizer step and zero_grad. {ld.note()}")


# ----------------------------------------------------------------------------------------------
# (c) per-op overhead
# ----------------------------------------------------------------------------------------------
def overhead_section(n_ops: int) -> str:
    c = 1.0001

    const_c = bg.tensor(c)

    def bg_chain(k=c):  # k: a python float, or the constant wrapped once as a tensor
        x = bg.tensor(1.0, requires_grad=True)
        y = x
        for i in range(n_ops // 2):
            y = y * k
            y = y + k
        y.backward()
        return x.grad

    core, cv = bg._core, const_c._v

    def core_chain():
        x = bg.tensor(1.0, requires_grad=True)._v
        y = x
        for i in range(n_ops // 2):
            y = core.apply("mul", [y, cv])
            y = core.apply("add", [y, cv])
        y.backward()
        return x.grad

    def bg_fwd_nograd():
        y = bg.tensor(1.0)
        for i in range(n_ops // 2):
            y = y * c
            y = y + c
        return y

    fns: dict[str, Callable[[], object]] = {
        "batchgrad (Tensor, python float constants)": bg_chain,
        "batchgrad (Tensor, constants pre-wrapped)": lambda: bg_chain(const_c),
        "batchgrad (raw `_core.apply`, no Tensor wrapper)": core_chain,
        "batchgrad forward only, `no_grad`": lambda: bg.no_grad()(bg_fwd_nograd)(),
    }
    if torch is not None:
        def th_chain():
            x = torch.tensor(1.0, requires_grad=True)
            y = x
            for i in range(n_ops // 2):
                y = y * c
                y = y + c
            y.backward()
            return x.grad

        def th_fwd_nograd():
            with torch.no_grad():
                y = torch.tensor(1.0)
                for i in range(n_ops // 2):
                    y = y * c
                    y = y + c
                return y

        fns["torch 0-d tensors"] = th_chain
        fns["torch forward only, `no_grad`"] = th_fwd_nograd
    # separate forward / backward time of the main variants
    ld = Load().__enter__()
    med = measure(fns, max(5, Cfg.repeats // 2))

    def split(make_x, op_mul, op_add, back):
        fw, bw = [], []
        for _ in range(max(5, Cfg.repeats // 2)):
            x = make_x()
            y = x
            t0 = perf()
            for i in range(n_ops // 2):
                y = op_mul(y)
                y = op_add(y)
            t1 = perf()
            back(y)
            t2 = perf()
            fw.append(t1 - t0)
            bw.append(t2 - t1)
        return statistics.median(fw), statistics.median(bw)

    with bg.enable_grad():
        sp = {"batchgrad (Tensor, python float constants)": split(lambda: bg.tensor(1.0, requires_grad=True), lambda y: y * c, lambda y: y + c,
                                                                  lambda y: y.backward())}
    if torch is not None:
        sp["torch 0-d tensors"] = split(lambda: torch.tensor(1.0, requires_grad=True), lambda y: y * c, lambda y: y + c,
                                        lambda y: y.backward())
    ld.__exit__()
    ref = med.get("torch 0-d tensors")
    rows = []
    for k, v in med.items():
        f, b = sp.get(k, (None, None))
        rows.append([k, f"{v * 1e3:.2f}", f"{v / n_ops * 1e6:.2f}", "-" if f is None else f"{f / n_ops * 1e6:.2f}",
                     "-" if b is None else f"{b / n_ops * 1e6:.2f}", "-" if ref is None else f"{ref / v:.2f}"])
        print(f"  overhead {k}: {v * 1e3:.2f} ms", file=sys.stderr)
    return table(f"(c) Per-op overhead: a chain of {n_ops:,} scalar ops (`y = y * c; y = y + c`), forward + backward",
                 ["variant", "total ms", "us / op", "forward us / op", "backward us / op", "speed vs torch (torch time / this)"], rows,
                 f"Forward/backward split measured separately (median of single runs). {ld.note()}")


# ----------------------------------------------------------------------------------------------
# (d) bandwidth
# ----------------------------------------------------------------------------------------------
def bandwidth_section(thread_counts: list[int], n: int) -> str:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(n, dtype=np.float32)
    y = rng.standard_normal(n, dtype=np.float32)
    cols = 256
    x2 = x[: (n // cols) * cols].reshape(-1, cols)
    bias = rng.standard_normal(cols, dtype=np.float32)
    c10 = 10
    x10 = x[: (n // c10) * c10].reshape(-1, c10)
    gx, gy, gx2, gbias, gx10 = bg.tensor(x), bg.tensor(y), bg.tensor(x2), bg.tensor(bias), bg.tensor(x10)
    tx = ty = tx2 = tbias = tx10 = None
    if torch is not None:
        tx, ty, tx2, tbias, tx10 = (torch.from_numpy(a) for a in (x, y, x2, bias, x10))

    def np_softmax(a):
        e = np.exp(a - a.max(axis=1, keepdims=True))
        e /= e.sum(axis=1, keepdims=True)
        return e

    dst = np.empty_like(x)
    tdst = torch.empty_like(tx) if torch is not None else None
    # (name, bytes moved (read + write, minimum), bg fn, numpy fn, torch fn)
    # the machine's bandwidth, measured in the same block as each op (so drift of this shared
    # machine hits both alike): a plain copy (read + write) by numpy and torch for elementwise ops,
    # the best full read (numpy / torch sum and max) for reductions
    copy_refs = {"ref copy np": lambda: np.copyto(dst, x)}
    read_refs = {"ref sum np": lambda: x.sum(), "ref max np": lambda: x.max()}
    if torch is not None:
        copy_refs["ref copy torch"] = lambda: tdst.copy_(tx)
        read_refs["ref sum torch"] = lambda: tx.sum()
        read_refs["ref max torch"] = lambda: tx.max()
    ops = [
        ("copy (bandwidth reference)", 8 * n, None, lambda: np.copyto(dst, x), lambda: tdst.copy_(tx)),
        ("relu (max(x, 0))", 8 * n, lambda: bg.relu(gx), lambda: np.maximum(x, 0), lambda: torch.relu(tx)),
        ("exp", 8 * n, lambda: bg.exp(gx), lambda: np.exp(x), lambda: torch.exp(tx)),
        ("tanh", 8 * n, lambda: bg.tanh(gx), lambda: np.tanh(x), lambda: torch.tanh(tx)),
        ("x + y", 12 * n, lambda: gx + gy, lambda: x + y, lambda: tx + ty),
        ("x + bias (N x 256 + 256)", 8 * x2.size, lambda: gx2 + gbias, lambda: x2 + bias, lambda: tx2 + tbias),
        ("sum(x)", 4 * n, lambda: gx.sum(), lambda: x.sum(), lambda: tx.sum()),
        ("max(x)", 4 * n, lambda: gx.max(), lambda: x.max(), lambda: tx.max()),
        ("sum(x, axis=0) (N x 256)", 4 * x2.size, lambda: gx2.sum(axis=0), lambda: x2.sum(axis=0), lambda: tx2.sum(dim=0)),
        ("softmax rows of 256", 8 * x2.size, lambda: bg.softmax(gx2, -1), lambda: np_softmax(x2), lambda: torch.softmax(tx2, -1)),
        ("softmax rows of 10", 8 * x10.size, lambda: bg.softmax(gx10, -1), lambda: np_softmax(x10), lambda: torch.softmax(tx10, -1)),
    ]
    rows = []
    ld = Load().__enter__()
    reductions = ("sum(x)", "max(x)")
    for t in thread_counts:
        with threads(t), bg.no_grad():
            measured = []
            for name, nbytes, fb, fn, ft in ops:
                fns = {"np": fn} if fb is None else {"bg": fb, "np": fn}
                if torch is not None:
                    fns["torch"] = ft
                rated = fb is not None and not name.startswith("softmax")
                refs = (read_refs if name in reductions else copy_refs) if rated else {}
                med = measure({**fns, **refs}, max(5, Cfg.repeats // 2))
                gbs = {k: nbytes / v / 1e9 for k, v in med.items() if k in fns}
                # a copy moves 8 bytes per element, a full read 4
                ref_bw = max((8 if name not in reductions else 4) * n / med[k] / 1e9 for k in refs) if refs else None
                measured.append((name, gbs, ref_bw))
                print(f"  bandwidth {name} t{t}: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in gbs.items())
                      + (f"; machine {ref_bw:.1f} GB/s" if ref_bw else ""), file=sys.stderr)
            for name, gbs, ref in measured:
                rows.append([name, str(t), fmt(gbs.get("bg")), fmt(gbs["np"]), fmt(gbs.get("torch")),
                             ratio(gbs.get("bg"), gbs["np"]), ratio(gbs.get("bg"), gbs.get("torch")),
                             "" if ref is None else f"{gbs['bg'] / ref:.0%} of {ref:.1f}"])
    ld.__exit__()
    return table(f"(d) Elementwise / reduction bandwidth on {n:.0e} float32 elements, GB/s (1e9 bytes read + written / median time)",
                 ["op", "threads", "batchgrad", "numpy", "torch", "bg / numpy", "bg / torch", "bg / machine"], rows,
                 "numpy elementwise ops and reductions are single-threaded whatever the thread count (only its BLAS is "
                 "threaded); numpy softmax is the usual 4-pass `exp(x - max) / sum` and is charged the same minimum bytes. "
                 "**bg / machine**: batchgrad's GB/s over the machine's bandwidth measured in the same block (same "
                 "rounds, so the shared machine's drift hits both): the best plain copy (`np.copyto` / "
                 "`torch.Tensor.copy_`, read + write) for elementwise ops, the best full read (numpy / torch sum and max) "
                 "for reductions; softmax rows are compute-bound and not rated. " + ld.note())


# ----------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer and shorter repeats (about 3-4 minutes)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sections", nargs="+", default=["gemm", "step", "compiled", "breakdown", "overhead", "bandwidth"],
                    choices=["gemm", "step", "compiled", "breakdown", "overhead", "bandwidth"])
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--bandwidth-n", type=int, default=50_000_000, help="float32 elements per tensor in (d)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per timed repeat")
    ap.add_argument("--out", help="also write the tables (markdown) to this file")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each section wait up to SECONDS for other processes to leave the CPUs idle")
    ap.add_argument("--max-foreign", type=float, default=1.0, metavar="FRACTION",
                    help="re-measure (after waiting for idle CPUs) any row during which other processes used more "
                         "than FRACTION of the machine's CPU time (e.g. 0.1); default 1.0 = never")
    ap.add_argument("--jax-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compiled-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--gemm-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        Cfg.repeats, Cfg.rounds, Cfg.min_time, Cfg.warmup, Cfg.settle = 6, 2, 0.02, 2, 0.2
    if args.repeats:
        Cfg.repeats = args.repeats
    if args.min_time:
        Cfg.min_time = args.min_time
    Cfg.max_foreign = args.max_foreign
    if args.wait_idle > 0:
        Cfg.idle_wait = args.wait_idle
    if args.jax_child:
        jax_child(args.quick)
        return
    if args.compiled_child:
        compiled_child(args.compiled_child)
        return
    if args.gemm_child:
        gemm_child(args.gemm_child[0], int(args.gemm_child[1]), args.quick)
        return
    parts = [header()]
    print(parts[0], flush=True)
    t0 = perf()
    runners = {
        "gemm": lambda: gemm_section(args.threads, args.quick),
        "step": lambda: step_section(args.threads, args.quick),
        "compiled": lambda: compiled_section(args.threads, args.quick),
        "breakdown": lambda: breakdown_section(args.threads),
        "overhead": lambda: overhead_section(10_000),
        # 200 MB per tensor: at 1e7 floats (40 MB) part of each array stayed in this machine's 32 MB L3
        # between calls, and the rates measured depended on which access order reused it
        "bandwidth": lambda: bandwidth_section(args.threads, args.bandwidth_n),
    }
    for s in args.sections:
        wait_idle(args.wait_idle)
        t = perf()
        out = runners[s]()
        print(out, flush=True)
        parts.append(out)
        print(f"  [{s}: {perf() - t:.0f} s]", file=sys.stderr)
    print(f"  [total {perf() - t0:.0f} s]", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(parts))


if __name__ == "__main__":
    main()
