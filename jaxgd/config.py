"""TOML sweep configurations: a file -> the arguments of :func:`jaxgd.sweep`.

A configuration has four tables (every key is documented with examples in
``experiments/configs/README.md``)::

    [data]                        # what to train on
    dataset = "diabetes"          # built-in name, or a path to .npz (x, y) / .csv (last column y)
    standardize = true            # features scaled with statistics of the training part
    [model]
    name = "linear"               # a model of jaxgd.models.REGISTRY: linear, mlp, rnn, ...
    loss = "mse"                  # default by task: mse / bce / softmax_ce
    [train]                       # the base setting (keywords of jaxgd.fit)
    optimizer = "sgd"
    epochs = 10
    batch_size = [8, 32, "full"]  # list-valued entries become sweep axes
    [sweep]                       # grid axes: lists, scalars, {logspace/linspace/geomspace/range}
    learning_rate = { logspace = [-3, 0], num = 16 }
    seed = [0, 1, 2]
    [sweep.random]                # random search, crossed with the grid
    n = 32
    l2 = ["loguniform", 1e-5, 1e-1]
    [search]                      # optional: adaptive search (jaxgd.search)
    method = "halving"            # "halving", "hyperband", "pbt" or "median"
    eta = 3

Reading is two steps so that a command line can check a file before starting JAX:
:func:`read_config` parses and validates (no JAX operation), :func:`build` loads the
data, builds the model and returns an :class:`Experiment` whose :meth:`Experiment.run`
calls :func:`jaxgd.sweep`. Every problem raises :class:`ConfigError` whose one-line
message names the file, the line and the dotted key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config_read import (
    DEFAULT_CONFIG,
    TRAIN_KEYS,
    Config,
    ConfigError,
    Ctx,
    key_lines,
    model_registry,
    model_shape_axes,
    normalize_axis_value,
    read_config,
)

__all__ = [
    "DEFAULT_CONFIG",
    "TRAIN_KEYS",
    "key_lines",
    "Config",
    "ConfigError",
    "Experiment",
    "build",
    "load_config",
    "read_config",
]

# ----------------------------------------------------------------------------- lines


# ----------------------------------------------------------------------------- reading


# ----------------------------------------------------------------------------- building


@dataclass
class Experiment:
    """A configuration made concrete: loss, initial parameters, data and sweep keywords.

    ``run(**overrides)`` is ``jaxgd.sweep(loss, params, data, **sweep_kwargs, **overrides)``.
    """

    config: Config
    loss: Any
    params: Any
    data: Any
    sweep_kwargs: dict[str, Any]
    model: Any
    info: dict[str, Any]

    def run(self, **overrides: Any):
        """Run the sweep. A value that ``jaxgd.sweep`` refuses (checked before anything is
        compiled) is reported as a :class:`ConfigError` at the line that sets it."""
        from .sweep import sweep

        try:
            return sweep(self.loss, self.params, self.data,
                         **{**self.sweep_kwargs, **overrides})
        except (ValueError, TypeError) as e:
            if isinstance(e, ConfigError):
                raise
            where = _config_key_of(self.config, str(e))
            if where is None:
                raise
            raise ConfigError(self.config.file, where, _line(self.config, where),
                              str(e)) from e


def _config_key_of(cfg: Config, message: str) -> str | None:
    """The dotted key of the file that sets the value a sweep error message names."""

    search = re.match(r"search (\w+)=", message)
    m = search or re.search(r"hparams\['(\w+)'\]", message) or re.search(
        r"hparams key '(\w+)'", message) or re.search(
        r"(?:^|: )(\w+)=", message) or re.search(r"axis '(\w+)'", message)
    if m is None or cfg.file in ("<default>", "<string>"):
        return None
    name = m.group(1)
    try:
        lines = key_lines(Path(cfg.file).read_text(encoding="utf-8"))
    except OSError:
        return None
    keys = (f"sweep.{name}", f"sweep.random.{name}", f"train.hparams.{name}",
            f"train.{name}", f"data.{name}")
    if search:  # a value of [search], or its table when the value is a default
        keys = (f"search.{name}", "search.method", "search")
    for key in keys:
        if key in lines:  # the key itself, not its table
            return key
    return None


def _load_arrays(cfg: Config) -> tuple[np.ndarray, np.ndarray, str | None, str]:
    """(x, y, task or None, name)."""
    d = cfg.data
    ctx_key = "data.dataset"
    if "path" not in d:
        from .datasets import load

        ds = load(d["dataset"])
        return ds.x, ds.y, ds.task, ds.name
    p = Path(d["path"])
    try:
        if p.suffix.lower() == ".npz":
            with np.load(p) as z:
                if "x" not in z.files or "y" not in z.files:
                    raise ConfigError(cfg.file, ctx_key, _line(cfg, ctx_key),
                                      f"{p.name} must hold arrays 'x' and 'y', has {z.files}")
                x, y = np.asarray(z["x"]), np.asarray(z["y"])
        else:
            import pandas as pd

            df = pd.read_csv(p, header=None)
            if len(df) and pd.to_numeric(df.iloc[0], errors="coerce").isna().any():
                df = df.iloc[1:].reset_index(drop=True)  # row 0 holds column names
            if df.shape[1] < 2:
                raise ConfigError(cfg.file, ctx_key, _line(cfg, ctx_key),
                                  f"{p.name} needs at least 2 columns (features..., y)")
            arr = df.to_numpy()
            try:
                x = arr[:, :-1].astype(np.float32)
            except ValueError as e:
                raise ConfigError(cfg.file, ctx_key, _line(cfg, ctx_key),
                                  f"{p.name}: every column but the last must be numeric "
                                  f"({e})") from None
            y = arr[:, -1]
            try:
                y = y.astype(np.float64)
            except ValueError:
                bad = next((v for v in y if pd.isna(pd.to_numeric(v, errors="coerce"))), None)
                raise ConfigError(cfg.file, ctx_key, _line(cfg, ctx_key),
                                  f"the last column of {p.name} (y) must be numeric, found "
                                  f"{bad!r}; encode class labels as 0, 1, ..., C-1") from None
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConfigError(cfg.file, ctx_key, _line(cfg, ctx_key),
                          f"cannot read {p.name}: {type(e).__name__}: {e}") from None
    if len(x) == 0:
        raise ConfigError(cfg.file, ctx_key, _line(cfg, ctx_key),
                          f"{p} has no data rows (only a header, or empty)")
    x = np.asarray(x, np.float32).reshape(len(x), -1) if x.ndim == 1 else x.astype(np.float32)
    y = np.asarray(y)
    if y.dtype.kind in "iub":
        y_int = y.astype(np.int64)
    elif y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y_int = y.astype(np.int64)
    else:
        y_int = None
    task = d.get("task")
    if task in ("binary", "multiclass"):
        if y_int is None:
            raise ConfigError(cfg.file, "data.task", _line(cfg, "data.task"),
                              f"data.task = \"{task}\" needs integer labels in y")
        y = y_int.astype(np.int32)
    elif y.dtype.kind in "iub":
        y = y.astype(np.int32)
    else:
        y = y.astype(np.float32)
    return x, y, None, p.stem


def _line(cfg: Config, key: str) -> int | None:
    if cfg.file in ("<default>", "<string>"):
        return None
    try:
        text = Path(cfg.file).read_text(encoding="utf-8")
    except OSError:
        return None
    return Ctx(cfg.file, text).line(key)


def build(cfg: Config) -> Experiment:
    """Load the data, build the model and its loss: an :class:`Experiment` ready to run.

    Features are standardised with statistics of the training part (all data when there
    is no hold-out: with ``folds``, the scaling sees every fold); ``val_fraction`` holds
    out a validation part passed as ``val_data``. The model comes from
    :data:`jaxgd.models.REGISTRY`: its task, arguments and input shape.
    """
    import jax

    from . import losses

    x, y, task, name = _load_arrays(cfg)
    entry = model_registry()[cfg.model["name"]]
    err = lambda key, msg: ConfigError(cfg.file, key, _line(cfg, key), msg)  # noqa: E731
    task = task or cfg.data.get("task") or entry.task
    y, outputs = _check_labels(y, task, name, err)
    x, y, tr, va, in_program = _split_and_scale(cfg, x, y, task, err)
    model, x = _make_model(cfg, entry, x, task, outputs, err)
    out_dim = int(np.prod(jax.eval_shape(
        model.apply, jax.eval_shape(model.init, jax.random.key(0)), x[:1]).shape[1:]))
    loss_name, y = _check_loss(cfg, task, out_dim, y, err)
    loss = losses.make_loss(model.apply, loss_name)
    train_data = (x[tr], y[tr]) if va is not None else (x, y)
    val_data = (x[va], y[va]) if va is not None else None
    kw, init_seed = _sweep_kwargs(cfg, in_program, val_data)
    shape_names = [k for k in model_shape_axes(cfg.model) if k in cfg.grid]
    if shape_names:  # a [sweep] axis over a model argument: one init per shape
        params = None
        kw["init"] = _shape_init(cfg, entry, int(np.prod(x.shape[1:])), outputs, shape_names,
                                 init_seed)
    elif init_seed == "seed":
        params = None
        kw["init"] = model.init
    else:
        from .prepare import seed_key

        params = model.init(seed_key(init_seed, "init_seed"))
    info = {"dataset": name, "task": task, "n": len(train_data[0]),
            "features": int(np.prod(x.shape[1:])), "model": cfg.model["name"],
            "loss": loss_name, "val": 0 if va is None else len(va)}
    return Experiment(cfg, loss, params, train_data, kw, model, info)


def _shape_init(cfg: Config, entry, features: int, outputs: int, names, init_seed):
    """``init(key, *, name=value, ...)``: the registered model built with the [sweep]'s
    shape axes (its keyword parameters, which make them shape axes of the sweep, see
    :func:`jaxgd.sweep.shape_axes`), drawn from each seed's key (``init_seed =
    "seed"``) or from the fixed ``init_seed``."""
    import inspect

    from .prepare import seed_key

    base = {k: v for k, v in cfg.model.items() if k in entry.args}

    def init(key, **shape):
        k = key if init_seed == "seed" else seed_key(init_seed, "init_seed")
        return entry.build(features, outputs, **{**base, **shape}).init(k)

    kind = inspect.Parameter
    init.__signature__ = inspect.Signature(
        [kind("key", kind.POSITIONAL_OR_KEYWORD), *(kind(n, kind.KEYWORD_ONLY) for n in names)])
    return init


def _check_labels(y, task, name, err):
    """(labels, the data's outputs: target columns, 1 or the number of classes)."""
    if task != "regression" and y.dtype.kind not in "iu":
        raise err("data.task", f"task {task!r} needs integer labels; {name} has float targets")
    if task == "regression":
        return y, (y.shape[1] if y.ndim == 2 else 1)
    found = np.unique(y)
    shown = ", ".join(str(v) for v in found[:10]) + (", ..." if len(found) > 10 else "")
    if task == "binary" and not set(found.tolist()) <= {0, 1}:
        raise err("data.dataset", f"binary labels must be 0 or 1; {name} has labels "
                                  f"{{{shown}}}")
    if task == "multiclass" and found.tolist() != list(range(len(found))):
        raise err("data.dataset", f"multiclass labels must be 0, 1, ..., C-1; {name} has "
                                  f"labels {{{shown}}}")
    return y, (1 if task == "binary" else int(y.max()) + 1)


def _split_and_scale(cfg: Config, x, y, task, err):
    """(x, y, training rows, validation rows or None, leaves standardised in the program)."""
    from . import data as D

    n = len(x)
    tr = np.arange(n)
    va = None
    if "val_fraction" in cfg.data:
        tr, va = D.train_val_split(n, cfg.data["val_fraction"], cfg.data["split_seed"])
    x = x.reshape(n, -1)
    if cfg.data["standardize_target"] and task != "regression":
        raise err("data.standardize_target",
                  f"data.standardize_target applies to regression, not {task!r} labels")
    # with folds every fold is scaled inside the program with its own training rows'
    # statistics; otherwise the training split's statistics are applied here
    in_program: list[int] = []
    if cfg.train.get("folds"):
        in_program = [i for i, on in ((0, cfg.data["standardize"]),
                                      (1, cfg.data["standardize_target"])) if on]
        y = y.astype(np.float32) if 1 in in_program else y
    else:
        if cfg.data["standardize"]:
            s = D.fit_standardizer(x[tr])
            x = np.asarray(D.standardize(x, s), np.float32)
        if cfg.data["standardize_target"]:
            mu, sd = y[tr].mean(0), y[tr].std(0)
            y = ((y - mu) / np.where(sd == 0, 1, sd)).astype(np.float32)
    return x, y, tr, va, in_program


def _make_model(cfg: Config, entry, x, task, outputs, err):
    """(the registered model built for this data, x reshaped to its input shape)."""
    mname = cfg.model["name"]
    if task not in entry.tasks:
        need = "binary" if entry.tasks == ("binary",) else (
            "class" if "regression" not in entry.tasks else " or ".join(entry.tasks))
        raise err("model.name", f"model {mname!r} needs {need} labels; the data is {task}")
    args = {k: v for k, v in cfg.model.items() if k in entry.args}
    d = x.shape[1]
    try:
        shape = entry.input_shape(d, **args)
        model = entry.build(d, outputs, **args)
    except ValueError as e:
        raise err("model", f"[model]: {e}") from None
    return model, x.reshape((len(x),) + shape)


def _check_loss(cfg: Config, task, out_dim, y, err):
    """(the loss name, labels in its dtype): the file's, or the task's default."""
    loss_name = cfg.model.get("loss") or (
        "mse" if task == "regression" else ("bce" if out_dim == 1 else "softmax_ce"))
    if loss_name in ("mse", "half_mse") and task != "regression":
        raise err("model.loss", f"model.loss = \"{loss_name}\" is for regression; the data "
                  f"is {task}: use \"bce\" (binary) or \"softmax_ce\" (multiclass)")
    if loss_name in ("bce", "binary_cross_entropy"):
        if out_dim != 1 or task == "regression":
            raise err("model.loss", f"loss {loss_name!r} needs binary labels and one output")
        y = y.astype(np.float32)
    if loss_name in ("softmax_ce", "softmax_cross_entropy") and (
            task == "regression" or out_dim < 2):
        raise err("model.loss", f"loss {loss_name!r} needs class labels and a softmax/mlp/cnn "
                                "model with one output per class")
    return loss_name, y


def _sweep_kwargs(cfg: Config, in_program, val_data) -> tuple[dict[str, Any], Any]:
    """(the keywords of jaxgd.sweep from [train] and [sweep], the init seed)."""
    t = dict(cfg.train)
    init_seed = t.pop("init_seed", 0)
    if t.get("batch_size") == "full":
        t["batch_size"] = None
    kw: dict[str, Any] = {k: v for k, v in t.items() if k != "hparams"}
    kw["hparams"] = dict(t.get("hparams", {}))
    if in_program:
        kw["standardize"] = tuple(in_program)
    if cfg.grid:
        kw["grid"] = {k: [normalize_axis_value(k, x) for x in v] for k, v in cfg.grid.items()}
    if cfg.random:
        kw["random"] = dict(cfg.random)
    if val_data is not None:
        kw["val_data"] = val_data
    if cfg.search is not None:
        kw["search"] = cfg.search
    return kw, init_seed


def load_config(path: str | Path | None = None) -> Experiment:
    """``build(read_config(path))``: a file (or the built-in default) -> :class:`Experiment`.

    Example:
      >>> exp = load_config()          # the built-in default
      >>> exp.info["dataset"], exp.info["n"], exp.info["features"]
      ('diabetes', 442, 10)
    """
    return build(read_config(path))
