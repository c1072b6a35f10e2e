"""Minibatch data loading: datasets, samplers and a prefetching ``DataLoader``.

The design follows ``torch.utils.data`` closely, but batches are fetched in a
vectorised way: a :class:`BatchSampler` yields whole ``int64`` index arrays and
a :class:`Dataset` answers ``dataset[index_array]`` with one fancy-index per
stored array, never with a per-example Python loop.

This module depends only on numpy at import time. ``batchgrad`` itself (and so
the native core) is imported lazily, only by :func:`default_collate` when it
converts a float batch into a tensor.

Example::

    X, y = load_digits()
    loader = DataLoader(ArrayDataset(X, y), batch_size=64, shuffle=True, seed=0)
    for epoch in range(10):
        for xb, yb in loader:  # each ``iter()`` is a new, reshuffled epoch
            ...
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Dataset",
    "ArrayDataset",
    "NpyDataset",
    "Sampler",
    "SequentialSampler",
    "RandomSampler",
    "DistributedSampler",
    "BatchSampler",
    "DataLoader",
    "default_collate",
]

Index = int | np.integer | np.ndarray | Sequence[int]


def _is_int(value: object) -> bool:
    """True for Python/numpy integers, but not for ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_non_negative_int(name: str, value: object) -> int:
    if not _is_int(value) or int(value) < 0:  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def _normalize_index(idx: Index) -> int | np.ndarray:
    """Turn ``idx`` into a Python int or a 1-D ``int64`` index array."""
    if _is_int(idx):
        return int(idx)  # type: ignore[arg-type]
    arr = np.asarray(idx)
    if arr.ndim != 1:
        raise TypeError(f"index must be an int or a 1-D integer array, got an array of shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"index array must have an integer dtype, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _storage_dtype(dtype: np.dtype) -> np.dtype:
    """Dtype a dataset hands out: floats as float32, integers as int64."""
    if np.issubdtype(dtype, np.floating):
        return np.dtype(np.float32)
    if np.issubdtype(dtype, np.integer):
        return np.dtype(np.int64)
    return dtype


def _check_lengths(arrays: Sequence[np.ndarray], names: Sequence[str] | None = None) -> int:
    """Validate that every array has the same first dimension; return it."""
    if not arrays:
        raise ValueError("a dataset needs at least one array")
    for i, a in enumerate(arrays):
        if a.ndim == 0:
            label = names[i] if names is not None else f"array {i}"
            raise ValueError(f"{label} is 0-dimensional; dataset arrays need a first (example) dimension")
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) != 1:
        shapes = [tuple(a.shape) for a in arrays]
        where = f" ({', '.join(names)})" if names is not None else ""
        raise ValueError(f"all arrays must have the same first dimension, got shapes {shapes}{where}")
    return arrays[0].shape[0]


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------


class Dataset:
    """Base class of map-style datasets.

    Subclasses implement ``__len__`` and ``__getitem__``. ``dataset[i]`` with an
    integer returns a tuple with one example per field; ``dataset[idx]`` with a
    1-D integer array returns a tuple of batch arrays whose first dimension is
    ``len(idx)``. Batch fetches must be vectorised (one fancy-index per field).
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, idx: Index) -> tuple[Any, ...]:
        raise NotImplementedError


class ArrayDataset(Dataset):
    """Dataset over in-memory arrays that share their first dimension.

    Float arrays are stored as ``float32`` and integer arrays as ``int64``
    (class labels); other dtypes (e.g. ``bool``) are kept as they are.

    Args:
        *arrays: array-likes, e.g. ``ArrayDataset(X, y)``.

    Raises:
        ValueError: if no array is given, an array is 0-dimensional, or the
            first dimensions differ (the message names the shapes).
    """

    def __init__(self, *arrays: Any) -> None:
        raw = [np.asarray(a) for a in arrays]
        self._length = _check_lengths(raw)
        converted = [np.ascontiguousarray(a, dtype=_storage_dtype(a.dtype)) for a in raw]
        self.arrays: tuple[np.ndarray, ...] = tuple(converted)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, idx: Index) -> tuple[np.ndarray, ...]:
        key = _normalize_index(idx)
        return tuple(a[key] for a in self.arrays)

    def __repr__(self) -> str:
        fields = ", ".join(f"{a.dtype}{list(a.shape)}" for a in self.arrays)
        return f"ArrayDataset({fields})"


class NpyDataset(Dataset):
    """Dataset over ``.npy`` files, memory-mapped so that it streams from disk.

    Each file is opened with ``np.load(path, mmap_mode="r")``; only the rows of
    the requested batch are read (and copied) when a batch is fetched, so a
    dataset larger than RAM can be iterated batch by batch. Dtypes are
    converted per batch: floats to ``float32``, integers to ``int64``.

    Args:
        *paths: paths of ``.npy`` files whose arrays share the first dimension.

    Raises:
        ValueError: if no path is given, an array is 0-dimensional, or the
            first dimensions differ (the message names the shapes and files).
    """

    def __init__(self, *paths: str | os.PathLike[str]) -> None:
        self.paths: tuple[str, ...] = tuple(os.fspath(p) for p in paths)
        arrays = [np.load(p, mmap_mode="r") for p in self.paths]
        for p, a in zip(self.paths, arrays, strict=True):
            if a.dtype.hasobject:
                raise ValueError(f"{p}: object arrays cannot be memory-mapped")
        self._length = _check_lengths(arrays, names=self.paths)
        self.arrays: tuple[np.ndarray, ...] = tuple(arrays)
        self._dtypes = tuple(_storage_dtype(a.dtype) for a in arrays)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, idx: Index) -> tuple[np.ndarray, ...]:
        key = _normalize_index(idx)
        out = []
        for a, dtype in zip(self.arrays, self._dtypes, strict=True):
            # Fancy-indexing a memmap reads just these rows into a new ndarray.
            rows = np.asarray(a[key])
            out.append(rows.astype(dtype, copy=False))
        return tuple(out)

    def __repr__(self) -> str:
        fields = ", ".join(f"{a.dtype}{list(a.shape)}" for a in self.arrays)
        return f"NpyDataset({fields})"


# ---------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------


class Sampler:
    """Base class of index samplers.

    A sampler yields the example indices of one epoch. :meth:`indices` returns
    them all at once as an ``int64`` array (what :class:`BatchSampler` uses);
    ``set_epoch`` selects the epoch, which seeded samplers use to derive their
    random stream.
    """

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose indices the next iteration produces."""
        self.epoch = _check_non_negative_int("epoch", epoch)

    def indices(self) -> np.ndarray:
        """All indices of the current epoch as a 1-D ``int64`` array."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        raise NotImplementedError


class SequentialSampler(Sampler):
    """Yields ``0, 1, ..., n - 1`` in order, every epoch."""

    def __init__(self, n: int) -> None:
        self.n = _check_non_negative_int("n", n)
        self.epoch = 0

    def indices(self) -> np.ndarray:
        return np.arange(self.n, dtype=np.int64)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"SequentialSampler(n={self.n})"


class RandomSampler(Sampler):
    """Seeded random order, deterministic per ``(seed, epoch)``.

    Epoch ``e`` draws from ``np.random.default_rng((seed, e))``: the same seed
    reproduces the same order, and different epochs give different orders.

    Args:
        n: number of examples to draw from (indices ``0 .. n - 1``).
        seed: non-negative integer seed.
        replacement: if False (default) an epoch is a permutation of
            ``range(n)``, so every index appears exactly once; if True the
            indices are drawn independently with ``rng.integers``.
        num_samples: indices per epoch; defaults to ``n``. Without
            replacement, values above ``n`` concatenate fresh permutations.
    """

    def __init__(self, n: int, seed: int = 0, replacement: bool = False, num_samples: int | None = None) -> None:
        self.n = _check_non_negative_int("n", n)
        self.seed = _check_non_negative_int("seed", seed)
        self.replacement = bool(replacement)
        self.num_samples = self.n if num_samples is None else _check_non_negative_int("num_samples", num_samples)
        if self.n == 0 and self.num_samples > 0:
            raise ValueError("cannot draw samples from an empty range (n=0)")
        self.epoch = 0

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def indices(self) -> np.ndarray:
        rng = self._rng()
        if self.replacement:
            return rng.integers(0, self.n, size=self.num_samples, dtype=np.int64)
        if self.num_samples == self.n:
            return rng.permutation(self.n).astype(np.int64, copy=False)
        reps = -(-self.num_samples // self.n) if self.n else 0
        parts = [rng.permutation(self.n).astype(np.int64, copy=False) for _ in range(reps)]
        out = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return out[: self.num_samples]

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"RandomSampler(n={self.n}, seed={self.seed}, replacement={self.replacement}, "
            f"num_samples={self.num_samples})"
        )


class DistributedSampler(Sampler):
    """This rank's share of each epoch in a data-parallel job, as ``torch``'s ``DistributedSampler``.

    Every rank builds the same epoch order: a permutation of ``range(n)`` drawn from
    ``np.random.default_rng((seed, epoch))`` with ``shuffle`` (the stream of
    :class:`RandomSampler`, so one replica gives exactly its order), ``0 .. n - 1``
    without. That order is made divisible by ``W = num_replicas`` and rank ``r`` takes
    every ``W``-th index from position ``r`` (``order[r:total_size:W]``), so the ranks
    get disjoint slices of equal length ``num_samples``.

    When ``n`` is not a multiple of ``W`` the order is either padded or cut:

    * ``drop_last=False`` (default) **pads**: the order is extended by repeating its
      first indices (cyclically if more than ``n`` are needed, e.g. ``n < W``) up to
      ``total_size = W * ceil(n / W)``. Every example is seen, but :attr:`padding`
      examples (at most ``W - 1``) are seen twice in the epoch, by different ranks.
    * ``drop_last=True`` **drops** the tail of the order down to
      ``total_size = W * floor(n / W)``: no example repeats, but :attr:`dropped`
      examples (at most ``W - 1``) are skipped this epoch; with ``shuffle`` they are
      different ones each epoch. ``n < W`` gives every rank 0 samples.

    Call :meth:`set_epoch` before each epoch to reshuffle; a :class:`DataLoader`
    built with ``sampler=`` does it for you (each ``iter()`` uses the sampler's epoch
    and then advances it, and ``loader.set_epoch(e)`` sets it).

    Args:
        dataset: the dataset to split, or anything with ``len()`` (its length ``n``
            is read once, here).
        num_replicas: number of ranks ``W``; defaults to
            ``batchgrad.distributed.get_world().size``.
        rank: this process's rank in ``0 .. W - 1``; defaults to
            ``batchgrad.distributed.get_world().rank``.
        shuffle: draw a seeded random order each epoch (the same on every rank).
        seed: non-negative seed, which must be the same on every rank.
        drop_last: drop the tail instead of padding (see above).

    Raises:
        TypeError: ``dataset`` has no ``len()`` (e.g. an int).
        ValueError: ``num_replicas`` is not a positive integer, ``rank`` is not in
            ``0 .. num_replicas - 1``, or ``seed`` is negative.
    """

    def __init__(
        self,
        dataset: Any,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not hasattr(dataset, "__len__"):
            raise TypeError(
                f"DistributedSampler needs a dataset or another object with len(), got {type(dataset).__name__}"
                + (f" {dataset!r}; pass e.g. range({dataset!r}) for n indices" if _is_int(dataset) else "")
            )
        if num_replicas is None or rank is None:
            from .distributed import get_world  # lazy: distributed imports this module

            world = get_world()
            num_replicas = world.size if num_replicas is None else num_replicas
            rank = world.rank if rank is None else rank
        if not _is_int(num_replicas) or int(num_replicas) <= 0:
            raise ValueError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        if not _is_int(rank) or not 0 <= int(rank) < int(num_replicas):
            raise ValueError(
                f"rank must be an integer in [0, {int(num_replicas) - 1}] (num_replicas={num_replicas}), got {rank!r}"
            )
        self.dataset = dataset
        self.n = len(dataset)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = _check_non_negative_int("seed", seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        w = self.num_replicas
        self.num_samples = self.n // w if self.drop_last else -(-self.n // w)
        self.total_size = self.num_samples * w

    @property
    def padding(self) -> int:
        """Indices repeated per epoch to fill ``total_size`` (0 with ``drop_last``)."""
        return 0 if self.drop_last else self.total_size - self.n

    @property
    def dropped(self) -> int:
        """Indices left out per epoch to cut to ``total_size`` (0 without ``drop_last``)."""
        return self.n - self.total_size if self.drop_last else 0

    def epoch_order(self) -> np.ndarray:
        """The whole epoch's padded or cut order, before it is split across ranks (``total_size`` indices)."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n).astype(np.int64, copy=False)
        else:
            order = np.arange(self.n, dtype=np.int64)
        if self.total_size > self.n:
            reps = -(-self.total_size // self.n)  # n > 0 here: total_size is 0 when n is 0
            order = np.tile(order, reps)
        return order[: self.total_size]

    def indices(self) -> np.ndarray:
        """This rank's ``num_samples`` indices of the current epoch."""
        return np.ascontiguousarray(self.epoch_order()[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"DistributedSampler(n={self.n}, num_replicas={self.num_replicas}, rank={self.rank}, "
            f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last}, num_samples={self.num_samples})"
        )


class BatchSampler:
    """Groups the indices of a sampler into ``int64`` batch arrays.

    Without replacement an epoch is a partition ``B1 .. Bp`` of the sampler's
    indices: consecutive slices of ``batch_size`` with a smaller last batch,
    which is dropped when ``drop_last`` is True.

    Args:
        sampler: a :class:`Sampler`, or any iterable of integer indices.
        batch_size: positive number of indices per batch.
        drop_last: drop the last batch if it is smaller than ``batch_size``.
    """

    def __init__(self, sampler: Sampler | Any, batch_size: int, drop_last: bool = False) -> None:
        if not _is_int(batch_size) or int(batch_size) <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)

    @property
    def epoch(self) -> int:
        """The epoch of the underlying sampler (0 if it has none)."""
        return int(getattr(self.sampler, "epoch", 0))

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the underlying sampler."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[np.ndarray]:
        # Indices are computed eagerly here, so the epoch is fixed at iter() time.
        if hasattr(self.sampler, "indices"):
            idx = np.asarray(self.sampler.indices(), dtype=np.int64)
        else:
            idx = np.fromiter(iter(self.sampler), dtype=np.int64)
        return self._batches(idx)

    def _batches(self, idx: np.ndarray) -> Iterator[np.ndarray]:
        n = len(idx)
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield idx[start : start + self.batch_size]

    def __len__(self) -> int:
        n = len(self.sampler)
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def __repr__(self) -> str:
        return f"BatchSampler({self.sampler!r}, batch_size={self.batch_size}, drop_last={self.drop_last})"


# ---------------------------------------------------------------------------
# Collation and loading
# ---------------------------------------------------------------------------


def _collate_one(arr: Any) -> Any:
    if isinstance(arr, np.ndarray) or isinstance(arr, np.generic):
        arr = np.asarray(arr)
        if np.issubdtype(arr.dtype, np.floating):
            import batchgrad  # lazy: keeps this module importable without the native core

            return batchgrad.tensor(np.ascontiguousarray(arr, dtype=np.float32))
        if np.issubdtype(arr.dtype, np.integer):
            return np.asarray(arr, dtype=np.int64)
    return arr


def default_collate(arrays: Any) -> Any:
    """Turn the arrays of a fetched batch into what the training loop consumes.

    Float arrays become ``batchgrad.tensor`` (``float32``, contiguous); integer
    arrays stay numpy ``int64`` arrays (class labels); anything else is passed
    through. A tuple/list of arrays gives a tuple; a single array gives a single
    value.
    """
    if isinstance(arrays, (tuple, list)):
        return tuple(_collate_one(a) for a in arrays)
    return _collate_one(arrays)


_ITEM = 0
_DONE = 1
_ERROR = 2


def _put(q: queue.Queue, item: tuple[int, Any], stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` gets set first; returns whether it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _prefetch_worker(dataset: Dataset, batches: Iterator[np.ndarray], q: queue.Queue, stop: threading.Event) -> None:
    """Fetch batches into ``q`` until exhausted, stopped, or an error occurs."""
    try:
        for idx in batches:
            if stop.is_set():
                return
            if not _put(q, (_ITEM, dataset[idx]), stop):
                return
    except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
        _put(q, (_ERROR, exc), stop)
        return
    _put(q, (_DONE, None), stop)


class DataLoader:
    """Iterates a dataset in minibatches, prefetching them in a background thread.

    Each ``iter(loader)`` is one epoch. The epoch counter starts at 0 and is
    incremented by every ``iter()``, so with ``shuffle=True`` consecutive epochs
    are reshuffled deterministically from ``seed`` (epoch ``e`` uses the stream
    seeded by ``(seed, e)``); :meth:`set_epoch` selects the next epoch
    explicitly.

    ``sampler=`` replaces the built-in order, e.g. a :class:`DistributedSampler`
    giving each rank its share of the examples (then ``batch_size`` is per rank).
    A sampler with ``set_epoch`` and an integer ``epoch`` (every :class:`Sampler`)
    holds the epoch counter: each ``iter()`` uses the sampler's current epoch and
    then advances it by one, so it reshuffles every epoch on its own, and both
    ``loader.set_epoch(e)`` and torch's ``sampler.set_epoch(e)`` before an epoch
    select epoch ``e``.

    Batches are fetched (``dataset[index_array]``) in a daemon
    ``threading.Thread`` feeding a bounded ``queue.Queue(prefetch)``; no
    processes are forked. Exceptions raised while fetching are re-raised in the
    consumer, and the thread stops when the consumer stops iterating (e.g.
    ``break``), when the iterator is closed or garbage-collected. ``collate`` is
    applied in the consumer's thread, because tensors of the native core may be
    bound to the thread that created them.

    Args:
        dataset: a :class:`Dataset` supporting index-array fetches.
        batch_size: positive number of examples per batch.
        shuffle: draw a seeded random order each epoch instead of ``0..n-1``.
        seed: non-negative seed of the shuffle.
        drop_last: drop a last batch smaller than ``batch_size``.
        replacement: with ``shuffle``, draw indices with replacement
            (``len(dataset)`` draws per epoch).
        prefetch: number of batches buffered ahead; ``0`` loads synchronously.
        collate: function applied to each fetched tuple of arrays; defaults to
            :func:`default_collate`.
        sampler: the indices of each epoch instead of ``shuffle``/``seed``: a
            :class:`Sampler`, or any object with ``len()`` that has an
            ``indices()`` method returning an integer array or iterates over
            integer indices. ``seed`` is then not used.

    Raises:
        ValueError: on a non-positive ``batch_size``, a negative ``prefetch`` or
            ``seed``, ``replacement=True`` without ``shuffle=True``, or a
            ``sampler`` together with ``shuffle=True`` or ``replacement=True``.
        TypeError: a ``sampler`` without ``len()``, or neither ``indices()``
            nor iteration.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        replacement: bool = False,
        prefetch: int = 2,
        collate: Callable[[Any], Any] | None = None,
        sampler: Sampler | Any | None = None,
    ) -> None:
        if not _is_int(batch_size) or int(batch_size) <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.prefetch = _check_non_negative_int("prefetch", prefetch)
        if sampler is not None:
            if shuffle:
                raise ValueError("sampler option is mutually exclusive with shuffle (shuffle the sampler instead)")
            if replacement:
                raise ValueError(
                    "sampler option is mutually exclusive with replacement (use a sampler that draws with replacement)"
                )
            if not hasattr(sampler, "__len__"):
                raise TypeError(f"sampler must have len(), got {type(sampler).__name__}")
            if not (callable(getattr(sampler, "indices", None)) or hasattr(sampler, "__iter__")):
                raise TypeError(f"sampler must have an indices() method or be iterable, got {type(sampler).__name__}")
        if replacement and not shuffle:
            raise ValueError("replacement=True requires shuffle=True")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = _check_non_negative_int("seed", seed)
        self.drop_last = bool(drop_last)
        self.replacement = bool(replacement)
        self.collate: Callable[[Any], Any] = default_collate if collate is None else collate
        self.custom_sampler = sampler is not None
        if sampler is None:
            n = len(dataset)
            if self.shuffle:
                sampler = RandomSampler(n, seed=self.seed, replacement=self.replacement)
            else:
                sampler = SequentialSampler(n)
        self.sampler = sampler
        self.batch_sampler = BatchSampler(sampler, self.batch_size, self.drop_last)
        # A sampler with set_epoch and a readable integer epoch holds the counter, so that
        # sampler.set_epoch(e) called directly (torch's idiom) is honoured; otherwise the loader counts.
        self._sampler_holds_epoch = hasattr(sampler, "set_epoch") and _is_int(getattr(sampler, "epoch", None))
        self._epoch = int(sampler.epoch) if self._sampler_holds_epoch else 0

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` produces."""
        return int(self.sampler.epoch) if self._sampler_holds_epoch else self._epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` (also sets the sampler's epoch)."""
        self._epoch = _check_non_negative_int("epoch", epoch)
        self.batch_sampler.set_epoch(self._epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Any]:
        # The epoch's index batches are fixed here, eagerly, so concurrent or
        # later iterators cannot change which epoch this one produces.
        epoch = self.epoch
        self.batch_sampler.set_epoch(epoch)
        batches = iter(self.batch_sampler)
        self.set_epoch(epoch + 1)
        if self.prefetch == 0:
            return self._iter_sync(batches)
        return self._iter_prefetch(batches)

    def _iter_sync(self, batches: Iterator[np.ndarray]) -> Iterator[Any]:
        for idx in batches:
            yield self.collate(self.dataset[idx])

    def _iter_prefetch(self, batches: Iterator[np.ndarray]) -> Iterator[Any]:
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(
            target=_prefetch_worker,
            args=(self.dataset, batches, q, stop),
            name="batchgrad-prefetch",
            daemon=True,
        )
        worker.start()
        try:
            while True:
                try:
                    kind, payload = q.get(timeout=0.1)
                except queue.Empty:
                    if not worker.is_alive() and q.empty():
                        raise RuntimeError("DataLoader prefetch thread exited unexpectedly") from None
                    continue
                if kind == _ITEM:
                    yield self.collate(payload)
                elif kind == _DONE:
                    return
                else:
                    raise payload
        finally:
            stop.set()
            # Unblock a worker waiting on a full queue, then wait briefly for it;
            # it checks ``stop`` between batches, and it is a daemon regardless.
            while True:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
            worker.join(timeout=1.0)

    def __repr__(self) -> str:
        return (
            f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, drop_last={self.drop_last}, replacement={self.replacement}, "
            f"prefetch={self.prefetch}" + (f", sampler={self.sampler!r})" if self.custom_sampler else ")")
        )
