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
    method = "halving"            # "halving", "hyperband", "pbt", "median" or "optuna"
    eta = 3
    [track]                       # optional: write live to trackers (jaxgd.trackers)
    tensorboard = "runs/tb"       # also mlflow = "mlruns" (or a URI), wandb = "runs/wb"

``[data]``, ``[model]`` and a ``[loss]`` table may instead name a Python function
(``callable = "package.module:function"`` or ``"./file.py:function"``, its keyword
arguments in ``kwargs``; see :mod:`jaxgd.callables`). :func:`read_config` only checks
the name; :func:`build` imports the module (running its code) and calls the function.
Overrides (``read_config(..., overrides=["train.epochs=20"])``, the command line's
``--set``) set any key before validation; an error about a key they set names them.

Reading is two steps so that a command line can check a file before starting JAX:
:func:`read_config` (:mod:`jaxgd.config_read`) parses and validates (no JAX operation, no
import of named code), :func:`build` loads the data, builds the model and returns an
:class:`Experiment` whose :meth:`Experiment.run` calls :func:`jaxgd.sweep`. Every problem
raises :class:`ConfigError` whose one-line message names the file, the line and the dotted
key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import callables
from .config_read import (
    DEFAULT_CONFIG,
    TRAIN_KEYS,
    Config,
    ConfigError,
    Ctx,
    OptunaPlan,
    check_names,
    key_lines,
    model_registry,
    model_shape_axes,
    names_code,
    normalize_axis_value,
    parse_override,
    read_config,
    show_value,
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
    "parse_override",
    "read_config",
    "to_toml",
]


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
            kw = {**self.sweep_kwargs, **overrides}
            if isinstance(self.config.search, OptunaPlan):
                return _run_optuna(self, kw)
            return sweep(self.loss, self.params, self.data, **kw)
        except (ValueError, TypeError) as e:
            if isinstance(e, ConfigError):
                raise
            msg, where = str(e), _config_key_of(self.config, str(e))
            if where is None and (where := _code_key_of(self.config, msg)):
                table = getattr(self.config, where.split(".")[0])
                msg = f"{where} = {show_value(table['callable'])}: {msg}"
            if where is None:
                raise
            raise _cfg_err(self.config, where, msg) from e


def _config_key_of(cfg: Config, message: str) -> str | None:
    """The dotted key of the file (or override) that sets the value a sweep error message
    names."""
    import re

    search = re.match(r"search (\w+)=", message)
    m = search or re.search(r"hparams\['(\w+)'\]", message) or re.search(
        r"hparams key '(\w+)'", message) or re.search(
        r"(?:^|: )(\w+)=", message) or re.search(r"axis '(\w+)'", message)
    if m is None:
        return None
    name = m.group(1)
    lines = set(_ctx_of(cfg).lines) | set(cfg.overrides)
    keys = (f"sweep.{name}", f"sweep.random.{name}", f"train.hparams.{name}",
            f"train.{name}", f"data.{name}")
    if search:  # a value of [search], or its table when the value is a default
        keys = (f"search.{name}", "search.method", "search")
    for key in keys:
        if key in lines:  # the key itself, not its table
            return key
    return None


def _code_key_of(cfg: Config, message: str) -> str | None:
    """``loss.callable`` (or ``model.callable``, whose ``apply`` the loss calls) for an
    error of the sweep's checks about the loss, when the file names that function."""
    if not re.search(r"(?:^|: )loss\b", message):
        return None
    return next((f"{t}.callable" for t in ("loss", "model")
                 if "callable" in getattr(cfg, t)), None)


def _ctx_of(cfg: Config) -> Ctx:
    """Where the keys of ``cfg`` are: the lines of its file (none for the built-in default
    or text without a file) and its overrides."""
    text = ""
    if cfg.file not in ("<default>", "<string>"):
        try:
            text = Path(cfg.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            pass
    return Ctx(cfg.file, text, cfg.overrides)


def _cfg_err(cfg: Config, key: str, reason: str) -> ConfigError:
    return _ctx_of(cfg).err(key, reason)


def _load_code(cfg: Config) -> dict[str, Any]:
    """Import the functions that [data], [model] and [loss] name: table -> function.

    The only place a configuration imports code (each module runs as any import does)."""
    out = {}
    for table, d in (("data", cfg.data), ("model", cfg.model), ("loss", cfg.loss)):
        if "callable" not in d:
            continue
        key = f"{table}.callable"
        try:
            out[table] = callables.load(callables.parse(d["callable"], cfg.base_dir))
        except ValueError as e:
            raise _cfg_err(cfg, key, f"{key} = {show_value(d['callable'])}: {e}") from None
    return out


def _called(cfg: Config, table: str, fn) -> Any:
    """``fn(**[table].kwargs)``: kwargs the function does not take are reported there."""
    d = getattr(cfg, table)
    try:
        return callables.call(fn, d["kwargs"])
    except ValueError as e:
        raise _cfg_err(cfg, _kwarg_key(table, d["kwargs"], str(e)), f"{table}.kwargs of "
                       f"{table}.callable = {show_value(d['callable'])}: {e}") from None


def _kwarg_key(table: str, kwargs: dict[str, Any], message: str) -> str:
    """``table.kwargs.NAME`` for the keyword argument a TypeError's message names (its
    line, or the override that set it), else ``table.kwargs``."""
    m = re.search(r"argument '(\w+)'", message)
    return f"{table}.kwargs.{m.group(1)}" if m and m.group(1) in kwargs else f"{table}.kwargs"


def _load_arrays(cfg: Config, data_fn=None):
    """(x, y, task or None, name, training rows or None: the rows after them are the
    validation part a data function returned)."""
    d = cfg.data
    if data_fn is not None:
        out = _called(cfg, "data", data_fn)
        try:
            x, y, val, task = callables.data_arrays(out)
        except ValueError as e:
            raise _cfg_err(cfg, "data.callable", f"data.callable = {show_value(d['callable'])} "
                           f"{e}") from None
        n_train = None
        if val is not None:
            for k in ("val_fraction", "folds"):
                if k in d or cfg.train.get(k):
                    key = f"data.{k}" if k in d else f"train.{k}"
                    raise _cfg_err(cfg, key, f"{key} does not apply: data.callable = "
                                   f"{show_value(d['callable'])} returned a validation part")
            if val[1].shape[1:] != y.shape[1:]:
                raise _cfg_err(cfg, "data.callable", f"data.callable = {show_value(d['callable'])}"
                               f" returned y_val of shape {val[1].shape} for y of shape "
                               f"{y.shape}")
            n_train = len(x)
            x, y = np.concatenate([x, val[0]]), np.concatenate([y, val[1]])
        x, y = _typed(cfg, x, y, "data.callable", d["callable"])
        return x, y, task, d["callable"], n_train
    if "path" not in d:
        from .datasets import load

        ds = load(d["dataset"])
        return ds.x, ds.y, ds.task, ds.name, None
    p = Path(d["path"])
    x, y = _read_file(cfg, p)
    x, y = _typed(cfg, x, y, "data.dataset", str(p))
    return x, y, None, p.stem, None


def _read_file(cfg: Config, p: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a .npz or .csv file."""
    err = lambda msg: _cfg_err(cfg, "data.dataset", msg)  # noqa: E731
    try:
        if p.suffix.lower() == ".npz":
            with np.load(p) as z:
                if "x" not in z.files or "y" not in z.files:
                    raise err(f"{p.name} must hold arrays 'x' and 'y', has {z.files}")
                return np.asarray(z["x"]), np.asarray(z["y"])
        import pandas as pd

        df = pd.read_csv(p, header=None)
        if len(df) and pd.to_numeric(df.iloc[0], errors="coerce").isna().any():
            df = df.iloc[1:].reset_index(drop=True)  # row 0 holds column names
        if df.shape[1] < 2:
            raise err(f"{p.name} needs at least 2 columns (features..., y)")
        arr = df.to_numpy()
        try:
            x = arr[:, :-1].astype(np.float32)
        except ValueError as e:
            raise err(f"{p.name}: every column but the last must be numeric ({e})") from None
        y = arr[:, -1]
        try:
            y = y.astype(np.float64)
        except ValueError:
            bad = next((v for v in y if pd.isna(pd.to_numeric(v, errors="coerce"))), None)
            raise err(f"the last column of {p.name} (y) must be numeric, found {bad!r}; "
                      "encode class labels as 0, 1, ..., C-1") from None
        return x, y
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        raise err(f"cannot read {p.name}: {type(e).__name__}: {e}") from None


def _typed(cfg: Config, x, y, key: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """x as float32 (a 1-d x as one column), y as int32 labels or float32 targets."""
    if len(x) == 0:
        raise _cfg_err(cfg, key, f"{what} has no data rows (only a header, or empty)")
    x = np.asarray(x, np.float32).reshape(len(x), -1) if x.ndim == 1 else x.astype(np.float32)
    y = np.asarray(y)
    if y.dtype.kind in "iub":
        y_int = y.astype(np.int64)
    elif y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y_int = y.astype(np.int64)
    else:
        y_int = None
    task = cfg.data.get("task")
    if task in ("binary", "multiclass"):
        if y_int is None:
            raise _cfg_err(cfg, "data.task", f"data.task = \"{task}\" needs integer labels "
                           "in y")
        y = y_int.astype(np.int32)
    elif y.dtype.kind in "iub":
        y = y.astype(np.int32)
    else:
        y = y.astype(np.float32)
    return x, y


def build(cfg: Config) -> Experiment:
    """Load the data, build the model and its loss: an :class:`Experiment` ready to run.

    Features are standardised with statistics of the training part (all data when there
    is no hold-out: with ``folds``, the scaling sees every fold); ``val_fraction`` holds
    out a validation part passed as ``val_data``. The model comes from
    :data:`jaxgd.models.REGISTRY` (its task, arguments and input shape) or from the
    function ``model.callable`` names; the loss from ``model.loss`` (or the task's
    default) or ``loss.callable``. Functions that the file names are imported here.
    """
    import jax

    from . import losses

    fns = _load_code(cfg)
    err = lambda key, msg: _cfg_err(cfg, key, msg)  # noqa: E731
    x, y, task, name, n_train = _load_arrays(cfg, fns.get("data"))
    entry = None if "model" in fns else model_registry()[cfg.model["name"]]
    task = cfg.data.get("task") or task or (entry.task if entry else _task_of(y))
    outputs = None
    if entry is not None or "loss" not in fns:  # a named loss on a named model: its labels
        y, outputs = _check_labels(y, task, name, err)
    x_shape = x.shape
    x, y, tr, va, in_program = _split_and_scale(cfg, x, y, task, err, n_train)
    if entry is None:
        model, shape_all = _user_model(cfg, fns["model"])
        x = x.reshape(x_shape)
        init0 = _probe_init(cfg, model.init, shape_all)
    else:
        model, x = _make_model(cfg, entry, x, task, outputs, err)
        shape_all, init0 = model_shape_axes(cfg.model), model.init
    if "loss" in fns:
        loss, loss_name = _user_loss(cfg, fns["loss"], model.apply), cfg.loss["callable"]
    else:
        out_dim = int(np.prod(jax.eval_shape(
            model.apply, jax.eval_shape(init0, jax.random.key(0)), x[:1]).shape[1:]))
        loss_name, y = _check_loss(cfg, task, out_dim, y, err)
        loss = losses.make_loss(model.apply, loss_name)
    _check_named_code(cfg, shape_all, loss)
    train_data = (x[tr], y[tr]) if va is not None else (x, y)
    val_data = (x[va], y[va]) if va is not None else None
    kw, init_seed = _sweep_kwargs(cfg, in_program, val_data)
    shape_names = [k for k in shape_all if k in cfg.grid]
    if shape_names and entry is not None:  # a [sweep] axis over a model argument
        params = None
        kw["init"] = _shape_init(cfg, entry, int(np.prod(x.shape[1:])), outputs, shape_names,
                                 init_seed)
    elif shape_names or init_seed == "seed" and entry is None:
        params = None
        kw["init"] = _seeded_init(model.init, shape_names, init_seed)
    elif init_seed == "seed":
        params = None
        kw["init"] = model.init
    else:
        from .prepare import seed_key

        params = model.init(seed_key(init_seed, "init_seed"))
    info = {"dataset": name, "task": task, "n": len(train_data[0]),
            "features": int(np.prod(x.shape[1:])),
            "model": cfg.model.get("callable") or cfg.model["name"],
            "loss": loss_name, "val": 0 if va is None else len(va)}
    return Experiment(cfg, loss, params, train_data, kw, model, info)


def _task_of(y: np.ndarray) -> str:
    """The task of data for a named model function: class labels when y holds integers
    (the loss's default then follows the model's outputs), else regression."""
    return "multiclass" if y.dtype.kind in "iu" else "regression"


def _user_model(cfg: Config, fn) -> tuple[Any, tuple[str, ...]]:
    """(the Model that ``model.callable`` returns, its init's shape axes)."""
    from .axes import shape_axes
    from .models import Model

    out = _called(cfg, "model", fn)
    try:
        init, apply = callables.model_pair(out)
    except ValueError as e:
        raise _cfg_err(cfg, "model.callable", f"model.callable = "
                       f"{show_value(cfg.model['callable'])} {e}") from None
    return Model(init, apply), shape_axes(init)


def _probe_init(cfg: Config, init, shape_all):
    """``init(key)`` with each shape axis at its first [sweep] value (or its default)."""
    import functools
    import inspect

    sig = inspect.signature(init).parameters if shape_all else {}
    shape = {}
    for k in shape_all:
        if k in cfg.grid:
            shape[k] = cfg.grid[k][0]
        elif sig[k].default is inspect.Parameter.empty:
            raise _cfg_err(cfg, "model.callable", f"the init of model.callable = "
                           f"{show_value(cfg.model['callable'])} needs {k!r}: sweep it in "
                           f"[sweep] ({k} = [...]) or give it a default")
    return functools.partial(init, **shape)


def _seeded_init(init, names, init_seed):
    """``init(key, *, name, ...)`` for ``jaxgd.sweep``: a named model's init with the
    swept shape axes ``names`` (its other parameters keep their defaults), drawn from
    each seed's key (``init_seed = "seed"``) or from the fixed ``init_seed``."""
    import inspect

    from .prepare import seed_key

    def seeded(key, **shape):
        return init(key if init_seed == "seed" else seed_key(init_seed, "init_seed"), **shape)

    kind = inspect.Parameter
    seeded.__signature__ = inspect.Signature(
        [kind("key", kind.POSITIONAL_OR_KEYWORD), *(kind(n, kind.KEYWORD_ONLY) for n in names)])
    return seeded


def _user_loss(cfg: Config, fn, apply):
    """The loss ``loss.callable`` names, with ``loss.kwargs`` (and the model's ``apply``
    when it has a parameter of that name) bound as keyword arguments."""
    import functools
    import inspect

    from .lossform import declared

    kwargs = dict(cfg.loss["kwargs"])
    try:
        names = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        names = {}
    if "apply" in names and "apply" not in kwargs:
        kwargs["apply"] = apply
    key = "loss.kwargs" if cfg.loss["kwargs"] else "loss.callable"
    try:
        if names:
            inspect.signature(fn).bind_partial(None, None, **kwargs)
        loss = functools.partial(fn, **kwargs) if kwargs else fn
        declared(loss, "the loss")
    except TypeError as e:
        raise _cfg_err(cfg, _kwarg_key("loss", cfg.loss["kwargs"], str(e)) if key ==
                       "loss.kwargs" else key, f"{key} of loss.callable = "
                       f"{show_value(cfg.loss['callable'])}: {e}") from None
    return loss


def _check_named_code(cfg: Config, shape_all, loss) -> None:
    """With a named model or loss function, the checks of axis and hparams names that
    :func:`read_config` leaves: hyper-parameters of the optimizers, the model's shape axes,
    or any name when the loss takes ``hparams`` (its own hyper-parameters)."""
    from .lossform import declared

    if not names_code(cfg.model, cfg.loss) or declared(loss, "the loss")["hparams"]:
        return
    check_names(_ctx_of(cfg), cfg.grid, cfg.random, cfg.train, shape_all)


def _shape_init(cfg: Config, entry, features: int, outputs: int, names, init_seed):
    """``init(key, *, name=value, ...)``: the registered model built with the [sweep]'s
    shape axes (its keyword parameters, which make them shape axes of the sweep, see
    :func:`jaxgd.axes.shape_axes`), drawn from each seed's key (``init_seed =
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


def _split_and_scale(cfg: Config, x, y, task, err, n_train=None):
    """(x, y, training rows, validation rows or None, leaves standardised in the program);
    ``n_train``: the rows after the first ``n_train`` are the validation part."""
    from . import data as D

    n = len(x)
    tr = np.arange(n)
    va = None
    if n_train is not None:
        tr, va = np.arange(n_train), np.arange(n_train, n)
    elif "val_fraction" in cfg.data:
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


def _run_optuna(exp: Experiment, kw: dict[str, Any]):
    """``[search] method = "optuna"``: :func:`jaxgd.optuna_search` over the distributions of
    ``[sweep.random]``, its ``n`` trials; returns the joined :class:`jaxgd.SweepResult`."""
    from .optuna_search import optuna_search, sampler_named

    plan = exp.config.search
    space = dict(kw.pop("random"))
    n_trials = space.pop("n")
    has_val = kw.get("val_data") is not None or kw.get("folds") is not None
    objective = plan.objective or ("val_loss" if has_val else "loss")
    return optuna_search(exp.loss, exp.params, exp.data, space, n_trials=n_trials,
                         round_size=plan.round_size, objective=objective, reduce=plan.reduce,
                         sampler=sampler_named(plan.sampler, plan.seed),
                         direction=plan.direction, **kw).result


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
    if cfg.search is not None and not isinstance(cfg.search, OptunaPlan):
        kw["search"] = cfg.search
    if cfg.track:
        kw["track"] = list(cfg.track)
    return kw, init_seed


def to_toml(cfg: Config, header: str = "") -> str:
    """The configuration as TOML text: its tables as read with the overrides set, file
    paths made absolute. A named function appears by its name, never its code, and
    :func:`read_config` of the text imports nothing.

    Args:
      cfg: a configuration from :func:`read_config`.
      header: comment lines put first (each prefixed with ``# ``).
    """
    import copy

    raw = copy.deepcopy(cfg.raw)
    if "path" in cfg.data:
        raw["data"]["dataset"] = cfg.data["path"]
    for table in ("data", "model", "loss"):
        t = raw.get(table, {})
        if "callable" in t:
            spec = callables.parse(t["callable"], cfg.base_dir)
            if spec.path is not None:
                t["callable"] = f"{spec.path}:{spec.attr}"
    lines = [f"# {h}" for h in header.splitlines()]
    for table, values in raw.items():
        lines += ["", f"[{table}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_key(k: str) -> str:
    import json

    return k if re.fullmatch(r"[A-Za-z0-9_\-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    import datetime
    import json
    import math

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) \
            if not math.isfinite(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(v, datetime.date | datetime.time):
        return v.isoformat()
    raise TypeError(f"{v!r} is not a TOML value")  # pragma: no cover - tomllib's types only


def load_config(path: str | Path | None = None) -> Experiment:
    """``build(read_config(path))``: a file (or the built-in default) -> :class:`Experiment`.

    Example:
      >>> exp = load_config()          # the built-in default
      >>> exp.info["dataset"], exp.info["n"], exp.info["features"]
      ('diabetes', 442, 10)
    """
    return build(read_config(path))
