"""Optuna proposals run as one program: ask a study for a round of trials, train the round
as one :func:`jaxgd.sweep`, tell the results back, and repeat until ``n_trials``.

Any Optuna sampler proposes (TPE, CMA-ES, GP, random, ...), through Optuna's ask-and-tell
interface; the study may be the user's own (its storage included), so its dashboard and
its other workers see every trial jaxgd ran. Optuna is an optional package
(``pip install optuna``, or the ``optuna`` extra).

What each trial is told:

* its intermediate values: ``trial.report(value, epoch)`` for every evaluation of the
  ``objective`` history column (the 0-based epoch of ``history["epoch"]``; non-finite
  values are not reported);
* a configuration that stopped with any reason but ``"diverged"`` is told COMPLETE with
  its value: the objective's last recorded value (``reduce="last"``) or its best one over
  the recorded evaluations (``reduce="best"``, the lowest for a minimised study);
* a diverged configuration is told PRUNED, its value the worst there is (``inf`` in a
  minimised study, ``-inf`` in a maximised one): its curve is reported up to the
  evaluation at which it stopped, and that evaluation reports the worst value instead of
  the number recorded there (Optuna stores a pruned trial's last reported value as its
  value; the number recorded at a blow-up, huge or from before a non-finite step, would
  read as an ordinary score). Samplers that use pruned trials (TPE) rank it below every
  complete trial; ``study.best_trial`` never picks it;
* a configuration whose value is not finite although it did not diverge (a NaN metric) is
  told FAIL, with no value.

Each trial's ``user_attrs`` hold ``stop_reason``, ``epochs_run`` and ``config`` (its row
in the returned result). Pruners: a round trains as one program, so a trial cannot be
stopped half-way by ``trial.should_prune()``. The reported curve is a record (for the
dashboard and for samplers that read intermediate values); the study's pruner is never
asked, and every trial trains its full ``epochs`` (jaxgd's own stop conditions,
``patience=`` and the like, still stop a configuration early inside the program).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from ._checks import require
from .history import EPOCH, SCALARS, VAL_LOSS, index_name
from .lossform import declared
from .results import ParamGroup, SweepResult
from .sweep import sweep

__all__ = ["OptunaResult", "optuna_search", "distributions"]

KINDS = ("uniform", "loguniform", "randint", "choice")
REDUCE = ("last", "best")
# keywords of jaxgd.sweep that optuna_search sets itself (or cannot honour per round)
NOT_PASSED = ("grid", "random", "configs", "search", "only", "progress")
# history columns of every sweep (``objective``, the loss + penalty, of one with a penalty)
STANDARD = tuple(c for c in SCALARS if c not in (EPOCH, VAL_LOSS))


class OptunaResult(NamedTuple):
    """What :func:`optuna_search` returns.

    Attributes:
      result: every trial's :class:`jaxgd.SweepResult` row, joined in the order the trials
        were asked (``config`` 0..n_trials-1), with the columns ``trial`` (the Optuna trial
        number), ``trial_state`` (``"COMPLETE"``, ``"PRUNED"`` or ``"FAIL"``) and
        ``trial_value`` (the value told to the study; NaN when none was told).
      study: the ``optuna.Study`` asked and told.
    """

    result: SweepResult
    study: Any


def _optuna():
    return require("optuna", "jaxgd.optuna_search")


def distributions(space: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna distributions of a search space.

    Args:
      space: ``{name: spec}``, each spec an ``optuna.distributions.BaseDistribution`` or
        spelled as jaxgd's ``random=`` spells it: ``("loguniform", lo, hi)``,
        ``("uniform", lo, hi)``, ``("randint", lo, hi)`` (``hi`` excluded, as in
        ``random=``), ``("choice", [v1, v2, ...])``; a plain list ``[v1, v2, ...]`` is a
        categorical choice.

    Returns:
      ``{name: optuna distribution}``.
    """
    optuna = _optuna()
    dist = optuna.distributions
    if not isinstance(space, Mapping):
        raise TypeError(f"space must be a dict of name -> distribution, got "
                        f"{type(space).__name__}")
    if not space:
        raise ValueError("space={} is empty: give at least one hyper-parameter to search, "
                         "e.g. {'learning_rate': ('loguniform', 1e-4, 1e-1)}")
    out = {}
    for name, spec in space.items():
        if not isinstance(name, str):
            raise TypeError(f"space key {name!r} must be a str")
        if isinstance(spec, dist.BaseDistribution):
            out[name] = spec
        else:
            out[name] = _from_spec(dist, name, spec)
    return out


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _from_spec(dist, name: str, spec: Any):
    bad = (f"space[{name!r}]={spec!r} is invalid: use an optuna distribution, "
           "('loguniform', lo, hi), ('uniform', lo, hi), ('randint', lo, hi), "
           "('choice', [v1, ...]) or a list of values")
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], str) \
            and spec[0] in KINDS:
        kind = spec[0]
        if kind == "choice":
            if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or not spec[1]:
                raise ValueError(bad)
            return dist.CategoricalDistribution([_plain(v) for v in spec[1]])
        if len(spec) != 3:
            raise ValueError(bad)
        try:
            lo, hi = float(spec[1]), float(spec[2])
        except (TypeError, ValueError):
            raise ValueError(bad) from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"space[{name!r}]={spec!r}: need finite low < high")
        if kind == "loguniform" and lo <= 0:
            raise ValueError(f"space[{name!r}]={spec!r}: loguniform needs low > 0")
        if kind == "randint":
            if lo != int(lo) or hi != int(hi):
                raise ValueError(f"space[{name!r}]={spec!r}: randint needs integer bounds")
            return dist.IntDistribution(int(lo), int(hi) - 1)
        return dist.FloatDistribution(lo, hi, log=kind == "loguniform")
    if isinstance(spec, list) and spec:
        return dist.CategoricalDistribution([_plain(v) for v in spec])
    raise ValueError(bad)


def sampler_named(name: str, seed: int | None = None):
    """An Optuna sampler by name (a TOML ``[search] sampler``): ``"tpe"``, ``"random"``,
    ``"cmaes"`` or ``"gp"``, seeded with ``seed``."""
    samplers = _optuna().samplers
    kinds = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler",
             "gp": "GPSampler"}
    if name not in kinds:
        raise ValueError(f"sampler={name!r} must be one of {list(kinds)}")
    return getattr(samplers, kinds[name])(seed=seed)


def _new_study(optuna, sampler, direction: str | None):
    return optuna.create_study(sampler=sampler, direction=direction or "minimize")


def _check_study(optuna, study, sampler, direction: str | None):
    if study is None:
        return _new_study(optuna, sampler, direction)
    if not isinstance(study, optuna.Study):
        raise TypeError(f"study={study!r} must be an optuna.Study (optuna.create_study(...))")
    if sampler is not None:
        raise ValueError("give sampler= or study=, not both: the study has its own sampler")
    if len(study.directions) != 1:
        raise ValueError(f"study has {len(study.directions)} objectives; optuna_search "
                         "tells one value per trial: use a single-objective study")
    have = study.direction.name.lower()
    if direction is not None and direction != have:
        raise ValueError(f"direction={direction!r} but the study's direction is {have!r}")
    return study


def _check_counts(n_trials: Any, round_size: Any) -> None:
    for name, v in (("n_trials", n_trials), ("round_size", round_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name}={v!r} must be a positive integer")


def _metric_names(loss: Callable, params: Any, data: Any, kw: Mapping[str, Any]
                  ) -> set[str] | None:
    """The names of the loss's metrics, by tracing it once on two samples (no compile);
    None when they cannot be found this way (``params=None`` with ``init=``)."""
    if params is None or not callable(loss):
        return None
    d = declared(loss)

    class AnyHparams(dict):
        def __missing__(self, k):
            return np.float32(0.1)

    kwargs: dict[str, Any] = {}
    if d["key"]:
        kwargs["key"] = None
    if d["train"]:
        kwargs["train"] = False
    if d["state"]:
        kwargs["state"] = kw.get("state")
    if d["hparams"]:
        kwargs["hparams"] = AnyHparams()
    try:
        probe = jax.tree.map(lambda a: np.asarray(a)[:2], data)
        out = jax.eval_shape(lambda p, b: loss(p, b, **kwargs), params, probe)
    except Exception:  # noqa: BLE001 - the sweep reports a bad loss itself
        return None
    n = len(out) if isinstance(out, tuple) else 0
    aux = out[2] if d["state"] and n == 3 else out[1] if not d["state"] and n == 2 else None
    return set(aux) if isinstance(aux, Mapping) else set()


def check_objective(objective: Any, loss, params, data, kw: Mapping[str, Any]) -> None:
    """Refuse an objective that no history column of the sweep will hold."""
    if not isinstance(objective, str):
        raise TypeError(f"objective={objective!r} must be a history column name (str)")
    has_val = kw.get("val_data") is not None or kw.get("folds") is not None
    if objective.startswith("val_") and not has_val:
        raise ValueError(f"objective={objective!r} needs validation data: pass val_data= "
                         "(or folds=), or use objective='loss'")
    if objective in (*STANDARD, VAL_LOSS):
        return
    base = objective.split("_", 1)[1] if objective.startswith(("val_", "batch_")) \
        else objective
    metrics = _metric_names(loss, params, data, kw)
    if metrics is not None and base not in metrics:
        known = ["loss", *(["val_loss"] if has_val else []), *sorted(metrics),
                 *(f"val_{m}" for m in sorted(metrics) if has_val)]
        raise ValueError(f"objective={objective!r} is not a history column of this sweep: "
                         f"use one of {known}")


def _check_kwargs(kw: Mapping[str, Any], reduce: Any) -> None:
    if "track" in kw:
        raise TypeError("optuna_search does not take track= (its rounds are separate "
                        "sweeps): write its result with out=DIR, then jaxgd.trackers.export"
                        "(DIR, ...) or `jaxgd export DIR --to ...`")
    bad = sorted(set(kw) & set(NOT_PASSED))
    if bad:
        raise TypeError(f"optuna_search sets {bad[0]}= itself (each round is one sweep of "
                        "the trials Optuna proposes): remove it")
    if reduce not in REDUCE:
        raise ValueError(f"reduce={reduce!r} must be one of {REDUCE}")


def optuna_search(
    loss: Callable[..., Any],
    params: Any,
    data: Any,
    space: Mapping[str, Any],
    *,
    n_trials: int,
    round_size: int = 16,
    objective: str = "val_loss",
    reduce: str = "last",
    study: Any = None,
    sampler: Any = None,
    direction: str | None = None,
    progress: bool = True,
    out: str | os.PathLike | None = None,
    **sweep_kwargs: Any,
) -> OptunaResult:
    """Search with Optuna's proposals, each round of trials trained as one jaxgd sweep.

    Every round asks the study for ``round_size`` trials (``study.ask(distributions)``),
    trains them as one :func:`jaxgd.sweep` (``configs=`` the proposed values; one compiled
    program per shape group), and tells every trial its curve and its value (see the
    module's docstring: a diverged configuration is told PRUNED, a non-finite value FAIL).
    Rounds follow until ``n_trials`` trials ran. The last round, when smaller, is padded
    with copies of its first trial (rows dropped from the result), so every round of a
    search whose space changes no shape reuses the first round's compiled program.

    Args:
      loss, params, data: as for :func:`jaxgd.sweep`.
      space: the hyper-parameters to search: ``{name: distribution}`` (see
        :func:`distributions`); the names are sweep axes (``learning_rate``, ``l2``,
        ``batch_size``, a loss's own ``hparams`` name, ...).
      n_trials: how many trials to ask and run (> 0).
      round_size: trials per round (one sweep). Samplers that learn (TPE, GP, CMA-ES) see
        the results of earlier rounds only: a large round is a faster program but a less
        informed search. With TPE, ``TPESampler(constant_liar=True)`` spreads a round's
        proposals.
      objective: the history column the study optimises (``"val_loss"``, ``"loss"``, a
        metric of the loss such as ``"val_accuracy"``).
      reduce: ``"last"``: a trial's value is the objective's last recorded value;
        ``"best"``: its best recorded value (lowest, or highest in a maximised study).
      study: an ``optuna.Study`` (any sampler and storage) to ask and tell; by default a
        new in-memory study with ``sampler`` and ``direction``.
      sampler: the sampler of a new study (Optuna's default, TPE, when None).
      direction: ``"minimize"`` (default) or ``"maximize"``, for a new study; checked
        against a given study's.
      progress: print one line per round (to stderr): trials, seconds, best value so far.
      out: a new or empty folder: the joined result is saved there when the search ends
        (a run folder: ``jaxgd.load``, ``jaxgd show``/``plot``/``export`` read it). The
        search itself is not resumed from it; a study with a storage keeps its trials.
      **sweep_kwargs: any other keyword of :func:`jaxgd.sweep` (``epochs``, ``val_data``,
        ``optimizer``, ``batch_size``, ``seed``, ``hparams``, stop conditions, ...), the
        same for every round; not ``grid``, ``random``, ``configs``, ``search``, ``only``,
        ``progress`` or ``track`` (export the saved result instead).

    Returns:
      :class:`OptunaResult` ``(result, study)``.
    """
    optuna = _optuna()
    _check_counts(n_trials, round_size)
    _check_kwargs(sweep_kwargs, reduce)
    _check_out(out)
    dists = distributions(space)
    if direction not in (None, "minimize", "maximize"):
        raise ValueError(f"direction={direction!r} must be 'minimize' or 'maximize'")
    check_objective(objective, loss, params, data, sweep_kwargs)
    study = _check_study(optuna, study, sampler, direction)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    parts, done, n_rounds = [], 0, -(-n_trials // round_size)
    for r in range(n_rounds):
        t0 = time.perf_counter()
        trials = [study.ask(dists) for _ in range(min(round_size, n_trials - done))]
        try:
            part = _run_round(loss, params, data, trials, round_size, objective,
                              sweep_kwargs)
        except BaseException:
            for t in trials:  # no trial of a failed round is left RUNNING in the study
                study.tell(t, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            raise
        parts.append(_tell(optuna, study, trials, part, objective, reduce, maximize, done))
        done += len(trials)
        if progress:
            print(_round_line(optuna, study, r, n_rounds, done, time.perf_counter() - t0),
                  file=sys.stderr, flush=True)
    res = SweepResult.concat(parts)
    if out is not None:
        res.save(out)
    return OptunaResult(res, study)


def _check_out(out: Any) -> None:
    """``out`` is None or a path to a new or empty folder (refused before anything runs)."""
    if out is None:
        return
    if isinstance(out, bool) or not isinstance(out, str | os.PathLike):
        raise TypeError(f"out={out!r} must be a folder path (str or pathlib.Path)")
    p = Path(out)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise ValueError(f"out={str(out)!r} must be a new or empty folder (it holds "
                         "files): choose another")


def _run_round(loss, params, data, trials, width: int, objective: str,
               kw: Mapping[str, Any]) -> SweepResult:
    """One sweep of the trials' proposals, padded to ``width`` configurations (the copies'
    rows dropped)."""
    cfgs = [dict(t.params) for t in trials]
    sw = sweep(loss, params, data, configs=cfgs + [cfgs[0]] * (width - len(cfgs)), **kw)
    if objective not in sw.history:
        raise ValueError(f"objective={objective!r} is not a history column of this sweep: "
                         f"use one of {sorted(k for k in sw.history if k != 'epoch')}")
    return take_rows(sw, len(cfgs)) if len(cfgs) < width else sw


def take_rows(sw: SweepResult, n: int) -> SweepResult:
    """The first ``n`` configurations of a sweep (``config`` < n) as a SweepResult."""
    pos = np.flatnonzero(sw.table["config"].to_numpy() < n)
    new = {int(p): i for i, p in enumerate(pos)}
    groups = []
    for g in sw.param_groups:
        keep = np.isin(g.rows, pos)
        if keep.any():
            groups.append(ParamGroup(np.array([new[int(p)] for p in g.rows[keep]]),
                                     jax.tree.map(lambda a, k=keep: a[k], g.params)))
    state = None if sw.state is None else jax.tree.map(lambda a: a[pos], sw.state)
    return SweepResult([sw.configs[p] for p in pos],
                       sw.table.iloc[pos].reset_index(drop=True),
                       {k: v[pos] for k, v in sw.history.items()}, None, sw.folds,
                       param_groups=groups, state=state)


def trial_value(values: np.ndarray, epochs: np.ndarray, reduce: str, maximize: bool
                ) -> float:
    """A trial's value from its objective row: the last recorded evaluation's, or the best
    one's (NaN when none is finite)."""
    rec = values[~np.isnan(epochs)]
    if reduce == "last":
        return float(rec[-1]) if len(rec) else math.nan
    fin = rec[np.isfinite(rec)]
    if not len(fin):
        return math.nan
    return float(fin.max() if maximize else fin.min())


def _tell(optuna, study, trials, part: SweepResult, objective: str, reduce: str,
          maximize: bool, offset: int) -> SweepResult:
    """Report each trial's curve, tell its state and value; the part's table gets the
    trial columns and its configurations the numbers ``offset``... ."""
    TrialState = optuna.trial.TrialState
    tab = part.table
    rows = np.argsort(tab["config"].to_numpy(), kind="stable")  # trial i -> table row
    states, values = [None] * len(trials), [math.nan] * len(trials)
    worst = -math.inf if maximize else math.inf
    for i, (t, row) in enumerate(zip(trials, rows, strict=True)):
        curve, epochs = part.history[objective][row], part.history[
            index_name(part.history)][row]
        reason = str(tab["stop_reason"].iloc[row])
        _report(t, curve, epochs, worst if reason == "diverged" else None)
        t.set_user_attr("stop_reason", reason)
        t.set_user_attr("epochs_run", int(tab["epochs_run"].iloc[row]))
        t.set_user_attr("config", offset + i)
        value = trial_value(curve, epochs, reduce, maximize)
        if reason == "diverged":  # Optuna stores the last reported value: the worst
            states[i], values[i] = TrialState.PRUNED, worst
        elif not math.isfinite(value):
            states[i] = TrialState.FAIL
            t.set_user_attr("fail_reason", f"{objective} is not finite ({value})")
        else:
            states[i], values[i] = TrialState.COMPLETE, value
        study.tell(t, values[i] if states[i] == TrialState.COMPLETE else None,
                   state=states[i])
    tab = tab.copy()
    order = np.empty(len(rows), np.int64)
    order[rows] = np.arange(len(rows))  # table row -> trial index
    tab["config"] = offset + order
    tab["trial"] = [trials[i].number for i in order]
    tab["trial_state"] = [states[i].name for i in order]
    tab["trial_value"] = [values[i] for i in order]
    part.table = tab
    return part


def _report(trial, curve: np.ndarray, epochs: np.ndarray, last: float | None) -> None:
    """``trial.report`` every recorded evaluation with a finite value; with ``last``, the
    last recorded evaluation (a diverged configuration's) reports ``last`` instead."""
    rec = np.flatnonzero(~np.isnan(epochs))
    for j in rec:
        if last is not None and j == rec[-1]:
            trial.report(last, int(epochs[j]))
        elif np.isfinite(curve[j]):
            trial.report(float(curve[j]), int(epochs[j]))


def _round_line(optuna, study, r: int, n_rounds: int, done: int, seconds: float) -> str:
    complete = study.get_trials(deepcopy=False,
                                states=(optuna.trial.TrialState.COMPLETE,))
    best = f"best value {study.best_value:.6g} (trial {study.best_trial.number})" \
        if complete else "no complete trial yet"
    return f"optuna_search: round {r + 1}/{n_rounds}, {done} trials, {seconds:.1f} s, {best}"
