"""Adaptive search inside the compiled sweep: successive halving, Hyperband and
population-based training (PBT).

A sweep's hyper-parameters are traced values of one compiled program, so a search runs
its whole population as that one vectorised program and decides between program calls,
on the host, at *rung* (halving) or *interval* (PBT) boundaries:

* :class:`Halving` (successive halving; ``brackets`` > 1 or :func:`hyperband` for
  Hyperband): every configuration trains to the first rung; they are ranked by a recorded
  metric (the validation loss by default), the best ``1/eta`` continue *from their state*
  (parameters, optimizer state, model state, stop-condition counters, data order) to the
  next rung, ``eta`` times further, and so on up to ``epochs``. Survivors are compacted
  into a narrower program (widths are powers of two, so a width compiles once and is
  reused), so the work really shrinks. A configuration stopped by the search keeps its
  rows with ``stop_reason="pruned"`` and the epochs it reached.
* :class:`PBT`: the population trains together; every ``interval`` epochs the worst
  ``quantile`` copy the complete state of a member of the best ``quantile`` (exploit)
  and change their traced hyper-parameters (explore: multiply by one of ``perturb``, or
  with probability ``resample`` draw afresh from the sweep's prior: the ``random``
  distribution or the ``grid`` values). Each member's hyper-parameters over time are in
  ``SweepResult.lineage`` (and ``jaxgd.plots.plot_lineage``).

With ``out=`` the sweep saves every boundary (members' states, histories and
hyper-parameters, PBT's lineage and random state) and the same call after an
interruption continues from the last one.

Rankings use the history row of the boundary's evaluation (the last finite value for a
configuration that stopped earlier on its own); diverged configurations rank last. The
random choices come from ``seed`` (NumPy), so a search is deterministic for its seed,
on any number of devices or processes (every process takes the same decisions from the
same gathered history).

This module holds the search's definitions and host-side decisions; the sweep runs the
programs (:func:`jaxgd.sweep`, ``search=``). It imports no JAX.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["PBT", "Halving", "hyperband", "from_dict"]


class Halving(NamedTuple):
    """Successive halving (one bracket) or Hyperband (``brackets`` > 1).

    Args:
      eta: keep the best ``1/eta`` at each rung; the rungs' epochs grow by ``eta``.
      min_epochs: epochs of the first rung of the most aggressive bracket (rounded down
        to a multiple of ``eval_every``). Rungs end at ``epochs / eta**k`` (k = s, ...,
        1, 0), so the last rung is the sweep's ``epochs``.
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


def hyperband(eta: int = 3, min_epochs: int = 1, metric: str | None = None, mode: str = "min",
              average: Sequence[str] = (), seed: int = 0, compact: bool | str = "auto"
              ) -> Halving:
    """Hyperband: successive halving over every bracket (:class:`Halving` with
    ``brackets=0``)."""
    return Halving(eta, min_epochs, metric, mode, tuple(average), 0, seed, compact)


class PBT(NamedTuple):
    """Population-based training.

    Args:
      interval: epochs between exploit/explore steps (a multiple of ``eval_every``).
      quantile: the fraction of the population replaced at each step (the worst), and
        the fraction they copy from (the best); ``population * quantile`` must be >= 1.
      perturb: the factors one of which multiplies an explored hyper-parameter.
      resample: the probability of drawing an explored hyper-parameter afresh from the
        sweep's prior instead.
      explore: the traced hyper-parameters explored (default: every numeric axis of
        ``grid``/``random`` but ``seed``, ``fold`` and shape axes).
      metric, mode: as :class:`Halving`.
      seed: the exploit/explore choices.

    The sweep's ``lineage`` holds every member's values over time; in its ``table`` an
    explored axis column holds each member's value at the start and ``final_<axis>`` the
    one it ended with.
    """

    interval: int
    quantile: float = 0.25
    perturb: tuple[float, ...] = (0.8, 1.2)
    resample: float = 0.25
    explore: tuple[str, ...] | None = None
    metric: str | None = None
    mode: str = "min"
    seed: int = 0


Search = Halving | PBT
METHODS = ("halving", "hyperband", "pbt")


def _int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def from_dict(d: Mapping[str, Any], where: str = "search") -> Search:
    """A search from a TOML ``[search]`` table: ``method = "halving" | "hyperband" |
    "pbt"`` and the keyword arguments of :class:`Halving` / :class:`PBT`."""
    d = dict(d)
    method = d.pop("method", None)
    if method not in METHODS:
        raise ValueError(f"{where}: method={method!r} must be one of {METHODS}")
    cls = PBT if method == "pbt" else Halving
    unknown = sorted(set(d) - set(cls._fields) - ({"brackets"} if method == "hyperband"
                                                    else set()))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} for method={method!r}; "
                         f"keys: {list(cls._fields)}")
    for k in ("average", "perturb", "explore"):
        if isinstance(d.get(k), list):
            d[k] = tuple(d[k])
    if method == "hyperband":
        d.setdefault("brackets", 0)
    needed = [k for k in cls._fields if k not in cls._field_defaults and k not in d]
    if needed:
        raise ValueError(f"{where}: method={method!r} needs {needed[0]} = ... (e.g. "
                         f"{needed[0]} = 4: epochs between exploit/explore steps)"
                         if needed[0] == "interval" else
                         f"{where}: method={method!r} needs {needed[0]} = ...")
    try:
        return cls(**d)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def check(search: Any, epochs: int, eval_every: int) -> Search:
    """``search`` validated (one-line ValueError/TypeError naming the value)."""
    if isinstance(search, Mapping):
        search = from_dict(search)
    if not isinstance(search, Halving | PBT):
        raise TypeError(f"search={search!r} must be jaxgd.search.Halving(...), "
                        "jaxgd.search.hyperband(...), jaxgd.search.PBT(...) or a dict with "
                        f"method in {METHODS}")
    if search.mode not in ("min", "max"):
        raise ValueError(f"search mode={search.mode!r} must be 'min' or 'max'")
    if search.metric is not None and not isinstance(search.metric, str):
        raise TypeError(f"search metric={search.metric!r} must be a history column name")
    if not _int(search.seed) or search.seed < 0:
        raise ValueError(f"search seed={search.seed!r} must be an integer >= 0")
    if isinstance(search, Halving):
        _check_halving(search, epochs, eval_every)
    else:
        _check_pbt(search, epochs, eval_every)
    return search


def _check_halving(h: Halving, epochs: int, eval_every: int) -> None:
    if not _int(h.eta) or h.eta < 2:
        raise ValueError(f"search eta={h.eta!r} must be an integer >= 2")
    if not _int(h.min_epochs) or h.min_epochs < 1:
        raise ValueError(f"search min_epochs={h.min_epochs!r} must be an integer >= 1")
    if h.min_epochs % eval_every:
        raise ValueError(f"search min_epochs={h.min_epochs} must be a multiple of "
                         f"eval_every={eval_every} (a rung ends at an evaluation)")
    if h.min_epochs * h.eta > epochs:
        raise ValueError(f"search min_epochs={h.min_epochs} with eta={h.eta} leaves no second "
                         f"rung within epochs={epochs}: need min_epochs * eta <= epochs")
    if not _int(h.brackets) or h.brackets < 0:
        raise ValueError(f"search brackets={h.brackets!r} must be an integer >= 0")
    if h.brackets > max_bracket(h, epochs, eval_every) + 1:
        raise ValueError(f"search brackets={h.brackets} is more than the "
                         f"{max_bracket(h, epochs, eval_every) + 1} brackets epochs={epochs}, "
                         f"eta={h.eta} and min_epochs={h.min_epochs} allow")
    if h.compact not in (True, False, "auto") or isinstance(h.compact, int | float) and (
            not isinstance(h.compact, bool)):
        raise ValueError(f"search compact={h.compact!r} must be True, False or 'auto'")
    if isinstance(h.average, str) or not all(isinstance(a, str) for a in h.average):
        raise TypeError(f"search average={h.average!r} must be a list of axis names")


def _check_pbt(p: PBT, epochs: int, eval_every: int) -> None:
    if not _int(p.interval) or p.interval < 1 or p.interval % eval_every:
        raise ValueError(f"search interval={p.interval!r} must be a positive multiple of "
                         f"eval_every={eval_every}")
    if p.interval >= epochs:
        raise ValueError(f"search interval={p.interval} must be less than epochs={epochs} "
                         "(no exploit/explore step would happen)")
    if not _real(p.quantile) or not 0 < p.quantile <= 0.5:
        raise ValueError(f"search quantile={p.quantile!r} must be in (0, 0.5]")
    if (isinstance(p.perturb, str) or not isinstance(p.perturb, Sequence) or not p.perturb
            or not all(_real(f) and f > 0 for f in p.perturb)):
        raise ValueError(f"search perturb={p.perturb!r} must be a list of positive factors")
    if not _real(p.resample) or not 0 <= p.resample <= 1:
        raise ValueError(f"search resample={p.resample!r} must be in [0, 1]")
    if p.explore is not None and (isinstance(p.explore, str) or not all(
            isinstance(a, str) for a in p.explore)):
        raise TypeError(f"search explore={p.explore!r} must be a list of axis names")


def default_metric(has_val: bool) -> str:
    return "val_loss" if has_val else "loss"


# --------------------------------------------------------------------- halving brackets

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


def ranked(values: Mapping[Any, float], mode: str) -> list[Any]:
    """Units best first (NaN last; ties keep the given order)."""
    keys = list(values)
    v = np.asarray([values[k] for k in keys], float)
    v = np.where(np.isnan(v), np.inf, v if mode == "min" else -v)
    return [keys[i] for i in np.argsort(v, kind="stable")]


# ------------------------------------------------------------------------------ PBT

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


def draw(prior: Any, rng: np.random.Generator) -> float:
    """A value from a prior: a ``random`` distribution tuple or a list of grid values."""
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
