"""The user-facing `Tensor` and the op functions.

Every op here is one call into the Rust registry (`_core.apply(name, inputs, attrs)`) or a
composition of such calls; no gradient is defined in Python.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import numbers
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _args, _core

__all__ = [
    "Tensor", "tensor", "as_tensor", "zeros", "ones", "full", "zeros_like", "ones_like", "randn", "rand", "arange",
    "no_grad", "enable_grad", "is_grad_enabled", "set_num_threads", "get_num_threads",
    "exp", "log", "sqrt", "tanh", "sigmoid", "relu", "abs", "sign", "maximum", "minimum", "clip", "where",
    "sum", "mean", "max", "reshape", "transpose", "broadcast_to", "concatenate", "stack", "matmul",
    "softmax", "log_softmax", "logsumexp", "take", "square", "pow", "from_dlpack",
]

_Scalar = (numbers.Number, np.number, np.bool_)
_TRACE_DEPTH = [0]  # > 0 while batchgrad.trace records a function


def _check_concrete(x: "Tensor", what: str) -> None:
    """Inside a trace, reading the value of a traced tensor would bake one example's values into
    the graph (Python control flow on tensor values): refuse with a clear error."""
    if _TRACE_DEPTH[0] and x._v.op is not None:
        from .transforms import TracingError
        raise TracingError(
            f"cannot {what} a traced tensor (shape {x.shape}, produced by '{x._v.op}'): the function is not traceable "
            "because its Python control flow or values depend on tensor data; use bg.where / bg.maximum instead")


_CODES: dict[str, Any] = {}  # op name -> _core.OpCode, for ops called without attributes


def _op(name: str, *xs: "Tensor", **attrs: Any) -> "Tensor":
    if attrs or len(xs) > 2:
        return Tensor(_core.apply(name, [x._v for x in xs], attrs or None))
    code = _CODES.get(name)
    if code is None:
        code = _CODES[name] = _core.op_code(name)
    return _wrap(_call1(code, xs[0]._v) if len(xs) == 1 else _call2(code, xs[0]._v, xs[1]._v))


def _var(x: Any) -> Any:
    """A `_core.Var` for a Tensor, a Python/numpy scalar, or array-like data."""
    if isinstance(x, Tensor):
        return x._v
    if isinstance(x, _Scalar) and not isinstance(x, (complex, np.complexfloating)):
        return _core.scalar(float(x))
    return tensor(x)._v


def _t(x: Any) -> "Tensor":
    return x if isinstance(x, Tensor) else Tensor(_var(x))


# The hot path of small graphs (a 0-d op costs about a microsecond in all, so every step
# counts): ops parsed once (`_core.OpCode`), applied by `call1` / `call2` / `call_scalar` (no op
# name to parse, no 0-d Var made in Python for a number operand, the GIL kept for tiny inputs),
# and results wrapped without running `Tensor.__init__`'s check.
_call1, _call2, _call_scalar = _core.call1, _core.call2, _core.call_scalar
_NEG, _MATMUL = _core.op_code("neg"), _core.op_code("matmul")
_new_tensor = object.__new__


def _wrap(v: Any) -> "Tensor":
    t = _new_tensor(Tensor)
    t._v = v
    t._bool = False
    return t


def _binary_operator(name: str, reflected: bool) -> Any:
    """`Tensor.__add__` and friends: tensor (or subclass) and Python float/int operands take the
    fast path; anything else (numpy scalars and arrays, lists, bools) goes through `_t` as
    before."""
    code = _core.op_code(name)

    # (the wrapping is written out, not a call to _wrap: a Python call is ~5% of such an op)
    if reflected:
        def op(self: "Tensor", o: Any) -> "Tensor":
            t = type(o)
            r = _new_tensor(Tensor)
            r._v = _call_scalar(code, self._v, o, True) if t is float or t is int else _call2(code, _t(o)._v, self._v)
            r._bool = False
            return r
    else:
        def op(self: "Tensor", o: Any) -> "Tensor":
            t = type(o)
            r = _new_tensor(Tensor)
            if t is float or t is int:
                r._v = _call_scalar(code, self._v, o, False)
            else:
                r._v = _call2(code, self._v, o._v if isinstance(o, Tensor) else _t(o)._v)
            r._bool = False
            return r
    op.__name__ = op.__qualname__ = f"__{'r' if reflected else ''}{'truediv' if name == 'div' else name}__"
    return op


class Tensor:
    """A float32 n-d array on the autodiff tape.

    >>> x = bg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad.numpy()
    array([2., 4., 6.], dtype=float32)
    """

    __slots__ = ("_v", "_bool", "__weakref__")
    __array_ufunc__ = None  # numpy defers to our reflected operators (np_array + tensor -> Tensor)
    __array_priority__ = 1000

    def __init__(self, v: Any, is_bool: bool = False) -> None:
        if not isinstance(v, _core.Var):
            raise TypeError("Tensor() wraps an internal handle; use batchgrad.tensor(data) to create a tensor")
        self._v = v
        self._bool = is_bool

    # ---- attributes -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._v.shape)

    @property
    def ndim(self) -> int:
        return self._v.ndim

    @property
    def size(self) -> int:
        return self._v.numel

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.bool_) if self._bool else np.dtype(np.float32)

    @property
    def requires_grad(self) -> bool:
        return self._v.requires_grad

    @requires_grad.setter
    def requires_grad(self, on: bool) -> None:
        self._v.set_requires_grad(bool(on))

    def requires_grad_(self, on: bool = True) -> "Tensor":
        self.requires_grad = on
        return self

    @property
    def is_leaf(self) -> bool:
        """PyTorch's convention: tensors that do not require grad are leaves too."""
        return self._v.is_leaf or not self._v.requires_grad

    @property
    def grad_fn(self) -> str | None:
        """Name of the registry op that produced this tensor (None for leaves and for results
        that do not require grad, e.g. comparisons)."""
        return self._v.op if self._v.requires_grad else None

    @property
    def grad(self) -> "Tensor | None":
        g = self._v.grad
        return None if g is None else Tensor(g)

    @grad.setter
    def grad(self, g: "Tensor | None") -> None:
        self._v.set_grad(None if g is None else _t(g)._v)

    def zero_grad(self) -> None:
        """Drop the accumulated gradient (PyTorch's set_to_none behaviour)."""
        self._v.set_grad(None)

    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d self / d leaf into every leaf's `.grad` (scalar self, or pass `grad`)."""
        self._v.backward(None if grad is None else _t(grad)._v, retain_graph)

    def detach(self) -> "Tensor":
        return Tensor(self._v.detach(), self._bool)

    def numpy(self) -> np.ndarray:
        """The values as a float32 numpy array (a read-only view, no copy; bool for masks)."""
        _check_concrete(self, "convert to numpy")
        a = self._v.numpy()
        return a.astype(np.bool_) if self._bool else a

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    # ---- interop: DLPack, pickle, copy
    def __dlpack__(self, **kwargs: Any) -> Any:
        """Export the buffer without a copy to DLPack >= 1.0 consumers (`torch.from_dlpack(t)`,
        `np.from_dlpack(t)`), through the read-only numpy view of `numpy()`: treat the result
        as read-only (torch does not honour the flag). Older consumers, which cannot be told the
        buffer is read-only (`jax.numpy.from_dlpack` in jax 0.10), get a copy."""
        if self._bool:
            raise BufferError("__dlpack__: a boolean mask has no float32 buffer to share; export bg.where(mask, 1.0, 0.0)")
        view = self.numpy()
        try:
            return view.__dlpack__(**kwargs)
        except BufferError:
            # a consumer of the pre-1.0 protocol (no `max_version`; jax 0.10) cannot be told the
            # buffer is read-only: it gets a copy instead of write access to our storage
            if kwargs.get("max_version") is not None:
                raise
            return np.array(view).__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0

    def __reduce__(self) -> tuple:
        """Pickle / copy.deepcopy: the values (and `.grad`, `requires_grad`) as a new leaf."""
        g = self._v.grad
        return (_rebuild, (np.array(self._v.numpy()), self.requires_grad, self._bool,
                           None if g is None else np.array(g.numpy())))

    def item(self) -> float | bool:
        _check_concrete(self, "read .item() of")
        v = self._v.item()
        return bool(v) if self._bool else float(v)

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __bool__(self) -> bool:
        if self.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous; use .any()/.all() or bg.where")
        _check_concrete(self, "take the truth value (Python if/while) of")
        return bool(self._v.item())

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        a = self._v.numpy()
        body = np.array2string(a.astype(np.bool_) if self._bool else a, separator=", ", prefix="tensor(")
        extra = ""
        if self.grad_fn is not None:
            extra = f", grad_fn={self.grad_fn}"
        elif self.requires_grad:
            extra = ", requires_grad=True"
        return f"tensor({body}{extra})"

    # ---- arithmetic -------------------------------------------------------------------------
    # (the binary operators are made by _binary_operator below: the hot path of small graphs)
    if TYPE_CHECKING:
        def __add__(self, o: Any) -> "Tensor": ...
        def __radd__(self, o: Any) -> "Tensor": ...
        def __sub__(self, o: Any) -> "Tensor": ...
        def __rsub__(self, o: Any) -> "Tensor": ...
        def __mul__(self, o: Any) -> "Tensor": ...
        def __rmul__(self, o: Any) -> "Tensor": ...
        def __truediv__(self, o: Any) -> "Tensor": ...
        def __rtruediv__(self, o: Any) -> "Tensor": ...

    def __neg__(self) -> "Tensor": return _wrap(_call1(_NEG, self._v))
    def __pos__(self) -> "Tensor": return self
    def __abs__(self) -> "Tensor": return _op("abs", self)
    def __matmul__(self, o: Any) -> "Tensor": return matmul(self, o)
    def __rmatmul__(self, o: Any) -> "Tensor": return matmul(o, self)

    def __pow__(self, p: Any) -> "Tensor":
        return pow(self, p)

    def __rpow__(self, b: Any) -> "Tensor":
        return exp(self * float(np.log(float(b)))) if isinstance(b, _Scalar) else pow(_t(b), self)

    # comparisons give boolean masks
    def _cmp(self, name: str, o: Any) -> "Tensor":
        return Tensor(_core.apply(name, [self._v, _var(o)], None), True)

    def __lt__(self, o: Any) -> "Tensor": return self._cmp("lt", o)
    def __le__(self, o: Any) -> "Tensor": return self._cmp("le", o)
    def __gt__(self, o: Any) -> "Tensor": return self._cmp("gt", o)
    def __ge__(self, o: Any) -> "Tensor": return self._cmp("ge", o)
    def __eq__(self, o: Any) -> "Tensor": return self._cmp("eq", o)  # type: ignore[override]
    def __ne__(self, o: Any) -> "Tensor": return self._cmp("ne", o)  # type: ignore[override]

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("batchgrad tensors are immutable: build a new one, e.g. with bg.where(mask, value, x)")

    def __getitem__(self, key: Any) -> "Tensor":
        return _getitem(self, key)

    # ---- methods mirroring the module functions ---------------------------------------------
    def exp(self) -> "Tensor": return exp(self)
    def log(self) -> "Tensor": return log(self)
    def sqrt(self) -> "Tensor": return sqrt(self)
    def tanh(self) -> "Tensor": return tanh(self)
    def sigmoid(self) -> "Tensor": return sigmoid(self)
    def relu(self) -> "Tensor": return relu(self)
    def abs(self) -> "Tensor": return abs(self)
    def sign(self) -> "Tensor": return sign(self)
    def square(self) -> "Tensor": return square(self)
    def clip(self, lo: Any = None, hi: Any = None) -> "Tensor": return clip(self, lo, hi)
    def pow(self, p: Any) -> "Tensor": return pow(self, p)
    def maximum(self, o: Any) -> "Tensor": return maximum(self, o)
    def minimum(self, o: Any) -> "Tensor": return minimum(self, o)
    def matmul(self, o: Any) -> "Tensor": return matmul(self, o)
    def sum(self, axis: Any = None, keepdims: bool = False) -> "Tensor": return sum(self, axis, keepdims)
    def mean(self, axis: Any = None, keepdims: bool = False) -> "Tensor": return mean(self, axis, keepdims)
    def max(self, axis: Any = None, keepdims: bool = False) -> "Tensor": return max(self, axis, keepdims)
    def softmax(self, axis: int = -1) -> "Tensor": return softmax(self, axis)
    def log_softmax(self, axis: int = -1) -> "Tensor": return log_softmax(self, axis)
    def logsumexp(self, axis: Any = None, keepdims: bool = False) -> "Tensor": return logsumexp(self, axis, keepdims)
    def broadcast_to(self, shape: Sequence[int]) -> "Tensor": return broadcast_to(self, shape)

    def reshape(self, *shape: Any) -> "Tensor":
        """`t.reshape(2, 3)` or `t.reshape((2, 3))`, as numpy (one -1 infers that dimension)."""
        return reshape(self, shape[0] if len(shape) == 1 else shape)

    def transpose(self, *axes: Any) -> "Tensor":
        """`t.transpose()` reverses the axes; `t.transpose(1, 0, 2)` or `t.transpose((1, 0, 2))` permutes them."""
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list, np.ndarray))):
            axes = axes[0]
        return transpose(self, None if axes is None or len(axes) == 0 else axes)

    @property
    def T(self) -> "Tensor":
        return transpose(self)

    def any(self) -> bool:
        return bool(np.any(self.numpy()))

    def all(self) -> bool:
        return bool(np.all(self.numpy()))


# ---- construction -------------------------------------------------------------------------------
for _name, _dunder in (("add", "add"), ("sub", "sub"), ("mul", "mul"), ("div", "truediv")):
    setattr(Tensor, f"__{_dunder}__", _binary_operator(_name, False))
    setattr(Tensor, f"__r{_dunder}__", _binary_operator(_name, True))
del _name, _dunder


def _rebuild(values: np.ndarray, requires_grad: bool, is_bool: bool, grad: np.ndarray | None) -> Tensor:
    t = Tensor(_core.from_numpy(np.ascontiguousarray(values, np.float32), bool(requires_grad)), is_bool)
    if grad is not None:
        t._v.set_grad(_core.from_numpy(np.ascontiguousarray(grad, np.float32), False))
    return t


def from_dlpack(x: Any) -> Tensor:
    """A Tensor from any DLPack exporter (torch, numpy, jax, cupy on the CPU). The values are
    read without a copy through numpy and then copied once into a float32 buffer of ours
    (batchgrad owns its storage: a foreign buffer could change or be freed under the tape)."""
    return Tensor(_core.from_numpy(np.ascontiguousarray(np.from_dlpack(x), np.float32), False))


def tensor(data: Any, requires_grad: bool = False) -> Tensor:
    """A new float32 tensor from a numpy array, nested lists or a scalar (data is copied)."""
    if isinstance(data, Tensor):
        return Tensor(_core.from_numpy(np.asarray(data.numpy(), dtype=np.float32, order="C"), requires_grad), data._bool)
    try:
        arr = np.asarray(data)
    except ValueError as e:
        raise ValueError(f"bg.tensor: cannot build a tensor from ragged or malformed data: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"bg.tensor: expected numbers (bool, int or float), got an array of dtype {arr.dtype}")
    is_bool = arr.dtype.kind == "b"
    arr = np.asarray(arr, dtype=np.float32, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
    return Tensor(_core.from_numpy(arr, bool(requires_grad)), is_bool)


def as_tensor(data: Any) -> Tensor:
    """`data` itself if it is already a Tensor, else `tensor(data)`."""
    return data if isinstance(data, Tensor) else tensor(data)


def _shape(shape: tuple, fn: str) -> tuple[int, ...]:
    """The shape of `zeros(2, 3)` / `zeros((2, 3))`: ints (operator.index), each in 0..2**63-1."""
    return _args.shape(shape[0] if len(shape) == 1 else shape, "shape", fn)


def _filled(shape: tuple[int, ...], value: float, requires_grad: bool) -> Tensor:
    n = int(np.prod(shape, dtype=np.float64))
    if n * 4 > 2**62:
        raise MemoryError(f"cannot allocate a tensor of shape {shape}: too large")
    try:
        arr = np.full(shape, value, dtype=np.float32)
    except (MemoryError, ValueError) as e:
        raise MemoryError(f"cannot allocate a tensor of shape {shape}: {e}") from None
    return Tensor(_core.from_numpy(arr, requires_grad))


def zeros(*shape: Any, requires_grad: bool = False) -> Tensor:
    return _filled(_shape(shape, "zeros"), 0.0, requires_grad)


def ones(*shape: Any, requires_grad: bool = False) -> Tensor:
    return _filled(_shape(shape, "ones"), 1.0, requires_grad)


def full(shape: Sequence[int], value: float, requires_grad: bool = False) -> Tensor:
    return _filled(_shape((shape,), "full"), float(value), requires_grad)


def zeros_like(x: Tensor, requires_grad: bool = False) -> Tensor:
    return zeros(x.shape, requires_grad=requires_grad)


def ones_like(x: Tensor, requires_grad: bool = False) -> Tensor:
    return ones(x.shape, requires_grad=requires_grad)


def randn(*shape: Any, seed: int | None = None, requires_grad: bool = False) -> Tensor:
    """Standard normal samples from numpy's PCG64 generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    return Tensor(_core.from_numpy(rng.standard_normal(_shape(shape, "randn"), dtype=np.float32), requires_grad))


def rand(*shape: Any, seed: int | None = None, requires_grad: bool = False) -> Tensor:
    """Uniform [0, 1) samples from numpy's PCG64 generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    return Tensor(_core.from_numpy(rng.random(_shape(shape, "rand"), dtype=np.float32), requires_grad))


def arange(start: float, stop: float | None = None, step: float = 1, requires_grad: bool = False) -> Tensor:
    """numpy.arange as float32."""
    a = np.arange(start, stop, step) if stop is not None else np.arange(start)
    return Tensor(_core.from_numpy(a.astype(np.float32), requires_grad))


# ---- grad mode and threads ---------------------------------------------------------------------
class _GradMode(contextlib.ContextDecorator):
    def __init__(self, on: bool) -> None:
        self.on = on
        self.prev: list[bool] = []

    def __enter__(self) -> None:
        self.prev.append(_core.set_grad_enabled(self.on))

    def __exit__(self, *exc: Any) -> None:
        _core.set_grad_enabled(self.prev.pop())


def no_grad() -> _GradMode:
    """Context manager / decorator: ops inside record nothing on the tape."""
    return _GradMode(False)


def enable_grad() -> _GradMode:
    return _GradMode(True)


def is_grad_enabled() -> bool:
    return _core.is_grad_enabled()


MAX_THREADS = _core.MAX_THREADS


def set_num_threads(n: int) -> None:
    """Threads used by the CPU kernels (also set by the BATCHGRAD_NUM_THREADS variable), 1 to MAX_THREADS (1024)."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads: n must be an integer in 1..{MAX_THREADS}, got {n!r}")
    _core.set_num_threads(int(n))


def _check_env_threads() -> None:
    """Warn (once, at import) when BATCHGRAD_NUM_THREADS is set to something the core ignores."""
    import os
    import warnings

    raw = os.environ.get("BATCHGRAD_NUM_THREADS")
    if raw is None:
        return
    try:
        ok = 1 <= int(raw.strip()) <= MAX_THREADS
    except ValueError:
        ok = False
    if not ok:
        warnings.warn(f"BATCHGRAD_NUM_THREADS={raw!r} is not an integer in 1..{MAX_THREADS}; using all "
                      f"{_core.get_num_threads()} cores", RuntimeWarning, stacklevel=2)


_check_env_threads()


def get_num_threads() -> int:
    return _core.get_num_threads()


# ---- elementwise ------------------------------------------------------------------------------
def _unary(name: str) -> Any:
    def f(x: Any) -> Tensor:
        return _op(name, _t(x))
    f.__name__ = name
    f.__doc__ = f"Elementwise {name} (registry op '{name}')."
    return f


exp = _unary("exp")
log = _unary("log")
sqrt = _unary("sqrt")
tanh = _unary("tanh")
sigmoid = _unary("sigmoid")
relu = _unary("relu")
sign = _unary("sign")
_abs = _unary("abs")


def abs(x: Any) -> Tensor:  # noqa: A001 - numpy name
    return _abs(x)


def square(x: Any) -> Tensor:
    return _op("pow_scalar", _t(x), p=2.0)


def pow(x: Any, p: Any) -> Tensor:  # noqa: A001 - numpy name
    """x ** p; a scalar p is one registry op, a tensor p is exp(p * log x) (x > 0)."""
    if isinstance(p, _Scalar):
        return _op("pow_scalar", _t(x), p=float(p))
    return exp(_t(p) * log(x))


def maximum(a: Any, b: Any) -> Tensor:
    return _op("maximum", _t(a), _t(b))


def minimum(a: Any, b: Any) -> Tensor:
    return _op("minimum", _t(a), _t(b))


def clip(x: Any, lo: Any = None, hi: Any = None) -> Tensor:
    """numpy.clip with scalar bounds; None leaves that side open."""
    if lo is None and hi is None:
        raise ValueError("clip: one of lo or hi must be given")
    if isinstance(lo, Tensor) or isinstance(hi, Tensor):
        out = _t(x)
        if lo is not None:
            out = maximum(out, lo)
        if hi is not None:
            out = minimum(out, hi)
        return out
    return _op("clip", _t(x), lo=-np.inf if lo is None else float(lo), hi=np.inf if hi is None else float(hi))


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """Pick `a` where `cond` is true (nonzero), else `b`; numpy broadcasting."""
    return _op("where", _t(cond), _t(a), _t(b))


# ---- reductions -------------------------------------------------------------------------------
_FULL_REDUCTIONS: dict[tuple[str, bool], Any] = {}


def _reduce(name: str, x: Any, axis: Any, keepdims: bool) -> Tensor:
    x = _t(x)
    if axis is None:  # no axes: all of them (op codes parsed once per reduction and keepdims)
        key = (name, bool(keepdims))
        code = _FULL_REDUCTIONS.get(key)
        if code is None:
            code = _FULL_REDUCTIONS[key] = _core.op_code(name, {"axes": [], "keepdims": key[1]})
        return _wrap(_call1(code, x._v))
    axes = _args.axes(axis, x.ndim, "axis", name)
    if not axes:
        return reshape(x, x.shape)  # numpy: axis=() reduces nothing
    return _op(name, x, axes=axes, keepdims=bool(keepdims))


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return _reduce("sum", x, axis, keepdims)


def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    return _reduce("mean", x, axis, keepdims)


def max(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return _reduce("max", x, axis, keepdims)


def logsumexp(x: Any, axis: Any = None, keepdims: bool = False) -> Tensor:
    """log(sum(exp(x))) over axes, stable for large |x|."""
    return _reduce("logsumexp", x, axis, keepdims)


def softmax(x: Any, axis: int = -1) -> Tensor:
    x = _t(x)
    return _op("softmax", x, axis=_args.axis(axis, x.ndim, "axis", "softmax"))


def log_softmax(x: Any, axis: int = -1) -> Tensor:
    x = _t(x)
    return _op("log_softmax", x, axis=_args.axis(axis, x.ndim, "axis", "log_softmax"))


# ---- movement ----------------------------------------------------------------------------------
def reshape(x: Any, shape: Any) -> Tensor:
    """numpy.reshape: `shape` is an int or a sequence of ints, one of which may be -1."""
    return _op("reshape", _t(x), shape=list(_args.shape(shape, "shape", "reshape", allow_unknown=True)))


def transpose(x: Any, axes: Sequence[int] | None = None) -> Tensor:
    """numpy.transpose: reverse the axes (`axes=None`) or permute them."""
    x = _t(x)
    perm = [] if axes is None else _args.axes(axes, x.ndim, "axes", "transpose")
    return _op("transpose", x, perm=perm)


def broadcast_to(x: Any, shape: Sequence[int]) -> Tensor:
    return _op("broadcast_to", _t(x), shape=list(_args.shape(shape, "shape", "broadcast_to")))


def _join(name: str, xs: Sequence[Any], axis: Any, extra: int) -> Tensor:
    if len(xs) == 0:
        raise ValueError(f"{name}: need at least one tensor")
    vs = [_var(x) for x in xs]
    ax = _args.axis(axis, len(vs[0].shape) + extra, "axis", name)
    return Tensor(_core.apply(name, vs, {"axis": ax}))


def concatenate(xs: Sequence[Any], axis: int | None = 0) -> Tensor:
    """numpy.concatenate along `axis` (`axis=None` flattens the inputs first, as numpy)."""
    if axis is None and len(xs) > 0:
        xs = [reshape(x, (-1,)) for x in xs]
        axis = 0
    return _join("concatenate", xs, axis, 0)


def stack(xs: Sequence[Any], axis: int = 0) -> Tensor:
    return _join("stack", xs, axis, 1)


def _int_indices(idx: np.ndarray, size: int, axis: int, fn: str, floats: bool) -> np.ndarray:
    """`idx` as int64 (same shape). Integer-valued floats are accepted only when `floats` (a
    Tensor's values, or `take`); an index beyond int64 is out of bounds (IndexOverflowError,
    an IndexError and an OverflowError as numpy's); anything else is an IndexError."""
    def oob(v: Any) -> IndexError:
        return _args.IndexOverflowError(f"index {v} is out of bounds for axis {axis} with size {size}")

    kind = idx.dtype.kind
    if kind == "i":
        return idx.astype(np.int64, copy=False)
    if kind == "u":
        big = idx > np.uint64(_args.INT64_MAX)
        if np.any(big):
            raise oob(int(idx[big].flat[0]))
        return idx.astype(np.int64)
    if kind == "f" and floats:
        bad = ~np.isfinite(idx) | (np.mod(idx, 1) != 0) if idx.size else np.zeros(0, bool)
        if np.any(bad):
            raise IndexError(f"{fn}: indices must be integers, got the non-integer index {idx[bad].flat[0]}")
        big = np.abs(idx) >= 2.0**63
        if np.any(big):
            raise oob(int(idx[big].flat[0]))
        return idx.astype(np.int64)
    if kind == "O" and idx.size and all(isinstance(v, int) and not isinstance(v, bool) for v in idx.flat):
        big = [v for v in idx.flat if not _args.INT64_MIN <= v <= _args.INT64_MAX]
        if big:
            raise oob(big[0])
        return idx.astype(np.int64)
    if kind == "f":
        raise IndexError(f"{fn}: arrays used as indices must be of integer (or boolean) type, got dtype {idx.dtype}")
    raise IndexError(f"{fn}: indices must be integers, got dtype {idx.dtype}")


def take(x: Any, indices: Any, axis: int | None = 0) -> Tensor:
    """Gather along `axis` with an integer array (negative and repeated indices allowed);
    `axis=None` takes from the flattened tensor (as numpy)."""
    x = _t(x)
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    axis = _args.axis(axis, x.ndim, "axis", "take")
    idx = np.asarray(indices.numpy() if isinstance(indices, Tensor) else indices)
    size = x.shape[axis]
    flat = _int_indices(idx, size, axis, "take", floats=True).reshape(-1)
    out = _op("take", x, idx=flat.tolist(), axis=axis)
    if idx.ndim != 1:
        ax = axis % x.ndim
        out = reshape(out, x.shape[:ax] + idx.shape + x.shape[ax + 1:])
    return out


def matmul(a: Any, b: Any) -> Tensor:
    """numpy.matmul: 2-D, batched N-D with broadcast batch dims, and 1-D operands promoted."""
    a, b = _t(a), _t(b)
    if a._v.ndim >= 2 and b._v.ndim >= 2:  # no promotion: the kernel's message shows the shapes passed
        return _wrap(_call2(_MATMUL, a._v, b._v))
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: scalar operands are not allowed (shapes {a.shape} and {b.shape}); use *")
    va, vb = a.ndim == 1, b.ndim == 1
    shapes = (list(a.shape), list(b.shape))
    if va:
        a = reshape(a, (1, a.shape[0]))
    if vb:
        b = reshape(b, (b.shape[0], 1))
    try:
        out = _op("matmul", a, b)
    except ValueError as e:
        if not (va or vb):
            raise
        # report the shapes the caller passed, not the promoted 2-D ones
        promoted = f"shapes {list(a.shape)} and {list(b.shape)}"
        msg = str(e)
        if promoted in msg:
            msg = msg.replace(promoted, f"shapes {shapes[0]} and {shapes[1]}")
        else:
            msg = f"{msg} (operands of shapes {shapes[0]} and {shapes[1]})"
        raise type(e)(msg) from None
    if va or vb:
        shp = out.shape
        shp = shp[:-2] + (() if va else shp[-2:-1]) + (() if vb else shp[-1:])
        out = reshape(out, shp)
    return out


# ---- indexing -----------------------------------------------------------------------------------
def _getitem(x: Tensor, key: Any) -> Tensor:
    if not isinstance(key, tuple):
        key = (key,)
    # a boolean mask over all leading dims: x[mask]
    if len(key) == 1 and isinstance(key[0], (np.ndarray, Tensor, list)):
        m = np.asarray(key[0].numpy() if isinstance(key[0], Tensor) and key[0]._bool else key[0])
        if m.dtype == np.bool_:
            if m.shape != x.shape[: m.ndim]:
                raise IndexError(f"boolean index of shape {m.shape} does not match the indexed shape {x.shape[:m.ndim]}")
            flat = reshape(x, (-1,) + x.shape[m.ndim:])
            return take(flat, np.flatnonzero(m), axis=0)
    n_real = len([k for k in key if k is not None and k is not Ellipsis])
    if n_real > x.ndim:
        raise IndexError(f"too many indices for tensor: tensor is {x.ndim}-dimensional, but {n_real} were indexed")
    if builtins.sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    expanded: list[Any] = []
    for k in key:
        if k is Ellipsis:
            expanded.extend([slice(None)] * (x.ndim - n_real))
        else:
            expanded.append(k)
    starts, steps, lens, out_shape = [], [], [], []
    advanced: tuple[int, np.ndarray] | None = None  # (output axis, index array)
    int_pos, adv_pos = [], -1
    dim = 0
    for pos, k in enumerate(expanded):
        if k is None:
            out_shape.append(1)
            continue
        size = x.shape[dim]
        if isinstance(k, (bool, np.bool_)):
            raise IndexError("boolean scalars are not supported as indices")
        if isinstance(k, (int, np.integer)) or (isinstance(k, Tensor) and k.ndim == 0 and not k._bool):
            # a 0-d Tensor holds a float: it must be integer-valued (1.5 is refused, not truncated)
            i = int(_int_indices(np.asarray(k.numpy()), size, dim, "indexing", True)) if isinstance(k, Tensor) else operator.index(k)
            if not -size <= i < size:
                err = IndexError if _args.INT64_MIN <= i <= _args.INT64_MAX else _args.IndexOverflowError
                raise err(f"index {i} is out of bounds for axis {dim} with size {size}")
            starts.append(i % size)
            steps.append(1)
            lens.append(1)
            int_pos.append(pos)
        elif isinstance(k, slice):
            s, e, st = k.indices(size)
            n = len(range(s, e, st))
            starts.append(s if n > 0 else 0)
            steps.append(st)
            lens.append(n)
            out_shape.append(n)
        else:
            bad = f"only integers, slices, None, ellipsis and integer or boolean arrays are valid indices, got {k!r}"
            try:
                idx = np.asarray(k.numpy() if isinstance(k, Tensor) else k)
            except (ValueError, TypeError):
                raise IndexError(bad) from None
            if isinstance(k, list) and idx.size == 0:
                idx = idx.astype(np.int64)  # numpy: x[[]] is an empty integer index
            if idx.dtype == np.bool_:
                if idx.ndim != 1 or idx.shape[0] != size:
                    raise IndexError(f"boolean index of shape {idx.shape} does not match axis {dim} of size {size}")
                idx = np.flatnonzero(idx)
            if isinstance(k, Tensor):
                idx = _int_indices(idx, size, dim, "indexing", True)  # a Tensor holds floats: integer values only
            elif idx.dtype.kind in "iu" or (idx.dtype.kind == "O" and idx.size > 0 and builtins.all(
                    isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in idx.flat)):
                idx = _int_indices(idx, size, dim, "indexing", False)
            elif isinstance(k, np.ndarray) and idx.dtype.kind == "f":
                raise IndexError(f"arrays used as indices must be of integer (or boolean) type, got dtype {idx.dtype}")
            else:
                raise IndexError(bad)  # floats (also 2.0), strings, None inside a list, other objects
            if advanced is not None:
                raise IndexError("only one integer-array index per indexing expression is supported")
            starts.append(0)
            steps.append(1)
            lens.append(size)
            advanced = (len(out_shape), idx)
            adv_pos = pos
            out_shape.append(size)
        dim += 1
    out = x
    full = all(s == 0 and st == 1 and n == x.shape[d] for d, (s, st, n) in enumerate(zip(starts, steps, lens)))
    if not full:
        out = _op("slice", out, start=starts, step=steps, len=lens)
    out_shape += list(x.shape[dim:])
    if tuple(out_shape) != out.shape:
        out = reshape(out, out_shape)
    if advanced is not None:
        ax, idx = advanced
        out = take(out, idx, axis=ax)
        moved = bool(int_pos) and not _adjacent(sorted(int_pos + [adv_pos]))
        if moved and ax != 0:
            nd = out.ndim
            k = idx.ndim
            perm = list(range(ax, ax + k)) + [d for d in range(nd) if not ax <= d < ax + k]
            out = transpose(out, perm)
    return out


def _adjacent(ps: list[int]) -> bool:
    return all(b == a + 1 for a, b in zip(ps, ps[1:]))


@functools.lru_cache(maxsize=None)
def op_names() -> tuple[str, ...]:
    return tuple(d["name"] for d in _core.op_table())
