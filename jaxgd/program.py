"""The compiled training program: one jitted loop behind batch, stochastic and mini-batch GD.

The program is written for a *block* of configurations: an outer axis of "streams"
(one per seed, or per seed and fold) that own a data order, and an inner axis of
configurations that share that stream's batches. ``fit`` runs a block of 1 x 1;
``sweep`` runs blocks of S x C. Because configurations of one stream share their
batch indices, the gathered batch is the same array for all of them and their
forward passes become one matrix product.

Epochs run in a ``lax.while_loop`` *outside* the vmap over configurations, so the
epoch and step counters stay scalars (a counter inside a vmapped while-loop would be
batched and so would every gather). Configurations that stop are frozen by masks; the
loop ends when every configuration has stopped or the epoch budget is spent.

The program is two jitted functions: ``init`` (the state before the first epoch) and
``block`` (up to ``rows`` evaluations from a state, returning the state and a block of
history rows; the host takes the outputs from the last state, :func:`host_outputs`).
The engine (:func:`jaxgd.engine.run_blocks`) calls ``block`` from the host until no
configuration is active, carrying the state on the device and
concatenating the history blocks on the host, so history memory follows the evaluations
actually run (at most one block of :data:`HISTORY_BLOCK_BYTES` more), not ``epochs``.
One block length per spec and chunk width: one compile. (The host plan,
:mod:`jaxgd.hostloop`, runs the same steps and evaluations from a Python loop instead.)
Inside a block, evaluations run in sub-blocks whose rows collect in a buffer of at most
:data:`SEQUENTIAL_BYTES` (a large buffer in a loop body makes XLA:CPU dispatch that body's
kernels to its thread pool, at every iteration).

With a step budget (``spec.by_steps``) the budget, ``eval_every`` and the history rows
count updates: an evaluation scans ``eval_every`` calls of :func:`train_at`, update ``t``
being the step at position ``t mod steps_per_epoch`` of epoch ``t // steps_per_epoch``
(the epoch program's batches in its order), and with token windows (``spec.window``)
every update draws its batch of random windows from the stream.

Costs per evaluation (``eval_every`` epochs): with ``metrics="full"`` one forward pass
over the training data per configuration (plus a backward pass with ``grad_tol`` or
``metrics="full_grad"``), the stop checks on scalars, and one history row written. Full-
batch GD (:func:`lookahead`) has no extra pass: each step computes the loss and gradient
at the parameters it produces, which are the evaluation's numbers and the next step's
gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import loop, lossform, optim, stops
from .data import feistel_permute, feistel_round_keys, window_batch
from .feed import fed_input
from .history import EXACT, OBJECTIVE, PACKED, STEP_LOSS, HistoryLayout, index_values, per_step
from .losses import default_penalty_mask
from .objective import (
    ahead_of,
    call_loss,
    data_loss,
    global_norm,
    lookahead,
    mean_grad,
    objective,
    tree_where,
    with_penalty,
)
from .spec import (
    DIVERGED,
    MAX_EPOCHS,
    RUNNING,
    EpochCarry,
    EpochContext,
    Metrics,
    ProgramSpec,
    State,
    StepCarry,
    Traced,
    evals_of,
    float_dtype,
    metric_dtype,
    param_leaves,
    updates_per_evaluation,
)


def _take(data, idx):
    # the indices are in range by construction (a permutation, a fold's indices): no
    # out-of-range fill (jnp.take's default masks every gathered element; "clip" only
    # clamps the indices)
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0, mode="clip"), data)


def _train_view(data, tidx):
    return data if tidx is None else _take(data, tidx)


def _standardizer(spec: ProgramSpec, train) -> Callable[[Any], Any]:
    """Standardise the chosen leaves with mean/std of this stream's training part."""
    if not spec.standardize:
        return lambda b: b
    leaves = jax.tree.leaves(train)
    stats = {}
    for i in spec.standardize:
        m = jnp.mean(leaves[i], axis=0)
        sd = jnp.std(leaves[i], axis=0)
        stats[i] = (m, jnp.where(sd > 0, sd, 1.0))

    def tf(batch):
        ls, td = jax.tree.flatten(batch)
        ls = [(a - stats[i][0]) / stats[i][1] if i in stats else a for i, a in enumerate(ls)]
        return jax.tree.unflatten(td, ls)

    return tf


def history_layout(spec: ProgramSpec, tc) -> HistoryLayout:
    """The columns of the history this spec's program writes; ``tc``: the traced
    hyper-parameters by name (only the names are used)."""
    return HistoryLayout.of("l1" in tc or "l2" in tc,  # as penalty decides
                            spec.has_val, spec.form.metrics, spec.record_steps,
                            spec.by_steps, spec.epochs)


def step_loss_width(spec: ProgramSpec) -> int:
    """Step losses per row of ``history["step_loss"]``: an epoch's steps (one with a step
    budget: a row per update)."""
    return 1 if spec.by_steps else spec.plan.steps_per_epoch


def _packed_dtype(dt):
    """The dtype of the packed scalar row: epoch numbers stay exact even for float16."""
    return jnp.promote_types(dt, jnp.float32)


def empty_history_block(spec: ProgramSpec, params0, tc, dt, rows: int) -> dict[str, jax.Array]:
    """``rows`` history rows, NaN until written (one per evaluation).

    The scalar columns are packed into one ``[rows, columns]`` array
    (:data:`jaxgd.history.PACKED`), so an evaluation writes its row with one update; the
    host unpacks them by name (:meth:`jaxgd.history.HistoryLayout.unpack`).
    """
    K, _ = evals_of(spec)
    layout = history_layout(spec, tc)
    hist = {PACKED: jnp.full((rows, len(layout.scalars)), jnp.nan, _packed_dtype(dt))}
    if spec.record_steps:
        hist[STEP_LOSS] = jnp.full((rows * K, step_loss_width(spec)), jnp.nan, dt)
    if spec.record_params:
        for name, leaf in param_leaves(params0):
            hist[name] = jnp.full((rows,) + leaf.shape, jnp.nan, leaf.dtype)
    for name in layout.metrics:
        hist[name] = jnp.full((rows,), jnp.nan, metric_dtype(params0))
    return hist


def _split_orders(spec: ProgramSpec, data) -> tuple[Any, jax.Array | None]:
    """(data, explicit orders): with ``shuffle=`` orders the program's data argument is
    the pair (:func:`jaxgd.prepare.program_data`)."""
    return data if spec.shuffle == "given" and not spec.fed else (data, None)


def init_state(spec: ProgramSpec, params0, traced: Traced, key, data, val, tidx, vidx,
               state0=None) -> State:
    """The state before the first epoch (one configuration)."""
    tc = traced.values
    data, _ = _split_orders(spec, data)
    if spec.init_fn is not None:
        params0 = spec.init_fn(lossform.init_key(key))
    opt = optim.build_optimizer(spec.opt, spec.schedule, tc, dict(spec.static_hparams))
    dt = metric_dtype(params0)
    tr = _train_view(data, tidx)
    tr = _standardizer(spec, tr)(tr)
    ahead = ahead_of(spec, params0, tr, tc) if lookahead(spec) else None
    if spec.track_init:
        init_loss = (ahead.loss if ahead is not None
                     else data_loss(spec, params0, tr, state0, tc)).astype(dt)
    else:  # no pass over the data: the first update's batch loss (set by that step)
        init_loss = jnp.asarray(jnp.nan, dt)
    bad_start = ~jnp.isfinite(init_loss) if spec.track_init else jnp.asarray(False)
    return State(
        params=params0,
        opt_state=opt.init(params0),
        step=jnp.zeros((), jnp.int32),
        active=~bad_start,
        reason=jnp.where(bad_start, DIVERGED, RUNNING).astype(jnp.int32),
        epochs_run=jnp.zeros((), jnp.int32),
        init_loss=init_loss,
        best_metric=jnp.asarray(jnp.inf, dt),
        best_epoch=jnp.asarray(-1, jnp.int32),
        bad_epochs=jnp.zeros((), jnp.int32),
        best_params=params0 if spec.restore_best else None,
        evals_run=jnp.zeros((), jnp.int32),
        diverged_step=jnp.where(bad_start, 0, -1).astype(jnp.int32),
        model_state=state0,
        best_model_state=state0 if spec.restore_best else None,
        ahead=ahead,
    )


def epoch_order(spec: ProgramSpec, key, epoch, orders=None,
                whole: bool = False) -> Callable[[jax.Array], jax.Array] | None:
    """Position -> sample index of this epoch's visiting order (None: in order); explicit
    ``orders`` [E, n]: row ``epoch mod E``. ``whole``: the Feistel order is computed for
    every position at once and indexed (the same indices; for a caller that visits the
    whole epoch, one cycle-walking loop per epoch instead of one per step)."""
    plan = spec.plan
    bsz = plan.batch_size * spec.accumulate
    full_batch = plan.full_steps == 1 and bsz == plan.n and plan.last_batch_size == 0
    if full_batch:  # one step on every sample: the order cannot matter
        return None
    if spec.shuffle == "feistel":
        rk = feistel_round_keys(key, epoch)
        if whole:
            perm = feistel_permute(rk, jnp.arange(plan.n, dtype=jnp.uint32), plan.n)
            return lambda pos: perm[pos]
        return lambda pos: feistel_permute(rk, pos, plan.n)
    if spec.shuffle == "uniform":
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), plan.n)
        return lambda pos: perm[pos]
    if spec.shuffle == "given":
        row = jax.lax.dynamic_index_in_dim(orders, epoch % orders.shape[0], keepdims=False)
        return lambda pos: row[pos]
    return None


def _gather(spec: ProgramSpec, ctx: EpochContext, order, start, size):
    """The raw batch of ``size`` samples from position ``start`` of the epoch's order
    (with token windows, ``start`` is the step and the batch is ``size`` random windows
    of the stream: :func:`jaxgd.data.window_batch`)."""
    data, tidx = ctx.data, ctx.tidx
    if spec.fed:  # update ``start``'s slot of the fed block (a short last batch: its head)
        fed, base = data
        return jax.tree.map(
            lambda a: jax.lax.dynamic_index_in_dim(a, start - base, keepdims=False)[:size], fed)
    if spec.window:
        return window_batch(data, ctx.key, start, size, spec.window)
    if order is None and tidx is None:
        if size == spec.plan.n:  # full batch in order: the data itself
            return data
        # in order: a contiguous slice, much cheaper than a gather
        return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size), data)
    idx = start + jnp.arange(size, dtype=jnp.int32)
    if order is not None:
        idx = order(idx)
    if tidx is not None:
        idx = tidx[idx]
    return _take(data, idx)


def train_step(spec: ProgramSpec, ctx: EpochContext, order, carry: StepCarry, start, size,
               micro: int) -> tuple[StepCarry, jax.Array]:
    """One update on the batch at ``start``. A step whose objective or gradient norm is
    not finite ends the configuration (diverged): it counts no further steps or batch
    sums, and :func:`guard` restores the evaluation's starting point."""
    if carry.ahead is not None:  # lookahead: the gradient was computed with the loss
        batch = ctx.tf(_gather(spec, ctx, order, start, size))
        (obj, g), loss, m = with_penalty(spec, carry.params, ctx.tc, carry.ahead), \
            carry.ahead.loss, carry.ahead.metrics
        return apply_step(spec, ctx, carry, (obj, loss, g, None, m), batch)
    return apply_step(spec, ctx, carry, step_grad(spec, ctx, order, carry, start, size, micro))


def recorded_step(spec: ProgramSpec, ctx: EpochContext, order, carry: StepCarry, start,
                  size, micro: int) -> tuple[StepCarry, jax.Array]:
    """:func:`train_step` with its loss as ``history["step_loss"]`` records it: NaN for a
    step that did not run (the configuration had stopped before it, e.g. at a non-finite
    step earlier in the epoch: the update that follows is never applied)."""
    new, loss = train_step(spec, ctx, order, carry, start, size, micro)
    if spec.record_steps:
        loss = jnp.where(carry.active, loss, jnp.nan)
    return new, loss


def step_grad(spec: ProgramSpec, ctx: EpochContext, order, carry: StepCarry, start, size,
              micro: int):
    """The gradient of the update on the batch at ``start`` (no lookahead): (objective,
    data loss, gradient, new model state, metrics)."""
    batch = ctx.tf(_gather(spec, ctx, order, start, size))
    key = None if ctx.cfg_key is None else jax.random.fold_in(ctx.cfg_key, carry.step)
    return mean_grad(spec, carry.params, carry.model_state, batch, ctx.tc, micro, key)


def apply_step(spec: ProgramSpec, ctx: EpochContext, carry: StepCarry, grad,
               batch=None) -> tuple[StepCarry, jax.Array]:
    """The update from ``grad`` (:func:`step_grad`'s) and its bookkeeping: (carry, the
    batch's loss). ``batch``: the update's batch, for the lookahead's next gradient."""
    tc = ctx.tc
    params, opt_state, stp = carry.params, carry.opt_state, carry.step
    obj, loss, g, new_state, m = grad
    gn = global_norm(g)
    updates, new_opt = optim.update(spec.opt, ctx.opt, g, opt_state, params, obj)
    if ctx.wd_mask is not None:
        lr_t = optim.passed_lr(spec.opt, spec.schedule, tc, stp)
        updates = jax.tree.map(
            lambda u, p, m: u - lr_t * tc["weight_decay"] * p * m, updates, params, ctx.wd_mask)
    new_params = optax.apply_updates(params, updates)
    # divergence from the step's scalars; the parameters move unconditionally (no select
    # over every leaf per step): a configuration not active, or one that produced a
    # non-finite step, is put back by :func:`guard` at the evaluation
    finite = jnp.isfinite(obj) & jnp.isfinite(gn)
    ok = carry.active & finite
    reason = jnp.where(carry.active & ~finite, DIVERGED, carry.reason)
    model_state = new_state if spec.form.state else None
    ahead = None
    if carry.ahead is not None:  # the loss and gradient at the new parameters
        ahead = ahead_of(spec, new_params, batch, tc)
    w = ok.astype(carry.sum_loss.dtype)
    sum_metrics = {k: v + ok.astype(v.dtype) * m[k] for k, v in carry.sum_metrics.items()}
    init_loss = carry.init_loss
    if not spec.track_init:  # the first update's batch loss (finite or not)
        init_loss = jnp.where(carry.active & (stp == 0), loss.astype(init_loss.dtype),
                              init_loss)
    sum_obj = None if carry.sum_objective is None else carry.sum_objective + w * obj
    return StepCarry(new_params, new_opt, stp + ok.astype(jnp.int32), carry.active & finite,
                     reason, carry.sum_loss + w * loss, carry.sum_grad_norm + w * gn,
                     model_state, sum_metrics, ahead, init_loss, sum_obj), loss


def train_epoch(spec: ProgramSpec, ctx: EpochContext, carry: EpochCarry,
                epoch) -> tuple[EpochCarry, jax.Array | None]:
    """The steps of one epoch (nothing happens for epochs >= E); returns the step losses
    (with ``record_steps``)."""
    plan = spec.plan
    bsz = plan.batch_size * spec.accumulate  # samples per update
    order = epoch_order(spec, ctx.key, epoch, ctx.orders, whole=True)
    in_range = epoch < spec.epochs
    active0 = carry.steps.active
    inner = carry.steps._replace(active=active0 & in_range)
    step_losses = []
    if plan.full_steps > 0:
        micro = spec.accumulate
        if plan.full_steps == 1:  # no loop for a single step (full batch)
            inner, loss1 = recorded_step(spec, ctx, order, inner, jnp.int32(0), bsz, micro)
            full_losses = loss1[None]
        else:
            inner, full_losses = jax.lax.scan(
                lambda c, s: recorded_step(spec, ctx, order, c, s * bsz, bsz, micro),
                inner, jnp.arange(plan.full_steps, dtype=jnp.int32))
        step_losses.append(full_losses)
    if plan.last_batch_size > 0:
        inner, last_loss = recorded_step(spec, ctx, order, inner, plan.full_steps * bsz,
                                      plan.last_batch_size, 1)
        step_losses.append(last_loss[None])
    ran = active0 & in_range
    K, _ = evals_of(spec)
    if spec.epochs % K:  # the last block has epochs past the budget: they change nothing
        inner = tree_where(in_range, inner, carry.steps)
    row = jnp.where(ran, jnp.concatenate(step_losses), jnp.nan) if spec.record_steps else None
    return EpochCarry(inner, carry.epochs_run + ran.astype(jnp.int32)), row


def train_at(spec: ProgramSpec, ctx: EpochContext, carry: EpochCarry,
             t, size: int | None = None) -> tuple[EpochCarry, jax.Array | None]:
    """Update ``t`` (0-based) of a step budget: the step at position ``t mod
    steps_per_epoch`` of epoch ``t // steps_per_epoch`` of the epoch program (nothing happens
    for ``t`` >= the budget); returns its loss as a row of one (with ``record_steps``).
    ``size``: host-fed data's batch of that many samples (an iterable's batch smaller than
    the first, the head of its slot of the fed block) taken as one micro-batch, instead of
    a full one.

    ``t`` is the same for every configuration (the block's start plus the scan index), so
    the choice between a full batch and the epoch's short last batch is a real
    conditional under ``vmap``. An epoch's ``epochs_run`` counts from its first step."""
    plan = spec.plan
    bsz = plan.batch_size * spec.accumulate
    spe = plan.steps_per_epoch
    epoch, pos = t // spe, t % spe
    in_range = t < spec.epochs
    active0 = carry.steps.active
    inner = carry.steps._replace(active=active0 & in_range)
    by_t = bool(spec.window or spec.fed)  # the batch is update t's (not a position's)
    order = None if by_t else epoch_order(spec, ctx.key, epoch, ctx.orders)

    # (start, samples, micro-batches) of a full batch's update and of the short last one's
    full_at = (t if by_t else pos * bsz,) + ((bsz, spec.accumulate) if size is None
                                              else (size, 1))
    last_at = (t if spec.fed else plan.full_steps * bsz, plan.last_batch_size, 1)

    def full(c):
        return train_step(spec, ctx, order, c, *full_at)

    def last(c):
        return train_step(spec, ctx, order, c, *last_at)

    def step(c):
        if plan.last_batch_size == 0 or spec.window or size is not None:
            return full(c)
        if plan.full_steps == 0:
            return last(c)
        if c.ahead is not None:
            return jax.lax.cond(pos == plan.full_steps, last, full, c)
        # only the gradient (whose batch has one of two shapes) is conditional: the update
        # and the carry stay outside, so the parameters and optimizer state are not copied
        # through a conditional at every step
        grad = jax.lax.cond(pos == plan.full_steps,
                            lambda c: step_grad(spec, ctx, order, c, *last_at),
                            lambda c: step_grad(spec, ctx, order, c, *full_at), c)
        return apply_step(spec, ctx, c, grad)

    K, _ = evals_of(spec)
    if spec.epochs % K:  # the last block reaches past the budget: those updates do nothing
        # (a real conditional: ``t`` is the same for every configuration; an inactive
        # step would still move the parameters, see train_step)
        inner, loss = jax.lax.cond(
            in_range, step, lambda c: (c, jnp.zeros((), metric_dtype(c.params))), inner)
    else:
        inner, loss = step(inner)
    ran = active0 & in_range
    inner = inner._replace(active=jnp.where(in_range, inner.active, active0))
    row = jnp.where(ran, loss, jnp.nan)[None] if spec.record_steps else None
    return EpochCarry(inner, carry.epochs_run + (ran & (pos == 0)).astype(jnp.int32)), row


def batch_objective(spec: ProgramSpec, tc) -> bool:
    """Whether an evaluation records the mean of its steps' batch objectives (loss +
    penalty): with ``metrics="batch"`` and an ``l1``/``l2`` penalty (``tc``: the traced
    hyper-parameters by name; only the names are used)."""
    return spec.metrics == "batch" and OBJECTIVE in history_layout(spec, tc).scalars


def block_carry(spec: ProgramSpec, st: State, with_objective: bool = False) -> EpochCarry:
    """The carry of a block's steps from the state before it (its sums at zero);
    ``with_objective``: also sum the steps' objectives (:func:`batch_objective`)."""
    dt = st.init_loss.dtype
    mdt = metric_dtype(st.params)
    return EpochCarry(StepCarry(st.params, st.opt_state, st.step, st.active, st.reason,
                                jnp.zeros((), dt), jnp.zeros((), dt), st.model_state,
                                {k: jnp.zeros((), mdt) for k in spec.form.metrics}, st.ahead,
                                st.init_loss, jnp.zeros((), dt) if with_objective else None),
                      st.epochs_run)


def _train_block(spec: ProgramSpec, ctx: EpochContext, st: State, block):
    """``eval_every`` epochs (or steps, with a step budget) of training from ``st``:
    (carry, step-loss rows or None)."""
    K, _ = evals_of(spec)
    carry = block_carry(spec, st, batch_objective(spec, ctx.tc))
    e0 = block * K
    if K == 1:
        carry, rows = (train_at if spec.by_steps else train_epoch)(spec, ctx, carry, e0)
        rows = None if rows is None else rows[None]
    elif spec.by_steps:
        # the step counter apart from the packed carry, so that it stays unbatched under
        # vmap (train_at's conditional on it is then a real one)
        packed, layout = loop.pack(carry)

        def step_body(kp, _):
            k, packed = kp
            c, row = train_at(spec, ctx, loop.unpack(packed, layout), e0 + k)
            return (k + 1, loop.pack(c)[0]), row

        (_, packed), rows = jax.lax.scan(step_body, (jnp.zeros((), jnp.int32), packed), None,
                                         length=K)
        carry = loop.unpack(packed, layout)
    else:
        # the epoch counter in the carry (an array of K epoch numbers as the scan's input
        # would be a buffer of 4K bytes: see SEQUENTIAL_BYTES) and the carry packed (a few
        # buffers updated per epoch instead of one per scalar)
        packed, layout = loop.pack((jnp.zeros((), jnp.int32), carry))

        def body(packed, _):
            k, c = loop.unpack(packed, layout)
            c, row = train_epoch(spec, ctx, c, e0 + k)
            return loop.pack((k + 1, c))[0], row

        packed, rows = jax.lax.scan(body, packed, None, length=K)
        carry = loop.unpack(packed, layout)[1]
    return carry, rows


def evaluate(spec: ProgramSpec, ctx: EpochContext, st: State, c: StepCarry, val,
             vidx) -> Metrics:
    """Loss (full data, or the block's batch mean), gradient norm (full data only with
    ``spec.full_grad``, else the block's batch mean) and validation loss."""
    steps_done = jnp.maximum(c.step - st.step, 1)
    any_step = c.step > st.step  # a block without a finite step has no batch mean
    # with metrics="batch" and one update per evaluation, that update's numbers (total /
    # 1 is total): its loss is what every check reads, and XLA:CPU compiles the loop as one
    # kernel only while an iteration's kernels read and write less than 1 kB (a division
    # is one more kernel); at the defaults the division's kernel is the cheaper code
    one = spec.metrics == "batch" and updates_per_evaluation(spec) == 1

    def mean(total):
        return jnp.where(any_step, total if one else total / steps_done.astype(total.dtype),
                         jnp.nan)

    batch_loss, batch_gn = mean(c.sum_loss), mean(c.sum_grad_norm)
    batch_m = {k: mean(v) for k, v in c.sum_metrics.items()}
    if c.ahead is not None:  # lookahead: computed by the block's last step (or init)
        obj, g = with_penalty(spec, c.params, ctx.tc, c.ahead)
        loss, full_m = c.ahead.loss, c.ahead.metrics
        gn = global_norm(g) if spec.full_grad else batch_gn
    elif spec.metrics != "batch":
        tr = ctx.tf(_train_view(ctx.data, ctx.tidx))
        if spec.full_grad:
            (obj, (loss, _, full_m)), g = jax.value_and_grad(
                lambda p: objective(spec, p, c.model_state, tr, ctx.tc, None, False),
                has_aux=True)(c.params)
            gn = global_norm(g)
        else:  # one forward pass: no gradient is recorded or checked
            obj, (loss, _, full_m) = objective(spec, c.params, c.model_state, tr, ctx.tc,
                                                None, False)
            gn = batch_gn
    else:  # the batch means (the objective's where a penalty makes it another number)
        obj = batch_loss if c.sum_objective is None else mean(c.sum_objective)
        loss, gn, full_m = batch_loss, batch_gn, batch_m
    val_loss = val_m = None
    if spec.has_val:
        v = ctx.tf(val if vidx is None else _take(ctx.data, vidx))
        val_loss, _, val_m = call_loss(spec, c.params, c.model_state, v, None, False, ctx.tc)
    return Metrics(obj, loss, gn, batch_loss, val_loss, full_m, batch_m, val_m)


def _diverged(m: Metrics, tc, ref):
    """Whether the loss grew beyond ``diverge_factor`` times the initial loss ``ref`` (with
    ``metrics="batch"`` the first update's batch loss) or is non-finite."""
    factor = tc["diverge_factor"]
    # the reference is floored at 1: a run that starts at (or near) a zero loss is not
    # "diverged" when its loss merely becomes positive
    grew = jnp.isfinite(factor) & (m.loss > factor * jnp.maximum(jnp.abs(ref), 1.0))
    return grew | ~jnp.isfinite(m.objective)


def check_stops(spec: ProgramSpec, ev: stops.Evaluation, tc, active, reason, epoch):
    """The stop conditions of :data:`jaxgd.stops.STOPS`, in their order of precedence,
    then the epoch budget: (active, reason)."""
    checks = [(s.test(ev, tc), s.code) for s in stops.TESTED]
    for cond, code in reversed(checks):
        reason = jnp.where(active & cond, code, reason)
    for cond, _ in checks:
        active = active & ~cond
    last_epoch = epoch == spec.epochs - 1
    reason = jnp.where(active & last_epoch, MAX_EPOCHS, reason)
    return active & ~last_epoch, reason


def epoch_block(spec: ProgramSpec, st: State, traced: Traced, key, block, data, val, tidx,
                vidx) -> tuple[State, dict[str, jax.Array]]:
    """``eval_every`` epochs of training, then the evaluation and stop checks: the new
    state and the evaluation's history row."""
    ctx = context(spec, st.params, traced, key, data, tidx)
    carry, rows = _train_block(spec, ctx, st, block)
    return finish_block(spec, ctx, st, carry, rows, block, val, vidx)


def context(spec: ProgramSpec, params, traced: Traced, key, data, tidx) -> EpochContext:
    """What the steps and the evaluation of a block read (one configuration); ``params``
    only for the structure of the decoupled weight decay's mask."""
    tc = traced.values
    data, orders = _split_orders(spec, data)
    opt = optim.build_optimizer(spec.opt, spec.schedule, tc, dict(spec.static_hparams))
    own_wd = "weight_decay" in tc and "weight_decay" not in spec.opt.numeric_names
    wd_mask = (spec.penalty_mask or default_penalty_mask)(params) if own_wd else None
    cfg_key = lossform.config_key(key, traced.key_bits) if spec.form.key else None
    return EpochContext(opt, tc, key, data, tidx, wd_mask,
                        _standardizer(spec, _train_view(data, tidx)), cfg_key, orders)


def finish_block(spec: ProgramSpec, ctx: EpochContext, st: State, carry: EpochCarry, rows,
                 block, val, vidx) -> tuple[State, dict[str, jax.Array]]:
    """The evaluation after a block's training (``carry`` from ``st``; ``rows``: its step
    losses or None), the divergence guard, the stop checks and the history row: (new
    state, row)."""
    K, _ = evals_of(spec)
    tc = ctx.tc
    c = guard(st, carry.steps)
    epoch = jnp.minimum(block * K + K, spec.epochs) - 1  # the last epoch of this block
    m = evaluate(spec, ctx, st, c, val, vidx)
    # divergence by growth of the loss, or a non-finite loss at the evaluation
    grew = _diverged(m, tc, c.init_loss)
    reason = jnp.where(c.active & grew, DIVERGED, c.reason)
    active = c.active & ~grew

    monitor = m.val_loss if spec.has_val else m.loss
    improved = active & (monitor < st.best_metric - tc["min_delta"])
    best_metric = jnp.where(improved, monitor, st.best_metric)
    best_epoch = jnp.where(improved, epoch, st.best_epoch)
    bad = jnp.where(improved, 0, st.bad_epochs + active.astype(jnp.int32))
    best_params = tree_where(improved, c.params, st.best_params) if spec.restore_best else None
    best_mstate = (tree_where(improved, c.model_state, st.best_model_state)
                   if spec.restore_best and spec.form.state else None)

    ev = stops.Evaluation(loss=m.loss, grad_norm=m.grad_norm, monitor=monitor, bad_evals=bad)
    active, reason = check_stops(spec, ev, tc, active, reason, epoch)
    row = history_row(spec, st, m, tc, c, epoch, rows)
    # found diverged in this block: by a step (the carry's count stops at the failing
    # update, whose index it is), by the guard or by the evaluation (the block's count)
    found = st.active & (reason == DIVERGED)
    return State(
        params=c.params, opt_state=c.opt_state, step=jnp.where(c.active, c.step, st.step),
        active=active, reason=reason,
        epochs_run=carry.epochs_run, init_loss=c.init_loss, best_metric=best_metric,
        best_epoch=best_epoch, bad_epochs=bad, best_params=best_params,
        evals_run=st.evals_run + st.active.astype(jnp.int32),
        diverged_step=jnp.where(found, c.step, st.diverged_step),
        model_state=c.model_state, best_model_state=best_mstate, ahead=c.ahead,
    ), row


# parameters of at least this many elements are restored by the guard through a
# conditional (below it, a select)
GUARD_COND_MIN = 4096


def _size(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                                if jnp.issubdtype(x.dtype, jnp.inexact)] or [True]))


def guard(st: State, c: StepCarry) -> StepCarry:
    """The divergence guard, once per evaluation: a configuration that was not active
    through the block (stopped before it, or ended by a non-finite step), or whose
    parameters are no longer finite (an update that overflowed from a finite loss and
    gradient), gets back the parameters, optimizer state, model state and lookahead of
    the block's start ``st``; the latter also stops as diverged. The step count stays the
    block's (its batch means and learning rate); :func:`epoch_block` keeps the restored
    one in the state."""
    keep = c.active & _all_finite(c.params)
    new = (c.params, c.opt_state, c.model_state, c.ahead)
    old = (st.params, st.opt_state, None if c.model_state is None else st.model_state,
           None if c.ahead is None else st.ahead)
    if _size(c.params) >= GUARD_COND_MIN:
        # a conditional, not a select over every leaf: for one configuration (fit, the
        # map plan, the host loop) nothing is copied unless the guard acts; under vmap it
        # is the same select
        params, opt_state, mstate, ahead = jax.lax.cond(keep, lambda n, o: n,
                                                        lambda n, o: o, new, old)
    else:  # a few scalars: a select keeps a small evaluation one kernel on XLA:CPU
        params, opt_state, mstate, ahead = tree_where(keep, new, old)
    return c._replace(
        params=params, opt_state=opt_state, model_state=mstate, ahead=ahead,
        active=keep, reason=jnp.where(c.active & ~keep, DIVERGED, c.reason))


def history_row(spec: ProgramSpec, st: State, m: Metrics, tc, c: StepCarry, epoch,
                rows) -> dict[str, jax.Array]:
    """The history row of this evaluation (NaN for a configuration already stopped): the
    scalar columns packed in :func:`history_layout` order, and the optional arrays."""
    was_active = st.active
    dt = st.init_loss.dtype
    pdt = _packed_dtype(dt)
    # the rate of the row's last applied update; NaN in a row that applied none
    lr = jnp.where(c.step > st.step,
                   optim.recorded_lr(spec.opt, spec.schedule, tc, jnp.maximum(c.step - 1, 0),
                                     c.opt_state), jnp.nan)
    values = {**index_values(epoch, spec.epochs), "loss": m.loss,
              "batch_loss": m.batch_loss, "grad_norm": m.grad_norm, "lr": lr,
              "objective": m.objective, "val_loss": m.val_loss}
    # each value rounded to the run's dtype first (as a column of its own would be)
    packed = jnp.stack([
        jnp.asarray(values[k]).astype(pdt if k in EXACT else dt).astype(pdt)
        for k in history_layout(spec, tc).scalars])
    row = {PACKED: jnp.where(was_active, packed, jnp.nan)}
    for name in spec.form.metrics:
        row[name] = jnp.where(was_active, m.metrics[name], jnp.nan)
        row[f"batch_{name}"] = jnp.where(was_active, m.batch_metrics[name], jnp.nan)
        if m.val_metrics is not None:
            row[f"val_{name}"] = jnp.where(was_active, m.val_metrics[name], jnp.nan)
    if spec.record_params:
        for name, leaf in param_leaves(c.params):
            row[name] = jnp.where(was_active, leaf, jnp.nan).astype(leaf.dtype)
    if spec.record_steps:
        row[STEP_LOSS] = rows.astype(dt)
    return row


def write_row(spec: ProgramSpec, hist: dict[str, jax.Array], row: dict[str, jax.Array],
              i) -> dict[str, jax.Array]:
    """The history block with evaluation ``i`` (block-local) written."""
    K, _ = evals_of(spec)
    out = {}
    for name, h in hist.items():
        at = i * K if per_step(name) else i
        r = row[name] if per_step(name) else row[name][None]
        out[name] = jax.lax.dynamic_update_slice_in_dim(h, r.astype(h.dtype), at, axis=0)
    return out


# ------------------------------------------------------------------ blocks of evaluations

# The history of a program call is a block of at most this many bytes (or HISTORY_MIN_ROWS
# rows); the host runs blocks until no configuration is active, so history memory follows
# the evaluations actually run, not ``epochs``.
HISTORY_BLOCK_BYTES = 16 << 20
HISTORY_MIN_ROWS = 16


def history_row_bytes(spec: ProgramSpec, params0, tc) -> int:
    """Bytes of one configuration's history row (one evaluation)."""
    K, _ = evals_of(spec)
    dt = jnp.dtype(float_dtype(params0))
    layout = history_layout(spec, tc)
    n = len(layout.scalars) * jnp.dtype(_packed_dtype(dt)).itemsize
    if spec.record_steps:
        n += K * step_loss_width(spec) * dt.itemsize
    if spec.record_params:
        n += sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params0))
    n += len(layout.metrics) * 8  # the loss's metrics (at least float32)
    return int(n)


def block_rows(spec: ProgramSpec, row_bytes: int, n_configs: int) -> int:
    """Evaluations per program call for ``n_configs`` configurations run together."""
    _, n_evals = evals_of(spec)
    fit_rows = HISTORY_BLOCK_BYTES // max(1, row_bytes * n_configs)
    rows = max(1, min(n_evals, max(HISTORY_MIN_ROWS, fit_rows)))
    return int(min(rows, spec.fed) if spec.fed else rows)


class Program(NamedTuple):
    """The jitted programs of a spec: ``init`` (the state before the first epoch) and
    ``block`` (up to ``rows`` evaluations from a state, with their history; its outputs
    slot is None: :func:`host_outputs` of the last state)."""

    init: Callable[..., Any]
    block: Callable[..., Any]
    rows: int


def read_rows(spec: ProgramSpec, n: int, hist: dict[str, jax.Array], at
              ) -> dict[str, jax.Array]:
    """Rows ``at .. at + n`` of a history block (one configuration)."""
    K, _ = evals_of(spec)
    return {name: jax.lax.dynamic_slice_in_dim(h, at * K, n * K, axis=0)
            if per_step(name) else jax.lax.dynamic_slice_in_dim(h, at, n, axis=0)
            for name, h in hist.items()}


def write_rows(spec: ProgramSpec, hist: dict[str, jax.Array], part: dict[str, jax.Array],
               at) -> dict[str, jax.Array]:
    """The history block with the rows of ``part`` written from row ``at`` on."""
    K, _ = evals_of(spec)
    return {name: jax.lax.dynamic_update_slice_in_dim(
        h, part[name], at * K if per_step(name) else at, axis=0)
        for name, h in hist.items()}


def build_program(spec: ProgramSpec, rows: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The un-jitted programs ``init(params0, data, val, traced, keys, tidx, vidx) -> state``
    and ``block(state, start, end, data, val, traced, keys, tidx, vidx) -> (state, None,
    history block, any active)`` (the outputs: :func:`host_outputs` of the last state).

    Shapes: ``traced`` (:class:`jaxgd.spec.Traced`) leaves are [S, C, ...]; ``keys`` is
    [S] PRNG keys; ``tidx`` [S, n_train] and ``vidx`` [S, n_val] index arrays (or None);
    ``params0`` is a pytree shared by every configuration (or None when ``spec.init_fn``
    draws it from each key). The state keeps the program's own layout between calls;
    outputs and history blocks have leading axes [S, C]. ``start`` is the index of the
    block's first evaluation and ``end`` the evaluation it stops before (at most
    ``n_evals``; an adaptive search stops at its rung boundaries).
    """
    _, n_evals = evals_of(spec)
    by_map = spec.config_plan == "map"

    def init(params0, data, val, traced, keys, tidx, vidx, state0=None):
        one_s, one_c = loop.single(keys, traced)
        t_ax = None if tidx is None else 0
        v_ax = None if vidx is None else 0
        traced, keys, tidx, vidx = loop.squeeze(one_s, one_c, traced, keys, tidx, vidx)
        fn = loop.vmapped(functools.partial(init_state, spec),
                          (None, 0, None, None, None, None, None, None),
                          (None, 0, 0, None, None, t_ax, v_ax, None), one_s, one_c,
                          by_map)
        return fn(params0, traced, keys, data, val, tidx, vidx, state0)

    def block(st, start, end, data, val, traced, keys, tidx, vidx):
        one_s, one_c = loop.single(keys, traced)
        t_ax = None if tidx is None else 0
        v_ax = None if vidx is None else 0
        traced, keys, tidx, vidx = loop.squeeze(one_s, one_c, traced, keys, tidx, vidx)
        data, d_ax = fed_input(spec, data, start, one_s)
        ep = loop.vmapped(functools.partial(epoch_block, spec),
                          (0, 0, None, None, None, None, None, None),
                          (0, 0, 0, None, d_ax, None, t_ax, v_ax), one_s, one_c, by_map)
        def empty(p, t):
            return empty_history_block(spec, p, t.values, st.init_loss.dtype, rows)

        hist = loop.vmapped(empty, (0, 0), (0, 0), one_s, one_c)(st.params, traced)
        sub = loop.sub_rows(hist, rows)
        puts = tuple(loop.vmapped(functools.partial(fn, spec), (0, 0, None), (0, 0, None),
                              one_s, one_c) for fn in (write_row, write_rows))
        take = loop.vmapped(functools.partial(read_rows, spec, sub), (0, None), (0, None),
                        one_s, one_c)

        def evaluation(s, e):
            """Block-local evaluation ``e`` from the state ``s``: (state, history row)."""
            s, row = ep(s, traced, keys, start + e, data, val, tidx, vidx)
            if spec.progress:  # at most ~100 host callbacks per run: they cost ~1 ms each
                # The count is reduced in the program (padding of a sharded block left out
                # with the chunk's ``Traced.valid`` mask), so the callback gets a replicated
                # scalar; under a sharding it runs once, on device 0 (process 0). Every
                # process compiles this same program: sweep agrees on `progress`.
                act = s.active if traced.valid is None else s.active & traced.valid
                every = max(1, n_evals // 100)
                g = start + e + 1
                jax.lax.cond((g % every == 0) | (g == n_evals),
                             lambda: jax.debug.callback(_progress_tick, g, jnp.sum(act)),
                             lambda: None)
            return s, row

        lead = 0 if one_c else 1 if one_s else 2  # the state's configuration axes
        st, hist = loop.run_rows(st, hist, rows, sub, end - start, evaluation, take, *puts,
                                 lead=lead)
        hist = loop.unsqueeze(one_s, one_c, hist)
        # no outputs: the host takes them from the last block's state (host_outputs)
        return st, None, hist, jnp.any(st.active)

    return init, block


# where the program's progress callback reports (done evaluations, active
# configurations): a function the host sets while a call runs (jaxgd.observers)
_PROGRESS_SINK: list[Callable[[int, int], None] | None] = [None]


def set_progress_sink(sink: Callable[[int, int], None] | None) -> None:
    """Send the running program's progress reports to ``sink(done, active)`` (None: drop
    them). The callback compiled into the program is :func:`_progress_tick`, which stays
    the same function, so setting a sink never re-traces."""
    _PROGRESS_SINK[0] = sink


def report_progress(done: int, active: int) -> None:
    """Report a finished evaluation to the progress sink from the host (the host plan)."""
    _progress_tick(done, active)


def _progress_tick(done, active) -> None:
    sink = _PROGRESS_SINK[0]
    if sink is not None:
        sink(int(done), int(active))


# Programs kept compiled (an LRU of specs). Each keeps its executables, and XLA:CPU maps
# each of a program's kernels into memory separately (~60 maps for a tiny fit's block
# program, hundreds for a network's): a process may hold 65 530 maps (Linux's default
# vm.max_map_count) and crashes past them. 64 programs bound what jaxgd keeps while a
# search's rounds still find their groups' programs; jaxgd.clear_caches() empties it.
PROGRAM_CACHE_SIZE = 64


@functools.lru_cache(maxsize=PROGRAM_CACHE_SIZE)
def compiled_program(spec: ProgramSpec, rows: int) -> Program:
    """The jitted programs for ``spec`` with history blocks of ``rows`` evaluations
    (cached, so new values never re-trace; see :data:`PROGRAM_CACHE_SIZE`)."""
    init, block = build_program(spec, rows)
    return Program(jax.jit(init), jax.jit(block), rows)
