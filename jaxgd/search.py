"""Adaptive search inside the compiled sweep: successive halving, Hyperband,
population-based training (PBT) and the median stopping rule.

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
  ``quantile`` copy the complete state of a member of the best ``quantile`` (exploit; all
  but ``init_loss``, the loss each member started from)
  and change their traced hyper-parameters (explore: multiply by one of ``perturb``, or
  with probability ``resample`` draw afresh from the sweep's prior: the ``random``
  distribution or the ``grid`` values). Each member's hyper-parameters over time are in
  ``SweepResult.lineage`` (and ``jaxgd.plots.plot_lineage``).
* :class:`Median`: the median stopping rule: at epoch ``warmup`` and every ``interval``
  epochs after, a configuration still training stops when its best metric so far is
  worse than the median of the other configurations' running averages.

With a step budget (``steps=``), every count above (rungs, ``min_epochs``, ``interval``,
``warmup``) is in updates, and a boundary may fall inside an epoch.

With ``out=`` the sweep saves every boundary (members' states, histories and
hyper-parameters, PBT's lineage and random state) and the same call after an
interruption continues from the last one.

Rankings use the history row of the boundary's evaluation (the last finite value for a
configuration that stopped earlier on its own); diverged configurations rank last. The
random choices come from ``seed`` (NumPy), so a search is deterministic for its seed,
on any number of devices or processes (every process takes the same decisions from the
same gathered history).

Each method is one module holding its options, checks, decisions and calls on the
population (:mod:`jaxgd.search_halving`, :mod:`jaxgd.search_pbt`,
:mod:`jaxgd.search_median`; the interface is :class:`jaxgd.search_base.Method`); this
module is the registry (:data:`METHODS`, the TOML names) and the public names. The sweep
(:func:`jaxgd.sweep`, ``search=``) builds the population and calls the method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .axes import draw
from .search_base import Method, default_metric, ranked
from .search_halving import Bracket, Halving, brackets, hyperband, max_bracket, rung_ends
from .search_median import Median, check_points, median_stops
from .search_pbt import PBT, Exploit, exploit, explore

__all__ = ["PBT", "Halving", "Median", "hyperband", "from_dict", "METHODS"]
# (the methods' helpers, re-exported: the decisions tests replay)
_REEXPORTED = (Bracket, brackets, max_bracket, rung_ends, ranked, default_metric, Exploit,
               draw, exploit, explore, check_points, median_stops, Method)

Search = Halving | PBT | Median

# The registry: each TOML ``method`` name -> (its class, the defaults that name implies).
# A new method is one file (its class: see jaxgd.search_base.Method) and one line here.
METHODS: dict[str, tuple[type, dict[str, Any]]] = {
    "halving": (Halving, {}),
    "hyperband": (Halving, {"brackets": 0}),
    "pbt": (PBT, {}),
    "median": (Median, {}),
}
# the keys a TOML table gives as lists where the class takes tuples
_TUPLES = ("average", "perturb", "explore")


def from_dict(d: Mapping[str, Any], where: str = "search") -> Search:
    """A search from a TOML ``[search]`` table: ``method`` (a name of :data:`METHODS`:
    ``"halving"``, ``"hyperband"``, ``"pbt"``, ``"median"``) and the keyword arguments of
    its class."""
    d = dict(d)
    method = d.pop("method", None)
    if method not in METHODS:
        raise ValueError(f"{where}: method={method!r} must be one of {tuple(METHODS)}")
    cls, implied = METHODS[method]
    unknown = sorted(set(d) - set(cls._fields) - set(implied))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} for method={method!r}; "
                         f"keys: {list(cls._fields)}")
    for k in _TUPLES:
        if isinstance(d.get(k), list):
            d[k] = tuple(d[k])
    d = {**implied, **d}
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


def check(search: Any, epochs: int, eval_every: int, unit: str = "epochs") -> Search:
    """``search`` validated against the run's budget, ``epochs`` epochs (or updates, with
    ``unit="steps"``), and ``eval_every`` (one-line ValueError/TypeError naming the
    value)."""
    if isinstance(search, Mapping):
        search = from_dict(search)
    classes = tuple(dict.fromkeys(cls for cls, _ in METHODS.values()))
    if not isinstance(search, classes):
        raise TypeError(f"search={search!r} must be jaxgd.search.Halving(...), "
                        "jaxgd.search.hyperband(...), jaxgd.search.PBT(...), "
                        "jaxgd.search.Median(...) or a dict with method in "
                        f"{tuple(METHODS)}")
    search.validate(epochs, eval_every, unit)
    return search
