"""Experiment trackers: a sweep's runs written for TensorBoard, MLflow or Weights & Biases.

:func:`export` writes a finished sweep (a :class:`~jaxgd.SweepResult`, a
:class:`~jaxgd.FitResult` or a saved run folder) after the fact; the command line's
``jaxgd export runs/x --to tensorboard DIR`` calls it. Each configuration is one run,
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
columns). The packages are optional (``pip install "jaxgd[track]"``): a missing one
raises ModuleNotFoundError naming it and its ``pip install`` command.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._checks import require

__all__ = ["KINDS", "Run", "Writer", "export", "run_name", "runs_of", "writer"]

KINDS = ("tensorboard", "mlflow", "wandb")
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
        self._end = None

    def log_hparams(self, hparams, metrics=()):
        exp, start, end = self._summary.hparams(
            {k: _scalar(v) for k, v in hparams.items()}, {m: 0.0 for m in metrics})
        self._w.file_writer.add_summary(exp)
        self._w.file_writer.add_summary(start)
        self._end = end

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
        if self._end is not None:
            self._w.file_writer.add_summary(self._end)
        self._w.close()


class _TensorBoardWriter:
    def __init__(self, dest: Path, group: str):
        require("tensorboardX", "writing TensorBoard event files", "tensorboardX")
        self.dest = Path(dest)
        self.group = group

    def open_run(self, name):
        path = self.dest / name
        if path.exists() and any(path.iterdir()):
            raise ValueError(f"dir={str(self.dest)!r} already holds a run {name!r}: choose "
                             "another folder")
        return _TensorBoardRun(path)

    def close(self):
        pass


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


def _hparams_of(sw, i: int) -> dict[str, Any]:
    out = {}
    for a in sw.axes():
        v = sw.table[a].iloc[i]
        if isinstance(v, float | np.floating) and math.isnan(v) and a not in sw.configs[i]:
            continue  # an axis this configuration does not have
        out[a] = _scalar(v)
    return out


def _summary_of(table, i: int, skip: set[str]) -> dict[str, Any]:
    return {c: _scalar(table[c].iloc[i]) for c in table.columns if c not in skip}


def _series(hist: dict[str, np.ndarray]) -> list[str]:
    """The history columns logged per evaluation: scalars per row, but ``epoch``."""
    return [k for k, v in hist.items()
            if k not in ("epoch", "step", "step_loss") and v.ndim == 1]


def _eval_rows(hist: dict[str, np.ndarray]):
    """(epoch, {column: value}) per evaluation that ran (epoch not NaN), NaN values
    left out."""
    cols = _series(hist)
    for j, e in enumerate(hist["step" if "step" in hist else "epoch"]):
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
    width = max(4, len(str(int(res.table["config"].max())))) if len(res.table) else 4
    runs = []
    for i in range(len(res.table)):
        hp = _hparams_of(res, i)
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
    if "step_loss" in hist and np.ndim(hist["step_loss"]) == 2:
        for step, v in _step_rows(hist["step_loss"]):
            r.log_scalars({"step_loss": v}, step, axis="step")
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
