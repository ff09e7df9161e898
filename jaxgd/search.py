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

from collections.abc import Mapping
from typing import Any

from ._checks import is_int
from .search_base import default_metric, ranked
from .search_halving import (
    Bracket,
    Halving,
    brackets,
    check_halving,
    hyperband,
    max_bracket,
    rung_ends,
)
from .search_pbt import PBT, Exploit, check_pbt, draw, exploit, explore

__all__ = ["PBT", "Halving", "hyperband", "from_dict"]
# (the methods' helpers, re-exported: the decisions tests replay)
_REEXPORTED = (Bracket, brackets, max_bracket, rung_ends, ranked, default_metric, Exploit,
               draw, exploit, explore)


Search = Halving | PBT
METHODS = ("halving", "hyperband", "pbt")


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
    if not is_int(search.seed) or search.seed < 0:
        raise ValueError(f"search seed={search.seed!r} must be an integer >= 0")
    if isinstance(search, Halving):
        check_halving(search, epochs, eval_every)
    else:
        check_pbt(search, epochs, eval_every)
    return search


# --------------------------------------------------------------------- halving brackets

# ------------------------------------------------------------------------------ PBT

