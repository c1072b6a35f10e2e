"""Losses, penalties and activations as functions (as ``torch.nn.functional``).

Every loss takes ``reduction="mean" | "sum" | "none"``: ``"none"`` returns the unreduced
losses (one per example for :func:`cross_entropy`, one per element for the others), whose
mean / sum are exactly what ``"mean"`` / ``"sum"`` return.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import _args, _core
from ..tensor import _TRACE_DEPTH, Tensor, _op, _wrap, as_tensor, exp, log, maximum, relu, reshape, sigmoid, tanh
from ..tensor import abs as _abs
from ..tensor import log_softmax as _log_softmax
from ..tensor import softmax as _softmax

__all__ = [
    "mse_loss", "l1_loss", "cross_entropy", "binary_cross_entropy_with_logits",
    "l2_penalty", "l1_penalty", "linear", "linear_relu", "add_relu", "relu", "tanh", "sigmoid", "softmax", "log_softmax",
]

_REDUCTIONS = ("mean", "sum", "none")
_call1, _call2 = _core.call1, _core.call2
_SOFTMAX_XENT, _MEAN = _core.op_code("softmax_xent"), _core.op_code("mean", {"axes": [], "keepdims": False})


def _check_reduction(reduction: Any) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _reduce(per: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per.mean()
    if reduction == "sum":
        return per.sum()
    return per


def _pair(name: str, input: Any, target: Any) -> tuple[Tensor, Tensor]:
    x, t = as_tensor(input), as_tensor(target)
    if x.shape != t.shape:
        raise ValueError(
            f"{name}: input of shape {x.shape} and target of shape {t.shape} do not match "
            "(no implicit broadcasting; reshape one of them)"
        )
    return x, t


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Squared error ``(input - target) ** 2``; input and target must have the same shape."""
    reduction = _check_reduction(reduction)
    x, t = _pair("mse_loss", input, target)
    return _reduce((x - t).square(), reduction)


def l1_loss(input: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Absolute error ``|input - target|``; input and target must have the same shape."""
    reduction = _check_reduction(reduction)
    x, t = _pair("l1_loss", input, target)
    return _reduce(_abs(x - t), reduction)


def _class_labels(target: Any) -> np.ndarray:
    """Class indices as an int64 array; ValueError for bool or non-integer values."""
    if isinstance(target, Tensor):
        if target.dtype == np.bool_:
            raise ValueError("cross_entropy: labels must be integer class indices, got a boolean tensor")
        arr = np.asarray(target.numpy())
    else:
        arr = np.asarray(target)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (np.mod(arr, 1) != 0) if arr.size else np.zeros(0, bool)
        if np.any(bad):
            v = arr[bad].flat[0]
            raise ValueError(f"cross_entropy: labels must be integer class indices, got the non-integer label {v}")
        return arr.astype(np.int64)
    raise ValueError(f"cross_entropy: labels must be integer class indices, got an array of dtype {arr.dtype}")


def cross_entropy(input: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy ``logsumexp(z_i) - z_i[y_i]`` of logits and class labels.

    Args:
        input: logits of shape ``(N, C)``, or ``(C,)`` for a single example.
        target: class indices in ``[0, C)``: an integer numpy array / list, or a Tensor with
            integer values, of shape ``(N,)`` (a single index for 1-D logits).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (the ``(N,)`` per-example
            losses; a 0-d tensor for 1-D logits).

    Uses the fused registry op ``softmax_xent``: stable for any logit magnitude, with the
    backward ``softmax(z) - onehot(y)`` computed in one kernel.

    Raises:
        ValueError: if the batch sizes differ (naming both shapes), a label is out of range
            (naming it and the number of classes), labels are not integers, or the reduction
            is unknown.
    """
    reduction = _check_reduction(reduction)
    z = as_tensor(input)
    zs = z._v.shape
    if len(zs) == 2 and not _TRACE_DEPTH[0]:
        # the common case straight to the op, which checks every label itself (integer, in range):
        # float32 Tensor labels as they are, integer numpy labels converted (exact below 2^24);
        # when the op refuses them, the checks below raise the error that names the bad label
        n = zs[0]
        if isinstance(target, Tensor):
            lab = target._v if target.dtype == np.float32 and target.shape == (n,) else None
        elif isinstance(target, np.ndarray) and target.dtype.kind in "iu" and target.shape == (n,) and zs[1] <= 1 << 24:
            lab = _core.from_numpy(target.astype(np.float32), False)
        else:
            lab = None
        if lab is not None:
            try:
                per = _call2(_SOFTMAX_XENT, z._v, lab)
            except ValueError:
                pass
            else:
                if reduction == "mean":
                    return _wrap(_call1(_MEAN, per))
                return _reduce(_wrap(per), reduction)
    if z.ndim not in (1, 2):
        raise ValueError(f"cross_entropy: expected logits of shape (N, C) or (C,), got shape {z.shape}")
    # A Tensor target stays on the graph (so a traced/compiled step reads each batch's labels);
    # inside a trace its values are not read here: the op itself validates them at run time.
    on_graph = isinstance(target, Tensor) and target.dtype != np.bool_
    if on_graph and _TRACE_DEPTH[0]:
        labels = np.zeros(target.shape, np.int64)
    else:
        labels = _class_labels(target)
    single = z.ndim == 1
    if single:
        if labels.size != 1 or labels.ndim > 1:
            raise ValueError(
                f"cross_entropy: logits of shape {z.shape} (one example) need a single label, got labels of shape {labels.shape}"
            )
        z = reshape(z, (1, z.shape[0]))
        labels = labels.reshape(1)
    elif labels.ndim != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(
            f"cross_entropy: logits of shape {z.shape} and labels of shape {labels.shape} do not match: "
            "expected labels of shape (N,) for logits of shape (N, C)"
        )
    c = z.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= c):
        bad = int(labels[(labels < 0) | (labels >= c)][0])
        raise ValueError(f"cross_entropy: label {bad} is out of range for {c} classes (labels must be in [0, {c}))")
    if on_graph:
        lab = reshape(target, labels.shape)._v
    else:
        lab = _core.from_numpy(np.ascontiguousarray(labels, dtype=np.float32), False)
    per = _op("softmax_xent", z, Tensor(lab))
    if single:
        per = reshape(per, ())
    return _reduce(per, reduction)


def binary_cross_entropy_with_logits(input: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of logits ``x`` and targets ``y`` in ``[0, 1]`` (same shape).

    Computed stably as ``max(x, 0) - x * y + log(1 + exp(-|x|))``: no overflow for any
    ``|x|``, and the gradient is ``sigmoid(x) - y`` (also at ``x = 0``).
    """
    reduction = _check_reduction(reduction)
    x, y = _pair("binary_cross_entropy_with_logits", input, target)
    per = maximum(x, 0.0) - x * y + log(exp(-_abs(x)) + 1.0)
    return _reduce(per, reduction)


def _params(params: Any) -> list[Tensor]:
    if isinstance(params, Tensor):
        return [params]
    if hasattr(params, "parameters") and callable(params.parameters):
        return list(params.parameters())
    out = list(params)
    for p in out:
        if not isinstance(p, Tensor):
            raise TypeError(f"expected Tensors (or a Module), got {type(p).__name__}")
    return out


def l2_penalty(params: Iterable[Tensor] | Any) -> Tensor:
    """``sum_j sum(p_j ** 2)`` over tensors / a Module's parameters: add ``lam * l2_penalty(...)`` to a loss.

    Note: no factor 1/2, so its gradient is ``2 * p`` (SGD's ``weight_decay=wd`` equals ``lam = wd / 2``).
    """
    ps = _params(params)
    if not ps:
        return as_tensor(0.0)
    total = ps[0].square().sum()
    for p in ps[1:]:
        total = total + p.square().sum()
    return total


def l1_penalty(params: Iterable[Tensor] | Any) -> Tensor:
    """``sum_j sum(|p_j|)`` over tensors / a Module's parameters (lasso penalty)."""
    ps = _params(params)
    if not ps:
        return as_tensor(0.0)
    total = _abs(ps[0]).sum()
    for p in ps[1:]:
        total = total + _abs(p).sum()
    return total


def linear(input: Any, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight + bias`` with ``weight`` of shape ``(in, out)`` (the transpose of PyTorch's)."""
    y = as_tensor(input) @ weight
    return y if bias is None else y + bias


def add_relu(input: Any, bias: Any) -> Tensor:
    """``relu(input + bias)`` (broadcasting) as one fused op: one pass over memory forward, and
    its backward is the fused ``relu_grad`` (no separate add, compare and multiply passes)."""
    return _op("add_relu", as_tensor(input), as_tensor(bias))


def linear_relu(input: Any, weight: Tensor, bias: Tensor) -> Tensor:
    """``relu(input @ weight + bias)`` with the bias add and the activation fused (``add_relu``).
    ``nn.Sequential`` uses it for each ``Linear`` (with bias) followed by ``ReLU``."""
    return add_relu(as_tensor(input) @ weight, bias)


def softmax(input: Any, dim: int = -1) -> Tensor:
    """Softmax along ``dim`` (stable)."""
    x = as_tensor(input)
    return _softmax(x, _args.axis(dim, x.ndim, "dim", "softmax"))


def log_softmax(input: Any, dim: int = -1) -> Tensor:
    """Log-softmax along ``dim`` (stable)."""
    x = as_tensor(input)
    return _log_softmax(x, _args.axis(dim, x.ndim, "dim", "log_softmax"))
