"""Integer arguments (shapes, axes, indices, sizes) follow numpy's rules (issue 18).

numpy converts them with ``operator.index``: floats (also 2.0), strings, None and bools are
refused with a TypeError (an IndexError for indices), a dimension beyond int64 or a negative one
with a ValueError, an axis out of range with ``numpy.exceptions.AxisError`` (a ValueError and an
IndexError). batchgrad raises the same types, and every message names the argument.

The hypothesis tests feed bad values into each integer slot of each public function and compare
the exception type with numpy's for the same call. Where batchgrad deliberately differs from
numpy (it refuses something numpy accepts, e.g. ``x[True]``), the slot lists the deviation.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchgrad as bg
from batchgrad import _args
from batchgrad.nn import functional as F

AxisError = np.exceptions.AxisError
A = np.arange(24, dtype=np.float32).reshape(2, 3, 4)


def T() -> bg.Tensor:
    return bg.tensor(A)


# ---- the bad values ---------------------------------------------------------------------------------
I64_MAX = 2**63 - 1
HUGE = [2**63, 2**64, 2**100, -(2**63) - 1, -(2**100)]

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(-4, 4).map(float),  # integer-valued floats: refused all the same (numpy does)
    st.sampled_from([np.float64(1.0), np.float32(2.0), np.float16(0.0)]),
)
strings = st.one_of(st.text(max_size=4), st.sampled_from(["0", "1", "-1", "2", " 1 ", "1.0"]))
bools = st.sampled_from([True, False, np.True_, np.False_])
huge = st.sampled_from(HUGE)
negative = st.one_of(st.integers(-6, -1), st.sampled_from([-(2**62), -(2**63)]))
BAD = st.one_of(floats, strings, bools, st.none(), huge, negative)


def category(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if v is None:
        return "none"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (float, np.floating)):
        return "float"
    if not -(2**63) <= v <= I64_MAX:
        return "huge"
    return "neg" if v < 0 else "int"


# ---- the slots --------------------------------------------------------------------------------------
NUMPY = object()  # "expect what numpy does"
ACCEPT = None  # "expect no error"


@dataclass
class Slot:
    """One integer slot: `call(v)` puts v there in batchgrad, `ref(v)` in the equivalent numpy call
    (None: no numpy equivalent, `expect` decides). `expect(v)` returns NUMPY, ACCEPT or the
    exception type batchgrad raises where it deliberately differs from numpy."""

    name: str
    call: Callable[[Any], Any]
    arg: str  # regex the message must match (the argument's name)
    ref: Callable[[Any], Any] | None = None
    expect: Callable[[Any], Any] = field(default=lambda v: NUMPY)
    same_shape: bool = True

    def __repr__(self) -> str:
        return self.name


def _unless(cats: dict[str, Any]) -> Callable[[Any], Any]:
    return lambda v: cats.get(category(v), NUMPY)


def _take_index_expect(v: Any) -> Any:
    # numpy's take casts any number (and strings) to intp; batchgrad takes integer-valued floats
    # only (a Tensor holds floats) and refuses the rest with an IndexError
    c = category(v)
    if c == "float":
        ok = math.isfinite(v) and float(v).is_integer() and -2 <= v < 2
        return ACCEPT if ok else IndexError
    if c in ("str", "bool", "none"):
        return IndexError
    return NUMPY


def _vmap_in_axes_expect(v: Any) -> Any:
    c = category(v)
    if c in ("float", "str", "bool"):
        return TypeError
    if c == "none":
        return ValueError  # no argument is batched
    if c == "huge" or v < -2:
        return AxisError
    return ACCEPT


def _vmap_out_axes_expect(v: Any) -> Any:
    c = category(v)
    if c in ("float", "str", "bool", "none"):
        return TypeError
    if c == "huge":
        return OverflowError
    return AxisError if v < -2 else ACCEPT


def _replicate_b_expect(v: Any) -> Any:
    c = category(v)
    return TypeError if c in ("float", "str", "bool", "none") else ValueError


def _replicate_in_axes_expect(v: Any) -> Any:
    c = category(v)
    if c in ("float", "str", "bool"):
        return TypeError
    if c == "none":
        return ACCEPT  # every argument unbatched: B calls on the whole data
    if c == "huge" or v < -2:
        return AxisError
    return ACCEPT if v == -2 else ValueError  # x is (3, 4): axis -1 has 4, not B=3, examples


_sum_ref = lambda v: np.sum(A, axis=v)  # noqa: E731  (one int axis, the same rules as numpy's reductions)
_softmax_none = _unless({"none": TypeError})  # numpy's sum takes axis=None (all axes); softmax does not

SHAPE_SLOTS = [
    # numpy reads a str shape as a sequence (np.zeros('') is 0-d); batchgrad refuses every str
    Slot("zeros(v)", lambda v: bg.zeros(v), r"\bshape\b", lambda v: np.zeros(v), _unless({"str": TypeError})),
    Slot("zeros((2, v))", lambda v: bg.zeros((2, v)), r"\bshape\b", lambda v: np.zeros((2, v))),
    Slot("ones(2, v)", lambda v: bg.ones(2, v), r"\bshape\b", lambda v: np.ones((2, v))),
    Slot("full((v, 2))", lambda v: bg.full((v, 2), 1.5), r"\bshape\b", lambda v: np.full((v, 2), 1.5)),
    Slot("randn(v, 2)", lambda v: bg.randn(v, 2, seed=0), r"\bshape\b",
         lambda v: np.random.default_rng(0).standard_normal((v, 2))),
    Slot("rand(2, v)", lambda v: bg.rand(2, v, seed=0), r"\bshape\b", lambda v: np.random.default_rng(0).random((2, v))),
    # numpy >= 2 reads any negative reshape size as the unknown one; batchgrad only -1
    Slot("t.reshape(2, v)", lambda v: T().reshape(2, v), r"\bshape\b", lambda v: A.reshape(2, v),
         lambda v: ValueError if category(v) == "neg" and v < -1 else NUMPY),
    Slot("reshape(t, (v, 12))", lambda v: bg.reshape(T(), (v, 12)), r"\bshape\b", lambda v: np.reshape(A, (v, 12)),
         lambda v: ValueError if category(v) == "neg" and v < -1 else NUMPY),
    # numpy's broadcast_to tests the sign before the type (a ValueError for -1.0); a float is a TypeError here
    Slot("broadcast_to(x, (2, v))", lambda v: bg.broadcast_to(bg.ones(1), (2, v)), r"\bshape\b",
         lambda v: np.broadcast_to(np.ones(1), (2, v)), _unless({"float": TypeError})),
]

AXIS_SLOTS = [
    Slot("t.transpose((v, 1, 0))", lambda v: T().transpose((v, 1, 0)), r"\bax(is|es)\b", lambda v: A.transpose((v, 1, 0))),
    Slot("transpose(t, (2, v, 0))", lambda v: bg.transpose(T(), (2, v, 0)), r"\bax(is|es)\b",
         lambda v: np.transpose(A, (2, v, 0))),
    Slot("t.sum(axis=v)", lambda v: T().sum(axis=v), r"\baxis\b", _sum_ref),
    Slot("mean(t, axis=(0, v))", lambda v: bg.mean(T(), axis=(0, v)), r"\baxis\b", lambda v: np.mean(A, axis=(0, v))),
    Slot("t.max(axis=v)", lambda v: T().max(axis=v), r"\baxis\b", lambda v: np.max(A, axis=v)),
    Slot("logsumexp(t, axis=v)", lambda v: bg.logsumexp(T(), axis=v), r"\baxis\b", _sum_ref),
    Slot("t.softmax(axis=v)", lambda v: T().softmax(axis=v), r"\baxis\b", _sum_ref, _softmax_none, False),
    Slot("log_softmax(t, axis=v)", lambda v: bg.log_softmax(T(), axis=v), r"\baxis\b", _sum_ref, _softmax_none, False),
    Slot("F.softmax(t, dim=v)", lambda v: F.softmax(T(), dim=v), r"\bdim\b", _sum_ref, _softmax_none, False),
    Slot("F.log_softmax(t, dim=v)", lambda v: F.log_softmax(T(), dim=v), r"\bdim\b", _sum_ref, _softmax_none, False),
    Slot("concatenate(axis=v)", lambda v: bg.concatenate([T(), T()], axis=v), r"\baxis\b",
         lambda v: np.concatenate([A, A], axis=v)),
    # numpy's stack alone takes axis=True (as 1); batchgrad refuses bools everywhere
    Slot("stack(axis=v)", lambda v: bg.stack([T(), T()], axis=v), r"\baxis\b", lambda v: np.stack([A, A], axis=v),
         _unless({"bool": TypeError})),
    Slot("take(t, [0], axis=v)", lambda v: bg.take(T(), [0], axis=v), r"\baxis\b", lambda v: np.take(A, [0], axis=v)),
    Slot("vmap(in_axes=v)", lambda v: bg.vmap(lambda x: x.sum(), in_axes=v)(T()[0]), r"\bin_axes\b", None,
         _vmap_in_axes_expect),
    Slot("vmap(out_axes=v)", lambda v: bg.vmap(lambda x: x * 2.0, out_axes=v)(T()[0]), r"\bout_axes\b", None,
         _vmap_out_axes_expect),
    Slot("replicate(B=v)", lambda v: bg.replicate(lambda x: x.sum(), v)(T()[0]), r"\bB\b", None, _replicate_b_expect),
    Slot("replicate(in_axes=v)", lambda v: bg.replicate(lambda x: x.sum(), 3, in_axes=v)(T()[0]), r"\bin_axes\b|\bB=",
         None, _replicate_in_axes_expect),
]

INDEX_SLOTS = [
    Slot("take(t, [v])", lambda v: bg.take(T(), [v]), r"\bind(ex|ices)\b", lambda v: np.take(A, [v], axis=0),
         _take_index_expect),
    # numpy reads x[True] as a 0-d mask (a new axis); batchgrad refuses boolean scalars
    Slot("t[v]", lambda v: T()[v], r"\bind(ex|ices)\b", lambda v: A[v], _unless({"bool": IndexError})),
    Slot("t[0, v]", lambda v: T()[0, v], r"\bind(ex|ices)\b", lambda v: A[0, v], _unless({"bool": IndexError})),
    Slot("t[[v]]", lambda v: T()[[v]], r"\bind(ex|ices)\b", lambda v: A[[v]]),
    Slot("t[:, [v, 0]]", lambda v: T()[:, [v, 0]], r"\bind(ex|ices)\b", lambda v: A[:, [v, 0]]),
    Slot("t[np.array([v])]", lambda v: T()[np.array([v])], r"\bind(ex|ices)\b", lambda v: A[np.array([v])]),
]


def _outcome(f: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return f(), None
    except Exception as e:  # noqa: BLE001
        return None, e


def check_slot(slot: Slot, v: Any) -> None:
    got, err = _outcome(lambda: slot.call(v))
    want = slot.expect(v)
    ref = ref_err = None
    if want is NUMPY:
        assert slot.ref is not None, f"{slot}: no numpy reference and no expectation for {v!r}"
        ref, ref_err = _outcome(lambda: slot.ref(v))
        want = ACCEPT if ref_err is None else type(ref_err)
    if want is ACCEPT:
        assert err is None, f"{slot} with {v!r}: numpy accepts it, batchgrad raised {type(err).__name__}: {err}"
        if slot.same_shape and ref is not None:
            assert got.shape == np.shape(ref), f"{slot} with {v!r}: shape {got.shape}, numpy {np.shape(ref)}"
        return
    assert err is not None, f"{slot} with {v!r}: expected {want.__name__} (numpy: {ref_err!r}), got no error"
    assert isinstance(err, want), (f"{slot} with {v!r}: expected {want.__name__} (numpy: {ref_err!r}), "
                                   f"got {type(err).__name__}: {err}")
    assert "invalid literal" not in str(err) and "unsupported value" not in str(err), f"{slot} with {v!r}: {err}"
    if category(v) != "int":
        assert re.search(slot.arg, str(err)), f"{slot} with {v!r}: the message does not name the argument: {err}"


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(slot=st.sampled_from(SHAPE_SLOTS), v=BAD)
def test_shape_slots_refuse_what_numpy_refuses(slot, v):
    check_slot(slot, v)


@SETTINGS
@given(slot=st.sampled_from(AXIS_SLOTS), v=BAD)
def test_axis_slots_refuse_what_numpy_refuses(slot, v):
    check_slot(slot, v)


@SETTINGS
@given(slot=st.sampled_from(INDEX_SLOTS), v=BAD)
def test_index_slots_refuse_what_numpy_refuses(slot, v):
    check_slot(slot, v)


# every slot sees every kind of bad value at least once, whatever hypothesis draws
CORNERS = [2.0, 0.5, float("nan"), np.float64(1.0), "1", "x", True, np.False_, None, 2**63, 2**100, -(2**63) - 1, -1, -5]


@pytest.mark.parametrize("slot", SHAPE_SLOTS + AXIS_SLOTS + INDEX_SLOTS, ids=repr)
def test_every_slot_with_each_kind_of_bad_value(slot):
    for v in CORNERS:
        check_slot(slot, v)


# ---- the examples of the issue ------------------------------------------------------------------------
@pytest.mark.parametrize("f, np_f, arg", [
    (lambda: bg.ones((2, 3.0)), lambda: np.ones((2, 3.0)), "shape"),
    (lambda: bg.zeros(("3",)), lambda: np.zeros(("3",)), "shape"),
    (lambda: bg.zeros((True, 2)), lambda: np.zeros((True, 2)), "shape"),
    (lambda: bg.full((2, 2.0), 1.0), lambda: np.full((2, 2.0), 1.0), "shape"),
    (lambda: bg.randn(2.0), lambda: np.random.default_rng().standard_normal(2.0), "shape"),
    (lambda: T().reshape(6, 4.0), lambda: A.reshape(6, 4.0), "shape"),
    (lambda: T().transpose((2.0, 1.0, 0.0)), lambda: A.transpose((2.0, 1.0, 0.0)), "axes"),
    (lambda: bg.broadcast_to(bg.ones(1), (2.0,)), lambda: np.broadcast_to(np.ones(1), (2.0,)), "shape"),
    (lambda: T().sum(axis="1"), lambda: A.sum(axis="1"), "axis"),
    (lambda: T().sum(axis=1.0), lambda: A.sum(axis=1.0), "axis"),
    (lambda: T().sum(axis=True), lambda: A.sum(axis=True), "axis"),
    (lambda: T().mean(axis=(0, "1")), lambda: A.mean(axis=(0, "1")), "axis"),
    (lambda: T().softmax(axis="1"), lambda: A.sum(axis="1"), "axis"),
    (lambda: bg.log_softmax(T(), axis=1.0), lambda: A.sum(axis=1.0), "axis"),
    (lambda: bg.concatenate([T(), T()], axis="0"), lambda: np.concatenate([A, A], axis="0"), "axis"),
    (lambda: bg.stack([T(), T()], axis=0.0), lambda: np.stack([A, A], axis=0.0), "axis"),
    (lambda: bg.take(T(), [0], axis="0"), lambda: np.take(A, [0], axis="0"), "axis"),
])
def test_non_integers_in_integer_slots_are_type_errors(f, np_f, arg):
    with pytest.raises(TypeError):
        np_f()
    with pytest.raises(TypeError, match=rf"\b{arg}\b") as e:
        f()
    assert "invalid literal" not in str(e.value)


@pytest.mark.parametrize("key", [2.0, np.float64(1.0), "1", np.array([0.0, 1.0]), [0.0, 1.0], (0, 1.0)], ids=repr)
def test_float_and_string_indices_are_index_errors(key):
    with pytest.raises(IndexError):
        A[key]
    with pytest.raises(IndexError, match="ind(ex|ices)"):
        T()[key]


def test_tensor_indices_must_hold_integers():
    t = T()
    assert np.array_equal(t[bg.tensor(1.0)].numpy(), A[1])  # a Tensor holds floats: 1.0 is the index 1
    assert np.array_equal(t[bg.tensor([1.0, 0.0])].numpy(), A[[1, 0]])
    for bad in (bg.tensor(0.5), bg.tensor([0.0, 1.5]), bg.tensor(float("nan"))):
        with pytest.raises(IndexError, match="integers"):
            t[bad]
    with pytest.raises(IndexError, match="integers"):
        bg.take(t, bg.tensor([0.5]))


def test_bool_scalar_index_keeps_its_error():
    with pytest.raises(IndexError, match="boolean scalars"):
        T()[True]


def test_a_dimension_beyond_int64_is_a_value_error_naming_the_shape():
    with pytest.raises(ValueError):
        A.reshape(12, 2**63)
    for f in (lambda: T().reshape(12, 2**63), lambda: bg.reshape(T(), (2**100, 1)), lambda: bg.zeros(2**63),
              lambda: bg.broadcast_to(bg.ones(1), (2**64,)), lambda: bg.ones(2, -(2**63) - 1)):
        with pytest.raises(ValueError, match=r"\bshape\b.*int64") as e:
            f()
        assert "unsupported value" not in str(e.value)


def test_negative_sizes_are_value_errors_naming_the_shape():
    for f in (lambda: bg.zeros(2, -1), lambda: bg.ones((-3,)), lambda: bg.full((-1, 2), 0.0), lambda: bg.randn(-2),
              lambda: bg.rand(2, -1), lambda: bg.broadcast_to(bg.ones(1), (-1,)), lambda: T().reshape(-2, 12)):
        with pytest.raises(ValueError, match=r"negative dimensions.*\bshape\b"):
            f()
    assert T().reshape(-1, 12).shape == (2, 12)


def test_out_of_range_axes_are_numpy_axis_errors():
    for f in (lambda: T().sum(axis=3), lambda: T().max(axis=(0, -4)), lambda: T().softmax(axis=3),
              lambda: bg.concatenate([T()], axis=3), lambda: bg.stack([T()], axis=4), lambda: bg.take(T(), [0], axis=-4),
              lambda: T().transpose(3, 0, 1), lambda: F.softmax(T(), dim=5)):
        with pytest.raises(AxisError, match=r"\b(axis|dim) -?\d+\b.*out of bounds.*dimension \d") as e:
            f()
        assert isinstance(e.value, ValueError) and isinstance(e.value, IndexError)  # as numpy's AxisError


def test_axes_beyond_int64_are_overflow_and_axis_errors():
    with pytest.raises(OverflowError):
        A.sum(axis=2**63)
    for f in (lambda: T().sum(axis=2**63), lambda: bg.take(T(), [0], axis=-(2**100)), lambda: bg.stack([T()], axis=2**64)):
        with pytest.raises(OverflowError, match=r"\baxis\b") as e:
            f()
        assert isinstance(e.value, AxisError) and isinstance(e.value, ValueError)


def test_indices_beyond_int64_do_not_wrap_around():
    t = T()
    for f in (lambda: t[[2**64 - 1]], lambda: t[2**63], lambda: bg.take(t, [2**64 - 1]), lambda: bg.take(t, [1e20]),
              lambda: bg.take(t, [2**100]), lambda: t[:, [2**63]]):
        with pytest.raises(IndexError, match="out of bounds") as e:
            f()
        assert isinstance(e.value, OverflowError)


def test_matmul_reports_the_shapes_the_caller_passed():
    with pytest.raises(ValueError, match=r"shapes \[4\] and \[3, 2\]") as e:
        bg.ones(4) @ bg.ones(3, 2)
    assert "[1, 4]" not in str(e.value)
    with pytest.raises(ValueError, match=r"shapes \[2, 3\] and \[4\]") as e:
        bg.matmul(bg.ones(2, 3), bg.ones(4))
    assert "[4, 1]" not in str(e.value)
    with pytest.raises(ValueError, match=r"shapes \[4\] and \[3\]"):
        bg.ones(4) @ bg.ones(3)
    with pytest.raises(ValueError, match=r"shapes \[2, 3\] and \[4, 5\]"):
        bg.ones(2, 3) @ bg.ones(4, 5)
    assert (bg.ones(3) @ bg.ones(3, 2)).shape == (2,)


def test_integer_like_values_numpy_accepts_still_work():
    assert bg.zeros(np.int64(2), np.int32(3)).shape == (2, 3)
    assert bg.zeros(np.array([2, 3])).shape == (2, 3)
    assert bg.ones(np.array(4)).shape == (4,)
    assert bg.full(range(1, 3), 1.0).shape == (1, 2)
    assert T().reshape(np.array([6, 4])).shape == (6, 4)
    assert T().reshape([4, -1]).shape == (4, 6)
    assert T().transpose(np.array([2, 0, 1])).shape == (4, 2, 3)
    assert T().sum(axis=np.int64(1)).shape == (2, 4)
    assert T().sum(axis=np.array(1)).shape == (2, 4)
    assert T().sum(axis=[0, 2]).shape == (3,)
    assert T().softmax(axis=np.int8(-1)).shape == (2, 3, 4)
    assert T()[np.int64(1), np.array(2)].shape == (4,)
    assert T()[[]].shape == (0, 3, 4)
    assert T()[True:2].shape == A[True:2].shape == (1, 3, 4)  # a slice takes bools, as numpy's


def test_axis_none_flattens_in_concatenate_and_take_as_numpy():
    assert np.array_equal(bg.concatenate([T(), T()], axis=None).numpy(), np.concatenate([A, A], axis=None))
    assert np.array_equal(bg.take(T(), [5, -1], axis=None).numpy(), np.take(A, [5, -1], axis=None))


def test_none_where_it_means_nothing_is_a_type_error():
    for f, arg in ((lambda: bg.zeros(None), "shape"), (lambda: T().reshape(None), "shape"),
                   (lambda: T().softmax(axis=None), "axis"), (lambda: bg.stack([T()], axis=None), "axis"),
                   (lambda: T().sum(axis=(0, None)), "axis"), (lambda: bg.zeros((2, None)), "shape")):
        with pytest.raises(TypeError, match=rf"\b{arg}\b"):
            f()


def test_transform_axis_and_size_arguments():
    f = lambda x: x.sum()  # noqa: E731
    with pytest.raises(TypeError, match="in_axes"):
        bg.vmap(f, in_axes=1.0)(T())
    with pytest.raises(TypeError, match="in_axes"):
        bg.vmap(f, in_axes=True)(T())
    with pytest.raises(ValueError, match="in_axes=2"):  # out of range: still a ValueError (an AxisError)
        bg.vmap(f, in_axes=2)(T()[0])
    with pytest.raises(TypeError, match="out_axes"):
        bg.vmap(lambda x: x * 2.0, out_axes="1")(T())
    with pytest.raises(AxisError, match="out_axes"):
        bg.vmap(lambda x: x * 2.0, out_axes=3)(T())
    assert bg.vmap(lambda x: x * 2.0, out_axes=-1)(T()).shape == (3, 4, 2)
    with pytest.raises(ValueError, match="out_axes has 2 entries"):
        bg.vmap(lambda x: x * 2.0, out_axes=(0, 1))(T())
    with pytest.raises(TypeError, match=r"\bB\b"):
        bg.replicate(f, 2.0)
    with pytest.raises(ValueError, match=r"\bB\b"):
        bg.replicate(f, 0)
    with pytest.raises(TypeError, match="in_axes"):
        bg.replicate(f, 2, in_axes="0")(T())
    assert bg.replicate(f, 2)(T()).item() == pytest.approx(float(A.sum()))


def test_the_helpers_directly():
    assert _args.index(np.int16(3), "n") == 3
    with pytest.raises(TypeError, match=r"^fn: n must be an integer, got float 3\.0$"):
        _args.index(3.0, "n", "fn")
    with pytest.raises(TypeError, match="bools are not accepted"):
        _args.index(True, "n")
    assert _args.shape(5) == (5,) and _args.shape([2, 0]) == (2, 0) and _args.shape(()) == ()
    assert _args.shape((3, -1), allow_unknown=True) == (3, -1)
    with pytest.raises(ValueError, match="negative"):
        _args.shape((3, -2), allow_unknown=True)
    with pytest.raises(TypeError, match="array of shape"):
        _args.shape(np.zeros((2, 2), int))
    assert _args.axes(1, 3) == [1] and _args.axes((0, -1), 3) == [0, -1]
    assert _args.axis(2**30, None) == 2**30  # ndim=None: the type and the int32 range only
    with pytest.raises(OverflowError):
        _args.axis(2**31, None)
    assert _args.size(0, "n") == 0
    with pytest.raises(ValueError, match=">= 1"):
        _args.size(0, "n", minimum=1)
