"""The forms a loss may take, and the per-step PRNG keys of a stochastic loss.

A loss is always called ``loss(params, batch, ...)``: its first two positional parameters
are the parameters and the batch, whatever their names (``loss(state, batch)`` for the
``state`` of ``nnx.split`` included). After them it may declare any of these keyword
parameters, detected once by *name* from its signature:

* ``key``: a PRNG key, different at every training step (see :func:`jaxgd.loss_key`); ``None``
  in evaluation passes (full-data loss, validation loss, the initial loss), which must
  then be deterministic (dropout off).
* ``train``: ``True`` in training steps, ``False`` in evaluation passes (for flax's
  ``deterministic=not train`` / ``use_running_average=not train``).
* ``state``: non-trainable model state (BatchNorm statistics; any pytree given as
  ``fit(..., state=...)``). The loss then returns ``(loss, new_state)`` or
  ``(loss, new_state, metrics)``; the new state must have the structure, shapes and
  dtypes of the old. It receives no gradient, no optimizer update and no penalty; it is
  replaced after every accepted step; evaluation passes call the loss with
  ``train=False`` / ``key=None`` and discard the state they return.
* ``hparams``: a dict of the loss's own traced hyper-parameters: every ``hparams`` name
  (or sweep axis) that is not the optimizer's, the schedule's, a penalty, clipping or
  stop parameter (e.g. a dropout rate) goes to the loss, and must be read by it.

Without ``state``, a loss returns a scalar or ``(scalar, metrics)``; metrics is a dict
of scalars recorded per evaluation (any other aux is ignored, as before).

Parameters and state that hold objects (pytree nodes other than dicts, lists, tuples and
``None``: flax nnx ``Variable``s, equinox Modules) reach the loss as fresh containers made
in the trace that calls it (the same arrays): ``nnx.merge`` then builds a model whose
``BatchStat``s the loss may update, although jaxgd carries the state across trace levels
(a jitted loop, the gradient's trace). Plain pytrees are passed as they are.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import history

__all__ = ["KEY_TAG", "LossForm", "check_form", "config_key", "key_hparams", "partition"]

KEY_TAG = 0x4C055  # fold_in(run key, KEY_TAG) starts a configuration's loss keys
INIT_FOLD = 0x5EED  # fold_in(run key, INIT_FOLD) is sweep(init=...)'s key
OPTIONAL = ("key", "train", "state", "hparams")
# names a metric of the loss may not take (besides names starting with batch_, val_, params)
RESERVED = tuple(c for c in history.STANDARD if not c.startswith(("batch_", "val_"))) + (
    "state",)


class LossForm(NamedTuple):
    """What a loss declares and returns (hashable: part of the program's spec)."""

    key: bool = False
    train: bool = False
    state: bool = False
    hparams: tuple[str, ...] = ()  # the loss's own hyper-parameter names
    takes_hparams: bool = False  # declares an hparams parameter
    has_aux: bool = False  # returns (loss, aux) (no state)
    metrics: tuple[str, ...] = ()  # sorted metric names
    objects: bool = False  # params or state hold objects: the loss gets fresh containers

    @property
    def plain(self) -> bool:
        return not (self.key or self.train or self.state or self.takes_hparams
                    or self.metrics)


_CACHE_MAX = 256  # entries of each memo below (emptied when full)
_DECLARED: dict[Any, dict[str, bool]] = {}  # (loss, name) -> declared (a sweep asks per config)
# forms already checked: (loss, name, abstract signature of the arguments) -> LossForm.
# Tracing the loss costs ~2 ms, a noticeable share of a short ``fit`` call; a loss and
# argument shapes seen before give the same form (as jax.jit's own cache assumes).
_FORMS: dict[Any, LossForm] = {}


def clear_memos() -> None:
    """Forget the losses' declared parameters and checked forms (they hold the losses)."""
    _DECLARED.clear()
    _FORMS.clear()


def _memo(cache: dict[Any, Any], key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, kept in ``cache`` under ``key``; an unhashable key (an unhashable
    loss or static leaf) computes every time, and an error is never kept."""
    try:
        hit = cache.get(key)
    except TypeError:
        return compute()
    if hit is None:
        hit = compute()
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = hit
    return hit


def declared(loss: Callable[..., Any], name: str = "loss") -> dict[str, bool]:
    """The optional keyword parameters ``loss`` declares (by name)."""
    return dict(_memo(_DECLARED, (loss, name), lambda: _declared(loss, name)))


def _declared(loss: Callable[..., Any], name: str) -> dict[str, bool]:
    try:
        sig = inspect.signature(loss)
    except (TypeError, ValueError):  # a builtin or C callable: the plain form
        return {k: False for k in OPTIONAL}
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    later = {p.name: p for p in params if p not in positional[:2]}  # after params, batch
    out = {k: k in later for k in OPTIONAL}
    required = [p for p in positional[2:] if p.default is p.empty and p.name not in OPTIONAL]
    required += [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty
                 and p.name not in OPTIONAL]
    if required:
        raise TypeError(
            f"{name} has a required parameter {required[0].name!r} that jaxgd never gives: "
            "the form is loss(params, batch) with optional keyword parameters "
            f"{', '.join(OPTIONAL)} (by these names)")
    for k in OPTIONAL:
        if k in later and later[k].kind == inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"{name}'s parameter {k!r} is positional-only; jaxgd passes it "
                            f"by name ({k}=...)")
    return out


_CONTAINERS = (dict, list, tuple, type(None))


def holds_objects(tree: Any) -> bool:
    """Whether ``tree`` has a pytree node other than a dict, list, tuple or ``None`` (a
    flax nnx ``State`` of ``Variable``s, an equinox Module, a NamedTuple)."""
    def walk(td) -> bool:
        data = td.node_data()
        return data is not None and (data[0] not in _CONTAINERS
                                     or any(walk(c) for c in td.children()))
    return walk(jax.tree.structure(tree))


def fresh(tree: Any) -> Any:
    """``tree`` with new containers made in the current trace, holding the same leaves.
    A flax nnx ``Variable`` records the trace it was made in and refuses updates from any
    other (``TraceContextError``); jaxgd's carries (a jitted loop's state, the model state
    passed through ``jax.value_and_grad`` undifferentiated) are made in outer traces."""
    return jax.tree.map(lambda x: x, tree)


def call(form: LossForm, loss, params, batch, *, state=None, key=None, train=True,
         hparams=None):
    """Call ``loss`` in its form: (loss value, new state or None, metrics dict). Params
    and state that hold objects are handed over in fresh containers (:func:`fresh`)."""
    if form.objects:
        params, state = fresh(params), fresh(state)
    kw: dict[str, Any] = {}
    if form.key:
        kw["key"] = key
    if form.train:
        kw["train"] = train
    if form.state:
        kw["state"] = state
    if form.takes_hparams:
        kw["hparams"] = {} if hparams is None else hparams
    out = loss(params, batch, **kw)
    if form.state:
        if len(out) == 3:
            value, new_state, metrics = out
        else:
            (value, new_state), metrics = out, {}
    elif form.has_aux:
        value, metrics = out
    else:
        value, metrics, new_state = out, {}, None
    if not form.state:
        new_state = None
    metrics = {m: jnp.asarray(metrics[m]) for m in form.metrics} if form.metrics else {}
    return value, new_state, metrics


def _describe(tree) -> list[tuple[str, Any, Any]]:
    return [(jax.tree_util.keystr(p), getattr(x, "shape", None), getattr(x, "dtype", None))
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _signature(tree) -> tuple[Any, ...]:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((type(x).__name__, np.shape(x), str(getattr(x, "dtype", "")),
                           getattr(x, "weak_type", None)) for x in leaves)


def by_shapes(cache: dict[Any, Any], key: Any, trees: tuple[Any, ...],
              compute: Callable[[], Any]) -> Any:
    """``compute()`` (a fact found by tracing a function, e.g. the loss) kept in ``cache``
    under ``key`` (the function, and what else its trace depends on) and the shapes,
    dtypes and structure of ``trees``: the same function on arguments of the same
    shapes traces to the same program."""
    return _memo(cache, (key,) + tuple(_signature(t) for t in trees), compute)


def check_form(loss, params, batch, state, hparams: Mapping[str, Any], name: str = "loss"
               ) -> LossForm:
    """Detect and check the form of ``loss`` by tracing it abstractly (training and
    evaluation calls); refuse what does not fit, naming the argument and the form.
    A form found before for the same loss and argument shapes is reused."""
    key = (loss, name, _signature(params), _signature(batch), _signature(state),
           tuple(sorted((k, np.shape(v)) for k, v in hparams.items())))
    return _memo(_FORMS, key, lambda: _check_form(loss, params, batch, state, hparams, name))


def _check_form(loss, params, batch, state, hparams: Mapping[str, Any], name: str
                ) -> LossForm:
    d = declared(loss, name)
    if d["state"] and state is None:
        raise TypeError(f"{name} declares a 'state' parameter but no state was given: pass "
                        "the model's initial non-trainable state, fit(..., state=...)")
    if state is not None and not d["state"]:
        raise TypeError(f"state= was given but {name} has no 'state' parameter: declare "
                        "loss(params, batch, *, state) returning (loss, new_state) or "
                        "(loss, new_state, metrics)")
    hp_names = tuple(sorted(hparams)) if d["hparams"] else ()
    if hparams and not d["hparams"]:
        raise AssertionError("loss hyper-parameters without an hparams parameter")
    base = LossForm(key=d["key"], train=d["train"], state=d["state"], hparams=hp_names,
                    takes_hparams=d["hparams"],
                    objects=holds_objects(params) or holds_objects(state))
    # abstract hyper-parameters, the key made in the trace: nothing is computed (an
    # array made here would compile a program per shape)
    hp = {k: jax.ShapeDtypeStruct(np.shape(v), jnp.float32) for k, v in hparams.items()}
    read: set[str] = set()

    class Recording(dict):
        def __getitem__(self, k):
            read.add(k)
            return super().__getitem__(k)

        def get(self, k, default=None):
            read.add(k)
            return super().get(k, default)

    raw: list[Any] = []

    def run(train):
        def f(p, b, s, h):
            kw: dict[str, Any] = {}
            if base.key:
                kw["key"] = jax.random.key(0) if train else None
            if base.train:
                kw["train"] = train
            if base.state:
                kw["state"] = s
            if base.takes_hparams:
                kw["hparams"] = Recording(h)
            out = loss(p, b, **kw)
            value = out[0] if isinstance(out, tuple) else out
            raw.append(type(value))
            return out
        return f

    mode = "training" if (base.key or base.train or base.state) else ""
    try:
        out = jax.eval_shape(run(True), params, batch, state, hp)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"{name} could not be evaluated as {_form_text(base)}"
                        f"{' in a ' + mode + ' step' if mode else ''}: "
                        f"{type(e).__name__}: {e}") from e
    if raw and issubclass(raw[0], int | float | np.number) and not issubclass(raw[0], bool):
        raise TypeError(f"{name} returned a Python/NumPy number ({raw[0].__name__}), not a "
                        "JAX array: it does not depend on params; compute it with jax.numpy "
                        "from params and batch")
    unread = sorted(set(hp) - read)
    if unread:
        raise ValueError(f"hparams key {unread[0]!r} is not a hyper-parameter of the "
                         f"optimizer, schedule or stop conditions, and {name} does not read "
                         f"it from its hparams argument")
    form = _returned(base, out, state, name, batch)
    if base.key or base.train or base.state:
        try:  # the evaluation call: key=None, train=False
            out_eval = jax.eval_shape(run(False), params, batch, state, hp)
        except Exception as e:  # noqa: BLE001
            raise TypeError(
                f"{name} failed in an evaluation call (key=None, train=False, used for the "
                f"full-data and validation loss): {type(e).__name__}: {e}") from e
        if _returned(base, out_eval, state, name, batch) != form:
            raise TypeError(f"{name} returns a different form in evaluation calls "
                            "(key=None, train=False) than in training steps")
    return form


def _form_text(f: LossForm) -> str:
    kws = [k for k in OPTIONAL if (f.takes_hparams if k == "hparams" else getattr(f, k))]
    return "loss(params, batch" + "".join(f", {k}=..." for k in kws) + ")"


def _returned(base: LossForm, out, state, name: str, batch: Any = None) -> LossForm:
    """The form with what ``out`` (an abstract return value) holds, checked."""
    metrics: Any = None
    if base.state:
        if not isinstance(out, tuple) or len(out) not in (2, 3):
            raise TypeError(f"{name} declares 'state' and must return (loss, new_state) or "
                            f"(loss, new_state, metrics), got {type(out).__name__}")
        value, new_state = out[0], out[1]
        metrics = out[2] if len(out) == 3 else None
        if jax.tree.structure(new_state) != jax.tree.structure(state):
            raise TypeError(f"{name} returned a new state whose structure differs from the "
                            f"state given: {jax.tree.structure(new_state)} vs "
                            f"{jax.tree.structure(state)}")
        for (p, s0, d0), (_, s1, d1) in zip(_describe(state), _describe(new_state),
                                            strict=True):
            if s0 != s1 or d0 != d1:
                raise TypeError(f"{name} returned state{p} with shape {s1} and dtype {d1}; "
                                f"the state given has shape {s0} and dtype {d0}")
        has_aux = False
    else:
        has_aux = isinstance(out, tuple) and len(out) == 2
        value = out[0] if has_aux else out
        if has_aux:
            metrics = out[1]
            if not isinstance(metrics, Mapping):
                metrics = None  # another aux: ignored, as always
    if not hasattr(value, "shape") or value.shape != ():
        shape = getattr(value, "shape", type(value).__name__)
        rows = {np.shape(a)[0] for a in jax.tree.leaves(batch) if np.ndim(a)}
        on = f" on a batch of {rows.pop()} samples" if len(rows) == 1 else ""
        raise TypeError(f"{name} must return a scalar (or (scalar, aux)): reduce over the "
                        f"batch (e.g. jnp.mean); called{on} it returned shape {shape}")
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"{name} must return a floating-point scalar, got dtype {value.dtype}")
    names: tuple[str, ...] = ()
    if metrics is not None:
        if not isinstance(metrics, Mapping):
            raise TypeError(f"{name}'s metrics must be a dict of scalars, got "
                            f"{type(metrics).__name__}")
        for k, v in metrics.items():
            if not isinstance(k, str) or not k.isidentifier():
                raise TypeError(f"{name}'s metrics key {k!r} must be a name (str)")
            shape = getattr(v, "shape", None)
            if shape != ():
                hint = ("" if base.state else
                        ": if it is model state (e.g. flax batch_stats from mutable=...), "
                        "declare loss(params, batch, *, state) and pass fit(..., state=...)")
                raise TypeError(f"{name}'s metrics[{k!r}] has shape {shape}; metrics must "
                                f"be scalars{hint}")
            if k in RESERVED or k.startswith(("batch_", "val_", history.PARAMS_PREFIX)):
                raise ValueError(f"{name}'s metrics key {k!r} clashes with a history name "
                                 f"(reserved: {', '.join(RESERVED)} and names starting with "
                                 "batch_, val_ or params): rename it")
        names = tuple(sorted(metrics))
    return base._replace(has_aux=has_aux, metrics=names)


# ----------------------------------------------------------------------------- keys


def key_bits(hparams: Mapping[str, Any]) -> np.ndarray:
    """The uint32 words :func:`config_key` folds in: the float32 bit pattern of each
    value, in sorted-name order."""
    vals = [np.float32(float(hparams[k])) for k in sorted(hparams)]
    return np.asarray(vals, np.float32).view(np.uint32)


def init_key(key: jax.Array) -> jax.Array:
    """The key ``sweep(..., init=...)`` draws a seed's initial parameters from
    (``jaxgd.init_key`` for an int seed)."""
    return jax.random.fold_in(key, INIT_FOLD)


def config_key(run_key: jax.Array, hparams: Mapping[str, Any] | jax.Array) -> jax.Array:
    """A configuration's loss key: ``fold_in(run_key, KEY_TAG)``, then ``fold_in`` of the
    float32 bit pattern (as uint32) of each of its numeric hyper-parameters in sorted-name
    order (``hparams`` as given to ``fit``, or a sweep configuration's base hparams and
    axes; stop-condition parameters excluded)."""
    k = jax.random.fold_in(run_key, KEY_TAG)
    bits = key_bits(hparams) if isinstance(hparams, Mapping) else hparams
    for j in range(bits.shape[0]):
        k = jax.random.fold_in(k, bits[j])
    return k


def key_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a configuration's key covers: numeric values (not booleans),
    stop-condition parameters excluded."""
    from .stops import STOP_PARAMS

    out = {}
    for k, v in hparams.items():
        if k in STOP_PARAMS or isinstance(v, bool | str) or v is None:
            continue
        if isinstance(v, (int, float, np.integer, np.floating)) or (
                hasattr(v, "shape") and np.shape(v) == ()):
            out[k] = float(v)
    return out


# ----------------------------------------------------------------------------- model objects


def _is_float_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, jax.Array)) and jnp.issubdtype(x.dtype, jnp.inexact)


class Combined:
    """``loss`` called with the full model object rebuilt from its trained leaves and the
    held (static) ones: the equinox filter convention (``eqx.combine``), without equinox.
    Hashable by value, so the compiled program is reused across calls."""

    def __init__(self, loss: Callable[..., Any], treedef, static: tuple[Any, ...],
                 mask: tuple[bool, ...]):
        self.loss, self.treedef, self.static, self.mask = loss, treedef, static, mask
        self.__signature__ = inspect.signature(loss)
        self.__name__ = getattr(loss, "__name__", "loss")
        self.__qualname__ = getattr(loss, "__qualname__", self.__name__)

    def _key(self):
        return (self.loss, self.treedef, tuple(map(hashable, self.static)), self.mask)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, Combined) and self._key() == other._key()

    def rebuild(self, trained):
        """The full object from the trained part (``partition``'s first output)."""
        leaves = iter(jax.tree.leaves(trained))
        full = [next(leaves) if m else s for m, s in zip(self.mask, self.static, strict=True)]
        return jax.tree.unflatten(self.treedef, full)

    def __call__(self, params, batch, **kw):
        return self.loss(self.rebuild(params), batch, **kw)


def hashable(v: Any) -> Any:
    """``v`` itself when it can be hashed, else its identity (a key for grouping)."""
    try:
        hash(v)
        return v
    except TypeError:
        return id(v)


def partition(params: Any) -> tuple[Any, tuple[Any, ...], tuple[bool, ...], Any] | None:
    """For a model object (a pytree whose root is not a dict, list or tuple, e.g. an
    equinox Module) with leaves that are not floating arrays: (trained part with ``None``
    for held leaves, held leaves, mask, treedef). None when every leaf is trained."""
    if params is None or isinstance(params, (dict, list, tuple)):
        return None
    leaves, treedef = jax.tree.flatten(params)
    mask = tuple(_is_float_array(x) for x in leaves)
    if all(mask):
        return None
    static = tuple(None if m else x for m, x in zip(mask, leaves, strict=True))
    trained = jax.tree.unflatten(treedef, [x if m else None
                                           for m, x in zip(mask, leaves, strict=True)])
    return trained, static, mask, treedef


class TrainedInit:
    """``init(key)`` that returns a model object, reduced to the part jaxgd trains (the
    floating arrays; ``None`` where a held leaf sits), as :func:`partition` splits
    ``params``. Hashable by value, so the compiled program is reused across calls."""

    def __init__(self, init: Callable[[jax.Array], Any], treedef, mask: tuple[bool, ...]):
        self.init, self.treedef, self.mask = init, treedef, mask

    def _key(self):
        return (self.init, self.treedef, self.mask)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, TrainedInit) and self._key() == other._key()

    def __call__(self, key):
        leaves, treedef = jax.tree.flatten(self.init(key))
        if treedef != self.treedef:
            raise ValueError(f"init returned a model of structure {treedef}, not the "
                             f"{self.treedef} it returned before: it must not depend on the key")
        return jax.tree.unflatten(treedef, [x if m else None
                                            for m, x in zip(self.mask, leaves, strict=True)])


def partition_init(init: Callable[[jax.Array], Any]):
    """For ``init(key)`` returning a model object (see :func:`partition`): (abstract
    trained part, held leaves, mask, treedef), found by tracing ``init`` abstractly. None
    when every leaf is a floating array (``init`` is used as it is)."""
    box: dict[str, Any] = {}

    def probe(key):
        obj = init(key)
        leaves, treedef = jax.tree.flatten(obj)
        mask = tuple(_is_float_array(x) for x in leaves)
        box.update(obj=obj, leaves=leaves, treedef=treedef, mask=mask)
        return [x for x, m in zip(leaves, mask, strict=True) if m]

    try:
        trained = jax.eval_shape(probe, jax.random.key(0))
    except Exception as e:  # noqa: BLE001 - whatever init raises, named as init's
        raise TypeError(f"init(key) could not be evaluated: {type(e).__name__}: {e}") from e
    obj, leaves, treedef, mask = box["obj"], box["leaves"], box["treedef"], box["mask"]
    if obj is None or isinstance(obj, (dict, list, tuple)) or all(mask):
        return None
    if not any(mask):
        raise TypeError("init(key) returned a model object with no floating-point array "
                        "leaves to train")
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        obj, is_leaf=lambda x: isinstance(x, jax.core.Tracer))[0]]
    for path, x, m in zip(paths, leaves, mask, strict=True):
        if not m and isinstance(x, jax.core.Tracer):
            raise ValueError(
                f"init(key) returned a model object whose leaf {path} is a "
                f"{x.dtype} array computed by jax: jaxgd trains a model object's "
                "floating-point arrays and holds its other leaves as they are, so a held "
                "array must be a fixed value (a NumPy array or a static field), or pass the "
                "model as params= instead of init=")
    static = tuple(None if m else x for m, x in zip(mask, leaves, strict=True))
    it = iter(trained)
    abstract = jax.tree.unflatten(treedef, [next(it) if m else None for m in mask])
    return abstract, static, mask, treedef
