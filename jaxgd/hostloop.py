"""The host plan of the compiled program: an evaluation's updates as host calls of a jitted
function of ``k`` updates, then the evaluation as a jitted call of its own.

The scan plan (:func:`jaxgd.program.build_program`) runs every evaluation's updates as a
``lax.scan`` inside one jitted call. On XLA:CPU some steps (a convolution's) run several
times slower inside a loop than jitted alone; the host plan runs the same steps
(:func:`host_steps` / :func:`host_updates`, calling
:func:`jaxgd.program.train_step` / :func:`jaxgd.program.train_at`) from a Python loop,
``k = spec.host_steps`` per call (``k = 1``: the classic jitted step, no loop in the
program; ``k > 1``: a scan of ``k``, the rest of an epoch in one shorter call), and the
evaluation (:func:`host_finish`: the same evaluation, stop checks and
history row as the scan plan's) as its own call. The state stays on the device between
calls (the step carry's buffers are donated). The same arithmetic as the scan plan (bit-identical
where XLA compiles the step alone as inside the loop; else equal to float rounding) and the
same block interface
(:class:`jaxgd.program.Program`), so the engine, resume, checkpoints, observers and
searches run it unchanged.

With ``plan="map"`` on one device the configurations are not mapped inside the jitted
calls: each runs the calls of a single configuration in turn (:func:`host_block`), the
calls a user's loop makes, since XLA:CPU runs a convolution step inside ``lax.map`` as
slowly as inside a scan (a sweep of 4 flax CNNs at ``experiments/bench_f.py``'s quick
sizes: 2.4 s mapped inside each call, 0.34-0.37 s one by one, in separate runs).

The host reads one scalar per evaluation (whether a configuration is still active), so
a block stops where the scan plan's does. Multi-process runs keep the scan plan.
``loop="auto"`` starts from :func:`resolve_loop`'s rule and, in a long run, measures
both plans (:mod:`jaxgd.autoplan`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import loop, outputs, program
from .feed import fed_input
from .history import HistoryLayout
from .program import Program
from .spec import EpochCarry, ProgramSpec, State, Traced, evals_of

CONVOLUTIONS = ("conv_general_dilated",)


def _primitives(jaxpr) -> set[str]:
    """The names of the primitives of ``jaxpr`` and of the jaxprs inside it."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


def has_convolution(fn, *args) -> bool:
    """Whether ``fn(*args)`` (traced, not run) computes a convolution."""
    return bool(_primitives(jax.make_jaxpr(fn)(*args).jaxpr) & set(CONVOLUTIONS))


def resolve_loop(loop_opt: str | int, conv: Any) -> tuple[str, int]:
    """(plan, updates per host call) of the ``loop=`` option; ``conv()``: whether the loss
    computes a convolution (asked only for ``"auto"``). Several processes run the scan
    plan whatever the option says. ``"auto"`` takes the host loop on
    a CPU backend in one process when the loss has a convolution (XLA:CPU runs a
    convolution several times slower inside a loop than jitted alone, measured by
    ``experiments/bench_f.py``), else the scan: the rule, kept in a short run; a run long
    enough to pay for trials measures both and keeps the faster (:mod:`jaxgd.autoplan`)."""
    if loop_opt == "scan" or jax.process_count() > 1:  # several processes: the scan
        return "scan", 1
    if loop_opt == "host":
        return "host", 1
    if not isinstance(loop_opt, str):
        return "host", int(loop_opt)
    return ("host", 1) if jax.default_backend() == "cpu" and conv() else ("scan", 1)


def program_for(spec: ProgramSpec, params0, tc, n_configs: int
                ) -> tuple[Program, HistoryLayout]:
    """The compiled programs of ``spec``'s plan (``spec.loop``) for ``n_configs``
    configurations per call (history blocks sized by
    :data:`jaxgd.program.HISTORY_BLOCK_BYTES`) and the layout of their history. ``tc``:
    the traced hyper-parameters by name (only the names are used)."""
    rows = program.block_rows(spec, program.history_row_bytes(spec, params0, tc), n_configs)
    prog = (host_program(spec, rows) if spec.loop == "host"
            else program.compiled_program(spec, rows))
    return prog, program.history_layout(spec, tc)


def _axes(tidx, vidx):
    return (None if tidx is None else 0), (None if vidx is None else 0)


# ------------------------------------------------ the pieces, one configuration each



def host_epoch_start(carry: EpochCarry) -> tuple[EpochCarry, jax.Array]:
    """The start of an epoch (within the budget) of the host plan: the carry with the epoch
    counted for an active configuration, and whether it is active (the mask of the
    epoch's step losses, as :func:`jaxgd.program.train_epoch`'s)."""
    a0 = carry.steps.active
    return EpochCarry(carry.steps, carry.epochs_run + a0.astype(jnp.int32)), a0


def host_steps(spec: ProgramSpec, n: int, last: bool, carry: EpochCarry, active0, epoch, s0,
               traced: Traced, key, data, tidx) -> tuple[EpochCarry, jax.Array | None]:
    """Full steps ``s0 .. s0 + n`` of ``epoch`` (``last``: the epoch's short last batch
    instead), as :func:`jaxgd.program.train_epoch` runs them: (carry, step losses or None)."""
    ctx = program.context(spec, carry.steps.params, traced, key, data, tidx)
    plan = spec.plan
    bsz = plan.batch_size * spec.accumulate
    order = program.epoch_order(spec, ctx.key, epoch, ctx.orders)
    inner = carry.steps
    step = functools.partial(program.recorded_step, spec, ctx, order)
    if last:
        inner, loss = step(inner, plan.full_steps * bsz, plan.last_batch_size, 1)
        losses = loss[None]
    elif n == 1:
        inner, loss = step(inner, s0 * bsz, bsz, spec.accumulate)
        losses = loss[None]
    else:
        inner, losses = jax.lax.scan(lambda c, s: step(c, s * bsz, bsz, spec.accumulate),
                                     inner, s0 + jnp.arange(n, dtype=jnp.int32))
    rows = jnp.where(active0, losses, jnp.nan) if spec.record_steps else None
    return EpochCarry(inner, carry.epochs_run), rows


def host_updates(spec: ProgramSpec, n: int, size: int | None, carry: EpochCarry, t0,
                 traced: Traced, key, data, tidx) -> tuple[EpochCarry, jax.Array | None]:
    """Updates ``t0 .. t0 + n`` of a step budget (:func:`jaxgd.program.train_at`): (carry,
    their step-loss rows or None). ``size``: one update (``n = 1``) on a fed batch of
    ``size`` samples (an iterable's batch smaller than the first), else None."""
    ctx = program.context(spec, carry.steps.params, traced, key, data, tidx)
    if n == 1:
        carry, row = program.train_at(spec, ctx, carry, t0, size)
        return carry, None if row is None else row[None]
    return jax.lax.scan(lambda c, t: program.train_at(spec, ctx, c, t), carry,
                        t0 + jnp.arange(n, dtype=jnp.int32))


def host_finish(spec: ProgramSpec, st: State, carry: EpochCarry, chunks, block, traced: Traced,
                key, data, val, tidx, vidx) -> tuple[State, dict[str, jax.Array]]:
    """The evaluation closing block ``block`` of the host plan (:func:`jaxgd.program.finish_block`);
    ``chunks``: the step losses of its calls in order (empty without ``record_steps``),
    NaN for the updates past the budget."""
    ctx = program.context(spec, st.params, traced, key, data, tidx)
    rows = None
    if spec.record_steps:
        K, _ = evals_of(spec)
        width = program.step_loss_width(spec)
        flat = jnp.concatenate([c.reshape(-1) for c in chunks]).astype(st.init_loss.dtype)
        flat = jnp.concatenate([flat, jnp.full((K * width - flat.shape[0],), jnp.nan,
                                               flat.dtype)])
        rows = flat.reshape(K, width)
    return program.finish_block(spec, ctx, st, carry, rows, block, val, vidx)


# ----------------------------------------------------------------- their jitted calls


class _Pieces:
    """The jitted pieces of a host-plan block (compiled per shapes; cached per spec)."""

    def __init__(self, spec: ProgramSpec, rows: int):
        self.spec, self.rows = spec, rows
        self.begin = jax.jit(self._begin)
        self.epoch_start = jax.jit(self._epoch_start, donate_argnums=0)
        self.steps = jax.jit(self._steps, static_argnums=(0, 1), donate_argnums=2)
        self.updates = jax.jit(self._updates, static_argnums=(0, 1, 2), donate_argnums=3)
        self.finish = jax.jit(self._finish, donate_argnums=(1, 3))
        self.outputs = jax.jit(self._outputs)
        self.empty = jax.jit(self._empty)
        self.split = jax.jit(self._split, static_argnums=0)
        self.join = jax.jit(self._join)

    def _call(self, fn, cfg_axes, stream_axes, one_s, one_c):
        """``fn`` over the call's configurations as the group's plan runs them (vmap, or
        one after another with ``plan="map"``) and over its streams."""
        return loop.vmapped(fn, cfg_axes, stream_axes, one_s, one_c,
                            self.spec.config_plan == "map")

    def _begin(self, st, traced, keys):
        """The block's step carry (fresh buffers: the steps donate theirs) and whether a
        configuration is active."""
        one_s, one_c = loop.single(keys, traced)
        objective = program.batch_objective(self.spec, traced.values)
        carry = self._call(functools.partial(program.block_carry, self.spec,
                                             with_objective=objective), 0, 0, one_s, one_c)(st)
        return jax.tree.map(jnp.copy, carry), jnp.any(st.active)

    def _epoch_start(self, carry, traced, keys):
        one_s, one_c = loop.single(keys, traced)
        return self._call(host_epoch_start, 0, 0, one_s, one_c)(carry)

    def _steps(self, n, last, carry, active0, epoch, s0, data, traced, keys, tidx):
        one_s, one_c = loop.single(keys, traced)
        t_ax, _ = _axes(tidx, None)
        traced, keys, tidx, _ = loop.squeeze(one_s, one_c, traced, keys, tidx, None)
        fn = functools.partial(host_steps, self.spec, n, last)
        return self._call(fn, (0, 0, None, None, 0, None, None, None),
                     (0, 0, None, None, 0, 0, None, t_ax), one_s, one_c)(
            carry, active0, epoch, s0, traced, keys, data, tidx)

    def _updates(self, d_ax, n, size, carry, t0, data, traced, keys, tidx):
        """``n`` updates from ``t0`` (``size``: see :func:`host_updates`); ``d_ax``: the
        data's stream axis (host-fed blocks of several streams,
        :func:`jaxgd.feed.fed_input`), else None."""
        one_s, one_c = loop.single(keys, traced)
        t_ax, _ = _axes(tidx, None)
        traced, keys, tidx, _ = loop.squeeze(one_s, one_c, traced, keys, tidx, None)
        fn = functools.partial(host_updates, self.spec, n, size)
        return self._call(fn, (0, None, 0, None, None, None), (0, None, 0, 0, d_ax, t_ax),
                     one_s, one_c)(carry, t0, traced, keys, data, tidx)

    def _finish(self, st, carry, chunks, hist, block, e, data, val, traced, keys, tidx, vidx):
        """The evaluation, its row written at block-local row ``e``: (state, history,
        active configurations (padding left out), any active)."""
        one_s, one_c = loop.single(keys, traced)
        t_ax, v_ax = _axes(tidx, vidx)
        valid = None if traced.valid is None else loop.state_layout(traced.valid, keys, traced)
        traced, keys, tidx, vidx = loop.squeeze(one_s, one_c, traced, keys, tidx, vidx)
        fn = functools.partial(host_finish, self.spec)
        st, row = self._call(fn, (0, 0, 0, None, 0, None, None, None, None, None),
                        (0, 0, 0, None, 0, 0, None, None, t_ax, v_ax), one_s, one_c)(
            st, carry, chunks, block, traced, keys, data, val, tidx, vidx)
        put = self._call(functools.partial(program.write_row, self.spec), (0, 0, None),
                    (0, 0, None), one_s, one_c)
        hist = put(hist, row, e)
        act = st.active if valid is None else st.active & valid
        return st, hist, jnp.sum(act), jnp.any(st.active)

    def _outputs(self, st, hist, traced, keys):
        one_s, one_c = loop.single(keys, traced)
        out = self._call(functools.partial(outputs.finalize, self.spec), 0, 0, one_s, one_c)(st)
        return loop.unsqueeze(one_s, one_c, (out, hist))

    def _empty(self, st, traced, keys):
        one_s, one_c = loop.single(keys, traced)
        tr, _, _, _ = loop.squeeze(one_s, one_c, traced, keys, None, None)

        def empty(p, t):
            return program.empty_history_block(self.spec, p, t.values, st.init_loss.dtype,
                                               self.rows)

        return self._call(empty, (0, 0), (0, 0), one_s, one_c)(st.params, tr)


    @staticmethod
    def _split(n, st, traced):
        """A one-stream call's state and traced inputs as ``n`` single configurations:
        [(state, traced)] in the layout of a call of one configuration."""
        return [(jax.tree.map(lambda a: a[i], st), jax.tree.map(lambda a: a[:, i:i + 1], traced))
                for i in range(n)]

    @staticmethod
    def _join(states, outs, hists):
        """The single configurations' states, outputs and history blocks stacked back
        ([C, ...] states, [1, C, ...] outputs and history)."""
        st = jax.tree.map(lambda *a: jnp.stack(a), *states)
        cat = lambda *a: jnp.concatenate(a, axis=1)  # noqa: E731
        return st, jax.tree.map(cat, *outs), jax.tree.map(cat, *hists)


def _epoch_calls(spec: ProgramSpec, k: int) -> list[tuple[int, bool, int]]:
    """The calls of one epoch: (updates, short last batch, first step)."""
    plan = spec.plan
    calls, s = [], 0
    while s < plan.full_steps:
        n = min(k, plan.full_steps - s)
        calls.append((n, False, s))
        s += n
    if plan.last_batch_size > 0:
        calls.append((1, True, plan.full_steps))
    return calls


def update_calls(t: int, stop: int, k: int, sizes: np.ndarray | None, base: int,
                 full: int) -> list[tuple[int, int, int | None]]:
    """The host calls of updates ``t .. stop`` of a step budget, ``k`` per call: (first
    update, updates, None), and (update, 1, its size) for each update whose fed batch
    holds fewer samples than a ``full`` one (``sizes``: the fed block's batch sizes, slot
    ``u - base`` update ``u``'s, None when every batch is full; see
    :meth:`jaxgd.feed.Feeder.block`)."""
    calls: list[tuple[int, int, int | None]] = []
    while t < stop:
        n = min(k, stop - t)
        if sizes is not None:
            other = sizes[t - base:t - base + n] != full
            if other[0]:
                calls.append((t, 1, int(sizes[t - base])))
                t += 1
                continue
            if other.any():
                n = int(np.argmax(other))
        calls.append((t, n, None))
        t += n
    return calls


def _train(pc: _Pieces, carry, g: int, data, traced, keys, tidx, d_ax=None, sizes=None,
           base: int = 0):
    """The updates of evaluation ``g``: (carry, their step losses, in order); ``d_ax``: the
    data's stream axis (host-fed blocks, see :func:`jaxgd.feed.fed_input`); ``sizes`` and
    ``base``: the fed block's batch sizes and first update (:func:`update_calls`)."""
    spec = pc.spec
    K, _ = evals_of(spec)
    i32 = np.int32
    chunks: list[Any] = []
    first, stop = g * K, min(g * K + K, spec.epochs)
    if spec.by_steps:
        bsz = spec.plan.batch_size * spec.accumulate
        for t, n, size in update_calls(first, stop, spec.host_steps, sizes, base, bsz):
            carry, rows = pc.updates(d_ax, n, size, carry, i32(t), data, traced, keys, tidx)
            chunks.append(rows)
        return carry, chunks
    calls = _epoch_calls(spec, spec.host_steps)
    for epoch in range(first, stop):
        carry, a0 = pc.epoch_start(carry, traced, keys)
        for n, last, s0 in calls:
            carry, rows = pc.steps(n, last, carry, a0, i32(epoch), i32(s0), data, traced, keys,
                                   tidx)
            chunks.append(rows)
    return carry, chunks


def host_block(pc: _Pieces, st, start, end, data, val, traced, keys, tidx, vidx, sizes=None):
    """The scan plan's ``block`` (:func:`jaxgd.program.build_program`) in the host plan:
    evaluations ``start`` up to ``end`` (at most the block's rows) while a configuration
    is active: (state, outputs, history block, any active). ``sizes``: the batch sizes of
    a fed block that holds a batch smaller than the first (an iterable's short batch, its
    update a jitted call of its own, :func:`update_calls`), else None.

    With ``plan="map"`` on one stream, the configurations run one after another at the
    host: the call's state is split into single configurations (one call), and each
    evaluation runs each still-active configuration's jitted steps and evaluation in turn,
    the calls a user's loop makes for one configuration (:func:`jaxgd.fit`'s). Inside a
    program (``lax.map``) XLA:CPU would run a convolution's step several times slower
    than jitted alone. A stopped configuration's state and history rows stay as they are,
    as they do in a batched call (its rows NaN, its state unchanged), so it is skipped;
    the states, outputs and history blocks are stacked back at the block's end."""
    spec = pc.spec
    _, n_evals = evals_of(spec)
    start, end = int(start), int(end)
    one_s, one_c = loop.single(keys, traced)
    d_ax = None
    if spec.fed:  # the block's fed batches, indexed by update (per stream: d_ax)
        data, d_ax = fed_input(spec, data, start, one_s)
    split = spec.config_plan == "map" and one_s and not one_c
    members = pc.split(int(st.active.shape[0]), st, traced) if split else [(st, traced)]
    states = [m[0] for m in members]
    hists = [pc.empty(s_, t, keys) for s_, t in members]
    alive = [True] * len(members)
    # each member's "any active" of its latest evaluation, read (a wait for the device)
    # only after the next evaluation is queued, so that the device is never idle while the
    # host dispatches; an evaluation queued for a member that had stopped changes nothing
    # (its state stays, its rows stay NaN), as in a batched call
    pending: list[Any] = [None] * len(members)
    for e in range(min(pc.rows, end - start)):
        g = start + e
        n_act = []
        for i, (_, tr) in enumerate(members):
            if not alive[i]:
                continue
            carry, any_active = pc.begin(states[i], tr, keys)
            if e == 0 and not bool(any_active):
                alive[i] = False
                continue
            carry, chunks = _train(pc, carry, g, data, tr, keys, tidx, d_ax, sizes,
                                   start * evals_of(spec)[0])
            chunks = tuple(c for c in chunks if c is not None)
            states[i], hists[i], act, any_active = pc.finish(
                states[i], carry, chunks, hists[i], np.int32(g), np.int32(e), data, val, tr,
                keys, tidx, vidx)
            if pending[i] is not None:
                alive[i] = bool(pending[i])
            pending[i] = any_active
            n_act.append(act)
        if not n_act:  # nothing was active at the block's start
            break
        done = g + 1
        if spec.progress and (done % max(1, n_evals // 100) == 0 or done == n_evals):
            program.report_progress(done, sum(int(a) for a in n_act))
        if not any(alive):
            break
    alive = [a and (p is None or bool(p)) for a, p in zip(alive, pending, strict=True)]
    outs = [pc.outputs(s_, h, tr, keys) for s_, h, (_, tr) in zip(states, hists, members,
                                                                   strict=True)]
    if split:
        st, out, hist = pc.join(states, [o for o, _ in outs], [h for _, h in outs])
    else:
        (st,), ((out, hist),) = states, outs
    return st, out, hist, np.bool_(any(alive))


@functools.lru_cache(maxsize=program.PROGRAM_CACHE_SIZE)
def host_program(spec: ProgramSpec, rows: int) -> Program:
    """The host plan's programs for ``spec`` with history blocks of ``rows`` evaluations:
    the scan plan's ``init`` and :func:`host_block` (cached per spec)."""
    pc = _Pieces(spec, rows)
    init = program.compiled_program(spec, rows).init
    return Program(init, functools.partial(host_block, pc), rows)
