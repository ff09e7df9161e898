"""The training program: one jitted loop behind batch, stochastic and mini-batch GD.

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
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import optim
from .data import BatchPlan, feistel_permute, feistel_round_keys

# stop reasons, as integers inside the program
RUNNING, MAX_EPOCHS, GRAD_TOL, LOSS_TARGET, PATIENCE, DIVERGED = range(6)
STOP_REASONS = ("running", "max_epochs", "grad_tol", "loss_target", "patience", "diverged")

SHUFFLES = ("none", "feistel", "uniform")
METRICS = ("full", "batch")


class ProgramSpec(NamedTuple):
    """Everything that fixes the structure of the compiled program (hashable)."""

    loss: Callable[..., Any]
    has_aux: bool
    opt: optim.OptimizerSpec
    schedule: str
    static_hparams: tuple[tuple[str, Any], ...]
    numeric_names: tuple[str, ...]
    plan: BatchPlan
    accumulate: int
    shuffle: str
    epochs: int
    metrics: str
    record_steps: bool
    record_params: bool
    restore_best: bool
    penalty_mask: Callable[[Any], Any] | None
    init_fn: Callable[[jax.Array], Any] | None
    has_val: bool
    track_init: bool  # evaluate the initial loss (full metrics, or a divergence factor)
    eval_every: int  # epochs between evaluations (history rows, stop checks)
    progress: bool  # report each evaluation to the host (progress bar)
    standardize: tuple[int, ...]  # data leaves scaled with statistics of the training part


class State(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array
    active: jax.Array
    reason: jax.Array
    epochs_run: jax.Array
    init_loss: jax.Array
    best_metric: jax.Array
    best_epoch: jax.Array
    bad_epochs: jax.Array
    best_params: Any
    history: dict[str, jax.Array]
    evals_run: jax.Array


def _tree_where(c, a, b):
    return jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)


def _penalty(spec: ProgramSpec, params, tc):
    if "l1" not in tc and "l2" not in tc:
        return None
    mask = spec.penalty_mask(params) if spec.penalty_mask is not None else _default_mask(params)
    leaves = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True)
              if m]
    total = 0.0
    if "l1" in tc:
        total = total + tc["l1"] * sum(jnp.sum(jnp.abs(p)) for p in leaves)
    if "l2" in tc:
        total = total + tc["l2"] * 0.5 * sum(jnp.sum(p * p) for p in leaves)
    return total


def _default_mask(params):
    """Penalise every leaf except biases (leaves whose last dict key is 'b' or 'bias')."""

    def keep(path, _):
        last = path[-1] if path else None
        name = getattr(last, "key", getattr(last, "name", None))
        return name not in ("b", "bias")

    return jax.tree_util.tree_map_with_path(keep, params)


def _data_loss(spec: ProgramSpec, params, batch):
    out = spec.loss(params, batch)
    if spec.has_aux:
        out = out[0]
    # in the params' dtype: float64 data with float32 params must not widen the carries
    return out.astype(_float_dtype(params))


def _objective(spec: ProgramSpec, params, batch, tc):
    loss = _data_loss(spec, params, batch)
    pen = _penalty(spec, params, tc)
    return (loss if pen is None else loss + pen), loss


def _mean_grad(spec, params, batch, tc, micro: int):
    """(objective, data loss, gradient) of a batch, accumulated over ``micro`` pieces."""
    vg = jax.value_and_grad(lambda p, b: _objective(spec, p, b, tc), has_aux=True)
    if micro == 1:
        (obj, loss), g = vg(params, batch)
        return obj, loss, g
    pieces = jax.tree.map(lambda a: a.reshape((micro, a.shape[0] // micro) + a.shape[1:]), batch)

    def body(acc, b):
        (obj, loss), g = vg(params, b)
        return jax.tree.map(jnp.add, acc, (obj, loss, g)), None

    zero = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    zero = jax.tree.map(lambda z: z.astype(_float_dtype(params)), zero)
    (obj, loss, g), _ = jax.lax.scan(body, zero, pieces)
    return obj / micro, loss / micro, jax.tree.map(lambda x: x / micro, g)


def _float_dtype(params):
    for leaf in jax.tree.leaves(params):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return jnp.float32


def _global_norm(tree) -> jax.Array:
    """Euclidean norm of all leaves together."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


PARAMS_PREFIX = "params"


def _param_leaves(params) -> list[tuple[str, jax.Array]]:
    """History names of the parameter leaves: ``params['w']``, ``params['layers'][0]...``."""
    return [(PARAMS_PREFIX + jax.tree_util.keystr(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]


def _take(data, idx):
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)


def build_program(spec: ProgramSpec) -> Callable[..., Any]:
    """The un-jitted block program ``run(params0, data, val, tc, keys, tidx, vidx)``.

    Shapes: ``tc`` leaves are [S, C]; ``keys`` is [S] PRNG keys; ``tidx`` [S, n_train]
    and ``vidx`` [S, n_val] index arrays (or None); ``params0`` is a pytree shared by
    every configuration (or None when ``spec.init_fn`` draws it from each key).
    """
    plan = spec.plan
    n = plan.n
    bsz = plan.batch_size * spec.accumulate  # samples per update
    static = dict(spec.static_hparams)
    E = spec.epochs
    K = min(spec.eval_every, E)  # epochs per evaluation
    n_evals = -(-E // K)

    def train_view(data, tidx):
        return data if tidx is None else _take(data, tidx)

    def make_tf(train):
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

    def full_metrics(params, data, tc, tidx, tf):
        if spec.metrics == "full":
            tr = tf(train_view(data, tidx))
            (obj, loss), g = jax.value_and_grad(
                lambda p: _objective(spec, p, tr, tc), has_aux=True)(params)
            return obj, loss, _global_norm(g)
        return None

    def init_state(params0, tc, key, data, val, tidx, vidx):
        if spec.init_fn is not None:
            params0 = spec.init_fn(jax.random.fold_in(key, 0x5EED))
        opt = optim.build_optimizer(spec.opt, spec.schedule, tc, static)
        dt = _float_dtype(params0)
        tr = train_view(data, tidx)
        tr = make_tf(tr)(tr)
        if spec.track_init:
            init_loss = _data_loss(spec, params0, tr).astype(dt)
        else:  # not needed: skip a pass over the data for every configuration
            init_loss = jnp.asarray(jnp.nan, dt)
        bad_start = ~jnp.isfinite(init_loss) if spec.track_init else jnp.asarray(False)
        nan = jnp.full((n_evals,), jnp.nan, dt)
        ep_dt = jnp.promote_types(dt, jnp.float32)  # exact epoch numbers even for float16
        hist = {"epoch": jnp.full((n_evals,), jnp.nan, ep_dt), "loss": nan,
                "batch_loss": nan, "grad_norm": nan, "lr": nan}
        if _penalty(spec, params0, tc) is not None:
            hist["objective"] = nan
        if spec.has_val:
            hist["val_loss"] = nan
        if spec.record_steps:
            hist["step_loss"] = jnp.full((n_evals * K, plan.steps_per_epoch), jnp.nan, dt)
        if spec.record_params:
            for name, leaf in _param_leaves(params0):
                hist[name] = jnp.full((n_evals,) + leaf.shape, jnp.nan, leaf.dtype)
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
            history=hist,
            evals_run=jnp.zeros((), jnp.int32),
        )

    def train_epoch(carry, epoch, opt, tc, key, data, tidx, wd_mask, tf):
        """The steps of one epoch (nothing happens for epochs >= E)."""
        own_wd = wd_mask is not None
        full_batch = plan.full_steps == 1 and bsz == n and plan.last_batch_size == 0
        if full_batch:  # one step on every sample: the order cannot matter
            order = None
        elif spec.shuffle == "feistel":
            rk = feistel_round_keys(key, epoch)
            order = lambda pos: feistel_permute(rk, pos, n)  # noqa: E731
        elif spec.shuffle == "uniform":
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
            order = lambda pos: perm[pos]  # noqa: E731
        else:
            order = None

        def gather(start, size):
            return tf(gather_raw(start, size))

        def gather_raw(start, size):
            if order is None and tidx is None:
                if size == n:  # full batch in order: the data itself
                    return data
                # in order: a contiguous slice, much cheaper than a gather
                return jax.tree.map(
                    lambda a: jax.lax.dynamic_slice_in_dim(a, start, size), data)
            idx = start + jnp.arange(size, dtype=jnp.int32)
            if order is not None:
                idx = order(idx)
            if tidx is not None:
                idx = tidx[idx]
            return _take(data, idx)

        def step(carry, start, size, micro):
            params, opt_state, stp, active, reason, s_loss, s_gn = carry
            batch = gather(start, size)
            obj, loss, g = _mean_grad(spec, params, batch, tc, micro)
            gn = _global_norm(g)
            updates, new_opt = opt.update(g, opt_state, params)
            if own_wd:
                lr_t = optim.current_lr(spec.schedule, tc, stp)
                updates = jax.tree.map(
                    lambda u, p, m: u - lr_t * tc["weight_decay"] * p * m, updates, params, wd_mask)
            new_params = optax.apply_updates(params, updates)
            finite = jnp.isfinite(obj) & jnp.isfinite(gn)
            finite &= jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x))
                                           for x in jax.tree.leaves(new_params)]))
            ok = active & finite
            params = _tree_where(ok, new_params, params)
            opt_state = _tree_where(ok, new_opt, opt_state)
            reason = jnp.where(active & ~finite, DIVERGED, reason)
            w = ok.astype(s_loss.dtype)
            return (params, opt_state, stp + ok.astype(jnp.int32), active & finite, reason,
                    s_loss + w * loss, s_gn + w * gn), loss

        *inner, epochs_run = carry
        in_range = epoch < E
        active0 = inner[3]
        inner[3] = active0 & in_range
        inner = tuple(inner)
        step_losses = []
        if plan.full_steps > 0:
            micro = spec.accumulate

            def body(c, s):
                return step(c, s * bsz, bsz, micro)

            if plan.full_steps == 1:  # no loop for a single step (full batch)
                inner, loss1 = step(inner, jnp.int32(0), bsz, micro)
                full_losses = loss1[None]
            else:
                inner, full_losses = jax.lax.scan(
                    body, inner, jnp.arange(plan.full_steps, dtype=jnp.int32))
            step_losses.append(full_losses)
        if plan.last_batch_size > 0:
            inner, last_loss = step(inner, plan.full_steps * bsz, plan.last_batch_size, 1)
            step_losses.append(last_loss[None])
        ran = active0 & in_range
        params, opt_state, stp, active, reason, s_loss, s_gn = inner
        active = jnp.where(in_range, active, active0)
        row = jnp.where(ran, jnp.concatenate(step_losses), jnp.nan) if spec.record_steps else None
        return (params, opt_state, stp, active, reason, s_loss, s_gn,
                epochs_run + ran.astype(jnp.int32)), row

    def epoch_fn(st: State, tc, key, block, data, val, tidx, vidx) -> State:
        """``eval_every`` epochs of training, then the evaluation and stop checks."""
        opt = optim.build_optimizer(spec.opt, spec.schedule, tc, static)
        own_wd = "weight_decay" in tc and "weight_decay" not in spec.opt.numeric_names
        wd_mask = (spec.penalty_mask or _default_mask)(st.params) if own_wd else None
        was_active = st.active
        dt = st.init_loss.dtype
        tf = make_tf(train_view(data, tidx))
        carry = (st.params, st.opt_state, st.step, st.active, st.reason,
                 jnp.zeros((), dt), jnp.zeros((), dt), st.epochs_run)
        e0 = block * K
        if K == 1:
            carry, rows = train_epoch(carry, e0, opt, tc, key, data, tidx, wd_mask, tf)
            rows = None if rows is None else rows[None]
        else:
            carry, rows = jax.lax.scan(
                lambda c, e: train_epoch(c, e, opt, tc, key, data, tidx, wd_mask, tf),
                carry, e0 + jnp.arange(K, dtype=jnp.int32))
        params, opt_state, stp, active, reason, s_loss, s_gn, epochs_run = carry
        epoch = jnp.minimum(e0 + K, E) - 1  # the last epoch of this block
        steps_done = jnp.maximum(stp - st.step, 1).astype(dt)
        any_step = stp > st.step  # a block whose every step was refused has no batch mean
        batch_loss = jnp.where(any_step, s_loss / steps_done, jnp.nan)
        batch_gn = jnp.where(any_step, s_gn / steps_done, jnp.nan)

        fm = full_metrics(params, data, tc, tidx, tf)
        if fm is not None:
            obj, loss, gn = fm
        else:
            obj, loss, gn = batch_loss, batch_loss, batch_gn
        # divergence by growth of the loss, or a non-finite loss at the evaluation
        factor = tc["diverge_factor"]
        if spec.track_init:
            ref = st.init_loss
        else:  # no pass over the data at the start: the first block's batch loss is the scale
            ref = jnp.where(block == 0, batch_loss, st.init_loss)
        # the reference is floored at 1: a run that starts at (or near) a zero loss is not
        # "diverged" when its loss merely becomes positive
        grew = jnp.isfinite(factor) & (loss > factor * jnp.maximum(jnp.abs(ref), 1.0))
        grew |= ~jnp.isfinite(obj)
        diverged_now = active & grew
        reason = jnp.where(diverged_now, DIVERGED, reason)
        active = active & ~grew

        if spec.has_val:
            v = tf(val if vidx is None else _take(data, vidx))
            val_loss = _data_loss(spec, params, v)
            monitor = val_loss
        else:
            val_loss = None
            monitor = loss
        improved = active & (monitor < st.best_metric - tc["min_delta"])
        best_metric = jnp.where(improved, monitor, st.best_metric)
        best_epoch = jnp.where(improved, epoch, st.best_epoch)
        bad = jnp.where(improved, 0, st.bad_epochs + active.astype(jnp.int32))
        best_params = _tree_where(improved, params, st.best_params) if spec.restore_best else None

        # stop conditions, checked in a fixed order of precedence
        patience = tc["patience"]
        checks = [
            (gn <= tc["grad_tol"], GRAD_TOL),
            (loss <= tc["loss_target"], LOSS_TARGET),
            ((patience > 0) & (bad >= patience), PATIENCE),
        ]
        for cond, code in reversed(checks):
            reason = jnp.where(active & cond, code, reason)
        for cond, _ in checks:
            active = active & ~cond
        last_epoch = epoch == E - 1
        reason = jnp.where(active & last_epoch, MAX_EPOCHS, reason)
        active = active & ~last_epoch

        def put(h, key, value):
            return h[key].at[block].set(
                jnp.where(was_active, value, jnp.nan).astype(h[key].dtype))

        hist = dict(st.history)
        hist["epoch"] = put(hist, "epoch", epoch)
        hist["loss"] = put(hist, "loss", loss)
        hist["batch_loss"] = put(hist, "batch_loss", batch_loss)
        hist["grad_norm"] = put(hist, "grad_norm", gn)
        hist["lr"] = put(hist, "lr", optim.current_lr(spec.schedule, tc, jnp.maximum(stp - 1, 0)))
        if "objective" in hist:
            hist["objective"] = put(hist, "objective", obj)
        if val_loss is not None:
            hist["val_loss"] = put(hist, "val_loss", val_loss)
        if spec.record_params:
            for name, leaf in _param_leaves(params):
                hist[name] = hist[name].at[block].set(
                    jnp.where(was_active, leaf, jnp.nan).astype(leaf.dtype))
        if spec.record_steps:
            hist["step_loss"] = jax.lax.dynamic_update_slice_in_dim(
                hist["step_loss"], rows.astype(dt), e0, axis=0)

        return State(
            params=params, opt_state=opt_state, step=stp, active=active, reason=reason,
            epochs_run=epochs_run, init_loss=ref, best_metric=best_metric,
            best_epoch=best_epoch, bad_epochs=bad, best_params=best_params, history=hist,
            evals_run=st.evals_run + was_active.astype(jnp.int32),
        )

    def finalize(st: State):
        params = st.params
        if spec.record_steps:
            st = st._replace(history={**st.history, "step_loss": st.history["step_loss"][:E]})
        if spec.restore_best:
            use_best = st.best_epoch >= 0
            params = _tree_where(use_best, st.best_params, params)
        return {
            "params": params,
            "history": st.history,
            "reason": st.reason,
            "epochs_run": st.epochs_run,
            "evals_run": st.evals_run,
            "steps_run": st.step,
            "best_metric": st.best_metric,
            "best_epoch": st.best_epoch,
            "init_loss": st.init_loss if spec.track_init else jnp.full_like(st.init_loss, jnp.nan),
        }

    def run(params0, data, val, tc, keys, tidx, vidx):
        # inner axis: configurations (they share the stream's key and data indices);
        # outer axis: streams. With a single stream the outer axis is dropped: a vmapped
        # axis of size 1 makes XLA copy and transpose the parameters at every step.
        single = keys.shape[0] == 1
        t_ax = None if tidx is None else 0
        v_ax = None if vidx is None else 0
        squeeze = lambda t: None if t is None else jax.tree.map(lambda a: a[0], t)  # noqa: E731
        if single:
            tc, keys, tidx, vidx = squeeze(tc), keys[0], squeeze(tidx), squeeze(vidx)
        init_c = jax.vmap(init_state, in_axes=(None, 0, None, None, None, None, None))
        ep_c = jax.vmap(epoch_fn, in_axes=(0, 0, None, None, None, None, None, None))
        fin = jax.vmap(finalize)
        if not single:
            init_c = jax.vmap(init_c, in_axes=(None, 0, 0, None, None, t_ax, v_ax))
            ep_c = jax.vmap(ep_c, in_axes=(0, 0, 0, None, None, None, t_ax, v_ax))
            fin = jax.vmap(fin)
        st = init_c(params0, tc, keys, data, val, tidx, vidx)

        def cond(c):
            e, s = c
            return (e < n_evals) & jnp.any(s.active)

        def body(c):
            e, s = c
            s = ep_c(s, tc, keys, e, data, val, tidx, vidx)
            if spec.progress:  # at most ~100 host callbacks per run: they cost ~1 ms each
                # The count is reduced in the program (padding of a sharded block left out
                # with sweep's PROGRESS_VALID mask), so the callback gets a replicated
                # scalar; under a sharding it runs once, on device 0 (process 0). Every
                # process compiles this same program: sweep agrees on `progress`.
                act = s.active & tc[PROGRESS_VALID] if PROGRESS_VALID in tc else s.active
                every = max(1, n_evals // 100)
                jax.lax.cond(((e + 1) % every == 0) | (e + 1 == n_evals),
                             lambda: jax.debug.callback(_progress_tick, e + 1, jnp.sum(act)),
                             lambda: None)
            return e + 1, s

        _, st = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), st))
        # every configuration still active at epoch E-1 is marked max_epochs there
        out = fin(st)
        return jax.tree.map(lambda a: a[None], out) if single else out

    return run


_EPOCH_BAR: list[Any] = [None]
# optional key of the traced config: bool, False for a sharded block's padding
PROGRESS_VALID = "_progress_valid"


def _progress_tick(done, active) -> None:
    bar = _EPOCH_BAR[0]
    if bar is not None:
        bar.n = max(bar.n, int(done) * bar.epochs_per_tick)
        bar.set_postfix(active=int(active), refresh=False)
        bar.refresh()


class epoch_progress:
    """Context manager: a tqdm bar over the epochs of the programs run inside it.

    The bar is drawn by process 0 only; other processes run the same program (whose
    progress callback executes on device 0) and draw nothing.
    """

    def __init__(self, spec: ProgramSpec, desc: str = "epochs", enabled: bool = True):
        self.spec, self.desc = spec, desc
        self.enabled = enabled and spec.progress and jax.process_index() == 0

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.spec.epochs, desc=self.desc, unit="epoch", leave=False)
            bar.epochs_per_tick = min(self.spec.eval_every, self.spec.epochs)
            _EPOCH_BAR[0] = bar
        return self

    def __exit__(self, *exc):
        if self.enabled and _EPOCH_BAR[0] is not None:
            jax.effects_barrier()
            _EPOCH_BAR[0].close()
            _EPOCH_BAR[0] = None


@functools.lru_cache(maxsize=256)
def compiled_program(spec: ProgramSpec):
    """A jitted block program for ``spec`` (cached, so new values never re-trace)."""
    return jax.jit(build_program(spec))


# ----------------------------------------------------------------------------- fit


def as_key(key: Any, name: str = "key") -> jax.Array:
    """A typed PRNG key from an int seed, a typed key or raw uint32[2] key data."""
    import numpy as np

    if key is None:
        return jax.random.key(0)
    if isinstance(key, bool):
        raise TypeError(f"{name}={key!r} must be an int seed or a jax.random.key")
    if isinstance(key, (int, np.integer)):
        if key < 0:
            raise ValueError(f"{name}={key!r}: a seed must be >= 0")
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single key, got shape {key.shape}")
        return key
    arr = np.asarray(key)
    if arr.shape == (2,) and arr.dtype == np.uint32:
        return jax.random.wrap_key_data(jnp.asarray(arr))
    raise TypeError(f"{name}={key!r} must be an int seed or a jax.random.key(...)")


def normalize_shuffle(shuffle: Any) -> str:
    if shuffle is True:
        return "feistel"
    if shuffle is False or shuffle is None:
        return "none"
    if isinstance(shuffle, str) and shuffle in SHUFFLES:
        return shuffle
    raise ValueError(
        f"shuffle={shuffle!r} must be True (fast pseudo-random permutation), False (in order), "
        f"or one of {SHUFFLES}"
    )


def check_positive_int(name: str, value: Any) -> int:
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}={value!r} must be a positive integer")
    if value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return int(value)


def check_params(params: Any, name: str = "params") -> Any:
    import numpy as np

    leaves, treedef = jax.tree.flatten(params)
    if not leaves:
        raise ValueError(f"{name} has no array leaves: {params!r}")
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        where = jax.tree_util.keystr(path) or "<root>"
        if isinstance(leaf, (str, bytes)) or leaf is None:
            raise TypeError(f"{name}{where}={leaf!r} is not an array")
        try:
            arr = np.asarray(leaf)
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"{name}{where} is not an array: {leaf!r}") from e
        if arr.dtype.kind != "f":
            raise TypeError(
                f"{name}{where} has dtype {arr.dtype}; trainable parameters must be floating "
                "point (e.g. jnp.zeros(3) rather than [0, 0, 0])")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}{where} contains non-finite values")
        out.append(jnp.asarray(leaf))
    return jax.tree.unflatten(treedef, out)


def check_loss(loss: Any, params: Any, batch: Any, name: str = "loss") -> bool:
    """Trace ``loss`` abstractly once; return whether it returns ``(value, aux)``."""
    if not callable(loss):
        raise TypeError(f"{name}={loss!r} must be a function loss(params, batch) -> scalar")
    try:
        out = jax.eval_shape(loss, params, batch)
    except Exception as e:  # noqa: BLE001
        raise TypeError(
            f"{name} could not be evaluated as loss(params, batch): {type(e).__name__}: {e}"
        ) from e
    has_aux = isinstance(out, tuple) and len(out) == 2
    value = out[0] if has_aux else out
    if not hasattr(value, "shape") or value.shape != ():
        shape = getattr(value, "shape", type(value).__name__)
        raise TypeError(f"{name} must return a scalar (or (scalar, aux)), got shape {shape}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{name} must return a floating-point scalar, got dtype {value.dtype}")
    return has_aux


def fit(
    loss: Callable[..., Any],
    params: Any,
    data: Any,
    *,
    optimizer: Any = "sgd",
    hparams: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    epochs: int = 100,
    shuffle: bool | str = True,
    drop_last: bool = False,
    key: Any = None,
    schedule: str = "constant",
    accumulate: int = 1,
    val_data: Any = None,
    grad_tol: float | None = None,
    loss_target: float | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    diverge_factor: float | None = None,
    restore_best: bool = False,
    metrics: str = "full",
    record_steps: bool = False,
    record_params: bool = False,
    penalty_mask: Callable[[Any], Any] | None = None,
    eval_every: int = 1,
    progress: bool = False,
    standardize: bool | int | tuple[int, ...] | None = None,
):
    """Train ``params`` on ``data`` by gradient descent; the whole run is one jitted program.

    Batch, stochastic and mini-batch gradient descent are the same loop with a different
    ``batch_size``: ``None`` uses all N samples per step (one step per epoch), ``1`` one
    sample per step, ``B`` B samples. An epoch has ceil(N/B) steps, the last holding
    N mod B samples with its gradient the mean over those alone (PyTorch's DataLoader), or
    floor(N/B) steps with ``drop_last=True``.

    Args:
      loss: pure ``loss(params, batch) -> scalar`` (or ``(scalar, aux)``); ``batch`` has
        the structure of ``data`` with a leading batch axis. It should be a mean over the
        batch so that the last, smaller batch is weighted like PyTorch's.
      params: initial parameters (any pytree of floating arrays).
      data: pytree of arrays sharing the leading axis N, e.g. ``(x, y)``.
      optimizer: an optax factory (``optax.adam``) called with ``hparams`` inside the
        program, a built-in name (``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"rmsprop"``,
        ``"adagrad"``, ``"adam"``, ``"adamw"``, ``"adamax"``) or a ready
        ``optax.GradientTransformation``.
      hparams: numbers, traced in the program (new values never recompile): the factory's
        keywords (``learning_rate``, ``b1``, ``momentum``, ...), the schedule's parameters,
        ``l1``/``l2`` penalties (``l1*sum|w| + l2/2*sum w^2`` over non-bias leaves),
        ``clip_value``/``clip_norm`` and decoupled ``weight_decay``.
      batch_size: ``None`` (full batch), 1 (SGD) or B (mini-batch).
      epochs: maximum number of passes over the data.
      shuffle: ``True`` visits samples in a fresh pseudo-random order every epoch (a keyed
        Feistel bijection, cheap and shared by every configuration of a seed; not uniform
        over all N! orders), ``"uniform"`` uses ``jax.random.permutation``, ``False`` visits
        samples in order (the textbook SGD loop).
      drop_last: drop the last, smaller batch of each epoch.
      key: int seed or ``jax.random.key``: the data order of every epoch.
      schedule: learning-rate schedule: ``"constant"``, ``"exponential"``, ``"step"``,
        ``"inverse_time"``, ``"cosine"`` (parameters in ``hparams``; ``warmup_steps`` W puts
        optax's linear warm-up from 0 before any of them, which then starts at update W:
        see :func:`jaxgd.schedule_value`).
      accumulate: average the gradients of this many consecutive batches of ``batch_size``
        per update (equal to one batch ``accumulate`` times larger).
      val_data: optional validation pytree; its loss is recorded and monitored.
      grad_tol: stop when the gradient norm is <= this ("grad_tol"): of the full training
        data with ``metrics="full"``, the mean of the epoch's batch gradient norms with
        ``metrics="batch"`` (mini-batch noise keeps that one higher).
      loss_target: stop when the training loss is <= this ("loss_target").
      patience: stop after this many epochs without improvement of the monitored loss
        (validation loss if given, else training loss) by more than ``min_delta``
        (``None`` or 0: no patience stop).
      diverge_factor: stop as "diverged" when the training loss exceeds this times
        max(|initial loss|, 1) (default 1e6; ``float("inf")`` turns the check off; with
        ``metrics="batch"`` the first epoch's mean batch loss is the reference). A non-finite
        loss or gradient always stops as "diverged", keeping the last finite parameters.
      restore_best: return the parameters of the best monitored epoch (also when the run
        diverged later).
      metrics: ``"full"`` evaluates loss and gradient norm on the whole training set at
        every epoch end; ``"batch"`` records the means over the epoch's batches (cheaper).
      record_steps: also record every step's batch loss in ``history["step_loss"]``.
      record_params: also record the parameters at every evaluation, one history entry
        per leaf named by its path (``history["params['w']"]``, shape [row, *leaf]);
        :meth:`FitResult.param_history` gives them back as one pytree.
      penalty_mask: ``mask(params) -> pytree of bool``: leaves penalised by ``l1``/``l2``
        and decoupled weight decay (default: all but leaves named ``b``/``bias``).
      eval_every: evaluate (record a history row, check the stop conditions) every this
        many epochs; ``patience`` then counts evaluations. Long full-batch runs (100 000
        iterations of the textbook loop) are several times faster with e.g. 1000, since
        the per-epoch bookkeeping then costs nothing. A non-finite step still stops a
        configuration at once. ``history["epoch"]`` gives each row's (0-based) epoch.
      progress: show a progress bar over epochs (a host callback per evaluation).
      standardize: scale data leaves to mean 0 and standard deviation 1 with statistics
        of the *training* data only, inside the program (validation data and, in a
        k-fold sweep, each fold's held-out part use the training part's statistics).
        ``True`` = the first leaf (``x`` of ``(x, y)``), or leaf indices in
        ``jax.tree.leaves(data)`` order. The parameters then live in the standardised
        feature space.

    Returns:
      :class:`jaxgd.FitResult` with ``params``, ``history``, ``stop_reason``,
      ``epochs_run`` and ``steps_run``.

    Example:
      >>> import jax.numpy as jnp, jaxgd
      >>> x = jnp.array([[1.0], [2.0], [3.0]]); y = 2 * x[:, 0]
      >>> loss = lambda p, b: jnp.mean((b[0][:, 0] * p["w"] - b[1]) ** 2)
      >>> res = jaxgd.fit(loss, {"w": jnp.array(1.0)}, (x, y),
      ...                 hparams={"learning_rate": 0.01}, epochs=100)
      >>> round(float(res.params["w"]), 3)
      2.0
    """
    from .results import FitResult

    prepared = prepare(
        loss, params, data, optimizer=optimizer, hparams=hparams, batch_size=batch_size,
        epochs=epochs, shuffle=shuffle, drop_last=drop_last, schedule=schedule,
        accumulate=accumulate, val_data=val_data, grad_tol=grad_tol, loss_target=loss_target,
        patience=patience, min_delta=min_delta, diverge_factor=diverge_factor,
        restore_best=restore_best, metrics=metrics, record_steps=record_steps,
        record_params=record_params,
        penalty_mask=penalty_mask, eval_every=eval_every, progress=progress,
        standardize=standardize,
    )
    key = as_key(key)
    spec, params, data, val_data, numeric = prepared
    dt = _float_dtype(params)
    tc = jax.device_put({k: tc_array(k, v, dt)[None, None] for k, v in numeric.items()})
    with epoch_progress(spec):
        out = compiled_program(spec)(params, data, val_data, tc, key[None], None, None)
        out = jax.block_until_ready(out)
    out = jax.tree.map(lambda a: a[0, 0], jax.device_get(out))  # one transfer, host slicing
    out["params"] = jax.tree.map(jnp.asarray, out["params"])
    return FitResult.from_program(out, spec)


def check_standardize(standardize: Any, data: Any) -> tuple[int, ...]:
    """Leaf indices (in ``jax.tree.leaves(data)`` order) to standardise in the program."""
    if standardize is None or standardize is False:
        return ()
    leaves = jax.tree.leaves(data)
    if standardize is True:
        idx: tuple[Any, ...] = (0,)
    elif isinstance(standardize, int):
        idx = (standardize,)
    elif isinstance(standardize, (tuple, list)):
        idx = tuple(standardize)
    else:
        raise TypeError(f"standardize={standardize!r} must be True, a leaf index or a tuple "
                        "of leaf indices")
    for i in idx:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not (
                0 <= i < len(leaves)):
            raise ValueError(f"standardize={standardize!r}: {i!r} is not a leaf index of data "
                             f"(it has {len(leaves)} leaves)")
        if not jnp.issubdtype(leaves[i].dtype, jnp.floating):
            raise TypeError(f"standardize={standardize!r}: data leaf {i} has dtype "
                            f"{leaves[i].dtype}; only floating features can be standardised")
    return tuple(sorted({int(i) for i in idx}))


def tc_array(name: str, value: Any, dtype) -> np.ndarray:
    """A traced-config value as a host array of the run's dtype (int32 for counts).

    Host (numpy) arrays: the whole dictionary then goes to the device in one transfer.
    """
    if name in optim.INT_KEYS:
        return np.asarray(value, np.int32)
    if name in optim.STOP_DEFAULTS:  # thresholds: compared only, never mixed into updates
        return np.asarray(value, np.promote_types(np.dtype(dtype), np.float32))
    return np.asarray(value, np.dtype(dtype))


def prepare(
    loss, params, data, *, optimizer, hparams, batch_size, epochs, shuffle, drop_last,
    schedule, accumulate, val_data, grad_tol, loss_target, patience, min_delta,
    diverge_factor, restore_best, metrics, record_steps, penalty_mask, eval_every=1,
    record_params=False,
    progress=False, standardize=None, init_fn=None, data_checked=False,
    n_train=None, val_from_index=False,
):
    """Validate every argument (before anything is compiled) and build the ProgramSpec.

    Returns ``(spec, params, data, val_data, numeric_hparams)``.
    """
    from .data import batch_plan, validate_data

    epochs = check_positive_int("epochs", epochs)
    accumulate = check_positive_int("accumulate", accumulate)
    eval_every = check_positive_int("eval_every", eval_every)
    if not isinstance(drop_last, bool):
        raise TypeError(f"drop_last={drop_last!r} must be True or False")
    if not isinstance(restore_best, bool):
        raise TypeError(f"restore_best={restore_best!r} must be True or False")
    if metrics not in METRICS:
        raise ValueError(f"metrics={metrics!r} must be one of {METRICS}")
    shuffle = normalize_shuffle(shuffle)
    if data_checked:  # validated by the caller (sweep): skip a second pass over the data
        n = jax.tree.leaves(data)[0].shape[0]
    else:
        data, n = validate_data(data, "data")
    if val_data is not None:
        val_data, _ = validate_data(val_data, "val_data")
        if jax.tree.structure(val_data) != jax.tree.structure(data):
            raise ValueError("val_data must have the same structure as data")
    if init_fn is not None:
        params = jax.eval_shape(init_fn, jax.random.key(0))
        params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    params = check_params(params)
    n_eff = n if n_train is None else n_train
    plan = batch_plan(n_eff, batch_size, drop_last)
    if accumulate > 1 and plan.full_steps == 0:
        raise ValueError(
            f"accumulate={accumulate} with batch_size={batch_size} leaves no full update in "
            f"an epoch of {n_eff} samples")
    if accumulate > 1:
        # an update holds accumulate * batch_size samples
        if drop_last and plan.batch_size * accumulate > n_eff:
            raise ValueError(
                f"accumulate={accumulate} x batch_size={plan.batch_size} = "
                f"{plan.batch_size * accumulate} > n={n_eff} with drop_last=True leaves no "
                "update in an epoch")
        plan = batch_plan(n_eff, plan.batch_size * accumulate, drop_last)
        plan = plan._replace(batch_size=plan.batch_size // accumulate)
    spec_opt = optim.resolve_optimizer(optimizer)
    if hparams is not None and not isinstance(hparams, Mapping):
        raise TypeError(f"hparams={hparams!r} must be a dict of name -> number")
    hp = dict(hparams or {})
    for name, value in (("grad_tol", grad_tol), ("loss_target", loss_target),
                        ("patience", patience), ("diverge_factor", diverge_factor)):
        if value is not None:
            hp.setdefault(name, value)  # a value in hparams (a sweep axis) wins
    if min_delta:
        hp.setdefault("min_delta", min_delta)
    if patience is not None:
        p = hp["patience"]
        if isinstance(p, bool) or not float(p).is_integer() or p < 0:
            raise ValueError(f"patience={p!r} must be a non-negative integer")
    numeric, static = optim.split_hparams(spec_opt, schedule, hp)
    probe = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((min(2, a.shape[0]),) + a.shape[1:], a.dtype), data)
    has_aux = check_loss(loss, params, probe)
    if penalty_mask is not None and not callable(penalty_mask):
        raise TypeError(f"penalty_mask={penalty_mask!r} must be a function params -> bool pytree")
    try:
        static_items = tuple(sorted(static.items()))
        hash(static_items)
    except TypeError as e:
        raise TypeError(f"non-numeric hparams must be hashable, got {static}") from e
    std_leaves = check_standardize(standardize, data)
    spec = ProgramSpec(
        loss=loss, has_aux=has_aux, opt=spec_opt, schedule=schedule,
        static_hparams=static_items, numeric_names=tuple(sorted(numeric)), plan=plan,
        accumulate=accumulate, shuffle=shuffle, epochs=epochs, metrics=metrics,
        record_steps=bool(record_steps), record_params=bool(record_params),
        restore_best=restore_best, penalty_mask=penalty_mask,
        init_fn=init_fn, has_val=val_data is not None or val_from_index,
        track_init=metrics == "full", eval_every=eval_every, progress=bool(progress),
        standardize=std_leaves,
    )
    return spec, params, data, val_data, numeric
