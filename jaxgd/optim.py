"""Optimizers, schedules, clipping and penalties built from *traced* hyper-parameters.

Every numeric hyper-parameter of a run lives in one flat dictionary (``hparams``), e.g.
``{"learning_rate": 0.1, "momentum": 0.9, "decay_rate": 0.96, "transition_steps": 1000,
"l2": 1e-3, "clip_norm": 1.0}``. Each name belongs to exactly one component:

* the optax factory (any keyword its signature takes, e.g. ``b1``, ``momentum``, ``eps``);
* the learning-rate schedule (``decay_rate``, ``transition_steps``, ``staircase``,
  ``end_value``, ..., and the warm-up's ``warmup_steps`` and ``init_value``);
* penalties (``l1``, ``l2``), clipping (``clip_value``, ``clip_norm``), decoupled
  ``weight_decay`` when the optimizer has none of its own (scaled by the rate jaxgd gives
  the factory, :func:`passed_lr`);
* stop conditions (``grad_tol``, ``loss_target``, ``patience``, ``min_delta``,
  ``diverge_factor``: the parameters declared in :mod:`jaxgd.stops`).

Inside the compiled program these values are arrays, so changing them never recompiles
(optax issue 577 explains why a Python float baked into a program does).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import stops
from ._checks import closest

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "schedule_value",
    "resolve_optimizer",
    "OptimizerSpec",
    "optimizer_hparams",
]

# name -> (factory, fixed static keyword arguments, default numeric hparams)
OPTIMIZERS: dict[str, tuple[Callable[..., Any], dict[str, Any], dict[str, float]]] = {
    "sgd": (optax.sgd, {}, {}),
    "momentum": (optax.sgd, {}, {"momentum": 0.9}),
    "nesterov": (optax.sgd, {"nesterov": True}, {"momentum": 0.9}),
    "rmsprop": (optax.rmsprop, {}, {}),
    "adagrad": (optax.adagrad, {}, {}),
    "adam": (optax.adam, {}, {}),
    "adamw": (optax.adamw, {}, {}),
    "adamax": (optax.adamax, {}, {}),
}

# schedule kind -> its parameters and their defaults (None = required)
SCHEDULES: dict[str, dict[str, float | None]] = {
    "constant": {},
    "exponential": {"decay_rate": None, "transition_steps": 1.0, "staircase": 0.0,
                    "transition_begin": 0.0},
    "step": {"step_size": None, "gamma": 0.1},
    "inverse_time": {"decay_rate": None, "decay_steps": 1.0, "staircase": 0.0},
    "cosine": {"decay_steps": None, "alpha": 0.0, "exponent": 1.0, "end_value": 0.0},
    "warmup_cosine": {"warmup_steps": None, "decay_steps": None, "end_value": 0.0,
                      "exponent": 1.0},
    "polynomial": {"transition_steps": None, "power": None, "end_value": 0.0,
                   "transition_begin": 0.0},
    "linear": {"transition_steps": None, "end_value": 0.0, "transition_begin": 0.0},
}
# parameters a schedule uses only when given (absent = optax's ``None``: no bound)
OPTIONAL_PARAMS: dict[str, tuple[str, ...]] = {"exponential": ("end_value",)}
WARMUP_KEY = "warmup_steps"
WARMUP_INIT_KEY = "init_value"  # the warm-up's start value (optax's init_value)
WARMUP_KEYS = (WARMUP_KEY, WARMUP_INIT_KEY)

PENALTY_KEYS = ("l1", "l2")
CLIP_KEYS = ("clip_value", "clip_norm")
# stop conditions: their parameters, defaults (that never trigger) and ranges
STOP_DEFAULTS = stops.STOP_DEFAULTS
INT_KEYS = stops.INT_KEYS


def schedule_keys(kind: str) -> frozenset[str]:
    """Every ``hparams`` name schedule ``kind`` reads (its own, optional and warm-up)."""
    return (frozenset(SCHEDULES[kind]) | frozenset(OPTIONAL_PARAMS.get(kind, ()))
            | frozenset(WARMUP_KEYS))


def schedule_value(kind: str, step: Any, lr: Any, p: Mapping[str, Any] | None = None):
    r"""Learning rate at update ``step`` (0 for the first update) of schedule ``kind``.

    ``step``, ``lr`` (:math:`\eta`, the rate after any warm-up) and the parameters ``p``
    may be Python numbers, NumPy or JAX arrays, or traced arrays: every parameter may be
    a sweep axis (optax's builders check theirs in Python, so they cannot be traced).
    Parameters left out of ``p`` take their defaults (:data:`SCHEDULES`). Each kind is
    the optax schedule named below, with optax's arithmetic:

    * constant: :math:`\eta` (``optax.constant_schedule(lr)``)
    * exponential: :math:`\eta\,r^{(t-t_0)/T}` for :math:`t > t_0`, else :math:`\eta`;
      the exponent floored when ``staircase``; ``decay_rate`` = 0 means no decay, as in
      optax; ``end_value`` (only when given) bounds it below when :math:`r < 1`, above
      otherwise (``optax.exponential_decay(lr, transition_steps, decay_rate,
      transition_begin, staircase, end_value)``; 0.1, 0.96, 1000, staircase gives 0.1 at
      step 999 and 0.096 at step 1000)
    * step: :math:`\eta\,\gamma^{\lfloor t/s\rfloor}` (``optax.piecewise_constant_schedule``
      with a factor ``gamma`` at every multiple of ``step_size``)
    * inverse_time: :math:`\eta / (1 + r\,t/T)`, :math:`t/T` floored when ``staircase``
      (TensorFlow's ``inverse_time_decay``; optax has none)
    * cosine: :math:`\eta\,((1-\alpha)\,c^k + \alpha)` with
      :math:`c = \tfrac12(1+\cos(\pi\min(t,D)/D))`, ``decay_steps`` D, ``exponent`` k
      (``optax.cosine_decay_schedule(lr, decay_steps, alpha, exponent)``); ``end_value``
      E > 0 instead of ``alpha`` sets :math:`\alpha = E/\eta` (give one of them)
    * warmup_cosine: ``optax.warmup_cosine_decay_schedule(init_value, lr, warmup_steps,
      decay_steps, end_value, exponent)``: ``decay_steps`` counts the warm-up (it must
      exceed ``warmup_steps``); the cosine (with :math:`\alpha = E/\eta`) runs over the
      ``decay_steps - warmup_steps`` updates after it
    * polynomial: :math:`(\eta - E)\,(1 - \min(\max(t - t_0, 0), T)/T)^p + E`
      (``optax.polynomial_schedule(lr, end_value, power, transition_steps,
      transition_begin)``)
    * linear: polynomial with ``power`` 1 (``optax.linear_schedule(lr, end_value,
      transition_steps, transition_begin)``)

    With ``warmup_steps`` = W > 0 the rate is optax's warm-up joined to the schedule,
    ``optax.join_schedules([optax.linear_schedule(init_value, lr, W), schedule], [W])``:
    it rises linearly from ``init_value`` (default 0: a step of size 0) at update 0
    through :math:`I + (\eta - I)\,t/W`, and from update W on it is the schedule at
    :math:`t - W` (the decay starts after the warm-up). So ``"constant"`` with W is
    ``optax.warmup_constant_schedule(init_value, lr, W)``, ``"exponential"`` is
    ``optax.warmup_exponential_decay_schedule(init_value, lr, W, ...)``, and ``"cosine"``
    with ``decay_steps`` D is ``optax.warmup_cosine_decay_schedule(init_value, lr, W,
    W + D, end_value, exponent)``, which is also ``"warmup_cosine"`` with ``decay_steps``
    W + D. ``warmup_steps`` = 0 is no warm-up; ``init_value`` needs ``warmup_steps``.
    optax's one-cycle and SGDR schedules are not built in (their boundaries are Python
    ``int`` of float64 products, or lists of dictionaries): give one as
    ``hparams["learning_rate"]`` (its numbers are then fixed, not sweep axes).

    Raises:
        ValueError: an unknown ``kind`` or parameter name, or a missing required one.
    """
    kind = check_schedule(kind)
    lr = _as_float(lr)
    p = _schedule_params(kind, p, lr.dtype)
    step = jnp.asarray(step).astype(lr.dtype)
    if WARMUP_KEY in p:
        w = p[WARMUP_KEY]
        init = p.get(WARMUP_INIT_KEY, 0.0)
        # optax.linear_schedule(init, lr, w) at step, written as optax computes it
        ramp = (init - lr) * (1.0 - jnp.clip(step, 0.0, w) / jnp.where(w > 0, w, 1.0)) + lr
        decayed = _DECAYS[kind](jnp.maximum(step - w, 0.0), lr, p)
        return jnp.where(step < w, ramp, decayed)
    return _DECAYS[kind](step, lr, p)


def _as_float(x: Any) -> jax.Array:
    """``x`` as a JAX array of a floating dtype (the default float for integers)."""
    a = jnp.asarray(x)
    return a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(jnp.result_type(float))


def _schedule_params(kind: str, p: Mapping[str, Any] | None, dtype) -> dict[str, jax.Array]:
    """Schedule ``kind``'s parameters: defaults filled in, names checked, as ``dtype``."""
    p = {} if p is None else dict(p)
    unknown = sorted(set(p) - schedule_keys(kind))
    if unknown:
        raise ValueError(f"schedule {kind!r} has no parameter {unknown[0]!r}; "
                         f"its parameters: {sorted(schedule_keys(kind))}")
    if WARMUP_INIT_KEY in p and WARMUP_KEY not in p:
        raise ValueError(f"{WARMUP_INIT_KEY!r} is the warm-up's start value: it needs "
                         f"{WARMUP_KEY!r} (the schedule itself starts at learning_rate)")
    for k, default in SCHEDULES[kind].items():
        if k not in p:
            if default is None:
                raise ValueError(f"schedule {kind!r} needs parameter {k!r}")
            p[k] = default
    return {k: jnp.asarray(v).astype(dtype) for k, v in p.items()}


def _pow(x: jax.Array, k: jax.Array) -> jax.Array:
    """``x ** k``, exactly ``x`` for k = 1 (as optax's Python-number exponent 1)."""
    return jnp.where(k == 1.0, x, x ** k)


def _constant(t, lr, p):
    return lr * jnp.ones_like(t)


def _exponential(t, lr, p):
    begin, rate = p["transition_begin"], p["decay_rate"]
    e = (t - begin) / p["transition_steps"]
    e = jnp.where(p["staircase"] > 0.5, jnp.floor(e), e)
    # optax: the initial value up to transition_begin
    v = jnp.where(t - begin <= 0, lr, lr * rate ** e)
    if "end_value" in p:  # optax: a bound below for a decay, above for a growth
        v = jnp.where(rate < 1.0, jnp.maximum(v, p["end_value"]),
                      jnp.minimum(v, p["end_value"]))
    return jnp.where(rate == 0, lr, v)  # optax: decay_rate 0 = no decay


def _step(t, lr, p):
    return lr * p["gamma"] ** jnp.floor(t / p["step_size"])


def _inverse_time(t, lr, p):
    e = t / p["decay_steps"]
    e = jnp.where(p["staircase"] > 0.5, jnp.floor(e), e)
    return lr / (1.0 + p["decay_rate"] * e)


def _cosine_alpha(lr, end, alpha):
    """optax's ``alpha = end_value / peak_value`` (0 for a peak of 0), else ``alpha``."""
    safe = jnp.where(lr == 0, 1.0, lr)
    return jnp.where(end != 0, jnp.where(lr == 0, 0.0, end / safe), alpha)


def _cosine_over(t, lr, d, alpha, exponent):
    count = jnp.minimum(t, d)  # as optax computes it
    cos = _pow(0.5 * (1.0 + jnp.cos(jnp.pi * count / d)), exponent)
    return lr * ((1.0 - alpha) * cos + alpha)


def _cosine(t, lr, p):
    alpha = _cosine_alpha(lr, p["end_value"], p["alpha"])
    return _cosine_over(t, lr, p["decay_steps"], alpha, p["exponent"])


def _warmup_cosine(t, lr, p):
    alpha = _cosine_alpha(lr, p["end_value"], 0.0)
    return _cosine_over(t, lr, p["decay_steps"] - p[WARMUP_KEY], alpha, p["exponent"])


def _polynomial(t, lr, p):
    n, end = p["transition_steps"], p["end_value"]
    frac = 1.0 - jnp.clip(t - p["transition_begin"], 0.0, n) / n
    return (lr - end) * _pow(frac, p.get("power", 1.0)) + end


_DECAYS = {"constant": _constant, "exponential": _exponential, "step": _step,
           "inverse_time": _inverse_time, "cosine": _cosine, "warmup_cosine": _warmup_cosine,
           "polynomial": _polynomial, "linear": _polynomial}


class OptimizerSpec(NamedTuple):
    """How to build the optimizer inside the program (hashable: part of the cache key)."""

    name: str
    factory: Callable[..., Any] | None  # None when a ready GradientTransformation is given
    static_kwargs: tuple[tuple[str, Any], ...]
    numeric_names: frozenset[str]  # keywords of the factory that may be traced
    ready: optax.GradientTransformation | None
    defaults: tuple[tuple[str, float], ...]


def factory_params(factory: Callable[..., Any]) -> tuple[frozenset[str], frozenset[str]]:
    """Numeric-able and all keyword names of an optax factory."""
    try:
        return _factory_params_cached(factory)
    except TypeError:  # unhashable callable
        return _factory_params_uncached(factory)


@functools.lru_cache(maxsize=128)
def _factory_params_cached(factory: Callable[..., Any]) -> tuple[frozenset[str], frozenset[str]]:
    return _factory_params_uncached(factory)


def _factory_params_uncached(factory: Callable[..., Any]) -> tuple[frozenset[str], frozenset[str]]:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return frozenset(), frozenset()
    names = {n for n, p in sig.parameters.items()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    non_numeric = {"mask", "mu_dtype", "accumulator_dtype", "nesterov", "centered",
                   "eps_in_sqrt", "bias_correction"}
    return frozenset(names - non_numeric), frozenset(names)


def resolve_optimizer(optimizer: Any) -> OptimizerSpec:
    """Turn a built-in name, an optax factory or a ready transformation into a spec."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            close = closest(optimizer, OPTIMIZERS)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ValueError(
                f"optimizer={optimizer!r} is not a built-in optimizer{hint}; "
                f"choose one of {sorted(OPTIMIZERS)} or pass an optax factory such as optax.adam"
            )
        factory, static, defaults = OPTIMIZERS[optimizer]
        numeric, _ = factory_params(factory)
        return OptimizerSpec(optimizer, factory, tuple(sorted(static.items())),
                             frozenset(numeric), None, tuple(sorted(defaults.items())))
    if isinstance(optimizer, optax.MultiSteps):  # optax's wrapper object: its transformation
        optimizer = optimizer.gradient_transformation()
    if isinstance(optimizer, optax.GradientTransformation):
        return OptimizerSpec("custom", None, (), frozenset(), optimizer, ())
    if callable(optimizer):
        numeric, _ = factory_params(optimizer)
        name = getattr(optimizer, "__name__", "custom")
        return OptimizerSpec(name, optimizer, (), frozenset(numeric), None, ())
    raise TypeError(
        f"optimizer={optimizer!r} must be a built-in name (e.g. 'adam'), an optax factory "
        "(e.g. optax.adam), an optax.GradientTransformation or an optax.MultiSteps"
    )


def known_names(spec: OptimizerSpec, schedule: str) -> set[str]:
    names = set(PENALTY_KEYS) | set(CLIP_KEYS) | set(STOP_DEFAULTS)
    if spec.factory is None:
        # a ready transformation owns its learning rate: no schedule or decoupled decay
        return names
    names |= set(spec.numeric_names) | {"learning_rate"}
    names |= schedule_keys(schedule) | {"weight_decay"}
    return names


def check_schedule(schedule: Any) -> str:
    """``schedule`` if it names a schedule of :data:`SCHEDULES`, else a ValueError."""
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        close = closest(schedule, SCHEDULES)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise ValueError(
            f"schedule={schedule!r} is unknown{hint}; choose one of {sorted(SCHEDULES)}")
    return schedule


def optimizer_hparams(
    spec: OptimizerSpec, schedule: str, hparams: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate ``hparams`` and split them into (numeric, static) dictionaries: the part
    of :func:`jaxgd.prepare.split_hparams` (the one splitter) that the optimizer, the
    schedule, the penalties, clipping and the stop conditions own.

    Numeric values (Python or numpy numbers, 0-d arrays) become traced arrays in the
    program; booleans given to factory keywords that are not numeric (``nesterov``) and
    other non-numbers are static. Defaults of the schedule and the stop conditions are
    filled in. Raises ``ValueError`` naming an unknown key with the closest known name.
    """
    if not isinstance(hparams, Mapping):
        raise TypeError(f"hparams must be a dict of name -> value, got {type(hparams).__name__}")
    check_schedule(schedule)
    if spec.factory is None and schedule != "constant":
        raise ValueError(f"schedule={schedule!r} needs an optax factory (e.g. optax.sgd), not a "
                         "ready optax.GradientTransformation, whose learning rate is fixed")
    known = known_names(spec, schedule)
    _, all_factory = factory_params(spec.factory) if spec.factory is not None else (set(), set())
    numeric: dict[str, Any] = dict(spec.defaults)
    static: dict[str, Any] = dict(spec.static_kwargs)
    for k, v in hparams.items():
        if not isinstance(k, str):
            raise TypeError(f"hparams keys must be strings, got {k!r}")
        if k in all_factory and k not in known:
            static[k] = v  # e.g. nesterov=True, mask=...
            continue
        if k not in known and spec.factory is None:
            raise ValueError(
                f"hparams key {k!r} cannot be used with a ready optax.GradientTransformation "
                "(it owns its learning rate and schedule); pass an optax factory such as "
                "optax.sgd (then every hparam is traced), or build it into the transformation "
                "(e.g. optax.chain(optax.add_decayed_weights(wd), ...))")
        if k not in known:
            close = closest(k, sorted(known | all_factory))
            hint = f" (did you mean {close!r}?)" if close else ""
            where = f"optimizer {spec.name!r}" if spec.factory is not None else "this run"
            raise ValueError(
                f"hparams key {k!r} is not a hyper-parameter of {where} or schedule "
                f"{schedule!r}{hint}; known: {sorted(known)}"
            )
        if isinstance(v, bool) and k in spec.numeric_names and k not in schedule_keys(schedule):
            static[k] = v
            continue
        numeric[k] = _check_number(k, v)
        if k in STOP_DEFAULTS:  # a user's value; the defaults lie outside these ranges
            stops.check_stop_param(f"hparams[{k!r}]", k, v)
    if spec.factory is not None and "learning_rate" not in numeric:
        given = sorted(k for k in hparams if k not in STOP_DEFAULTS)  # not stops' defaults
        raise ValueError(
            f"hparams must give 'learning_rate' for optimizer {spec.name!r} (e.g. "
            f"hparams={{'learning_rate': 0.01}}), got "
            + (f"keys {given}" if given else "none")
        )
    for k, default in SCHEDULES[schedule].items():
        if k not in numeric:
            if default is None:
                raise ValueError(f"schedule {schedule!r} needs hparams[{k!r}]")
            numeric[k] = default
    for k, default in STOP_DEFAULTS.items():
        numeric.setdefault(k, default)
    _check_ranges(numeric)
    _check_schedule_values(schedule, numeric)
    return numeric, static


def _check_number(name: str, v: Any) -> Any:
    import numpy as np

    if isinstance(v, str) or v is None:
        raise TypeError(f"hparams[{name!r}]={v!r} must be a number")
    try:
        arr = np.asarray(v)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"hparams[{name!r}]={v!r} must be a number") from e
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"hparams[{name!r}]={v!r} must be a number, got dtype {arr.dtype}")
    if arr.ndim != 0:
        raise ValueError(
            f"hparams[{name!r}] must be a scalar, got shape {arr.shape}; "
            "to try several values use jaxgd.sweep(grid={...})"
        )
    return v


def _check_ranges(numeric: Mapping[str, Any]) -> None:
    import numpy as np

    def val(k):
        return float(np.asarray(numeric[k]))

    positive = ("learning_rate", "transition_steps", "decay_steps", "step_size")
    for k in positive:
        if k in numeric and not (np.isfinite(val(k)) and val(k) > 0):
            raise ValueError(f"hparams[{k!r}]={numeric[k]!r} must be finite and > 0")
    nonneg = ("l1", "l2", "weight_decay", "clip_value", "clip_norm", WARMUP_KEY,
              "momentum", "alpha", "gamma", "decay_rate")
    for k in nonneg:
        if k in numeric and not (val(k) >= 0 and not np.isnan(val(k))):
            raise ValueError(f"hparams[{k!r}]={numeric[k]!r} must be >= 0")
    for k in ("l1", "l2", "weight_decay", "momentum", "decay_rate", "alpha", "gamma"):
        if k in numeric and not np.isfinite(val(k)):
            raise ValueError(f"hparams[{k!r}]={numeric[k]!r} must be finite")


def _check_schedule_values(schedule: str, numeric: Mapping[str, Any]) -> None:
    """The schedule's own value checks (those of optax's builders, and the pairs)."""
    import numpy as np

    def val(k):
        return float(np.asarray(numeric[k]))

    for k in ("init_value", "end_value", "exponent", "power", "transition_begin"):
        if (k in numeric and k in schedule_keys(schedule)
                and not (np.isfinite(val(k)) and val(k) >= 0)):
            raise ValueError(f"hparams[{k!r}]={numeric[k]!r} must be finite and >= 0")
    if WARMUP_INIT_KEY in numeric and WARMUP_KEY not in numeric:
        raise ValueError(f"hparams[{WARMUP_INIT_KEY!r}] is the warm-up's start value: it "
                         f"needs hparams[{WARMUP_KEY!r}] (without a warm-up the schedule "
                         "starts at learning_rate)")
    if schedule == "cosine" and val("alpha") != 0 and val("end_value") != 0:
        raise ValueError(f"schedule 'cosine' got alpha={numeric['alpha']!r} and end_value="
                         f"{numeric['end_value']!r}: give one of them (end_value E sets "
                         "alpha = E / learning_rate, as optax.warmup_cosine_decay_schedule)")
    if schedule == "warmup_cosine" and not val("decay_steps") > val(WARMUP_KEY):
        raise ValueError(f"schedule 'warmup_cosine' needs decay_steps > warmup_steps (optax "
                         "counts the warm-up inside decay_steps), got decay_steps="
                         f"{numeric['decay_steps']!r}, warmup_steps={numeric[WARMUP_KEY]!r}")


def build_optimizer(
    spec: OptimizerSpec, schedule: str, tc: Mapping[str, jax.Array], static: Mapping[str, Any]
) -> optax.GradientTransformation:
    """Build the optax transformation inside the program from traced values ``tc``."""
    if spec.ready is not None:
        opt = spec.ready
    else:
        lr0 = tc["learning_rate"]
        if schedule == "constant" and WARMUP_KEY not in tc:
            lr = lr0
        else:
            sp = {k: tc[k] for k in schedule_keys(schedule) if k in tc}
            lr = lambda count: schedule_value(schedule, count, lr0, sp)  # noqa: E731
        kwargs = {k: tc[k] for k in spec.numeric_names if k in tc and k != "learning_rate"}
        kwargs.update(static)
        opt = _call_factory(spec, lr, kwargs)
    parts = []
    if "clip_value" in tc:
        parts.append(optax.clip(tc["clip_value"]))
    if "clip_norm" in tc:
        parts.append(optax.clip_by_global_norm(tc["clip_norm"]))
    return optax.chain(*parts, opt) if parts else opt


def _call_factory(spec: OptimizerSpec, lr: Any, kwargs: Mapping[str, Any]):
    """``spec.factory(learning_rate=lr, **kwargs)``, whose arguments are traced: a factory
    that needs Python numbers gets a clear TypeError."""
    try:
        opt = spec.factory(learning_rate=lr, **kwargs)
    except jax.errors.ConcretizationTypeError as e:
        raise TypeError(
            f"optimizer {spec.name!r} uses its hyper-parameters in Python control flow, but "
            "jaxgd passes them as traced arrays (so that new values never recompile); e.g. "
            "optax.warmup_cosine_decay_schedule(init, peak, ...) tests peak == 0 in Python. "
            "Use jaxgd's schedule='warmup_cosine' (init_value, warmup_steps, decay_steps, "
            "end_value, exponent in hparams) with an optax optimizer, or give the finished "
            "schedule as hparams['learning_rate'] = optax.warmup_cosine_decay_schedule(...)"
        ) from e
    except TypeError as e:
        if "argument" not in str(e):
            raise
        raise TypeError(
            f"optimizer {spec.name!r} is called as an optax factory with the keywords "
            f"{sorted(['learning_rate', *kwargs])} (learning_rate and its own keywords in "
            f"hparams) and failed: {e}") from e
    if isinstance(opt, optax.MultiSteps):
        opt = opt.gradient_transformation()
    if not (callable(getattr(opt, "init", None)) and callable(getattr(opt, "update", None))):
        raise TypeError(
            f"optimizer {spec.name!r} is called as an optax factory "
            f"(optimizer(learning_rate=..., **hparams)) but returned {type(opt).__name__} "
            f"{opt!r:.200}, not an optax.GradientTransformation (init, update). "
            "jax.example_libraries.optimizers' (init_fun, update_fun, get_params) triples "
            "are not optax transformations: use optax's own, e.g. optax.sgd with "
            "hparams={'learning_rate': step_size, 'momentum': mass} for "
            "optimizers.momentum(step_size, mass)")
    return opt


def update(spec: OptimizerSpec, opt: optax.GradientTransformation, grads: Any,
           opt_state: Any, params: Any, value: Any = None) -> tuple[Any, Any]:
    """``opt.update(grads, opt_state, params)``, where ``grads`` is the gradient of the loss
    with respect to every floating leaf of ``params`` (the same pytree). A transformation
    taking optax's extra arguments (``optax.GradientTransformationExtraArgs``: optax's own
    optimizers and chains) also gets ``value=value``, the update's objective whose gradient
    ``grads`` is (optax's convention, read by ``optax.contrib.reduce_on_plateau`` and
    ``optax.polyak_sgd``; an ``update`` that takes no ``value`` is called without it). An
    optimizer that wants another structure fails there
    (``optax.lookahead`` takes the gradient of ``params.fast`` alone): a ValueError says
    what it was given and how to adapt it; one that wants other extra arguments (a line
    search's ``value_fn``) gets a TypeError saying what jaxgd passes."""
    extra = isinstance(opt, optax.GradientTransformationExtraArgs) and value is not None
    try:
        if extra:
            try:
                return opt.update(grads, opt_state, params, value=value)
            except TypeError as e:  # an update of its own that takes no extra arguments
                if "unexpected keyword argument 'value'" not in str(e):
                    raise
                extra = False
        return opt.update(grads, opt_state, params)
    except TypeError as e:
        if "argument" not in str(e):
            raise
        given = "grads, opt_state, params" + (", value=objective" if extra else "")
        raise TypeError(
            f"optimizer {spec.name!r} failed in its update: jaxgd calls "
            f"update({given}) (value: the update's batch objective, passed to an "
            "optax.GradientTransformationExtraArgs only) and no other extra argument "
            f"such as a line search's value_fn. The optimizer said: {e}") from e
    except ValueError as e:
        kind = type(params).__name__
        hint = ""
        if isinstance(params, optax.LookaheadParams):
            hint = ("; optax.lookahead expects the gradient of params.fast alone: give "
                    "optimizer=optax.GradientTransformation(la.init, lambda g, s, p=None: "
                    "la.update(g.fast, s, p)) for la = optax.lookahead(...), and a loss "
                    "that reads params.fast")
        raise ValueError(
            f"optimizer {spec.name!r} failed in its update(grads, opt_state, params): jaxgd "
            f"passes the gradient of the loss with respect to all of params, a {kind} of "
            f"the same structure as params{hint}. The optimizer said: {e}") from e


def current_lr(schedule: str, tc: Mapping[str, jax.Array], step: jax.Array) -> jax.Array:
    """The learning rate the schedule gives at update ``step`` (NaN without one)."""
    if "learning_rate" not in tc:
        return jnp.asarray(jnp.nan)
    sp = {k: tc[k] for k in schedule_keys(schedule) if k in tc}
    return schedule_value(schedule, step, tc["learning_rate"], sp)


# ----------------------------------------------------------------------------- research code

def check_number(name: str, v: Any) -> Any:
    """``v`` if it is a numeric scalar (a hyper-parameter's value), else a clear error."""
    return _check_number(name, v)


# a factory's learning-rate keyword, when it is not ``learning_rate`` (first match wins)
RATE_ALIASES = ("lr", "step_size")


class _AdaptedFactory:
    """An optax factory seen through jaxgd's ``learning_rate`` keyword: its own rate
    keyword renamed (``lr``, ``step_size``), or a fixed schedule callable passed as the
    rate (the traced ``learning_rate`` is then unused). Hashable by value."""

    def __init__(self, factory: Callable[..., Any], alias: str = "learning_rate",
                 schedule: Callable[[Any], Any] | None = None):
        self.factory, self.alias, self.schedule = factory, alias, schedule
        self.__name__ = getattr(factory, "__name__", "custom")
        try:
            sig = inspect.signature(factory)
            params = [p.replace(name="learning_rate") if p.name == alias else p
                      for p in sig.parameters.values()]
            self.__signature__ = sig.replace(parameters=params)
        except (TypeError, ValueError):
            pass

    def _key(self):
        return (self.factory, self.alias, self.schedule)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, _AdaptedFactory) and self._key() == other._key()

    def __call__(self, learning_rate, **kw):
        rate = self.schedule if self.schedule is not None else learning_rate
        return self.factory(**{self.alias: rate}, **kw)


def adapt_optimizer(spec: OptimizerSpec, schedule: str, hparams: Mapping[str, Any]
                    ) -> tuple[OptimizerSpec, dict[str, Any]]:
    """Research-code forms of the optimizer, resolved before tracing:

    * a factory whose rate keyword is ``lr`` or ``step_size`` (:data:`RATE_ALIASES`)
      takes ``hparams["learning_rate"]`` under that name;
    * ``hparams["learning_rate"]`` may be any schedule callable ``step -> rate`` (an
      optax schedule, e.g. ``optax.warmup_cosine_decay_schedule(...)``): it is passed
      to the factory as is (its own numbers stay Python numbers, so they cannot be sweep
      axes) and ``history["lr"]`` records its value when the factory is one of optax's
      own optimizers (:func:`recorded_lr`);
    * a factory keyword that is also one of jaxgd's own names (a penalty, clipping, stop
      or warm-up parameter, or a parameter of the chosen schedule) is refused: the value
      could not go to both.

    Returns the spec and the hparams (a schedule callable replaced by a placeholder).
    """
    hp = dict(hparams)
    if spec.factory is None:
        return spec, hp
    factory = spec.factory
    sched_fn = None
    lr = hp.get("learning_rate")
    if callable(lr):
        if schedule != "constant":
            raise ValueError(f"hparams['learning_rate'] is a schedule function and "
                             f"schedule={schedule!r}: give one or the other")
        sched_fn = lr
        hp["learning_rate"] = 1.0  # traced placeholder: the factory gets the function
    base = factory.factory if isinstance(factory, _AdaptedFactory) else factory
    _, names = factory_params(base)
    alias = "learning_rate"
    if names and "learning_rate" not in names:
        alias = next((a for a in RATE_ALIASES if a in names), "learning_rate")
    own = set(PENALTY_KEYS) | set(CLIP_KEYS) | set(STOP_DEFAULTS) | schedule_keys(schedule)
    clash = sorted((set(names) - {alias}) & own)
    if clash:
        whose = (f"of schedule {schedule!r}" if clash[0] in schedule_keys(schedule)
                 else "a penalty, clipping, stop or warm-up parameter")
        raise ValueError(
            f"optimizer {spec.name!r} has a keyword {clash[0]!r} that is also jaxgd's own "
            f"hyper-parameter ({whose}): "
            "the value could not go to both; wrap the factory with functools.partial "
            f"to fix {clash[0]!r}, or rename it in a small wrapper")
    if alias == "learning_rate" and sched_fn is None:
        return spec, hp
    adapted = _AdaptedFactory(base, alias, sched_fn)
    numeric, _ = factory_params(adapted)
    return spec._replace(factory=adapted, numeric_names=frozenset(numeric)), hp


def schedule_fn(spec: OptimizerSpec) -> Callable[[Any], Any] | None:
    """The schedule callable given as the learning rate, or None."""
    f = spec.factory
    return f.schedule if isinstance(f, _AdaptedFactory) else None


def injected_lr(opt_state: Any) -> Any:
    """The learning rate held by the ``optax.inject_hyperparams`` states inside
    ``opt_state`` (searched through chains and other tuple states; the outermost one of
    each branch), NaN when several hold different rates, or None when there is none."""
    found = []

    def visit(s):
        hp = getattr(s, "hyperparams", None)
        if isinstance(hp, Mapping) and "learning_rate" in hp:
            found.append(jnp.asarray(hp["learning_rate"]))
            return
        if isinstance(s, tuple):
            for x in s:
                visit(x)

    visit(opt_state)
    if not found:
        return None
    first = found[0]
    same = jnp.all(jnp.asarray([jnp.all(f == first) for f in found]))
    return jnp.where(same, first, jnp.nan)


# optax optimizers whose ``learning_rate`` is not the step size: rprop's is the initial
# per-coordinate step, lbfgs's scales the step its line search finds
NOT_STEP_SIZE = frozenset({"rprop", "lbfgs"})


def rate_is_step_size(factory: Callable[..., Any] | None) -> bool:
    """Whether ``factory(learning_rate=lr)`` steps with ``lr`` itself: one of optax's own
    optimizers (``optax.sgd``, ``optax.adamw``, ...; the functions of ``optax._src.alias``
    and partials of them such as ``optax.nadam``), which jaxgd's built-in names are.
    Any other factory may build its own schedule from ``lr``, so jaxgd cannot know."""
    f = factory.factory if isinstance(factory, _AdaptedFactory) else factory
    while isinstance(f, functools.partial):
        if f.args:
            return False
        f = f.func
    from optax._src import alias

    name = getattr(f, "__name__", None)
    return (isinstance(name, str) and name not in NOT_STEP_SIZE
            and getattr(alias, name, None) is f)


def passed_lr(spec: OptimizerSpec, schedule: str, tc: Mapping[str, jax.Array],
              step: jax.Array) -> jax.Array:
    """The learning rate jaxgd gives the factory for update ``step``: a schedule
    callable's value or jaxgd's own schedule (NaN for a ready transformation). It scales
    the decoupled ``weight_decay``."""
    fn = schedule_fn(spec)
    if fn is not None:
        return jnp.asarray(fn(step), tc["learning_rate"].dtype)
    return current_lr(schedule, tc, step)


def recorded_lr(spec: OptimizerSpec, schedule: str, tc: Mapping[str, jax.Array],
                step: jax.Array, opt_state: Any = None) -> jax.Array:
    """The learning rate of update ``step`` as ``history["lr"]`` records it, only where it
    is known to be the step size: for jaxgd's built-in optimizers and optax's own
    (:func:`rate_is_step_size`) the rate jaxgd gives them (its schedule, or a schedule
    callable); for any other factory or a ready transformation the rate of an
    ``optax.inject_hyperparams`` state in ``opt_state`` (the rate it gave its inner
    optimizer at its last update: the step size when that is one of optax's, as in
    ``optax.inject_hyperparams(optax.adamw)(learning_rate=schedule)``); else NaN."""
    if spec.ready is None and rate_is_step_size(spec.factory):
        return passed_lr(spec, schedule, tc, step)
    lr = injected_lr(opt_state)
    return jnp.asarray(jnp.nan) if lr is None else jnp.asarray(lr)
