"""Stop conditions: each one is a single entry of :data:`STOPS`.

An entry holds the stop reason's name, its integer code inside the compiled program, its
parameters (a ``fit``/``sweep`` keyword and traced hyper-parameter each, with the default
that never triggers and the range a user's value must lie in) and the test the program
applies at every evaluation. Everything else is derived from this table: the stop
reasons (:data:`STOP_REASONS`), the defaults filled into ``hparams``, the range checks
of ``fit``, ``sweep`` and a TOML ``[train]`` table, the keywords of ``fit``/``sweep``
and the order of precedence of the checks.

Adding a stop condition is one new :class:`StopCondition` here (with the next free
code) and its test; nothing else needs to change. Codes are stored in run folders: never
renumber one.

This module imports no JAX at load time (a configuration file is checked with it before
JAX starts).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = [
    "Evaluation",
    "STOPS",
    "STOP_DEFAULTS",
    "STOP_PARAMS",
    "STOP_REASONS",
    "StopCondition",
    "StopParam",
    "check_stop_param",
]


class StopParam(NamedTuple):
    """A parameter of a stop condition: a keyword of ``fit``/``sweep`` and a traced hparam."""

    name: str
    default: float  # the value that never triggers (filled in when not given)
    ok: Callable[[float], bool]  # the range of a user's value
    what: str  # that range in words, completing "must be ..." / "use ..."
    doc: str
    integer: bool = False  # an int32 inside the program (a count)


class Evaluation(NamedTuple):
    """What a stop test sees at an evaluation (scalars of one configuration)."""

    loss: Any  # training loss (full data, or the mean batch loss with metrics="batch")
    grad_norm: Any  # gradient norm, same convention
    monitor: Any  # validation loss if there is validation data, else the training loss
    bad_evals: Any  # evaluations since the monitored loss last improved by > min_delta


class StopCondition(NamedTuple):
    """One stop reason: name, code in the program, parameters and test."""

    name: str
    code: int
    params: tuple[StopParam, ...]
    # (evaluation, traced hparams) -> bool array: stop now. None: the loop decides it
    # itself (the epoch budget; divergence, tested on every step and evaluation).
    test: Callable[[Evaluation, Mapping[str, Any]], Any] | None
    doc: str


def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


STOPS: tuple[StopCondition, ...] = (
    StopCondition(
        "max_epochs", 1, (), None,
        "the epoch budget ran out",
    ),
    StopCondition(
        "grad_tol", 2,
        (StopParam("grad_tol", -1.0, lambda v: v >= 0, "a number >= 0",
                   "stop when the gradient norm is <= this (\"grad_tol\"): of the full "
                   "training data with ``metrics=\"full\"`` (giving ``grad_tol`` adds a "
                   "backward pass over the data to every evaluation), the mean of the "
                   "epoch's batch gradient norms with ``metrics=\"batch\"`` (mini-batch "
                   "noise keeps that one higher)."),),
        lambda ev, tc: ev.grad_norm <= tc["grad_tol"],
        "the gradient norm reached grad_tol",
    ),
    StopCondition(
        "loss_target", 3,
        (StopParam("loss_target", -math.inf, lambda v: not math.isnan(v), "a number",
                   "stop when the training loss is <= this (\"loss_target\")."),),
        lambda ev, tc: ev.loss <= tc["loss_target"],
        "the training loss reached loss_target",
    ),
    StopCondition(
        "patience", 4,
        (StopParam("patience", 0, lambda v: v >= 0 and float(v).is_integer(),
                   "an integer >= 0 (evaluations; 0 = no patience stop)",
                   "stop after this many evaluations without improvement of the monitored "
                   "loss (validation loss if given, else training loss) by more than "
                   "``min_delta`` (``None`` or 0: no patience stop).", integer=True),
         StopParam("min_delta", 0.0, lambda v: v >= 0, "a number >= 0",
                   "the improvement ``patience`` and ``restore_best`` require.")),
        lambda ev, tc: (tc["patience"] > 0) & (ev.bad_evals >= tc["patience"]),
        "no improvement of the monitored loss for patience evaluations",
    ),
    StopCondition(
        "diverged", 5,
        (StopParam("diverge_factor", 1e6, lambda v: v > 1, "a number > 1",
                   "stop as \"diverged\" when the training loss exceeds this times "
                   "max(|initial loss|, 1) (default 1e6; ``float(\"inf\")`` turns the check "
                   "off; with ``metrics=\"batch\"`` the initial loss is the first update's "
                   "batch loss, ``init_loss``). A non-finite loss or gradient always stops "
                   "as \"diverged\", keeping the parameters of the last evaluation "
                   "(``diverged_step`` records the update that found it)."),),
        None,
        "a non-finite loss or gradient, or growth beyond diverge_factor",
    ),
    StopCondition(
        "pruned", 6, (), None,
        "an adaptive search (``search=``, :mod:`jaxgd.search`) stopped it at a rung: "
        "``epochs_run`` says how far it got",
    ),
)

RUNNING = 0
_BY_NAME = {s.name: s for s in STOPS}
STOP_REASONS: tuple[str, ...] = ("running",) + tuple(
    s.name for s in sorted(STOPS, key=lambda s: s.code))
CODES: dict[str, int] = {s.name: s.code for s in STOPS}
STOP_PARAMS: dict[str, StopParam] = {p.name: p for s in STOPS for p in s.params}
STOP_DEFAULTS: dict[str, float] = {p.name: p.default for p in STOP_PARAMS.values()}
INT_KEYS: tuple[str, ...] = tuple(p.name for p in STOP_PARAMS.values() if p.integer)
# the conditions tested at every evaluation, in order of precedence (the first wins)
TESTED: tuple[StopCondition, ...] = tuple(s for s in STOPS if s.test is not None)


def code(name: str) -> int:
    """The program's integer for stop reason ``name``."""
    return _BY_NAME[name].code


def check_stop_param(label: str, name: str, value: Any) -> Any:
    """Raise unless ``value`` lies in the range of stop parameter ``name``.

    ``label`` names the value in the message (``"patience"``, ``"hparams['patience']"``).
    """
    p = STOP_PARAMS[name]
    if not _number(value):
        try:  # numpy and 0-d array scalars
            import numpy as np

            arr = np.asarray(value)
            if arr.ndim != 0 or arr.dtype.kind not in "iuf":
                raise TypeError
            number = arr.item()
        except (TypeError, ValueError):
            raise TypeError(f"{label}={value!r} must be {p.what}") from None
    else:
        number = value
    if not p.ok(number):
        raise ValueError(f"{label}={value!r} must be {p.what}")
    return value
