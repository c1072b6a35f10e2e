"""`compile_step`: record a training step once per batch shape as the tape's flat program and
replay it, with the optimizer update, in ONE Rust call per step.

The forward pass and the backward pass (recorded as registry ops by the VJP rules) become one
flat program whose outputs are the loss and one gradient per parameter. `_core.TrainStep` replays
it and then applies the optimizer's update calls (the same Rust `Rule` as `optimizer.step()`) to
the parameters in place, all inside one call with the GIL released:

* no Python per op, and no tensor storage allocated per step: the step keeps an arena of buffers,
  filled by the first call and reused by every later one (`_core.fresh_allocations()` counts the
  rest);
* plain SGD (no momentum, no weight decay): a weight gradient that is a single matmul of the
  program is never materialised; its product is accumulated straight into the weight
  (`W += -lr * Xᵀ G`, a GEMM epilogue). The result equals the unfused update up to float32
  rounding of that one product.

Parameters' ``.grad`` are not set by a compiled step (as with ``jax.jit`` of a whole step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import _core
from .tensor import Tensor, as_tensor, enable_grad

__all__ = ["compile_step", "CompiledStep"]


def _placeholder(x: Tensor) -> Tensor:
    return Tensor(_core.from_numpy(np.asarray(x._v.numpy(), dtype=np.float32, order="C"), True), x._bool)


def _labels(y: Any) -> Tensor:
    """Labels as a float32 tensor (integer class indices are exact in float32 up to 2**24)."""
    if isinstance(y, Tensor):
        return y
    return as_tensor(np.asarray(y, dtype=np.float32))


class CompiledStep:
    """A training step `loss = loss_fn(model(X), y); backward; optimizer.step()` recorded as a flat
    program per batch shape and replayed, update included, by one Rust call."""

    def __init__(self, model: Any, loss_fn: Callable[[Tensor, Tensor], Tensor], optimizer: Any, device: str = "cpu",
                 distributed: bool = False, bucket_mb: float | None = None) -> None:
        if device not in ("cpu", "gpu"):
            raise ValueError(f"compile_step: device must be 'cpu' or 'gpu', got {device!r}")
        if distributed and device != "cpu":
            raise ValueError("compile_step: distributed=True runs on the CPU (device='cpu')")
        if bucket_mb is not None:
            if not distributed:
                raise ValueError("compile_step: bucket_mb applies to distributed=True only")
            if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) or not bucket_mb >= 0 \
                    or bucket_mb == float("inf"):
                raise ValueError(f"compile_step: bucket_mb must be a finite number >= 0 (0: one exchange per step), "
                                 f"got {bucket_mb!r}")
        self.model, self.loss_fn, self.optimizer, self.device = model, loss_fn, optimizer, device
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self.steps: dict[tuple, Any] = {}
        self.gpu = None
        self.reducer = None
        if distributed:
            from .distributed import GradientReducer, broadcast_parameters, get_world, spans_nodes
            from .train import _reduction

            world = get_world()
            if world.size > 1:
                broadcast_parameters(self.params, world=world)
                if bucket_mb is None:  # overlap only where the all-reduce crosses a network
                    bucket_mb = 1.0 if spans_nodes(world) else 0.0
                self.reducer = GradientReducer([p.shape for p in self.params], n_stats=1, world=world,
                                               bucket_bytes=int(bucket_mb * 2**20))
                self._mean = _reduction(loss_fn) == "mean"
        if device == "gpu":
            from .gpu.step import GpuStep

            self.gpu = GpuStep(self)

    @property
    def programs(self) -> dict[tuple, Any]:
        """The recorded flat program (forward + backward) per (X shape, y shape)."""
        return {k: s.program for k, s in self.steps.items()}

    def step_for(self, X: Tensor, y: Tensor) -> Any:
        """The `_core.TrainStep` for this batch shape, recorded on first use."""
        key = (X.shape, y.shape)
        ts = self.steps.get(key)
        if ts is None:
            xp, yp = _placeholder(X), _placeholder(y)
            with enable_grad():
                loss = self.loss_fn(self.model(xp), yp)
            if not isinstance(loss, Tensor) or loss.size != 1:
                raise TypeError("compile_step: loss_fn must return a scalar tensor")
            grads = _core.grad([loss._v], [None], [p._v for p in self.params], True, True)
            missing = [i for i, g in enumerate(grads) if g is None]
            if missing:
                raise ValueError(f"compile_step: parameters {missing} do not affect the loss")
            prog = _core.Program.from_graph([xp._v, yp._v], [loss._v] + list(grads))
            ts = self.steps[key] = _core.TrainStep(prog, [p._v for p in self.params])
        return ts

    def program_for(self, X: Tensor, y: Tensor) -> Any:
        return self.step_for(X, y).program

    def _calls(self, optimizer: Any = None) -> list[tuple]:
        """This step's optimizer calls with parameter indices (advancing `optimizer`'s state as
        `step()` would; by default the step's own optimizer)."""
        opt, idx = optimizer or self.optimizer, self._index
        return [(kind, [idx[id(p)] for p in ps], [None if s is None else [t._v for t in s] for s in states], scalars)
                for g in opt.param_groups for kind, ps, states, scalars in opt._calls(g, g["params"])]

    def fused(self, X: Any, y: Any) -> list[bool]:
        """For each parameter, whether its update is fused into its gradient's matmul (no
        gradient buffer) with the optimizer's current settings. Advances no state (it plans the
        calls on a shallow copy of the optimizer with copied per-parameter state dicts)."""
        import copy

        X, y = as_tensor(X), _labels(y)
        opt = copy.copy(self.optimizer)
        opt.state = {p: dict(st) for p, st in self.optimizer.state.items()}
        return self.step_for(X, y).fused(self._calls(opt))

    def __call__(self, X: Any, y: Any) -> Any:
        """One optimisation step on the batch (X, y); returns the loss: a float on the CPU, a
        `LazyLoss` on the GPU (read back only by `float(loss)` / `loss.item()`)."""
        if self.gpu is not None:
            return self.gpu(X, y)
        X, y = as_tensor(X), _labels(y)
        if self.reducer is not None:
            return self._distributed(X, y)
        return self.step_for(X, y).run([X._v, y._v], self._calls())

    def _distributed(self, X: Tensor, y: Tensor) -> float:
        """Forward + backward into the reducer's flat buffer (one Rust call), one exchange of it
        (an all-reduce, or on one machine a barrier over shared memory), then the update from the
        sum (one Rust call); returns the loss of all ranks' examples."""
        red = self.reducer
        n = int(X.shape[0]) if X.ndim else 1
        err, loss = None, 0.0
        # the scale of the usual case, equal batches on every rank (a mean loss: 1 / W), applied
        # as the gradients are copied; reduce() asks for another when the batches differ
        first = 1.0 / red.world.size if self._mean else 1.0
        ready = red.ready if len(red.buckets) > 1 else None  # buckets sent as the backward finishes them
        try:  # recording a new batch shape can fail too: also shared with the other ranks
            ts = self.step_for(X, y)
            loss = ts.grads_into([X._v, y._v], red.flat, first, ready)
        except Exception as e:  # noqa: BLE001 - raised on every rank by reduce()
            err = e

        def fill(scale: float, again: bool) -> None:
            if again or scale != first:  # the buffer holds the sum now: replay for this rank's gradient
                ts.grads_into([X._v, y._v], red.flat, scale)

        out = red.reduce(fill, n, self._mean, [loss * n if self._mean else loss], err)
        st, total = out  # every rank passes a batch, so never None
        ts.update_from(red.summed(), self._calls())
        return float(st[0] / total) if self._mean else float(st[0])

    def to_model(self) -> Any:
        """The model with the step's parameters (on the GPU: copied back into it in place)."""
        return self.gpu.to_model() if self.gpu is not None else self.model

    def optimizer_state(self) -> dict:
        """The optimizer's `state_dict()` (on the GPU: its buffers and step counts copied back
        into the host optimizer first)."""
        return self.gpu.optimizer_state() if self.gpu is not None else self.optimizer.state_dict()


def compile_step(model: Any, loss_fn: Callable[[Tensor, Tensor], Tensor], optimizer: Any, example_batch: tuple | None = None, device: str = "cpu",
                 distributed: bool = False, bucket_mb: float | None = None) -> CompiledStep:
    """Record forward + backward of one training step as a flat program (once per batch shape) and
    return a callable `step(X, y) -> loss` that replays it and applies `optimizer`'s update in
    one Rust call.

    >>> step = bg.compile_step(model, bg.nn.functional.cross_entropy, opt, (X[:32], y[:32]))
    >>> for X, y in loader: loss = step(X, y)

    ``device="gpu"`` replays the same program on the GPU (see `batchgrad.gpu`): parameters and
    optimizer state stay there, each step is one submit, and the returned loss is lazy.

    ``distributed=True`` (CPU) makes it a data-parallel step over the ranks of
    `bg.distributed.init()`: rank 0's parameters are broadcast when the step is made, and each
    call replays forward + backward into one flat gradient buffer, sums it over the ranks
    (weighted by each rank's batch size), then applies the update from the sum, so every rank takes the step of
    the union of all ranks' batches; it returns that union's loss. No matmul epilogue fusion
    (the update needs the summed gradient).

    ``bucket_mb`` (distributed only) overlaps the all-reduce with the backward: the gradients are
    cut, from the last parameter back, into buckets of about that many MiB, and each bucket is
    all-reduced by a communication thread as soon as the backward has finished it. ``0`` sums
    once per step after the backward: on one machine through shared memory (each rank's buffer
    is its slot in an MPI shared-memory window, one barrier, and the update adds every rank's
    slot as it reads them; ``BATCHGRAD_MPI_SHARED=0`` takes an all-reduce instead), across
    machines with one all-reduce. The default (None) is 1 MiB buckets when the ranks span
    several machines and ``0`` when they share one (there an all-reduce is a copy through
    shared memory that needs the cores the backward is using). With two ranks the results are
    the same bits every way.
    """
    step = CompiledStep(model, loss_fn, optimizer, device, distributed, bucket_mb)
    if example_batch is not None:
        X, y = example_batch
        step.step_for(as_tensor(X), _labels(y))
    return step
