"""`compile_step`: record a training step once per batch shape as the tape's flat program and
replay it in Rust.

The forward pass and the backward pass (recorded as registry ops by the VJP rules) become ONE
flat program; each step replays it with a single call into the Rust executor (no Python per op,
intermediate buffers freed after their last reader), then the optimizer's fused Rust kernels
update the parameters in place.
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
    program per batch shape and replayed by the Rust executor."""

    def __init__(self, model: Any, loss_fn: Callable[[Tensor, Tensor], Tensor], optimizer: Any, device: str = "cpu") -> None:
        if device != "cpu":
            raise NotImplementedError(f"compile_step: device={device!r} is not available yet (the GPU executor replays the same program; only 'cpu' exists today)")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.programs: dict[tuple, Any] = {}

    def program_for(self, X: Tensor, y: Tensor) -> Any:
        key = (X.shape, y.shape)
        prog = self.programs.get(key)
        if prog is None:
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
            self.programs[key] = prog
        return prog

    def __call__(self, X: Any, y: Any) -> float:
        """One optimisation step on the batch (X, y); returns the loss as a float."""
        X, y = as_tensor(X), _labels(y)
        outs = self.program_for(X, y).run([X._v, y._v])
        for p, g in zip(self.params, outs[1:]):
            p._v.set_grad(g)
        self.optimizer.step()
        return float(outs[0].item())


def compile_step(model: Any, loss_fn: Callable[[Tensor, Tensor], Tensor], optimizer: Any, example_batch: tuple | None = None, device: str = "cpu") -> CompiledStep:
    """Record forward + backward of one training step as a flat program (once per batch shape) and
    return a callable `step(X, y) -> loss` that replays it in Rust and applies `optimizer`.

    >>> step = bg.compile_step(model, bg.nn.functional.cross_entropy, opt, (X[:32], y[:32]))
    >>> for X, y in loader: loss = step(X, y)
    """
    step = CompiledStep(model, loss_fn, optimizer, device)
    if example_batch is not None:
        X, y = example_batch
        step.program_for(as_tensor(X), _labels(y))
    return step
