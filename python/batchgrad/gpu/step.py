"""`compile_step(..., device="gpu")`: the recorded training step (the same flat program as the
CPU step) replayed on the GPU, forward + backward + optimizer update in ONE compute pass of ONE
command buffer, ONE submit per step, and no read-back unless asked.

Parameters and optimizer state live on the GPU from the first step; the host model and optimizer
stay untouched until `to_model()` / `optimizer_state()` copy them back (so a GPU fault never
leaves them half-updated). The step plans its optimizer calls on a private copy of the
optimizer's per-parameter state (the step counts advance there); the parameter groups are shared,
so a learning-rate scheduler acting on the optimizer is seen by the next step.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..tensor import Tensor
from . import device as _device
from .device import GpuError
from .lower import optim as _optim
from .lower.base import Buf
from .plan import Plan

LOSS_RING = 4096  # losses kept on the GPU for lazy reading (one float per step)


class LazyLoss:
    """The loss of one GPU step, read back only when asked (`float(loss)`, `.item()`)."""

    __slots__ = ("_step", "_k", "_value")

    def __init__(self, step: GpuStep, k: int) -> None:
        self._step, self._k, self._value = step, k, None

    def item(self) -> float:
        if self._value is None:
            self._value = self._step._read_losses(self._k, self._k + 1)[0]
        return self._value

    __float__ = item

    def __repr__(self) -> str:
        return f"LazyLoss(step {self._k}{'' if self._value is None else f', {self._value:.6g}'})"

    def __format__(self, spec: str) -> str:
        return format(self.item(), spec)


class GpuStep:
    """The GPU executor of a `CompiledStep` (which records the program once per batch shape)."""

    def __init__(self, compiled: Any) -> None:
        self.cs = compiled
        self.dev = _device.get()
        self.params = compiled.params
        # private per-parameter optimizer state: the host optimizer is not advanced
        self.opt = copy.copy(compiled.optimizer)
        self.opt.state = {p: {k: (Tensor(v._v.detach()) if isinstance(v, Tensor) else v) for k, v in st.items()}
                          for p, st in compiled.optimizer.state.items()}
        self.pbufs = [Buf(tuple(p.shape), f"param {i}") for i, p in enumerate(self.params)]
        self.gpu: dict[Buf, Any] = {}
        for i, (p, b) in enumerate(zip(self.params, self.pbufs)):
            self.dev.check_size(b.nbytes, f"parameter {i} of shape {list(p.shape)}")
            self.gpu[b] = self.dev.buffer(b.nbytes, b.label)
            self._write(b, p.numpy())
        self.sbufs: dict[tuple[int, int], Buf] = {}  # (parameter, state position) -> buffer
        self.shost: dict[tuple[int, int], Any] = {}  # ... and the private host Var it mirrors
        self.plans: dict[tuple, Plan] = {}
        self.loss_log = self.dev.buffer(4 * LOSS_RING, "losses")
        self.steps = 0

    def _write(self, b: Buf, a: np.ndarray) -> None:
        if b.numel:
            self.dev._call(lambda: self.dev.queue.write_buffer(self.gpu[b], 0, np.ascontiguousarray(a, np.float32)), "uploading")

    def _read(self, b: Buf) -> np.ndarray:
        if not b.numel:
            return np.zeros(b.shape, np.float32)
        mv = self.dev._call(lambda: self.dev.queue.read_buffer(self.gpu[b], 0, 4 * b.numel), "reading back")
        return np.frombuffer(mv, np.float32).reshape(b.shape).copy()

    # -- planning
    def _calls(self) -> list[tuple]:
        """This step's updates per parameter: (index, rule, state tensors by position, scalars)."""
        out = []
        for kind, idx, states, scalars in self.cs._calls(self.opt):
            for j, i in enumerate(idx):
                out.append((i, kind, [None if s is None else s[j] for s in states], tuple(scalars)))
        return out

    def _state_buf(self, i: int, k: int, t: Any) -> Buf:
        b = self.sbufs.get((i, k))
        if b is None:
            b = self.sbufs[(i, k)] = Buf(tuple(t.shape), f"state {k} of param {i}")
            self.gpu[b] = self.dev.buffer(b.nbytes, b.label)
            self._write(b, t.numpy())  # zeros, or Adagrad's initial accumulator
        self.shost[(i, k)] = t
        return b

    def _plan(self, X: np.ndarray, y: np.ndarray, calls: list[tuple]) -> tuple[Plan, list]:
        sig = tuple((i, kind, tuple(s is not None for s in st)) for i, kind, st, _ in calls)
        key = (X.shape, y.shape, sig)
        entry = self.plans.get(key)
        if entry is None:
            from ..tensor import as_tensor

            ts = self.cs.step_for(as_tensor(X), as_tensor(y))
            prog = ts.program
            bound = {p._v.id: b for p, b in zip(self.params, self.pbufs)}
            upd: list = []

            def add_updates(lw: Any, plan: Plan) -> None:
                for i, kind, st, scalars in calls:
                    sb = [None if t is None else self._state_buf(i, k, t) for k, t in enumerate(st)]
                    sb += [None] * (_optim.N_STATES[kind] - len(sb))
                    _optim.update(lw, kind, self.pbufs[i], plan.outputs[1 + i], sb, scalars)
                    upd.append(lw.launches[-1])

            plan = Plan(list(prog.nodes()), list(prog.outputs), bound, self.gpu, extra=add_updates)
            # the update launches come last: their parameter words are one contiguous range
            first = len(plan.launches) - sum(1 for u in upd if u.groups[0] > 0)
            live = [c for c, u in zip(calls, upd) if u.groups[0] > 0]
            entry = self.plans[key] = (plan, first, live)
        return entry[0], entry[1:]

    # -- running
    def __call__(self, X: Any, y: Any) -> LazyLoss:
        if self.dev.lost:
            raise GpuError("the GPU device was lost: this step's parameters are gone; the host model and optimizer are "
                           "as they were before the step started (or at the last to_model()); compile a new step")
        X = np.ascontiguousarray(X.numpy() if isinstance(X, Tensor) else X, np.float32)
        y = np.ascontiguousarray(y.numpy() if isinstance(y, Tensor) else y, np.float32)
        saved = {p: dict(st) for p, st in self.opt.state.items()}
        try:
            calls = self._calls()
            plan, (first, live) = self._plan(X, y, calls)
            if live:
                a = self.dev.meta_align // 4
                words = np.zeros(len(live) * a, np.uint32)
                by_i = {c[0]: c for c in calls}
                from .lower.base import words as pack

                for k, (i, kind, st, _) in enumerate(live):
                    _, _, _, scalars = by_i[i]
                    words[k * a: k * a + 64] = pack(_optim.words(kind, self.pbufs[i].numel, [s is not None for s in st], scalars))
                self.dev._call(lambda: self.dev.queue.write_buffer(plan.meta_buf, first * self.dev.meta_align, words), "uploading")
            plan.upload([X, y])
            slot = self.steps % LOSS_RING
            loss_buf = plan.gpu[plan.outputs[0]]
            plan.submit(after=lambda enc: enc.copy_buffer_to_buffer(loss_buf, 0, self.loss_log, 4 * slot, 4))
        except Exception:
            self.opt.state = saved  # a failed step does not advance the optimizer's counters
            raise
        self.steps += 1
        return LazyLoss(self, self.steps - 1)

    def _read_losses(self, start: int, stop: int) -> list[float]:
        """Losses of steps [start, stop) (one read-back)."""
        if stop > self.steps or start < 0 or start >= stop:
            raise IndexError(f"losses of steps {start}..{stop - 1}: {self.steps} steps were run")
        if self.steps - start > LOSS_RING:
            raise IndexError(f"the loss of step {start} is no longer kept: only the last {LOSS_RING} losses stay on the GPU")
        out = []
        k = start
        while k < stop:
            s = k % LOSS_RING
            n = min(stop - k, LOSS_RING - s)
            mv = self.dev._call(lambda: self.dev.queue.read_buffer(self.loss_log, 4 * s, 4 * n), "reading losses")
            out += np.frombuffer(mv, np.float32).astype(float).tolist()
            k += n
        return out

    def losses(self, start: int = 0, stop: int | None = None) -> list[float]:
        """The losses of steps [start, stop) in one read-back (the last 4096 are kept)."""
        return self._read_losses(start, self.steps if stop is None else stop)

    def to_model(self) -> Any:
        """Copy the parameters back into the host model (in place); returns the model."""
        vals = [self._read(b) for b in self.pbufs]
        for p, v in zip(self.params, vals):
            p._v.assign(_var(v))
        return self.cs.model

    def optimizer_state(self) -> dict:
        """Copy the optimizer state (buffers and step counts) into the host optimizer and
        return its `state_dict()`: the host optimizer then continues exactly where the GPU was."""
        for (i, k), b in self.sbufs.items():
            self.shost[(i, k)].assign(_var(self._read(b)))
        host = self.cs.optimizer
        host.state = {p: {k: (Tensor(v._v.detach()) if isinstance(v, Tensor) else v) for k, v in st.items()}
                      for p, st in self.opt.state.items()}
        return host.state_dict()


def _var(a: np.ndarray) -> Any:
    from .. import _core

    return _core.from_numpy(np.ascontiguousarray(a, np.float32), False)
