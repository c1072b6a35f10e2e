"""Optimizers (as ``torch.optim``) whose updates run in fused Rust kernels.

Each ``step()`` makes one kernel call per parameter group (``_core.sgd_step``,
``adam_step``, ``rmsprop_step``, ``adagrad_step``; a group is split only when its
parameters are at different step counts, e.g. after some of them had no gradient). Each
optimizer's ``_calls`` advances its state and describes those calls; ``step()`` runs them, and
``bg.compile_step`` runs the same calls (the same Rust ``Rule``) inside its one call per step. The
kernel reads every parameter's ``.grad`` and updates the parameter and its state buffers
(``bg.Tensor`` s held in ``optimizer.state[param]``) in place, reproducing
``torch.optim``'s float32 arithmetic. Parameters whose ``.grad`` is None are skipped.

    opt = bg.optim.Adam(model.parameters(), lr=1e-3)
    opt = bg.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                        {"params": model[2].parameters()}], lr=0.01, momentum=0.9)
    for xb, yb in loader:
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        opt.step()

``state_dict()`` holds numpy copies of the state buffers and per-parameter step counts,
with parameters numbered in group order as in PyTorch; ``load_state_dict`` restores them
exactly, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .. import _core
from ..tensor import Tensor, enable_grad, zeros

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "lr_scheduler"]


def _num(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {name}: {value!r} (expected a real number)")
    return float(value)


def _check_lr(lr: Any) -> None:
    if not _num("learning rate", lr) > 0:
        raise ValueError(f"Invalid learning rate: {lr!r} (must be > 0)")


def _check_nonneg(name: str, value: Any) -> None:
    if not _num(name, value) >= 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be >= 0)")


def _check_betas(betas: Any) -> None:
    try:
        b = tuple(betas)
    except TypeError:
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair of floats)") from None
    if len(b) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (expected a pair of floats)")
    for i, v in enumerate(b):
        if not 0.0 <= _num(f"beta parameter at index {i}", v) < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {v!r} (must be in [0, 1))")


class Optimizer:
    """Base class: holds ``param_groups`` (list of dicts with ``"params"`` and hyperparameters)
    and ``state`` (``{param: {name: bg.Tensor buffer or int step}}``).

    Subclasses define ``_validate(group)`` and ``_calls(group, params_with_grad)``.
    """

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self._validate(self.defaults)
        self.state: dict[Tensor, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, but got a Tensor")
        if isinstance(params, (set, frozenset)):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but got a set")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # ---- groups ---------------------------------------------------------------------------
    def _validate(self, group: dict[str, Any]) -> None:
        _check_lr(group["lr"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters, with hyperparameters defaulting to the optimizer's."""
        if not isinstance(param_group, dict):
            raise TypeError(f"a param group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("a param group needs a 'params' entry")
        ps = param_group["params"]
        if isinstance(ps, Tensor):
            ps = [ps]
        elif isinstance(ps, (set, frozenset)):
            raise TypeError("optimizer parameters need to be organized in ordered collections, but got a set")
        else:
            ps = list(ps)
        for p in ps:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        group = dict(param_group)
        group["params"] = ps
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        if "betas" in group and isinstance(group["betas"], list):
            group["betas"] = tuple(group["betas"])
        ids = [id(p) for p in ps]
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if len(set(ids)) != len(ids) or existing.intersection(ids):
            raise ValueError("some parameters appear in more than one parameter group (or twice in one)")
        self._validate(group)
        self.param_groups.append(group)

    # ---- gradients and steps --------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients of all parameters (``set_to_none=False`` sets them to zeros)."""
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none or not p._v.has_grad:
                    p._v.set_grad(None)
                else:
                    p.grad = np.zeros(p.shape, dtype=np.float32)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for g in self.param_groups:
            ps = [p for p in g["params"] if p._v.has_grad]
            if ps:
                for kind, cps, states, scalars in self._calls(g, ps):
                    _run(kind, cps, states, scalars)
        return loss

    def _calls(self, group: dict[str, Any], params: list[Tensor]) -> list[tuple]:
        """Advance the per-parameter state of one step of ``params`` (step counts, new buffers)
        and return the fused-kernel calls that update them: ``(rule, params, states, scalars)``
        with ``states`` the rule's buffer lists by position (None where absent) and ``scalars``
        the rest of ``_core.<rule>_step``'s arguments. ``step()`` runs them eagerly; a compiled
        step (``bg.compile_step``) runs them inside its one Rust call."""
        raise NotImplementedError

    def _state(self, p: Tensor) -> dict[str, Any]:
        st = self.state.get(p)
        if st is None:
            st = self.state[p] = {}
        return st

    @staticmethod
    def _by_step(params: list[Tensor], states: list[dict[str, Any]]) -> dict[int, list[int]]:
        """Indices of ``params`` grouped by their (already incremented) step count."""
        out: dict[int, list[int]] = {}
        for i, st in enumerate(states):
            out.setdefault(st["step"], []).append(i)
        return out

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {name: numpy array | int}}, "param_groups": [{..., "params": [index, ...]}]}``.

        Parameters are numbered 0, 1, ... in group order; arrays are copies.
        """
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in g["params"]]
            groups.append(packed)
        state: dict[int, dict[str, Any]] = {}
        for g in self.param_groups:
            for p in g["params"]:
                st = self.state.get(p)
                if st:
                    state[index[id(p)]] = {
                        k: (np.array(v.numpy(), dtype=np.float32, copy=True) if isinstance(v, Tensor) else v)
                        for k, v in st.items()
                    }
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters, buffers and step counts saved by :meth:`state_dict`.

        The optimizer must have been built over the same number of groups with the same
        number of parameters in each; buffer shapes are checked before anything changes.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, but the optimizer has {len(self.param_groups)}"
            )
        id_map: dict[int, Tensor] = {}
        for gi, (g, s) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(
                    f"loaded state dict's parameter group {gi} has {len(s['params'])} parameters, "
                    f"but the optimizer's has {len(g['params'])}"
                )
            for p, i in zip(g["params"], s["params"]):
                id_map[int(i)] = p
        new_state: dict[Tensor, dict[str, Any]] = {}
        for key, st in state_dict["state"].items():
            k = int(key)
            if k not in id_map:
                raise ValueError(f"loaded state dict has state for parameter {k}, which is in no parameter group")
            p = id_map[k]
            restored: dict[str, Any] = {}
            for name, v in st.items():
                if isinstance(v, (np.ndarray, Tensor)):
                    arr = np.asarray(v.numpy() if isinstance(v, Tensor) else v)
                    if arr.ndim == 0 and name == "step":
                        restored[name] = int(arr)
                        continue
                    if arr.shape != p.shape:
                        raise ValueError(
                            f"loaded state {name!r} of parameter {k} has shape {arr.shape}, but the parameter has shape {p.shape}"
                        )
                    restored[name] = Tensor(_core.from_numpy(np.array(arr, dtype=np.float32, copy=True), False))
                elif isinstance(v, np.integer):
                    restored[name] = int(v)
                else:
                    restored[name] = v
            new_state[p] = restored
        for g, s in zip(self.param_groups, saved_groups):
            for k, v in s.items():
                if k != "params":
                    g[k] = tuple(v) if isinstance(v, list) else v
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


def _vs(ts: Iterable[Tensor]) -> list[Any]:
    return [t._v for t in ts]


def _run(kind: str, params: list[Tensor], states: list, scalars: tuple) -> None:
    """Run one update call eagerly on the parameters' ``.grad``."""
    args = [_vs(s) if s is not None else ([] if kind == "sgd" else None) for s in states]
    getattr(_core, kind + "_step")(_vs(params), *args, *scalars)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    ``g = -grad if maximize else grad``; ``g += weight_decay * p``; with momentum,
    ``buf = g`` on the first step, then ``buf = momentum * buf + (1 - dampening) * g``, and
    ``g = g + momentum * buf`` (nesterov) or ``g = buf``; ``p -= lr * g``.
    State per parameter: ``"momentum_buffer"`` (only when ``momentum != 0``).
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, maximize: bool = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def _validate(self, g: dict[str, Any]) -> None:
        _check_lr(g["lr"])
        _check_nonneg("momentum value", g["momentum"])
        _num("dampening", g["dampening"])
        _check_nonneg("weight_decay value", g["weight_decay"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")

    def _calls(self, g: dict[str, Any], ps: list[Tensor]) -> list[tuple]:
        lr, mom, damp = float(g["lr"]), float(g["momentum"]), float(g["dampening"])
        nest, wd, maxi = bool(g["nesterov"]), float(g["weight_decay"]), bool(g["maximize"])
        if mom == 0.0:
            return [("sgd", ps, [None], (lr, 0.0, damp, nest, wd, False, maxi))]
        first, rest = [], []
        for p in ps:
            st = self._state(p)
            if st.get("momentum_buffer") is None:
                st["momentum_buffer"] = zeros(p.shape)
                first.append(p)
            else:
                rest.append(p)
        return [("sgd", sub, [[self.state[p]["momentum_buffer"] for p in sub]], (lr, mom, damp, nest, wd, is_first, maxi))
                for sub, is_first in ((first, True), (rest, False)) if sub]


class Adam(Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam``; ``amsgrad`` keeps the running max of ``v``.

    ``weight_decay`` is L2 regularisation added to the gradient (see :class:`AdamW` for the
    decoupled form). State per parameter: ``"step"`` (int), ``"exp_avg"``, ``"exp_avg_sq"``
    and, with amsgrad, ``"max_exp_avg_sq"``.
    """

    _decoupled = False

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False) -> None:
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, defaults)

    def _validate(self, g: dict[str, Any]) -> None:
        _check_lr(g["lr"])
        _check_betas(g["betas"])
        _check_nonneg("epsilon value", g["eps"])
        _check_nonneg("weight_decay value", g["weight_decay"])

    def _calls(self, g: dict[str, Any], ps: list[Tensor]) -> list[tuple]:
        ams = bool(g["amsgrad"])
        states = []
        for p in ps:
            st = self._state(p)
            if not st:
                st["step"] = 0
                st["exp_avg"] = zeros(p.shape)
                st["exp_avg_sq"] = zeros(p.shape)
            if ams and "max_exp_avg_sq" not in st:
                st["max_exp_avg_sq"] = zeros(p.shape)
            st["step"] += 1
            states.append(st)
        b1, b2 = (float(b) for b in g["betas"])
        calls = []
        for step, idx in self._by_step(ps, states).items():
            sts = [states[i] for i in idx]
            calls.append((
                "adam", [ps[i] for i in idx],
                [[s["exp_avg"] for s in sts], [s["exp_avg_sq"] for s in sts], [s["max_exp_avg_sq"] for s in sts] if ams else None],
                (float(g["lr"]), b1, b2, float(g["eps"]), float(g["weight_decay"]), int(step), self._decoupled, bool(g["maximize"])),
            ))
        return calls


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``:
    ``p *= 1 - lr * weight_decay`` before the Adam update. Default ``weight_decay=1e-2``."""

    _decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)


class RMSprop(Optimizer):
    """RMSprop, as ``torch.optim.RMSprop`` (optionally ``centered`` and with ``momentum``).

    State per parameter: ``"step"``, ``"square_avg"``, ``"momentum_buffer"`` (momentum > 0)
    and ``"grad_avg"`` (centered).
    """

    def __init__(self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, maximize: bool = False) -> None:
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)
        super().__init__(params, defaults)

    def _validate(self, g: dict[str, Any]) -> None:
        _check_lr(g["lr"])
        _check_nonneg("alpha value", g["alpha"])
        _check_nonneg("epsilon value", g["eps"])
        _check_nonneg("weight_decay value", g["weight_decay"])
        _check_nonneg("momentum value", g["momentum"])

    def _calls(self, g: dict[str, Any], ps: list[Tensor]) -> list[tuple]:
        mom, centered = float(g["momentum"]), bool(g["centered"])
        for p in ps:
            st = self._state(p)
            if not st:
                st["step"] = 0
                st["square_avg"] = zeros(p.shape)
            if mom > 0 and "momentum_buffer" not in st:
                st["momentum_buffer"] = zeros(p.shape)
            if centered and "grad_avg" not in st:
                st["grad_avg"] = zeros(p.shape)
            st["step"] += 1
        sts = [self.state[p] for p in ps]
        return [(
            "rmsprop", ps,
            [[s["square_avg"] for s in sts], [s["momentum_buffer"] for s in sts] if mom > 0 else None,
             [s["grad_avg"] for s in sts] if centered else None],
            (float(g["lr"]), float(g["alpha"]), float(g["eps"]), float(g["weight_decay"]), mom, bool(g["maximize"])),
        )]


class Adagrad(Optimizer):
    """Adagrad, as ``torch.optim.Adagrad``: ``clr = lr / (1 + (step - 1) * lr_decay)``,
    ``sum += g * g``, ``p -= clr * g / (sqrt(sum) + eps)``.

    State per parameter: ``"step"`` and ``"sum"`` (starting at ``initial_accumulator_value``).
    """

    def __init__(self, params: Any, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, maximize: bool = False) -> None:
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps, maximize=maximize)
        super().__init__(params, defaults)

    def _validate(self, g: dict[str, Any]) -> None:
        _check_lr(g["lr"])
        _check_nonneg("lr_decay value", g["lr_decay"])
        _check_nonneg("weight_decay value", g["weight_decay"])
        _check_nonneg("initial_accumulator_value", g["initial_accumulator_value"])
        _check_nonneg("epsilon value", g["eps"])

    def _calls(self, g: dict[str, Any], ps: list[Tensor]) -> list[tuple]:
        states = []
        for p in ps:
            st = self._state(p)
            if not st:
                st["step"] = 0
                st["sum"] = Tensor(_core.from_numpy(np.full(p.shape, g["initial_accumulator_value"], np.float32), False))
            st["step"] += 1
            states.append(st)
        return [("adagrad", [ps[i] for i in idx], [[states[i]["sum"] for i in idx]],
                 (float(g["lr"]), float(g["lr_decay"]), float(g["weight_decay"]), float(g["eps"]), int(step), bool(g["maximize"])))
                for step, idx in self._by_step(ps, states).items()]


from . import lr_scheduler  # noqa: E402 - needs Optimizer defined above
