"""Validation of ``fit``/``sweep`` arguments, before anything is compiled.

:func:`prepare` checks every argument and builds the hashable
:class:`~jaxgd.spec.ProgramSpec` that keys the compiled program; :func:`split_hparams`
is the one splitter of a configuration's hyper-parameters into traced values and
structure (``fit``, ``prepare`` and the groups of a sweep call it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import hostloop, lossform, optim, options, stops
from ._checks import check_seed, is_int
from .data import BatchPlan, batch_plan, beyond_range, nonfinite_count, put_host
from .spec import ProgramSpec


def as_key(key: Any, name: str = "key") -> jax.Array:
    """A typed PRNG key from an int seed, a typed key or raw uint32[2] key data."""
    if key is None:
        return seed_key(0, name)
    if isinstance(key, bool):
        raise TypeError(f"{name}={key!r} must be an int seed or a jax.random.key")
    if isinstance(key, (int, np.integer)):
        return seed_key(int(key), name)
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single key, got shape {key.shape}")
        return key
    arr = np.asarray(key)
    if arr.shape == (2,) and arr.dtype == np.uint32:
        return jax.random.wrap_key_data(jnp.asarray(arr))
    raise TypeError(f"{name}={key!r} must be an int seed or a jax.random.key(...)")


def loss_key(run_key: Any, hparams: Mapping[str, Any], step: Any,
             micro: int | None = None) -> jax.Array:
    """The key the loss receives at update ``step`` (0-based count of applied updates).

    ``loss_key(key, hparams, t) = fold_in(config_key(key, hparams), t)``; with
    ``accumulate > 1``, micro-batch ``j`` of update ``t`` gets
    ``fold_in(loss_key(key, hparams, t), j)``. ``run_key`` is ``fit``'s ``key`` (an int
    seed as ``jax.random.key(seed)``) or a sweep configuration's ``seed``.
    """
    k = jax.random.fold_in(
        lossform.config_key(as_key(run_key), lossform.key_hparams(hparams)), step)
    return k if micro is None else jax.random.fold_in(k, micro)


def init_key(run_key: Any) -> jax.Array:
    """The key ``sweep(..., init=init)`` gives ``init`` for a configuration's seed:
    ``fold_in(key(seed), 0x5EED)``, a stream of its own (the seed's key itself drives the
    data order and the loss keys). ``init(jaxgd.init_key(seed))`` reproduces a
    configuration's initial parameters, e.g. to rerun it with ``fit``.

    Example:
      >>> k = init_key(3)
      >>> bool((jax.random.key_data(k) == jax.random.key_data(
      ...     jax.random.fold_in(jax.random.key(3), 0x5EED))).all())
      True
    """
    return lossform.init_key(as_key(run_key))


def key_stack(keys: list[jax.Array]) -> jax.Array:
    """``jnp.stack(keys)`` made on the host (stacking or indexing keys on the device
    compiles a small program)."""
    return jax.random.wrap_key_data(np.stack([np.asarray(jax.random.key_data(k))
                                              for k in keys]),
                                    impl=jax.random.key_impl(keys[0]))


# int seed -> (key, key stacked [1]), made outside any JAX transformation
_SEED_KEYS: dict[int, tuple[jax.Array, jax.Array]] = {}
_SEED_KEYS_MAX = 256


def _threefry_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """The threefry key of a seed below 2**32 (its key data ``[0, seed]``, what
    ``jax.random.key(seed)`` gives) and the same key stacked ``[1]``, wrapped from host data
    once per process (keys are immutable; each wrap is a dispatch, and
    ``jax.random.key`` compiles two small programs). Keys made while a function is being
    traced (a user's ``init`` under ``jit``) are tracers of that trace: never kept."""
    got = _SEED_KEYS.get(seed)
    if got is None:
        data = np.asarray([0, seed], np.uint32)
        got = (jax.random.wrap_key_data(data), jax.random.wrap_key_data(data[None]))
        if (len(_SEED_KEYS) < _SEED_KEYS_MAX
                and not any(isinstance(k, jax.core.Tracer) for k in got)):
            _SEED_KEYS[seed] = got
    return got


def _plain_seed(key: Any) -> bool:
    """Whether ``key`` is an int seed below 2**32 of the default threefry PRNG."""
    return (isinstance(key, (int, np.integer)) and not isinstance(key, bool)
            and 0 <= int(key) < 2**32 and jax.config.jax_default_prng_impl == "threefry2x32")


def seeds_key_stack(seeds: list[Any]) -> jax.Array:
    """``key_stack([as_key(s) for s in seeds])`` (None: seed 0), wrapped in one dispatch
    when every seed is an int seed of the default PRNG (their key data ``[0, seed]``), and
    a single one's kept per process."""
    seeds = [0 if s is None else s for s in seeds]
    if seeds and all(_plain_seed(s) for s in seeds):
        if len(seeds) == 1:
            return _threefry_keys(int(seeds[0]))[1]
        return jax.random.wrap_key_data(np.asarray([[0, int(s)] for s in seeds], np.uint32))
    return key_stack([as_key(s) for s in seeds])


MAX_COUNT = 2**31 - 1  # epoch and step counters of a program are int32


def seed_key(seed: int, name: str = "seed") -> jax.Array:
    """The PRNG key of an integer seed; distinct seeds give distinct keys.

    Seeds below 2**32 give ``jax.random.key(seed)`` (key data ``[0, seed]``), as always;
    seeds from 2**32 to 2**64 - 1 give the key data ``[seed >> 32, seed & 0xffffffff]``
    (what ``jax.random.key`` gives them with 64-bit integers enabled), whose high word is
    never 0, so they never repeat a smaller seed. Larger seeds are refused.
    """
    seed = check_seed(name, seed)
    if seed < 2**32:
        if jax.config.jax_default_prng_impl == "threefry2x32":
            return _threefry_keys(seed)[0]
        return jax.random.key(seed)
    impl_shape = jax.random.key_data(jax.random.key(0)).shape
    if impl_shape != (2,):
        raise ValueError(f"{name}={seed!r}: seeds >= 2**32 need the default threefry PRNG "
                         f"(this one has key data of shape {impl_shape})")
    words = np.asarray([seed >> 32, seed & 0xFFFFFFFF], np.uint32)
    return jax.random.wrap_key_data(jnp.asarray(words))


def check_params(params: Any, name: str = "params") -> Any:
    leaves, treedef = jax.tree.flatten(params)
    if not leaves:
        raise ValueError(f"{name} has no array leaves: {params!r}")
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        where = jax.tree_util.keystr(path) or "<root>"
        if isinstance(leaf, (str, bytes)) or leaf is None:
            raise TypeError(f"{name}{where}={leaf!r} is not an array")
        try:
            arr = np.asarray(leaf)
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"{name}{where} is not an array: {leaf!r}") from e
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(
                f"{name}{where} has dtype {arr.dtype}; trainable parameters must be floating "
                "point (e.g. jnp.zeros(3) rather than [0, 0, 0])")
        bad, held = nonfinite_count(arr)
        if bad:
            raise ValueError(f"{name}{where} contains non-finite values"
                             + beyond_range(arr.dtype, held))
        # a NumPy leaf is put on the device as it is (jnp.asarray would compile a copy
        # program per shape), all of them in one call; the same array, dtype and (not
        # weak) type
        out.append(leaf if isinstance(leaf, np.ndarray | np.generic) else jnp.asarray(leaf))
    return jax.tree.unflatten(treedef, put_host(out))


class Split(NamedTuple):
    """A configuration's hyper-parameters split for the program (:func:`split_hparams`)."""

    numeric: dict[str, Any]  # traced values (defaults of schedule and stops filled in)
    static: dict[str, Any]  # values the program is compiled for (e.g. ``nesterov=True``)
    loss_hp: dict[str, Any]  # the loss's own hyper-parameters (also in ``numeric``)
    given: frozenset[str]  # the names given (hparams and stop keywords), defaults aside


def split_hparams(loss, spec_opt, schedule: str, hparams: Mapping[str, Any] | None,
                  opts: options.Options | None = None) -> Split:
    """The one splitter of a configuration's hyper-parameters into traced values and
    structure (``fit``, every configuration of a sweep, and the groups' check that a
    group's rows share their structure all call it).

    Args:
      loss: the loss; names that no optimizer, schedule, penalty, clipping or stop
        condition knows go to a loss that declares an ``hparams`` parameter (traced, like
        the others).
      spec_opt: the resolved optimizer (:func:`jaxgd.optim.resolve_optimizer`).
      schedule: the learning-rate schedule's name.
      hparams: the configuration's hyper-parameters (a sweep axis's value included).
      opts: the run's options: their stop keywords that are given fill in names
        ``hparams`` lacks (a value in ``hparams``, e.g. a sweep axis, wins).

    Returns:
      :class:`Split`; a ValueError or TypeError naming a bad key or value.
    """
    hp = dict(hparams or {})
    stop_given = {} if opts is None else opts.pick(stops.STOP_PARAMS)
    for name, value in stop_given.items():
        if value is not None:
            hp.setdefault(name, value)
    given = frozenset(hp)
    loss_hp: dict[str, Any] = {}
    if optim.schedule_fn(spec_opt) is not None and callable(hp.get("learning_rate")):
        hp = {**hp, "learning_rate": 1.0}  # the factory gets the function itself
    if callable(loss) and lossform.declared(loss).get("hparams"):
        known = optim.known_names(spec_opt, schedule)
        factory = (optim.factory_params(spec_opt.factory)[1]
                   if spec_opt.factory is not None else set())
        for k in list(hp):
            if isinstance(k, str) and k not in known and k not in factory:
                loss_hp[k] = optim.check_number(k, hp[k])
        hp = {k: v for k, v in hp.items() if k not in loss_hp}
    numeric, static = optim.optimizer_hparams(spec_opt, schedule, hp)
    return Split({**numeric, **loss_hp}, static, loss_hp, given)


STATE_COLLECTIONS = ("batch_stats", "cache", "intermediates")


def check_no_state_in_params(params: Any, name: str = "params") -> None:
    """Refuse flax model state passed as trainable parameters: it would be trained (its
    gradient is zero) and the updates the model returns would be dropped, silently."""
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        for entry in path:
            k = getattr(entry, "key", getattr(entry, "name", None))
            if k in STATE_COLLECTIONS:
                raise ValueError(
                    f"{name}{jax.tree_util.keystr(path)} is flax model state ({k!r}), not a "
                    f"trainable parameter: pass variables['params'] as params and "
                    f"variables[{k!r}] as state=, with a loss(params, batch, *, state) "
                    "returning (loss, new_state) (see jaxgd.lossform)")


def check_state(state: Any, params: Any, name: str = "state") -> Any:
    """The model state as arrays (any pytree of arrays, or None)."""
    if state is None:
        return None
    out = []
    leaves, treedef = jax.tree.flatten(state)
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        where = jax.tree_util.keystr(path) or "<root>"
        try:
            out.append(jnp.asarray(leaf))
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"{name}{where} is not an array: {leaf!r}") from e
        if jnp.issubdtype(out[-1].dtype, jax.dtypes.prng_key):
            raise TypeError(
                f"{name}{where} is a PRNG key array ({out[-1].dtype}), e.g. an nnx.Rngs "
                "stream split into the state: the state holds no keys; declare "
                "loss(..., key, train) and draw from the step's key instead, e.g. "
                "model(x, nnx.Rngs(dropout=key) if train else None)")
    return jax.tree.unflatten(treedef, out)


def check_standardize(standardize: Any, data: Any) -> tuple[int, ...]:
    """Leaf indices (in ``jax.tree.leaves(data)`` order) to standardise in the program."""
    if standardize is None or standardize is False:
        return ()
    leaves = jax.tree.leaves(data)
    if standardize is True:
        idx: tuple[Any, ...] = (0,)
    elif isinstance(standardize, int):
        idx = (standardize,)
    elif isinstance(standardize, (tuple, list)):
        idx = tuple(standardize)
    else:
        raise TypeError(f"standardize={standardize!r} must be True, a leaf index or a tuple "
                        "of leaf indices")
    for i in idx:
        if not is_int(i) or not 0 <= i < len(leaves):
            raise ValueError(f"standardize={standardize!r}: {i!r} is not a leaf index of data "
                             f"(it has {len(leaves)} leaves)")
        if not jnp.issubdtype(leaves[i].dtype, jnp.floating):
            raise TypeError(f"standardize={standardize!r}: data leaf {i} has dtype "
                            f"{leaves[i].dtype}; only floating features can be standardised")
    return tuple(sorted({int(i) for i in idx}))


def tc_array(name: str, value: Any, dtype) -> np.ndarray:
    """A traced-config value as a host array of the run's dtype (int32 for counts).

    Host (numpy) arrays: the whole dictionary then goes to the device in one transfer.
    """
    if name in optim.INT_KEYS:
        return np.asarray(value, np.int32)
    if name in optim.STOP_DEFAULTS:  # thresholds: compared only, never mixed into updates
        return np.asarray(value, np.promote_types(np.dtype(dtype), np.float32))
    return np.asarray(value, np.dtype(dtype))


class Prepared(NamedTuple):
    """A checked configuration: the program's spec and the arrays it runs on."""

    spec: ProgramSpec
    params: Any
    data: Any
    val_data: Any
    numeric: dict[str, Any]  # traced hyper-parameters (defaults filled in)
    state: Any = None  # the model's initial non-trainable state
    combined: Any = None  # lossform.Combined: rebuilds a model object from trained leaves
    orders: Any = None  # shuffle= explicit orders: int32 [E, n_train] (else None)


def resolved_metrics(metrics: str, no_pass: bool, by_steps: bool) -> str:
    """What an evaluation computes: ``"batch"`` where there is no pass over the data
    (``no_pass``: a token stream, host-fed data) and for ``"auto"`` with a step budget (an
    evaluation per update would otherwise pass over all the data at each), ``"full"`` for
    ``"auto"`` with an epoch budget, else ``metrics``."""
    if no_pass or (metrics == "auto" and by_steps):
        return "batch"
    return "full" if metrics == "auto" else metrics


def prepare(
    loss: Callable[..., Any], params: Any, data: Any, opts: options.Options, *,
    init_fn: Callable[[jax.Array], Any] | None = None, data_checked: bool = False,
    n_train: int | None = None, val_from_index: bool = False,
) -> Prepared:
    """Validate every argument (before anything is compiled) and build the ProgramSpec.

    ``opts``: the call's :class:`jaxgd.options.Options` (as the caller's keywords give
    them; the options ``fit`` and ``sweep`` share are checked and normalised here). The other
    keywords are a sweep's: ``init_fn`` draws the parameters from each key,
    ``data_checked`` skips a second validation of ``data``, ``n_train`` is a fold's
    training size and ``val_from_index`` marks a fold's held-out part as validation.
    """
    from .data import check_orders, validate_data

    o = opts.checked(_PROGRAM_OPTIONS)
    units, by_steps = options.budget(o.epochs, o.steps)
    what = "steps" if by_steps else "epochs"
    if units > MAX_COUNT:
        raise ValueError(f"{what}={units} is more than the {MAX_COUNT} (2**31 - 1) "
                         f"{what} a program counts (its epoch and step counters are int32)")
    check_step_options(o, by_steps)
    from .feed import HostData, host_data

    host = host_data(data, o.feed)
    if host is not None:
        data = host
        check_host_options(o, host, by_steps, units)
        n = host.n
    elif data_checked:  # validated by the caller (sweep): skip a second pass over the data
        n = jax.tree.leaves(data)[0].shape[0]
    else:
        data, n = validate_data(data, "data")
    val_data = o.val_data
    if o.windows is not None:
        val_data = check_windows(o, data, val_data)
    elif val_data is not None:
        val_data, _ = validate_data(val_data, "val_data")
        ref = data.probe() if isinstance(data, HostData) else data
        if jax.tree.structure(val_data) != jax.tree.structure(ref):
            raise ValueError("val_data must have the same structure as data")
        paths = jax.tree_util.tree_flatten_with_path(ref)[0]
        for (path, d), v in zip(paths, jax.tree.leaves(val_data), strict=True):
            if d.shape[1:] != v.shape[1:]:
                where = jax.tree_util.keystr(path)
                raise ValueError(
                    f"val_data{where} has shape {v.shape} but data{where} has shape "
                    f"{d.shape}: all but the leading (sample) axis must match")
    combined = None
    if init_fn is not None:
        parts = lossform.partition_init(init_fn) if callable(loss) else None
        if parts is not None:  # init returns a model object: trained part + held leaves
            params, static, mask, treedef = parts
            init_fn = lossform.TrainedInit(init_fn, treedef, mask)
            loss = combined = lossform.Combined(loss, treedef, static, mask)
        else:
            params = jax.eval_shape(init_fn, jax.random.key(0))
        params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    parts = lossform.partition(params) if callable(loss) and combined is None else None
    if parts is not None:  # a model object: train its floating arrays, hold the rest
        params, static, mask, treedef = parts
        if not any(mask):
            raise TypeError("params has no floating-point array leaves to train")
        loss = combined = lossform.Combined(loss, treedef, static, mask)
    params = check_params(params)
    check_no_state_in_params(params)
    plan = (_plan(n if n_train is None else n_train, o) if host is None or not host.iterable
            else BatchPlan(n, n // o.accumulate, False, 1, 1, 0))  # a batch per update
    orders = (check_orders(opts.shuffle, plan.n) if o.shuffle == options.GIVEN
              else None)
    if not by_steps and units * plan.steps_per_epoch > MAX_COUNT:
        raise ValueError(
            f"epochs={units} x {plan.steps_per_epoch} steps per epoch = "
            f"{units * plan.steps_per_epoch} steps is more than the {MAX_COUNT} "
            "(2**31 - 1) a program counts (its step counter is int32)")
    spec_opt = optim.resolve_optimizer(o.optimizer)
    spec_opt, _ = optim.adapt_optimizer(spec_opt, o.schedule, o.hparams or {})
    state = check_state(o.state, params)
    numeric, static, loss_hp, given = split_hparams(loss, spec_opt, o.schedule, o.hparams, o)
    probe = data.probe() if host is not None else jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((min(2, a.shape[0]),) + a.shape[1:], a.dtype), data)
    if o.windows is not None:  # a batch of windows: (x, y), each [B, L]
        probe = (jax.ShapeDtypeStruct((2, o.windows), data.dtype),) * 2
    if not callable(loss):
        raise TypeError(f"loss={loss!r} must be a function loss(params, batch) -> scalar")
    form = lossform.check_form(loss, params, probe, state, loss_hp)
    has_aux = form.has_aux
    try:
        static_items = tuple(sorted(static.items()))
        hash(static_items)
    except TypeError as e:
        raise TypeError(f"non-numeric hparams must be hashable, got {static}") from e
    metrics = resolved_metrics(o.metrics, o.windows is not None or host is not None, by_steps)
    spec = ProgramSpec(
        loss=loss, has_aux=has_aux, opt=spec_opt, schedule=o.schedule,
        static_hparams=static_items, numeric_names=tuple(sorted(numeric)), plan=plan,
        accumulate=o.accumulate, shuffle=o.shuffle, epochs=units,
        metrics=metrics, record_steps=o.record_steps,
        record_params=o.record_params, restore_best=o.restore_best,
        penalty_mask=o.penalty_mask, init_fn=init_fn,
        has_val=val_data is not None or val_from_index, track_init=metrics != "batch",
        full_grad=metrics == "full_grad" or (metrics == "full" and "grad_tol" in given),
        eval_every=o.eval_every, progress=o.progress,
        standardize=() if host is not None else check_standardize(o.standardize, data),
        form=form, by_steps=by_steps, window=o.windows or 0,
        fed=0 if host is None else fed_rows(host, plan, o),
    )
    spec = with_loop(spec, o.loop, params, probe, state)
    return Prepared(spec, params, data, val_data, numeric, state, combined, orders)


def with_loop(spec: ProgramSpec, loop, params, probe, state) -> ProgramSpec:
    """``spec`` with the execution plan of its updates (the ``loop=`` option, see
    :func:`jaxgd.hostloop.resolve_loop`); host-fed data on several devices runs the scan
    plan (its fed blocks are split over the devices' streams inside that program)."""
    if spec.fed and jax.device_count() > 1:
        if loop not in ("auto", "scan"):
            raise ValueError(f"loop={loop!r}: host-fed data (feed=) on {jax.device_count()} "
                             "devices runs the scan plan; give loop='auto' or 'scan'")
        return spec._replace(loop="scan", host_steps=1)
    plan, k = hostloop.resolve_loop(loop, lambda: _loss_has_conv(spec, params, probe, state))
    return spec._replace(loop=plan, host_steps=k)


_HAS_CONV: dict[Any, bool] = {}  # (loss, form, argument shapes) -> has a convolution


def _loss_has_conv(spec: ProgramSpec, params, probe, state) -> bool:
    """Whether a training call of the loss (traced on the probe batch) has a convolution
    (traced once per loss, form and argument shapes)."""
    f = spec.form

    def trace() -> bool:
        # abstract arguments, the key made in the trace: nothing is computed (an array
        # made here would compile a program per shape; int64 labels are traced as the
        # device holds them)
        hp = ({k: jax.ShapeDtypeStruct((), jnp.float32) for k in f.hparams}
              if f.takes_hparams else None)
        batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct(
            s.shape, jax.dtypes.canonicalize_dtype(s.dtype)), probe)

        def fn(p, b, s, h):
            key = jax.random.key(0) if f.key else None
            return lossform.call(f, spec.loss, p, b, state=s, key=key, train=True,
                                 hparams=h)[0]

        return hostloop.has_convolution(fn, params, batch, state, hp)

    return lossform.by_shapes(_HAS_CONV, (spec.loss, f), (params, probe, state), trace)


def program_data(p: Prepared, data: Any = None) -> Any:
    """The program's ``data`` argument: ``data`` (default ``p.data``), paired with the
    explicit orders of ``shuffle=`` when there are some (``(data, orders)``: a program
    input like the data, so new orders of the same shape never recompile)."""
    data = p.data if data is None else data
    if p.spec.fed:  # host-fed: the feeder reads the orders itself
        return p.data
    return data if p.orders is None else (data, p.orders)


# the options that shape the program (fit's and sweep's common ones)
_PROGRAM_OPTIONS = tuple(o.name for o in options.options_for(options.BOTH)
                         if o.scope == options.BOTH)


def check_step_options(o: options.Options, by_steps: bool) -> None:
    """The options a step budget or token windows exclude (before anything compiles)."""
    if by_steps and o.shuffle == "uniform":
        raise ValueError("shuffle='uniform' draws a permutation per epoch and cannot be "
                         f"combined with steps={o.steps}: use shuffle=True (a keyed Feistel "
                         "permutation, computed per step) or False")
    if o.windows is None:
        return
    if not by_steps:
        raise ValueError(f"windows={o.windows} draws random windows, which have no epochs: "
                         "give a budget of updates, steps=")
    if o.batch_size is None or o.batch_size == "full":
        raise ValueError(f"windows={o.windows} needs an integer batch_size (windows per "
                         f"step), got batch_size={o.batch_size!r}")
    if o.metrics == "full_grad":
        raise ValueError("metrics='full_grad' needs a pass over the training data, which a "
                         f"token stream (windows={o.windows}) does not have: use 'batch'")
    for name in ("standardize", "drop_last"):
        if getattr(o, name):
            raise ValueError(f"{name}={getattr(o, name)!r} cannot be combined with "
                             f"windows={o.windows} (a token stream)")
    if o.shuffle == options.GIVEN:
        raise ValueError(f"shuffle= an order array cannot be combined with "
                         f"windows={o.windows} (random windows have no sample order)")


def check_host_options(o: options.Options, host, by_steps: bool, units: int) -> None:
    """The options host-fed data (:mod:`jaxgd.feed`) excludes or needs, checked before
    anything compiles."""
    kind = "an iterable of batches" if host.iterable else "host-fed arrays"
    if not by_steps:
        raise ValueError(f"data is {kind} (feed={o.feed!r}), which is fed a block of updates "
                         f"at a time: give a budget of updates, steps= (epochs={o.epochs!r} "
                         f"is {host.n if not host.iterable else 'N'}/batch_size updates each)")
    if o.windows is not None:
        raise ValueError(f"windows={o.windows} draws windows from a token stream on the "
                         f"device and cannot be combined with {kind} (feed={o.feed!r}): "
                         "give the stream as an array with feed='device'")
    if o.metrics == "full_grad":
        raise ValueError(f"metrics='full_grad' needs a pass over the training data, which "
                         f"{kind} does not have on the device: use 'batch'")
    if o.standardize:
        raise ValueError(f"standardize={o.standardize!r} needs statistics of the whole "
                         f"training data, which {kind} does not have on the device: "
                         "standardise the data beforehand")
    if not host.iterable:
        return
    if options.normalize_shuffle("shuffle", o.shuffle) == options.GIVEN:
        raise ValueError("shuffle= an order array cannot be combined with an iterable of "
                             "batches (its batches are used in the order it gives them)")
    if o.batch_size not in (None, host.n):
        raise ValueError(f"batch_size={o.batch_size!r} differs from the iterable's batches of "
                         f"{host.n} samples: leave batch_size out (None) or make them agree")
    if host.n % o.accumulate:
        raise ValueError(f"accumulate={o.accumulate} does not divide the iterable's batches "
                         f"of {host.n} samples")
    size = host.length()
    if size is not None and size < units:
        raise ValueError(f"data gives {size} batches (len(data)), but steps={units} needs "
                         f"{units} (one batch per update)")
    if o.out is not None and not host.reiterable:
        raise ValueError(f"out={o.out!r} resumes a run, but data is a one-shot iterator "
                         f"({type(host.source).__name__}) whose position cannot be restored "
                         "(it has no get_state()/set_state() with a JSON or bytes state, as "
                         "grain's iterators have): give a re-iterable source (iter() starts "
                         "over, like a DataLoader; it must give the same batches every time), "
                         "a grain iterator, or leave out out=")


def fed_rows(host, plan: BatchPlan, o: options.Options) -> int:
    """Evaluations per program call of host-fed data: its fed block (``eval_every``
    updates of ``batch_size * accumulate`` samples per evaluation) held to
    :data:`jaxgd.feed.FEED_BLOCK_BYTES` per stream, at least one evaluation."""
    from .feed import FEED_BLOCK_BYTES

    per_eval = o.eval_every * plan.batch_size * o.accumulate * host.sample_bytes()
    return max(1, FEED_BLOCK_BYTES // max(1, per_eval))


def check_windows(o: options.Options, data: Any, val_data: Any) -> Any:
    """The token stream ``data`` and fixed validation windows ``val_data`` checked for
    ``windows=L``; returns ``val_data`` (pairs of ``[M, L]`` arrays, or None)."""
    from .data import check_tokens, validate_data

    if not hasattr(data, "shape"):
        raise TypeError(f"with windows={o.windows}, data must be a 1-D integer array of "
                        f"tokens, got {type(data).__name__}")
    check_tokens(data, "data", o.windows)
    if val_data is None:
        return None
    val_data, _ = validate_data(val_data, "val_data")
    leaves = jax.tree.leaves(val_data)
    if (jax.tree.structure(val_data) != jax.tree.structure((0, 0))
            or any(v.shape[1:] != (o.windows,) for v in leaves)):
        raise ValueError(f"with windows={o.windows}, val_data must be (x, y) windows of "
                         f"shape [M, {o.windows}] (jaxgd.data.token_windows(val_tokens, "
                         f"{o.windows})), got shapes {[tuple(v.shape) for v in leaves]}")
    return val_data


def _plan(n_eff: int, o: options.Options) -> BatchPlan:
    """The batch plan of an epoch of ``n_eff`` samples; with ``accumulate`` > 1 an update
    holds ``accumulate`` batches."""
    accumulate, batch_size, drop_last = o.accumulate, o.batch_size, o.drop_last
    if o.windows is not None:  # every step: batch_size * accumulate random windows
        return BatchPlan(n_eff - o.windows, batch_size, False, 1, 1, 0)
    plan = batch_plan(n_eff, batch_size, drop_last)
    if accumulate > 1 and plan.full_steps == 0:
        raise ValueError(
            f"accumulate={accumulate} with batch_size={batch_size} leaves no full update in "
            f"an epoch of {n_eff} samples")
    if accumulate > 1:
        # an update holds accumulate * batch_size samples
        if drop_last and plan.batch_size * accumulate > n_eff:
            raise ValueError(
                f"accumulate={accumulate} x batch_size={plan.batch_size} = "
                f"{plan.batch_size * accumulate} > n={n_eff} with drop_last=True leaves no "
                "update in an epoch")
        plan = batch_plan(n_eff, plan.batch_size * accumulate, drop_last)
        plan = plan._replace(batch_size=plan.batch_size // accumulate)
    return plan
