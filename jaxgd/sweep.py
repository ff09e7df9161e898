"""``sweep``: many training configurations as one compiled program per group.

A sweep is a list of configurations (dicts of axis -> value). Axes that change array
shapes or program structure (``batch_size``, ``optimizer``, ``accumulate``,
``schedule``) split it into *groups*; each group is one jitted block program in which
every numeric value is a traced array. Inside a group, configurations are arranged as
[stream, config]: a stream is a ``seed`` (and ``fold``), it owns the data order, and all
configurations of a stream share its batches, so shuffling costs nothing per
configuration and the shared batch turns the configurations' forward passes into one
matrix product. Large groups are cut into chunks of equal width (one compile), the
configuration axis is sharded over a device mesh, and with ``out=`` every finished chunk
is written atomically so a killed sweep resumes where it stopped.

This module is the front door; the path of a call reads straight down: the options
(:mod:`jaxgd.options`) -> the axes (:mod:`jaxgd.axes`: grid, random draws, folds, shape
axes) -> the groups (:mod:`jaxgd.groups`) and the run folder's fingerprint
(:mod:`jaxgd.fingerprint`) -> the engine (:mod:`jaxgd.engine`: chunks, mesh, program
calls; with ``search=``, a :class:`jaxgd.population.Population` the search method of
:mod:`jaxgd.search` acts on) -> the program (:mod:`jaxgd.program`) -> the results
(:mod:`jaxgd.results`, :mod:`jaxgd.store`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax

from . import autoplan, trackers
from . import search as search_mod
from .axes import STRUCTURAL_AXES, expand_configs, selected, shape_axes, with_folds
from .checkpoint import checkpointer_for
from .engine import (
    Engine,
    check_data_axis,
    check_mesh,
    default_mesh,
    plan_chunks,
)
from .fingerprint import program_digest, run_fingerprint
from .groups import as_model, make_groups
from .observers import ProgressBar
from .options import DEFAULT_EPOCHS, budget, collect, document, fingerprint_settings
from .plans import with_plans
from .population import Population
from .processes import agree_fingerprint, agree_progress
from .search_base import default_metric

__all__ = ["sweep", "expand_configs", "shape_axes", "STRUCTURAL_AXES"]

# ----------------------------------------------------------------------------- configs


# ----------------------------------------------------------------------------- sweep


def sweep(
    loss: Callable[..., Any],
    params: Any,
    data: Any,
    *,
    optimizer: Any = "sgd",
    grid: Mapping[str, Any] | None = None,
    random: Mapping[str, Any] | None = None,
    configs: Sequence[Mapping[str, Any]] | None = None,
    hparams: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    windows: int | None = None,
    feed: str = "auto",
    batch_size: int | None = None,
    shuffle: bool | str = True,
    drop_last: bool = False,
    seed: int = 0,
    schedule: str = "constant",
    accumulate: int = 1,
    val_data: Any = None,
    state: Any = None,
    folds: int | None = None,
    fold_seed: int = 0,
    grad_tol: float | None = None,
    loss_target: float | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    diverge_factor: float | None = None,
    restore_best: bool = False,
    metrics: str = "auto",
    record_steps: bool = False,
    record_params: bool = False,
    eval_every: int = 1,
    loop: str | int = "auto",
    standardize: bool | int | tuple[int, ...] | None = None,
    penalty_mask: Callable[[Any], Any] | None = None,
    init: Callable[[jax.Array], Any] | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    only: Iterable[int] | None = None,
    search: Any = None,
    out: str | os.PathLike | None = None,
    checkpoint_every: int | float | str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    plan: str = "auto",
    progress: bool = False,
    track: Any = None,
):
    """Train many configurations; each group of equal shapes is one compiled program.

    Every keyword of :func:`jaxgd.fit` but ``key`` (``seed`` instead) is accepted as the
    base setting; ``grid`` /
    ``random`` / ``configs`` override it per configuration. Any numeric hyper-parameter
    (optimizer, schedule, ``l1``, ``l2``, ``clip_norm``, ``clip_value``,
    ``weight_decay``, stop conditions) is an axis, as are ``batch_size`` (``None`` or
    ``"full"`` for full batch), ``seed`` (seed s reproduces ``fit(..., key=s)``),
    ``fold`` (with ``folds=k``; all k folds by default), ``optimizer``, ``schedule`` and
    ``accumulate``.

    Args:
      loss, params, data: as for :func:`jaxgd.fit`. ``params`` may be ``None`` when
        ``init(key) -> params`` draws each seed's initial parameters (a model object,
        e.g. an equinox Module, is split as ``params`` is: floating arrays trained,
        other leaves held; a held array must be a fixed value, not computed by jax).
        Shape axes: the keyword parameters of ``init`` after the key (e.g.
        ``init(key, hidden)``) are sweep axes that may change the parameters' shapes
        (:func:`jaxgd.axes.shape_axes`); each distinct value (tuple) is its own group, like a
        batch size, its parameters drawn as ``init(key, hidden=value)``; the loss must accept
        every shape. A shape axis without a default in ``init`` must be on the grid (or
        in ``hparams``). ``table`` gets a column per shape axis, and
        ``SweepResult.params_of(i)`` / ``best().params`` give each row's parameters.
      {options}

    Returns:
      :class:`jaxgd.SweepResult`: ``table`` (one row per configuration), ``history``
      ([config, epoch] arrays), ``params`` (stacked; with several parameter shapes one
      stacked tree per shape in ``param_groups``), ``best()``, ``save()``.

    Example:
      >>> import jax.numpy as jnp, jaxgd
      >>> x, y = jaxgd.datasets.textbook_line()          # y = 2x on x = 1, 2, 3
      >>> loss = lambda p, b: jnp.mean((b[0][:, 0] * p["w"] - b[1]) ** 2)
      >>> sw = jaxgd.sweep(loss, {"w": jnp.array(1.0)}, (x, y), optimizer="sgd",
      ...                  grid={"learning_rate": [0.01, 0.05, 0.3], "batch_size": [1, None]},
      ...                  epochs=50, shuffle=False)
      >>> sw.table[["learning_rate", "batch_size", "stop_reason"]].values.tolist()[-2:]
      [[0.3, 1, 'diverged'], [0.3, 'full', 'diverged']]
      >>> round(float(sw.best().params["w"]), 4)
      2.0
    """
    from .results import SweepResult
    from .store import RunStore

    opts = collect("sweep", locals())
    ckpt = checkpointer_for(checkpoint_every, out, search)
    trackers.check(opts.track)  # a missing tracker package: before anything runs
    opts = opts.replace(progress=agree_progress(bool(opts.progress)))
    units, by_steps = budget(epochs, steps)  # the budget: epochs, or updates with steps=
    cfgs = expand_configs(grid, random, configs, shape=shape_axes(init))
    cfgs = with_folds(cfgs, folds, val_data)
    all_idx = selected(cfgs, only)
    if params is None and init is None:
        raise ValueError("params is None: give initial parameters or init=function(key)")
    if mesh is not None:
        check_mesh(mesh)

    from .data import kfold_indices
    from .options import check_folds
    from .prepare import program_data

    mesh = mesh if mesh is not None else default_mesh()
    data, n = _sweep_data(data, feed, folds, mesh)
    check_folds(folds, n, windows, shuffle)
    fold_split = kfold_indices(n, folds, shuffle=True, seed=fold_seed) if folds else None
    if search is not None:
        search = _checked_search(search, cfgs, units, eval_every,
                                 "steps" if by_steps else "epochs")
    groups = make_groups(loss, params, data, cfgs, all_idx, opts, fold_split)
    check_data_axis(mesh, groups)

    base = opts.pick(STRUCTURAL_AXES + ("seed",))
    # what determines the results (see jaxgd.options: each option's fingerprint entry)
    settings = opts.pick(fingerprint_settings())
    settings["loss"] = loss
    if search is not None:  # only then: folders of sweeps without one keep their key
        settings["search"] = search
    for name, value in (("steps", steps), ("windows", windows)):
        if value is not None:  # likewise
            settings[name] = value
    fingerprint = None
    if out is not None or jax.process_count() > 1:
        fingerprint = run_fingerprint(
            cfgs, all_idx, base, dict(hparams or {}),
            DEFAULT_EPOCHS if epochs is None and steps is None else epochs, shuffle, drop_last,
            folds, fold_seed, settings,
            (data, params if groups[0].prepared.combined is None
             else groups[0].prepared.params, val_data, state),
            [program_digest(g.prepared) for g in groups])
    agree_fingerprint(fingerprint)
    store = RunStore.open(out, fingerprint) if out is not None else None
    name = "jaxgd-sweep" if out is None else os.path.basename(os.path.abspath(out))
    stack = contextlib.ExitStack()  # the live trackers' writers, closed on the way out
    try:
        tracked = stack.enter_context(
            trackers.tracking(track, name, lambda: trackers.planned_runs(cfgs, all_idx)))
        data = program_data(groups[0].prepared, data)  # with shuffle= orders: (data, orders)
        engine = Engine(data, val_data, fold_split, mesh,
                        observers=[ProgressBar(calls=search is None and progress), *tracked],
                        checkpoint=ckpt)
        with_plans(groups, plan, engine.ndev)  # the rules' plans (measured below)
        if search is None:
            plans = plan_chunks(groups, chunk_size, memory_budget, units, engine.ndev)
            trials, read_back = autoplan.choose_groups(engine, plans, opts.loop, opts.plan,
                                                       store)
            res = SweepResult.from_runs(cfgs, all_idx, engine.run_plans(plans, len(groups),
                                                                        store),
                                        units, folds=folds)
        else:  # a search keeps the rules' plans
            trials, read_back = [], False
            pop = Population(engine, groups, cfgs, units, chunk_size, memory_budget,
                             getattr(search, "compact", True), store, grid, random)
            metric = search.metric or default_metric(groups[0].prepared.spec.has_val)
            pop.check_metric(metric)
            resume = pop.restore()
            if resume is not None:
                pop.replay()
            with engine.running():
                outcome = search.run(pop, metric, resume)
            res = SweepResult.from_runs(cfgs, all_idx, pop.results(), units, folds=folds)
            search.finish(res, outcome)
        if groups[0].prepared.combined is not None:  # the model object, stacked arrays
            res.param_groups = [as_model(pg, groups) for pg in res.param_groups]
        res.fingerprint = fingerprint
        autoplan.record(res, groups, trials, read_back or engine.resumed, store,
                        (opts.loop, opts.plan))
        if store is not None:
            res.save(store.path, _store=store)  # releases the lock
        for t in tracked:
            t.finish(res)
    finally:
        stack.close()
        if store is not None:
            store.release_lock_on_error()
    return res


def _sweep_data(data, feed: str, folds, mesh) -> tuple[Any, int]:
    """(the sweep's data, N): validated device data, or host-fed data
    (:class:`jaxgd.feed.HostData`, whose N is its samples or an iterable's batch: in a
    multi-process run the global batch the processes' shares on ``mesh`` make)."""
    from .data import validate_data
    from .feed import across_processes, host_data

    host = host_data(data, feed)
    if host is None:
        return validate_data(data, "data")
    if folds is not None:
        raise ValueError(f"folds={folds!r} cannot be combined with host-fed data "
                         f"(feed={feed!r}): split the data into folds beforehand")
    host = across_processes(host, mesh)
    return host, host.n


def _checked_search(search, cfgs, units: int, eval_every: int, unit: str):
    """``search`` validated against the sweep's budget (epochs or steps) and axes (before
    anything runs)."""
    search = search_mod.check(search, units, eval_every, unit)
    search.validate_axes(set(k for c in cfgs for k in c))
    return search


# the options' entries of the docstring come from the table in jaxgd.options
sweep.__doc__ = sweep.__doc__.replace("      {options}\n", document("sweep") + "\n")
