"""Population-based training (:class:`PBT`): exploit and explore, the checks, and the run
on a population."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._checks import is_int, is_real
from .axes import STREAM_AXES, check_axis_value, draw
from .groups import Group
from .search_base import check_common, ranked


class PBT(NamedTuple):
    """Population-based training.

    Args:
      interval: epochs between exploit/explore steps (a multiple of ``eval_every``; updates
        with ``steps=``, and the lineage's ``epoch`` column is then an update too).
      quantile: the fraction of the population replaced at each step (the worst), and
        the fraction they copy from (the best); ``population * quantile`` must be >= 1.
      perturb: the factors one of which multiplies an explored hyper-parameter.
      resample: the probability of drawing an explored hyper-parameter afresh from the
        sweep's prior instead.
      explore: the traced hyper-parameters explored (default: every numeric axis of
        ``grid``/``random`` but ``seed``, ``fold`` and shape axes).
      metric, mode: as :class:`Halving`.
      seed: the exploit/explore choices.

    Not with ``folds`` (a member would copy a member of another fold, trained on its
    held-out samples).

    The sweep's ``lineage`` holds every member's values over time; in its ``table`` an
    explored axis column holds each member's value at the start and ``final_<axis>`` the
    one it ended with. A member's history is what it recorded (its own rows before a copy,
    then those of the copied state); its ``best_epoch`` is that of the state it ended
    with, and the ``best_epoch_<column>`` values are those recorded at that evaluation by
    the member that held the state then (the parent, for a best evaluation before the
    copy): with ``restore_best=True``, the figures of the returned parameters.
    """

    interval: int
    quantile: float = 0.25
    perturb: tuple[float, ...] = (0.8, 1.2)
    resample: float = 0.25
    explore: tuple[str, ...] | None = None
    metric: str | None = None
    mode: str = "min"
    seed: int = 0

    def validate(self, epochs: int, eval_every: int, unit: str = "epochs") -> None:
        check_common(self)
        check_pbt(self, epochs, eval_every, unit)

    def validate_axes(self, axes: set[str]) -> None:
        if "fold" in axes:
            raise ValueError("search=PBT(...) cannot be combined with folds: a member would "
                             "copy the state of a member of another fold, trained on its "
                             "held-out samples (its val_loss would not be held out); run "
                             "one PBT sweep per fold, each with val_data")

    def run(self, pop, metric: str, resume: dict[str, Any] | None) -> list[dict[str, Any]]:
        return run_pbt(pop, self, metric, resume)

    def finish(self, result, lineage: list[dict[str, Any]]) -> None:
        import pandas as pd

        result.lineage = pd.DataFrame(lineage)
        pbt_final_columns(result)
        pbt_best_columns(result)


def check_pbt(p: PBT, epochs: int, eval_every: int, unit: str = "epochs") -> None:
    if not is_int(p.interval) or p.interval < 1 or p.interval % eval_every:
        raise ValueError(f"search interval={p.interval!r} must be a positive multiple of "
                         f"eval_every={eval_every}")
    if p.interval >= epochs:
        raise ValueError(f"search interval={p.interval} must be less than {unit}={epochs} "
                         "(no exploit/explore step would happen)")
    if not is_real(p.quantile) or not 0 < p.quantile <= 0.5:
        raise ValueError(f"search quantile={p.quantile!r} must be in (0, 0.5]")
    if (isinstance(p.perturb, str) or not isinstance(p.perturb, Sequence) or not p.perturb
            or not all(is_real(f) and f > 0 for f in p.perturb)):
        raise ValueError(f"search perturb={p.perturb!r} must be a list of positive factors")
    if not is_real(p.resample) or not 0 <= p.resample <= 1:
        raise ValueError(f"search resample={p.resample!r} must be in [0, 1]")
    if p.explore is not None and (isinstance(p.explore, str) or not all(
            isinstance(a, str) for a in p.explore)):
        raise TypeError(f"search explore={p.explore!r} must be a list of axis names")


class Exploit(NamedTuple):
    """One member replaced at a PBT step: it copies ``parent``'s state."""

    member: int
    parent: int


def exploit(values: Mapping[int, float], p: PBT, rng: np.random.Generator) -> list[Exploit]:
    """The worst ``quantile`` of the members, each with a parent drawn from the best."""
    order = ranked(values, p.mode)
    q = max(1, int(len(order) * p.quantile))
    top, bottom = order[:q], order[-q:]
    return [Exploit(m, int(top[rng.integers(0, len(top))])) for m in bottom]


def explore(hp: Mapping[str, float], names: Sequence[str], priors: Mapping[str, Any],
            p: PBT, rng: np.random.Generator) -> dict[str, float]:
    """New values of the explored hyper-parameters: each multiplied by a factor of
    ``perturb``, or drawn from its prior with probability ``resample``."""
    out = dict(hp)
    for k in names:
        prior = priors.get(k)
        if prior is not None and rng.random() < p.resample:
            out[k] = draw(prior, rng)
        else:
            out[k] = float(hp[k]) * float(p.perturb[rng.integers(0, len(p.perturb))])
    return out


def run_pbt(pop, p: PBT, metric: str, resume: dict[str, Any] | None = None):
    """Population-based training over the population, continuing after the boundary
    ``resume`` (a saved one) if given; returns the lineage rows."""
    if len(pop.groups) != 1:
        raise ValueError("search=PBT(...) needs every configuration in one compiled group "
                         "(the same optimizer, batch size, accumulate, schedule and shapes): "
                         f"this sweep has {len(pop.groups)} groups")
    g = pop.groups[0]
    names = explored(p, g, pop.cfgs)
    prior = priors(pop.grid, pop.random)
    K, n_evals = pop.evals()
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
        pop.advance(pop.members, start, end, f"interval {i + 1}/{len(ends)}")
        if end == n_evals:
            break
        values = {r: pop.value((0, r), metric, p.mode) for r in range(len(g.rows))}
        for ex in exploit(values, p, rng):
            parent = pop.members[(0, ex.parent)]
            pop.copy_state((0, ex.member), (0, ex.parent))
            new = explore({k: parent.numeric[k] for k in names}, names, prior, p, rng)
            for k, v in new.items():
                try:
                    check_axis_value(k, v)
                except (ValueError, TypeError):
                    new[k] = parent.numeric[k]  # outside the hyper-parameter's range
            pop.set_hparams((0, ex.member), new)
            lineage.append({"config": g.rows[ex.member].config, "epoch": end * K,
                            "parent": g.rows[ex.parent].config,
                            **{k: float(v) for k, v in new.items()}})
        start = end
        pop.checkpoint({"interval": i, "lineage": lineage, "rng": rng.bit_generator.state})
    return lineage


def pbt_final_columns(res) -> None:
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


def holder(copies: Mapping[int, list[tuple[int, int]]], config: int, epoch: int) -> int:
    """The member whose history recorded evaluation ``epoch`` of the state that member
    ``config`` ended with: its copies followed back (a copy at ``E``, in epochs or updates
    done, brings the parent's evaluations before ``E``). ``copies``: per member, its
    (``E``, parent) pairs."""
    owner, horizon = config, np.inf
    while True:
        earlier = [(e, p) for e, p in copies.get(owner, ()) if e < horizon]
        if not earlier:
            return owner
        at, parent = max(earlier)
        if epoch >= at:
            return owner
        owner, horizon = parent, at


def pbt_best_columns(res) -> None:
    """PBT: the ``best_epoch_<column>`` values from the history of the member that recorded
    each member's best evaluation (:func:`holder`), not from the member's own rows of that
    evaluation (which predate a copy)."""
    lin, t, hist = res.lineage, res.table, res.history
    copies: dict[int, list[tuple[int, int]]] = {}
    for c, e, p in zip(lin["config"], lin["epoch"], lin["parent"], strict=True):
        if e > 0:
            copies.setdefault(int(c), []).append((int(e), int(p)))
    pos = {int(c): i for i, c in enumerate(t["config"])}
    index = hist["step" if "step" in hist else "epoch"]
    pre = "best_epoch_"
    for col in [c for c in t.columns if c.startswith(pre) and c[len(pre):] in hist]:
        vals = t[col].to_numpy(float).copy()
        for i, (c, e) in enumerate(zip(t["config"], t["best_epoch"], strict=True)):
            if e < 0:
                continue
            j = pos[holder(copies, int(c), int(e))]
            hit = np.nonzero(index[j] == e)[0]
            vals[i] = hist[col[len(pre):]][j, hit[0]] if len(hit) else np.nan
        t[col] = vals


def explored(p: PBT, g: Group, cfgs) -> list[str]:
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


def priors(grid, random) -> dict[str, Any]:
    """Each axis's prior for PBT's resampling: its grid values or random distribution."""
    out: dict[str, Any] = {k: list(v) for k, v in (grid or {}).items()
                           if isinstance(v, list | tuple)}
    for k, v in (random or {}).items():
        if k not in ("n", "random_seed"):
            out[k] = v
    return out
