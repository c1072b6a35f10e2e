"""Data-parallel minibatch SGD on MPI (``pip install 'batchgrad[mpi]'``: mpi4py over Open MPI).

A minibatch of ``B`` examples is split across ``W`` processes (ranks); each computes the gradient
of its ``B / W`` examples and one all-reduce sums them, weighted by the examples each rank had, so
every rank applies the update of one batch of ``B``: the same parameters as one process, up to
float rounding. Launch the same script on every rank::

    mpirun -n 2 python train.py                       # one machine, 2 processes
    mpirun -n 16 --hostfile hosts python train.py     # several machines
    srun -n 64 python train.py                         # Slurm (Open MPI built with PMIx)

and in the script::

    world = bg.distributed.init()                     # rank and size from MPI; 1 process without mpirun
    sampler = bg.distributed.DistributedSampler(ds, shuffle=True, seed=0)
    loader = bg.data.DataLoader(ds, batch_size=64, sampler=sampler)    # 64 per rank
    bg.fit(model, loss_fn, opt, loader, epochs=10, distributed=True)

Everything here works as a 1-process world without ``mpirun`` and without mpi4py installed.
Collectives never wait forever: a watchdog thread holds each to a time-out (``init(timeout=...)``,
``BATCHGRAD_MPI_TIMEOUT``, default 300 s) and, when it expires, prints which collective and rank
gave up and aborts the whole job (``MPI.COMM_WORLD.Abort``), since a pending MPI collective cannot
be cancelled. An exception on one rank inside :func:`batchgrad.fit`
is shared with every rank at the next gradient all-reduce and raised on all of them as a
:class:`DistributedError` naming the rank and its error; a rank that dies is reported by
``mpirun``, which then stops the others.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core

__all__ = [
    "World", "DistributedError", "init", "get_world", "is_initialized", "launched_by_mpi", "allreduce_", "allgather",
    "broadcast_", "broadcast_parameters", "barrier", "abort", "DistributedSampler", "GradientReducer", "spans_nodes",
]

DEFAULT_TIMEOUT = 300.0

# Variables a launcher sets in every process it starts (Open MPI, MPICH/Hydra, PMIx/Slurm srun with
# --mpi=pmix, Intel MPI). Without one of them the process is a 1-process world and mpi4py is not
# imported (importing it initialises MPI, which is slow and noisy outside a launcher).
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")


class DistributedError(RuntimeError):
    """A collective failed or timed out, or another rank raised: the job cannot go on."""


@dataclass(frozen=True)
class World:
    """The processes of a data-parallel job: this process's ``rank`` in ``0 .. size - 1``.

    ``comm`` is the mpi4py communicator (None in a 1-process world without MPI); ``timeout`` the
    seconds a collective may wait before the job is aborted.
    """

    rank: int
    size: int
    comm: Any = None
    timeout: float = DEFAULT_TIMEOUT
    _spans_nodes: bool | None = field(default=None, repr=False, compare=False)

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that prints progress and writes checkpoints."""
        return self.rank == 0

    def __repr__(self) -> str:
        via = "MPI" if self.comm is not None else "no MPI"
        return f"World(rank={self.rank}, size={self.size}, {via}, timeout={self.timeout:g}s)"


_world: World | None = None


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (mpirun, mpiexec, srun with PMIx)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def _timeout_from_env() -> float:
    raw = os.environ.get("BATCHGRAD_MPI_TIMEOUT")
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        t = float(raw)
    except ValueError:
        t = math.nan
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"BATCHGRAD_MPI_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return t


def init(comm: Any = None, timeout: float | None = None) -> World:
    """Join the job: rank and size from MPI, or a 1-process world without a launcher.

    Under ``mpirun``/``srun`` this imports mpi4py and uses ``MPI.COMM_WORLD`` (or ``comm``, any
    mpi4py intracommunicator). Without a launcher it returns ``World(rank=0, size=1)`` and does not
    import mpi4py, unless ``comm`` is given. Calling it again returns the same world (a new
    ``timeout`` replaces the old one).

    Args:
        comm: an mpi4py communicator to use instead of ``COMM_WORLD``.
        timeout: seconds a collective may wait for the other ranks before the job is aborted
            (default ``BATCHGRAD_MPI_TIMEOUT`` or 300).

    Raises:
        DistributedError: launched by MPI but mpi4py is not installed.
        ValueError: a non-positive ``timeout``.
    """
    global _world
    if timeout is None:
        t = _world.timeout if _world is not None else _timeout_from_env()
    else:
        try:
            t = float(timeout)
        except (TypeError, ValueError):
            raise TypeError(f"init: timeout must be a number of seconds, got {type(timeout).__name__}") from None
        if not (t > 0 and math.isfinite(t)):
            raise ValueError(f"init: timeout must be a positive finite number of seconds, got {timeout!r}")
    if _world is not None and comm is None:
        _world = World(_world.rank, _world.size, _world.comm, t)
        return _world
    if comm is None and launched_by_mpi():
        try:
            from mpi4py import MPI
        except ImportError:
            raise DistributedError(
                "this process was started by an MPI launcher but mpi4py is not installed: "
                "pip install 'batchgrad[mpi]' (needs an MPI library, e.g. apt-get install libopenmpi-dev openmpi-bin)"
            ) from None
        comm = MPI.COMM_WORLD
    if comm is None:
        _world = World(0, 1, None, t)
    else:
        _world = World(int(comm.Get_rank()), int(comm.Get_size()), comm, t)
    return _world


def get_world() -> World:
    """The current world, calling :func:`init` first if nothing has."""
    return _world if _world is not None else init()


def is_initialized() -> bool:
    """Whether :func:`init` has run in this process."""
    return _world is not None


def _mpi() -> Any:
    from mpi4py import MPI

    return MPI


def abort(message: str, code: int = 1, world: World | None = None) -> None:
    """Print ``message`` (prefixed with the rank) to stderr and stop every rank of the job."""
    w = world or get_world()
    print(f"batchgrad.distributed: rank {w.rank}/{w.size}: {message}; aborting the job", file=sys.stderr, flush=True)
    if w.comm is not None:
        w.comm.Abort(code)
    raise SystemExit(code)


class _Watchdog:
    """Bounds every collective by the world's time-out. The collectives themselves are MPI's
    blocking ones (mpi4py releases the GIL in them; Open MPI's blocking all-reduce of 1 MB takes
    half the time of its non-blocking one here); a daemon thread, started at the first collective
    of a multi-rank world, checks the one in progress a few times a second and, past its
    deadline, aborts the job with a message naming it (MPI is initialised with
    MPI_THREAD_MULTIPLE, so the thread may call MPI_Abort while the main thread is inside MPI)."""

    def __init__(self) -> None:
        self.current: tuple[str, float, World] | None = None
        self.thread: Any = None

    def _loop(self) -> None:
        while True:
            cur = self.current
            if cur is not None and time.monotonic() > cur[1]:
                what, _, w = cur
                abort(f"{what} did not complete within {w.timeout:g} s (another rank is hung, dead or out of step; "
                      "set the limit with bg.distributed.init(timeout=...) or BATCHGRAD_MPI_TIMEOUT)", world=w)
                return
            time.sleep(0.05 if cur is None else min(0.2, max(0.01, cur[2].timeout / 20)))

    def run(self, what: str, world: World, fn: Any) -> None:
        if self.thread is None:
            import threading

            self.thread = threading.Thread(target=self._loop, name="batchgrad-mpi-watchdog", daemon=True)
            self.thread.start()
        self.current = (what, time.monotonic() + world.timeout, world)
        try:
            fn()
        finally:
            self.current = None


_watchdog = _Watchdog()


def allreduce_(array: np.ndarray, op: str = "sum", world: World | None = None, what: str = "all-reduce") -> np.ndarray:
    """Reduce a contiguous numpy array over all ranks, in place (``op``: ``"sum"``, ``"max"``,
    ``"min"``); returns it. A no-op in a 1-process world."""
    w = world or get_world()
    if op not in ("sum", "max", "min"):
        raise ValueError(f"allreduce_: op must be 'sum', 'max' or 'min', got {op!r}")
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous or not array.flags.writeable:
        raise TypeError("allreduce_: expected a writeable C-contiguous numpy array")
    if w.comm is None or w.size == 1:
        return array
    MPI = _mpi()
    mop = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
    _watchdog.run(f"{what} of {array.size} {array.dtype} values", w, lambda: w.comm.Allreduce(MPI.IN_PLACE, array, op=mop))
    return array


def broadcast_(array: np.ndarray, root: int = 0, world: World | None = None, what: str = "broadcast") -> np.ndarray:
    """Overwrite ``array`` on every rank with rank ``root``'s, in place; returns it."""
    w = world or get_world()
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous or not array.flags.writeable:
        raise TypeError("broadcast_: expected a writeable C-contiguous numpy array")
    if w.comm is None or w.size == 1:
        return array
    _watchdog.run(f"{what} of {array.size} {array.dtype} values from rank {root}", w, lambda: w.comm.Bcast(array, root=root))
    return array


def allgather(obj: Any, world: World | None = None, what: str = "all-gather") -> list[Any]:
    """Every rank's ``obj`` (any picklable object), in rank order. Sizes, then bytes, each a
    non-blocking collective under the time-out."""
    w = world or get_world()
    if w.comm is None or w.size == 1:
        return [obj]
    import pickle

    data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
    sizes = np.zeros(w.size, dtype=np.int64)
    sizes[w.rank] = data.size
    allreduce_(sizes, "sum", w, what)
    out = np.zeros(int(sizes.sum()), dtype=np.uint8)
    offs = np.concatenate([[0], np.cumsum(sizes)])
    out[offs[w.rank]: offs[w.rank + 1]] = data
    allreduce_(out, "max", w, what)  # every byte is written by exactly one rank, the rest are 0
    return [pickle.loads(out[offs[r]: offs[r + 1]].tobytes()) for r in range(w.size)]


def spans_nodes(world: World | None = None) -> bool:
    """Whether the ranks run on more than one machine (shared-memory node); False in a
    1-process world. A collective the first time (cached per world)."""
    w = world or get_world()
    if w.comm is None or w.size == 1:
        return False
    if w._spans_nodes is None:
        node = w.comm.Split_type(_mpi().COMM_TYPE_SHARED)
        local = np.array([node.Get_size()], np.int64)
        node.Free()
        allreduce_(local, "min", w, "node size")
        object.__setattr__(w, "_spans_nodes", bool(local[0] < w.size))  # a cache on the frozen World
    return w._spans_nodes


def barrier(world: World | None = None) -> None:
    """Wait until every rank gets here (under the time-out)."""
    w = world or get_world()
    if w.comm is not None and w.size > 1:
        _watchdog.run("barrier", w, w.comm.Barrier)


def _flat_params(tensors: list[Any]) -> np.ndarray:
    return np.concatenate([np.asarray(t.numpy(), np.float32).ravel() for t in tensors]) if tensors else np.zeros(0, np.float32)


def broadcast_parameters(model: Any, root: int = 0, world: World | None = None) -> None:
    """Give every rank rank ``root``'s parameters (``model.parameters()``, or a list of tensors):
    one broadcast of one flat buffer. Call it before training so all ranks start identical."""
    w = world or get_world()
    if w.size == 1:
        return
    params = list(model.parameters()) if hasattr(model, "parameters") else list(model)
    shapes = allgather([tuple(p.shape) for p in params], w, "parameter shape check")
    if any(s != shapes[root] for s in shapes):
        bad = [r for r, s in enumerate(shapes) if s != shapes[root]]
        raise DistributedError(f"broadcast_parameters: ranks {bad} have parameters of other shapes than rank {root} "
                               f"({len(shapes[bad[0]])} tensors vs {len(shapes[root])})")
    flat = broadcast_(_flat_params(params), root, w, "parameter broadcast")
    _assign(params, flat)


def _assign(params: list[Any], flat: np.ndarray) -> None:
    off = 0
    for p in params:
        n = int(np.prod(p.shape, dtype=np.int64))
        p._v.assign(_core.from_numpy(np.ascontiguousarray(flat[off: off + n].reshape(p.shape)), False))
        off += n


class GradientReducer:
    """Sums the gradients of all ranks in one exchange of one flat float32 buffer per optimizer
    step (an all-reduce, a few with buckets, or on one machine a barrier over shared memory: see
    below), weighted by each rank's examples, and shares failures.

    Each step every rank calls :meth:`reduce` once. The buffer holds first the step's metadata:
    ``stats`` (sums such as the loss and correct predictions), one slot per rank holding its
    example count + 1 (0: its loader is exhausted) and a failure flag; then the rank's gradient
    scaled by ``1 / W`` (a ``"mean"`` loss: each rank's gradient is the mean over its examples,
    the step's is the mean over all of them) or 1 (``"sum"``). After the all-reduce every rank
    knows every count, so:

    * all ranks exhausted: the epoch is over (``reduce`` returns None);
    * some exhausted: every rank raises the same :class:`DistributedError` naming them;
    * a rank passed an ``error``: every rank gathers all errors and raises the same
      :class:`DistributedError` (the failing rank's chained to its own exception);
    * unequal counts (e.g. a custom loader's short last batch): the gradients are reduced once
      more, each scaled by ``n / N`` (``fill`` is asked again); equal counts, the usual case with
      :class:`DistributedSampler`, need no second pass.

    All before any parameter changes. With equal counts on a power-of-two number of ranks the
    scale is a power of two, so the sum equals one process's up to the order of one addition.

    **Buckets** (``bucket_bytes > 0``): the parameters are cut, from the last one back, into
    contiguous buckets of about that size. When the backward calls :meth:`ready` for each
    parameter whose gradient is in :attr:`flat` (``TrainStep.grads_into(..., ready=...)`` does),
    each finished bucket is all-reduced at once by a communication thread while the backward goes
    on, in bucket order on every rank (a bucket waits for the ones before it). The last bucket,
    which holds the first parameters and the metadata, is reduced by :meth:`reduce` itself once
    the step's outcome is known; a rank that failed first sends zeros for the buckets it had not
    sent, so every rank makes the same collectives in the same order. Each element is summed
    over the ranks as without buckets, so the results are the same bits.

    **Shared memory** (``shared``; by default when every rank is on one machine and there are no
    buckets; ``BATCHGRAD_MPI_SHARED=0`` turns the default off): instead of an all-reduce, each
    rank's buffer is its slot in an MPI-3 shared-memory window (``MPI_Win_allocate_shared`` on the
    machine's communicator), the step's gradients are written straight into it, one
    ``MPI_Barrier`` (under the time-out) makes all slots visible, and every rank reads all of
    them: the metadata is summed here, the gradients by ``TrainStep.update_from(summed())``,
    which adds the slots in rank order block by block as it applies the update (no all-reduce
    copy, no pass writing the sum); :attr:`grads` sums them in the same order. Every rank adds
    the same numbers in the same order, so all get the same bits: the sum of two ranks is the
    all-reduce's bit for bit. Each rank has two slots and alternates between them each round, so
    one barrier per round suffices: a slot is written again only two rounds later, after a
    barrier no rank passes before it has read it. The window lives until MPI is finalized (freeing
    it is a collective, which a garbage collector cannot time). MLP 784-256-256-10, 2 ranks x 1
    thread, batch 256 per rank, the same processes alternating: see ``benches/RESULTS.md``.
    """

    def __init__(self, shapes: list[tuple[int, ...]], n_stats: int = 0, world: World | None = None,
                 bucket_bytes: int = 0, shared: bool | None = None) -> None:
        self.world = world or get_world()
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.numels = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.numels, dtype=np.int64)]).astype(np.int64)
        self.size = int(self.offsets[-1])
        self.n_stats = int(n_stats)
        self.n_meta = self.n_stats + self.world.size + 1
        self.buf = np.zeros(self.n_meta + self.size, np.float32)
        self.step = 0
        # buckets in launch order: (first parameter, end parameter), the last parameters first;
        # the final bucket starts at parameter 0 and is sent with the metadata
        bucket_bytes = int(bucket_bytes)
        if bucket_bytes < 0:
            raise ValueError(f"GradientReducer: bucket_bytes must be >= 0, got {bucket_bytes}")
        self.buckets: list[tuple[int, int]] = []
        hi, acc = len(self.shapes), 0
        for k in range(len(self.shapes) - 1, 0, -1):
            acc += 4 * self.numels[k]
            if bucket_bytes and acc >= bucket_bytes:
                self.buckets.append((k, hi))
                hi, acc = k, 0
        self.buckets.append((0, hi))
        self._bucket_of = [next(b for b, (lo, h) in enumerate(self.buckets) if lo <= i < h) for i in range(len(self.shapes))]
        self._pending: list[int] = []
        self._sent = 0
        self._queue: Any = None
        self._comm_error: BaseException | None = None
        self.early_sends = 0  # buckets sent from ready(), i.e. while the backward was running
        self._win: Any = None  # the shared-memory window (shared=True), see _init_shared
        self._read: list[np.ndarray] | None = None  # the slots of the last exchange, every rank's
        self._sum: np.ndarray | None = None
        if shared is not None and not isinstance(shared, bool):
            raise ValueError(f"GradientReducer: shared must be None, True or False, got {shared!r}")
        if shared and bucket_bytes:
            raise ValueError("GradientReducer: shared=True exchanges whole buffers once per step; it takes no "
                             f"buckets (bucket_bytes={bucket_bytes})")
        if shared is None:
            env = os.environ.get("BATCHGRAD_MPI_SHARED", "").strip().lower()
            if env not in ("", "0", "1"):
                raise ValueError(f"BATCHGRAD_MPI_SHARED must be 0 or 1, got {env!r}")
            want = env != "0" and not bucket_bytes
        else:
            want = shared
        if self.world.size > 1 and self.world.comm is not None:
            self._init_shared(want, shared is True)
        self.begin()

    def _init_shared(self, want: bool, forced: bool) -> None:
        """Decide, the same on every rank, whether the ranks sum through shared memory (all of
        them want to and are on one machine), and if so allocate the window: two slots per rank
        (rounds alternate between them), each the size of :attr:`buf`. A collective."""
        w, MPI = self.world, _mpi()
        every = np.array([1 if want else 0], np.int64)
        allreduce_(every, "min", w, "shared-memory check")
        if not every[0]:
            return
        if spans_nodes(w):
            if forced:
                raise ValueError(f"GradientReducer: shared=True needs all {w.size} ranks on one machine")
            return
        node = w.comm.Split_type(MPI.COMM_TYPE_SHARED, key=w.rank)
        n = self.buf.size
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")  # each rank's slots page-aligned, near its own core
        win = MPI.Win.Allocate_shared(2 * n * 4, 4, info=info, comm=node)
        info.Free()
        win.Lock_all(MPI.MODE_NOCHECK)
        views = [np.ndarray(buffer=win.Shared_query(q)[0], dtype=np.float32, shape=(2, n)) for q in range(w.size)]
        views[w.rank][:] = 0.0
        self._win, self._node = win, node
        self._slots = [[v[k] for v in views] for k in range(2)]  # [round % 2][rank]
        self._k = 0  # the slot this rank writes next
        self.buf = self._slots[0][w.rank]
        _watchdog.run("shared-memory setup", w, node.Barrier)

    @property
    def shared(self) -> bool:
        """Whether the ranks sum through shared memory (one machine) rather than an all-reduce."""
        return self._win is not None

    def _exchange(self, what: str) -> None:
        """Shared memory: make this rank's slot (:attr:`buf`) visible to all and wait for every
        rank's; then read those slots, and write the next round into the other slot. A rank
        writes a slot again two rounds later, after the next round's barrier, which no rank passes
        before it has finished reading this round's."""
        w, win, node = self.world, self._win, self._node

        def sync() -> None:
            win.Sync()
            node.Barrier()
            win.Sync()

        _watchdog.run(what, w, sync)
        self._read = self._slots[self._k]
        self._sum = None
        self._k ^= 1
        self.buf = self._slots[self._k][w.rank]

    def summed(self) -> np.ndarray | list[np.ndarray]:
        """What :meth:`reduce` left for the update, in the layout of :attr:`flat`: the summed
        gradients (after an all-reduce), or, in shared memory, every rank's gradients, which
        ``TrainStep.update_from`` adds in rank order as it reads them (no pass writing the sum)."""
        if self._read is None:
            return self.flat
        return [s[self.n_meta:] for s in self._read]

    def _total(self) -> np.ndarray:
        """The sum of the last exchange's slots, in rank order (the order ``update_from`` adds in)."""
        if self._sum is None:
            self._sum = self._read[0].copy()
            for s in self._read[1:]:
                self._sum += s
        return self._sum

    @property
    def meta(self) -> np.ndarray:
        """The metadata part of this rank's buffer (stats, per-rank counts, failure flag)."""
        return self.buf[: self.n_meta]

    @property
    def flat(self) -> np.ndarray:
        """The gradient part of the buffer (``size`` floats, in parameter order)."""
        return self.buf[self.n_meta:]

    @property
    def grads(self) -> list[np.ndarray]:
        """The reduced gradients, views into the buffer, in parameter order."""
        f = self.flat if self._read is None else self._total()[self.n_meta:]
        return [f[a:b].reshape(s) for a, b, s in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def pack(self, grads: list[np.ndarray | None], scale: float) -> None:
        """Write ``grads`` (None: a parameter without gradient, zeros) times ``scale`` into :attr:`flat`."""
        buf = self.flat
        for g, a, b in zip(grads, self.offsets[:-1], self.offsets[1:]):
            if g is None:
                buf[a:b] = 0.0
            elif scale == 1.0:
                buf[a:b] = np.asarray(g, np.float32).reshape(-1)
            else:
                np.multiply(np.asarray(g, np.float32).reshape(-1), np.float32(scale), out=buf[a:b])

    def begin(self) -> None:
        """Start a step: no parameter's gradient is in :attr:`flat` yet, no bucket sent."""
        self._pending = [hi - lo for lo, hi in self.buckets]
        self._sent = 0

    def ready(self, i: int) -> None:
        """Parameter ``i``'s gradient is in :attr:`flat`: send every bucket now complete whose
        predecessors are sent (never the final one, which :meth:`reduce` sends)."""
        self._pending[self._bucket_of[i]] -= 1
        while self._sent < len(self.buckets) - 1 and self._pending[self._sent] == 0:
            self._send(self._sent)
            self._sent += 1
            self.early_sends += 1

    def _span(self, b: int) -> tuple[int, int]:
        lo, hi = self.buckets[b]
        return self.n_meta + int(self.offsets[lo]), self.n_meta + int(self.offsets[hi])

    def _send(self, b: int) -> None:
        if self.world.size == 1:
            return
        if self._queue is None:
            import queue
            import threading

            self._queue = queue.Queue()
            threading.Thread(target=self._comm_loop, name="batchgrad-mpi-buckets", daemon=True).start()
        a, e = self._span(b)
        self._queue.put((a, e, f"gradient all-reduce (step {self.step + 1}, bucket {b + 1} of {len(self.buckets)})"))

    def _comm_loop(self) -> None:
        while True:
            a, e, what = self._queue.get()
            try:
                allreduce_(self.buf[a:e], "sum", self.world, what)
            except BaseException as err:  # noqa: BLE001 - raised by reduce() on the main thread
                self._comm_error = err
            finally:
                self._queue.task_done()

    def _finish_buckets(self) -> None:
        """Send the buckets not sent yet (all but the final one) and wait for all of them."""
        while self._sent < len(self.buckets) - 1:
            self._send(self._sent)
            self._sent += 1
        if self._queue is not None:
            self._queue.join()
        if self._comm_error is not None:
            err, self._comm_error = self._comm_error, None
            raise err

    def reduce(self, fill: Any, n: int, mean: bool, stats: list[float] | None = None,
               error: BaseException | None = None, has_batch: bool = True) -> tuple[np.ndarray, int] | None:
        """All-reduce this step; returns (summed stats, examples over all ranks), or None when
        every rank's loader is exhausted. ``fill(scale, again)`` writes this rank's gradient times
        ``scale`` into :attr:`flat` (``again=True``: a second time, after the buffer was summed).
        Raises :class:`DistributedError` on every rank when a rank failed or ran out of batches."""
        w, buf = self.world, self.buf
        W, self.step = w.size, self.step + 1
        ok = error is None and has_batch
        how = "all-reduce" if self._win is None else "exchange through shared memory"
        what = f"gradient {how} (step {self.step})"
        try:
            if ok:
                fill(1.0 / W if mean else 1.0, False)
            else:  # zeros in every bucket not sent yet (those sent carried partial sums: the step fails anyway)
                for b in range(self._sent, len(self.buckets)):
                    a, e = self._span(b)
                    buf[a:e] = 0.0
            self._finish_buckets()
            meta = self.meta
            meta[:] = 0.0
            if stats is not None:
                meta[: self.n_stats] = np.asarray(stats, np.float32)
            meta[self.n_stats + w.rank] = n + 1 if (has_batch or error is not None) else 0
            meta[-1] = 1.0 if error is not None else 0.0
            if self._win is None:
                a, e = self._span(len(self.buckets) - 1)
                allreduce_(buf[:e], "sum", w, what)
            else:
                self._exchange(what)
                meta = self._read[0][: self.n_meta].copy()
                for s in self._read[1:]:
                    meta += s[: self.n_meta]
        finally:
            self.begin()
        if meta[-1] > 0:
            self._raise(error)
        st = meta[: self.n_stats].astype(np.float64)
        c = meta[self.n_stats: self.n_stats + W].astype(np.int64)
        if not c.any():
            return None
        if not c.all():
            out = [r for r in range(W) if c[r] == 0]
            raise DistributedError(
                f"ranks {out} of {W} ran out of batches at optimizer step {self.step} while the others had more: "
                "give every rank the same number of batches (bg.distributed.DistributedSampler does)")
        c -= 1
        total = int(c.sum())
        if mean and total > 0 and (c != c[0]).any():  # unequal batches: weight each rank by n / N
            if ok:
                fill(n / total, True)
            self.meta[:] = 0.0
            what = f"gradient {how} (step {self.step}, unequal batches {c.tolist()})"
            if self._win is None:
                allreduce_(self.buf, "sum", w, what)
            else:
                self._exchange(what)
        return st, total

    def _raise(self, error: BaseException | None) -> None:
        w = self.world
        mine = None if error is None else f"{type(error).__name__}: {error}"
        errors = allgather(mine, w, "error exchange")
        lines = [f"rank {r}: {e}" for r, e in enumerate(errors) if e is not None]
        msg = (f"{len(lines)} of {w.size} ranks failed at optimizer step {self.step}; no rank updated its "
               "parameters in this step:\n  " + "\n  ".join(lines))
        if error is not None:
            raise DistributedError(msg) from error
        raise DistributedError(msg)


def __getattr__(name: str) -> Any:
    if name == "DistributedSampler":
        from .data import DistributedSampler

        return DistributedSampler
    raise AttributeError(f"module 'batchgrad.distributed' has no attribute {name!r}")
