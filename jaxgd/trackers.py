"""Experiment trackers: a sweep's runs written for TensorBoard, MLflow or Weights & Biases.

:func:`export` writes a finished sweep (a :class:`~jaxgd.SweepResult`, a
:class:`~jaxgd.FitResult` or a saved run folder) after the fact; the command line's
``jaxgd export runs/x --to tensorboard DIR`` calls it. Live, ``fit(..., track=...)`` and
``sweep(..., track=...)`` (a TOML ``[track]`` table, ``jaxgd sweep --track KIND:DIR``)
write the same runs while the program trains: the :class:`Tracker` observer
(:mod:`jaxgd.observers`) gets each block's history rows from the engine, opens a
configuration's run at its first rows and writes every row once; when the run ends it
writes the summaries (rows that no block reported, none unless they came from
elsewhere, are written then), so the live runs equal the export of the saved result.
Chunks and search states read back from a run folder (a resumed sweep) are written when
read. Only process 0 of a multi-process run writes. Each configuration is one run,
grouped under the sweep:

- ``tensorboard``: ``DIR/<run name>/`` event files per configuration (tensorboardX; no
  TensorFlow), hyper-parameters in TensorBoard's HParams plugin, the stop reason as text.
  TensorBoard stores scalars as float32. ``tensorboard --logdir DIR`` shows them.
- ``mlflow``: one experiment (the sweep's name), one parent run, one child run per
  configuration (tag ``mlflow.parentRunId``); hyper-parameters as MLflow params, the stop
  reason as a tag. ``DIR`` is a folder (MLflow's file store, which MLflow 3 keeps in
  maintenance mode: jaxgd allows it for its own writes; read it with
  ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri DIR``; the writer sets that
  variable in its process while it is open and puts it back after) or a tracking URI
  (``sqlite:///runs.db``, ``http://host:5000``).
- ``wandb``: offline runs in ``DIR/wandb/`` (one group, the sweep's name; project
  ``jaxgd``), hyper-parameters as the run config, summaries in the run summary;
  ``wandb sync DIR/wandb/offline-run-*`` uploads them.

What a run holds: its hyper-parameters (the swept values); every scalar history column
(``loss``, ``val_loss``, ``grad_norm``, ``lr``, metrics, ...) as a series indexed by the
0-based epoch of each evaluation; ``step_loss`` (``record_steps=True``) indexed by the
0-based global step (epoch x steps per epoch + step); and a summary: the table's figures
(``final_loss``, ``best_loss``, ``best_epoch``, ``epochs_run``, ``steps_run``, ...) as
numbers under ``summary/`` and ``stop_reason`` as text. NaN values are not written (the
evaluations after a configuration stopped are NaN padding; a figure without a value, such
as ``best_epoch_loss`` of a run that never improved, is NaN); infinities are.

The writers share one small interface, also what a live caller (an observer called at
evaluation boundaries) uses::

    w = trackers.writer("tensorboard", "tb", group="my-sweep")
    run = w.open_run("config-0003_learning_rate=0.01")
    run.log_hparams({"learning_rate": 0.01}, metrics=["summary/final_loss"])
    run.log_scalars({"loss": 0.5, "val_loss": 0.6}, step=4)             # epoch 4
    run.log_scalars({"step_loss": 0.52}, step=41, axis="step")         # global step 41
    run.close({"final_loss": 0.5, "stop_reason": "max_epochs"})
    w.close()

``metrics`` names the summary figures to come (TensorBoard's HParams table shows those
columns; when empty, the numbers of the summary given to ``close``). The packages are
optional (``pip install "jaxgd[track]"``): a missing one
raises ModuleNotFoundError naming it and its ``pip install`` command.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._checks import require
from .history import EPOCH, STEP, STEP_LOSS, per_step
from .observers import Block, Call, Observer
from .options import TRACKERS, track_targets

__all__ = ["KINDS", "Run", "Tracker", "Writer", "export", "run_name", "runs_of", "tracking",
           "writer"]

KINDS = TRACKERS
# the module each tracker needs, what for, and its pip package
PACKAGES = {"tensorboard": ("tensorboardX", "writing TensorBoard event files", "tensorboardX"),
            "mlflow": ("mlflow.tracking", "writing MLflow runs", "mlflow-skinny"),
            "wandb": ("wandb", "writing W&B offline runs", "wandb")}
SUMMARY = "summary/"


class Run(Protocol):
    """One configuration's run in a tracker."""

    def log_hparams(self, hparams: dict[str, Any], metrics: Any = ()) -> None: ...

    def log_scalars(self, values: dict[str, float], step: int, axis: str = "epoch"
                    ) -> None: ...

    def close(self, summary: dict[str, Any]) -> None: ...


class Writer(Protocol):
    """A tracker destination: opens one run per configuration, then closes."""

    def open_run(self, name: str) -> Run: ...

    def close(self) -> None: ...


def _scalar(v: Any) -> Any:
    """A Python bool/int/float/str for a tracker (NumPy numbers converted)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool | int | float | str):
        return v
    return str(v)


# ----------------------------------------------------------------------------- TensorBoard


class _TensorBoardRun:
    def __init__(self, path: Path):
        tbx = require("tensorboardX", "writing TensorBoard event files", "tensorboardX")
        self._summary = require("tensorboardX.summary", "writing TensorBoard event files",
                                "tensorboardX")
        self._w = tbx.SummaryWriter(str(path))
        self._hparams = None

    def log_hparams(self, hparams, metrics=()):
        # the session (its hyper-parameters) now; the experiment (its metric columns) and
        # the session's end when the run closes, when the summary figures are known
        self._hparams = ({k: _scalar(v) for k, v in hparams.items()}, list(metrics))
        _, start, _ = self._summary.hparams(self._hparams[0], {})
        self._w.file_writer.add_summary(start)

    def log_scalars(self, values, step, axis="epoch"):
        for k, v in values.items():
            self._w.add_scalar(k, float(v), int(step))

    def close(self, summary):
        for k, v in summary.items():
            v = _scalar(v)
            if isinstance(v, str):
                self._w.add_text(SUMMARY + k, v, 0)
            else:
                self._w.add_scalar(SUMMARY + k, float(v), 0)
        if self._hparams is not None:
            hp, metrics = self._hparams
            metrics = metrics or [SUMMARY + k for k, v in summary.items()
                                  if not isinstance(_scalar(v), str)]
            exp, _, end = self._summary.hparams(hp, {m: 0.0 for m in metrics})
            self._w.file_writer.add_summary(exp)
            self._w.file_writer.add_summary(end)
        self._w.close()


class _TensorBoardWriter:
    def __init__(self, dest: Path, group: str):
        require("tensorboardX", "writing TensorBoard event files", "tensorboardX")
        self.dest = Path(dest)
        self.group = group

    def open_run(self, name):
        self.refuse_existing([name])
        return _TensorBoardRun(self.dest / name)

    def refuse_existing(self, names) -> None:
        _refuse_existing(self.dest, names)

    def close(self):
        pass


def _refuse_existing(dest: Path, names) -> None:
    """Refuse runs that a TensorBoard folder already holds."""
    for name in names:
        path = Path(dest) / name
        if path.exists() and any(path.iterdir()):
            raise ValueError(f"dir={str(dest)!r} already holds a run {name!r}: choose "
                             "another folder")


# ----------------------------------------------------------------------------- MLflow


def _mlflow_uri(dest: Any) -> str:
    s = str(dest)
    return s if "://" in s or s.startswith("sqlite:") else Path(s).absolute().as_uri()


class _MlflowRun:
    def __init__(self, client, run_id: str):
        self._c, self.run_id = client, run_id
        self._ent = require("mlflow.entities", "writing MLflow runs", "mlflow-skinny")

    def log_hparams(self, hparams, metrics=()):
        params = [self._ent.Param(k, str(_scalar(v))) for k, v in hparams.items()]
        for i in range(0, len(params), 100):
            self._c.log_batch(self.run_id, params=params[i:i + 100])

    def log_scalars(self, values, step, axis="epoch"):
        ts = int(time.time() * 1000)
        ms = [self._ent.Metric(k, float(v), ts, int(step)) for k, v in values.items()]
        for i in range(0, len(ms), 1000):
            self._c.log_batch(self.run_id, metrics=ms[i:i + 1000])

    def close(self, summary):
        nums = {SUMMARY + k: v for k, v in summary.items()
                if not isinstance(_scalar(v), str)}
        self.log_scalars(nums, 0)
        tags = [self._ent.RunTag(k, _scalar(v)) for k, v in summary.items()
                if isinstance(_scalar(v), str)]
        if tags:
            self._c.log_batch(self.run_id, tags=tags)
        self._c.set_terminated(self.run_id, "FINISHED")


class _MlflowWriter:
    def __init__(self, dest: Any, group: str):
        tracking = require("mlflow.tracking", "writing MLflow runs", "mlflow-skinny")
        self.uri = _mlflow_uri(dest)
        self._env = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
        if self.uri.startswith("file:"):  # MLflow 3 asks for this to use a folder
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        try:
            self._c = tracking.MlflowClient(tracking_uri=self.uri)
            if self._c.get_experiment_by_name(group) is not None:
                raise ValueError(f"dir={str(dest)!r} already holds an MLflow experiment "
                                 f"{group!r}: choose another name or store")
            self.experiment_id = self._c.create_experiment(group)
            self.parent = self._c.create_run(self.experiment_id, run_name=group,
                                             tags={"jaxgd.kind": "sweep"}).info.run_id
        except BaseException:
            self._restore_env()
            raise

    def _restore_env(self):
        if self._env is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = self._env

    def open_run(self, name):
        run = self._c.create_run(self.experiment_id, run_name=name,
                                 tags={"mlflow.parentRunId": self.parent})
        return _MlflowRun(self._c, run.info.run_id)

    def close(self):
        try:
            self._c.set_terminated(self.parent, "FINISHED")
        finally:
            self._restore_env()


# ----------------------------------------------------------------------------- W&B


class _WandbRun:
    def __init__(self, wandb, dest: Path, group: str, name: str):
        quiet = dict(silent=True, console="off", disable_git=True, disable_code=True,
                     x_save_requirements=False, x_disable_stats=True,
                     x_disable_machine_info=True)  # no console capture, git, system stats
        known = getattr(wandb.Settings, "model_fields", quiet)
        settings = wandb.Settings(**{k: v for k, v in quiet.items() if k in known})
        self._run = wandb.init(mode="offline", dir=str(dest), project="jaxgd", group=group,
                               name=name, reinit="create_new", settings=settings)
        self._defined: set[str] = set()

    def log_hparams(self, hparams, metrics=()):
        self._run.config.update({k: _scalar(v) for k, v in hparams.items()})

    def log_scalars(self, values, step, axis="epoch"):
        for k in values:
            if k not in self._defined:
                self._run.define_metric(k, step_metric=axis)
                self._defined.add(k)
        self._run.log({axis: int(step), **{k: float(v) for k, v in values.items()}})

    def close(self, summary):
        for k, v in summary.items():
            self._run.summary[k] = _scalar(v)
        self._run.finish()


class _WandbWriter:
    def __init__(self, dest: Path, group: str):
        self._wandb = require("wandb", "writing W&B offline runs", "wandb")
        self.dest = Path(dest)
        self.dest.mkdir(parents=True, exist_ok=True)
        self.group = group

    def open_run(self, name):
        return _WandbRun(self._wandb, self.dest, self.group, name)

    def close(self):
        pass


_WRITERS = {"tensorboard": _TensorBoardWriter, "mlflow": _MlflowWriter,
            "wandb": _WandbWriter}


def writer(to: str, dest: Any, group: str) -> Writer:
    """A :class:`Writer` for tracker ``to`` (one of :data:`KINDS`) writing into ``dest``
    (a folder; for MLflow also a tracking URI), its runs grouped under ``group``."""
    if to not in _WRITERS:
        raise ValueError(f"to={to!r} must be one of {list(KINDS)}")
    if isinstance(dest, bool) or not isinstance(dest, str | os.PathLike):
        raise TypeError(f"dir={dest!r} must be a folder path (str or pathlib.Path)")
    if not isinstance(group, str) or not group:
        raise ValueError(f"name={group!r} must be a non-empty string")
    return _WRITERS[to](dest, group)


# ----------------------------------------------------------------------------- records


def run_name(config: int, hparams: dict[str, Any], width: int = 4) -> str:
    """A run's name: ``config-0003_learning_rate=0.01_batch_size=32`` (characters other
    than letters, digits and ``.=-+`` replaced by ``_``; at most 200 characters)."""
    parts = [f"config-{int(config):0{width}d}"]
    parts += [f"{k}={_scalar(v)}" for k, v in hparams.items()]
    return re.sub(r"[^A-Za-z0-9.=+\-]", "_", "_".join(parts))[:200]


def _hparams_of(table, axes, config: dict[str, Any], i: int) -> dict[str, Any]:
    """Row ``i``'s swept values (``axes``: the table's axis columns; ``config``: the
    row's configuration dict)."""
    out = {}
    for a in axes:
        v = table[a].iloc[i]
        if isinstance(v, float | np.floating) and math.isnan(v) and a not in config:
            continue  # an axis this configuration does not have
        out[a] = _scalar(v)
    return out


def _width(configs) -> int:
    """The digits of the configuration numbers in run names (at least 4)."""
    return max(4, len(str(int(max(configs))))) if len(configs) else 4


def _summary_of(table, i: int, skip: set[str]) -> dict[str, Any]:
    return {c: _scalar(table[c].iloc[i]) for c in table.columns if c not in skip}


def _series(hist: dict[str, np.ndarray]) -> list[str]:
    """The history columns logged per evaluation: scalars per row, but ``epoch``."""
    return [k for k, v in hist.items()
            if k not in (EPOCH, STEP) and not per_step(k) and v.ndim == 1]


def _eval_rows(hist: dict[str, np.ndarray]):
    """(epoch, {column: value}) per evaluation that ran (epoch not NaN), NaN values
    left out."""
    cols = _series(hist)
    for j, e in enumerate(hist[STEP if STEP in hist else EPOCH]):
        if not np.isfinite(e):
            continue
        vals = {k: hist[k][j] for k in cols if not np.isnan(hist[k][j])}
        yield int(e), vals


def _step_rows(step_loss: np.ndarray):
    """(global step, value) of one configuration's ``step_loss`` [epoch, step]: the steps
    per epoch are the most recorded in any epoch (every epoch but the last is complete)."""
    ran = ~np.isnan(step_loss)
    if not ran.any():
        return
    per_epoch = int(max(np.nonzero(r)[0][-1] + 1 for r in ran if r.any()))
    for e, k in zip(*np.nonzero(ran), strict=True):
        yield int(e) * per_epoch + int(k), step_loss[e, k]


def runs_of(res) -> list[dict[str, Any]]:
    """The runs of a result as ``{"name", "hparams", "history", "summary"}`` (history: one
    configuration's columns), in table order."""
    from .results import FitResult

    if isinstance(res, FitResult):
        summary = {"init_loss": res.init_loss, "final_loss": res.final_loss,
                   "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                   "steps_run": res.steps_run, "stop_reason": res.stop_reason}
        return [{"name": "fit", "hparams": {}, "history": res.history, "summary": summary}]
    axes = set(res.axes()) | {"config"}
    width = _width(res.table["config"])
    runs = []
    for i in range(len(res.table)):
        hp = _hparams_of(res.table, res.axes(), res.configs[i], i)
        hist = {k: v[i] for k, v in res.history.items()}
        runs.append({"name": run_name(res.table["config"].iloc[i], hp, width), "hparams": hp,
                     "history": hist, "summary": _summary_of(res.table, i, axes)})
    return runs


def write_run(w: Writer, run: dict[str, Any]) -> None:
    """One run (a :func:`runs_of` record) through a writer's interface."""
    r = w.open_run(run["name"])
    summary = {k: v for k, v in run["summary"].items()
               if not (isinstance(v, float) and math.isnan(v))}
    metrics = [SUMMARY + k for k, v in summary.items() if not isinstance(_scalar(v), str)]
    r.log_hparams(run["hparams"], metrics=metrics)
    hist = run["history"]
    for epoch, vals in _eval_rows(hist):
        if vals:
            r.log_scalars(vals, epoch)
    if STEP_LOSS in hist and np.ndim(hist[STEP_LOSS]) == 2:
        for step, v in _step_rows(hist[STEP_LOSS]):
            r.log_scalars({STEP_LOSS: v}, step, axis="step")
    r.close(summary)


def export(source: Any, to: str, dir: Any, *, name: str | None = None) -> list[str]:
    """Write a finished sweep (or fit) into a tracker, one run per configuration.

    Args:
      source: a :class:`~jaxgd.SweepResult`, a :class:`~jaxgd.FitResult` or a run folder
        (loaded with :func:`jaxgd.load`).
      to: ``"tensorboard"``, ``"mlflow"`` or ``"wandb"`` (see the module docstring).
      dir: where to write (a folder; for MLflow also a tracking URI).
      name: the sweep's name (the MLflow experiment, the W&B group); default: the run
        folder's name, else ``"jaxgd-sweep"`` (``"jaxgd-fit"`` for a FitResult).

    Returns:
      the names of the runs written, in table order.
    """
    from .results import FitResult, SweepResult, load

    if to not in KINDS:
        raise ValueError(f"to={to!r} must be one of {list(KINDS)}")
    if isinstance(source, str | os.PathLike) and not isinstance(source, bool):
        default = Path(source).absolute().name
        source = load(source)
    elif isinstance(source, SweepResult | FitResult):
        default = "jaxgd-fit" if isinstance(source, FitResult) else "jaxgd-sweep"
    else:
        raise TypeError(f"source={type(source).__name__} must be a SweepResult, a FitResult "
                        "or a run folder path")
    runs = runs_of(source)
    w = writer(to, dir, name or default)
    try:
        for run in runs:
            write_run(w, run)
    finally:
        w.close()
    return [r["name"] for r in runs]


# ----------------------------------------------------------------------------- live


def planned_runs(cfgs, idx) -> dict[int, tuple[str, dict[str, Any]]]:
    """Per configuration index of a sweep (``idx`` into ``cfgs``): its run's name and
    hyper-parameters, as :func:`runs_of` gives them from the finished sweep."""
    from .results import axis_table

    table = axis_table(cfgs, idx)
    axes = [c for c in table.columns if c != "config"]
    width = _width(table["config"])
    out = {}
    for i, c in enumerate(idx):
        hp = _hparams_of(table, axes, cfgs[c], i)
        out[int(c)] = (run_name(c, hp, width), hp)
    return out


class _Live:
    """One configuration's open runs (one per writer) and what they were given."""

    def __init__(self, runs: list[Run]):
        self.runs = runs
        self.epochs: set[int] = set()  # evaluations logged (by epoch)
        self.steps: set[int] = set()  # step_loss values logged (by global step)

    def log(self, values: dict[str, Any], step: int, axis: str = "epoch") -> None:
        for r in self.runs:
            r.log_scalars(values, step, axis=axis)

    def history(self, hist: dict[str, np.ndarray], per_epoch: int | None = None,
                first_epoch: int = 0) -> None:
        """One configuration's history rows (columns by name, [rows, ...]) not logged
        yet: evaluations by epoch; ``step_loss`` [epochs, steps] from epoch
        ``first_epoch`` by global step (``per_epoch`` steps per epoch; None: as
        :func:`_step_rows` counts them)."""
        for epoch, vals in _eval_rows(hist):
            if epoch not in self.epochs:
                self.epochs.add(epoch)
                if vals:
                    self.log(vals, epoch)
        sl = hist.get(STEP_LOSS)
        if sl is None or np.ndim(sl) != 2:
            return
        if per_epoch is None:
            rows = _step_rows(sl)
        else:
            rows = ((int(first_epoch + e) * per_epoch + int(k), sl[e, k])
                    for e, k in zip(*np.nonzero(~np.isnan(sl)), strict=True))
        for step, v in rows:
            if step not in self.steps:
                self.steps.add(step)
                self.log({STEP_LOSS: v}, step, axis="step")


class Tracker(Observer):
    """The live tracker: an observer that writes each configuration's run to tracker
    writers as the engine reports its history rows, block by block (see
    :func:`tracking`, which builds it for ``fit``/``sweep``'s ``track=``).

    A configuration's run is opened at its first rows (named and given its
    hyper-parameters as :func:`runs_of` does), each row is written once, and
    :meth:`finish` writes what no block reported (nothing, unless rows came from
    elsewhere) and closes every run with its summary, so that the runs equal what
    :func:`export` writes from the finished result.

    Args:
      writers: the :class:`Writer` objects to write to.
      runs: per configuration index, its run name and hyper-parameters
        (:func:`planned_runs`).
    """

    def __init__(self, writers: list[Writer], runs: dict[int, tuple[str, dict[str, Any]]]):
        self.writers, self.planned = writers, runs
        self.live: dict[int, _Live] = {}
        self.closed = False

    def open(self, config: int) -> _Live:
        """The configuration's runs, opened (with its hyper-parameters) on first use."""
        if config not in self.live:
            name, hp = self.planned[config]
            runs = []
            for w in self.writers:
                r = w.open_run(name)
                runs.append(r)
                r.log_hparams(hp)
            self.live[config] = _Live(runs)
        return self.live[config]

    def block_rows(self, call: Call, block: Block) -> None:
        from .spec import evals_of

        K = evals_of(call.spec)[0]
        for j, c in enumerate(block.configs):
            hist = {k: v[j] for k, v in block.history.items()}
            sl = hist.get(STEP_LOSS)
            per = None if call.cached or sl is None or np.ndim(sl) != 2 else sl.shape[1]
            self.open(int(c)).history(hist, per, block.first * K)

    def finish(self, res) -> None:
        """Write what no block reported and close every run with its summary (the
        finished :class:`~jaxgd.SweepResult` or :class:`~jaxgd.FitResult`)."""
        from .results import FitResult

        configs = [0] if isinstance(res, FitResult) else list(res.table["config"])
        for c, run in zip(configs, runs_of(res), strict=True):
            summary = {k: v for k, v in run["summary"].items()
                       if not (isinstance(v, float) and math.isnan(v))}
            c = int(c)
            if c not in self.live:  # never reported: open it as export would
                self.planned.setdefault(c, (run["name"], run["hparams"]))
                self.open(c)
            live = self.live.pop(c)
            live.history(run["history"])
            for r in live.runs:
                r.close(summary)
        self.close()

    def close(self) -> None:
        """Close the runs still open (a run that ended in an error: no summary) and the
        writers."""
        if self.closed:
            return
        self.closed = True
        try:
            for live in self.live.values():
                for r in live.runs:
                    r.close({})
        finally:
            self.live.clear()
            for w in self.writers:
                w.close()


def check(track: Any) -> None:
    """``track=`` checked (:func:`jaxgd.options.track_targets`) and the packages its
    trackers need imported: a missing one raises ModuleNotFoundError naming its ``pip
    install`` command (before anything runs)."""
    check_packages(track_targets("track", track))


def check_packages(targets) -> None:
    """Import the packages the trackers of ``targets`` (:func:`jaxgd.options.track_targets`)
    need; a missing one raises ModuleNotFoundError naming its ``pip install`` command."""
    for t in targets:
        if isinstance(t, tuple):
            require(*PACKAGES[t[0]])


@contextlib.contextmanager
def tracking(track: Any, group: str,
             runs: Callable[[], dict[int, tuple[str, dict[str, Any]]]]):
    """The live :class:`Tracker` of a ``track=`` option as a list of observers (empty
    without ``track`` or outside process 0: one process writes in a multi-process run);
    its writers are closed on the way out (on an error too). ``runs()`` gives the runs'
    names and hyper-parameters (:func:`planned_runs`), called only when there is a
    tracker."""
    import jax

    targets = track_targets("track", track)
    check_packages(targets)
    if not targets or jax.process_index() != 0:
        yield []
        return
    runs = runs()
    names = [name for name, _ in runs.values()]
    for t in targets:  # a run a folder already holds: refused before anything opens
        if isinstance(t, tuple) and t[0] == "tensorboard":
            _refuse_existing(Path(t[1]), names)
    writers: list[Writer] = []
    try:
        for t in targets:
            writers.append(writer(t[0], t[1], group) if isinstance(t, tuple) else t)
    except BaseException:
        for w in writers:
            w.close()
        raise
    tracker = Tracker(writers, runs)
    try:
        yield [tracker]
    finally:
        tracker.close()
