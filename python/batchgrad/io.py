"""Checkpoints: save and load nested training state as a safetensors file.

The file is written with numpy and json only (no dependency on the
``safetensors`` package) in the safetensors format:

* 8 bytes: ``N``, the header length, unsigned little-endian;
* ``N`` bytes: a JSON object ``{name: {"dtype": "F32", "shape": [...],
  "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}``, padded
  with spaces to a multiple of 8 bytes;
* the raw little-endian bytes of every tensor, back to back (offsets are
  relative to the end of the header).

Array leaves become tensors named by their key path joined with ``"."`` (a
``"."`` or ``"\\"`` inside a key is escaped with a backslash, so
``{"fc1.weight": w}`` under ``"model"`` is ``model.fc1\\.weight``). Every other
leaf and the shape of the tree (dicts, lists, tuples) is stored as JSON in
``__metadata__["batchgrad.tree"]``, so :func:`load` rebuilds the same nested
structure. Any safetensors reader can read the tensors of our files.

Writes are atomic: the file is written to a temporary file in the same
directory, flushed and ``fsync``-ed, then moved over ``path`` with
``os.replace``; a crash leaves either the old or the new checkpoint.

Example::

    save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, "ckpt.safetensors")
    state = load("ckpt.safetensors")
"""

from __future__ import annotations

import json
import os
import secrets
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["save", "load"]

FORMAT_VERSION = "1"
_TREE_KEY = "batchgrad.tree"
_VERSION_KEY = "batchgrad.format_version"
_MAX_HEADER = 100 * 1024 * 1024  # the limit the reference implementation enforces

_DTYPE_TO_ST: dict[np.dtype, str] = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint16): "U16",
    np.dtype(np.int16): "I16",
    np.dtype(np.uint32): "U32",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint64): "U64",
    np.dtype(np.int64): "I64",
    np.dtype(np.float16): "F16",
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
}
_ST_TO_DTYPE: dict[str, np.dtype] = {v: k.newbyteorder("<") for k, v in _DTYPE_TO_ST.items()}

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------
# Tree flattening
# ---------------------------------------------------------------------------


def _escape(part: str) -> str:
    """Escape one key so that joining with ``"."`` stays unambiguous."""
    return part.replace("\\", "\\\\").replace(".", "\\.")


def _join(prefix: str, part: str) -> str:
    return _escape(part) if prefix == "" else f"{prefix}.{_escape(part)}"


def _to_array(leaf: Any) -> np.ndarray | None:
    """The array to store for ``leaf``, or None if it is not an array leaf."""
    if isinstance(leaf, (np.ndarray, np.generic)):
        return np.asarray(leaf)
    numpy_method = getattr(leaf, "numpy", None)
    if callable(numpy_method) and not isinstance(leaf, type):
        return np.asarray(numpy_method())
    return None


def _encode_key(key: Any, where: str) -> list[Any]:
    if isinstance(key, str):
        return ["s", key]
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return ["i", int(key)]
    raise TypeError(f"checkpoint dict keys must be str or int, got {type(key).__name__} at {where or '<root>'}")


class _Flattener:
    """Walks a state tree, collecting arrays and a JSON description of the rest."""

    def __init__(self) -> None:
        self.tensors: dict[str, np.ndarray] = {}

    def add_tensor(self, name: str, arr: np.ndarray) -> None:
        if arr.dtype.newbyteorder("=") not in _DTYPE_TO_ST:
            raise TypeError(
                f"cannot save array {name!r} of dtype {arr.dtype}; supported: "
                + ", ".join(str(d) for d in _DTYPE_TO_ST)
            )
        if name in self.tensors:
            raise ValueError(f"two leaves of the checkpoint map to the tensor name {name!r}")
        self.tensors[name] = arr

    def node(self, obj: Any, name: str) -> dict[str, Any]:
        # numpy scalars first (np.float64 subclasses float), bool before int
        # (bool subclasses int).
        if isinstance(obj, np.generic):
            return self.leaf_array(obj, name)
        if obj is None or isinstance(obj, (bool, str)):
            return {"t": "json", "v": obj}
        if isinstance(obj, int):
            return {"t": "int", "v": str(int(obj))}
        if isinstance(obj, float):
            return {"t": "float", "v": repr(float(obj))}
        if isinstance(obj, Mapping):
            items = []
            for key, value in obj.items():
                part = str(key)
                items.append([_encode_key(key, name), self.node(value, _join(name, part))])
            return {"t": "dict", "items": items}
        if isinstance(obj, (list, tuple)):
            kind = "list" if isinstance(obj, list) else "tuple"
            return {"t": kind, "items": [self.node(v, _join(name, str(i))) for i, v in enumerate(obj)]}
        return self.leaf_array(obj, name)

    def leaf_array(self, obj: Any, name: str) -> dict[str, Any]:
        arr = _to_array(obj)
        if arr is None:
            raise TypeError(f"cannot save a leaf of type {type(obj).__name__} at {name or '<root>'}")
        if name == "":
            name = "__root__"
        self.add_tensor(name, arr)
        return {"t": "scalar" if isinstance(obj, np.generic) else "array", "k": name}


def _decode_key(encoded: list[Any]) -> Any:
    kind, value = encoded
    return int(value) if kind == "i" else value


def _rebuild(node: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> Any:
    t = node["t"]
    if t == "json":
        return node["v"]
    if t == "int":
        return int(node["v"])
    if t == "float":
        return float(node["v"])
    if t == "dict":
        return {_decode_key(k): _rebuild(v, tensors) for k, v in node["items"]}
    if t == "list":
        return [_rebuild(v, tensors) for v in node["items"]]
    if t == "tuple":
        return tuple(_rebuild(v, tensors) for v in node["items"])
    if t == "array":
        return tensors[node["k"]]
    if t == "scalar":
        return tensors[node["k"]][()]
    raise ValueError(f"corrupt checkpoint tree: unknown node type {t!r}")


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def _build_header(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, arr in tensors.items():
        nbytes = arr.size * arr.dtype.itemsize
        header[name] = {
            "dtype": _DTYPE_TO_ST[arr.dtype.newbyteorder("=")],
            "shape": [int(d) for d in arr.shape],
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)


def _little_endian_c_order(arr: np.ndarray) -> np.ndarray:
    """``arr`` as a C-contiguous little-endian array (0-d arrays stay 0-d)."""
    out = np.asarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return out if out.flags.c_contiguous else out.copy(order="C")


def _fsync_dir(directory: str) -> None:
    """Persist a rename in ``directory`` (best effort; not possible everywhere)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(state: Any, path: PathLike) -> None:
    """Atomically write ``state`` to ``path`` as a safetensors file.

    Args:
        state: a nested structure of dicts (str or int keys), lists and tuples
            whose leaves are numpy arrays or numpy scalars, objects with a
            ``.numpy()`` method (batchgrad tensors; saved as
            ``np.asarray(x.numpy())``), or Python ``int``, ``float``, ``bool``,
            ``str`` and ``None``. Arrays may be bool, (u)int8..64 or
            float16/32/64.
        path: destination file; an existing file is replaced atomically.

    Raises:
        TypeError: on an unsupported leaf, key or dtype.
        ValueError: if two leaves map to the same tensor name.
    """
    flattener = _Flattener()
    tree = flattener.node(state, "")
    tensors = {name: _little_endian_c_order(arr) for name, arr in flattener.tensors.items()}
    metadata = {
        _VERSION_KEY: FORMAT_VERSION,
        _TREE_KEY: json.dumps(tree, ensure_ascii=False, separators=(",", ":"), allow_nan=False),
    }
    header = _build_header(tensors, metadata)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    # os.open with 0o666 lets the umask decide the final permissions, as open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for arr in tensors.values():
                if arr.size:
                    f.write(arr.reshape(-1).view(np.uint8).data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _read_header(f: Any, file_size: int) -> tuple[dict[str, Any], int]:
    prefix = f.read(8)
    if len(prefix) != 8:
        raise ValueError("not a safetensors file: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", prefix)
    if n > _MAX_HEADER or 8 + n > file_size:
        raise ValueError(f"not a safetensors file: header length {n} does not fit the file ({file_size} bytes)")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a safetensors file: bad JSON header ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: header is not a JSON object")
    return header, 8 + n


def load(path: PathLike) -> Any:
    """Read a checkpoint written by :func:`save`.

    Returns:
        The same nested structure that was saved; array leaves come back as
        numpy arrays with their original dtype and shape (``.numpy()`` objects
        come back as arrays, numpy scalars as numpy scalars). A safetensors file
        written by another tool (no ``batchgrad.tree`` metadata) loads as a flat
        ``{tensor_name: array}`` dict.

    Raises:
        ValueError: if the file is not a valid safetensors file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        header, data_start = _read_header(f, file_size)
        metadata = header.pop("__metadata__", None) or {}
        data_size = file_size - data_start
        entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0] if isinstance(kv[1], dict) else 0)
        tensors: dict[str, np.ndarray] = {}
        for name, info in entries:
            try:
                dtype = _ST_TO_DTYPE[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"unsupported or malformed tensor entry {name!r}: {info!r}") from None
            count = int(np.prod(shape, dtype=np.int64))
            if any(d < 0 for d in shape) or not 0 <= begin <= end <= data_size or end - begin != count * dtype.itemsize:
                raise ValueError(f"tensor {name!r} has inconsistent shape/offsets: {info!r}")
            f.seek(data_start + begin)
            arr = np.fromfile(f, dtype=dtype, count=count) if count else np.empty(0, dtype=dtype)
            if arr.size != count:
                raise ValueError(f"tensor {name!r} is truncated")
            tensors[name] = arr.astype(dtype.newbyteorder("="), copy=False).reshape(shape)
    tree_json = metadata.get(_TREE_KEY) if isinstance(metadata, dict) else None
    if tree_json is None:
        return tensors
    return _rebuild(json.loads(tree_json), tensors)
