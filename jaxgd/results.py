"""Results of ``fit`` and ``sweep``: histories, tables, save/load and plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import numpy as np
import pandas as pd

from .history import STEP, evaluation_rows, index_name, metric_names, per_step
from .spec import ProgramOutput, loop_name, param_leaves
from .stops import STOP_REASONS

__all__ = ["Best", "FitResult", "ParamGroup", "SweepResult", "load"]


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`jaxgd.fit`.

    Attributes:
      params: final parameters (those of the last evaluation before a non-finite step if
        the run diverged, see the README's stop conditions; the best
        monitored ones with ``restore_best=True``).
      history: dict of numpy arrays, one row per evaluation (every epoch, or every
        ``eval_every`` epochs; ``epoch`` holds each row's 0-based last epoch): ``loss``
        (training loss at the evaluation), ``batch_loss`` (mean of the batch losses of the
        row's updates: the epoch's, or its ``eval_every`` epochs'), ``grad_norm``
        (full data with ``grad_tol`` or ``metrics="full_grad"``, else the mean of the
        row's batch gradient norms), ``lr`` (learning rate of the row's last applied
        update; NaN where the row applied none, its first update not finite, and where
        jaxgd cannot know it, e.g. a user's factory that builds its own
        schedule: see :func:`jaxgd.optim.recorded_lr`),
        and ``val_loss``,
        ``objective`` (loss + penalty), ``step_loss`` [epoch, step] when present. With
        ``steps=`` rows are every ``eval_every`` updates, ``step`` holds each row's 0-based
        last update in place of ``epoch``, and ``step_loss`` is [update, 1].
      stop_reason: one of :data:`jaxgd.STOP_REASONS` after "running" (declared in
        :mod:`jaxgd.stops`): "max_epochs", "grad_tol", "loss_target", "patience",
        "diverged".
      epochs_run: epochs that ran (including the one where the run stopped; with
        ``steps=``, the epochs begun).
      steps_run: parameter updates applied (to the returned parameters: a diverged run's
        count stops at the evaluation its parameters are from).
      best_epoch: epoch (0-based) of the best monitored loss, -1 if none (with ``steps=``,
        the update of that evaluation, as in ``history["step"]``).
      init_loss: the loss of the initial parameters on the training data; with
        ``metrics="batch"`` (no pass over the data) on the first update's batch, as that
        step computes it (its ``key``, ``train=True``; the mean over the ``accumulate``
        batches of the update). ``diverge_factor`` measures from it.
      final_loss: the last evaluation's training loss (``history["loss"][-1]``). With
        ``restore_best=True`` the returned ``params`` are those of ``best_epoch``, not of
        the last evaluation: their recorded loss is ``best_epoch_loss`` (their loss on
        the training data with ``metrics="full"``/``"full_grad"``; with ``"batch"`` the
        mean batch loss of the updates that led to them).
      state: the final model state, for a loss that carries one (``state=``), else None
        (with ``restore_best``, the state of the best epoch).
      diverged_step: -1 unless ``stop_reason`` is "diverged"; then the 0-based index of
        the update at which the run was found diverged (the updates it had applied then):
        the first update whose objective or gradient norm was not finite (after an update
        that overflowed the parameters from a finite loss and gradient, the next one, which
        starts from them); for divergence found at an evaluation (non-finite parameters,
        the loss grown past ``diverge_factor``, a non-finite evaluation loss) the updates
        up to that evaluation; 0 for a non-finite initial loss.
      loop: the execution plan of the updates that ran (:func:`jaxgd.spec.loop_name`);
        None when not known: a run resumed from a checkpoint under ``loop="auto"`` (the
        updates before the checkpoint may have run another plan, measured then), or a
        result read back from a run folder that does not record it.
      plan_trials: the measured candidates of ``loop="auto"`` (a DataFrame, columns
        ``group``, ``plan``, ``loop``, ``compile_s``, ``eval_s``, ``chosen``: see
        :mod:`jaxgd.autoplan`), or None when nothing was measured.
      opt_state: the optimizer's state paired with ``params`` (after the updates that
        made them: a diverged run's comes back with its parameters), as the
        transformation that ran holds it: the optimizer's own state, or with
        ``clip_value``/``clip_norm`` an ``optax.chain``'s tuple (the clipping's state
        first). For what lives in the state, e.g.
        ``optax.contrib.schedule_free_eval_params(res.opt_state, res.params)``, or to go
        on training in a loop of your own. None where no state matches ``params``: with
        ``restore_best=True`` (the best evaluation's parameters), and for a result read
        back from a run folder (which does not hold it).
    """

    params: Any
    history: dict[str, np.ndarray]
    stop_reason: str
    epochs_run: int
    steps_run: int
    best_epoch: int = -1
    init_loss: float = float("nan")
    state: Any = None
    diverged_step: int = -1
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    loop: str | None = "scan"
    plan_trials: Any = field(default=None, repr=False)
    opt_state: Any = field(default=None, repr=False)

    @classmethod
    def from_program(cls, out: ProgramOutput, spec: Any = None) -> FitResult:
        e = int(out.epochs_run)
        rows = int(out.evals_run)
        # step_loss: a row per epoch run (per update with a step budget: as recorded)
        by_steps = STEP in out.history
        hist = {k: np.asarray(v) if per_step(k) and by_steps
                else np.asarray(v)[: evaluation_rows(k, rows, e)]
                for k, v in out.history.items()}
        return cls(
            params=out.params,
            history=hist,
            stop_reason=STOP_REASONS[int(out.reason)],
            epochs_run=e,
            steps_run=int(out.steps_run),
            best_epoch=int(out.best_epoch),
            init_loss=float(out.init_loss),
            state=out.state,
            diverged_step=int(out.diverged_step),
            loop="scan" if spec is None else loop_name(spec),
        )

    def param_history(self) -> Any:
        """The parameters recorded at each evaluation (``record_params=True``) as one
        pytree shaped like ``params`` with a leading [row] axis."""
        names = [name for name, _ in param_leaves(self.params)]
        missing = [n for n in names if n not in self.history]
        if missing:
            raise ValueError("no parameter history: run fit(..., record_params=True)")
        treedef = jax.tree.structure(self.params)
        return jax.tree.unflatten(treedef, [self.history[n] for n in names])

    def export_orbax(self, path, state: bool | str = True, overwrite: bool = False):
        """Write ``params`` (and ``state``) as an orbax checkpoint directory that
        ``orbax.checkpoint.StandardCheckpointer().restore(path, template)`` reads in any
        process, without jaxgd (layout: :mod:`jaxgd.orbax_io`).

        Args:
          path: a new or empty folder (``overwrite=True`` replaces a non-empty one).
          state: include the model state, if any, as ``{"params": ..., "state": ...}``
            (a string names the state's key, e.g. ``"batch_stats"``); False: the
            parameters' tree alone.
          overwrite: replace an existing non-empty folder.

        Returns:
          the absolute path written (a ``pathlib.Path``).
        """
        return _export_orbax(path, self.params, self.state, state, overwrite)

    @property
    def final_loss(self) -> float:
        loss = self.history.get("loss")
        return float(loss[-1]) if loss is not None and len(loss) else float("nan")

    @property
    def best_epoch_loss(self) -> float:
        """The training loss recorded at ``best_epoch`` (NaN if none): with
        ``restore_best=True``, the loss of the returned ``params`` on the training data
        (with ``metrics="batch"``: the mean batch loss of the updates that led to them)."""
        loss, epochs = self.history.get("loss"), row_index(self.history)
        if loss is None or epochs is None or self.best_epoch < 0:
            return float("nan")
        hit = np.nonzero(np.asarray(epochs) == self.best_epoch)[0]
        return float(loss[hit[0]]) if len(hit) else float("nan")

    def plot(self, ax=None, key: str = "loss", label: str | None = None):
        """Plot ``history[key]`` against epoch (log scale when positive); returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        y = self.history[key]
        x = row_index(self.history)
        x = np.arange(len(y)) if x is None else x + 1  # rows at their epochs (or steps)
        ax.plot(x, y, label=label or key)
        if np.all(y[np.isfinite(y)] > 0):
            ax.set_yscale("log")
        ax.set_xlabel(row_index_name(self.history))
        ax.set_ylabel(key)
        return ax


# ----------------------------------------------------------------------------- sweeps


class Best(NamedTuple):
    """The best configuration of a sweep: its table row, parameters and position."""

    row: Any  # pandas.Series
    params: Any
    index: int
    state: Any = None  # its model state (a loss with state), else None


class ParamGroup(NamedTuple):
    """The parameters of the configurations of one parameter shape (a shape group).

    ``rows`` are positions in the table (ascending); ``params`` is one pytree whose leaves
    have a leading axis of ``len(rows)``, in the order of ``rows``.
    """

    rows: np.ndarray
    params: Any


def _signature(params: Any) -> Any:
    """What makes two stacked parameter trees one group: tree structure, per-row leaf
    shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(params)
    return treedef, tuple((tuple(np.shape(x)[1:]), np.dtype(x.dtype)) for x in leaves)


def merge_param_groups(parts: list[tuple[np.ndarray, Any]]) -> list[ParamGroup]:
    """``(table positions, stacked params)`` pieces joined into one :class:`ParamGroup`
    per parameter shape, each sorted by position, groups ordered by their first row."""
    by_sig: dict[Any, list[tuple[np.ndarray, list[np.ndarray]]]] = {}
    for rows, params in parts:
        by_sig.setdefault(_signature(params), []).append(
            (np.asarray(rows, np.int64), [np.asarray(x) for x in jax.tree.leaves(params)]))
    groups = []
    for (treedef, shapes), pieces in by_sig.items():
        rows = np.concatenate([r for r, _ in pieces])
        order = np.argsort(rows, kind="stable")
        leaves = [np.concatenate([lv[k] for _, lv in pieces])[order]
                  for k in range(len(shapes))]
        groups.append(ParamGroup(rows[order], jax.tree.unflatten(treedef, leaves)))
    return sorted(groups, key=lambda g: int(g.rows[0]) if len(g.rows) else -1)


def _display(v: Any) -> Any:
    if v is None:
        return "full"
    if isinstance(v, str | int | float | bool | np.integer | np.floating):
        return v
    if isinstance(v, list | tuple):  # a shape axis's widths: the same before and after load
        return str([_display(x) for x in v])
    return getattr(v, "__name__", repr(v))


class SweepResult:
    """The outcome of :func:`jaxgd.sweep`.

    Attributes:
      configs: the configurations (dicts), in table order.
      table: ``pandas.DataFrame``, one row per configuration: every swept value, then
        ``init_loss`` (as :attr:`FitResult.init_loss`: with ``metrics="batch"`` the
        first update's batch loss), ``final_loss`` (the last evaluation's training loss,
        as :attr:`FitResult.final_loss`: infinite for a run found diverged by an infinite
        evaluation loss, NaN for a last row that ran no update with ``metrics="batch"``),
        ``best_loss`` (lowest
        recorded training loss), ``best_epoch`` (epoch of the best *monitored* loss,
        validation if present: the parameters ``restore_best`` returns),
        ``best_epoch_loss`` (the training loss recorded at ``best_epoch``: with
        ``restore_best=True``, the loss of the returned parameters, or with
        ``metrics="batch"`` the mean batch loss of the updates that led to them),
        ``epochs_run``,
        ``steps_run``, ``stop_reason``, ``diverged``, ``diverged_step`` (as
        :attr:`FitResult.diverged_step`: the update at which a diverged configuration was
        found diverged, -1 for one that did not diverge; absent from a run folder written
        without it) and, with validation or folds,
        ``final_val_loss`` (the last evaluation's, as ``final_loss``), ``best_val_loss``
        and ``best_epoch_val_loss``.
      history: dict of numpy arrays [configuration, evaluation] (NaN after a stop);
        ``history["epoch"]`` gives each row's epoch (``history["step"]`` its update, with
        ``steps=``; ``best_epoch`` is then a step too). The program runs in blocks of
        evaluations and stops when every configuration of a chunk has stopped, so a
        sweep whose configurations all stop early may have fewer columns than ``epochs``
        (at least the longest run's evaluations).
      params: stacked parameters, leading axis = configuration (table order). A sweep
        whose shape axes (``init``'s keyword parameters) give several parameter shapes
        has no single stacked tree: use :meth:`params_of`, ``best().params`` or
        ``param_groups``.
      param_groups: list of :class:`ParamGroup`, one per parameter shape (one for an
        ordinary sweep, holding every row).
      state: stacked model states like ``params`` (a loss with ``state``), else None.
      folds: the number of folds of a cross-validation sweep, else None.
      plans: the execution plan of each compiled group, in group order (``"vmap"`` or
        ``"map"``: sweep's ``plan=``, see :mod:`jaxgd.plans`), also in ``result.json``;
        None when unknown (a concatenation; a sweep that read back chunks or resumed
        checkpoints of an earlier call under an ``"auto"`` option, which may have run
        other plans, unless the run folder records them).
      loop: the execution plans of the groups' updates, joined by commas
        (:func:`jaxgd.spec.loop_name`); None when unknown, as ``plans``.
      plan_trials: the candidate plans measured for ``plan="auto"`` / ``loop="auto"``
        (a DataFrame, a row per candidate tried: ``group``, ``plan``, ``loop``,
        ``compile_s``, ``eval_s`` (one evaluation's seconds), ``chosen``; see
        :mod:`jaxgd.autoplan`), also in ``result.json``; None when nothing was measured.
    """

    def __init__(self, configs, table, history, params, folds=None, fingerprint=None, *,
                 param_groups=None, state=None):
        self.state = state
        self.configs = configs
        self.table = table
        self.history = history
        if param_groups is not None:
            if params is not None:
                raise ValueError("give params or param_groups, not both")
            self.param_groups = list(param_groups)
        else:
            self.params = params
        self.folds = folds
        # the execution plan of the program (jaxgd.spec.loop_name; None: unknown, e.g. a
        # folder written before plans were recorded)
        self.loop = None
        self.fingerprint = fingerprint  # of the sweep that computed it (None: unknown)
        # PBT (search=jaxgd.search.PBT): a DataFrame of each member's hyper-parameters
        # from each exploit/explore step on (config, epoch, parent, explored values)
        self.lineage = None
        # the execution plan ("vmap" or "map") of each compiled group, in group order
        # (sweep's plan=; None when unknown, e.g. a concatenation)
        self.plans = None
        # the measured candidate plans (jaxgd.autoplan; None: nothing measured)
        self.plan_trials = None

    @property
    def params(self) -> Any:
        """The stacked parameters of every configuration (one parameter shape only)."""
        if len(self.param_groups) != 1:
            shapes = [jax.tree.map(lambda a: a.shape[1:], g.params)
                      for g in self.param_groups]
            raise ValueError(
                f"this sweep's configurations have {len(self.param_groups)} parameter shapes "
                f"({shapes}): use sw.params_of(i), sw.best().params or sw.param_groups")
        return self.param_groups[0].params

    @params.setter
    def params(self, value: Any) -> None:
        self.param_groups = [ParamGroup(np.arange(len(self.table), dtype=np.int64), value)]

    def params_of(self, i: int) -> Any:
        """The parameters of the configuration in table row ``i`` (position, 0-based)."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"i={i!r} must be a table row position (int)")
        if not 0 <= i < len(self.table):
            raise ValueError(f"i={i} is not a row position in 0..{len(self.table) - 1}")
        for g in self.param_groups:
            j = int(np.searchsorted(g.rows, i))
            if j < len(g.rows) and g.rows[j] == i:
                return _index(g.params, j)
        raise ValueError(f"row {i} has no parameters (damaged result)")

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        counts = self.table["stop_reason"].value_counts().to_dict() if len(self.table) else {}
        return f"SweepResult({len(self)} configurations, stop reasons {counts})"

    # -- construction
    @classmethod
    def from_runs(cls, cfgs, idx, results, epochs, folds=None) -> SweepResult:
        pos = {c: k for k, c in enumerate(idx)}
        n = len(idx)
        first = results[0]
        # history keys may differ between groups (e.g. objective), and so may trailing
        # shapes (step_loss has one column per step of that group's batch size): take the
        # union of keys and the largest shape, NaN-padded
        shapes: dict[str, tuple[tuple[int, ...], Any]] = {}
        for res in results:
            for k, v in res["history"].items():
                old = shapes.get(k, (v.shape[1:], v.dtype))[0]
                shapes[k] = (tuple(max(a, b) for a, b in zip(old, v.shape[1:], strict=True)),
                             v.dtype)
        hist = {k: np.full((n,) + shp, np.nan, dt) for k, (shp, dt) in shapes.items()}
        param_parts = []
        scal = {k: np.zeros(n, first[k].dtype) for k in
                ("reason", "epochs_run", "evals_run", "steps_run", "best_epoch", "best_metric",
                 "init_loss", "diverged_step") if k in first}
        for r in results:
            rows = np.asarray([pos[int(c)] for c in r["config"]])
            for k, v in r["history"].items():
                hist[k][(rows,) + tuple(slice(0, m) for m in v.shape[1:])] = v
            param_parts.append((rows, r["params"]))
            for k in scal:
                scal[k][rows] = r[k]
        configs = [dict(cfgs[i]) for i in idx]
        # the result columns gathered first, joined to the axes' in one step (a DataFrame
        # grown a column at a time costs ~0.1 ms per column)
        cols: dict[str, Any] = {}
        loss = hist["loss"]
        cols["init_loss"] = scal["init_loss"]
        n_rows = scal.get("evals_run", scal["epochs_run"])
        cols["final_loss"] = _last_row(loss, n_rows)
        with np.errstate(all="ignore"):
            finite = np.where(np.isfinite(loss), loss, np.inf)
            cols["best_loss"] = np.where(np.isfinite(finite.min(1)), finite.min(1), np.nan)
        # the program's own best: of the monitored loss (validation if any), the epoch whose
        # parameters restore_best returns; equal to fit's best_epoch
        cols["best_epoch"] = scal["best_epoch"].astype(np.int64)
        # the losses of the parameters restore_best returns
        cols["best_epoch_loss"] = _at_best_epoch(loss, row_index(hist), scal["best_epoch"])
        if "val_loss" in hist:
            vl = hist["val_loss"]
            cols["final_val_loss"] = _last_row(vl, n_rows)
            with np.errstate(all="ignore"):
                fv = np.where(np.isfinite(vl), vl, np.inf)
                cols["best_val_loss"] = np.where(np.isfinite(fv.min(1)), fv.min(1), np.nan)
            cols["best_epoch_val_loss"] = _at_best_epoch(vl, row_index(hist),
                                                         scal["best_epoch"])
        _metric_columns(cols, hist, n_rows, scal["best_epoch"])
        cols["epochs_run"] = scal["epochs_run"].astype(np.int64)
        cols["steps_run"] = scal["steps_run"].astype(np.int64)
        reasons = [STOP_REASONS[int(r)] for r in scal["reason"]]
        cols["stop_reason"] = reasons
        cols["diverged"] = np.asarray([r == "diverged" for r in reasons], bool)
        if "diverged_step" in scal:
            cols["diverged_step"] = scal["diverged_step"].astype(np.int64)
        table = with_columns(axis_table(cfgs, idx), cols)
        state = None
        if first.get("state") is not None:
            s_leaves0, s_def = jax.tree.flatten(first["state"])
            s_leaves = [np.zeros((n,) + leaf.shape[1:], leaf.dtype) for leaf in s_leaves0]
            for r in results:
                rows = np.asarray([pos[int(c)] for c in r["config"]])
                for dst, src in zip(s_leaves, jax.tree.leaves(r["state"]), strict=True):
                    dst[rows] = src
            state = jax.tree.unflatten(s_def, s_leaves)
        return cls(configs, table, hist, None, folds,
                   param_groups=merge_param_groups(param_parts), state=state)

    @classmethod
    def concat(cls, parts: list[SweepResult]) -> SweepResult:
        """Join results of disjoint ``only=`` parts of one sweep (rows sorted by config)."""
        import pandas as pd

        if not parts:
            raise ValueError("concat needs at least one SweepResult")
        table = pd.concat([p.table for p in parts], ignore_index=True)
        order = np.argsort(table["config"].to_numpy(), kind="stable")
        if len(set(table["config"])) != len(table):
            raise ValueError("the parts overlap: a configuration appears twice")
        configs = [c for p in parts for c in p.configs]
        keys = list(dict.fromkeys(k for p in parts for k in p.history))
        hist = {k: _concat_padded([p.history.get(k) for p in parts],
                                  [len(p.table) for p in parts])[order] for k in keys}
        new_pos = np.empty(len(order), np.int64)
        new_pos[order] = np.arange(len(order))
        pieces, offset = [], 0
        for p in parts:
            pieces += [(new_pos[offset + g.rows], g.params) for g in p.param_groups]
            offset += len(p.table)
        state = None
        if parts[0].state is not None:
            state = jax.tree.map(lambda *xs: np.concatenate(xs)[order],
                                 *[p.state for p in parts])
        configs = [configs[i] for i in order]
        table = table.iloc[order].reset_index(drop=True)
        # the swept columns as the whole sweep has them: first-seen order over the joined
        # configurations, values and dtypes from them (a part may lack an axis)
        axes = pd.DataFrame(_axis_columns(configs))
        rest = [c for c in table.columns if c not in axes and c != "config"]
        table = pd.concat([table[["config"]], axes, table[rest]], axis=1)
        return cls(configs, table, hist, None, parts[0].folds,
                   param_groups=merge_param_groups(pieces), state=state)

    # -- queries
    def axes(self) -> list[str]:
        """The swept axes (keys of the configurations), in table order."""
        keys: list[str] = []
        for c in self.configs:
            keys += [k for k in c if k not in keys]
        return [k for k in self.table.columns if k in keys]

    def default_metric(self) -> str:
        return "final_val_loss" if "final_val_loss" in self.table else "final_loss"

    def best(self, metric: str | None = None, mode: str = "min",
             average: list[str] | tuple[str, ...] | None = None) -> Best:
        """The best non-diverged configuration by ``metric`` (a table column, or a recorded
        metric's name: ``"val_accuracy"`` means ``final_val_accuracy``).

        ``average=["seed"]`` ranks *settings* (the configurations equal but for the given
        axes) by the mean of ``metric`` over those axes; a setting with any diverged or
        non-finite member is excluded. The result's ``row`` is then the setting's row
        (``<metric>_mean``, ``_std``, ``n``), with ``params``/``state``/``index`` those of
        its best member.

        With folds (and the default metric), settings are compared by their mean
        ``final_val_loss`` over folds (:meth:`cv_table`), a setting with any diverged fold
        is excluded, and the result's ``row`` is that setting's cross-validation row
        (``final_val_loss_mean``, ``_std``, ``folds``), with ``params`` and ``index`` those
        of its first fold.
        """
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r} must be 'min' or 'max'")
        if self.folds and "fold" in self.table and metric in (None, "final_val_loss") and (
                average is None):
            return self._best_cv(mode)
        metric = metric or self.default_metric()
        if metric not in self.table and f"final_{metric}" in self.table:
            metric = f"final_{metric}"
        if metric not in self.table:
            raise ValueError(f"metric={metric!r} is not a column; columns: {list(self.table)}")
        if average is not None:
            return self._best_average(metric, mode, average)
        t = self.table[~self.table["diverged"]]
        vals = t[metric].astype(float)
        vals = vals[np.isfinite(vals)]
        if vals.empty:
            raise ValueError(f"no finite {metric!r}: every configuration diverged or has none")
        i = int(vals.idxmin() if mode == "min" else vals.idxmax())
        return self._best_at(self.table.loc[i], i)

    def _best_at(self, row, i: int) -> Best:
        state = None if self.state is None else jax.tree.map(lambda a: a[i], self.state)
        return Best(row, self.params_of(i), i, state)

    def _best_average(self, metric: str, mode: str, average) -> Best:
        if isinstance(average, str) or not all(isinstance(a, str) for a in average):
            raise TypeError(f"average={average!r} must be a list of axis names, e.g. ['seed']")
        axes = self.axes()
        unknown = [a for a in average if a not in axes]
        if unknown:
            raise ValueError(f"average={list(average)!r}: {unknown[0]!r} is not a swept axis "
                             f"(axes: {axes})")
        keys = [k for k in axes if k not in average and k != "config"]
        vals = self.table[metric].astype(float)
        t = self.table.assign(_v=vals, _bad=self.table["diverged"] | ~np.isfinite(vals))
        if not keys:  # every axis averaged: one setting
            t = t.assign(_one=0)
            keys = ["_one"]
        g = t.groupby(keys, dropna=False, sort=False)
        ok = ~g["_bad"].transform("any")
        t = t[ok]
        if t.empty:
            raise ValueError(f"no setting has a finite {metric!r} for every "
                             f"{', '.join(average)}")
        stats = t.groupby(keys, dropna=False, sort=False)["_v"].agg(["mean", "std", "count"])
        j = stats["mean"].idxmin() if mode == "min" else stats["mean"].idxmax()
        j = j if isinstance(j, tuple) else (j,)
        sel = stats.loc[j if len(j) > 1 else j[0]]
        row = pd.Series({**{k: v for k, v in zip(keys, j, strict=True) if k != "_one"},
                         f"{metric}_mean": sel["mean"], f"{metric}_std": sel["std"],
                         "n": int(sel["count"])})
        match = np.ones(len(t), bool)
        for k, v in zip(keys, j, strict=True):
            match &= (t[k] == v).to_numpy()
        members = t[match]["_v"]
        i = int(members.idxmin() if mode == "min" else members.idxmax())
        return self._best_at(row, i)

    def _setting_keys(self) -> list[str]:
        return [c for c in self.table.columns
                if any(c in cfg for cfg in self.configs) and c not in ("fold", "config")]

    def _best_cv(self, mode: str) -> Best:
        keys = self._setting_keys()
        t = self.table.assign(_bad=self.table["diverged"] | ~np.isfinite(
            self.table["final_val_loss"].astype(float)))
        ok = t.groupby(keys, dropna=False)["_bad"].transform("any") == False  # noqa: E712
        t = t[ok]
        if t.empty:
            raise ValueError("no setting has a finite validation loss on every fold")
        cv = t.groupby(keys, dropna=False)["final_val_loss"].agg(["mean", "std", "count"])
        j = cv["mean"].idxmin() if mode == "min" else cv["mean"].idxmax()
        j = j if isinstance(j, tuple) else (j,)
        row = pd.Series({**dict(zip(keys, j, strict=True)),
                         "final_val_loss_mean": cv.loc[j if len(j) > 1 else j[0], "mean"],
                         "final_val_loss_std": cv.loc[j if len(j) > 1 else j[0], "std"],
                         "folds": int(cv.loc[j if len(j) > 1 else j[0], "count"])})
        match = np.ones(len(t), bool)
        for k, v in zip(keys, j, strict=True):
            match &= (t[k] == v).to_numpy()
        i = int(t.index[match][0])
        return self._best_at(row, i)

    def cv_table(self, metric: str = "final_val_loss"):
        """Mean and standard deviation of ``metric`` over folds, one row per setting."""
        if "fold" not in self.table:
            raise ValueError("cv_table needs a sweep with folds=k")
        keys = self._setting_keys()
        g = self.table.groupby(keys, dropna=False)[metric]
        out = g.agg(["mean", "std", "count"]).reset_index()
        return out.rename(columns={"mean": f"{metric}_mean", "std": f"{metric}_std",
                                   "count": "folds"})

    # -- files
    def save(self, path, _store=None) -> None:
        """Write ``table.csv``, ``history.npz``, ``params.npz``, ``result.json`` (atomically,
        ``result.json`` last). ``path`` must be a new or empty folder, or one jaxgd wrote.

        No pickle: parameters are stored as arrays with their tree's key paths in JSON
        (see :mod:`jaxgd.store`); :func:`jaxgd.load` rebuilds them.
        """
        from .store import save_result

        if jax.process_index() != 0:
            return
        save_result(self, path, _store)

    def export_orbax(self, path, row: int | None = None, state: bool | str = True,
                     overwrite: bool = False):
        """Write one configuration's parameters (and model state) as an orbax checkpoint
        directory that ``orbax.checkpoint.StandardCheckpointer().restore(path, template)``
        reads in any process, without jaxgd (layout: :mod:`jaxgd.orbax_io`).

        Args:
          path: a new or empty folder (``overwrite=True`` replaces a non-empty one).
          row: the table row position (0-based, as :meth:`params_of`); None: the best
            configuration (:meth:`best` with its defaults).
          state: include the model state, if any, as ``{"params": ..., "state": ...}``
            (a string names the state's key, e.g. ``"batch_stats"``); False: the
            parameters' tree alone.
          overwrite: replace an existing non-empty folder.

        Returns:
          the absolute path written (a ``pathlib.Path``).
        """
        i = self.best().index if row is None else row
        params = self.params_of(i)
        st = None if self.state is None else jax.tree.map(lambda a: a[i], self.state)
        return _export_orbax(path, params, st, state, overwrite)

    def plot(self, out=None, show: bool = False) -> list[str]:
        """Draw every figure that fits this sweep; write PNGs to ``out``. Returns paths."""
        from . import plots

        return plots.plot_sweep(self, out, show=show)


def _export_orbax(path, params, state_tree, state, overwrite):
    """``export_orbax`` of a result: ``state`` True/False or the state's key."""
    from .orbax_io import export_orbax

    if not isinstance(state, bool | str):
        raise TypeError(f"state={state!r} must be True, False or the state's key (str)")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite={overwrite!r} must be True or False")
    keep = state is not False and state_tree is not None
    return export_orbax(path, params, state_tree if keep else None,
                        state_key=state if isinstance(state, str) else "state",
                        overwrite=overwrite)


def _index(tree, i: int):
    """Configuration ``i`` of stacked parameters (leaves that are not arrays, such as a
    model object's activation functions, are shared and kept as they are)."""
    return jax.tree.map(lambda a: a[i] if isinstance(a, np.ndarray | jax.Array) else a, tree)


def axis_table(cfgs, idx):
    """The first columns of a sweep's table: ``config`` (the indices ``idx`` into ``cfgs``)
    and one column per swept axis, as :meth:`SweepResult.from_runs` writes them."""
    table = pd.DataFrame(_axis_columns([dict(cfgs[i]) for i in idx]))
    table.insert(0, "config", np.asarray(idx, np.int64))
    return table


def with_columns(table, cols: dict[str, Any]):
    """``table`` with the columns ``cols`` (in their order), as setting them one by one
    would give it (a column it has is replaced in place)."""
    have = [k for k in cols if k in table.columns]
    for k in have:
        table[k] = cols[k]
    new = {k: v for k, v in cols.items() if k not in table.columns}
    if not new:
        return table
    return pd.concat([table, pd.DataFrame(new, index=table.index)], axis=1)


def _axis_columns(configs) -> dict[str, list[Any]]:
    """The swept values of each configuration, one column per axis (first-seen order)."""
    axes: list[str] = []
    for c in configs:
        axes += [k for k in c if k not in axes]
    return {a: [_display(c[a]) if a in c else np.nan for c in configs] for a in axes}


def _concat_padded(arrays: list[np.ndarray | None], rows: list[int]) -> np.ndarray:
    """The histories of parts joined along the configuration axis, NaN-padded to the
    largest trailing shape (parts may run different numbers of evaluations, and a part
    may lack a column, e.g. ``objective`` without a penalty)."""
    have = [a for a in arrays if a is not None]
    shape = tuple(max(a.shape[i] for a in have) for i in range(1, have[0].ndim))
    dtype = np.result_type(*have, np.float16) if any(
        a is None or a.shape[1:] != shape for a in arrays) else np.result_type(*have)
    out = np.full((sum(rows),) + shape, np.nan, dtype)
    at = 0
    for a, n in zip(arrays, rows, strict=True):
        if a is not None:
            out[(slice(at, at + n),) + tuple(slice(0, m) for m in a.shape[1:])] = a
        at += n
    return out


def _metric_columns(table, hist, n_rows, best_epoch) -> None:
    """``final_<m>``, ``final_val_<m>`` and their values at the best epoch
    (``best_epoch_<m>``, ``best_epoch_val_<m>``) for every metric the loss returns."""
    epochs = row_index(hist)
    for m in metric_names(hist):
        for name in (m, f"val_{m}"):
            if name not in hist:
                continue
            table[f"final_{name}"] = _last_row(hist[name], n_rows)
            table[f"best_epoch_{name}"] = _at_best_epoch(hist[name], epochs, best_epoch)


def row_index_name(hist: dict[str, np.ndarray]) -> str:
    """The history column indexing the rows: ``"step"`` (a step budget) or ``"epoch"``."""
    return index_name(hist)


def row_index(hist: dict[str, np.ndarray]) -> np.ndarray | None:
    """Each history row's 0-based epoch (or update, with a step budget); None if absent."""
    return hist.get(row_index_name(hist))


def _at_best_epoch(h: np.ndarray, epochs: np.ndarray, best_epoch) -> np.ndarray:
    """Per configuration, the value of history ``h`` at its ``best_epoch`` (NaN for -1)."""
    at = np.full(len(best_epoch), np.nan)
    for i, e in enumerate(best_epoch):
        hit = np.nonzero(epochs[i] == e)[0] if e >= 0 else []
        if len(hit):
            at[i] = h[i, hit[0]]
    return at


def _last_row(h: np.ndarray, n_rows: np.ndarray) -> np.ndarray:
    """Per configuration, its last evaluation's value of history ``h`` (row
    ``n_rows - 1``, as ``FitResult`` takes ``history[...][-1]``: a non-finite value
    included); NaN for one that ran no evaluation."""
    out = np.full(h.shape[0], np.nan)
    for i, e in enumerate(n_rows):
        if e > 0:
            out[i] = h[i, e - 1]
    return out


def load(path, like=None, state_like=None):
    """Load a saved :class:`SweepResult` (``sw.save(path)`` or ``sweep(..., out=path)``).

    Every file is checked against the checksums and fingerprint in ``result.json``; a file
    that does not match is refused with a ValueError naming it. Nothing is unpickled: a
    crafted folder can at most produce an error.

    Args:
      path: the run folder.
      like: optional template for the parameters (one configuration's parameters, e.g.
        the ``params`` given to ``sweep``): ``params`` then has its pytree type (NamedTuple,
        dataclass or any registered pytree), each leaf with a leading configuration axis.
        Its key paths and leaf shapes must match the stored ones. Without it, ``params``
        is nested dicts (dict keys and attribute names) and lists (sequence indices).
        A sweep with several parameter shapes (shape axes) needs a function
        ``like(config) -> template`` instead, called once per shape with one of its
        configurations (e.g. ``lambda c: init(key, hidden=c["hidden"])``).
      state_like: the same for the model state (a loss with ``state``), if saved.
    """
    from .store import load_result

    if path is None:
        raise TypeError("path=None: give the run folder to load (str or pathlib.Path)")
    r = load_result(path, like=like, state_like=state_like)
    table, configs = r["table"], r["configs"]
    # CSV loses the types of mixed columns (batch_size 5 / "full"): take the values from
    # configs, with the column's stored dtype (a folder written before dtypes were
    # stored: object for a column holding strings)
    for a, col in _axis_columns(configs).items():
        if a in table:
            dtype = (table[a].dtype if r["typed"]
                     else object if any(isinstance(v, str) for v in col) else None)
            table[a] = pd.Series(col, index=table.index, dtype=dtype)
    res = SweepResult(configs, table, r["history"], None, r["folds"],
                      fingerprint=r["fingerprint"],
                      param_groups=[ParamGroup(rows, params)
                                    for rows, params in r["param_groups"]],
                      state=r["state"])
    res.lineage = r["lineage"]
    res.plans = r["plans"]
    res.loop = r["loop"]
    res.plan_trials = r["plan_trials"]
    return res
