"""The interface of a search method, and what every method shares.

A search method is a small immutable options object (a ``NamedTuple``: hashable, so a
sweep's fingerprint covers it) with three methods, in the spirit of optuna's
``BasePruner.prune`` and optimistix's ``init/step/terminate``:

* ``validate(epochs, eval_every, unit)``: its options checked against the run's budget
  (``epochs``, or updates with ``steps=``: ``unit`` is then ``"steps"``, the name its
  messages give the budget) before anything is compiled (a one-line
  ``ValueError``/``TypeError`` naming the option);
* ``validate_axes(axes)``: its options checked against the sweep's axes;
* ``run(pop, metric, resume)``: its decisions *and* its calls on the population
  (:class:`jaxgd.population.Population`: ``advance``, ``value``/``series``, ``stop``,
  ``copy_state``, ``set_hparams``, ``checkpoint``), continuing after the saved boundary
  ``resume`` (what it passed to ``pop.checkpoint``) when given; it returns what
  ``finish`` needs (or None);
* ``finish(result, outcome)``: anything it adds to the :class:`jaxgd.SweepResult`.

Every method also has the fields ``metric``, ``mode`` and ``seed``. Adding a method is one
file holding its class and a line in :data:`jaxgd.search.METHODS` (its TOML name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from ._checks import is_int


class Method(Protocol):
    """What :func:`jaxgd.sweep` calls on a ``search=`` object (see the module docstring)."""

    metric: str | None
    mode: str
    seed: int

    def validate(self, epochs: int, eval_every: int, unit: str = "epochs") -> None: ...

    def validate_axes(self, axes: set[str]) -> None: ...

    def run(self, pop: Any, metric: str, resume: dict[str, Any] | None) -> Any: ...

    def finish(self, result: Any, outcome: Any) -> None: ...


def check_common(m: Method) -> None:
    """The options every method has: ``mode``, ``metric`` and ``seed``."""
    if m.mode not in ("min", "max"):
        raise ValueError(f"search mode={m.mode!r} must be 'min' or 'max'")
    if m.metric is not None and not isinstance(m.metric, str):
        raise TypeError(f"search metric={m.metric!r} must be a history column name")
    if not is_int(m.seed) or m.seed < 0:
        raise ValueError(f"search seed={m.seed!r} must be an integer >= 0")


def ranked(values: Mapping[Any, float], mode: str) -> list[Any]:
    """Units best first (NaN last; ties keep the given order)."""
    keys = list(values)
    v = np.asarray([values[k] for k in keys], float)
    v = np.where(np.isnan(v), np.inf, v if mode == "min" else -v)
    return [keys[i] for i in np.argsort(v, kind="stable")]


def default_metric(has_val: bool) -> str:
    return "val_loss" if has_val else "loss"
