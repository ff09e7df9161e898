"""Reading a TOML sweep configuration: parse and validate a file (no JAX operation).

:func:`read_config` gives a :class:`Config` (the file's tables, checked, with the line of
every key) or raises :class:`ConfigError` naming the file, the line and the dotted key;
:mod:`jaxgd.config` builds and runs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import callables, options
from ._checks import closest, is_int

DEFAULT_CONFIG = """\
# The built-in default of `jaxgd sweep`: learning rate x batch size x seed, plain SGD
# on scikit-learn's diabetes data (442 x 10), standardised, linear model, MSE.
[data]
dataset = "diabetes"
standardize = true
standardize_target = true

[model]
name = "linear"
loss = "mse"

[train]
optimizer = "sgd"
epochs = 10
batch_size = [8, 32, "full"]

[sweep]
learning_rate = { logspace = [-3, 0.5], num = 15 }
seed = [0, 1, 2]
"""

DATA_KEYS = ("dataset", "standardize", "standardize_target", "val_fraction", "split_seed",
             "task", "callable", "kwargs")
# the keys that name a function, and its keyword arguments ([data], [model], [loss])
CODE_KEYS = ("callable", "kwargs")
# [train]: the options a file may hold (jaxgd.options), the hyper-parameters and the
# seed of the initial parameters
TRAIN_KEYS = (*(o.name for o in options.file_options()), "init_seed")
# [model]: the name, the loss, and the arguments of the registered models (models.REGISTRY)
SECTIONS = {"data": DATA_KEYS, "model": ("name", "loss"), "loss": CODE_KEYS,
            "train": TRAIN_KEYS, "sweep": (), "search": (), "track": options.TRACKERS}
# [train] entries that become sweep axes when given a list
TRAIN_AXES = options.file_axes()
TASKS = ("regression", "binary", "multiclass")
SPACES = ("logspace", "linspace", "geomspace", "range")


def model_registry():
    from .models import REGISTRY

    return REGISTRY


class ConfigError(ValueError):
    """A bad configuration file: ``str(e)`` is ``FILE:LINE: message`` on one line.

    When an override set the key, ``str(e)`` is ``--set KEY=VALUE: message``.

    Attributes:
      file: the file name as given (``"<default>"`` for the built-in default).
      key: the dotted key the problem is about (``"train.epochs"``), or None.
      line: its 1-based line in the file, or None when it cannot be found.
      reason: the message without the location.
      override: the ``KEY=VALUE`` override that set the key, or None.
    """

    def __init__(self, file: str, key: str | None, line: int | None, reason: str,
                 override: str | None = None):
        self.file, self.key, self.line, self.reason = file, key, line, reason
        self.override = override
        where = f"--set {override}" if override else f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {reason}".replace("\n", " "))


# ----------------------------------------------------------------------------- lines


def _norm_key(k: str) -> str:
    return ".".join(p.strip().strip("\"'") for p in k.split("."))


def key_lines(text: str) -> dict[str, int]:
    """Map dotted key -> the first line (1-based) that defines it, found in the text.

    Table headers (``[sweep.random]``), ``key = value`` lines and keys of inline tables
    (``lr = { logspace = [...] }``) are recognised; good enough to point at a line.
    """
    out: dict[str, int] = {}
    table = ""
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", line)
        if m:
            table = _norm_key(m.group(1))
            out.setdefault(table, no)
            continue
        m = re.match(r"^([A-Za-z0-9_\-.\"' ]+?)\s*=", line)
        if m:
            full = f"{table}.{_norm_key(m.group(1))}" if table else _norm_key(m.group(1))
            out.setdefault(full, no)
            for mm in re.finditer(r"[{,]\s*([A-Za-z0-9_\-]+)\s*=", line[m.end():]):
                out.setdefault(f"{full}.{mm.group(1)}", no)
    return out


# ----------------------------------------------------------------------------- reading


@dataclass
class Config:
    """A validated configuration (plain Python values; nothing loaded yet)."""

    file: str
    data: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    grid: dict[str, list[Any]]
    random: dict[str, Any] | None
    base_dir: Path = field(default_factory=Path.cwd)
    search: Any = None  # a jaxgd.search.Halving / PBT from [search], or None
    loss: dict[str, Any] = field(default_factory=dict)  # [loss]: a named loss function
    text: str = ""  # the TOML text read
    overrides: dict[str, str] = field(default_factory=dict)  # dotted key -> "KEY=VALUE"
    raw: dict[str, Any] = field(default_factory=dict)  # the tables as read, overrides set
    # [track]: "KIND:DIR" per tracker written live (jaxgd.sweep's track=)
    track: list[str] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return "default" if self.file == "<default>" else Path(self.file).stem


class Ctx:
    def __init__(self, file: str, text: str, overrides: dict[str, str] | None = None):
        self.file = file
        self.lines = key_lines(text)
        self.overrides = dict(overrides or {})

    def line(self, key: str) -> int | None:
        k = key
        while k:
            if k in self.lines:
                return self.lines[k]
            k = k.rsplit(".", 1)[0] if "." in k else ""
        return None

    def override(self, key: str) -> str | None:
        """The override that set ``key`` or a table above it; else, for a key (or table)
        that the file does not hold, the first override that set a key inside it."""
        k, in_file = key, False
        while k:
            if k in self.overrides:
                return self.overrides[k]
            in_file = in_file or k in self.lines
            if not in_file:
                inside = [v for o, v in self.overrides.items() if o.startswith(k + ".")]
                if inside:
                    return inside[0]
            k = k.rsplit(".", 1)[0] if "." in k else ""
        return None

    def err(self, key: str, reason: str) -> ConfigError:
        over = self.override(key)
        return ConfigError(self.file, key, None if over else self.line(key), reason, over)

    def unknown(self, table: str, key: str, valid) -> ConfigError:
        close = closest(key, valid)
        hint = f" (did you mean {close!r}?)" if close else f"; valid keys: {sorted(valid)}"
        return self.err(f"{table}.{key}", f"[{table}] key {key!r} is unknown{hint}")


def read_config(path: str | Path | None = None, text: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Parse and validate a TOML configuration (no JAX operation, no data loaded, no
    module imported: a key naming a function is only checked for its spelling).

    Args:
      path: the file; ``None`` with ``text=None`` reads the built-in default.
      text: TOML text to parse instead of reading ``path`` (``path`` then only names it).
      overrides: ``"KEY=VALUE"`` strings (``"train.epochs=20"``,
        ``"sweep.learning_rate=[1e-3, 1e-2]"``), each setting a dotted key before
        validation; VALUE is a TOML value, or a plain string when it does not parse as
        one (``optimizer=adam``).

    Raises:
      ConfigError: ``FILE:LINE: reason`` naming the dotted key; ``--set KEY=VALUE:
        reason`` when an override set it.
    """
    if sys_version_lacks_tomllib():  # pragma: no cover - python 3.10
        import tomli as tomllib  # type: ignore[import-not-found]
    else:
        import tomllib

    if text is None and path is None:
        file, text, base = "<default>", DEFAULT_CONFIG, Path.cwd()
    elif text is None:
        file = str(path)
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(file, None, None, "config file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(file, None, None, f"cannot read the config: {e}") from None
        base = p.resolve().parent
    else:
        file = str(path) if path is not None else "<string>"
        base = Path(path).resolve().parent if path is not None else Path.cwd()
    ctx = Ctx(file, text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"line (\d+)", msg)
        if m is None and "end of document" in msg:
            m = re.match(r"(\d+)", str(len(text.rstrip().splitlines()) or 1))
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg).strip()
        raise ConfigError(file, None, int(m.group(1)) if m else None,
                          f"TOML syntax error: {reason}") from None
    ctx.overrides = _apply_overrides(file, raw, overrides)
    raw_copy = _copy_tables(raw)
    for table, value in raw.items():
        if table not in SECTIONS:
            raise ctx.err(table, _unknown_table_msg(table))
        if not isinstance(value, dict):
            raise ctx.err(table, f"{table!r} must be a table: write [{table}] on its own line")
    for table, keys in SECTIONS.items():
        if not keys or table == "model":  # [model] keys depend on the model: _read_model
            continue
        for k in raw.get(table, {}):
            if k not in keys:
                raise ctx.unknown(table, k, keys)
    data = _read_data(ctx, dict(raw.get("data", {})), base)
    model = _read_model(ctx, dict(raw.get("model", {})), base)
    loss = _read_loss(ctx, dict(raw.get("loss", {})), model, base)
    train = _read_train(ctx, dict(raw.get("train", {})))
    track = _read_track(ctx, raw.get("track", {}))
    sweep_grid, random = _read_sweep(ctx, dict(raw.get("sweep", {})), train, model)
    # list-valued [train] entries become axes (before the [sweep] axes: outermost)
    grid: dict[str, list[Any]] = {}
    for k in TRAIN_AXES:
        if isinstance(train.get(k), list):
            grid[k] = train.pop(k)
    for k, v in list(train.get("hparams", {}).items()):
        if isinstance(v, list):
            grid[k] = train["hparams"].pop(k)
    grid.update(sweep_grid)
    if "fold" in grid and "folds" not in train:
        raise ctx.err("sweep.fold", "[sweep] axis 'fold' needs [train] folds = k")
    if "folds" in train and "val_fraction" in data:
        raise ctx.err("data.val_fraction",
                      "[data] val_fraction and [train] folds exclude each other: choose one")
    if not names_code(model, loss):  # else checked by build, with the named functions
        check_names(ctx, grid, random, train, model_shape_axes(model))
    _check_required(ctx, grid, random, train, names_code(model, loss))
    if isinstance(raw.get("search"), dict) and raw["search"].get("method") == "optuna":
        search: Any = _read_optuna(ctx, raw["search"], grid, random)
        if track:
            raise ctx.err("track", 'method = "optuna" runs its trials as separate sweeps: '
                          "remove [track] and export the run folder afterwards (jaxgd "
                          "export DIR --to ...)")
    else:
        search = _read_search(ctx, raw.get("search"), train)
    return Config(file, data, model, train, grid, random, base, search, loss, text,
                  ctx.overrides, raw_copy, track)


def _read_track(ctx: Ctx, t: dict[str, Any]) -> list[str]:
    """[track]: ``tensorboard = "DIR"``, ``mlflow = "DIR"`` (or a tracking URI),
    ``wandb = "DIR"`` as ``track=`` strings (``"KIND:DIR"``)."""
    out = []
    for kind, dest in t.items():
        _need(ctx, f"track.{kind}", isinstance(dest, str) and bool(dest.strip()),
              "use a folder (for mlflow also a tracking URI such as \"sqlite:///runs.db\")",
              dest)
        out.append(f"{kind}:{dest}")
    return out


def names_code(model: dict[str, Any], loss: dict[str, Any]) -> bool:
    """Whether [model] or [loss] names a function (the names it may take are its own)."""
    return "callable" in model or "callable" in loss


def _copy_tables(raw: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(raw)


_OVERRIDE_KEY = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")


def parse_override(text: Any) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> (dotted key, value): VALUE parsed as a TOML value, or kept as a
    plain string when it is not one (``optimizer=adam``, ``callable=./m.py:make``).

    Raises:
      ValueError: the reason (no ``=``, a bad key, an unclosed list or string).
    """
    import tomllib

    if not isinstance(text, str) or "=" not in text:
        raise ValueError("write KEY=VALUE with a dotted key, e.g. --set train.epochs=20")
    key, _, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not _OVERRIDE_KEY.fullmatch(key):
        raise ValueError(f"{key!r} is not a dotted key (e.g. train.epochs, model.kwargs.width)")
    if not value:
        raise ValueError("no value after '='")
    if "\n" in value or "\r" in value:
        raise ValueError("the value must be on one line")
    try:
        doc = tomllib.loads(f"v = {value}")
    except tomllib.TOMLDecodeError as e:
        if value[0] in "[{\"'":  # meant as a list, table or string: not one
            reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e)).strip()
            raise ValueError(f"{value} is not a TOML value: {reason}") from None
        return key, value
    if set(doc) != {"v"}:  # pragma: no cover - one line holds one key
        raise ValueError(f"{value} is not one TOML value")
    return key, doc["v"]


def _apply_overrides(file: str, raw: dict[str, Any], overrides) -> dict[str, str]:
    """Set each override's key in ``raw`` (in order; a later one wins); dotted key ->
    the override's text."""
    if isinstance(overrides, str):
        overrides = [overrides]
    done: dict[str, str] = {}
    for text in overrides or ():
        shown = " ".join(str(text).split())
        try:
            key, value = parse_override(text)
        except ValueError as e:
            raise ConfigError(file, None, None, str(e), shown) from None
        parts = key.split(".")
        table = raw
        for i, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                where = ".".join(parts[:i + 1])
                raise ConfigError(file, key, None, f"{where} is a value, not a table: "
                                  f"{key} cannot be set", shown)
        table[parts[-1]] = value
        done = {k: v for k, v in done.items() if not k.startswith(key + ".")}
        done[key] = shown
    return done


class OptunaPlan(NamedTuple):
    """``[search] method = "optuna"``: :func:`jaxgd.optuna_search` over the distributions of
    ``[sweep.random]`` (its ``n`` trials), checked without importing Optuna."""

    sampler: str = "tpe"  # a name of OPTUNA_SAMPLERS
    seed: int = 0  # the sampler's seed
    round_size: int = 16
    objective: str | None = None  # None: "val_loss" with validation data, else "loss"
    reduce: str = "last"
    direction: str = "minimize"


OPTUNA_SAMPLERS = ("tpe", "random", "cmaes", "gp")


def _read_optuna(ctx: Ctx, s: dict[str, Any], grid, random) -> OptunaPlan:
    """[search] method = "optuna" checked, with the sweep it searches: the trials' values
    come from [sweep.random] only."""
    for k in s:
        if k != "method" and k not in OptunaPlan._fields:
            raise ctx.unknown("search", k, ("method", *OptunaPlan._fields))
    if random is None:
        raise ctx.err("search.method", 'method = "optuna" draws its trials from '
                      "[sweep.random] (n = the number of trials, and a distribution per "
                      "hyper-parameter): add that table")
    if grid:
        k = next(iter(grid))
        key = f"sweep.{k}" if ctx.line(f"sweep.{k}") else f"train.{k}"
        raise ctx.err(key, f'{k} has several values, but method = "optuna" draws every '
                      f'value from [sweep.random]: write {k} = ["choice", [...]] there')
    if "random_seed" in random:
        raise ctx.err("sweep.random.random_seed", 'with method = "optuna" the sampler draws '
                      "the values: give its seed as [search] seed")
    plan = OptunaPlan(**{k: v for k, v in s.items() if k != "method"})
    _choice(ctx, "search.sampler", plan.sampler, OPTUNA_SAMPLERS)
    _need(ctx, "search.seed", is_int(plan.seed) and plan.seed >= 0, "use an integer >= 0",
          plan.seed)
    _need(ctx, "search.round_size", is_int(plan.round_size) and plan.round_size > 0,
          "use a positive integer", plan.round_size)
    _need(ctx, "search.objective", plan.objective is None or isinstance(plan.objective, str),
          'use a history column name such as "val_loss"', plan.objective)
    _choice(ctx, "search.reduce", plan.reduce, ("last", "best"))
    _choice(ctx, "search.direction", plan.direction, ("minimize", "maximize"))
    return plan


def _read_search(ctx: Ctx, s: dict[str, Any] | None, train: dict[str, Any]):
    """The [search] table as a checked :mod:`jaxgd.search` object (or None)."""
    if s is None:
        return None
    from . import search as search_mod

    every = train.get("eval_every", options.OPTIONS["eval_every"].default)
    units, by_steps = options.budget(train.get("epochs"), train.get("steps"))  # [train] checked
    try:
        return search_mod.check(search_mod.from_dict(s, "[search]"), units, every,
                                "steps" if by_steps else "epochs")
    except (ValueError, TypeError) as e:
        m = re.search(r"search (\w+)=", str(e)) or re.search(r"key '(\w+)'", str(e)) or \
            re.search(r"\[search\]: (\w+)=", str(e))
        key = f"search.{m.group(1)}" if m and m.group(1) in s else "search"
        raise ctx.err(key, str(e)) from None


def sys_version_lacks_tomllib() -> bool:
    import sys

    return sys.version_info < (3, 11)


def _unknown_table_msg(table: str) -> str:
    close = closest(table, SECTIONS)
    hint = f" (did you mean [{close}]?)" if close else ""
    return f"table [{table}] is unknown{hint}; valid tables: {list(SECTIONS)}"


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _need(ctx: Ctx, key: str, ok: bool, what: str, v: Any) -> None:
    if not ok:
        raise ctx.err(key, f"{key} = {show_value(v)} is invalid: {what}")


def show_value(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v)


def _choice(ctx: Ctx, key: str, v: Any, valid) -> None:
    if not isinstance(v, str) or v not in valid:
        close = closest(v, valid)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise ctx.err(key, f"{key} = {show_value(v)} is invalid{hint}; valid values: {list(valid)}")


def _read_code(ctx: Ctx, table: str, d: dict[str, Any], base: Path) -> None:
    """Check ``callable`` (its spelling; a named file must exist; nothing is imported) and
    ``kwargs`` (a table) of [data], [model] or [loss]."""
    key = f"{table}.callable"
    if "kwargs" in d and "callable" not in d:
        raise ctx.err(f"{table}.kwargs", f"{table}.kwargs are the keyword arguments of "
                      f"{key}: name the function too ({key} = \"package.module:function\")")
    if "callable" not in d:
        return
    try:
        callables.parse(d["callable"], base)
    except ValueError as e:
        raise ctx.err(key, f"{key} = {show_value(d['callable'])} {e}") from None
    d.setdefault("kwargs", {})
    if not isinstance(d["kwargs"], dict):
        raise ctx.err(f"{table}.kwargs", f"{table}.kwargs = {show_value(d['kwargs'])} must be a "
                      f"table: [{table}.kwargs] or kwargs = {{ name = value }}")


def _read_data(ctx: Ctx, d: dict[str, Any], base: Path) -> dict[str, Any]:
    from .datasets import LOADERS

    _read_code(ctx, "data", d, base)
    if "callable" in d and "dataset" in d:
        raise ctx.err("data.dataset", "data.dataset and data.callable exclude each other: "
                      "keep one")
    ds = d.setdefault("dataset", "diabetes") if "callable" not in d else None
    if ds is not None and not isinstance(ds, str):
        raise ctx.err("data.dataset", f"data.dataset = {show_value(ds)} must be a string")
    if ds is not None and ds not in LOADERS:
        if not ds.lower().endswith((".npz", ".csv")):
            close = closest(ds, LOADERS)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ctx.err("data.dataset",
                          f"data.dataset = {show_value(ds)} is not a built-in dataset{hint} nor a "
                          f".npz/.csv file; valid names: {sorted(LOADERS)}")
        p = Path(ds).expanduser()
        cands = [p] if p.is_absolute() else [base / p, Path.cwd() / p]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise ctx.err("data.dataset", f"data.dataset file {ds!r} not found (looked in "
                          f"{', '.join(str(c.parent) for c in cands)})")
        d["path"] = str(found)
    for k in ("standardize", "standardize_target"):
        d.setdefault(k, False)
        _need(ctx, f"data.{k}", isinstance(d[k], bool), "use true or false", d[k])
    if "val_fraction" in d:
        v = d["val_fraction"]
        _need(ctx, "data.val_fraction", _is_num(v) and 0 < v < 1, "use a number in (0, 1)", v)
    d.setdefault("split_seed", 0)
    _need(ctx, "data.split_seed", is_int(d["split_seed"]) and d["split_seed"] >= 0,
          "use an integer >= 0", d["split_seed"])
    if "task" in d:
        _choice(ctx, "data.task", d["task"], TASKS)
        if "path" not in d and "callable" not in d:
            raise ctx.err("data.task", "data.task only applies to .npz/.csv files and "
                          f"data.callable; built-in dataset {ds!r} has its own task")
    return d


def _read_model(ctx: Ctx, m: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """Check [model] against the model registry: the name, then its own arguments; or a
    named function (``callable``, ``kwargs``) and an optional built-in ``loss``."""
    from .losses import LOSSES

    registry = model_registry()
    if "callable" in m or "kwargs" in m:
        if "name" in m and "callable" in m:
            raise ctx.err("model.name", "model.name and model.callable exclude each other: "
                          "keep one")
        _read_code(ctx, "model", m, base or Path.cwd())
        for k in m:
            if k not in ("callable", "kwargs", "loss"):
                raise ctx.unknown("model", k, ["callable", "kwargs", "loss"])
        if "loss" in m:
            _choice(ctx, "model.loss", m["loss"], sorted(LOSSES))
        return m
    m.setdefault("name", "linear")
    _choice(ctx, "model.name", m["name"], sorted(registry))
    if "loss" in m:
        _choice(ctx, "model.loss", m["loss"], sorted(LOSSES))
    args = registry[m["name"]].args
    for k, v in m.items():
        if k in ("name", "loss"):
            continue
        if k not in args:
            takers = [n for n, e in registry.items() if k in e.args]
            if not takers:
                raise ctx.unknown("model", k, ["name", "loss", *args])
            raise ctx.err(f"model.{k}", f"[model] key {k!r} does not apply to model "
                          f"{m['name']!r} (only to {', '.join(takers)})")
        _need(ctx, f"model.{k}", args[k].ok(v), f"use {args[k].what}", v)
    return m


def _read_loss(ctx: Ctx, d: dict[str, Any], model: dict[str, Any],
               base: Path) -> dict[str, Any]:
    """Check [loss]: a named loss function (``callable``) and its ``kwargs``."""
    if not d:
        return d
    _read_code(ctx, "loss", d, base)
    if "loss" in model:
        raise ctx.err("loss.callable", "model.loss and loss.callable exclude each other: "
                      "keep one")
    return d


def _read_train(ctx: Ctx, t: dict[str, Any]) -> dict[str, Any]:
    """Check [train] with the options' own checks (jaxgd.options), each list-valued axis
    value by value."""
    from .optim import OPTIMIZERS, SCHEDULES

    choices = {"optimizer": sorted(OPTIMIZERS), "schedule": sorted(SCHEDULES)}
    for k, v in t.items():
        if k in ("hparams", "init_seed"):
            continue
        if isinstance(v, list) and not v:
            raise ctx.err(f"train.{k}", f"train.{k} = [] is empty")
        for x in (v if isinstance(v, list) and k in TRAIN_AXES else [v]):
            if k in choices:  # names, with a "did you mean"
                _choice(ctx, f"train.{k}", x, choices[k])
                continue
            try:
                options.check(k, x)
            except (TypeError, ValueError):
                raise ctx.err(f"train.{k}", f"train.{k} = {show_value(x)} is invalid: use "
                              f"{options.OPTIONS[k].what}") from None
    if "epochs" in t and "steps" in t:
        raise ctx.err("train.steps", f"train.epochs = {show_value(t['epochs'])} and "
                      f"train.steps = {show_value(t['steps'])}: give one budget, epochs or "
                      "steps (updates)")
    init_seed = t.get("init_seed", 0)
    if not ((is_int(init_seed) and init_seed >= 0) or init_seed == "seed"):
        raise ctx.err("train.init_seed", f"train.init_seed = {show_value(init_seed)} is invalid: "
                      "use an integer >= 0, or \"seed\" to draw each seed's own initial "
                      "parameters")
    if "hparams" in t:
        hp = t["hparams"]
        if not isinstance(hp, dict):
            raise ctx.err("train.hparams", "train.hparams must be a table, e.g. "
                          "hparams = { learning_rate = 0.01, momentum = 0.9 }")
        for k, v in hp.items():
            vals = v if isinstance(v, list) else [v]
            if not vals or not all(_is_num(x) or isinstance(x, bool) for x in vals):
                raise ctx.err(f"train.hparams.{k}",
                              f"train.hparams.{k} = {show_value(v)} is invalid: use a number "
                              "(or a list of numbers to sweep it)")
    t["hparams"] = dict(t.get("hparams", {}))
    return t


def _expand_space(ctx: Ctx, key: str, v: dict[str, Any]) -> list[Any]:
    kinds = [k for k in v if k in SPACES]
    extra = [k for k in v if k not in (*SPACES, "num", "base")]
    if len(kinds) != 1 or extra:
        bad = extra[0] if extra else None
        if bad:
            raise ctx.unknown(key, bad, (*SPACES, "num", "base"))
        raise ctx.err(key, f"{key} = {{...}} needs exactly one of {list(SPACES)}, e.g. "
                      "{ logspace = [-4, -1], num = 16 }")
    kind = kinds[0]
    ends = v[kind]
    if kind == "range":
        ok = isinstance(ends, list) and 1 <= len(ends) <= 3 and all(is_int(e) for e in ends)
        _need(ctx, f"{key}.range", ok, "use [stop], [start, stop] or [start, stop, step] "
              "(integers)", ends)
        vals = list(range(*ends))
        if not vals:
            raise ctx.err(f"{key}.range", f"{key}.range = {ends} is empty")
        return vals
    ok = isinstance(ends, list) and len(ends) == 2 and all(_is_num(e) for e in ends)
    _need(ctx, f"{key}.{kind}", ok, "use [start, stop]", ends)
    num = v.get("num")
    if num is None:
        raise ctx.err(key, f"{key} = {{ {kind} = [...] }} needs num = N (how many values)")
    _need(ctx, f"{key}.num", is_int(num) and num > 0, "use a positive integer", num)
    if kind == "logspace":
        base = v.get("base", 10.0)
        _need(ctx, f"{key}.base", _is_num(base) and base > 0, "use a number > 0", base)
        return np.logspace(ends[0], ends[1], num, base=base).tolist()
    if "base" in v:
        raise ctx.err(f"{key}.base", f"{key}.base only applies to logspace")
    if kind == "geomspace":
        _need(ctx, f"{key}.geomspace", ends[0] * ends[1] > 0,
              "use two numbers of the same sign, not 0", ends)
        return np.geomspace(ends[0], ends[1], num).tolist()
    return np.linspace(ends[0], ends[1], num).tolist()


def normalize_axis_value(name: str, v: Any) -> Any:
    if name == "batch_size" and v == "full":
        return None
    return v


def model_shape_axes(model: dict[str, Any]) -> tuple[str, ...]:
    """The [model] arguments a [sweep] axis may vary: those the registry marks as changing
    only parameter shapes (``ModelArg.shape``, e.g. ``hidden`` of ``mlp``); none known
    before :func:`build` for a named model function (its ``init``'s own)."""
    if "callable" in model:
        return ()
    return tuple(k for k, a in model_registry()[model["name"]].args.items() if a.shape)


def _read_shape_axis(ctx: Ctx, key: str, k: str, v: Any, model: dict[str, Any]) -> list[Any]:
    """A [sweep] axis over a model argument: a list of values, each checked like [model]'s
    (for mlp's ``hidden``, each value is a width or a list of widths)."""
    if k in model:
        raise ctx.err(key, f"{k!r} is given both in [model] and in [sweep]: keep one")
    if not isinstance(v, list) or not v:
        raise ctx.err(key, f"{key} = {show_value(v)} is invalid: a model argument swept in "
                      f"[sweep] is a non-empty list of values, e.g. {k} = [16, 32]")
    arg = model_registry()[model["name"]].args[k]
    for x in v:
        _need(ctx, key, arg.ok(x), f"use a list whose values are each {arg.what}", x)
    return v


def _read_sweep(ctx: Ctx, s: dict[str, Any], train: dict[str, Any],
                model: dict[str, Any] | None = None):
    from .axes import DISTRIBUTIONS, expand_configs

    grid: dict[str, list[Any]] = {}
    random = s.pop("random", None)
    shape_names = model_shape_axes(model) if model else ()
    for k, v in s.items():
        key = f"sweep.{k}"
        if k in train and k != "hparams" or k in train.get("hparams", {}):
            raise ctx.err(key, f"{k!r} is given both in [train] and in [sweep]: keep one")
        if k in shape_names:
            grid[k] = _read_shape_axis(ctx, key, k, v, model)
            continue
        if isinstance(v, dict):
            vals = _expand_space(ctx, key, v)
        elif isinstance(v, list):
            vals = v
        else:
            vals = [v]
        if not vals:
            raise ctx.err(key, f"{key} = [] is empty")
        if k == "batch_size":
            for x in vals:
                _need(ctx, key, (is_int(x) and x > 0) or x == "full",
                      'use positive integers or "full" (full batch)', x)
        # a named model's init may take lists (layer widths) on a shape axis of any name
        shape = (k,) if "callable" in (model or {}) and any(
            isinstance(x, list) for x in vals) else ()
        try:
            expand_configs(grid={k: [normalize_axis_value(k, x) for x in vals]}, shape=shape)
        except (ValueError, TypeError) as e:
            raise ctx.err(key, f"{key}: {e}") from None
        grid[k] = vals
    rnd = None
    if random is not None:
        if not isinstance(random, dict):
            raise ctx.err("sweep.random", "sweep.random must be a table: [sweep.random]")
        rnd = {}
        n = random.get("n")
        _need(ctx, "sweep.random.n", is_int(n) and n > 0, "use a positive integer", n)
        rnd["n"] = n
        if "random_seed" in random:
            rs = random["random_seed"]
            _need(ctx, "sweep.random.random_seed", is_int(rs) and rs >= 0,
                  "use an integer >= 0", rs)
            rnd["random_seed"] = rs
        for k, dist in random.items():
            if k in ("n", "random_seed"):
                continue
            key = f"sweep.random.{k}"
            if k in grid or k in train and k != "hparams" or k in train.get("hparams", {}):
                raise ctx.err(key, f"{k!r} is given twice (random and grid/[train]): keep one")
            if not (isinstance(dist, list) and dist and dist[0] in DISTRIBUTIONS):
                raise ctx.err(key, f"{key} = {show_value(dist)} is invalid: use "
                              '["loguniform", low, high], ["uniform", low, high], '
                              '["randint", low, high] or ["choice", [v1, v2, ...]]')
            d = tuple(dist)
            if k == "batch_size" and d[0] == "choice" and isinstance(d[1], list):
                d = ("choice", [normalize_axis_value(k, x) for x in d[1]])
            try:
                expand_configs(random={"n": 2, k: d})
            except (ValueError, TypeError) as e:
                raise ctx.err(key, f"{key}: {e}") from None
            rnd[k] = d
    return grid, rnd


def check_names(ctx: Ctx, grid, random, train, shape_names=()) -> None:
    """Axis and hparams names must be hyper-parameters of one of the sweep's optimizers
    (or, for [sweep] axes, the model's shape arguments)."""
    from .axes import STREAM_AXES, STRUCTURAL_AXES

    try:
        from .optim import factory_params, known_names, resolve_optimizer

        opts = grid.get("optimizer", [train.get("optimizer", "sgd")])
        scheds = grid.get("schedule", [train.get("schedule", "constant")])
        known: set[str] = set()
        for o in opts:
            spec = resolve_optimizer(o)
            _, every = factory_params(spec.factory)
            known |= every
            for s in scheds:
                known |= known_names(spec, s)
    except Exception:  # noqa: BLE001 - the library checks again when the sweep runs
        return
    axes_ok = known | set(STRUCTURAL_AXES) | set(STREAM_AXES)
    for k in grid:
        if k not in axes_ok | set(shape_names):
            table = "sweep" if f"sweep.{k}" in {**ctx.lines, **ctx.overrides} \
                else "train.hparams"
            raise ctx.unknown(table, k, sorted(axes_ok | set(shape_names)))
    for k in random or {}:
        if k not in ("n", "random_seed") and k not in axes_ok:
            raise ctx.unknown("sweep.random", k, sorted(axes_ok | {"n", "random_seed"}))
    for k in train.get("hparams", {}):
        if k not in known:
            raise ctx.unknown("train.hparams", k, sorted(known))


def _axis_values(name: str, grid, random, default: Any) -> list[Any]:
    if name in grid:
        return list(grid[name])
    d = (random or {}).get(name)
    if d is not None and d[0] == "choice" and isinstance(d[1], list):
        return list(d[1])
    return [default]


def _check_required(ctx: Ctx, grid, random, train, loss_names=False) -> None:
    """A learning rate, the schedules' required parameters, and [train] hparams that every
    optimizer of the sweep takes: checked before JAX starts (with ``loss_names``, a named
    loss may take hparams of its own: the sweep checks them)."""
    from .optim import SCHEDULES, factory_params, known_names, resolve_optimizer

    given = set(train.get("hparams", {})) | set(grid) | set(random or {})
    if "learning_rate" not in given:
        key = "sweep" if "sweep" in ctx.lines else "train.hparams"
        raise ctx.err(key, "learning_rate is not given: add it to [sweep] (e.g. "
                      "learning_rate = { logspace = [-3, 0], num = 8 }), [sweep.random] or "
                      "[train] hparams = { learning_rate = 0.01 }")
    opts = _axis_values("optimizer", grid, random, train.get("optimizer", "sgd"))
    scheds = _axis_values("schedule", grid, random, train.get("schedule", "constant"))
    for s in scheds:
        for k, default in SCHEDULES.get(s, {}).items():
            if default is None and k not in given:
                raise ctx.err("train.schedule", f"schedule {s!r} needs {k}: add it to "
                              f"[train] hparams = {{ {k} = ... }} or to [sweep]")
    for o in opts:
        try:
            spec = resolve_optimizer(o)
        except (ValueError, TypeError):
            continue  # reported by the [train] checks
        every = factory_params(spec.factory)[1] if spec.factory is not None else set()
        for s in scheds:
            if s not in SCHEDULES:
                continue
            known = known_names(spec, s)
            for k in train.get("hparams", {}):
                if k not in known and k not in every and not loss_names:
                    raise ctx.err(f"train.hparams.{k}",
                                  f"train.hparams.{k} is not a hyper-parameter of optimizer "
                                  f"{o!r} with schedule {s!r}; every optimizer of the sweep "
                                  f"gets [train] hparams (known: {sorted(known)})")


# ----------------------------------------------------------------------------- building
