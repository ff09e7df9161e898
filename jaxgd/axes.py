"""Configuration axes: what a sweep's ``grid`` / ``random`` / ``configs`` mean.

A sweep is a list of configurations (dicts of axis -> value). This module expands the
front doors' ``grid``, ``random`` and ``configs`` into that list, checks every axis value,
draws the random distributions, adds the folds, selects ``only=`` and reads the shape axes
(``init``'s keyword parameters). Next on the path: :mod:`jaxgd.groups` splits the list
into groups of one compiled program each.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ._checks import is_int, seed_problem
from .stops import STOP_DEFAULTS

STRUCTURAL_AXES = ("batch_size", "optimizer", "accumulate", "schedule")


STREAM_AXES = ("seed", "fold")


DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")


def axis_values(name: str, values: Any, check: bool = True) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        values = [values]
    vals = list(np.asarray(values).tolist()) if is_numeric_array(values) else list(values)
    if not vals:
        raise ValueError(f"grid axis {name!r} is empty")
    for v in vals:
        if check:
            check_axis_value(name, v)
    return vals


def is_numeric_array(values: Any) -> bool:
    return isinstance(values, (np.ndarray, jax.Array)) and np.asarray(values).dtype.kind in "biuf"


def check_axis_value(name: str, v: Any) -> None:
    if name == "batch_size":
        if v is None or v == "full":
            return
        if not is_int(v) or v <= 0:
            raise ValueError(f"grid axis 'batch_size' has value {v!r}: use positive ints or None")
        return
    if name == "seed":
        why = seed_problem(v)
        if why is not None:
            raise ValueError(f"axis 'seed' has value {v!r}: {why}")
        return
    if name in ("fold", "accumulate"):
        if not is_int(v) or v < 0:
            raise ValueError(f"axis {name!r} has value {v!r}: must be a non-negative integer")
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


def sample(name: str, dist: Any, n: int, rng: np.random.Generator) -> list[Any]:
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


def draw(prior: Any, rng: np.random.Generator) -> float:
    """One value from a prior: a ``random`` distribution tuple or a list of grid values
    (PBT's resampling; :func:`sample` draws a sweep's ``n`` configurations)."""
    if isinstance(prior, list):
        return prior[rng.integers(0, len(prior))]
    if prior[0] == "choice":
        return draw(list(prior[1]), rng)
    kind, lo, hi = prior[0], float(prior[1]), float(prior[2])
    if kind == "loguniform":
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    if kind == "randint":
        return int(rng.integers(int(lo), int(hi)))
    return float(rng.uniform(lo, hi))


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
                    check_axis_value(k, v)
            out.append(dict(c))
        return out
    rows: list[dict[str, Any]] = [{}]
    if grid:
        if not isinstance(grid, Mapping):
            raise TypeError(f"grid must be a dict of axis -> values, got {type(grid).__name__}")
        axes = {k: axis_values(k, v, k not in shape) for k, v in grid.items()}
        rows = [dict(zip(axes, combo, strict=True))
                for combo in itertools.product(*axes.values())]
    if random:
        if not isinstance(random, Mapping):
            raise TypeError("random must be a dict: {'n': 32, axis: (kind, ...), ...}")
        spec = dict(random)
        n = spec.pop("n", None)
        if not is_int(n) or n <= 0:
            raise ValueError(f"random['n']={n!r} must be a positive integer")
        rseed = spec.pop("random_seed", 0)
        if not is_int(rseed) or rseed < 0:
            raise ValueError(f"random['random_seed']={rseed!r} must be a non-negative integer")
        rng = np.random.default_rng(rseed)
        draws = {k: sample(k, d, int(n), rng) for k, d in spec.items()}
        for k, vals in draws.items():
            for v in vals if k not in shape else ():
                check_axis_value(k, v)
        samples = [{k: draws[k][i] for k in draws} for i in range(int(n))]
        rows = [{**r, **s} for r in rows for s in samples]
    return rows


def with_folds(cfgs: list[dict[str, Any]], folds: int | None, val_data: Any):
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


def selected(cfgs: list[dict[str, Any]], only: Iterable[int] | None) -> list[int]:
    """The indices of the configurations to run (``only=``, default all)."""
    if only is None:
        return list(range(len(cfgs)))
    if isinstance(only, (str, bytes)) or not isinstance(only, Iterable):
        raise TypeError(f"only={only!r} must be a list of configuration indices")
    only = list(only)
    for i in only:
        if not is_int(i):
            raise TypeError(f"only={only!r} must hold integer configuration indices, "
                            f"got {i!r}")
    sel = sorted(set(int(i) for i in only))
    if not sel or sel[0] < 0 or sel[-1] >= len(cfgs):
        raise ValueError(f"only={only!r} must select configurations in 0..{len(cfgs) - 1}")
    return sel


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


def shape_of(init, names, values, i, c) -> tuple[tuple[str, Any], ...]:
    """The shape-axis values of configuration ``i`` (sorted ``(name, value)`` pairs; lists
    become tuples), init's defaults filled in; () when ``init`` takes none."""
    if not names:
        return ()
    sig = inspect.signature(init).parameters
    out = []
    for name in names:
        if name in values:
            v = frozen(values[name])
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


def frozen(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(frozen(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


@functools.lru_cache(maxsize=256)
def init_with(init, shape):
    return functools.partial(init, **dict(shape))


def shaped_init(init, shape, i, c):
    """``init`` with the shape axes bound (the same object for equal values, so a program
    is compiled once per shape); refused before compilation if ``init`` rejects them."""
    fn = init_with(init, shape)
    try:  # (its array leaves: a model object may hold others, e.g. an activation)
        jax.eval_shape(lambda k: [x for x in jax.tree.leaves(fn(k))
                                  if isinstance(x, jax.Array)], jax.random.key(0))
    except Exception as e:  # noqa: BLE001 - whatever init raises names the axis
        vals = ", ".join(f"{k}={v!r}" for k, v in shape)
        raise ValueError(f"configuration {i} {c}: init rejects shape axis {vals}: "
                         f"{type(e).__name__}: {e}") from e
    return fn
