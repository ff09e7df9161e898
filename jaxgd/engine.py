"""The engine: the host-side runtime between the front doors and the compiled program.

Front doors (``fit``, ``sweep``) -> axes -> groups -> **engine** -> program -> results.
:class:`Engine` advances training states from one evaluation to another through the
compiled program (:meth:`Engine.advance`, the one driver): ``fit`` is one call of one
configuration, a plain sweep runs its groups in chunks (:meth:`Engine.run_plans`,
resumable from the run folder), and an adaptive search advances a
:class:`jaxgd.population.Population` between its decisions. Observers
(:mod:`jaxgd.observers`) are told of every boundary. This module holds, in order: the
mesh, the memory estimate and the chunk plan (the agreement of the processes of a
multi-process run is :mod:`jaxgd.processes`), the inputs of a call and their sharding,
compile timing (:class:`CompileClock`), the :class:`Engine`, and the host loop over a call's blocks
(:func:`run_blocks`), which with ``checkpoint_every`` (:mod:`jaxgd.checkpoint`) ends
blocks at checkpoint boundaries and saves the call's state there (:class:`Resume` goes
on from it).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import lossform
from .caches import spare_memory_maps
from .checkpoint import Checkpointer
from .feed import Feeder, HostData, batch_indices, batch_rows, fed_sharding, place_block
from .groups import Group
from .history import PACKED, HistoryLayout, per_step
from .hostloop import host_program, program_for
from .loop import layout, state_axes, state_layout
from .observers import Block, Call, Observer
from .outputs import host_outputs
from .prepare import Prepared, seeds_key_stack, tc_array
from .processes import agree_any, agree_cached, agree_floats, host_trees, replicated_bool, to_host
from .program import Program, epoch_order
from .spec import ProgramSpec, Traced, evals_of, float_dtype, metric_dtype


def default_mesh() -> jax.sharding.Mesh | None:
    """All devices of all processes on one ``"config"`` axis, or None for one device."""
    devs = jax.devices()
    if len(devs) == 1:
        return None
    return jax.sharding.Mesh(np.asarray(devs), ("config",))


def config_devices(mesh) -> int:
    """How many ways the configurations are split: the size of the mesh's ``"config"``
    axis (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape["config"])


def data_sharding(mesh):
    """The sharding that splits a batch's samples over the mesh's ``"data"`` axis, or None
    (no such axis, or one of size 1)."""
    if mesh is None or mesh.shape.get("data", 1) == 1:
        return None
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    return NamedSharding(mesh, P("data"))


def check_mesh(mesh) -> None:
    """A mesh given to ``sweep``: axes named ``"config"`` and optionally ``"data"``."""
    names = getattr(mesh, "axis_names", None)
    if (not isinstance(mesh, jax.sharding.Mesh) or "config" not in names
            or not set(names) <= {"config", "data"}):
        raise ValueError(
            f"mesh={mesh!r} must be a jax.sharding.Mesh with an axis named 'config' and "
            "optionally one named 'data' (e.g. Mesh(np.array(jax.devices()).reshape(2, 4), "
            "('config', 'data')); all-data: reshape(1, n))")


def check_data_axis(mesh, groups) -> None:
    """Every batch a step computes (``batch_size`` samples, the last batch of an epoch, a
    micro-batch of ``accumulate``) splits evenly over the mesh's ``"data"`` axis."""
    n = 1 if mesh is None else int(mesh.shape.get("data", 1))
    if n == 1:
        return
    for g in groups:
        spec = g.prepared.spec
        plan = spec.plan
        sizes = {"batch_size": plan.batch_size // spec.accumulate}
        if plan.last_batch_size:
            sizes["the last batch of an epoch"] = plan.last_batch_size
        for what, b in sizes.items():
            if b % n:
                raise ValueError(
                    f"{what} = {b} does not split over the mesh's 'data' axis of {n} "
                    f"devices (batch_size={plan.batch_size // spec.accumulate}, "
                    f"n={plan.n}, drop_last={plan.drop_last}): choose sizes divisible by "
                    f"{n}, or drop_last=True")


def bytes_per_config(prep: Prepared, epochs: int) -> int:
    """Device memory one configuration of a chunk needs (a rough upper bound).

    Parameters and their copies (gradient, update, optimizer state, best parameters, and
    the parameters and optimizer state the divergence guard keeps from the evaluation's
    start), a
    step's activations, the history rows a program call keeps on the device (history
    blocks hold at most :data:`jaxgd.program.HISTORY_BLOCK_BYTES` for the whole call, or
    ``HISTORY_MIN_ROWS`` rows per configuration; the host keeps the evaluations run) and
    the intermediates of the loss over the whole training set: the full-data metrics pass
    (``metrics="full"``) and the initial loss evaluate every configuration on all N
    samples at once (e.g. 4*N bytes of predictions per configuration for a linear model,
    more for wide outputs or hidden layers).
    """
    from . import program

    spec = prep.spec
    pbytes = sum(int(np.prod(p.shape)) * p.dtype.itemsize for p in jax.tree.leaves(prep.params))
    _, n_evals = program.evals_of(spec)
    row = program.history_row_bytes(spec, prep.params, prep.numeric)
    hist = row * min(n_evals, program.HISTORY_MIN_ROWS)
    # params, gradient, new params, optimizer state (<= 3 copies), best params, and the
    # guard's copy of params and optimizer state from the evaluation's start
    act = 4 * spec.plan.batch_size * spec.accumulate * 64  # activations of a step, rough
    full = full_pass_bytes(prep) if spec.metrics != "batch" or spec.track_init else 0
    return pbytes * 12 + hist + act + full


_FULL_PASS: dict[Any, int] = {}  # (loss, argument shapes) -> full_pass_bytes


def full_pass_bytes(prep: Prepared) -> int:
    """Bytes of the intermediates of ``loss(params, data)`` on all N samples (their sum:
    a bound on what the forward pass, and the gradient's residuals, hold at once; traced
    once per loss and argument shapes)."""
    spec, params, data = prep.spec, prep.params, prep.data
    n_train = spec.plan.n
    shapes = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((n_train,) + a.shape[1:], a.dtype), data)
    return lossform.by_shapes(_FULL_PASS, spec.loss, (params, shapes),
                              lambda: _pass_bytes(spec.loss, params, shapes))


def _pass_bytes(loss, params, shapes) -> int:
    try:
        jaxpr = jax.make_jaxpr(loss)(params, shapes).jaxpr
    except Exception:  # noqa: BLE001 - checked by prepare already; fall back to the data
        return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(shapes))
    total = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            aval = getattr(v, "aval", None)
            if aval is not None and hasattr(aval, "shape") and hasattr(aval, "dtype"):
                total += int(np.prod(aval.shape)) * np.dtype(aval.dtype).itemsize
    return total


Stream = tuple[int, int]  # (seed, fold or -1): owns a data order


class ChunkPlan(NamedTuple):
    """A block of a group's streams, cut into ``n_chunks`` program calls of equal width."""

    group_index: int
    tag: str  # the chunk files' prefix in a run folder
    group: Group
    streams: list[Stream]
    per_stream: list[list[int]]  # per stream: its rows (indices into group.rows)
    width: int  # configurations per stream and call
    n_chunks: int


def plan_chunks(groups: list[Group], chunk_size, memory_budget, epochs, ndev):
    """Every group's streams split into blocks, each block into chunks of one width."""
    budget = memory_budget or (2 << 30)
    plans = []
    for gi, g in enumerate(groups):
        streams = sorted({(r.seed, r.fold if r.fold is not None else -1) for r in g.rows})
        sidx = {st: k for k, st in enumerate(streams)}
        per_stream: list[list[int]] = [[] for _ in streams]
        for i, r in enumerate(g.rows):
            per_stream[sidx[(r.seed, r.fold if r.fold is not None else -1)]].append(i)
        cap = chunk_size or max(1, min(4096, budget // max(1, bytes_per_config(g.prepared,
                                                                                epochs))))
        # more streams (seeds x folds) than a call may hold: split the streams too
        sb = min(len(streams), cap)
        for bi, b0 in enumerate(range(0, len(streams), sb)):
            blk_streams, blk_rows = streams[b0:b0 + sb], per_stream[b0:b0 + sb]
            S = len(blk_streams)
            C = max(len(v) for v in blk_rows)
            width = max(1, min(C, cap // S))
            width = -(-width // ndev) * ndev
            tag = f"g{gi:03d}" if len(streams) <= sb else f"g{gi:03d}_s{bi:04d}"
            plans.append(ChunkPlan(gi, tag, g, blk_streams, blk_rows, width, -(-C // width)))
    return plans


def chunk_configs(p: ChunkPlan, ci: int) -> np.ndarray:
    """The sorted configuration indices that chunk ``ci`` of a plan holds."""
    idx = [p.group.rows[r].config for rows in p.per_stream
           for r in rows[ci * p.width:(ci + 1) * p.width]]
    return np.sort(np.asarray(idx, np.int64))


def chunk_valid(per_stream, ci, width) -> np.ndarray:
    """[streams, width]: True for the real configurations of chunk ``ci`` (False: padding)."""
    valid = np.zeros((len(per_stream), width), bool)
    for s, rows in enumerate(per_stream):
        valid[s, :len(rows[ci * width:(ci + 1) * width])] = True
    return valid


class ChunkInputs(NamedTuple):
    """One program call's configurations and inputs."""

    grid_rows: np.ndarray  # [S, width] row numbers into group.rows (padding repeats one)
    valid: np.ndarray  # [S, width] False for padding
    traced: Traced  # traced values [S, width] (host arrays; hyper-parameters by name)
    keys: Any  # [S] PRNG keys (the streams' data orders)
    tidx: Any  # [S, n_train] training indices of a fold, or None
    vidx: Any


def chunk_inputs(g: Group, streams: list[Stream], per_stream: list[list[int]], ci: int,
                 width: int, fold_split) -> ChunkInputs:
    """The inputs of chunk ``ci`` (``width`` configurations per stream) of ``g``'s rows
    ``per_stream``."""
    spec, dt = g.prepared.spec, float_dtype(g.prepared.params)
    S = len(streams)
    grid_rows = np.zeros((S, width), np.int64)
    valid = chunk_valid(per_stream, ci, width)
    for s, rows in enumerate(per_stream):
        part = rows[ci * width:(ci + 1) * width]
        grid_rows[s, :] = rows[0]
        grid_rows[s, :len(part)] = part
    tc_np = {k: np.asarray([[g.numeric[r][k] for r in row] for row in grid_rows])
             for k in spec.numeric_names}
    values = {k: tc_array(k, v, dt) for k, v in tc_np.items()}  # host arrays, sharded below
    bits = (np.stack([np.stack([g.key_bits[r] for r in row]) for row in grid_rows])
            if spec.form.key else None)
    # the progress bar counts the active configurations, not padding
    traced = Traced(bits, valid if spec.progress else None, values)
    keys = seeds_key_stack([s for s, _ in streams])  # made on the host: no program
    if fold_split is not None and streams[0][1] >= 0:
        tidx = jnp.asarray(np.stack([fold_split[f][0] for _, f in streams]).astype(np.int32))
        vidx = jnp.asarray(np.stack([fold_split[f][1] for _, f in streams]).astype(np.int32))
    else:
        tidx = vidx = None
    return ChunkInputs(grid_rows, valid, traced, keys, tidx, vidx)


def program_args(prep: Prepared, ch: ChunkInputs, data, mesh):
    """(the program's ``(params0, data, val, traced, keys, tidx, vidx, state0)``, on the mesh
    when there is one; the function that makes a host scalar a program input).

    On one device the traced values (host arrays) go to the scan plan's programs as they
    are: a jitted call takes a few host scalars for ~2 us each, where ``jax.device_put``
    of them costs ~35 us each. The host plan calls its jitted pieces at every step, so
    its traced values are put on the device once, here."""
    spec = prep.spec
    traced = ch.traced
    if mesh is None and spec.loop == "host":
        traced = jax.device_put(traced)
    args = (None if spec.init_fn is not None else prep.params, data,
            prep.val_data, traced, ch.keys, ch.tidx, ch.vidx, prep.state)
    if mesh is None:
        return args, lambda v: v
    return shard_args(mesh, args), functools.partial(replicated, mesh)


def shard_args(mesh, args):
    """Global arrays: configurations split over the mesh, everything else replicated."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    params, data, val, traced, keys, tidx, vidx, state = args
    rep = NamedSharding(mesh, P())
    cfg = NamedSharding(mesh, P(None, "config"))

    def put(x, sharding):
        if x is None:
            return None
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            kd = np.asarray(jax.random.key_data(x))
            arr = jax.make_array_from_callback(kd.shape, sharding, lambda i: kd[i])
            return jax.random.wrap_key_data(arr)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    tree_put = lambda t, s: jax.tree.map(lambda x: put(x, s), t)  # noqa: E731
    return (tree_put(params, rep), tree_put(data, rep), tree_put(val, rep),
            tree_put(traced, cfg), put(keys, rep), put(tidx, rep), put(vidx, rep),
            tree_put(state, rep))


def replicated(mesh, value):
    """A host value as a global array every device holds whole (the same on every
    process)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, NamedSharding(mesh, P()),
                                        lambda i: host[i])


def chunk_record(outputs: dict[str, Any], configs) -> dict[str, Any]:
    """A chunk's result as the run folder stores it and :meth:`jaxgd.SweepResult.from_runs`
    reads it: the program's outputs by name (host arrays, leading axis = configuration;
    ``history`` a dict of arrays) and, under ``"config"``, the sweep indices of the
    configurations they belong to."""
    return {**outputs, "config": np.asarray(configs, np.int64)}


def single_inputs(prep: Prepared, keys, hparams) -> ChunkInputs:
    """The inputs of one configuration (``fit``): a block of 1 stream x 1 configuration,
    its traced values host arrays, as :func:`chunk_inputs`' (see :func:`program_args`);
    ``keys``: its key stacked [1] (:func:`jaxgd.prepare.seeds_key_stack`)."""
    spec, dt = prep.spec, float_dtype(prep.params)
    values = {k: tc_array(k, v, dt)[None, None] for k, v in prep.numeric.items()}
    # the configuration's words of its loss keys (jaxgd.loss_key)
    bits = (lossform.key_bits(lossform.key_hparams(hparams or {}))[None, None]
            if spec.form.key else None)
    one = np.zeros((1, 1), np.int64)
    # the traced values as host arrays (a device_put of them costs 0.2 ms)
    return ChunkInputs(one, one == 0, Traced(bits, None, values), keys, None, None)


# ------------------------------------------------------------------ compile timing

class CompileClock:
    """JAX's compile seconds while a run is going (a ``jax.monitoring`` listener that is
    registered when the run starts and removed when it ends).

    The longest compile seen per program spec is kept for the process (as the compiled
    programs are): an adaptive search weighs a new width's compile against the compute
    it saves, and a program compiled by an earlier run compiles for free in this one.
    """

    longest: dict[Any, float] = {}  # per program spec: the longest compile seen (seconds)

    def __init__(self):
        self.seconds = 0.0

    def _listen(self, event: str, secs: float, **_: Any) -> None:
        if event.startswith("/jax/core/compile/"):
            self.seconds += secs

    def __enter__(self) -> CompileClock:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)

    def note(self, spec, c0: float) -> float:
        """The compile seconds since ``c0``, remembered for ``spec``."""
        secs = self.seconds - c0
        self.longest[spec] = max(secs, self.longest.get(spec, 0.0))
        return secs


# ------------------------------------------------------------------ the engine

class Resume(NamedTuple):
    """A program call's checkpoint: where it was and what it held there."""

    at: int  # the evaluation the call goes on from
    state: Any  # the program state, host arrays with leading [stream, config] axes
    hist: dict[str, np.ndarray]  # the packed history rows from the call's start to ``at``
    feed: dict[str, np.ndarray] = {}  # an iterable's position there (Feeder.position)


def device_state(state, keys, traced, mesh):
    """A host state with leading [stream, config] axes in the program's layout for
    ``keys``/``traced``, on the device (split over ``mesh``'s configurations)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    st = state_layout(state, keys, traced)
    if mesh is None:
        return jax.tree.map(jnp.asarray, st)
    one_s, one_c = layout(keys, traced)
    sh = NamedSharding(mesh, P() if one_c else P("config") if one_s else P(None, "config"))
    return jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, sh,
                                                               lambda i: a[i]), st)


def checkpoint_state(arrays: dict[str, np.ndarray], at: int, shapes, ch: ChunkInputs,
                     configs) -> Resume | None:
    """A saved checkpoint (:meth:`Engine.saver`'s arrays) as a :class:`Resume` of the
    call with inputs ``ch`` whose state has the ``shapes`` of :func:`state_shapes`; None
    when it belongs to other configurations or is shaped otherwise."""
    leaves, treedef = jax.tree.flatten(shapes)
    n = len(leaves)
    if (f"s{n}" in arrays or any(f"s{i}" not in arrays for i in range(n))
            or not np.array_equal(arrays.get("config"), np.asarray(configs, np.int64))):
        return None
    S, W = ch.grid_rows.shape
    one_s, one_c = layout(ch.keys, ch.traced)
    kept = 0 if one_c else 1 if one_s else 2  # leading axes the program's layout keeps
    for i, sh in enumerate(leaves):
        a = arrays[f"s{i}"]
        if a.shape != (S, W) + tuple(sh.shape[kept:]) or a.dtype != np.dtype(sh.dtype):
            return None
    hist = {k[2:]: v for k, v in arrays.items() if k.startswith("h/")}
    if PACKED not in hist or any(v.shape[:2] != (S, W) for v in hist.values()) \
            or hist[PACKED].shape[2] != at or at <= 0:
        return None
    feed = {k: v for k, v in arrays.items() if k.startswith("feed/")}
    return Resume(at, jax.tree.unflatten(treedef, [arrays[f"s{i}"] for i in range(n)]), hist,
                  feed)


def state_shapes(prep: Prepared, ch: ChunkInputs, data):
    """The program state of a call with the inputs ``ch`` (shapes in the program's
    layout; traced, not compiled)."""
    spec = prep.spec
    prog, _ = program_for(spec, prep.params, ch.traced.values,
                          int(np.prod(ch.grid_rows.shape)))
    data = None if isinstance(data, HostData) else data  # host-fed: the state needs none
    return jax.eval_shape(
        prog.init, None if spec.init_fn is not None else prep.params, data, prep.val_data,
        ch.traced, ch.keys, ch.tidx, ch.vidx, prep.state)


class Advanced(NamedTuple):
    """What a program call returned (leading axes [streams, width])."""

    state: Any  # the program state after the call, in the program's layout, on the device
    out: Any  # jaxgd.spec.ProgramOutput of host arrays (history: see ``hist``)
    hist: dict[str, np.ndarray]  # the packed history rows of the evaluations run
    layout: HistoryLayout  # the history's columns (``hist`` holds the packed scalars)
    keys: Any  # the call's stream keys and traced values (they fix the state's layout)
    traced: Traced
    compile_s: float  # JAX compile seconds during the call
    seconds: float  # wall seconds of the call

    def host_state(self) -> Any:
        """The state with its leading [stream, config] axes, as host arrays."""
        return jax.tree.map(to_host, state_axes(self.state, self.keys, self.traced))

    def output(self) -> Any:
        """The program's outputs with the history unpacked by name."""
        return self.out._replace(history=self.layout.unpack(dict(self.hist),
                                                            self.out.init_loss.dtype))

    def opt_state(self) -> Any:
        """The optimizer state of a call of one configuration: the device's arrays as
        the program left them (host arrays where another process holds part of one)."""
        one_s, one_c = layout(self.keys, self.traced)
        tree = self.state.opt_state
        if one_c:  # the state's own layout (no [stream, config] axes to take off)
            return jax.tree.map(lambda a: a if a.is_fully_addressable else to_host(a), tree)
        host = state_axes(jax.tree.map(to_host, tree), self.keys, self.traced)
        return jax.tree.map(lambda a: a[0, 0], host)


# the host's order function of host-fed arrays (one object: its jitted form is cached)
_BATCH_INDICES = functools.partial(batch_indices, order_of=epoch_order)


class Engine:
    """Advances training states between evaluations: ``fit`` (one configuration), a sweep
    (groups cut into chunks) and an adaptive search (a population advanced rung by rung)
    all run their programs through :meth:`advance`.

    Args:
      data, val_data: the training and validation data (validated).
      fold_split: the k-fold index split, or None.
      mesh: the device mesh the configurations are split over (None: one device).
      observers: :class:`jaxgd.observers.Observer` objects told of every boundary.
      checkpoint: a :class:`jaxgd.checkpoint.Checkpointer` (``checkpoint_every``): calls
        given a ``save`` function return to the host and save at its boundaries.

    Use as ``with engine.running(n_calls):`` around the calls: the compile clock runs and
    the observers see the run start and end.
    """

    def __init__(self, data, val_data=None, fold_split=None, mesh=None,
                 observers: Sequence[Observer] = (), checkpoint: Checkpointer | None = None):
        self.data, self.val_data, self.fold_split = data, val_data, fold_split
        self.checkpoint = checkpoint
        self.mesh = mesh
        self.ndev = config_devices(mesh)  # configurations are padded to a multiple
        self.observers = list(observers)
        self.clock = CompileClock()
        self.resumed = False  # a call went on from a checkpoint (resume_of)
        # the block's rows are unpacked for observers only when one reads them
        self.rows_wanted = any(type(o).block_rows is not Observer.block_rows
                               for o in self.observers)

    def notify(self, event: str, *args) -> None:
        for o in self.observers:
            getattr(o, event)(*args)

    @contextlib.contextmanager
    def running(self, n_calls: int | None = None):
        spare_memory_maps()
        with self.clock:
            self.notify("run_start", n_calls)
            try:
                yield self
            finally:
                self.notify("run_end")

    def advance(self, prep: Prepared, ch: ChunkInputs, start: int, end: int, call: Call, *,
                state: Callable[[Any, Any], Any] | None = None, pad: bool = False,
                resume: Resume | None = None, save: Callable[..., None] | None = None
                ) -> Advanced:
        """Evaluations ``start`` up to ``end`` of the configurations of ``ch``, from their
        initial state (``state`` None) or from ``state(keys, traced)`` (a state in the
        program's layout for the call's sharded keys and traced values).

        With the engine's ``checkpoint``, ``save(at, host_state, history, feed)`` is called
        at its boundaries (``host_state`` with leading [stream, config] axes, ``history``
        the packed rows since ``start``, ``feed`` an iterable's position there,
        :meth:`jaxgd.feed.Feeder.position`); ``resume`` (a checkpoint of this call) starts
        from its state and evaluation instead, the history returned still from
        ``start``."""
        prep = self.sharded(prep)
        spec = prep.spec
        S, width = ch.grid_rows.shape
        prog, layout = program_for(spec, prep.params, ch.traced.values, S * width)
        host = isinstance(self.data, HostData)
        args, put_scalar = program_args(prep, ch, None if host else self.data, self.mesh)
        params0, data, val, traced, keys, tidx, vidx, state0 = args
        feeder = (self.feeder(prep, ch, None if resume is None else resume.feed) if host
                  else None)
        if resume is not None:
            state = lambda k, t: device_state(resume.state, k, t, self.mesh)  # noqa: E731
        at = start if resume is None else resume.at
        keep = None if save is None else (
            lambda a, st, h: save(a, jax.tree.map(to_host, state_axes(st, keys, traced)), h,
                                  {} if feeder is None else feeder.position(a)))
        self.notify("call_start", call)
        if resume is not None:  # the rows of the checkpoint, as one block
            self.block_done(prep, layout, call, start, resume.at, dict(resume.hist))
        try:
            t0, c0 = time.perf_counter(), self.clock.seconds
            st = (prog.init(params0, data, val, traced, keys, tidx, vidx, state0)
                  if state is None else state(keys, traced))
            st, out, hist = run_blocks(
                prog, spec, st, at, end, (data, val, traced, keys, tidx, vidx),
                to_host=to_host, put_scalar=put_scalar, pad=pad,
                on_block=lambda first, at, part: self.block_done(prep, layout, call, first,
                                                                 at, part),
                checkpoint=self.checkpoint if keep is not None else None, save=keep,
                origin=start, prefix=None if resume is None else resume.hist, feed=feeder)
        finally:
            if feeder is not None:
                feeder.close()
            self.notify("call_end", call)
        comp = self.clock.note(spec, c0)
        return Advanced(st, out, hist, layout, keys, traced, comp, time.perf_counter() - t0)

    def sharded(self, prep: Prepared) -> Prepared:
        """``prep`` with each batch split over the mesh's ``"data"`` axis, if it has one."""
        sharding = data_sharding(self.mesh)
        if sharding is None:
            return prep
        return prep._replace(spec=prep.spec._replace(batch_sharding=sharding))

    def feeder(self, prep: Prepared, ch: ChunkInputs,
               resume: dict[str, np.ndarray] | None = None) -> Feeder:
        """The fed blocks of a host-fed call (:mod:`jaxgd.feed`), placed on the device; on
        a mesh each batch split over its ``"data"`` axis (:func:`jaxgd.feed.fed_sharding`),
        this process supplying only the rows its devices hold. ``resume``: a checkpoint's
        position of an iterable (:meth:`jaxgd.feed.Feeder.position`)."""
        spec = prep.spec
        if self.mesh is None:
            return Feeder(self.data, spec, ch.keys, prep.orders, jax.device_put,
                          _BATCH_INDICES, resume=resume)
        bsz = spec.plan.batch_size * spec.accumulate
        rows = batch_rows(self.mesh, bsz)
        put = functools.partial(place_block, fed_sharding(self.mesh), rows, bsz)
        return Feeder(self.data, spec, ch.keys, prep.orders, put, _BATCH_INDICES, rows=rows,
                      resume=resume)

    def block_done(self, prep: Prepared, layout: HistoryLayout, call: Call, first: int,
                   at: int, part: dict[str, np.ndarray]) -> None:
        """Tell the observers of a finished block: its rows (``block_rows``, when an
        observer reads them and the call's configurations are known), then ``block_end``."""
        if self.rows_wanted and call.configs is not None:
            self.notify("block_rows", call, block_of(prep, layout, call.configs, first, part))
        self.notify("block_end", call, at)

    def run_chunk(self, p: ChunkPlan, ci: int, call: Call, store=None) -> dict[str, Any]:
        """Run chunk ``ci`` of a plan; returns the program's outputs (host arrays) per
        configuration, with their indices under ``"config"``. With a run folder ``store``
        and the engine's ``checkpoint``, the chunk goes on from its last checkpoint there
        and saves new ones."""
        g, S, width = p.group, len(p.streams), p.width
        spec = g.prepared.spec
        ch = chunk_inputs(g, p.streams, p.per_stream, ci, width, self.fold_split)
        call = call._replace(configs=slot_configs(g, ch))
        tag, configs = f"{p.tag}_c{ci:05d}", chunk_configs(p, ci)
        out = self.advance(g.prepared, ch, 0, evals_of(spec)[1], call,
                           resume=self.resume_of(store, tag, g.prepared, ch, configs),
                           save=self.saver(store, tag, configs)).output()
        idx = [g.rows[ch.grid_rows[s, c]].config for s in range(S) for c in range(width)
               if ch.valid[s, c]]
        sel = np.nonzero(ch.valid.reshape(-1))[0]
        flat = jax.tree.map(lambda a: a.reshape((S * width,) + a.shape[2:])[sel], out)
        return chunk_record(flat._asdict(), idx)

    def saver(self, store, tag: str, configs) -> Callable[..., None] | None:
        """The ``save`` function of :meth:`advance` for a call of ``configs`` (sorted
        sweep indices) saving checkpoints as ``tag`` in ``store`` (None: no checkpoints)."""
        if store is None or self.checkpoint is None:
            return None

        def save(at: int, state, hist: dict[str, np.ndarray],
                 feed: dict[str, np.ndarray] | None = None) -> None:
            arrays = {f"s{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}
            arrays.update({f"h/{k}": v for k, v in hist.items()})
            arrays.update(feed or {})
            arrays["config"] = np.asarray(configs, np.int64)
            store.save_checkpoint(tag, arrays, at)

        return save

    def resume_of(self, store, tag: str, prep: Prepared, ch: ChunkInputs, configs
                  ) -> Resume | None:
        """The newest valid checkpoint of the call ``tag`` in ``store`` (the same
        configurations, the state shaped as this call's), or None."""
        if store is None or self.checkpoint is None:
            return None
        shapes = state_shapes(prep, ch, self.data)
        got = None
        for arrays, meta in store.load_checkpoints(tag):
            got = checkpoint_state(arrays, meta["at"], shapes, ch, configs)
            if got is not None:
                break
        got = agree_cached(got)
        self.resumed |= got is not None
        return got

    def run_plans(self, plans: list[ChunkPlan], n_groups: int, store=None
                  ) -> list[dict[str, Any]]:
        """Every chunk of ``plans`` (a plain sweep), each read back from the run folder
        ``store`` when it holds it, else run (and saved there)."""
        results = []
        with self.running(sum(p.n_chunks for p in plans)), self.catching(store):
            for p in plans:
                spec = p.group.prepared.spec
                for ci in range(p.n_chunks):
                    call = Call(spec, p.group_index, n_groups, p.width * len(p.streams), 0,
                                evals_of(spec)[1], f"group {p.group_index + 1} chunk {ci + 1}")
                    tag = f"{p.tag}_c{ci:05d}"
                    cached = self.load_chunk(store, p, ci, tag)
                    if cached is None:
                        cached = self.run_chunk(p, ci, call, store)
                        if store is not None:
                            store.save_chunk(tag, cached)
                            store.drop_checkpoints(tag)
                    else:
                        self.read_back(call._replace(cached=True), cached)
                    results.append(cached)
        return results

    def catching(self, store):
        """The checkpoint's signal handlers while a run saving to ``store`` goes on (see
        :mod:`jaxgd.checkpoint`); nothing without checkpoints."""
        if store is None or self.checkpoint is None:
            return contextlib.nullcontext()
        return self.checkpoint.catching()
    def read_back(self, call: Call, record: dict[str, Any]) -> None:
        """Tell the observers of a chunk read back from the run folder: its call, and
        its history rows as one block (when an observer reads them)."""
        self.notify("call_start", call)
        if self.rows_wanted:
            configs = np.asarray(record["config"], np.int64)
            self.notify("block_rows", call._replace(configs=configs[None]),
                        Block(0, configs, dict(record["history"])))
        self.notify("call_end", call)

    @staticmethod
    def load_chunk(store, p: ChunkPlan, ci: int, tag: str) -> dict[str, Any] | None:
        """Chunk ``ci`` as the run folder holds it, if every process has it and it holds
        the configurations this plan puts in it; else None."""
        st0 = p.group.prepared.state
        cached = (store.load_chunk(tag, jax.tree.structure(p.group.prepared.params),
                                   None if st0 is None else jax.tree.structure(st0))
                  if store is not None else None)
        if cached is not None and not np.array_equal(
                np.sort(np.asarray(cached.get("config", []))), chunk_configs(p, ci)):
            cached = None  # written with another chunk width: recompute
        return agree_cached(cached)


def slot_configs(g: Group, ch: ChunkInputs, rows: Sequence[int] | None = None) -> np.ndarray:
    """[streams, width] the sweep's configuration index of each slot of a call (-1 for
    padding); ``ch.grid_rows`` index ``g.rows`` (or ``g.rows[rows[...]]`` when given)."""
    pick = (lambda r: g.rows[r].config) if rows is None else (lambda r: g.rows[rows[r]].config)
    cfg = np.vectorize(pick, otypes=[np.int64])(ch.grid_rows)
    return np.where(ch.valid, cfg, -1)


def block_of(prep: Prepared, layout: HistoryLayout, configs: np.ndarray, first: int,
             part: dict[str, np.ndarray]) -> Block:
    """A block's packed host history as a :class:`Block`: columns by name (as the
    results unpack them), the padding slots left out."""
    hist = layout.unpack(dict(part), metric_dtype(prep.params))
    flat = np.asarray(configs).reshape(-1)
    sel = np.nonzero(flat >= 0)[0]
    n = flat.size
    return Block(first, flat[sel],
                 {k: v.reshape((n,) + v.shape[2:])[sel] for k, v in hist.items()})


def run_blocks(prog: Program, spec: ProgramSpec, st, start: int, end: int, args, *,
               to_host: Callable[[Any], Any] = np.asarray,
               put_scalar: Callable[[Any], Any] = lambda v: v, pad: bool = False,
               on_block: Callable[[int, int, dict], None] = lambda first, at, part: None,
               checkpoint: Checkpointer | None = None,
               save: Callable[[int, Any, dict[str, np.ndarray]], None] | None = None,
               origin: int | None = None, prefix: dict[str, np.ndarray] | None = None,
               feed: Feeder | None = None):
    """Evaluations ``start`` up to ``end`` (exclusive) from state ``st`` (the program's
    layout), stopping early when no configuration is active; ``args = (data, val, traced,
    keys, tidx, vidx)``; ``on_block(first, at, part)`` is called on the host after each
    block (``first``: the evaluation of its first row; ``at``: the evaluation the next
    block starts from, at most ``end``; ``part``: its packed history rows, host arrays).
    Returns (state, host outputs, packed host history of the evaluations run: ``end -
    start`` rows with ``pad``, NaN for those not run).

    With a ``checkpoint`` (:class:`jaxgd.checkpoint.Checkpointer`), blocks end where it
    says and ``save(at, state, history since origin)`` is called where it is due. A call
    resumed from a checkpoint at ``start`` passes the call's first evaluation as
    ``origin`` and the history rows ``origin .. start`` as ``prefix``: the history
    returned then starts at ``origin``, as long as a call never cut would give it.

    With host-fed data, ``feed`` (:class:`jaxgd.feed.Feeder`) gives each block's data (the
    program's ``data`` argument, ``args[0]``): built in the background while the previous
    block runs. A block holding an iterable's batch of fewer samples than the first runs
    in the host plan (:func:`host_twin`), that batch's update a jitted call of its own.

    The decision to run another block comes from a value every device (and process)
    holds whole, so every process runs the same number of blocks. ``to_host`` brings an
    output array home; ``put_scalar`` makes a block's start index a program input."""
    K, _ = evals_of(spec)
    origin = start if origin is None else origin
    parts = [] if prefix is None else [prefix]
    at, more = start, True
    while at < end and more:
        stop = end if checkpoint is None else checkpoint.next_end(at, end, prog.rows)
        if checkpoint is not None and jax.process_count() > 1:
            stop = int(agree_floats([stop])[0])  # process 0's timing decides
        run, kw = prog, {}
        if feed is not None:  # this block's batches (the next one's start building)
            block, sizes = feed.block(at, stop, prog.rows, end)
            args = (block,) + tuple(args[1:])
            if sizes is not None:  # a batch of another size: the host plan's calls
                run, kw = host_twin(prog, spec), {"sizes": sizes}
        st, out, hist, more = run.block(st, put_scalar(np.int32(at)),
                                        put_scalar(np.int32(stop)), *args, **kw)
        ran = min(at + prog.rows, stop) - at
        # one read of the block's results: its history, and the outputs after the last
        # block (read after the loop when the configurations stop earlier)
        final = at + ran >= end
        hist, out_h = host_trees((hist, out if final else None), to_host)
        parts.append(cut_rows(hist, ran, K))
        first, at = at, at + ran
        on_block(first, at, parts[-1])
        more = replicated_bool(more)
        if checkpoint is not None and more and at < end:
            if agree_any(checkpoint.due(at, ran)):
                save(at, st, joined_history(spec, parts, origin, at, at, prog.rows, False))
                checkpoint.saved()
    if out is None:  # the scan plan returns none: its last state's (the same selections)
        out = host_outputs(spec, st, args[3], args[2], to_host)
    else:
        out = out_h if final else host_trees(out, to_host)
    reach = end if more else int(np.max(out.evals_run))
    return st, out, joined_history(spec, parts, origin, end, reach, prog.rows, pad)


def host_twin(prog: Program, spec: ProgramSpec) -> Program:
    """The host plan's program (:func:`jaxgd.hostloop.host_program`, one update per call)
    in place of the scan plan's ``prog`` for a block with batches of several sizes (the
    same state and block interface); ``prog`` itself in the host plan."""
    if spec.loop == "host":
        return prog
    return host_program(spec._replace(loop="host", host_steps=1), prog.rows)


def cut_rows(hist: dict[str, Any], n: int, K: int) -> dict[str, Any]:
    """The first ``n`` evaluations' rows of a history block (``K`` step rows each for
    ``step_loss``)."""
    return {k: h[:, :, :n * K] if per_step(k) else h[:, :, :n] for k, h in hist.items()}


def joined_history(spec: ProgramSpec, parts: list[dict[str, np.ndarray]], origin: int,
                   end: int, reach: int, rows: int, pad: bool) -> dict[str, np.ndarray]:
    """The history rows of ``parts`` (consecutive, from evaluation ``origin``) as a call
    from ``origin`` to ``end`` in blocks of ``rows`` returns them: up to the end of the
    block holding evaluation ``reach - 1`` (NaN past what was run), at most to ``end``
    (with ``pad``: exactly to ``end``)."""
    K, _ = evals_of(spec)
    n = end - origin
    blocks = -(-(reach - origin) // rows) * rows
    hist = {}
    for k in parts[0]:
        h = np.concatenate([p[k] for p in parts], axis=2)
        step = per_step(k)
        want = min(n * K, spec.epochs - origin * K) if step else n
        have = want if pad else min(want, blocks * K if step else blocks)
        h = h[:, :, :have]
        if h.shape[2] < have:
            fill = np.full(h.shape[:2] + (have - h.shape[2],) + h.shape[3:], np.nan, h.dtype)
            h = np.concatenate([h, fill], axis=2)
        hist[k] = h
    return hist
