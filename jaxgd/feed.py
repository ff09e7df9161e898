"""Host-fed data (``feed="host"``): training data that stays on the host.

A :class:`HostData` wraps either NumPy arrays (``np.memmap`` included) or an iterable of
batches. The compiled program then reads each update's batch from a *fed block*: the
batches of the block's updates stacked ``[streams, updates, batch, ...]`` (a short batch,
an epoch's last or an iterable's, padded to a full one; the program takes its first rows).
The engine (:func:`jaxgd.engine.run_blocks`) asks :class:`Feeder` for the block of each
program call; the feeder builds the next one in a background thread while the device runs
the current one and puts it on the device there (double-buffered).

Arrays: the block's sample indices are the in-memory program's (the same order function,
:func:`jaxgd.feed.batch_indices`, run on the host CPU), gathered with NumPy, so a
host-fed run equals the in-memory run with the same order. Streams whose order does not
depend on the seed (``shuffle=False`` or given orders) share one block.

Iterables: consumed in order, one batch per update, the same batches for every
configuration and stream of a call. The first batch sets the batch size; a later one may
hold fewer samples (a ``DataLoader``'s short last batch of a pass, ``drop_last=False``),
with the first one's structure, sample shapes and dtypes (else a ValueError when it is
read). It fills the head of its slot of the fed block, and :meth:`Feeder.block` gives the
block's batch sizes with it: such a block runs in the host plan
(:func:`jaxgd.hostloop.host_block`, also in a scan-plan run:
:func:`jaxgd.engine.host_twin`), where the short batch's update is a jitted call of its
own on exactly its samples (compiled once per size), as a user's jitted step takes it. On
several devices a short batch is refused when it is read (its update would not split over
the mesh).

A re-iterable source (``iter(source)`` returns a new iterator, like a PyTorch
``DataLoader``) starts over for a call that begins before the batches it holds (another
chunk of a sweep, a resumed run); a one-shot iterator (a generator) feeds one pass only.
An iterator whose position can be saved and restored (``get_state()``/``set_state()``, as
grain's ``DataLoader`` and dataset iterators have; the state JSON or bytes) is restored to
the position of a call's first batch instead of read from the start: the feeder notes the
state after each batch it reads, a checkpoint saves the one at its update
(:meth:`Feeder.position`), and a resumed run sets it (:func:`decode_state`). A one-shot
iterator with a state starts over the same way.

On a mesh (:mod:`jaxgd.engine`) a fed block is placed with its batch axis split over the
mesh's ``"data"`` axis (:func:`fed_sharding`; whole on every device without one), and each
process supplies only the rows of each batch its own devices hold (:func:`batch_rows`):
from arrays it gathers those rows alone; an iterable of batches yields them (in a
multi-process run, each process's iterable yields the process's share of every batch, like
a per-host ``DataLoader``: the whole batch when the data axis lies within each process,
:func:`across_processes`). One process holds every row, so its blocks are gathered as
without a mesh.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import mmap
import threading
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .spec import evals_of

FEEDS = ("auto", "device", "host")

# a program call's fed block holds at most this many bytes (per stream), or one evaluation
FEED_BLOCK_BYTES = 16 << 20


def check_feed(name: str, value: Any) -> str:
    """``feed=``: "auto", "device" or "host"."""
    if value not in FEEDS:
        raise ValueError(f"{name}={value!r} must be one of {FEEDS}")
    return value


class HostData:
    """Training data kept on the host: NumPy arrays (``arrays``, a pytree sharing the
    leading axis N) or an iterable of batches (``source``; ``first`` its first batch;
    ``start``: the encoded state of an iterator before its first batch, for a source whose
    position can be restored, see :func:`encode_state`)."""

    def __init__(self, arrays: Any = None, source: Iterable | None = None, first: Any = None,
                 rest: Any = None, n: int | None = None, whole_first: Any = None,
                 start: tuple[str, bytes] | None = None):
        self.arrays, self.source, self.first, self._rest = arrays, source, first, rest
        self.start = start
        ref = arrays if arrays is not None else first
        self.treedef = jax.tree.structure(ref)
        # an iterable's batch size: the global batch (of which a process's iterable may
        # yield a share, :func:`across_processes`); ``whole_first`` its first global batch
        self.n = n if n is not None else jax.tree.leaves(ref)[0].shape[0]
        self.whole_first = first if whole_first is None else whole_first

    @property
    def iterable(self) -> bool:
        return self.arrays is None

    @property
    def reiterable(self) -> bool:
        """Whether ``iter(source)`` starts over (a DataLoader; not a generator), or the
        source's iterator can be set back to its start (``set_state``)."""
        return self.arrays is not None or self._rest is None

    @property
    def restorable(self) -> bool:
        """Whether the source's iterators save and restore their position
        (``get_state``/``set_state``, e.g. grain's)."""
        return self.start is not None

    def probe(self) -> Any:
        """Shapes of a batch of two samples (or of one batch), for the loss's checks."""
        if self.arrays is not None:
            return jax.tree.map(lambda a: jax.ShapeDtypeStruct((min(2, a.shape[0]),)
                                                               + a.shape[1:], a.dtype),
                                self.arrays)
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct((self.n,) + a.shape[1:], a.dtype),
                            self.first)

    def sample_bytes(self) -> int:
        ref = self.arrays if self.arrays is not None else self.first
        return int(sum(np.prod(a.shape[1:], dtype=np.int64) * a.dtype.itemsize
                       for a in jax.tree.leaves(ref)))

    def digest_leaves(self) -> list[np.ndarray]:
        """What a run folder's fingerprint hashes: the arrays, or the first (global) batch."""
        return jax.tree.leaves(self.arrays if self.arrays is not None else self.whole_first)

    def length(self) -> int | None:
        """Batches an iterable source holds, when it says (``len()``), else None."""
        try:
            return len(self.source)  # type: ignore[arg-type]
        except TypeError:
            return None

    def iterator(self):
        """A fresh iterator over the batches (the first call of a one-shot source gets
        the batches it has not given yet, with the first one peeked at back in front)."""
        if self._rest is not None:
            rest, self._rest = self._rest, ()
            if rest == ():
                raise ValueError(
                    f"data is a one-shot iterator ({type(self.source).__name__}) and was "
                    "consumed by an earlier program call: give a re-iterable source (iter() "
                    "starts over, like a DataLoader) to run several calls (sweep chunks, "
                    "searches, resume)")
            return _chain(self.first, rest)
        it = iter(self.source)
        if it is self.source:  # a one-shot iterator with a state: back to its start
            it.set_state(decode_state(self.start))
        return it


def _chain(first, rest):
    yield first
    yield from rest


def _check_leaf(where: str, a: Any) -> np.ndarray:
    a = np.asarray(a) if not isinstance(a, np.ndarray) else a
    if a.ndim < 1 or a.dtype.kind not in "biuf":
        raise TypeError(f"{where} must be a numeric array with a leading (sample) axis, got "
                        f"dtype {a.dtype} and shape {a.shape}")
    return a


def host_data(data: Any, feed: str) -> HostData | None:
    """``data`` as :class:`HostData` when ``feed`` keeps it on the host ("host", or
    "auto" for an ``np.memmap`` or an iterable of batches), else None (device data)."""
    check_feed("feed", feed)
    if isinstance(data, HostData) or feed == "device":
        return data if isinstance(data, HostData) else None
    if _iterable(data):  # not a pytree container: an iterable of batches
        return _from_iterable(data)
    leaves = jax.tree.leaves(data)
    if feed == "auto" and not any(isinstance(a, np.memmap) for a in leaves):
        return None
    paths = jax.tree_util.tree_flatten_with_path(data)[0]
    arrays = [_check_leaf(f"data{jax.tree_util.keystr(p)}", a) for p, a in paths]
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"data's leaves must share one leading length N > 0, got "
                         f"{sorted(lengths)}")
    return HostData(arrays=jax.tree.unflatten(jax.tree.structure(data), arrays))


def _iterable(x: Any) -> bool:
    """An iterable that is not a pytree container or an array (a list or tuple of arrays is
    data: wrap a list of batches with ``iter()``)."""
    if isinstance(x, np.ndarray | jax.Array | str | bytes | dict | tuple | list):
        return False
    if not jax.tree_util.all_leaves([x]):  # a registered pytree container
        return False
    try:
        iter(x)
    except TypeError:
        return False
    return True


def _from_iterable(source: Iterable) -> HostData:
    it = iter(source)
    start = encode_state(it.get_state()) if has_state(it) else None
    one_shot = it is source and start is None
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("data is an iterable of batches that gave no batch") from None
    first = _checked_batch(first, None, 0)
    return HostData(source=source, first=first, rest=it if one_shot else None, start=start)


def has_state(it: Any) -> bool:
    """Whether an iterator saves and restores its position (``get_state()`` and
    ``set_state(state)``, like grain's ``DataLoader`` and dataset iterators)."""
    return callable(getattr(it, "get_state", None)) and callable(getattr(it, "set_state", None))


def encode_state(state: Any) -> tuple[str, bytes] | None:
    """An iterator's ``get_state()`` as ``(kind, bytes)``: bytes as they are ("bytes", as
    grain's ``DataLoader`` gives them), anything else as JSON ("json"); None when it is
    neither (it is then not saved: no pickle)."""
    if isinstance(state, bytes):
        return "bytes", state
    try:
        return "json", json.dumps(state, allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError):
        return None


def decode_state(enc: tuple[str, bytes]) -> Any:
    """The state :func:`encode_state` encoded, as ``set_state`` takes it."""
    kind, raw = enc
    return raw if kind == "bytes" else json.loads(raw.decode())


def state_arrays(u: int, enc: tuple[str, bytes]) -> dict[str, np.ndarray]:
    """A checkpoint's arrays of an iterator's position: the update ``u`` it gives next
    and its encoded state."""
    kind, raw = enc
    return {"feed/at": np.asarray(u, np.int64),
            f"feed/{kind}": np.frombuffer(raw, np.uint8).copy()}


def arrays_state(arrays: dict[str, np.ndarray]) -> tuple[int, tuple[str, bytes]] | None:
    """(update, encoded state) of a checkpoint's :func:`state_arrays`, or None."""
    at = arrays.get("feed/at")
    kinds = [k for k in ("bytes", "json") if f"feed/{k}" in arrays]
    if at is None or at.shape != () or len(kinds) != 1:
        return None
    raw = arrays[f"feed/{kinds[0]}"]
    if raw.dtype != np.uint8 or raw.ndim != 1 or int(at) < 0:
        return None
    return int(at), (kinds[0], raw.tobytes())


def _checked_batch(batch: Any, ref: Any, i: int, devices: int = 1) -> Any:
    """Batch ``i`` as NumPy arrays, with the first batch's (``ref``'s) structure, sample
    shapes and dtypes, and at most its number of samples: fewer (a short batch, e.g. the
    last of a ``DataLoader`` pass) only on one device (``devices``: the run's)."""
    leaves, td = jax.tree.flatten(batch)
    arrays = [_check_leaf(f"batch {i} of data", np.asarray(a)) for a in leaves]
    lengths = [a.shape[0] for a in arrays]
    if len(set(lengths)) != 1 or 0 in lengths:
        raise ValueError(f"batch {i} of data has leaves of leading lengths {lengths}: they "
                         "must share one number of samples > 0")
    if ref is None:
        return jax.tree.unflatten(td, arrays)
    want = [(a.shape[1:], a.dtype) for a in jax.tree.leaves(ref)]
    got = [(a.shape[1:], a.dtype) for a in arrays]
    if td != jax.tree.structure(ref) or got != want:
        raise ValueError(f"batch {i} of data has structure/sample shapes {td} {got}, unlike "
                         f"the first batch's {jax.tree.structure(ref)} {want}: every batch "
                         "must have the first one's structure, sample shapes and dtypes "
                         "(only its number of samples may be smaller)")
    size, full = lengths[0], jax.tree.leaves(ref)[0].shape[0]
    if size > full:
        raise ValueError(f"batch {i} of data holds {size} samples, more than the first "
                         f"batch's {full} (the batch size): a later batch may hold fewer "
                         "samples, never more")
    if size < full and devices > 1:
        raise ValueError(f"batch {i} of data holds {size} samples, fewer than the first "
                         f"batch's {full}: a batch of another size is taken on one device "
                         f"only, and this run has {devices}; every batch must hold the "
                         "first one's number of samples (drop_last=True in a DataLoader)")
    return jax.tree.unflatten(td, arrays)


# ----------------------------------------------------------------------------- blocks


class _Reader:
    """Sequential reads of an iterable source by update index (batches kept from the
    earliest update a block may still ask for). For a source whose position can be
    restored, ``states`` holds the encoded iterator state before each update from the
    earliest one kept (and ``known``, a checkpoint's); a new iterator starts at the
    latest state at or before the update asked for."""

    def __init__(self, data: HostData, budget: int,
                 known: tuple[int, tuple[str, bytes]] | None = None, devices: int = 1):
        self.data, self.budget, self.devices = data, budget, devices
        self.it, self.base, self.kept = None, 0, []
        self.lock = threading.Lock()
        self.states: dict[int, tuple[str, bytes]] = {}
        if known is not None and data.restorable:
            self.states[known[0]] = known[1]

    def open(self, u0: int) -> None:
        """A new iterator, at the latest known position at or before ``u0``."""
        self.it, self.base, self.kept = self.data.iterator(), 0, []
        with self.lock:
            at = max((u for u in self.states if u <= u0), default=0)
            if at > 0:
                self.it.set_state(decode_state(self.states[at]))
                self.base = at

    def state(self, u: int) -> tuple[str, bytes] | None:
        """The encoded iterator state before update ``u``, when it is known."""
        with self.lock:
            return self.states.get(u)

    def take(self, u0: int, u1: int) -> list[Any]:
        if self.it is None or u0 < self.base:
            self.open(u0)
        drop = min(u0 - self.base, len(self.kept))
        self.kept, self.base = self.kept[drop:], self.base + drop
        with self.lock:
            for u in [u for u in self.states if u < self.base]:
                del self.states[u]
        while self.base < u0:  # skip to u0 (a call that starts later)
            self._next()
            self.base += 1
        while len(self.kept) < u1 - u0:
            self.kept.append(self._next())
        return self.kept[:u1 - u0]

    def _next(self):
        try:
            b = next(self.it)
        except StopIteration:
            have = self.base + len(self.kept)
            raise ValueError(f"data ran dry: the iterable gave {have} batches, but the step "
                             f"budget needs {self.budget} (one batch per update)") from None
        u = self.base + len(self.kept)
        if self.data.restorable:
            enc = encode_state(self.it.get_state())
            with self.lock:
                if enc is not None:
                    self.states[u + 1] = enc
        return _checked_batch(b, self.data.first, u, self.devices)


def host_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised host array for a fed block, in pages of its own (an anonymous
    mapping, zero-filled by the kernel, unmapped when the array and its views are gone):
    blocks allocated and freed one after another, in two threads, would otherwise be
    kept by the C allocator (glibc raises its mmap threshold to the size of a freed
    block and serves the next ones from its heaps, which it rarely gives back), growing
    the resident set by several blocks."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < (1 << 20):
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)


def _zeros_like_block(ref: Any, u: int) -> Any:
    return jax.tree.map(lambda a: host_empty((u,) + a.shape, a.dtype), ref)


class Feeder:
    """The fed blocks of one program call.

    Args:
      data: the host data.
      spec: the program's spec (its plan, budget, shuffle, ``fed`` block length).
      keys: the call's stream keys [S] (their data orders); ``orders``: ``shuffle=`` orders.
      put: host block -> device block (on a mesh :func:`place_block`, else device_put).
      order_fn: :func:`batch_indices` (update, key, orders -> indices).
      rows: the positions of each batch this process supplies (:func:`batch_rows`; None:
        all): the host block holds those rows only, [S, updates, len(rows), ...].
      resume: a checkpoint's arrays of an iterable's position (:meth:`position`), or None.
    """

    def __init__(self, data: HostData, spec, keys, orders, put: Callable[[Any], Any],
                 order_fn: Callable[..., Any], rows: np.ndarray | None = None,
                 resume: dict[str, np.ndarray] | None = None):
        self.data, self.spec, self.put = data, spec, put
        self.units = spec.eval_every
        self.bsz = spec.plan.batch_size * spec.accumulate
        self.rows = None if rows is None or len(rows) == self.bsz else np.asarray(rows)
        width = self.bsz if self.rows is None else len(self.rows)
        have = jax.tree.leaves(data.first)[0].shape[0] if data.iterable else width
        if have != width:  # (across_processes checked the shares before compiling)
            raise ValueError(f"the iterable's batches hold {have} samples, but this "
                             f"process's devices hold {width} of each batch of {self.bsz}")
        keyed = spec.shuffle in ("feistel", "uniform")
        self.keys = np.asarray(jax.random.key_data(keys))
        if not keyed or data.iterable:  # one stream's order serves every stream
            self.keys = self.keys[:1]
        self.orders = None if orders is None else np.asarray(orders)
        self.reader = (_Reader(data, spec.epochs, arrays_state(resume or {}),
                               jax.device_count()) if data.iterable else None)
        self.indices = _indices_fn(spec, order_fn)
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxgd-feed")
        self.pending: dict[int, concurrent.futures.Future] = {}

    def host_block(self, at: int, stop: int, rows: int) -> tuple[Any, np.ndarray | None]:
        """Evaluations ``at .. stop`` as a host block [S, rows * K, B, ...] and its batch
        sizes [rows * K] when an iterable gave a batch of fewer samples than the first
        (filling the head of its slot, zeros the rest), else None."""
        K = self.units
        U = rows * K
        u0 = at * K
        u1 = min(stop * K, self.spec.epochs, u0 + U)
        if self.data.iterable:
            batches = self.reader.take(u0, u1)
            block = _zeros_like_block(self.data.first, U)
            full = jax.tree.leaves(self.data.first)[0].shape[0]
            sizes = np.full(U, full, np.int64)
            leaves = jax.tree.leaves(block)
            for j, b in enumerate(batches):
                for leaf, a in zip(leaves, jax.tree.leaves(b), strict=True):
                    leaf[j, :len(a)] = a
                    leaf[j, len(a):] = 0  # a short batch's tail (host_empty may not be zeros)
                    sizes[j] = len(a)
            return (jax.tree.map(lambda a: a[None], block),
                    sizes if (sizes != full).any() else None)
        ts = np.arange(u0, u0 + U, dtype=np.int32)
        ts = np.minimum(ts, self.spec.epochs - 1)  # past the budget: any in-range batch
        S = len(self.keys)
        W = self.bsz if self.rows is None else len(self.rows)  # this process's rows
        block = jax.tree.map(lambda a: host_empty((S, U * W) + a.shape[1:], a.dtype),
                             self.data.arrays)
        orders = None if self.orders is None else jnp.asarray(self.orders)
        for s, kd in enumerate(self.keys):
            idx = np.asarray(self.indices(jnp.asarray(kd), jnp.asarray(ts), orders))
            flat = (idx if self.rows is None else idx[:, self.rows]).reshape(-1)
            for a, b in zip(jax.tree.leaves(self.data.arrays), jax.tree.leaves(block),
                            strict=True):
                gather(a, flat, b[s])
        return jax.tree.map(lambda b: b.reshape((S, U, W) + b.shape[2:]), block), None

    def position(self, at: int) -> dict[str, np.ndarray]:
        """A checkpoint's arrays of the iterable's position before evaluation ``at`` (its
        iterator state there, :func:`state_arrays`); empty for arrays (a block's batches
        follow from its step) and for a source whose position cannot be restored."""
        if self.reader is None:
            return {}
        u = at * self.units
        enc = self.reader.state(u)
        return {} if enc is None else state_arrays(u, enc)

    def _build(self, at: int, stop: int, rows: int) -> tuple[Any, np.ndarray | None]:
        block, sizes = self.host_block(at, stop, rows)
        return self.put(block), sizes

    def block(self, at: int, stop: int, rows: int, end: int) -> tuple[Any, np.ndarray | None]:
        """The device block of evaluations ``at .. stop`` (built now, or taken from the
        background build started by the previous call) and its batch sizes [rows * K]
        when an iterable gave a batch of fewer samples than the first in it (else None):
        such a block runs in the host plan (:func:`jaxgd.hostloop.host_block`). The block
        after it (from ``min(at + rows, stop)`` up to ``end``, as the next call will most
        likely ask) starts building in the background. A block's rows past ``stop`` are
        never run."""
        fut = self.pending.pop(at, None)
        for f in self.pending.values():  # a guess that did not come true
            f.cancel()
        self.pending.clear()
        if fut is None:
            fut = self.pool.submit(self._build, at, stop, rows)
        nxt = min(at + rows, stop)
        if nxt < end:
            self.pending[nxt] = self.pool.submit(self._build, nxt, end, rows)
        return fut.result()

    def close(self) -> None:
        """Cancel what is queued and join the thread."""
        for f in self.pending.values():
            f.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- meshes


def fed_sharding(mesh):
    """The placement of a fed block [S, updates, batch, ...] on ``mesh``: its batch axis
    split over the ``"data"`` axis (each device holds the samples it computes on), or whole
    on every device without one."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    if mesh.shape.get("data", 1) == 1:
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, P(None, None, "data"))


def batch_rows(mesh, size: int) -> np.ndarray:
    """The positions of a batch of ``size`` samples (split over the mesh's ``"data"`` axis)
    that this process's devices hold: all of them in one process or without a data axis,
    in a multi-process run whose data axis spans the processes only the process's share."""
    if mesh is None or mesh.shape.get("data", 1) == 1:
        return np.arange(size)
    sharding = fed_sharding(mesh)
    held = np.zeros(size, bool)
    for idx in sharding.addressable_devices_indices_map((1, 1, size)).values():
        held[idx[2]] = True
    return np.nonzero(held)[0]


def place_block(sharding, rows: np.ndarray, size: int, block: Any) -> Any:
    """A host block holding this process's ``rows`` of each batch ([S, U, len(rows), ...])
    as the global fed block [S, U, ``size``, ...] placed by ``sharding``
    (:func:`fed_sharding`): each device gets its slice of the batch axis from the rows
    the process holds (``jax.make_array_from_callback``, called for the process's own
    devices only)."""

    def put(local: np.ndarray) -> jax.Array:
        shape = local.shape[:2] + (size,) + local.shape[3:]

        def part(idx):
            start, stop, _ = idx[2].indices(size)
            at = int(np.searchsorted(rows, start))  # rows start..stop are the process's
            return local[(idx[0], idx[1], slice(at, at + stop - start)) + tuple(idx[3:])]

        return jax.make_array_from_callback(shape, sharding, part)

    return jax.tree.map(put, block)


def across_processes(host: HostData, mesh) -> HostData:
    """An iterable of batches in a multi-process run: each process's iterable yields the
    process's share of every batch (the rows its devices hold on ``mesh``'s ``"data"``
    axis, in batch order, :func:`batch_rows`; the whole batch when the data axis lies
    within each process or there is none), like a per-host ``DataLoader``. Returns the
    data with the global batch size and the global first batch (the same on every process,
    for the run's fingerprint); other data as it is.

    Raises:
      ValueError: the processes' batches do not make one global batch (a share not
        divisible by the process's part of the data axis, shares of different sizes,
        shapes or dtypes, or first batches that differ in rows several processes hold).
    """
    if not host.iterable or jax.process_count() == 1:
        return host
    import hashlib

    from jax.experimental import multihost_utils

    shards = 1 if mesh is None else int(mesh.shape.get("data", 1))
    held = len(batch_rows(mesh, shards))  # of the data axis' shards, this process holds
    local = host.n
    total = local // held * shards if held and local % held == 0 else -1
    kind = str([(a.shape[1:], a.dtype.str) for a in jax.tree.leaves(host.first)])
    kind += str(jax.tree.structure(host.first))
    digest = int.from_bytes(hashlib.sha256(kind.encode()).digest()[:4], "little") >> 1
    every = np.asarray(multihost_utils.process_allgather(
        np.asarray([local, total, digest], np.int32)))
    if (every[:, 1] < 0).any() or len({tuple(r) for r in every.tolist()}) != 1:
        raise ValueError(
            f"data is an iterable of batches in a run of {len(every)} processes, whose "
            f"batches hold {every[:, 0].tolist()} samples (process 0, 1, ...): each "
            f"process's iterable must yield the process's share of every batch, the rows "
            f"its devices hold on the mesh's 'data' axis of {shards} (here {held} of "
            f"{shards} parts of the batch), the same number, structure, sample shapes and "
            "dtypes on every process")
    whole = jax.tree.map(lambda a: _whole_batch(mesh, total, a), host.first)
    return HostData(source=host.source, first=host.first, rest=host._rest, start=host.start,
                    n=total, whole_first=whole)


def _whole_batch(mesh, total: int, share: np.ndarray) -> np.ndarray:
    """The global batch of ``total`` samples assembled from every process's ``share`` (a
    leaf of its first batch); rows that several processes hold must agree."""
    from jax.experimental import multihost_utils

    raw = np.ascontiguousarray(share).reshape(len(share), -1).view(np.uint8)  # exact bytes
    shares = np.asarray(multihost_utils.process_allgather(raw)).view(share.dtype)
    shares = shares.reshape((len(shares),) + share.shape)
    held = np.zeros((len(shares), total), bool)  # [process, row]
    if mesh is None:
        held[:] = True
    else:
        for dev, idx in fed_sharding(mesh).devices_indices_map((1, 1, total)).items():
            held[dev.process_index, idx[2]] = True
    whole = np.zeros((total,) + share.shape[1:], share.dtype)
    done = np.zeros(total, bool)
    for p, rows in enumerate(held):
        rows = np.nonzero(rows)[0]
        seen = done[rows]
        if not np.array_equal(whole[rows[seen]], shares[p][seen], equal_nan=True):
            raise ValueError(
                f"data is an iterable of batches whose first batch differs between the "
                f"processes (process {p} and one before it) in rows that both hold: where "
                "the mesh's 'data' axis does not span the processes (or there is none), "
                "every process's iterable must yield the same batches")
        whole[rows], done[rows] = shares[p], True
    return whole


# samples gathered from a memmap between releases of its pages, at most: a read maps the
# page-cache folio holding it (up to 2 MB, a PMD) and the pages around it (the kernel's
# fault-around), so a chunk also touches at most GATHER_WINDOWS 2 MB windows of the file
GATHER_CHUNK = 4096
GATHER_WINDOWS = 8
_WINDOW_SHIFT = 21  # 2 MB


def gather(a: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = a[idx]``; from a shared memmap in file order and in chunks, its pages
    released after each (:func:`release_pages`), so the resident set stays bounded
    whatever the file's size (:func:`gather_chunks`)."""
    if not isinstance(a, np.memmap):
        np.take(a, idx, axis=0, out=out)
        return
    order = np.argsort(idx, kind="stable")  # in file order: each page is read once
    ordered = idx[order]
    for i, j in gather_chunks(ordered, a.ctypes.data, a.strides[0]):
        out[order[i:j]] = np.take(a, ordered[i:j], axis=0)
        release_pages(a)


def clear_cache() -> None:
    """Drop the jitted order functions kept per program spec."""
    _indices_fn.cache_clear()
def gather_chunks(ordered: np.ndarray, address: int, stride: int) -> list[tuple[int, int]]:
    """The chunks ``[i, j)`` of sorted sample indices ``ordered`` (rows ``stride`` bytes
    apart from ``address``) read between releases of the pages: at most
    :data:`GATHER_CHUNK` samples, within at most :data:`GATHER_WINDOWS` 2 MB windows of
    addresses (a window maps at most the 2 MB folios over it: at most two, as the mapping
    need not be 2 MB aligned; so the pages mapped at once stay under ``4 MB *
    GATHER_WINDOWS`` whatever the file and the kernel's folio sizes)."""
    n = len(ordered)
    if n == 0:
        return []
    w = (address + ordered.astype(np.int64) * stride) >> _WINDOW_SHIFT
    new = np.ones(n, bool)
    new[1:] = w[1:] != w[:-1]
    k = np.cumsum(new) - 1  # the ordinal of each sample's window
    cuts = np.union1d(np.flatnonzero(new & (k % GATHER_WINDOWS == 0)),
                      np.arange(0, n, GATHER_CHUNK))
    ends = np.append(cuts[1:], n)
    return list(zip(cuts.tolist(), ends.tolist(), strict=True))


def release_pages(a: Any) -> None:
    """Unmap the pages a gather read from a shared ``np.memmap`` (``MADV_DONTNEED``: they
    stay in the page cache, no longer in this process's resident set), so the RSS follows
    the block, not the file. Nothing for other arrays or a copy-on-write memmap."""
    mm = getattr(a, "_mmap", None) if isinstance(a, np.memmap) else None
    if mm is None or getattr(a, "mode", "c") == "c" or not hasattr(mmap, "MADV_DONTNEED"):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # a closed or unusual mapping: leave it be
        pass


@functools.lru_cache(maxsize=16)
def _indices_fn(spec, order_fn):
    """Jitted (stream key data, updates [U], orders) -> sample indices [U, B] on the CPU."""
    cpu = jax.local_devices(backend="cpu")[0]  # this process's (not process 0's)

    def one(kd, t, orders):
        return order_fn(spec, jax.random.wrap_key_data(kd), t, orders)

    f = jax.jit(jax.vmap(one, in_axes=(None, 0, None)))

    @functools.wraps(f)
    def run(kd, ts, orders):
        with jax.default_device(cpu):
            return f(kd, ts, orders)

    return run


def fed_input(spec, data, start, one_stream: bool):
    """(the steps' data, its stream axis) of a host-fed program (:mod:`jaxgd.feed`): the fed
    block [S or 1, updates, B, ...] paired with the index of its first update; other data
    as it is (no stream axis)."""
    if not spec.fed:
        return data, None
    K, _ = evals_of(spec)
    shared = jax.tree.leaves(data)[0].shape[0] == 1  # one block serves every stream
    if shared or one_stream:
        data = jax.tree.map(lambda a: a[0], data)
    return (data, start * K), (None if shared else (0, None))


def batch_indices(spec, key, t, orders, order_of: Callable[..., Any]) -> jax.Array:
    """The sample indices [B] of update ``t`` of a step budget in the epoch program's order
    (the in-memory program's batch; a short last batch padded with its last index): what
    host-fed data gathers on the host for the fed block. ``order_of``:
    :func:`jaxgd.program.epoch_order` (the program's order of an epoch's positions)."""
    plan = spec.plan
    bsz = plan.batch_size * spec.accumulate
    epoch, pos = t // plan.steps_per_epoch, t % plan.steps_per_epoch
    is_last = (plan.last_batch_size > 0) & (pos == plan.full_steps)
    size = jnp.where(is_last, plan.last_batch_size, bsz)
    at = jnp.where(is_last, plan.full_steps * bsz, pos * bsz)
    idx = at + jnp.minimum(jnp.arange(bsz, dtype=jnp.int32), size - 1)
    order = order_of(spec, key, epoch, orders)
    return idx if order is None else order(idx)
