"""Validation of integer arguments (shapes, axes, indices, sizes), with numpy's rules.

numpy converts every integer slot with ``operator.index``: floats, strings, None and bools are
refused with a TypeError (``np.zeros((2, 3.0))``, ``x.sum(axis='1')``, ``np.zeros((True, 2))``),
not truncated or parsed as ``int()`` would. A dimension beyond int64 is a ValueError, a negative
one a ValueError, and an axis out of range a ``numpy.exceptions.AxisError`` (both a ValueError
and an IndexError). Every message here names the function and the argument.

An axis beyond int32 or an index beyond int64 is refused by numpy with an OverflowError
(``x.sum(axis=2**63)``, ``x[2**63]``) in some calls and with a ValueError / IndexError in others;
the errors raised here for those (`AxisOverflowError`, `IndexOverflowError`) derive from both, so
code written for either of numpy's types catches them.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

AxisError = np.exceptions.AxisError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# numpy converts an axis to a C long or, in tuples of axes, a C int: beyond int32 it raises an
# OverflowError in some calls and an AxisError in others. Such an axis is out of bounds for any
# tensor; AxisOverflowError is both.
_AXIS_LIMIT = 2**31

__all__ = ["AxisError", "AxisOverflowError", "IndexOverflowError", "index", "size", "shape", "axis", "axes",
           "INT64_MIN", "INT64_MAX"]


class AxisOverflowError(AxisError, OverflowError):
    """An axis beyond the int32 range: an AxisError (ValueError, IndexError) and an OverflowError."""


class IndexOverflowError(IndexError, OverflowError):
    """An index beyond the int64 range: out of bounds (IndexError) and an OverflowError."""


def _show(value: Any, limit: int = 60) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _kind(value: Any) -> str:
    return "None" if value is None else f"{type(value).__name__} {_show(value)}"


def _where(fn: str | None) -> str:
    return f"{fn}: " if fn else ""


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_)) or (isinstance(value, np.ndarray) and value.dtype == np.bool_)


def index(value: Any, name: str, fn: str | None = None) -> int:
    """`value` as a Python int via ``operator.index`` (ints, numpy integers, 0-d integer arrays).

    TypeError naming `name` for anything else: floats (also integer-valued ones), strings, None,
    and bools (numpy refuses ``True`` as a dimension or an axis)."""
    if type(value) is int:  # the common case, fast
        return value
    if _is_bool(value):
        raise TypeError(f"{_where(fn)}{name} must be an integer, got {_kind(value)} (bools are not accepted)")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{_where(fn)}{name} must be an integer, got {_kind(value)}") from None


def size(value: Any, name: str, fn: str | None = None, minimum: int = 0) -> int:
    """A count (a batch size, a number of copies): an integer >= `minimum` (ValueError below it)."""
    n = index(value, name, fn)
    if n < minimum:
        raise ValueError(f"{_where(fn)}{name} must be an integer >= {minimum}, got {n}")
    return n


def _entry(v: Any, name: str, fn: str | None, whole: Any) -> int:
    """One entry of a sequence argument (a shape, a tuple of axes) via ``operator.index``."""
    if type(v) is int:  # the common case, fast
        return v
    if _is_bool(v):
        raise TypeError(f"{_where(fn)}{name} entries must be integers, got {_kind(v)} in {name} {_show(whole)} "
                        "(bools are not accepted)")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{_where(fn)}{name} entries must be integers, got {_kind(v)} in {name} {_show(whole)}") from None


def _int_or_seq(value: Any, name: str, fn: str | None) -> tuple[list[int] | None, Any]:
    """(entries, None) for a sequence argument (tuple, list, range, 1-d array), else (None, the
    int); TypeError for anything that is neither (None, a str, a float, a 2-d array, ...)."""
    if type(value) is int:  # the common cases first, fast
        return None, value
    if isinstance(value, (tuple, list, range)):
        return [_entry(v, name, fn, value) for v in value], None
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return [_entry(v, name, fn, value) for v in value], None
    if isinstance(value, np.ndarray) and value.ndim > 1:
        raise TypeError(f"{_where(fn)}{name} must be an integer or a sequence of integers, got an array of shape {value.shape}")
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        return [_entry(v, name, fn, value) for v in value], None
    if value is None or isinstance(value, (str, bytes, bytearray)) or _is_bool(value):
        raise TypeError(f"{_where(fn)}{name} must be an integer or a sequence of integers, got {_kind(value)}")
    try:
        return None, operator.index(value)
    except TypeError:
        raise TypeError(f"{_where(fn)}{name} must be an integer or a sequence of integers, got {_kind(value)}") from None


def shape(value: Any, name: str = "shape", fn: str | None = None, allow_unknown: bool = False) -> tuple[int, ...]:
    """A shape: one integer or a sequence of integers, each in 0..2**63-1.

    TypeError for a non-integer entry (or None for the whole shape); ValueError naming the shape
    for a negative dimension ("negative dimensions are not allowed") or one beyond int64.
    `allow_unknown` lets -1 entries through (reshape's unknown dimension; the op checks there is one)."""
    items, one = _int_or_seq(value, name, fn)
    dims = (one,) if items is None else tuple(items)
    for d in dims:
        if not INT64_MIN <= d <= INT64_MAX:
            raise ValueError(f"{_where(fn)}{name} {dims}: dimension {d} is beyond the int64 range "
                             "(maximum allowed dimension exceeded)")
    for d in dims:
        if d < 0 and not (allow_unknown and d == -1):
            extra = " (other than -1, the one unknown dimension)" if allow_unknown else ""
            raise ValueError(f"{_where(fn)}negative dimensions{extra} are not allowed, got {name} {dims}")
    return dims


def _check_axis(a: int, ndim: int | None, name: str, fn: str | None, whole: Any = None) -> int:
    what = f"{name} {a}" if whole is None else f"axis {a} in {name} {_show(whole)}"
    if not -_AXIS_LIMIT <= a < _AXIS_LIMIT:
        dim = "" if ndim is None else f" for a tensor of dimension {ndim}"
        raise AxisOverflowError(f"{_where(fn)}{what} is out of bounds{dim} (too large for an axis)")
    if ndim is not None and not -ndim <= a < ndim:
        raise AxisError(f"{_where(fn)}{what} is out of bounds for a tensor of dimension {ndim}")
    return a


def axis(value: Any, ndim: int | None, name: str = "axis", fn: str | None = None) -> int:
    """One axis of a tensor with `ndim` dimensions, as given (negative axes stay negative).

    TypeError for a non-integer; AxisError (a ValueError and an IndexError, as numpy's) when out
    of range (AxisOverflowError, also an OverflowError, beyond int32); `ndim=None` checks only
    the type and that range."""
    return _check_axis(index(value, name, fn), ndim, name, fn)


def axes(value: Any, ndim: int | None, name: str = "axis", fn: str | None = None) -> list[int]:
    """An axis or a sequence of axes (tuple, list, 1-d integer array) as a list of ints, each
    checked as by `axis`. Duplicates are left to the op (it names them)."""
    items, one = _int_or_seq(value, name, fn)
    if items is None:
        return [_check_axis(one, ndim, name, fn)]
    return [_check_axis(a, ndim, name, fn, value) for a in items]
