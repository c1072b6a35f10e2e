"""Minibatch evaluation on the GPU: `model(X)` recorded once per batch shape, replayed batch by
batch; the next batch's upload is queued while the previous one computes, and outputs collect
on the GPU until one read-back."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from ..tensor import Tensor, enable_grad
from .plan import Plan


class GpuForward:
    """`model(X)` on the GPU, one plan per input shape. The model's parameters (captured by the
    recorded program) are uploaded when a plan is built and by `refresh()`."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.plans: dict[tuple, Plan] = {}

    def plan(self, shape: tuple) -> Plan:
        p = self.plans.get(shape)
        if p is None:
            ph = Tensor(_core.from_numpy(np.zeros(shape, np.float32), True))
            with enable_grad():
                out = self.model(ph)
            if not isinstance(out, Tensor):
                raise TypeError(f"GPU predict: the model must return one Tensor, got {type(out).__name__}")
            prog = _core.Program.from_graph([ph._v], [out._v])
            p = self.plans[shape] = Plan(list(prog.nodes()), list(prog.outputs))
        return p

    def refresh(self) -> None:
        for p in self.plans.values():
            p.upload_consts()

    def __call__(self, X: np.ndarray) -> np.ndarray:
        p = self.plan(X.shape)
        p.upload([X])
        p.submit()
        return p.read(p.outputs[0])


def predict(model: Any, X: Any, batch_size: int = 1024, _fwd: GpuForward | None = None) -> np.ndarray:
    """`model(X)` for a large array, streamed through the GPU `batch_size` rows at a time.

    Each minibatch is one upload and one submit (its output is copied into one result buffer
    on the GPU); uploads are queued while earlier batches compute, and the results come back
    in one read-back per result buffer (split at the device's buffer limit). The model is put
    in eval mode and restored.
    """
    from . import device as _device

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"predict: batch_size must be an integer >= 1, got {batch_size!r}")
    X = np.ascontiguousarray(X.numpy() if isinstance(X, Tensor) else X, np.float32)
    if X.ndim == 0:
        raise ValueError("predict: X must have a leading batch dimension, got a 0-d array")
    N = X.shape[0]
    was = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    try:
        fwd = _fwd or GpuForward(model)
        fwd.refresh()
        dev = _device.get()
        first = fwd.plan((min(batch_size, N),) + X.shape[1:]) if N else fwd.plan((1,) + X.shape[1:])
        row_shape = first.outputs[0].shape[1:]
        row = 4 * int(np.prod(row_shape, dtype=np.int64))
        if N == 0:
            return np.zeros((0,) + row_shape, np.float32)
        cap = int(dev.limits.get("max-buffer-size", 1 << 28))
        rows_per = max(batch_size, (min(cap, 1 << 28) // max(row, 1)) // batch_size * batch_size)
        outs = []
        result = dev.buffer(min(N, rows_per) * row, "predictions", 0)
        start = 0
        while start < N:
            stop = min(N, start + rows_per)
            for s in range(start, stop, batch_size):
                xb = X[s:min(s + batch_size, stop)]
                p = fwd.plan(xb.shape)
                if p.outputs[0].shape[1:] != row_shape:
                    raise ValueError(f"predict: output rows of shape {p.outputs[0].shape[1:]} != {row_shape}")
                p.upload([xb])
                src, off, nbytes = p.gpu[p.outputs[0]], (s - start) * row, xb.shape[0] * row
                if nbytes:
                    p.submit(after=lambda enc, src=src, off=off, nb=nbytes: enc.copy_buffer_to_buffer(src, 0, result, off, nb))
            mv = dev._call(lambda: dev.queue.read_buffer(result, 0, (stop - start) * row), "reading predictions")
            outs.append(np.frombuffer(mv, np.float32).reshape((stop - start,) + row_shape).copy())
            start = stop
        return np.concatenate(outs) if len(outs) > 1 else outs[0]
    finally:
        if was is not None and hasattr(model, "train"):
            model.train(was)


__all__ = ["GpuForward", "predict"]
