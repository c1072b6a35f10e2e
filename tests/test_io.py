"""Tests of batchgrad.io checkpoints (safetensors format written with numpy + json)."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from batchgrad import io as bgio


class FakeTensor:
    """Stands in for a batchgrad tensor: anything with a ``.numpy()`` method."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data

    def numpy(self) -> np.ndarray:
        return self._data


def assert_same_tree(actual, expected) -> None:
    """Exact structural equality, including container types and array dtypes."""
    if isinstance(expected, FakeTensor):
        expected = expected.numpy()
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray), type(actual)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)
        return
    if isinstance(expected, np.generic):
        assert type(actual) is type(expected) and actual == expected
        return
    assert type(actual) is type(expected), (type(actual), type(expected))
    if isinstance(expected, dict):
        assert list(actual.keys()) == list(expected.keys())
        for k in expected:
            assert_same_tree(actual[k], expected[k])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_same_tree(a, e)
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual)
    else:
        assert actual == expected


def make_state() -> dict:
    rng = np.random.default_rng(0)
    return {
        "model": {
            "fc1.weight": rng.normal(size=(4, 3)).astype(np.float32),
            "fc1.bias": np.zeros(4, dtype=np.float32),
            "fc2": {"weight": FakeTensor(rng.normal(size=(2, 4)).astype(np.float32))},
        },
        "optimizer": {
            "state": {0: {"step": 10, "exp_avg": rng.normal(size=(4, 3))}, 1: {"step": 10}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1], "nesterov": False}],
        },
        "arrays": {
            "f64": rng.normal(size=(2, 2, 2)),
            "i64": np.arange(-3, 3, dtype=np.int64),
            "i32": np.array([[1, -2147483648, 2147483647]], dtype=np.int32),
            "bool": np.array([True, False, True]),
            "scalar0d": np.array(2.5, dtype=np.float32),
            "empty": np.zeros((0, 5), dtype=np.float64),
            "u8": np.arange(5, dtype=np.uint8),
            "f16": np.array([0.5, -1.0], dtype=np.float16),
            "big_endian": np.arange(3, dtype=">i4"),
            "non_contiguous": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        },
        "numpy_scalar": np.float64(0.25),
        "epoch": 3,
        "huge_int": 2**80,
        "loss": 0.1 + 0.2,
        "nan": float("nan"),
        "inf": -float("inf"),
        "done": True,
        "name": 'run-1 \u00e9\u00e8 "quoted" \\ back.slash',
        "nothing": None,
        "history": [1.5, 2, None, "x", [np.arange(3, dtype=np.int64), {"deep": np.ones(2, dtype=np.float32)}]],
        "a.b": np.ones(1, dtype=np.float32),
        "a": {"b": np.zeros(1, dtype=np.float32)},
        "empty_dict": {},
        "empty_list": [],
    }


def expected_after_load(state):
    """What load returns: tensors as arrays, byte order native, views compacted."""
    if isinstance(state, FakeTensor):
        return state.numpy()
    if isinstance(state, np.ndarray):
        return np.array(state, dtype=state.dtype.newbyteorder("="), order="C")
    if isinstance(state, dict):
        return {k: expected_after_load(v) for k, v in state.items()}
    if isinstance(state, list):
        return [expected_after_load(v) for v in state]
    if isinstance(state, tuple):
        return tuple(expected_after_load(v) for v in state)
    return state


def test_round_trip_nested_state(tmp_path: Path):
    state = make_state()
    path = tmp_path / "ckpt.safetensors"
    bgio.save(state, path)
    loaded = bgio.load(path)
    assert_same_tree(loaded, expected_after_load(state))
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert loaded["huge_int"] == 2**80 and loaded["loss"] == 0.1 + 0.2
    assert loaded["arrays"]["big_endian"].dtype == np.dtype("int32")
    assert loaded["arrays"]["f64"].flags.writeable


def test_file_layout_is_safetensors(tmp_path: Path):
    path = tmp_path / "ckpt.safetensors"
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    bgio.save({"model": {"fc1.weight": weight}, "n": np.int64(7), "epoch": 1}, path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert header["model.fc1\\.weight"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert header["n"] == {"dtype": "I64", "shape": [], "data_offsets": [24, 32]}
    assert all(isinstance(v, str) for v in header["__metadata__"].values())
    assert len(raw) == 8 + n + 32
    np.testing.assert_array_equal(np.frombuffer(raw[8 + n : 8 + n + 24], "<f4"), np.arange(6))


def test_path_and_str_paths_and_root_array(tmp_path: Path):
    bgio.save(np.arange(4, dtype=np.int32), str(tmp_path / "root.safetensors"))
    assert_same_tree(bgio.load(tmp_path / "root.safetensors"), np.arange(4, dtype=np.int32))


def test_rejects_unsupported_leaves_and_collisions(tmp_path: Path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError):
        bgio.save({"x": object()}, path)
    with pytest.raises(TypeError):
        bgio.save({"x": np.array(["a", "b"])}, path)
    with pytest.raises(TypeError):
        bgio.save({"x": np.array([1 + 2j])}, path)
    with pytest.raises(TypeError):
        bgio.save({(1, 2): np.zeros(1)}, path)
    with pytest.raises(ValueError, match="map to the tensor name"):
        bgio.save({0: np.zeros(1), "0": np.ones(1)}, path)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_checkpoint_on_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "ckpt.safetensors"
    bgio.save({"epoch": 1, "w": np.ones(3, dtype=np.float32)}, path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        bgio.save({"epoch": 2, "w": np.zeros(1000, dtype=np.float32)}, path)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temp file left behind
    loaded = bgio.load(path)
    assert loaded["epoch"] == 1
    np.testing.assert_array_equal(loaded["w"], np.ones(3, dtype=np.float32))


def test_atomic_write_cleans_up_when_fsync_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "ckpt.safetensors"

    def broken_fsync(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        bgio.save({"w": np.ones(3)}, path)
    assert list(tmp_path.iterdir()) == []


def test_save_overwrites_and_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "ckpt.safetensors"
    bgio.save({"epoch": 1}, path)
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    bgio.save({"epoch": 2}, path)
    assert synced  # the data was flushed to disk before the rename
    assert bgio.load(path) == {"epoch": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]


@pytest.mark.parametrize("cut", [0, 4, 8, 20, -1])
def test_load_rejects_truncated_files(tmp_path: Path, cut: int):
    path = tmp_path / "ckpt.safetensors"
    bgio.save({"w": np.arange(10, dtype=np.float64)}, path)
    raw = path.read_bytes()
    path.write_bytes(raw[:cut])
    with pytest.raises(ValueError):
        bgio.load(path)


def test_safetensors_reads_our_file(tmp_path: Path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    state = make_state()
    path = tmp_path / "ckpt.safetensors"
    bgio.save(state, path)
    theirs = st_numpy.load_file(str(path))
    assert theirs["model.fc1\\.weight"].dtype == np.float32
    np.testing.assert_array_equal(theirs["model.fc1\\.weight"], state["model"]["fc1.weight"])
    np.testing.assert_array_equal(theirs["model.fc2.weight"], state["model"]["fc2"]["weight"].numpy())
    np.testing.assert_array_equal(theirs["optimizer.state.0.exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    np.testing.assert_array_equal(theirs["arrays.bool"], state["arrays"]["bool"])
    np.testing.assert_array_equal(theirs["arrays.i32"], state["arrays"]["i32"])
    np.testing.assert_array_equal(theirs["history.4.1.deep"], np.ones(2, dtype=np.float32))
    np.testing.assert_array_equal(theirs["a\\.b"], np.ones(1))
    np.testing.assert_array_equal(theirs["a.b"], np.zeros(1))
    assert theirs["arrays.empty"].shape == (0, 5)

    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["batchgrad.format_version"] == "1"


def test_we_read_safetensors_files(tmp_path: Path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    tensors = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1, 2], dtype=np.int64),
        "m": np.array([True, False]),
        "d": np.array(3.5, dtype=np.float64),
    }
    path = tmp_path / "theirs.safetensors"
    st_numpy.save_file(tensors, str(path))
    loaded = bgio.load(path)
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert_same_tree(loaded[k], v)


def test_round_trip_real_tensors(tmp_path: Path):
    pytest.importorskip("batchgrad._core")
    import batchgrad

    w = batchgrad.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    path = tmp_path / "real.safetensors"
    bgio.save({"model": {"w": w}, "epoch": 0}, path)
    loaded = bgio.load(path)
    assert loaded["epoch"] == 0
    np.testing.assert_array_equal(loaded["model"]["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
