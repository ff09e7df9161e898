"""Successive halving and Hyperband (:class:`Halving`, :func:`hyperband`): the brackets and
rungs, the checks, and the run on a population."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ._checks import is_int
from .fingerprint import stable_repr
from .search_base import check_common, ranked


class Halving(NamedTuple):
    """Successive halving (one bracket) or Hyperband (``brackets`` > 1).

    Args:
      eta: keep the best ``1/eta`` at each rung; the rungs' epochs grow by ``eta``.
      min_epochs: the fewest epochs a first rung may have (a multiple of ``eval_every``):
        the most aggressive bracket is the largest s with ``epochs // eta**s >=
        min_epochs``. Rungs end at ``epochs // eta**k`` (k = s, ..., 1, 0; rounded down to
        a multiple of ``eval_every``), so the last rung is the sweep's ``epochs``, and the
        first may be longer than ``min_epochs`` (``epochs=27, eta=3, min_epochs=2``:
        rungs at 3, 9, 27). With ``steps=`` every count
        here is in updates (rungs end at ``steps / eta**k``, inside an epoch if need be).
      metric: the recorded history column to rank by: ``"val_loss"`` (default with
        validation data or folds), ``"loss"`` (default otherwise), ``"batch_loss"``,
        ``"objective"``, or a metric of the loss (``"val_accuracy"``, ``"accuracy"``,
        ``"batch_accuracy"``).
      mode: ``"min"`` or ``"max"`` (e.g. accuracy).
      average: axes averaged before ranking (e.g. ``("seed",)``): the members of a
        setting (equal but for these axes) are kept or pruned together, by their mean.
      brackets: 1 = successive halving; k > 1 = Hyperband with the k most aggressive
        brackets (the configurations are split among them, more to the aggressive ones,
        as Hyperband does); 0 = every bracket.
      seed: the split of configurations among brackets.
      compact: ``True``: run the survivors of a rung in a narrower program (compute
        shrinks with the population; each new width, a power of two, is one compile,
        reused). ``False``: every call keeps the first call's width with the pruned lanes
        masked (no compile after the first; no compute saved). ``"auto"`` (default):
        narrower when the compute it saves, at the time per configuration-evaluation
        measured in this search, exceeds the measured compile time (a width compiled
        before is free). Widths change results only by float rounding (at most ~1e-6
        relative); for runs equal to the last bit use ``True`` or ``False``.
    """

    eta: int = 3
    min_epochs: int = 1
    metric: str | None = None
    mode: str = "min"
    average: tuple[str, ...] = ()
    brackets: int = 1
    seed: int = 0
    compact: bool | str = "auto"

    def validate(self, epochs: int, eval_every: int, unit: str = "epochs") -> None:
        check_common(self)
        check_halving(self, epochs, eval_every, unit)

    def validate_axes(self, axes: set[str]) -> None:
        missing = [a for a in self.average if a not in axes]
        if missing:
            raise ValueError(f"search average={list(self.average)!r}: {missing[0]!r} is "
                             f"not a swept axis (axes: {sorted(axes)})")

    def run(self, pop, metric: str, resume: dict[str, Any] | None) -> None:
        run_halving(pop, self, metric, resume)

    def finish(self, result, outcome) -> None:
        pass


def hyperband(eta: int = 3, min_epochs: int = 1, metric: str | None = None, mode: str = "min",
              average: Sequence[str] = (), seed: int = 0, compact: bool | str = "auto"
              ) -> Halving:
    """Hyperband: successive halving over every bracket (:class:`Halving` with
    ``brackets=0``)."""
    return Halving(eta, min_epochs, metric, mode, tuple(average), 0, seed, compact)


def check_halving(h: Halving, epochs: int, eval_every: int, unit: str = "epochs") -> None:
    if not is_int(h.eta) or h.eta < 2:
        raise ValueError(f"search eta={h.eta!r} must be an integer >= 2")
    if not is_int(h.min_epochs) or h.min_epochs < 1:
        raise ValueError(f"search min_epochs={h.min_epochs!r} must be an integer >= 1")
    if h.min_epochs % eval_every:
        raise ValueError(f"search min_epochs={h.min_epochs} must be a multiple of "
                         f"eval_every={eval_every} (a rung ends at an evaluation)")
    if h.min_epochs * h.eta > epochs:
        raise ValueError(f"search min_epochs={h.min_epochs} with eta={h.eta} leaves no second "
                         f"rung within {unit}={epochs}: need min_epochs * eta <= {unit}")
    if not is_int(h.brackets) or h.brackets < 0:
        raise ValueError(f"search brackets={h.brackets!r} must be an integer >= 0")
    if h.brackets > max_bracket(h, epochs, eval_every) + 1:
        raise ValueError(f"search brackets={h.brackets} is more than the "
                         f"{max_bracket(h, epochs, eval_every) + 1} brackets {unit}={epochs}, "
                         f"eta={h.eta} and min_epochs={h.min_epochs} allow")
    if h.compact not in (True, False, "auto") or isinstance(h.compact, int | float) and (
            not isinstance(h.compact, bool)):
        raise ValueError(f"search compact={h.compact!r} must be True, False or 'auto'")
    if isinstance(h.average, str) or not all(isinstance(a, str) for a in h.average):
        raise TypeError(f"search average={h.average!r} must be a list of axis names")


class Bracket(NamedTuple):
    """One successive-halving run: its units (configurations, or settings with
    ``average``) and its rungs: (evaluations at the rung's end, units kept after it)."""

    units: list[Any]
    rungs: list[tuple[int, int]]


def max_bracket(h: Halving, epochs: int, eval_every: int) -> int:
    """The most aggressive bracket s: the largest s with epochs / eta**s >= min_epochs."""
    s = 0
    while epochs // h.eta ** (s + 1) >= h.min_epochs:
        s += 1
    return s


def rung_ends(h: Halving, s: int, epochs: int, eval_every: int) -> list[int]:
    """Bracket s's rung ends, in evaluations: epochs / eta**k for k = s..0, each rounded
    down to a multiple of ``eval_every`` (the last is every evaluation)."""
    n_evals = -(-epochs // eval_every)
    ends = []
    for k in range(s, 0, -1):
        e = max(eval_every, (epochs // h.eta ** k) // eval_every * eval_every) // eval_every
        if not ends or e > ends[-1]:
            ends.append(e)
    if not ends or ends[-1] < n_evals:
        ends.append(n_evals)
    return ends


def brackets(h: Halving, units: list[Any], epochs: int, eval_every: int) -> list[Bracket]:
    """The brackets of a halving search over ``units`` (configuration ids or settings)."""
    s_max = max_bracket(h, epochs, eval_every)
    n_br = s_max + 1 if h.brackets == 0 else h.brackets
    ss = list(range(s_max, s_max - n_br, -1))
    if len(units) < n_br:
        raise ValueError(f"search: {n_br} brackets need at least {n_br} configurations "
                         f"(settings), got {len(units)}")
    if n_br == 1:
        split = [list(units)]
    else:  # Hyperband's n_s = ceil((s_max + 1) / (s + 1) * eta**s), scaled to the units
        want = np.asarray([math.ceil((s_max + 1) / (s + 1) * h.eta ** s) for s in ss], float)
        share = want / want.sum() * len(units)
        count = np.maximum(1, np.floor(share).astype(int))
        while count.sum() > len(units):
            count[int(np.argmax(count))] -= 1
        for i in np.argsort(-(share - np.floor(share)), kind="stable"):
            if count.sum() >= len(units):
                break
            count[i] += 1
        perm = np.random.default_rng(h.seed).permutation(len(units))
        bounds = np.concatenate([[0], np.cumsum(count)])
        split = [[units[j] for j in sorted(perm[a:b])]
                 for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    out = []
    for s, us in zip(ss, split, strict=True):
        ends = rung_ends(h, s, epochs, eval_every)
        n, rungs = len(us), []
        for i, e in enumerate(ends):
            keep = n if i == len(ends) - 1 else max(1, len(us) // h.eta ** (i + 1))
            rungs.append((e, keep))
            n = keep
        out.append(Bracket(us, rungs))
    return out


def run_halving(pop, h: Halving, metric: str, resume: dict[str, Any] | None = None) -> None:
    """Successive halving / Hyperband over the population (see :mod:`jaxgd.search`),
    continuing after the boundary ``resume`` (a saved one) if given."""
    K, _ = pop.evals()
    units: dict[Any, list[tuple[int, int]]] = {}
    for key in pop.members:
        c = pop.cfgs[pop.config(key)]
        unit = (tuple(sorted((k, stable_repr(v)) for k, v in c.items()
                             if k not in h.average)) if h.average else pop.config(key))
        units.setdefault(unit, []).append(key)
    order = sorted(units, key=lambda u: min(pop.config(k) for k in units[u]))
    index = {u: j for j, u in enumerate(order)}
    at = resume or {"bracket": -1, "rung": -1, "live": []}
    brs = brackets(h, order, pop.epochs, K)
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
            pop.advance([k for u in live for k in units[u]], start, end, desc)
            if i < len(br.rungs) - 1:
                live = prune(pop, live, units, keep, metric, h.mode)
                start = end
            else:
                live = []
            pop.checkpoint({"bracket": b, "rung": i, "live": [index[u] for u in live]})


def prune(pop, live: list[Any], units, keep: int, metric: str, mode: str):
    """The ``keep`` best units of ``live`` (by their members' mean ``metric``); the other
    units' active members are stopped."""
    values = {u: float(np.mean([pop.value(k, metric, mode) for k in units[u]]))
              for u in live}
    kept = set(ranked(values, mode)[:keep])
    for u in live:
        for k in units[u] if u not in kept else ():
            pop.stop(k)
    return [u for u in live if u in kept]
