"""Gradient utilities (as ``torch.nn.utils``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _core
from ..tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _with_grads(parameters: Any) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    ps = list(parameters)
    for p in ps:
        if not isinstance(p, Tensor):
            raise TypeError(f"expected Tensors, got {type(p).__name__}")
    return [p for p in ps if p.grad is not None]


def clip_grad_norm_(parameters: Any, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> float:
    """Rescale the gradients in place so that their global norm is at most ``max_norm``.

    The total norm is taken over all gradients together, as if concatenated into one
    vector. If it exceeds ``max_norm``, every gradient is multiplied by
    ``max_norm / (total_norm + 1e-6)`` (the fused ``_core.scale_grads``); otherwise they are
    left untouched. Parameters without a gradient are ignored.

    Args:
        parameters: a Tensor or an iterable of Tensors (e.g. ``model.parameters()``).
        max_norm: the largest allowed norm.
        norm_type: the p of the p-norm; ``2.0`` (default, computed by the fused
            ``_core.grad_sq_norm``), any positive float, or ``inf`` for the max-abs norm.
        error_if_nonfinite: raise ``RuntimeError`` if the total norm is nan or inf.

    Returns:
        The total norm of the gradients before clipping, as a float.
    """
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    if not max_norm >= 0:
        raise ValueError(f"clip_grad_norm_: max_norm must be non-negative, got {max_norm}")
    if not norm_type > 0:
        raise ValueError(f"clip_grad_norm_: norm_type must be positive, got {norm_type}")
    ps = _with_grads(parameters)
    if not ps:
        return 0.0
    vs = [p._v for p in ps]
    if norm_type == 2.0:
        total = math.sqrt(_core.grad_sq_norm(vs))
    elif math.isinf(norm_type):
        total = max(float(np.max(np.abs(p.grad.numpy()), initial=0.0)) for p in ps)
    else:
        acc = sum(float(np.sum(np.abs(p.grad.numpy().astype(np.float64)) ** norm_type)) for p in ps)
        total = acc ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is non-finite ({total}), so it cannot be clipped"
        )
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        _core.scale_grads(vs, coef)
    return total


def clip_grad_value_(parameters: Any, clip_value: float) -> None:
    """Clip every gradient element into ``[-clip_value, clip_value]`` in place."""
    clip_value = float(clip_value)
    if not clip_value >= 0:
        raise ValueError(f"clip_grad_value_: clip_value must be non-negative, got {clip_value}")
    for p in _with_grads(parameters):
        p.grad = np.clip(p.grad.numpy(), -clip_value, clip_value)
