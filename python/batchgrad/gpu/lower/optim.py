"""Optimizer updates on the GPU (kernels/optim.wgsl): one fused launch per parameter. The
optimizer's own `_calls` (the same calls a CPU step runs through rust/optim.rs's `Rule`) give the
rule and its scalars; `words` turns them into the kernel's constants exactly as the Rust side
derives them (float64 where Rust computes in float64, then rounded to float32)."""

from __future__ import annotations

import math

import numpy as np

from .base import Buf, Lowering, threads

# state buffer positions each rule binds (out1, out2, out3), as in `Rule::num_states`
N_STATES = {"sgd": 1, "adam": 3, "rmsprop": 3, "adagrad": 1}


def _f32(x: float) -> float:
    return float(np.float32(x))


def words(kind: str, n: int, states: list[bool], scalars: tuple) -> list:
    """Parameter words of one update: [n, flags, s0 ..]."""
    if kind == "sgd":
        lr, mom, damp, nest, wd, first, maxi = scalars
        has_buf = bool(states and states[0]) and mom != 0.0
        flags = has_buf | bool(first) << 1 | bool(nest) << 2 | bool(maxi) << 3
        return [n, flags, -_f32(lr), _f32(mom), _f32(1.0 - float(np.float32(damp))), _f32(wd)]
    if kind == "adam":
        lr, b1, b2, eps, wd, step, decoupled, maxi = scalars
        lr64, b164, b264 = (float(np.float32(v)) for v in (lr, b1, b2))
        wd32 = _f32(wd)
        bc1, bc2 = 1.0 - b164 ** step, 1.0 - b264 ** step
        decay = bool(decoupled) and wd32 != 0.0
        ams = len(states) > 2 and bool(states[2])
        flags = ams | decay << 1 | bool(maxi) << 2
        return [n, flags, _f32(1.0 - b164), _f32(b2), _f32(1.0 - b264), _f32(eps), 0.0 if decoupled else wd32,
                _f32(1.0 - lr64 * wd32) if decay else 1.0, _f32(-(lr64 / bc1)), _f32(math.sqrt(bc2))]
    if kind == "rmsprop":
        lr, alpha, eps, wd, mom, maxi = scalars
        has_mom = len(states) > 1 and bool(states[1]) and mom > 0
        centered = len(states) > 2 and bool(states[2])
        flags = has_mom | centered << 1 | bool(maxi) << 2
        return [n, flags, -_f32(lr), _f32(alpha), _f32(1.0 - float(np.float32(alpha))), _f32(eps), _f32(wd), _f32(mom)]
    if kind == "adagrad":
        lr, lr_decay, wd, eps, step, maxi = scalars
        clr = float(np.float32(lr)) / (1.0 + (step - 1) * float(np.float32(lr_decay)))
        return [n, int(bool(maxi)), _f32(-clr), _f32(wd), _f32(eps)]
    raise ValueError(f"optimizer update: unknown rule {kind!r} (expected sgd, adam, rmsprop or adagrad)")


def update(lw: Lowering, kind: str, param: Buf, grad: Buf, states: list[Buf | None], scalars: tuple) -> None:
    """Append the fused update of one parameter (its words are rewritten every step)."""
    present = [s is not None for s in states]
    bound = [s if s is not None else lw.scratch((1,), "absent state") for s in states]
    lw.launch("optim", "op_" + kind, [grad], [param, *bound], words(kind, param.numel, present, scalars),
              threads(param.numel), label=f"{kind} update")


RULES: dict = {}  # updates are not program nodes: the GPU step appends them (gpu/step.py)
