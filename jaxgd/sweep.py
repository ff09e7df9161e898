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

import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import optim
from .train import (
    PROGRESS_VALID,
    _float_dtype,
    as_key,
    compiled_program,
    epoch_progress,
    normalize_shuffle,
    prepare,
    tc_array,
)

__all__ = ["sweep", "expand_configs", "STRUCTURAL_AXES"]

STRUCTURAL_AXES = ("batch_size", "optimizer", "accumulate", "schedule")
STREAM_AXES = ("seed", "fold")
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")


# ----------------------------------------------------------------------------- configs


def _axis_values(name: str, values: Any) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        values = [values]
    vals = list(np.asarray(values).tolist()) if _is_numeric_array(values) else list(values)
    if not vals:
        raise ValueError(f"grid axis {name!r} is empty")
    for v in vals:
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
        return
    if name in ("optimizer", "schedule"):
        return
    if isinstance(v, bool):
        return
    if isinstance(v, (int, float, np.integer, np.floating)):
        if not math.isfinite(float(v)) and name not in ("loss_target", "diverge_factor"):
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
) -> list[dict[str, Any]]:
    """The list of configurations of a sweep.

    * ``grid``: Cartesian product of the axes, the last axis varying fastest.
    * ``random``: ``{"n": 32, "seed": 0, "learning_rate": ("loguniform", 1e-4, 1), ...}``
      draws ``n`` configurations (``uniform``, ``loguniform``, ``randint``, ``choice``);
      the sampling seed is ``random_seed`` (the ``seed`` axis stays the training seed
      and may be given as a distribution or a list to combine as a grid).
    * ``configs``: an explicit list of dicts.

    ``grid`` may be combined with ``random`` (each random draw is crossed with the grid).
    """
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
                _check_axis_value(k, v)
            out.append(dict(c))
        return out
    rows: list[dict[str, Any]] = [{}]
    if grid:
        if not isinstance(grid, Mapping):
            raise TypeError(f"grid must be a dict of axis -> values, got {type(grid).__name__}")
        axes = {k: _axis_values(k, v) for k, v in grid.items()}
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
            for v in vals:
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
        ``init(key) -> params`` draws each seed's initial parameters.
      grid: ``{axis: values}``, Cartesian product.
      random: ``{"n": n, axis: (kind, ...)}``, see :func:`expand_configs`.
      configs: explicit list of configuration dicts.
      folds: k-fold cross-validation: each configuration runs on every fold, validation
        loss recorded on the held-out part (``kfold_indices(N, k, seed=fold_seed)``).
        With ``standardize``, each fold is scaled with its own training part's statistics.
      chunk_size: most configurations per program call (default: as many as
        ``memory_budget`` allows, at most 4096).
      memory_budget: bytes the per-configuration state of one call may take (default 2 GiB).
      only: indices of the configurations to run (to spread a sweep over launchers;
        combine the parts with :meth:`SweepResult.concat`).
      out: folder to save the result in; finished chunks are kept there, so the same
        call after an interruption resumes instead of recomputing.
      mesh: a ``jax.sharding.Mesh`` with an axis named ``"config"``; by default all
        devices of all processes when there are several.
      progress: show progress bars over chunks and over the epochs of the running chunk
        (with the number of configurations still active). With several processes it is
        on when any process asks for it, and only process 0 draws.

    Returns:
      :class:`jaxgd.SweepResult`: ``table`` (one row per configuration), ``history``
      ([config, epoch] arrays), ``params`` (stacked), ``best()``, ``save()``.

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

    if hparams is not None and not isinstance(hparams, Mapping):
        raise TypeError(f"hparams={hparams!r} must be a dict of name -> value")
    base_hp = dict(hparams or {})
    cfgs = expand_configs(grid, random, configs)
    if folds is not None:
        if val_data is not None:
            raise ValueError("give either folds=k or val_data, not both")
        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
            raise ValueError(f"folds={folds!r} must be an integer >= 2")
        if not any("fold" in c for c in cfgs):
            cfgs = [{**c, "fold": f} for c in cfgs for f in range(folds)]
        for c in cfgs:
            if "fold" in c and not 0 <= c["fold"] < folds:
                raise ValueError(f"axis 'fold' has value {c['fold']!r}; folds={folds}")
    elif any("fold" in c for c in cfgs):
        raise ValueError("axis 'fold' needs folds=k")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    all_idx = list(range(len(cfgs)))
    if only is not None:
        sel = sorted(set(int(i) for i in only))
        if not sel or sel[0] < 0 or sel[-1] >= len(cfgs):
            raise ValueError(f"only={only!r} must select configurations in 0..{len(cfgs) - 1}")
        all_idx = sel
    if params is None and init is None:
        raise ValueError("params is None: give initial parameters or init=function(key)")
    if init is not None and not callable(init):
        raise TypeError(f"init={init!r} must be a function key -> params")
    for name, value in (("chunk_size", chunk_size), ("memory_budget", memory_budget)):
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, (int, np.integer)) or value <= 0):
            raise ValueError(f"{name}={value!r} must be a positive integer or None")
    if mesh is not None:
        if not isinstance(mesh, jax.sharding.Mesh) or "config" not in mesh.axis_names:
            raise ValueError(f"mesh={mesh!r} must be a jax.sharding.Mesh with an axis "
                             "named 'config'")
    normalize_shuffle(shuffle)

    from .data import kfold_indices, validate_data

    data, n = validate_data(data, "data")
    if folds is not None and folds > n:
        raise ValueError(f"folds={folds!r} is more than the {n} samples of data")
    fold_split = kfold_indices(n, folds, shuffle=True, seed=fold_seed) if folds else None

    progress = _agree_progress(bool(progress))
    base = dict(optimizer=optimizer, batch_size=batch_size, accumulate=accumulate,
                schedule=schedule, seed=seed)
    known_struct = set(STRUCTURAL_AXES) | set(STREAM_AXES)
    # validate every configuration and group them (nothing is compiled yet)
    groups: dict[Any, dict[str, Any]] = {}
    for i in all_idx:
        c = cfgs[i]
        full = {**base, **{k: v for k, v in c.items() if k in known_struct}}
        if full["batch_size"] == "full":
            full["batch_size"] = None
        hp = {**base_hp, **{k: v for k, v in c.items() if k not in known_struct}}
        fold = c.get("fold")
        n_train = None if fold is None else len(fold_split[fold][0])
        key_struct = (
            _hashable(full["optimizer"]), full["batch_size"], full["accumulate"],
            full["schedule"], n_train, tuple(sorted(hp)),
            # non-numeric values (e.g. nesterov=True/False) change the program: own group
            tuple(sorted((k, v) for k, v in hp.items()
                         if isinstance(v, bool | str) or v is None)),
        )
        g = groups.get(key_struct)
        if g is None:
            try:
                prep = prepare(
                    loss, params, data, optimizer=full["optimizer"], hparams=hp,
                    batch_size=full["batch_size"], epochs=epochs, shuffle=shuffle,
                    drop_last=drop_last, schedule=full["schedule"],
                    accumulate=full["accumulate"], val_data=val_data, grad_tol=grad_tol,
                    loss_target=loss_target, patience=patience, min_delta=min_delta,
                    diverge_factor=diverge_factor, restore_best=restore_best, metrics=metrics,
                    record_steps=record_steps, penalty_mask=penalty_mask, init_fn=init,
                    record_params=record_params,
                    eval_every=eval_every, progress=progress, data_checked=True,
                    standardize=standardize,
                    n_train=n_train, val_from_index=fold is not None,
                )
            except (ValueError, TypeError) as e:
                raise type(e)(f"configuration {i} {c}: {e}") from e
            g = groups[key_struct] = {"prep": prep, "rows": [], "numeric": []}
        spec = g["prep"][0]
        try:
            # base stop keywords first: a value on a sweep axis overrides them
            numeric, static = optim.split_hparams(spec.opt, spec.schedule, {
                **_stop_hp(grad_tol, loss_target, patience, min_delta, diverge_factor), **hp})
        except (ValueError, TypeError) as e:
            raise type(e)(f"configuration {i} {c}: {e}") from e
        if tuple(sorted(static.items())) != spec.static_hparams:
            # a static value differs: its own group
            raise ValueError(f"configuration {i} {c}: non-numeric hyper-parameters must be "
                             "the same across a sweep axis")
        g["rows"].append((i, int(full["seed"]), fold))
        g["numeric"].append(numeric)

    # memory: every configuration carries its parameters, optimizer state and history
    settings = dict(metrics=metrics, grad_tol=grad_tol, loss_target=loss_target,
                    patience=patience, min_delta=min_delta, diverge_factor=diverge_factor,
                    restore_best=restore_best, record_steps=record_steps,
                    record_params=record_params,
                    eval_every=eval_every, init=init, penalty_mask=penalty_mask, loss=loss,
                    standardize=standardize)
    store = RunStore.open(out, _fingerprint(cfgs, all_idx, base, base_hp, epochs, shuffle,
                                            drop_last, folds, fold_seed, settings,
                                            (data, params, val_data))
                          ) if out is not None else None
    try:
        results = _run_groups(groups, data, val_data, fold_split, chunk_size, memory_budget,
                              epochs, mesh, store, progress)
        res = SweepResult.from_runs(cfgs, all_idx, results, epochs, folds=folds)
        if store is not None:
            res.save(store.path, _store=store)  # releases the lock
    finally:
        if store is not None:
            store.release_lock_on_error()
    return res


def _stop_hp(grad_tol, loss_target, patience, min_delta, diverge_factor) -> dict[str, Any]:
    hp: dict[str, Any] = {}
    for name, value in (("grad_tol", grad_tol), ("loss_target", loss_target),
                        ("patience", patience), ("diverge_factor", diverge_factor)):
        if value is not None:
            hp[name] = value
    if min_delta:
        hp["min_delta"] = min_delta
    return hp


def _hashable(v: Any) -> Any:
    try:
        hash(v)
        return v
    except TypeError:
        return id(v)


def _fingerprint(cfgs, idx, base, base_hp, epochs, shuffle, drop_last, folds, fold_seed,
                 settings, data) -> str:
    """A digest of what determines the results (to refuse resuming a different sweep)."""
    h = hashlib.sha256()
    desc = {
        "configs": [cfgs[i] for i in idx], "base": base, "hparams": base_hp, "epochs": epochs,
        "shuffle": shuffle, "drop_last": drop_last, "folds": folds, "fold_seed": fold_seed,
        "settings": settings,
    }
    h.update(json.dumps(desc, sort_keys=True, default=_stable_repr).encode())
    for leaf in jax.tree.leaves(data):
        a = np.asarray(leaf)
        h.update(str((a.shape, a.dtype)).encode())
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))  # all of it
    return h.hexdigest()[:16]


def _stable_repr(v: Any, depth: int = 0) -> str:
    """A description of ``v`` that is the same in every process and run.

    ``repr`` of a function holds a memory address, so a resumed sweep with
    ``optimizer=optax.adam`` would never match. Functions are described by name, a digest
    of their code, their defaults and what their closures hold (numbers, arrays, other
    functions, a few levels deep), so an edited loss or one closing over other values is
    not resumed; ``functools.partial`` by its function, arguments and keywords.
    """
    import functools
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


def _bytes_per_config(prep, epochs: int) -> int:
    spec, params = prep[0], prep[1]
    pbytes = sum(int(np.prod(p.shape)) * p.dtype.itemsize for p in jax.tree.leaves(params))
    hist = 8 * epochs * (6 + (spec.plan.steps_per_epoch if spec.record_steps else 0))
    # params, gradient, new params, optimizer state (<= 3 copies), best params
    act = 4 * spec.plan.batch_size * spec.accumulate * 64  # activations of a step, rough
    return pbytes * 8 + hist + act


def _run_groups(groups, data, val_data, fold_split, chunk_size, memory_budget, epochs, mesh,
                store, progress):
    from tqdm.auto import tqdm

    if mesh is None:
        mesh = default_mesh()
    ndev = 1 if mesh is None else int(np.prod(list(mesh.shape.values())))
    budget = memory_budget or (2 << 30)
    plans = []
    for gi, g in enumerate(groups.values()):
        streams = sorted({(s, f if f is not None else -1) for _, s, f in g["rows"]})
        sidx = {st: k for k, st in enumerate(streams)}
        per_stream: list[list[int]] = [[] for _ in streams]
        for r, (_, s, f) in enumerate(g["rows"]):
            per_stream[sidx[(s, f if f is not None else -1)]].append(r)
        cap = chunk_size or max(1, min(4096, budget // max(1, _bytes_per_config(g["prep"],
                                                                                epochs))))
        # more streams (seeds x folds) than a call may hold: split the streams too
        sb = min(len(streams), cap)
        for bi, b0 in enumerate(range(0, len(streams), sb)):
            blk_streams, blk_rows = streams[b0:b0 + sb], per_stream[b0:b0 + sb]
            S = len(blk_streams)
            C = max(len(v) for v in blk_rows)
            width = max(1, min(C, cap // S))
            width = -(-width // ndev) * ndev
            n_chunks = -(-C // width)
            tag = f"g{gi:03d}" if len(streams) <= sb else f"g{gi:03d}_s{bi:04d}"
            plans.append((gi, tag, g, blk_streams, blk_rows, width, n_chunks))
    total = sum(p[-1] for p in plans)
    bar = tqdm(total=total, desc="sweep", unit="chunk", leave=False,
               disable=not progress or jax.process_index() != 0)  # process 0 draws
    results = []
    try:
        n_groups = len(groups)
        for gi, gtag, g, streams, per_stream, width, n_chunks in plans:
            for ci in range(n_chunks):
                bar.set_postfix(group=f"{gi + 1}/{n_groups}", width=width * len(streams))
                tag = f"{gtag}_c{ci:05d}"
                cached = (store.load_chunk(tag, jax.tree.structure(g["prep"][1]))
                          if store is not None else None)
                if cached is not None and not np.array_equal(
                        np.sort(np.asarray(cached.get("config", []))),
                        _chunk_configs(g, per_stream, ci, width)):
                    cached = None  # written with another chunk width: recompute
                cached = _agree_cached(cached)
                if cached is None:
                    with epoch_progress(g["prep"][0], desc=f"group {gi + 1} chunk {ci + 1}"):
                        cached = _run_chunk(g, streams, per_stream, ci, width, data, val_data,
                                            fold_split, mesh)
                    if store is not None:
                        store.save_chunk(tag, cached)
                results.append(cached)
                bar.update(1)
    finally:
        bar.close()
    return results


def _chunk_configs(g, per_stream, ci, width) -> np.ndarray:
    """The sorted configuration indices that chunk ``ci`` of a group holds."""
    idx = [g["rows"][r][0] for rows in per_stream for r in rows[ci * width:(ci + 1) * width]]
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


def _agree_cached(cached):
    """With several processes, use a stored chunk only if every process has it (else all
    recompute it: a process that skipped the program would leave the others waiting)."""
    if jax.process_count() == 1:
        return cached
    from jax.experimental import multihost_utils

    have = multihost_utils.process_allgather(np.int32(cached is not None))
    return cached if bool(np.all(np.asarray(have))) else None


def _run_chunk(g, streams, per_stream, ci, width, data, val_data, fold_split, mesh):
    spec, params, _, val, _ = g["prep"]
    dt = _float_dtype(params)
    S = len(streams)
    # [S, width] row numbers into g["rows"] (padding repeats the stream's first row)
    grid_rows = np.zeros((S, width), np.int64)
    valid = _chunk_valid(per_stream, ci, width)
    for s, rows in enumerate(per_stream):
        part = rows[ci * width:(ci + 1) * width]
        grid_rows[s, :] = rows[0]
        grid_rows[s, :len(part)] = part
    names = spec.numeric_names
    tc_np = {k: np.asarray([[g["numeric"][r][k] for r in row] for row in grid_rows])
             for k in names}
    tc = {k: tc_array(k, v, dt) for k, v in tc_np.items()}  # host arrays, sharded below
    if spec.progress:  # the progress bar counts the active configurations, not padding
        tc[PROGRESS_VALID] = valid
    keys = jnp.stack([as_key(s) for s, _ in streams])
    if fold_split is not None and streams[0][1] >= 0:
        tidx = jnp.asarray(np.stack([fold_split[f][0] for _, f in streams]).astype(np.int32))
        vidx = jnp.asarray(np.stack([fold_split[f][1] for _, f in streams]).astype(np.int32))
    else:
        tidx = vidx = None
    prog = compiled_program(spec)
    args = (None if spec.init_fn is not None else params, data, val, tc, keys, tidx, vidx)
    if mesh is not None:
        args = _shard_args(mesh, args)
    out = prog(*args)
    out = jax.tree.map(_to_host, out)
    idx = [(g["rows"][grid_rows[s, c]][0]) for s in range(S) for c in range(width) if valid[s, c]]
    sel = np.nonzero(valid.reshape(-1))[0]
    flat = jax.tree.map(lambda a: a.reshape((S * width,) + a.shape[2:])[sel], out)
    flat["config"] = np.asarray(idx, np.int64)
    return flat


def _shard_args(mesh, args):
    """Global arrays: configurations split over the mesh, everything else replicated."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    params, data, val, tc, keys, tidx, vidx = args
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
            tree_put(tc, cfg), put(keys, rep), put(tidx, rep), put(vidx, rep))


def _to_host(x):
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

