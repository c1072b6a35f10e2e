"""Tests of batchgrad.data (datasets, samplers, DataLoader) and batchgrad.datasets.

Only the tests that build real tensors need the native module; they are skipped
when ``batchgrad._core`` cannot be imported.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from batchgrad.data import (
    ArrayDataset,
    BatchSampler,
    DataLoader,
    Dataset,
    NpyDataset,
    RandomSampler,
    SequentialSampler,
    default_collate,
)
from batchgrad.datasets import load_digits, train_test_split_digits


def identity(batch):
    """Collate that returns the fetched numpy arrays unchanged."""
    return batch


def index_loader(n: int, **kwargs) -> DataLoader:
    """A loader over ``arange(n)`` whose batches are the int64 index arrays."""
    kwargs.setdefault("collate", identity)
    return DataLoader(ArrayDataset(np.arange(n)), **kwargs)


def epoch_batches(loader: DataLoader) -> list[np.ndarray]:
    return [batch[0].copy() for batch in loader]


def live_prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "batchgrad-prefetch" and t.is_alive()]


def wait_for_no_prefetch_threads(timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not live_prefetch_threads():
            return True
        time.sleep(0.01)
    return not live_prefetch_threads()


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------


def test_array_dataset_dtypes_and_indexing():
    X = np.arange(20, dtype=np.float64).reshape(10, 2)
    y = np.arange(10, dtype=np.int32)
    mask = np.arange(10) % 2 == 0
    ds = ArrayDataset(X, y, mask)
    assert len(ds) == 10
    assert ds.arrays[0].dtype == np.float32
    assert ds.arrays[1].dtype == np.int64
    assert ds.arrays[2].dtype == np.bool_

    xb, yb, mb = ds[np.array([3, 1, 3])]
    np.testing.assert_array_equal(xb, X[[3, 1, 3]].astype(np.float32))
    np.testing.assert_array_equal(yb, [3, 1, 3])
    assert xb.dtype == np.float32 and yb.dtype == np.int64 and mb.dtype == np.bool_

    x0, y0, _ = ds[4]
    np.testing.assert_array_equal(x0, [8.0, 9.0])
    assert int(y0) == 4

    empty = ds[np.array([], dtype=np.int64)]
    assert empty[0].shape == (0, 2) and empty[1].shape == (0,)


def test_array_dataset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"\(10, 3\).*\(9,\)"):
        ArrayDataset(np.zeros((10, 3)), np.zeros(9))
    with pytest.raises(ValueError):
        ArrayDataset()
    with pytest.raises(ValueError):
        ArrayDataset(np.float32(1.0))


def test_dataset_rejects_bad_index_arrays():
    ds = ArrayDataset(np.zeros((4, 2)))
    with pytest.raises(TypeError):
        ds[np.array([0.0, 1.0])]
    with pytest.raises(TypeError):
        ds[np.zeros((2, 2), dtype=np.int64)]


def test_npy_dataset_roundtrip_and_validation(tmp_path: Path):
    X = np.random.default_rng(0).normal(size=(50, 3))  # float64 on disk
    y = np.arange(50, dtype=np.int16)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "short.npy", y[:49])

    ds = NpyDataset(tmp_path / "X.npy", str(tmp_path / "y.npy"))
    assert len(ds) == 50
    idx = np.array([49, 0, 7])
    xb, yb = ds[idx]
    assert type(xb) is np.ndarray and xb.dtype == np.float32 and yb.dtype == np.int64
    np.testing.assert_array_equal(xb, X[idx].astype(np.float32))
    np.testing.assert_array_equal(yb, idx)

    with pytest.raises(ValueError, match=r"\(50, 3\).*\(49,\)"):
        NpyDataset(tmp_path / "X.npy", tmp_path / "short.npy")


def _write_npy_in_chunks(path: Path, rows: int, cols: int, chunk: int) -> int:
    """Write a float32 ``(rows, cols)`` .npy without holding it in memory.

    Element ``[r, c]`` is ``(7 * r + c) % 251``; returns the exact sum.
    """
    total = 0
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, cols)})
        for start in range(0, rows, chunk):
            r = np.arange(start, min(start + chunk, rows), dtype=np.int64)[:, None]
            block = (7 * r + np.arange(cols, dtype=np.int64)[None, :]) % 251
            total += int(block.sum())
            f.write(block.astype(np.float32).tobytes())
    return total


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise RuntimeError("RssAnon not in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_npy_dataset_streams_larger_file_with_small_memory(tmp_path: Path):
    """Iterating a 200 MiB .npy in batches must not load it into memory.

    The memory-mapped pages that were read show up in VmRSS/VmHWM as *file-backed*
    pages (page cache the kernel can drop at any time, which is what lets a file
    larger than RAM stream), so the bound is checked on what is not reclaimable:
    the process's anonymous memory (RssAnon, sampled every batch) and the peak
    of numpy/Python allocations (tracemalloc, exact).
    """
    rows, cols = 204_800, 256  # float32: 200 MiB
    path = tmp_path / "big.npy"
    expected_sum = _write_npy_in_chunks(path, rows, cols, chunk=4096)
    file_bytes = path.stat().st_size
    assert file_bytes > 200 * 2**20

    base_anon = _rss_anon_kib() * 1024
    peak_anon = base_anon
    tracemalloc.start()
    try:
        ds = NpyDataset(path)
        loader = DataLoader(ds, batch_size=1024, shuffle=False, prefetch=2, collate=identity)
        total = 0.0
        seen = 0
        for (xb,) in loader:
            assert xb.dtype == np.float32 and xb.shape[1] == cols
            rows_idx = np.arange(seen, seen + len(xb))
            np.testing.assert_array_equal(xb[:, 0], (7 * rows_idx) % 251)
            total += float(xb.sum(dtype=np.float64))
            seen += len(xb)
            peak_anon = max(peak_anon, _rss_anon_kib() * 1024)
        _, peak_traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert seen == rows
    assert total == expected_sum
    assert peak_traced < file_bytes / 4, f"numpy allocations peaked at {peak_traced / 2**20:.1f} MiB"
    grew = peak_anon - base_anon
    assert grew < file_bytes / 4, f"anonymous memory grew by {grew / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 64, 100])
@pytest.mark.parametrize("batch_size", [1, 3, 16, 64, 128])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batch_sampler_partitions_every_epoch(n, batch_size, shuffle):
    sampler = RandomSampler(n, seed=5) if shuffle else SequentialSampler(n)
    bs = BatchSampler(sampler, batch_size, drop_last=False)
    for epoch in range(3):
        bs.set_epoch(epoch)
        batches = list(bs)
        assert len(batches) == len(bs) == -(-n // batch_size)
        assert all(b.dtype == np.int64 and b.ndim == 1 for b in batches)
        assert all(len(b) == batch_size for b in batches[:-1])
        if batches:
            assert len(batches[-1]) == n - batch_size * (len(batches) - 1)
        flat = np.concatenate(batches) if batches else np.empty(0, np.int64)
        np.testing.assert_array_equal(np.sort(flat), np.arange(n))  # each index exactly once
        if not shuffle:
            np.testing.assert_array_equal(flat, np.arange(n))


@pytest.mark.parametrize("n, batch_size", [(10, 3), (9, 3), (2, 5), (0, 4)])
def test_batch_sampler_drop_last(n, batch_size):
    bs = BatchSampler(RandomSampler(n, seed=1), batch_size, drop_last=True)
    batches = list(bs)
    assert len(batches) == len(bs) == n // batch_size
    assert all(len(b) == batch_size for b in batches)
    flat = np.concatenate(batches) if batches else np.empty(0, np.int64)
    assert len(np.unique(flat)) == len(flat) == batch_size * (n // batch_size)


def test_random_sampler_is_seeded_and_epochs_differ():
    a, b, c = RandomSampler(100, seed=3), RandomSampler(100, seed=3), RandomSampler(100, seed=4)
    np.testing.assert_array_equal(a.indices(), b.indices())
    assert not np.array_equal(a.indices(), c.indices())
    epoch0 = a.indices()
    a.set_epoch(1)
    assert not np.array_equal(epoch0, a.indices())
    np.testing.assert_array_equal(np.sort(a.indices()), np.arange(100))
    a.set_epoch(0)
    np.testing.assert_array_equal(epoch0, a.indices())
    assert list(a) == epoch0.tolist()


def test_random_sampler_with_replacement():
    s = RandomSampler(10, seed=7, replacement=True, num_samples=1000)
    idx = s.indices()
    assert len(s) == 1000 and idx.shape == (1000,) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < 10
    assert len(np.unique(idx)) < len(idx)  # draws repeat
    np.testing.assert_array_equal(idx, RandomSampler(10, seed=7, replacement=True, num_samples=1000).indices())
    assert not np.array_equal(idx, RandomSampler(10, seed=8, replacement=True, num_samples=1000).indices())
    s.set_epoch(1)
    assert not np.array_equal(idx, s.indices())
    default = RandomSampler(10, seed=7, replacement=True)
    assert len(default.indices()) == 10


def test_random_sampler_num_samples_without_replacement():
    short = RandomSampler(10, seed=0, num_samples=4).indices()
    assert len(short) == 4 and len(np.unique(short)) == 4
    long = RandomSampler(10, seed=0, num_samples=25).indices()
    assert len(long) == 25
    np.testing.assert_array_equal(np.sort(long[:10]), np.arange(10))
    np.testing.assert_array_equal(np.sort(long[10:20]), np.arange(10))


def test_batch_sampler_accepts_plain_iterables():
    batches = list(BatchSampler([4, 2, 0, 1, 3], 2))
    assert [b.tolist() for b in batches] == [[4, 2], [0, 1], [3]]


# ---------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4", None])
def test_bad_batch_size_raises(bad):
    ds = ArrayDataset(np.zeros(4))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got"):
        DataLoader(ds, batch_size=bad)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got"):
        BatchSampler(SequentialSampler(4), bad)


def test_loader_rejects_bad_options():
    ds = ArrayDataset(np.zeros(4))
    with pytest.raises(ValueError):
        DataLoader(ds, prefetch=-1)
    with pytest.raises(ValueError):
        DataLoader(ds, replacement=True)  # replacement needs shuffle
    with pytest.raises(ValueError):
        DataLoader(ds, shuffle=True, seed=-1)


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize(
    "n, batch_size, drop_last, expected_sizes",
    [(10, 4, False, [4, 4, 2]), (10, 4, True, [4, 4]), (8, 4, False, [4, 4]), (3, 8, False, [3]), (3, 8, True, [])],
)
def test_loader_batch_sizes_and_len(prefetch, n, batch_size, drop_last, expected_sizes):
    for shuffle in (False, True):
        loader = index_loader(n, batch_size=batch_size, drop_last=drop_last, shuffle=shuffle, prefetch=prefetch)
        assert len(loader) == len(expected_sizes)
        batches = epoch_batches(loader)
        assert [len(b) for b in batches] == expected_sizes
        if not drop_last:
            np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(n))


def test_loader_every_index_once_per_epoch_and_reshuffles():
    loader = index_loader(103, batch_size=10, shuffle=True, seed=11)
    epochs = [np.concatenate(epoch_batches(loader)) for _ in range(4)]
    assert loader.epoch == 4
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(103))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(epochs[i], epochs[j])
    assert not np.array_equal(epochs[0], np.arange(103))


def test_loader_same_seed_same_batches():
    a = index_loader(57, batch_size=8, shuffle=True, seed=2)
    b = index_loader(57, batch_size=8, shuffle=True, seed=2)
    c = index_loader(57, batch_size=8, shuffle=True, seed=3)
    for _ in range(3):
        ea, eb, ec = epoch_batches(a), epoch_batches(b), epoch_batches(c)
        assert len(ea) == len(eb)
        for x, y in zip(ea, eb, strict=True):
            np.testing.assert_array_equal(x, y)
        assert not np.array_equal(np.concatenate(ea), np.concatenate(ec))
    a.set_epoch(1)
    b.set_epoch(1)
    for x, y in zip(epoch_batches(a), epoch_batches(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_loader_with_replacement():
    loader = index_loader(20, batch_size=6, shuffle=True, replacement=True, seed=9)
    assert len(loader) == 4
    flat = np.concatenate(epoch_batches(loader))
    assert len(flat) == 20 and flat.min() >= 0 and flat.max() < 20
    again = np.concatenate(epoch_batches(index_loader(20, batch_size=6, shuffle=True, replacement=True, seed=9)))
    np.testing.assert_array_equal(flat, again)


def test_epoch_is_fixed_when_iter_is_called():
    loader = index_loader(30, batch_size=30, shuffle=True, seed=0)
    first = iter(loader)
    second = iter(loader)
    b2 = next(second)[0].copy()
    b1 = next(first)[0].copy()
    ref = index_loader(30, batch_size=30, shuffle=True, seed=0)
    np.testing.assert_array_equal(b1, next(iter(ref))[0])
    np.testing.assert_array_equal(b2, next(iter(ref))[0])
    first.close()
    second.close()


@pytest.mark.parametrize("prefetch", [1, 2, 5])
def test_prefetch_matches_synchronous(prefetch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(251, 5))
    y = rng.integers(0, 10, size=251)
    ds = ArrayDataset(X, y)
    sync = DataLoader(ds, batch_size=16, shuffle=True, seed=4, prefetch=0, collate=identity)
    pre = DataLoader(ds, batch_size=16, shuffle=True, seed=4, prefetch=prefetch, collate=identity)
    for _ in range(2):
        a, b = list(sync), list(pre)
        assert len(a) == len(b) == len(sync)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert wait_for_no_prefetch_threads()


class RecordingDataset(Dataset):
    """Dataset over ``arange(n)`` recording which threads fetched batches."""

    def __init__(self, n: int, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.data = np.arange(n)
        self.delay = delay
        self.fail_at = fail_at
        self.calls = 0
        self.threads: set[int] = set()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx):
        self.threads.add(threading.get_ident())
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyError(f"boom at batch {self.calls}")
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return (self.data[idx],)


def test_prefetch_fetches_in_background_thread():
    ds = RecordingDataset(40)
    list(DataLoader(ds, batch_size=4, prefetch=2, collate=identity))
    assert threading.get_ident() not in ds.threads
    ds_sync = RecordingDataset(40)
    list(DataLoader(ds_sync, batch_size=4, prefetch=0, collate=identity))
    assert ds_sync.threads == {threading.get_ident()}


def test_early_break_stops_the_thread():
    assert wait_for_no_prefetch_threads()
    ds = RecordingDataset(10_000)
    loader = DataLoader(ds, batch_size=1, prefetch=2, collate=identity)
    start = time.monotonic()
    for i, _ in enumerate(loader):
        if i == 2:
            break
    assert wait_for_no_prefetch_threads(timeout=5.0)
    assert time.monotonic() - start < 5.0
    # The worker stopped instead of fetching the whole epoch.
    assert ds.calls < 100


def test_abandoned_iterator_stops_the_thread():
    ds = RecordingDataset(1000, delay=0.001)
    it = iter(DataLoader(ds, batch_size=1, prefetch=3, collate=identity))
    next(it)
    assert live_prefetch_threads()
    del it
    assert wait_for_no_prefetch_threads(timeout=5.0)
    assert ds.calls < 1000


@pytest.mark.parametrize("prefetch", [0, 2])
def test_worker_exception_propagates(prefetch):
    ds = RecordingDataset(50, fail_at=3)
    loader = DataLoader(ds, batch_size=5, prefetch=prefetch, collate=identity)
    got = []
    with pytest.raises(KeyError, match="boom at batch 3"):
        for (xb,) in loader:
            got.append(xb)
    assert len(got) == 3
    assert wait_for_no_prefetch_threads()


def test_collate_exception_propagates():
    def bad_collate(batch):
        raise RuntimeError("collate failed")

    with pytest.raises(RuntimeError, match="collate failed"):
        list(DataLoader(ArrayDataset(np.zeros(10)), batch_size=2, collate=bad_collate))
    assert wait_for_no_prefetch_threads()


def test_default_collate_keeps_integer_labels_as_numpy():
    (labels,) = default_collate((np.array([3, 1], dtype=np.int32),))
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64
    mask = default_collate(np.array([True, False]))
    assert mask.dtype == np.bool_
    loader = DataLoader(ArrayDataset(np.arange(6)), batch_size=4)
    (first,) = next(iter(loader))
    assert isinstance(first, np.ndarray) and first.dtype == np.int64


def test_default_collate_makes_tensors_from_floats():
    pytest.importorskip("batchgrad._core")
    X = np.arange(12, dtype=np.float64).reshape(6, 2)
    y = np.arange(6)
    xb, yb = next(iter(DataLoader(ArrayDataset(X, y), batch_size=4)))
    assert not isinstance(xb, np.ndarray)
    np.testing.assert_array_equal(np.asarray(xb.numpy()), X[:4].astype(np.float32))
    assert isinstance(yb, np.ndarray) and yb.dtype == np.int64


# ---------------------------------------------------------------------------
# Bundled digits
# ---------------------------------------------------------------------------


def test_load_digits():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    # Class counts of the UCI optdigits test set.
    np.testing.assert_array_equal(np.bincount(y), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    np.testing.assert_array_equal(np.unique(X * 16), np.arange(17))
    X[0, 0] = 123.0  # callers get their own copy
    assert load_digits()[0][0, 0] == 0.0


def _sorted_rows(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    rows = np.column_stack([X * 16, y]).astype(np.int64)
    return rows[np.lexsort(rows.T[::-1])]


def test_digits_split_is_fixed_and_a_partition():
    X_train, X_test, y_train, y_test = train_test_split_digits(test_fraction=0.2, seed=0)
    assert X_test.shape == (360, 64) and X_train.shape == (1437, 64)
    assert y_test.shape == (360,) and y_train.shape == (1437,)
    again = train_test_split_digits(test_fraction=0.2, seed=0)
    for a, b in zip((X_train, X_test, y_train, y_test), again, strict=True):
        np.testing.assert_array_equal(a, b)

    # Train and test are disjoint and cover the data set: together they are the
    # data set's rows as a multiset, and they follow the documented permutation.
    X, y = load_digits()
    both = _sorted_rows(np.concatenate([X_train, X_test]), np.concatenate([y_train, y_test]))
    np.testing.assert_array_equal(both, _sorted_rows(X, y))
    perm = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(y_test, y[perm[:360]])
    np.testing.assert_array_equal(X_train, X[perm[360:]])

    other = train_test_split_digits(test_fraction=0.2, seed=1)
    assert not np.array_equal(other[3], y_test)
    with pytest.raises(ValueError):
        train_test_split_digits(test_fraction=1.0)
