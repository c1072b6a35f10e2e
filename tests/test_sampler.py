"""Tests of batchgrad.data.DistributedSampler and of DataLoader(sampler=...).

The exact comparison with ``torch.utils.data.distributed.DistributedSampler`` is
skipped when torch is not installed. Only the tests of the default world import
``batchgrad.distributed`` (and so the native module).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgrad.data import (
    ArrayDataset,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)


def identity(batch):
    """Collate that returns the fetched numpy arrays unchanged."""
    return batch


def rank_lists(n: int, w: int, epoch: int = 0, **kwargs) -> list[list[int]]:
    """Each rank's indices of ``epoch``, from ``w`` independently built samplers."""
    out = []
    for r in range(w):
        s = DistributedSampler(range(n), num_replicas=w, rank=r, **kwargs)
        s.set_epoch(epoch)
        idx = s.indices()
        assert idx.dtype == np.int64 and idx.ndim == 1
        assert list(s) == idx.tolist()
        out.append(idx.tolist())
    return out


def loader_indices(loader: DataLoader) -> list[np.ndarray]:
    """One epoch of a loader over ``ArrayDataset(arange(n))``: the index batches."""
    return [batch[0].copy() for batch in loader]


# ---------------------------------------------------------------------------
# Against torch
# ---------------------------------------------------------------------------

CASES = [
    (0, 1), (0, 3), (1, 1), (1, 4), (2, 7), (3, 7), (5, 2), (7, 3), (10, 4), (12, 4), (13, 5), (16, 3), (100, 8),
]


def _torch_rank_lists(torch, n: int, w: int, epoch: int, **kwargs) -> list[list[int]]:
    out = []
    for r in range(w):
        t = torch.utils.data.distributed.DistributedSampler(range(n), num_replicas=w, rank=r, **kwargs)
        t.set_epoch(epoch)
        assert len(t) == len(list(t))
        out.append(list(t))
    return out


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n, w", CASES)
def test_matches_torch_without_shuffle(n, w, drop_last):
    torch = pytest.importorskip("torch")
    ours = rank_lists(n, w, shuffle=False, drop_last=drop_last)
    theirs = _torch_rank_lists(torch, n, w, 0, shuffle=False, drop_last=drop_last)
    assert ours == theirs
    t = torch.utils.data.distributed.DistributedSampler(range(n), num_replicas=w, rank=0, drop_last=drop_last)
    s = DistributedSampler(range(n), num_replicas=w, rank=0, drop_last=drop_last)
    assert (s.num_samples, s.total_size, len(s)) == (t.num_samples, t.total_size, len(t))


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 70), w=st.integers(1, 12), drop_last=st.booleans(), epoch=st.integers(0, 3))
def test_matches_torch_without_shuffle_property(n, w, drop_last, epoch):
    torch = pytest.importorskip("torch")
    ours = rank_lists(n, w, epoch, shuffle=False, drop_last=drop_last)
    assert ours == _torch_rank_lists(torch, n, w, epoch, shuffle=False, drop_last=drop_last)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n, w", CASES)
def test_shuffled_has_torch_structure(n, w, drop_last):
    """torch shuffles with its own RNG: compare lengths and how often each index occurs."""
    torch = pytest.importorskip("torch")
    for epoch in (0, 1):
        ours = rank_lists(n, w, epoch, shuffle=True, seed=3, drop_last=drop_last)
        theirs = _torch_rank_lists(torch, n, w, epoch, shuffle=True, seed=3, drop_last=drop_last)
        assert [len(x) for x in ours] == [len(x) for x in theirs]
        count_hist = lambda lists: sorted(Counter(Counter(i for x in lists for i in x).values()).items())  # noqa: E731
        assert count_hist(ours) == count_hist(theirs)
        assert len({i for x in ours for i in x}) == len({i for x in theirs for i in x})


# ---------------------------------------------------------------------------
# Partition of an epoch
# ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 80),
    w=st.integers(1, 12),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 5),
)
def test_ranks_partition_the_epoch(n, w, drop_last, shuffle, seed, epoch):
    lists = rank_lists(n, w, epoch, shuffle=shuffle, seed=seed, drop_last=drop_last)
    s = DistributedSampler(range(n), num_replicas=w, rank=0, shuffle=shuffle, seed=seed, drop_last=drop_last)
    s.set_epoch(epoch)
    # Equal lengths, as torch's formulas give them.
    assert all(len(x) == s.num_samples == len(s) for x in lists)
    assert s.num_samples == (n // w if drop_last else -(-n // w))
    assert s.total_size == s.num_samples * w
    flat = [i for x in lists for i in x]
    assert len(flat) == s.total_size
    counts = Counter(flat)
    assert all(0 <= i < n for i in counts)
    if drop_last:
        assert s.padding == 0 and s.dropped == n - s.total_size and 0 <= s.dropped < w
        assert max(counts.values(), default=1) == 1  # each index at most once
        assert len(counts) == n - s.dropped
    else:
        assert s.dropped == 0 and s.padding == s.total_size - n and 0 <= s.padding < w
        assert set(counts) == set(range(n))  # every index is seen
        assert sum(c - 1 for c in counts.values()) == s.padding  # plus exactly `padding` repeats
        if s.padding <= n:
            assert max(counts.values(), default=1) <= 2
    if s.padding == 0:
        assert len(set(flat)) == len(flat)  # ranks are disjoint
    # Rank r holds positions r, r + W, ... of one epoch order shared by all ranks.
    order = s.epoch_order()
    for r, x in enumerate(lists):
        assert x == order[r::w].tolist()
    if not drop_last and n:
        # Padding repeats the start of the order (cyclically when n < padding).
        np.testing.assert_array_equal(order[n:], np.resize(order[:n], s.padding))


def test_padding_repeats_first_indices_example():
    s = DistributedSampler(range(10), num_replicas=4, rank=0, shuffle=False)
    assert (s.num_samples, s.total_size, s.padding, s.dropped) == (3, 12, 2, 0)
    assert rank_lists(10, 4, shuffle=False) == [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]
    d = DistributedSampler(range(10), num_replicas=4, rank=0, shuffle=False, drop_last=True)
    assert (d.num_samples, d.total_size, d.padding, d.dropped) == (2, 8, 0, 2)
    assert rank_lists(10, 4, shuffle=False, drop_last=True) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # Fewer examples than ranks: the order is repeated as often as needed, or everything is dropped.
    assert rank_lists(2, 5, shuffle=False) == [[0], [1], [0], [1], [0]]
    assert rank_lists(2, 5, shuffle=False, drop_last=True) == [[], [], [], [], []]


@pytest.mark.parametrize("w", [1, 3])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_empty_dataset(w, drop_last, shuffle):
    s = DistributedSampler([], num_replicas=w, rank=w - 1, shuffle=shuffle, drop_last=drop_last)
    assert (len(s), s.num_samples, s.total_size, s.padding, s.dropped) == (0, 0, 0, 0, 0)
    idx = s.indices()
    assert idx.dtype == np.int64 and idx.shape == (0,)
    loader = DataLoader(ArrayDataset(np.zeros(0)), batch_size=4, sampler=s, collate=identity)
    assert len(loader) == 0 and list(loader) == []


# ---------------------------------------------------------------------------
# Epochs and seeds
# ---------------------------------------------------------------------------


def test_epochs_differ_and_seed_epoch_reproduce():
    def order(seed, epoch, rank=1):
        s = DistributedSampler(range(101), num_replicas=3, rank=rank, seed=seed)
        s.set_epoch(epoch)
        assert s.epoch == epoch
        return s.indices()

    epochs = [order(7, e) for e in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(epochs[i], epochs[j])
    for e in range(4):
        np.testing.assert_array_equal(order(7, e), epochs[e])
    assert not np.array_equal(order(8, 0), epochs[0])
    # The same sampler object gives the same order again for the same epoch.
    s = DistributedSampler(range(101), num_replicas=3, rank=1, seed=7)
    s.set_epoch(2)
    first = s.indices()
    s.set_epoch(0)
    s.set_epoch(2)
    np.testing.assert_array_equal(s.indices(), first)


@pytest.mark.parametrize("n", [0, 1, 17, 64])
def test_one_replica_equals_random_and_sequential_samplers(n):
    for seed in (0, 5):
        d = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=seed)
        r = RandomSampler(n, seed=seed)
        for epoch in range(3):
            d.set_epoch(epoch)
            r.set_epoch(epoch)
            np.testing.assert_array_equal(d.indices(), r.indices())
    plain = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=False)
    np.testing.assert_array_equal(plain.indices(), SequentialSampler(n).indices())


def test_set_epoch_validates():
    s = DistributedSampler(range(4), num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="epoch"):
        s.set_epoch(-1)


# ---------------------------------------------------------------------------
# DataLoader(sampler=...)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize(
    "n, w, rank, batch_size, drop_last, expected_sizes",
    [
        (20, 3, 1, 3, False, [3, 3, 1]),  # 7 per rank (one padded index)
        (20, 3, 2, 3, True, [3, 3]),  # the loader drops the last, partial batch
        (24, 4, 3, 6, False, [6]),
        (5, 8, 7, 4, False, [1]),
    ],
)
def test_loader_yields_the_ranks_batches(prefetch, n, w, rank, batch_size, drop_last, expected_sizes):
    ds = ArrayDataset(np.arange(n))
    sampler = DistributedSampler(ds, num_replicas=w, rank=rank, seed=4)
    loader = DataLoader(ds, batch_size=batch_size, drop_last=drop_last, sampler=sampler, prefetch=prefetch,
                        collate=identity)
    assert loader.sampler is sampler
    assert len(loader) == len(expected_sizes)
    ref = DistributedSampler(range(n), num_replicas=w, rank=rank, seed=4)
    for epoch in range(3):
        batches = loader_indices(loader)
        assert [len(b) for b in batches] == expected_sizes
        ref.set_epoch(epoch)
        want = ref.indices()[: sum(expected_sizes)]
        np.testing.assert_array_equal(np.concatenate(batches), want)
    assert sampler.epoch == 3 and loader.epoch == 3


def test_loader_reshuffles_the_sampler_each_epoch():
    ds = ArrayDataset(np.arange(60))
    loader = DataLoader(ds, batch_size=7, sampler=DistributedSampler(ds, num_replicas=2, rank=0), collate=identity)
    epochs = [np.concatenate(loader_indices(loader)) for _ in range(3)]
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    # Rank 1 over the same epochs gets exactly the complement.
    other = DataLoader(ds, batch_size=7, sampler=DistributedSampler(ds, num_replicas=2, rank=1), collate=identity)
    for mine in epochs:
        theirs = np.concatenate(loader_indices(other))
        np.testing.assert_array_equal(np.sort(np.concatenate([mine, theirs])), np.arange(60))


def test_loader_set_epoch_reaches_the_sampler():
    ds = ArrayDataset(np.arange(40))
    sampler = DistributedSampler(ds, num_replicas=4, rank=2, seed=1)
    loader = DataLoader(ds, batch_size=100, sampler=sampler, prefetch=0, collate=identity)
    loader.set_epoch(5)
    assert sampler.epoch == 5 and loader.epoch == 5
    ref = DistributedSampler(range(40), num_replicas=4, rank=2, seed=1)
    ref.set_epoch(5)
    np.testing.assert_array_equal(loader_indices(loader)[0], ref.indices())
    # torch's idiom, sampler.set_epoch(e) before each epoch, selects that epoch too (resume, repeat).
    for e in (9, 9, 2):
        sampler.set_epoch(e)
        ref.set_epoch(e)
        np.testing.assert_array_equal(loader_indices(loader)[0], ref.indices())
        assert loader.epoch == sampler.epoch == e + 1


def test_loader_accepts_plain_samplers():
    ds = ArrayDataset(np.arange(10))
    for sampler in ([9, 0, 3, 3, 5], np.array([9, 0, 3, 3, 5]), range(9, 0, -2)):
        loader = DataLoader(ds, batch_size=2, sampler=sampler, collate=identity)
        assert len(loader) == 3
        for _ in range(2):
            np.testing.assert_array_equal(np.concatenate(loader_indices(loader)), list(sampler))
        assert loader.epoch == 2
    assert "sampler=" in repr(DataLoader(ds, sampler=[1, 2]))
    assert "sampler=" not in repr(DataLoader(ds))


def test_loader_sampler_option_errors():
    ds = ArrayDataset(np.arange(10))
    sampler = DistributedSampler(ds, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with shuffle"):
        DataLoader(ds, shuffle=True, sampler=sampler)
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with replacement"):
        DataLoader(ds, replacement=True, sampler=sampler)
    with pytest.raises(TypeError, match="sampler must have len"):
        DataLoader(ds, sampler=iter([1, 2]))
    with pytest.raises(TypeError, match="indices\\(\\) method or be iterable"):
        DataLoader(ds, sampler=type("LenOnly", (), {"__len__": lambda self: 3})())


# ---------------------------------------------------------------------------
# Arguments and defaults
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, True, "2"])
def test_bad_num_replicas(bad):
    with pytest.raises(ValueError, match=f"num_replicas must be a positive integer, got {bad!r}"):
        DistributedSampler(range(4), num_replicas=bad, rank=0)


@pytest.mark.parametrize("bad", [-1, 3, 4, 1.0, True, "0"])
def test_bad_rank(bad):
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 2\] \(num_replicas=3\), got"):
        DistributedSampler(range(4), num_replicas=3, rank=bad)


def test_bad_dataset_and_seed():
    with pytest.raises(TypeError, match=r"needs a dataset or another object with len\(\), got int 5; pass e.g. range"):
        DistributedSampler(5, num_replicas=1, rank=0)
    with pytest.raises(TypeError, match="got NoneType"):
        DistributedSampler(None, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="seed"):
        DistributedSampler(range(4), num_replicas=1, rank=0, seed=-1)


def test_attributes_and_repr():
    ds = ArrayDataset(np.arange(11))
    s = DistributedSampler(ds, num_replicas=np.int64(3), rank=np.int32(2), shuffle=False, seed=9, drop_last=True)
    assert s.dataset is ds
    assert (s.n, s.num_replicas, s.rank, s.shuffle, s.seed, s.drop_last, s.epoch) == (11, 3, 2, False, 9, True, 0)
    assert type(s.num_replicas) is int and type(s.rank) is int
    assert (s.num_samples, s.total_size, s.padding, s.dropped) == (3, 9, 0, 2)
    assert repr(s) == (
        "DistributedSampler(n=11, num_replicas=3, rank=2, shuffle=False, seed=9, drop_last=True, num_samples=3)"
    )


def test_defaults_come_from_the_world():
    distributed = pytest.importorskip("batchgrad.distributed")
    world = distributed.get_world()
    if world.size != 1:
        pytest.skip("run under an MPI launcher")
    assert distributed.DistributedSampler is DistributedSampler
    s = DistributedSampler(range(10))
    assert (s.num_replicas, s.rank, s.shuffle, s.seed, s.drop_last) == (1, 0, True, 0, False)
    assert DistributedSampler(range(10), num_replicas=2).rank == 0  # rank alone from the world
    with pytest.raises(ValueError, match="got 1"):
        DistributedSampler(range(10), rank=1)  # num_replicas=1 from the world
