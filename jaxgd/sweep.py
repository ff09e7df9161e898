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
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import lossform
from . import search as search_mod
from .options import collect, document, fingerprint_settings
from .prepare import MAX_SEED, Prepared, as_key, prepare, split_hparams, stop_hparams, tc_array
from .program import (
    DIVERGED,
    KEY_BITS,
    PROGRESS_VALID,
    epoch_progress,
    evals_of,
    finalize,
    float_dtype,
    history_columns,
    layout,
    metric_history_names,
    program_for,
    run_blocks,
    run_program,
    state_axes,
    state_layout,
    unpack_history,
)
from .stops import STOP_DEFAULTS
from .stops import code as stop_code

PRUNED = stop_code("pruned")

__all__ = ["sweep", "expand_configs", "shape_axes", "STRUCTURAL_AXES"]

STRUCTURAL_AXES = ("batch_size", "optimizer", "accumulate", "schedule")
STREAM_AXES = ("seed", "fold")
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")


# ----------------------------------------------------------------------------- configs


def _axis_values(name: str, values: Any, check: bool = True) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        values = [values]
    vals = list(np.asarray(values).tolist()) if _is_numeric_array(values) else list(values)
    if not vals:
        raise ValueError(f"grid axis {name!r} is empty")
    for v in vals:
        if check:
            _check_axis_value(name, v)
    return vals


def _is_numeric_array(values: Any) -> bool:
    return isinstance(values, (np.ndarray, jax.Array)) and np.asarray(values).dtype.kind in "biuf"


def _check_axis_value(name: str, v: Any) -> None:
    if name == "batch_size":
        if v is None or v == "full":
            return
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"grid axis 'batch_size' has value {v!r}: use positive ints or None")
        return
    if name in ("seed", "fold", "accumulate"):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"axis {name!r} has value {v!r}: must be a non-negative integer")
        if name == "seed" and v > MAX_SEED:
            raise ValueError(f"axis 'seed' has value {v!r}: a seed must be < 2**64")
        return
    if name in ("optimizer", "schedule"):
        return
    if isinstance(v, bool):
        return
    if isinstance(v, (int, float, np.integer, np.floating)):
        if not math.isfinite(float(v)) and name not in STOP_DEFAULTS:
            raise ValueError(f"axis {name!r} has non-finite value {v!r}")
        return
    raise TypeError(f"axis {name!r} has value {v!r} of type {type(v).__name__}; expected a number")


def _sample(name: str, dist: Any, n: int, rng: np.random.Generator) -> list[Any]:
    if not isinstance(dist, (tuple, list)) or not dist or dist[0] not in DISTRIBUTIONS:
        raise ValueError(
            f"random[{name!r}]={dist!r} must be (kind, ...) with kind in {DISTRIBUTIONS}, "
            "e.g. ('loguniform', 1e-4, 1e-1) or ('choice', [16, 32])")
    kind = dist[0]
    if kind == "choice":
        if len(dist) != 2 or not isinstance(dist[1], (list, tuple)) or not dist[1]:
            raise ValueError(f"random[{name!r}]={dist!r}: use ('choice', [v1, v2, ...])")
        opts = list(dist[1])
        return [opts[i] for i in rng.integers(0, len(opts), n)]
    if len(dist) != 3:
        raise ValueError(f"random[{name!r}]={dist!r}: use ({kind!r}, low, high)")
    lo, hi = float(dist[1]), float(dist[2])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"random[{name!r}]={dist!r}: need finite low < high")
    if kind == "uniform":
        return rng.uniform(lo, hi, n).tolist()
    if kind == "randint":
        return rng.integers(int(lo), int(hi), n).tolist()
    if lo <= 0:
        raise ValueError(f"random[{name!r}]={dist!r}: loguniform needs low > 0")
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n)).tolist()


def expand_configs(
    grid: Mapping[str, Any] | None = None,
    random: Mapping[str, Any] | None = None,
    configs: Sequence[Mapping[str, Any]] | None = None,
    shape: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """The list of configurations of a sweep.

    * ``grid``: Cartesian product of the axes, the last axis varying fastest.
    * ``random``: ``{"n": 32, "seed": 0, "learning_rate": ("loguniform", 1e-4, 1), ...}``
      draws ``n`` configurations (``uniform``, ``loguniform``, ``randint``, ``choice``);
      the sampling seed is ``random_seed`` (the ``seed`` axis stays the training seed
      and may be given as a distribution or a list to combine as a grid).
    * ``configs``: an explicit list of dicts.

    ``grid`` may be combined with ``random`` (each random draw is crossed with the grid).
    The axes named in ``shape`` (see :func:`shape_axes`) are checked by ``sweep`` against
    its ``init``, not here.
    """
    shape = frozenset(shape)
    if configs is not None and (grid or random):
        raise ValueError("give either configs=[...] or grid/random, not both")
    if configs is not None:
        if isinstance(configs, Mapping) or not isinstance(configs, Sequence) or not configs:
            raise ValueError("configs must be a non-empty list of dicts")
        out = []
        for i, c in enumerate(configs):
            if not isinstance(c, Mapping):
                raise TypeError(f"configs[{i}]={c!r} must be a dict")
            for k, v in c.items():
                if k not in shape:
                    _check_axis_value(k, v)
            out.append(dict(c))
        return out
    rows: list[dict[str, Any]] = [{}]
    if grid:
        if not isinstance(grid, Mapping):
            raise TypeError(f"grid must be a dict of axis -> values, got {type(grid).__name__}")
        axes = {k: _axis_values(k, v, k not in shape) for k, v in grid.items()}
        rows = [dict(zip(axes, combo, strict=True))
                for combo in itertools.product(*axes.values())]
    if random:
        if not isinstance(random, Mapping):
            raise TypeError("random must be a dict: {'n': 32, axis: (kind, ...), ...}")
        spec = dict(random)
        n = spec.pop("n", None)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"random['n']={n!r} must be a positive integer")
        rseed = spec.pop("random_seed", 0)
        if isinstance(rseed, bool) or not isinstance(rseed, (int, np.integer)) or rseed < 0:
            raise ValueError(f"random['random_seed']={rseed!r} must be a non-negative integer")
        rng = np.random.default_rng(rseed)
        draws = {k: _sample(k, d, int(n), rng) for k, d in spec.items()}
        for k, vals in draws.items():
            for v in vals if k not in shape else ():
                _check_axis_value(k, v)
        samples = [{k: draws[k][i] for k in draws} for i in range(int(n))]
        rows = [{**r, **s} for r in rows for s in samples]
    return rows


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
    epochs: int = 100,
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
    metrics: str = "full",
    record_steps: bool = False,
    record_params: bool = False,
    eval_every: int = 1,
    standardize: bool | int | tuple[int, ...] | None = None,
    penalty_mask: Callable[[Any], Any] | None = None,
    init: Callable[[jax.Array], Any] | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    only: Iterable[int] | None = None,
    search: Any = None,
    out: str | os.PathLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
):
    """Train many configurations; each group of equal shapes is one compiled program.

    Every keyword of :func:`jaxgd.fit` is accepted as the base setting; ``grid`` /
    ``random`` / ``configs`` override it per configuration. Any numeric hyper-parameter
    (optimizer, schedule, ``l1``, ``l2``, ``clip_norm``, ``clip_value``,
    ``weight_decay``, stop conditions) is an axis, as are ``batch_size`` (``None`` or
    ``"full"`` for full batch), ``seed`` (seed s reproduces ``fit(..., key=s)``),
    ``fold`` (with ``folds=k``; all k folds by default), ``optimizer`` and
    ``accumulate``.

    Args:
      loss, params, data: as for :func:`jaxgd.fit`. ``params`` may be ``None`` when
        ``init(key) -> params`` draws each seed's initial parameters (a model object,
        e.g. an equinox Module, is split as ``params`` is: floating arrays trained,
        other leaves held; a held array must be a fixed value, not computed by jax).
        Shape axes: the keyword parameters of ``init`` after the key (e.g.
        ``init(key, hidden)``) are sweep axes that may change the parameters' shapes
        (:func:`shape_axes`); each distinct value (tuple) is its own group, like a batch
        size, its parameters drawn as ``init(key, hidden=value)``; the loss must accept
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
    opts["progress"] = _agree_progress(bool(opts["progress"]))
    cfgs = expand_configs(grid, random, configs, shape=shape_axes(init))
    cfgs = _with_folds(cfgs, folds, val_data)
    all_idx = _selected(cfgs, only)
    if params is None and init is None:
        raise ValueError("params is None: give initial parameters or init=function(key)")
    if mesh is not None:
        if not isinstance(mesh, jax.sharding.Mesh) or "config" not in mesh.axis_names:
            raise ValueError(f"mesh={mesh!r} must be a jax.sharding.Mesh with an axis "
                             "named 'config'")

    from .data import kfold_indices, validate_data
    from .options import GIVEN, normalize_shuffle
    from .prepare import program_data

    data, n = validate_data(data, "data")
    if folds is not None and folds > n:
        raise ValueError(f"folds={folds!r} is more than the {n} samples of data")
    fold_split = kfold_indices(n, folds, shuffle=True, seed=fold_seed) if folds else None
    if folds is not None and normalize_shuffle("shuffle", shuffle) == GIVEN:
        raise ValueError(f"shuffle= an order array cannot be combined with folds={folds!r} "
                         "(each fold trains on its own part of the data): use shuffle=True "
                         "or False")
    if search is not None:
        search = _checked_search(search, cfgs, epochs, eval_every)
    groups = _make_groups(loss, params, data, cfgs, all_idx, opts, fold_split)

    base = {k: opts[k] for k in STRUCTURAL_AXES + ("seed",)}
    # what determines the results (see jaxgd.options: each option's fingerprint entry)
    settings = {k: opts[k] for k in fingerprint_settings()}
    settings["loss"] = loss
    if search is not None:  # only then: folders of sweeps without one keep their key
        settings["search"] = search
    fingerprint = None
    if out is not None or jax.process_count() > 1:
        fingerprint = _fingerprint(cfgs, all_idx, base, dict(hparams or {}), epochs, shuffle,
                                   drop_last, folds, fold_seed, settings,
                                   (data, params if groups[0].prepared.combined is None
                                    else groups[0].prepared.params, val_data, state),
                                   [_program_digest(g.prepared) for g in groups])
    _agree_fingerprint(fingerprint)
    store = RunStore.open(out, fingerprint) if out is not None else None
    try:
        lineage = None
        data = program_data(groups[0].prepared, data)  # with shuffle= orders: (data, orders)
        if search is None:
            results = _run_groups(groups, data, val_data, fold_split, chunk_size,
                                  memory_budget, epochs, mesh, store, progress)
        else:
            results, lineage = _run_search(search, groups, cfgs, grid, random, data, val_data,
                                           fold_split, chunk_size, memory_budget, epochs,
                                           mesh, store)
        res = SweepResult.from_runs(cfgs, all_idx, results, epochs, folds=folds)
        if lineage is not None:
            import pandas as pd

            res.lineage = pd.DataFrame(lineage)
            _pbt_final_columns(res)
        if groups[0].prepared.combined is not None:  # the model object, stacked arrays
            res.param_groups = [_as_model(pg, groups) for pg in res.param_groups]
        res.fingerprint = fingerprint
        if store is not None:
            res.save(store.path, _store=store)  # releases the lock
    finally:
        if store is not None:
            store.release_lock_on_error()
    return res


def _checked_search(search, cfgs, epochs: int, eval_every: int):
    """``search`` validated against the sweep's epochs and axes (before anything runs)."""
    search = search_mod.check(search, epochs, eval_every)
    if isinstance(search, search_mod.Halving) and search.average:
        axes = set(k for c in cfgs for k in c)
        missing = [a for a in search.average if a not in axes]
        if missing:
            raise ValueError(f"search average={list(search.average)!r}: {missing[0]!r} is "
                             f"not a swept axis (axes: {sorted(axes)})")
    return search


def _with_folds(cfgs: list[dict[str, Any]], folds: int | None, val_data: Any):
    """The configurations, each repeated over the folds unless a ``fold`` axis is given."""
    if folds is not None:
        if val_data is not None:
            raise ValueError("give either folds=k or val_data, not both")
        if not any("fold" in c for c in cfgs):
            cfgs = [{**c, "fold": f} for c in cfgs for f in range(folds)]
        for c in cfgs:
            if "fold" in c and not 0 <= c["fold"] < folds:
                raise ValueError(f"axis 'fold' has value {c['fold']!r}; folds={folds}")
    elif any("fold" in c for c in cfgs):
        raise ValueError("axis 'fold' needs folds=k")
    return cfgs


def _selected(cfgs: list[dict[str, Any]], only: Iterable[int] | None) -> list[int]:
    """The indices of the configurations to run (``only=``, default all)."""
    if only is None:
        return list(range(len(cfgs)))
    if isinstance(only, (str, bytes)) or not isinstance(only, Iterable):
        raise TypeError(f"only={only!r} must be a list of configuration indices")
    only = list(only)
    for i in only:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"only={only!r} must hold integer configuration indices, "
                            f"got {i!r}")
    sel = sorted(set(int(i) for i in only))
    if not sel or sel[0] < 0 or sel[-1] >= len(cfgs):
        raise ValueError(f"only={only!r} must select configurations in 0..{len(cfgs) - 1}")
    return sel


class Row(NamedTuple):
    """A configuration of a group: its index in the sweep, its seed and fold."""

    config: int
    seed: int
    fold: int | None


@dataclass
class Group:
    """Configurations that share one compiled program (equal shapes and structure)."""

    prepared: Prepared
    rows: list[Row] = field(default_factory=list)
    numeric: list[dict[str, Any]] = field(default_factory=list)  # per row: traced values
    key_bits: list[Any] = field(default_factory=list)  # per row: words of its loss key


def _make_groups(loss, params, data, cfgs, all_idx, opts, fold_split) -> list[Group]:
    """Validate every configuration and group them (nothing is compiled yet)."""
    base_hp = dict(opts["hparams"] or {})
    base = {k: opts[k] for k in STRUCTURAL_AXES + ("seed",)}
    shape_names = shape_axes(opts["init"])
    known_struct = set(STRUCTURAL_AXES) | set(STREAM_AXES) | set(shape_names)
    groups: dict[Any, Group] = {}
    for i in all_idx:
        c = cfgs[i]
        full = {**base, **{k: v for k, v in c.items() if k in known_struct}}
        if full["batch_size"] == "full":
            full["batch_size"] = None
        shape = _shape_of(opts["init"], shape_names, {**base_hp, **c}, i, c)
        hp = {k: v for k, v in {**base_hp, **c}.items() if k not in known_struct}
        fold = c.get("fold")
        n_train = None if fold is None else len(fold_split[fold][0])
        key_struct = (
            lossform.hashable(full["optimizer"]), full["batch_size"], full["accumulate"],
            full["schedule"], n_train, tuple(sorted(hp)), shape,
            # non-numeric values (e.g. nesterov=True/False) change the program: own group
            tuple(sorted((k, v) for k, v in hp.items()
                         if isinstance(v, bool | str) or v is None)),
        )
        g = groups.get(key_struct)
        if g is None:
            program_opts = {**opts, **{k: full[k] for k in STRUCTURAL_AXES}, "hparams": hp}
            init_fn = _shaped_init(opts["init"], shape, i, c) if shape else opts["init"]
            try:
                prep = prepare(loss, params, data, program_opts, init_fn=init_fn,
                               data_checked=True, n_train=n_train,
                               val_from_index=fold is not None)
            except (ValueError, TypeError) as e:
                raise type(e)(f"configuration {i} {c}: {e}") from e
            g = groups[key_struct] = Group(prep)
        spec = g.prepared.spec
        try:
            # base stop keywords first: a value on a sweep axis overrides them
            numeric, static, _ = split_hparams(loss, spec.opt, spec.schedule,
                                               {**stop_hparams(opts), **hp})
        except (ValueError, TypeError) as e:
            raise type(e)(f"configuration {i} {c}: {e}") from e
        if tuple(sorted(static.items())) != spec.static_hparams:
            # a static value differs: its own group
            raise ValueError(f"configuration {i} {c}: non-numeric hyper-parameters must be "
                             "the same across a sweep axis")
        g.rows.append(Row(i, int(full["seed"]), fold))
        g.numeric.append(numeric)
        if spec.form.key:  # as fit(..., hparams=hp) derives them (jaxgd.loss_key)
            g.key_bits.append(lossform.key_bits(lossform.key_hparams(hp)))
    return list(groups.values())


def shape_axes(init: Callable[..., Any] | None) -> tuple[str, ...]:
    """The sweep axes that change parameter shapes: the parameters of ``init`` after the
    key that may be passed by keyword (``init(key, hidden, depth=2)`` -> ``("hidden",
    "depth")``)."""
    if init is None:
        return ()
    try:
        ps = list(inspect.signature(init).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: no shape axes
        return ()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in ps[1:] if p.kind in kinds)


def _shape_of(init, names, values, i, c) -> tuple[tuple[str, Any], ...]:
    """The shape-axis values of configuration ``i`` (sorted ``(name, value)`` pairs; lists
    become tuples), init's defaults filled in; () when ``init`` takes none."""
    if not names:
        return ()
    sig = inspect.signature(init).parameters
    out = []
    for name in names:
        if name in values:
            v = _frozen(values[name])
            try:
                hash(v)
            except TypeError:
                raise TypeError(f"configuration {i} {c}: shape axis {name!r} has value "
                                f"{values[name]!r}; use numbers, strings or lists of them"
                                ) from None
        elif sig[name].default is not inspect.Parameter.empty:
            continue  # init's own default
        else:
            raise ValueError(f"configuration {i} {c}: init needs {name!r}, a shape axis: "
                             f"give it as a grid axis (e.g. grid={{{name!r}: [...]}}) or in "
                             "hparams")
        out.append((name, v))
    return tuple(sorted(out))


def _as_model(pg, groups: list[Group]):
    """A parameter group's stacked trained part rebuilt as the model object of the group
    (shape) it was trained in."""
    from .results import ParamGroup

    def sig(tree, lead):
        leaves, treedef = jax.tree.flatten(tree)
        return treedef, [np.shape(x)[lead:] for x in leaves]

    want = sig(pg.params, 1)
    g = next(g for g in groups if sig(g.prepared.params, 0) == want)
    return ParamGroup(pg.rows, g.prepared.combined.rebuild(pg.params))


def _frozen(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


@functools.lru_cache(maxsize=256)
def _init_with(init, shape):
    return functools.partial(init, **dict(shape))


def _shaped_init(init, shape, i, c):
    """``init`` with the shape axes bound (the same object for equal values, so a program
    is compiled once per shape); refused before compilation if ``init`` rejects them."""
    fn = _init_with(init, shape)
    try:  # (its array leaves: a model object may hold others, e.g. an activation)
        jax.eval_shape(lambda k: [x for x in jax.tree.leaves(fn(k))
                                  if isinstance(x, jax.Array)], jax.random.key(0))
    except Exception as e:  # noqa: BLE001 - whatever init raises names the axis
        vals = ", ".join(f"{k}={v!r}" for k, v in shape)
        raise ValueError(f"configuration {i} {c}: init rejects shape axis {vals}: "
                         f"{type(e).__name__}: {e}") from e
    return fn


def _fingerprint(cfgs, idx, base, base_hp, epochs, shuffle, drop_last, folds, fold_seed,
                 settings, data, programs=()) -> str:
    """A digest of what determines the results (to refuse resuming a different sweep).

    Covered: every configuration and option (functions by name, code digest, defaults
    and closures, see :func:`_stable_repr`), the bytes of the data, validation data and
    initial parameters, each group's program digest (:func:`_program_digest`: the loss's
    jaxpr, which includes every helper and global it calls), jaxgd's own source and the
    versions of jax, jaxlib and optax. Not covered: the hardware and XLA flags, and
    Python code that runs outside tracing (an optimizer factory's helpers are covered by
    name and code of the factory only).
    """
    h = hashlib.sha256()
    desc = {
        "configs": [cfgs[i] for i in idx], "base": base, "hparams": base_hp, "epochs": epochs,
        "shuffle": shuffle, "drop_last": drop_last, "folds": folds, "fold_seed": fold_seed,
        "settings": settings, "programs": list(programs), "code": _code_digest(),
    }
    h.update(json.dumps(desc, sort_keys=True, default=_stable_repr).encode())
    for leaf in jax.tree.leaves(data):
        a = np.asarray(leaf)
        h.update(str((a.shape, a.dtype)).encode())
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))  # all of it
    return h.hexdigest()[:16]


def _code_digest() -> str:
    """jaxgd's own source files and the versions of what computes (cached per process)."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        import importlib.metadata as md
        from pathlib import Path

        h = hashlib.sha256()
        here = Path(__file__).resolve().parent
        for f in sorted(here.glob("*.py")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        for dist in ("jax", "jaxlib", "optax"):
            try:
                h.update(f"{dist}={md.version(dist)}".encode())
            except md.PackageNotFoundError:
                pass
        _CODE_DIGEST = h.hexdigest()[:16]
    return _CODE_DIGEST


_CODE_DIGEST: str | None = None


def _program_digest(prep) -> str:
    """A digest of what a group's program computes with the user's functions: the jaxpr of
    ``loss(params, batch)`` for the data's shapes (every helper and global it calls at
    trace time shows in it), with the values of the arrays it closes over, and the same
    for ``init`` and the output of ``penalty_mask``. Computed once per group."""
    import re

    spec, params, data = prep[0], prep[1], prep[2]
    probe = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((min(2, a.shape[0]),) + a.shape[1:], a.dtype), data)
    h = hashlib.sha256()

    def add_jaxpr(fn, *args):
        try:
            closed = jax.make_jaxpr(fn)(*args)
        except Exception as e:  # noqa: BLE001 - checked by prepare already; be safe
            h.update(f"untraceable {type(e).__name__}".encode())
            return
        h.update(re.sub(r" at 0x[0-9a-fA-F]+", "", str(closed.jaxpr)).encode())
        for c in closed.consts:
            h.update(_stable_repr(np.asarray(c) if not (
                isinstance(c, jax.Array) and jnp.issubdtype(c.dtype, jax.dtypes.prng_key))
                else jax.random.key_data(c)).encode())

    def loss_call(p, b, s):
        return lossform.call(spec.form, spec.loss, p, b, state=s, train=True,
                             key=jax.random.key(0) if spec.form.key else None,
                             hparams={k: jnp.zeros(()) for k in spec.form.hparams}
                             if spec.form.takes_hparams else None)

    add_jaxpr(loss_call, params, probe, prep.state)
    if spec.init_fn is not None:
        add_jaxpr(spec.init_fn, jax.random.key(0))
    if spec.penalty_mask is not None:
        try:
            mask = jax.tree.leaves(spec.penalty_mask(params))
            h.update(_stable_repr([np.asarray(m) for m in mask]).encode())
        except Exception as e:  # noqa: BLE001
            h.update(f"mask {type(e).__name__}".encode())
    return h.hexdigest()[:16]


def _stable_repr(v: Any, depth: int = 0) -> str:
    """A description of ``v`` that is the same in every process and run.

    ``repr`` of a function holds a memory address, so a resumed sweep with
    ``optimizer=optax.adam`` would never match. Functions are described by name, a digest
    of their code, their defaults and what their closures hold (numbers, arrays, other
    functions, a few levels deep), so an edited loss or one closing over other values is
    not resumed; ``functools.partial`` by its function, arguments and keywords.
    """
    import marshal
    import re

    if depth > 3:
        return type(v).__name__
    rec = lambda x: _stable_repr(x, depth + 1)  # noqa: E731
    if isinstance(v, functools.partial):
        kw = {k: rec(x) for k, x in sorted(v.keywords.items())}
        return f"partial({rec(v.func)}, {[rec(a) for a in v.args]}, {kw})"
    if isinstance(v, (np.ndarray, jax.Array)) and not (
            isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jax.dtypes.prng_key)):
        a = np.ascontiguousarray(np.asarray(v))
        return f"array{a.shape}{a.dtype}:{hashlib.sha256(a.tobytes()).hexdigest()[:16]}"
    if isinstance(v, (list, tuple)):
        return f"{type(v).__name__}({[rec(x) for x in v]})"
    if isinstance(v, dict):
        return f"dict({[(rec(k), rec(x)) for k, x in v.items()]})"
    if callable(v) and hasattr(v, "__qualname__"):
        name = f"{getattr(v, '__module__', '')}.{v.__qualname__}"
        code = getattr(v, "__code__", None)
        if code is not None:
            try:
                name += ":" + hashlib.sha256(marshal.dumps(code)).hexdigest()[:12]
            except ValueError:  # unmarshallable constants: the name alone
                pass
            if getattr(v, "__defaults__", None):
                name += f" defaults={[rec(d) for d in v.__defaults__]}"
            cells = []
            for cell in getattr(v, "__closure__", None) or ():
                try:
                    cells.append(rec(cell.cell_contents))
                except ValueError:  # an empty cell
                    cells.append("<empty>")
            if cells:
                name += f" closure={cells}"
        return name
    return re.sub(r" at 0x[0-9a-f]+", "", repr(v))


def default_mesh() -> jax.sharding.Mesh | None:
    """All devices of all processes on one ``"config"`` axis, or None for one device."""
    devs = jax.devices()
    if len(devs) == 1:
        return None
    return jax.sharding.Mesh(np.asarray(devs), ("config",))


def _bytes_per_config(prep: Prepared, epochs: int) -> int:
    """Device memory one configuration of a chunk needs (a rough upper bound).

    Parameters and their copies (gradient, update, optimizer state, best parameters), a
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
    # params, gradient, new params, optimizer state (<= 3 copies), best params
    act = 4 * spec.plan.batch_size * spec.accumulate * 64  # activations of a step, rough
    full = _full_pass_bytes(prep) if spec.metrics != "batch" or spec.track_init else 0
    return pbytes * 8 + hist + act + full


def _full_pass_bytes(prep: Prepared) -> int:
    """Bytes of the intermediates of ``loss(params, data)`` on all N samples (their sum:
    a bound on what the forward pass, and the gradient's residuals, hold at once)."""
    spec, params, data = prep.spec, prep.params, prep.data
    n_train = spec.plan.n
    shapes = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((n_train,) + a.shape[1:], a.dtype), data)
    try:
        jaxpr = jax.make_jaxpr(spec.loss)(params, shapes).jaxpr
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


def _plan_chunks(groups: list[Group], chunk_size, memory_budget, epochs, ndev):
    """Every group's streams split into blocks, each block into chunks of one width."""
    budget = memory_budget or (2 << 30)
    plans = []
    for gi, g in enumerate(groups):
        streams = sorted({(r.seed, r.fold if r.fold is not None else -1) for r in g.rows})
        sidx = {st: k for k, st in enumerate(streams)}
        per_stream: list[list[int]] = [[] for _ in streams]
        for i, r in enumerate(g.rows):
            per_stream[sidx[(r.seed, r.fold if r.fold is not None else -1)]].append(i)
        cap = chunk_size or max(1, min(4096, budget // max(1, _bytes_per_config(g.prepared,
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


def _run_groups(groups: list[Group], data, val_data, fold_split, chunk_size, memory_budget,
                epochs, mesh, store, progress) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    if mesh is None:
        mesh = default_mesh()
    ndev = 1 if mesh is None else int(np.prod(list(mesh.shape.values())))
    plans = _plan_chunks(groups, chunk_size, memory_budget, epochs, ndev)
    total = sum(p.n_chunks for p in plans)
    bar = tqdm(total=total, desc="sweep", unit="chunk", leave=False,
               disable=not progress or jax.process_index() != 0)  # process 0 draws
    results = []
    try:
        for p in plans:
            for ci in range(p.n_chunks):
                bar.set_postfix(group=f"{p.group_index + 1}/{len(groups)}",
                                width=p.width * len(p.streams))
                tag = f"{p.tag}_c{ci:05d}"
                st0 = p.group.prepared.state
                cached = (store.load_chunk(tag, jax.tree.structure(p.group.prepared.params),
                                           None if st0 is None else jax.tree.structure(st0))
                          if store is not None else None)
                if cached is not None and not np.array_equal(
                        np.sort(np.asarray(cached.get("config", []))), _chunk_configs(p, ci)):
                    cached = None  # written with another chunk width: recompute
                cached = _agree_cached(cached)
                if cached is None:
                    with epoch_progress(p.group.prepared.spec,
                                        desc=f"group {p.group_index + 1} chunk {ci + 1}"):
                        cached = _run_chunk(p, ci, data, val_data, fold_split, mesh)
                    if store is not None:
                        store.save_chunk(tag, cached)
                results.append(cached)
                bar.update(1)
    finally:
        bar.close()
    return results


def _chunk_configs(p: ChunkPlan, ci: int) -> np.ndarray:
    """The sorted configuration indices that chunk ``ci`` of a plan holds."""
    idx = [p.group.rows[r].config for rows in p.per_stream
           for r in rows[ci * p.width:(ci + 1) * p.width]]
    return np.sort(np.asarray(idx, np.int64))


def _chunk_valid(per_stream, ci, width) -> np.ndarray:
    """[streams, width]: True for the real configurations of chunk ``ci`` (False: padding)."""
    valid = np.zeros((len(per_stream), width), bool)
    for s, rows in enumerate(per_stream):
        valid[s, :len(rows[ci * width:(ci + 1) * width])] = True
    return valid


def _agree_progress(progress: bool) -> bool:
    """With several processes, progress is on when any process asks for it: the progress
    callback is part of the compiled program, and every process must run the same program
    (else their collectives mismatch). Only process 0 draws the bars."""
    if jax.process_count() == 1:
        return progress
    from jax.experimental import multihost_utils

    asked = multihost_utils.process_allgather(np.int32(progress))
    return bool(np.any(np.asarray(asked)))


def _agree_fingerprint(fingerprint: str | None) -> None:
    """With several processes, refuse (on every process) a run whose processes were given
    different sweeps: they would compile different programs and wait for each other's
    collectives for ever."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    words = np.frombuffer(bytes.fromhex(fingerprint), np.uint32)
    every = np.asarray(multihost_utils.process_allgather(words)).reshape(-1, words.size)
    if not (every == words).all():
        got = ", ".join(f"process {i}: {r.tobytes().hex()}" for i, r in enumerate(every))
        raise ValueError(f"the {len(every)} processes of this run were given different "
                         f"sweeps (fingerprints {got}): every process must run the same "
                         "sweep (the same config file, data and arguments)")


def _agree_cached(cached):
    """With several processes, use a stored chunk only if every process has it (else all
    recompute it: a process that skipped the program would leave the others waiting)."""
    if jax.process_count() == 1:
        return cached
    from jax.experimental import multihost_utils

    have = multihost_utils.process_allgather(np.int32(cached is not None))
    return cached if bool(np.all(np.asarray(have))) else None


class ChunkInputs(NamedTuple):
    """One program call's configurations and inputs."""

    grid_rows: np.ndarray  # [S, width] row numbers into group.rows (padding repeats one)
    valid: np.ndarray  # [S, width] False for padding
    tc: dict[str, Any]  # traced hyper-parameters [S, width] (host arrays)
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
    valid = _chunk_valid(per_stream, ci, width)
    for s, rows in enumerate(per_stream):
        part = rows[ci * width:(ci + 1) * width]
        grid_rows[s, :] = rows[0]
        grid_rows[s, :len(part)] = part
    tc_np = {k: np.asarray([[g.numeric[r][k] for r in row] for row in grid_rows])
             for k in spec.numeric_names}
    tc = {k: tc_array(k, v, dt) for k, v in tc_np.items()}  # host arrays, sharded below
    if spec.progress:  # the progress bar counts the active configurations, not padding
        tc[PROGRESS_VALID] = valid
    if spec.form.key:
        tc[KEY_BITS] = np.stack([np.stack([g.key_bits[r] for r in row]) for row in grid_rows])
    keys = jnp.stack([as_key(s) for s, _ in streams])
    if fold_split is not None and streams[0][1] >= 0:
        tidx = jnp.asarray(np.stack([fold_split[f][0] for _, f in streams]).astype(np.int32))
        vidx = jnp.asarray(np.stack([fold_split[f][1] for _, f in streams]).astype(np.int32))
    else:
        tidx = vidx = None
    return ChunkInputs(grid_rows, valid, tc, keys, tidx, vidx)


_COMPILE_SECONDS = [0.0]  # JAX's compile time in this process so far (the listener adds)
_SPEC_COMPILE: dict[Any, float] = {}  # per program spec: the longest compile seen (seconds)


def _count_compiles(event: str, secs: float, **_: Any) -> None:
    if event.startswith("/jax/core/compile/"):
        _COMPILE_SECONDS[0] += secs


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def _note_compile(spec, c0: float) -> float:
    """The compile seconds since ``c0``, remembered for ``spec`` (an adaptive search
    weighs a new width's compile against the compute it saves)."""
    secs = _COMPILE_SECONDS[0] - c0
    _SPEC_COMPILE[spec] = max(secs, _SPEC_COMPILE.get(spec, 0.0))
    return secs


def _run_chunk(p: ChunkPlan, ci: int, data, val_data, fold_split, mesh) -> dict[str, Any]:
    """Run chunk ``ci`` of a plan; returns the program's outputs (host arrays) per
    configuration, with their indices under ``"config"``."""
    g, S, width = p.group, len(p.streams), p.width
    spec, params = g.prepared.spec, g.prepared.params
    ch = chunk_inputs(g, p.streams, p.per_stream, ci, width, fold_split)
    prog, columns = program_for(spec, params, ch.tc, S * width)
    args, put_scalar = _program_args(g, ch, data, mesh)
    c0 = _COMPILE_SECONDS[0]
    out = run_program(prog, spec, columns, args, to_host=_to_host, put_scalar=put_scalar)
    _note_compile(spec, c0)
    idx = [g.rows[ch.grid_rows[s, c]].config for s in range(S) for c in range(width)
           if ch.valid[s, c]]
    sel = np.nonzero(ch.valid.reshape(-1))[0]
    flat = jax.tree.map(lambda a: a.reshape((S * width,) + a.shape[2:])[sel], out)
    # a chunk as the run folder stores it: the program's outputs by name, and the
    # configurations they belong to
    return {**flat._asdict(), "config": np.asarray(idx, np.int64)}


def _program_args(g: Group, ch: ChunkInputs, data, mesh):
    """(the program's ``(params0, data, val, tc, keys, tidx, vidx, state0)``, on the mesh
    when there is one; the function that makes a host scalar a program input)."""
    spec = g.prepared.spec
    args = (None if spec.init_fn is not None else g.prepared.params, data,
            g.prepared.val_data, ch.tc, ch.keys, ch.tidx, ch.vidx, g.prepared.state)
    if mesh is None:
        return args, lambda v: v
    return _shard_args(mesh, args), functools.partial(_replicated, mesh)


def _shard_args(mesh, args):
    """Global arrays: configurations split over the mesh, everything else replicated."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    params, data, val, tc, keys, tidx, vidx, state = args
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
            tree_put(tc, cfg), put(keys, rep), put(tidx, rep), put(vidx, rep),
            tree_put(state, rep))


def _replicated(mesh, value):
    """A host value as a global array every device holds whole (the same on every
    process)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, NamedSharding(mesh, P()),
                                        lambda i: host[i])


def _to_host(x):
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# the options' entries of the docstring come from the table in jaxgd.options
sweep.__doc__ = sweep.__doc__.replace("      {options}\n", document("sweep") + "\n")


# ------------------------------------------------------------------- adaptive search

@dataclass
class Member:
    """A configuration of an adaptive search between program calls (host arrays)."""

    numeric: dict[str, Any]  # its traced hyper-parameters (PBT changes them)
    state: Any = None  # the program state, no leading axes (None: not started)
    hist: list[dict[str, np.ndarray]] = field(default_factory=list)  # packed, per call
    pruned: bool = False

    @property
    def active(self) -> bool:
        return self.state is None or bool(self.state.active)


class SearchRun(NamedTuple):
    """What the calls of a search share."""

    groups: list[Group]
    data: Any
    val_data: Any
    fold_split: Any
    chunk_size: int | None
    memory_budget: int | None
    epochs: int
    mesh: Any
    ndev: int
    members: dict[tuple[int, int], Member]  # (group, row) -> member
    compact: bool | str  # survivors in narrower programs: True, False or "auto"
    widths: dict[int, int]  # per group: the width of its first call
    costs: dict[int, tuple[float, float]]  # per group: (compile s, s per lane-evaluation)
    compiled: set[tuple[int, int, int]]  # (group, streams, width) compiled in this search
    store: Any  # the run folder (out=), or None: boundaries are saved there


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _advance(run: SearchRun, gi: int, rows: list[int], start: int, end: int,
             desc: str) -> None:
    """Evaluations ``start``..``end`` of group ``gi``'s rows ``rows`` from their states
    (or their initial state when ``start`` is 0), in chunks of :func:`_search_width`."""
    g = run.groups[gi]
    sub = Group(g.prepared, [g.rows[r] for r in rows],
                [run.members[(gi, r)].numeric for r in rows],
                [g.key_bits[r] for r in rows] if g.key_bits else [])
    for p in _plan_chunks([sub], run.chunk_size, run.memory_budget, run.epochs, run.ndev):
        C = max(len(v) for v in p.per_stream)
        width = _search_width(run, gi, p, end - start)
        for ci in range(-(-C // width)):
            ch = chunk_inputs(sub, p.streams, p.per_stream, ci, width, run.fold_split)
            _advance_chunk(run, gi, rows, ch, start, end, desc)


def _advance_chunk(run: SearchRun, gi: int, rows: list[int], ch: ChunkInputs, start: int,
                   end: int, desc: str) -> None:
    """One program call of a search: the members of ``ch`` from ``start`` to ``end``;
    their states, outputs and history kept on the host, the speed measured."""
    g = run.groups[gi]
    spec, params = g.prepared.spec, g.prepared.params
    S, width = ch.grid_rows.shape
    prog, _ = program_for(spec, params, ch.tc, S * width)
    args, put_scalar = _program_args(g, ch, run.data, run.mesh)
    params0, data, val, tc, keys, tidx, vidx, state0 = args
    if start == 0:
        st = prog.init(params0, data, val, tc, keys, tidx, vidx, state0)
    else:
        st = _member_states(run, gi, rows, ch, keys, tc)
    t0, c0 = time.perf_counter(), _COMPILE_SECONDS[0]
    with epoch_progress(spec, desc=desc):
        st, out, hist = run_blocks(prog, spec, st, start, end,
                                   (data, val, tc, keys, tidx, vidx),
                                   to_host=_to_host, put_scalar=put_scalar, pad=True)
    st = jax.tree.map(_to_host, state_axes(st, keys, tc))
    comp = _note_compile(spec, c0)
    ran = max(1, int(np.max(out.evals_run)) - start)
    run.costs[gi] = (max(comp, run.costs.get(gi, (0.0, 0.0))[0]),
                     max(0.0, time.perf_counter() - t0 - comp) / (ran * S * width))
    run.compiled.add((gi, S, width))
    for s, c in zip(*np.nonzero(ch.valid), strict=True):
        m = run.members[(gi, rows[ch.grid_rows[s, c]])]
        at = lambda a: np.array(a[s, c])  # noqa: E731
        m.state = jax.tree.map(at, st)
        m.hist.append({k: at(v) for k, v in hist.items()})




def _search_width(run: SearchRun, gi: int, p: ChunkPlan, n_evals: int) -> int:
    """The width of a search's call: the group's first call takes a plain sweep's width
    (``top``); later calls take ``top`` or, for fewer configurations, a narrower power of
    two: always with ``compact=True``, never with False, and with "auto" when its compute
    plus a compile (unless that shape was compiled in this search) costs less than
    ``top``'s compute, at the speed and compile time measured in this search. Processes
    agree on the measurements."""
    S, need = len(p.streams), p.width
    top = run.widths.setdefault(gi, need)
    narrow = min(top, -(-_pow2(need) // run.ndev) * run.ndev)
    if narrow >= top or run.compact is False:
        return top
    if run.compact is True or gi not in run.costs:
        return narrow
    comp, per_lane = run.costs[gi]
    comp = max(comp, _SPEC_COMPILE.get(run.groups[gi].prepared.spec, 0.0))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        comp, per_lane = (float(v) for v in multihost_utils.broadcast_one_to_all(
            np.asarray([comp, per_lane])))

    def cost(w):
        return n_evals * S * w * per_lane + (0.0 if (gi, S, w) in run.compiled else comp)

    return narrow if cost(narrow) < cost(top) else top


def _checkpoint(run: SearchRun, where: dict[str, Any]) -> None:
    """Save the members (states, histories, hyper-parameters) at a boundary (out=)."""
    if run.store is None:
        return
    arrays, members = {}, []
    for (gi, r), m in run.members.items():
        if m.state is None:
            continue
        for i, leaf in enumerate(jax.tree.leaves(m.state)):
            arrays[f"{gi}/{r}/s{i}"] = np.asarray(leaf)
        for k in m.hist[0]:
            arrays[f"{gi}/{r}/h/{k}"] = np.concatenate([h[k] for h in m.hist])
        members.append([gi, r, {k: np.asarray(v).item() for k, v in m.numeric.items()},
                        m.pruned])
    run.store.save_search(arrays, where=where, members=members)


def _restore(run: SearchRun) -> dict[str, Any] | None:
    """The members as saved at the last boundary of this search (out=), and where that
    was; None to start from the beginning."""
    got = _agree_cached(run.store.load_search() if run.store is not None else None)
    if got is None:
        return None
    arrays, meta = got
    treedefs: dict[int, Any] = {}
    for gi, r, numeric, pruned in meta["members"]:
        if gi not in treedefs:
            treedefs[gi] = _state_treedef(run, gi)
        m = run.members[(gi, r)]
        saved = sum(1 for k in arrays if k.startswith(f"{gi}/{r}/s"))
        if saved != treedefs[gi].num_leaves:
            raise ValueError(
                f"the search state saved in {run.store.path} holds {saved} arrays per "
                f"member where this version of jaxgd's program state has "
                f"{treedefs[gi].num_leaves} (saved by another version): remove "
                f"{run.store.path / 'chunks' / 'search.npz'} to restart the search")
        m.state = jax.tree.unflatten(treedefs[gi], [arrays[f"{gi}/{r}/s{i}"] for i in
                                                    range(treedefs[gi].num_leaves)])
        pre = f"{gi}/{r}/h/"
        m.hist = [{k[len(pre):]: v for k, v in arrays.items() if k.startswith(pre)}]
        m.numeric, m.pruned = {**m.numeric, **numeric}, bool(pruned)
    return meta["where"]


def _state_treedef(run: SearchRun, gi: int):
    """The structure of one configuration's program state in group ``gi`` (traced, not
    compiled)."""
    g = run.groups[gi]
    row = g.rows[0]
    ch = chunk_inputs(g, [(row.seed, row.fold if row.fold is not None else -1)], [[0]], 0,
                      1, run.fold_split)
    spec = g.prepared.spec
    prog, _ = program_for(spec, g.prepared.params, ch.tc, 1)
    shapes = jax.eval_shape(prog.init, None if spec.init_fn is not None else g.prepared.params,
                            run.data, g.prepared.val_data, ch.tc, ch.keys, ch.tidx, ch.vidx,
                            g.prepared.state)
    return jax.tree.structure(shapes)


def _member_states(run: SearchRun, gi: int, rows: list[int], ch: ChunkInputs, keys, tc):
    """The members' states stacked [S, width] (padding: a stopped copy), in the
    program's layout, on the mesh."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    S, W = ch.grid_rows.shape
    slots = [run.members[(gi, rows[r])].state for r in ch.grid_rows.reshape(-1)]
    st = jax.tree.map(lambda *xs: np.stack(xs).reshape((S, W) + np.shape(xs[0])), *slots)
    st = st._replace(active=st.active & ch.valid)
    st = state_layout(st, keys, tc)
    if run.mesh is None:
        return jax.tree.map(jnp.asarray, st)
    one_s, one_c = layout(keys, tc)
    sh = NamedSharding(run.mesh, P() if one_c else P("config") if one_s else P(None, "config"))
    return jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, sh, lambda i: a[i]),
                        st)


def _member_value(run: SearchRun, gi: int, m: Member, metric: str, mode: str) -> float:
    """The member's ranking value: ``metric`` at its last evaluation with a finite value
    (worst for a diverged member)."""
    if m.state is not None and int(m.state.reason) == DIVERGED:
        return math.inf if mode == "min" else -math.inf
    series = _member_series(run.groups[gi], m, metric)
    finite = series[np.isfinite(series)]
    return float(finite[-1]) if finite.size else math.nan


def _member_series(g: Group, m: Member, name: str) -> np.ndarray:
    """A member's recorded values of ``name`` so far."""
    cols = _history_columns(g)
    if name in cols:
        return np.concatenate([h["scalars"][:, cols.index(name)] for h in m.hist])
    return np.concatenate([h[name] for h in m.hist])


def _history_columns(g: Group) -> tuple[str, ...]:
    return history_columns(g.prepared.spec, g.prepared.params, g.numeric[0])


def _check_search_metric(groups: list[Group], metric: str) -> None:
    for g in groups:
        names = set(_history_columns(g)) | set(metric_history_names(g.prepared.spec))
        names -= {"epoch", "lr"}
        if metric not in names:
            raise ValueError(f"search metric={metric!r} is not recorded by this sweep; "
                             f"recorded: {sorted(names)}")


def _search_results(run: SearchRun) -> list[dict[str, Any]]:
    """The members as the results of chunks (one per group), their histories padded to
    every evaluation (NaN where a member did not run)."""
    results = []
    K, n_evals = evals_of(run.groups[0].prepared.spec)
    for gi, g in enumerate(run.groups):
        spec = g.prepared.spec
        rows = [r for r in range(len(g.rows)) if run.members[(gi, r)].state is not None]
        if not rows:
            continue
        ms = [run.members[(gi, r)] for r in rows]
        hist = {}
        for k in ms[0].hist[0]:
            n = spec.epochs if k == "step_loss" else n_evals
            parts = [np.concatenate([h[k] for h in m.hist]) for m in ms]
            full = np.full((len(ms), n) + parts[0].shape[1:], np.nan, parts[0].dtype)
            for i, part in enumerate(parts):
                full[i, :len(part)] = part[:n]
            hist[k] = full
        # the outputs as the program's finalize gives them (selections only: exact)
        outs = [jax.tree.map(np.asarray, finalize(spec, m.state))._asdict() for m in ms]
        out = {k: jax.tree.map(lambda *xs: np.stack(xs), *[o[k] for o in outs])
               if outs[0][k] is not None else None for k in outs[0] if k != "history"}
        out["reason"] = np.where([m.pruned for m in ms], PRUNED, out["reason"])
        dt = out["init_loss"].dtype
        out["history"] = unpack_history(spec, _history_columns(g), hist, dt)
        out["config"] = np.asarray([g.rows[r].config for r in rows], np.int64)
        results.append(out)
    return results


def _run_members(run: SearchRun, keys: Iterable[tuple[int, int]], start: int, end: int,
                 desc: str) -> None:
    """Run the given members that are still active from ``start`` to ``end``."""
    by_group: dict[int, list[int]] = {}
    for gi, r in keys:
        if run.members[(gi, r)].active:
            by_group.setdefault(gi, []).append(r)
    for gi, rows in sorted(by_group.items()):
        _advance(run, gi, sorted(rows), start, end, desc)


def _run_halving(run: SearchRun, h: search_mod.Halving, cfgs, metric: str,
                 resume: dict[str, Any] | None = None) -> None:
    """Successive halving / Hyperband over the members (see :mod:`jaxgd.search`),
    continuing after the boundary ``resume`` (a saved one) if given."""
    K, _ = evals_of(run.groups[0].prepared.spec)
    units: dict[Any, list[tuple[int, int]]] = {}
    for (gi, r) in run.members:
        c = cfgs[run.groups[gi].rows[r].config]
        key = (tuple(sorted((k, _stable_repr(v)) for k, v in c.items()
                            if k not in h.average)) if h.average
               else run.groups[gi].rows[r].config)
        units.setdefault(key, []).append((gi, r))
    order = sorted(units, key=lambda u: min(run.groups[gi].rows[r].config
                                            for gi, r in units[u]))
    index = {u: j for j, u in enumerate(order)}
    at = resume or {"bracket": -1, "rung": -1, "live": []}
    brs = search_mod.brackets(h, order, run.epochs, K)
    for b, br in enumerate(brs):
        if b < at["bracket"]:
            continue
        live, start, first = list(br.units), 0, 0
        if b == at["bracket"]:
            live, first = [order[j] for j in at["live"]], at["rung"] + 1
            start = br.rungs[at["rung"]][0]
        for i, (end, keep) in enumerate(br.rungs):
            if i < first:
                continue
            desc = f"bracket {b + 1}/{len(brs)} rung {i + 1}/{len(br.rungs)}"
            _run_members(run, [k for u in live for k in units[u]], start, end, desc)
            if i < len(br.rungs) - 1:
                live = _prune(run, live, units, keep, metric, h.mode)
                start = end
            else:
                live = []
            _checkpoint(run, {"bracket": b, "rung": i, "live": [index[u] for u in live]})


def _prune(run: SearchRun, live: list[Any], units, keep: int, metric: str, mode: str):
    """The ``keep`` best units of ``live`` (by their members' mean ``metric``); the other
    units' active members are pruned."""
    values = {}
    for u in live:
        vals = [_member_value(run, gi, run.members[(gi, r)], metric, mode)
                for gi, r in units[u]]
        values[u] = float(np.mean(vals))
    kept = set(search_mod.ranked(values, mode)[:keep])
    for u in live:
        for k in units[u] if u not in kept else ():
            m = run.members[k]
            if m.active:
                m.pruned = True
                m.state = m.state._replace(active=np.zeros_like(m.state.active))
    return [u for u in live if u in kept]


def _run_pbt(run: SearchRun, p: search_mod.PBT, cfgs, priors, metric: str,
             resume: dict[str, Any] | None = None):
    """Population-based training over the members, continuing after the boundary
    ``resume`` (a saved one) if given; returns the lineage rows."""
    if len(run.groups) != 1:
        raise ValueError("search=PBT(...) needs every configuration in one compiled group "
                         "(the same optimizer, batch size, accumulate, schedule and shapes): "
                         f"this sweep has {len(run.groups)} groups")
    g = run.groups[0]
    names = _explored(p, g, cfgs)
    K, n_evals = evals_of(g.prepared.spec)
    if int(len(g.rows) * p.quantile) < 1:
        raise ValueError(f"search quantile={p.quantile} of a population of {len(g.rows)} "
                         "replaces no member: need population * quantile >= 1")
    rng = np.random.default_rng(p.seed)
    lineage = [{"config": row.config, "epoch": 0, "parent": row.config,
                **{k: float(g.numeric[r][k]) for k in names}} for r, row in enumerate(g.rows)]
    ends = list(range(p.interval // K, n_evals, p.interval // K)) + [n_evals]
    start, first = 0, 0
    if resume is not None:
        first, lineage = resume["interval"] + 1, resume["lineage"]
        rng.bit_generator.state = resume["rng"]
        start = ends[resume["interval"]]
    for i, end in enumerate(ends):
        if i < first:
            continue
        _run_members(run, run.members, start, end, f"interval {i + 1}/{len(ends)}")
        if end == n_evals:
            break
        values = {r: _member_value(run, 0, run.members[(0, r)], metric, p.mode)
                  for r in range(len(g.rows))}
        for ex in search_mod.exploit(values, p, rng):
            child, parent = run.members[(0, ex.member)], run.members[(0, ex.parent)]
            child.state = jax.tree.map(np.copy, parent.state)
            new = search_mod.explore({k: parent.numeric[k] for k in names}, names, priors, p,
                                     rng)
            for k, v in new.items():
                try:
                    _check_axis_value(k, v)
                except (ValueError, TypeError):
                    new[k] = parent.numeric[k]  # outside the hyper-parameter's range
            child.numeric = {**child.numeric, **new}
            lineage.append({"config": g.rows[ex.member].config, "epoch": end * K,
                            "parent": g.rows[ex.parent].config,
                            **{k: float(v) for k, v in new.items()}})
        start = end
        _checkpoint(run, {"interval": i, "lineage": lineage, "rng": rng.bit_generator.state})
    return lineage


def _pbt_final_columns(res) -> None:
    """PBT: after each explored axis column (a member's value at the start), the value
    the member ended with, ``final_<axis>``, from the lineage (its last exploit, else its
    start)."""
    lin = res.lineage
    names = [c for c in lin.columns if c not in ("config", "epoch", "parent")]
    last = lin.sort_values("epoch", kind="stable").groupby("config").tail(1).set_index(
        "config")
    t = res.table
    for k in names:
        if k in t.columns:
            t.insert(t.columns.get_loc(k) + 1, f"final_{k}",
                     last.loc[t["config"].to_numpy(), k].to_numpy(float))


def _explored(p: search_mod.PBT, g: Group, cfgs) -> list[str]:
    traced = set(g.prepared.spec.numeric_names)
    swept = [k for k in dict.fromkeys(k for c in cfgs for k in c)
             if k in traced and k not in STREAM_AXES]
    names = list(p.explore) if p.explore is not None else swept
    bad = [k for k in names if k not in traced]
    if bad:
        raise ValueError(f"search explore={list(names)!r}: {bad[0]!r} is not a traced "
                         f"hyper-parameter of this sweep (traced: {sorted(traced)})")
    if not names:
        raise ValueError("search=PBT(...) has no hyper-parameter to explore: put a numeric "
                         "hyper-parameter (e.g. learning_rate) on grid or random")
    return names


def _priors(grid, random) -> dict[str, Any]:
    """Each axis's prior for PBT's resampling: its grid values or random distribution."""
    out: dict[str, Any] = {k: list(v) for k, v in (grid or {}).items()
                           if isinstance(v, list | tuple)}
    for k, v in (random or {}).items():
        if k not in ("n", "random_seed"):
            out[k] = v
    return out


def _run_search(search, groups, cfgs, grid, random, data, val_data, fold_split, chunk_size,
                memory_budget, epochs, mesh, store=None):
    """Run an adaptive search; returns (chunk-like results, PBT lineage or None)."""
    if mesh is None:
        mesh = default_mesh()
    ndev = 1 if mesh is None else int(np.prod(list(mesh.shape.values())))
    spec0 = groups[0].prepared.spec
    metric = search.metric or search_mod.default_metric(spec0.has_val)
    _check_search_metric(groups, metric)
    members = {(gi, r): Member(dict(g.numeric[r]))
               for gi, g in enumerate(groups) for r in range(len(g.rows))}
    run = SearchRun(groups, data, val_data, fold_split, chunk_size, memory_budget, epochs,
                    mesh, ndev, members, getattr(search, "compact", True), {}, {}, set(),
                    store)
    resume = _restore(run)
    lineage = None
    if isinstance(search, search_mod.PBT):
        lineage = _run_pbt(run, search, cfgs, _priors(grid, random), metric, resume)
    else:
        _run_halving(run, search, cfgs, metric, resume)
    return _search_results(run), lineage
