"""Neural-network building blocks: ``Module``, ``Parameter``, layers, activations and losses.

Names and behaviour follow ``torch.nn``::

    import batchgrad as bg
    from batchgrad import nn

    model = nn.MLP([64, 128, 10], seed=0)          # Linear -> ReLU -> Linear
    loss_fn = nn.CrossEntropyLoss()
    opt = bg.optim.Adam(model.parameters(), lr=1e-2)
    loss = loss_fn(model(xb), yb)
    opt.zero_grad(); loss.backward(); opt.step()

One deliberate difference from PyTorch: :class:`Linear` stores its weight with
shape ``(in_features, out_features)`` and computes ``x @ W + b`` (PyTorch stores
``(out_features, in_features)`` and computes ``x @ W.T + b``). To move weights
between the two, transpose: ``torch_linear.weight = W.T``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from .. import _core
from ..tensor import Tensor, _wrap, as_tensor
from . import functional, utils
from . import functional as F

_call2, _MATMUL, _ADD_RELU = _core.call2, _core.op_code("matmul"), _core.op_code("add_relu")

__all__ = [
    "Module", "Parameter", "Linear", "Sequential", "MLP", "ReLU", "Tanh", "Sigmoid", "Identity",
    "MSELoss", "L1Loss", "CrossEntropyLoss", "BCEWithLogitsLoss", "functional", "utils",
    "StateDictError",
]


# ---------------------------------------------------------------------------
# Parameter
# ---------------------------------------------------------------------------


class Parameter(Tensor):
    """A leaf tensor with ``requires_grad=True`` that a :class:`Module` registers as a parameter.

    ``Parameter(data)`` copies ``data`` (a Tensor, numpy array, nested list or scalar) into a
    new float32 leaf. Assigning a Parameter to a Module attribute registers it under that
    name, so it appears in :meth:`Module.parameters` and :meth:`Module.state_dict`.
    """

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        arr = data.numpy() if isinstance(data, Tensor) else np.asarray(data)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"Parameter: expected numbers, got an array of dtype {arr.dtype}")
        super().__init__(_core.from_numpy(np.asarray(arr, dtype=np.float32, order="C"), bool(requires_grad)))

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


# ---------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------


class StateDictError(RuntimeError, ValueError):
    """Raised by :meth:`Module.load_state_dict` for missing/unexpected keys or shape mismatches.

    A ``RuntimeError`` as in PyTorch, and also a ``ValueError``.
    """


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of all layers and models (as ``torch.nn.Module``).

    Subclasses call ``super().__init__()`` first, then assign :class:`Parameter` and
    :class:`Module` attributes, which are registered (in assignment order) as parameters
    and submodules, and implement :meth:`forward`. ``module(x)`` calls ``forward(x)``.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration -------------------------------------------------------------------
    def _registries(self) -> tuple[dict, dict]:
        try:
            return object.__getattribute__(self, "_parameters"), object.__getattribute__(self, "_modules")
        except AttributeError:
            raise AttributeError(
                f"cannot assign parameters or submodules before {type(self).__name__}.__init__() "
                "calls super().__init__()"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, (Parameter, Module)) or name in self.__dict__.get("_parameters", {}) or name in self.__dict__.get("_modules", {}):
            params, modules = self._registries()
            was_param = name in params
            params.pop(name, None)
            modules.pop(name, None)
            self.__dict__.pop(name, None)
            if isinstance(value, Parameter):
                params[name] = value
                return
            if isinstance(value, Module):
                modules[name] = value
                return
            if value is None and was_param:  # like PyTorch: `self.bias = None` keeps the slot
                params[name] = None
                return
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        if "_parameters" in d and name in d["_parameters"]:
            return d["_parameters"][name]
        if "_modules" in d and name in d["_modules"]:
            return d["_modules"][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        if name in d.get("_parameters", {}):
            del d["_parameters"][name]
        elif name in d.get("_modules", {}):
            del d["_modules"][name]
        else:
            object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: expected a Parameter or None, got {type(param).__name__}")
        self._registries()[0][name] = param

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: expected a Module or None, got {type(module).__name__}")
        self._registries()[1][name] = module

    # ---- traversal ----------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, m in self._registries()[1].items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        seen: set[int] = set()

        def walk(m: Module, pre: str) -> Iterator[tuple[str, Module]]:
            if id(m) in seen:
                return
            seen.add(id(m))
            yield pre, m
            for name, c in m.named_children():
                yield from walk(c, f"{pre}.{name}" if pre else name)

        yield from walk(self, prefix)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, parameter)`` pairs, each parameter once (shared ones under their first name)."""
        seen: set[int] = set()
        mods = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mpre, m in mods:
            for name, p in m._registries()[0].items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mpre}.{name}" if mpre else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """``{dotted name: float32 numpy array}``: a copy of every parameter's values."""
        return OrderedDict((name, np.array(p.numpy(), dtype=np.float32, copy=True)) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values from ``state_dict`` into the parameters, in place.

        Parameters keep their identity (optimizers holding them stay valid). Every array
        must have its parameter's shape. With ``strict=True`` (default) the keys must match
        exactly. Raises :class:`StateDictError` (a RuntimeError and ValueError) listing every
        problem, before any parameter is changed. Returns ``(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict: expected a mapping, got {type(state_dict).__name__}")
        own = OrderedDict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        errors: list[str] = []
        if strict and unexpected:
            errors.append("unexpected key(s) in state_dict: " + ", ".join(repr(k) for k in unexpected))
        if strict and missing:
            errors.append("missing key(s) in state_dict: " + ", ".join(repr(k) for k in missing))
        values: list[tuple[Parameter, np.ndarray]] = []
        for name, p in own.items():
            if name not in state_dict:
                continue
            v = state_dict[name]
            arr = np.asarray(v.numpy() if isinstance(v, Tensor) else v)
            if arr.dtype.kind not in "biuf":
                errors.append(f"value for {name!r} has non-numeric dtype {arr.dtype}")
                continue
            if arr.shape != p.shape:
                errors.append(
                    f"size mismatch for {name!r}: copying a param with shape {arr.shape} from the state_dict, "
                    f"the shape in the current model is {p.shape}"
                )
                continue
            values.append((p, arr))
        if errors:
            raise StateDictError(f"error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(errors))
        for p, arr in values:
            p._v.assign(_core.from_numpy(np.asarray(arr, dtype=np.float32, order="C"), False))
        return IncompatibleKeys(missing, unexpected)

    # ---- modes and grads ----------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        if not isinstance(mode, bool):
            raise ValueError(f"train: mode must be a bool, got {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (or set it to zeros with ``set_to_none=False``)."""
        for p in self.parameters():
            if set_to_none or not p._v.has_grad:
                p._v.set_grad(None)
            else:
                p.grad = np.zeros(p.shape, dtype=np.float32)

    # ---- calling ------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, m in self.named_children():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {sub}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------

_INITS = ("kaiming", "xavier")


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_features(name: str, n: Any) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


class Linear(Module):
    """Affine layer ``y = x @ W + b`` with ``W`` of shape ``(in_features, out_features)``.

    Note: PyTorch's ``nn.Linear.weight`` has shape ``(out_features, in_features)`` and computes
    ``x @ W.T + b``; ours is the transpose (``W_ours = W_torch.T``), so the forward is a plain
    matmul without a transpose.

    Args:
        in_features, out_features: sizes of the last input / output dimension.
        bias: add a learnable bias of shape ``(out_features,)`` (initialised to zeros).
        init: ``"kaiming"`` (He uniform, ``U(-b, b)`` with ``b = sqrt(6 / in_features)``, for ReLU
            networks) or ``"xavier"`` (Glorot uniform, ``b = sqrt(6 / (in + out))``, for tanh/sigmoid).
        seed: seed of ``numpy.random.default_rng`` (or a ``Generator``, consumed); the same seed
            gives the same weights. ``None`` draws fresh entropy.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "kaiming",
                 seed: int | np.random.Generator | None = None) -> None:
        super().__init__()
        self.in_features = _check_features("in_features", in_features)
        self.out_features = _check_features("out_features", out_features)
        if init not in _INITS:
            raise ValueError(f"Linear: init must be one of {_INITS}, got {init!r}")
        self.init = init
        rng = _rng(seed)
        fan_in, fan_out = self.in_features, self.out_features
        bound = math.sqrt(6.0 / fan_in) if init == "kaiming" else math.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)
        self.weight = Parameter(w)
        if bias:
            self.bias = Parameter(np.zeros(fan_out, dtype=np.float32))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: Any, relu: bool = False) -> Tensor:
        """``x @ weight + bias``; with ``relu=True``, ``relu`` of it with the bias add and the
        activation fused into one op (``F.add_relu``)."""
        x = as_tensor(x)
        shape = x._v.shape
        if not shape or shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected input with last dimension {self.in_features}, got shape {tuple(shape)}")
        params = self.__dict__["_parameters"]  # one lookup instead of Module.__getattr__ per use
        w = params["weight"] if "weight" in params else self.weight
        # a matrix input straight to the op (as `Tensor.__matmul__` does after its checks)
        y = _wrap(_call2(_MATMUL, x._v, w._v)) if len(shape) >= 2 else x @ w
        bias = params["bias"] if "bias" in params else self.bias
        if relu:
            return F.relu(y) if bias is None else _wrap(_call2(_ADD_RELU, y._v, bias._v))
        return y if bias is None else y + bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, init={self.init!r}"


class Sequential(Module):
    """Chains modules: ``Sequential(a, b, c)(x) == c(b(a(x)))``; also ``Sequential(OrderedDict(...))``.

    Submodules are named ``"0"``, ``"1"``, ... (or by the dict's keys), so parameters are
    ``"0.weight"``, ``"0.bias"``, ... in the state dict.
    """

    def __init__(self, *modules: Any) -> None:
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], Mapping):
            for name, m in modules[0].items():
                self._add(str(name), m)
        else:
            for i, m in enumerate(modules):
                self._add(str(i), m)

    def _add(self, name: str, m: Any) -> None:
        if not isinstance(m, Module):
            raise TypeError(f"Sequential: {m!r} is not a Module")
        self.add_module(name, m)

    def append(self, module: Module) -> Sequential:
        self._add(str(len(self)), module)
        return self

    def __len__(self) -> int:
        return len(self._registries()[1])

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._registries()[1].values()))

    def __getitem__(self, i: int | slice) -> Any:
        mods = list(self._registries()[1].values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]

    def forward(self, x: Any) -> Any:
        """Each module in turn. A ``Linear`` directly followed by a ``ReLU`` runs as one fused
        bias-add + activation (``F.linear_relu``): same values and gradients, fewer passes."""
        mods = list(self._registries()[1].values())
        i, n = 0, len(mods)
        while i < n:
            m = mods[i]
            if type(m) is Linear and i + 1 < n and type(mods[i + 1]) is ReLU:
                x = m.forward(x, True)
                i += 2
            else:
                x = m(x)
                i += 1
        return x


class ReLU(Module):
    def forward(self, x: Any) -> Tensor:
        return F.relu(x)


class Tanh(Module):
    def forward(self, x: Any) -> Tensor:
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x: Any) -> Tensor:
        return F.sigmoid(x)


class Identity(Module):
    def forward(self, x: Any) -> Any:
        return x


_ACTIVATIONS = {"relu": (ReLU, "kaiming"), "tanh": (Tanh, "xavier"), "sigmoid": (Sigmoid, "xavier")}


class MLP(Sequential):
    """Multi-layer perceptron ``Linear -> act -> ... -> Linear`` (no activation after the last layer).

    Args:
        sizes: layer widths including input and output, e.g. ``[64, 128, 10]``.
        activation: ``"relu"`` (Kaiming init), ``"tanh"`` or ``"sigmoid"`` (Xavier init).
        seed: seeds one ``numpy.random.default_rng`` that initialises all layers in order,
            so the same seed gives the same network.
        bias: whether the Linear layers have biases.
    """

    def __init__(self, sizes: Iterable[int], activation: str = "relu", seed: int | None = 0, bias: bool = True) -> None:
        sizes = [_check_features("MLP layer size", s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"MLP: sizes needs at least an input and an output size, got {sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"MLP: activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
        act, init = _ACTIVATIONS[activation]
        rng = np.random.default_rng(seed)
        layers: list[Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(a, b, bias=bias, init=init, seed=rng))
            if i < len(sizes) - 2:
                layers.append(act())
        super().__init__(*layers)
        self.sizes = sizes
        self.activation = activation


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


class _Loss(Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = F._check_reduction(reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class MSELoss(_Loss):
    """Squared error ``(input - target)^2``, reduced by ``reduction`` (``"mean"``, ``"sum"``, ``"none"``)."""

    def forward(self, input: Any, target: Any) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    """Absolute error ``|input - target|``, reduced by ``reduction``."""

    def forward(self, input: Any, target: Any) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of logits ``(N, C)`` and integer class labels ``(N,)``."""

    def forward(self, input: Any, target: Any) -> Tensor:
        return F.cross_entropy(input, target, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits (sigmoid folded in, numerically stable)."""

    def forward(self, input: Any, target: Any) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, reduction=self.reduction)
