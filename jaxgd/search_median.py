"""The median stopping rule (:class:`Median`): the checks, the rule, and the run on a
population."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._checks import is_int
from .search_base import check_common


class Median(NamedTuple):
    """The median stopping rule (Golovin et al. 2017, "Google Vizier"; optuna's
    ``MedianPruner``).

    Every configuration trains; at each check a configuration still training is stopped
    (``stop_reason="pruned"``) when its best ``metric`` so far is worse than the median of
    the other configurations' running averages (their mean ``metric`` over the
    evaluations up to the check). The others are those that reached the check (a
    configuration stopped earlier, by the rule or by its own stop condition, has no value
    there and is left out); the rule needs at least one of them. All configurations
    checked at the same evaluation are judged on the same history (the decisions do not
    depend on their order). A value that is not finite (a diverged configuration) is
    left out of averages and bests; a configuration without a finite value is stopped.

    Args:
      warmup: epochs before the first check (a positive multiple of ``eval_every``, less
        than ``epochs``): the first check is at epoch ``warmup``.
      interval: epochs between checks (a positive multiple of ``eval_every``): checks at
        ``warmup, warmup + interval, ...`` below ``epochs``. With ``steps=``, both are in
        updates.
      metric, mode: as :class:`jaxgd.search.Halving` (the validation loss by default).
      seed: unused by the rule (no random choice); kept for the common interface.
      compact: as :class:`jaxgd.search.Halving`: the survivors of a check run in a
        narrower program.
    """

    warmup: int = 1
    interval: int = 1
    metric: str | None = None
    mode: str = "min"
    seed: int = 0
    compact: bool | str = "auto"

    def validate(self, epochs: int, eval_every: int, unit: str = "epochs") -> None:
        check_common(self)
        for name in ("warmup", "interval"):
            v = getattr(self, name)
            if not is_int(v) or v < 1 or v % eval_every:
                raise ValueError(f"search {name}={v!r} must be a positive multiple of "
                                 f"eval_every={eval_every} (a check is at an evaluation)")
        if self.warmup >= epochs:
            raise ValueError(f"search warmup={self.warmup} must be less than {unit}={epochs} "
                             "(no check would happen)")
        if self.compact not in (True, False, "auto") or isinstance(self.compact, int | float) \
                and not isinstance(self.compact, bool):
            raise ValueError(f"search compact={self.compact!r} must be True, False or 'auto'")

    def validate_axes(self, axes: set[str]) -> None:
        pass

    def run(self, pop, metric: str, resume: dict[str, Any] | None) -> None:
        run_median(pop, self, metric, resume)

    def finish(self, result, outcome) -> None:
        pass


def check_points(m: Median, epochs: int, eval_every: int) -> list[int]:
    """The evaluations (counted from 1) at which the rule is applied."""
    return [t // eval_every for t in range(m.warmup, epochs, m.interval)]


def median_stops(series: Mapping[Any, np.ndarray], e: int, candidates: Sequence[Any],
                 mode: str) -> list[Any]:
    """The candidates the rule stops at evaluation ``e`` (counted from 1), from every
    member's recorded values (``series[k][i]``: evaluation ``i + 1``; shorter or NaN where
    a member did not run)."""
    averages = {}
    for k, s in series.items():
        if len(s) >= e and np.isfinite(s[e - 1]):
            upto = s[:e]
            averages[k] = float(np.mean(upto[np.isfinite(upto)]))
    out = []
    for k in candidates:
        others = [v for j, v in averages.items() if j != k]
        if not others:
            continue
        upto = series[k][:e]
        finite = upto[np.isfinite(upto)]
        best = (finite.min() if mode == "min" else finite.max()) if finite.size else math.nan
        median = float(np.median(others))
        if math.isnan(best) or (best > median if mode == "min" else best < median):
            out.append(k)
    return out


def run_median(pop, m: Median, metric: str, resume: dict[str, Any] | None = None) -> None:
    """The median stopping rule over the population, continuing after the saved check
    ``resume`` if given."""
    K, n_evals = pop.evals()
    points = check_points(m, pop.epochs, K)
    first, start = 0, 0
    if resume is not None:
        first = resume["check"] + 1
        start = points[resume["check"]]
    keys = list(pop.members)
    for i, e in enumerate(points + [n_evals]):
        if i < first:
            continue
        pop.advance(keys, start, e, f"check {i + 1}/{len(points)}" if i < len(points)
                    else "after the last check")
        if i == len(points):
            break
        series = {k: pop.series(k, metric) for k in keys}
        live = [k for k in keys if pop.members[k].active]
        for k in median_stops(series, e, live, m.mode):
            pop.stop(k)
        start = e
        pop.checkpoint({"check": i})
