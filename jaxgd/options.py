"""The keyword options of ``fit`` and ``sweep``, declared once.

:data:`OPTIONS` is the table: name, default, accepted values, check, documentation, and
where the option applies (``fit``, ``sweep``, a TOML ``[train]`` table, the resume
fingerprint). Derived from it:

* the keyword parameters of :func:`jaxgd.fit` and :func:`jaxgd.sweep` (written out in
  their signatures for readers and tools; a test checks them against this table) and
  the options they forward (:func:`collect`), as an :class:`Options` object whose
  fields are the table's (a test checks them too), so an option can be followed by name;
* the ``Args`` documentation of both (:func:`document`);
* the keys a TOML ``[train]`` table accepts (:func:`file_options`), checked by the same
  functions as the keywords;
* the settings the resume fingerprint of a sweep covers (:func:`fingerprint_settings`).

The stop conditions' parameters (``grad_tol``, ``patience``, ...) come from
:mod:`jaxgd.stops`. Checks here are pure Python (a configuration file is checked before
JAX starts); what needs the data (``standardize`` leaf indices, ``val_data``'s
structure, the loss) is checked by :func:`jaxgd.prepare.prepare`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from . import stops
from ._checks import check_bool, check_positive_int, check_seed, is_int
from .checkpoint import check_every

__all__ = ["OPTIONS", "Option", "Options", "collect", "document", "file_options",
           "options_for"]

SHUFFLES = ("none", "feistel", "uniform")
GIVEN = "given"  # shuffle= an array of sample orders (checked against the data in prepare)
METRICS = ("auto", "full", "batch", "full_grad")
TRACKERS = ("tensorboard", "mlflow", "wandb")  # the trackers of jaxgd.trackers
FIT, SWEEP, BOTH = "fit", "sweep", "both"


class Option(NamedTuple):
    """One keyword option of ``fit``/``sweep``."""

    name: str
    default: Any
    type: str  # the accepted values, as the docs show them
    doc: str
    scope: str = BOTH  # FIT, SWEEP or BOTH
    file: bool = False  # a key of a TOML [train] table
    check: Callable[[str, Any], Any] | None = None  # (name, value) -> normalised value
    what: str = ""  # the accepted values in words, for a file's message ("use ...")
    # how the resume fingerprint covers it: "settings", "own" (an entry of its own) or
    # "" (does not change results)
    fingerprint: str = "settings"
    axis: int = 0  # > 0: a list in a TOML [train] table becomes a sweep axis (in this order)


# ----------------------------------------------------------------------------- checks

LOOPS = ("auto", "scan", "host")


def check_loop(name: str, value: Any) -> Any:
    """``"auto"``, ``"scan"``, ``"host"`` or a positive int (host calls of that many
    updates)."""
    if isinstance(value, str) and value in LOOPS:
        return value
    if is_int(value) and value >= 1:
        return int(value)
    raise ValueError(f'{name}={value!r} must be "auto", "scan", "host" or a positive int '
                     "(updates per host call)")



def _check_feed(name: str, v: Any) -> str:
    from .feed import check_feed

    return check_feed(name, v)


def _positive(name: str, v: Any) -> int:
    return check_positive_int(name, v)


def _positive_or_none(name: str, v: Any) -> int | None:
    if v is not None and (not is_int(v) or v <= 0):
        raise ValueError(f"{name}={v!r} must be a positive integer or None")
    return v


def _positive_int_or_none(name: str, v: Any) -> int | None:
    """None, or a positive int (TypeError for a non-integer, ValueError for one <= 0)."""
    return None if v is None else check_positive_int(name, v)


def _batch_size(name: str, v: Any) -> int | None:
    if v is None or v == "full":
        return None
    return check_positive_int(name, v)


def _nonneg(name: str, v: Any) -> int:
    if not is_int(v) or v < 0:
        raise ValueError(f"{name}={v!r} must be a non-negative integer")
    return int(v)


def _out(name: str, v: Any) -> Any:
    import os

    if v is not None and (isinstance(v, bool) or not isinstance(v, str | os.PathLike)):
        raise TypeError(f"{name}={v!r} must be a folder path (str or pathlib.Path)")
    return v


def track_targets(name: str, v: Any) -> list[Any]:
    """``track=`` as a list of ``(kind, destination)`` pairs and writer objects (checked
    only: no tracker package is imported). ``v``: None, ``"KIND:DEST"`` (KIND one of
    :data:`TRACKERS`; DEST a folder, for MLflow also a tracking URI such as
    ``sqlite:///runs.db``), an object with ``open_run`` and ``close`` methods (a
    :class:`jaxgd.trackers.Writer`), or a list of those."""
    if v is None:
        return []
    items = list(v) if isinstance(v, list | tuple) else [v]
    if not items:
        raise ValueError(f"{name}={v!r} must name at least one tracker (or be None)")
    out: list[Any] = []
    for it in items:
        if isinstance(it, str):
            kind, sep, dest = it.partition(":")
            if not sep or kind not in TRACKERS or not dest.strip():
                raise ValueError(
                    f"{name}={it!r} must be \"KIND:DIR\" with KIND one of {list(TRACKERS)} "
                    "(e.g. \"tensorboard:runs/tb\"), a tracker writer object, or a list of "
                    "them")
            out.append((kind, dest))
        elif callable(getattr(it, "open_run", None)) and callable(getattr(it, "close", None)):
            out.append(it)
        else:
            raise TypeError(f"{name}={it!r} must be a \"KIND:DIR\" string (KIND one of "
                            f"{list(TRACKERS)}), a tracker writer object (open_run, close) "
                            "or a list of them")
    return out


def _folds(name: str, v: Any) -> int | None:
    if v is not None and (not is_int(v) or v < 2):
        raise ValueError(f"{name}={v!r} must be an integer >= 2")
    return v


def normalize_shuffle(name: str, shuffle: Any) -> str:
    """``True`` -> ``"feistel"``, ``False``/``None`` -> ``"none"``, a name of SHUFFLES, or
    :data:`GIVEN` for an array of orders (a NumPy or JAX array; its shape and values are
    checked against the data by :func:`jaxgd.data.check_orders`)."""
    if hasattr(shuffle, "shape") and hasattr(shuffle, "dtype"):
        return GIVEN
    if shuffle is True:
        return "feistel"
    if shuffle is False or shuffle is None:
        return "none"
    if isinstance(shuffle, str) and shuffle in SHUFFLES:
        return shuffle
    raise ValueError(
        f"{name}={shuffle!r} must be True (fast pseudo-random permutation), False (in order), "
        f"one of {SHUFFLES}, or an integer array of sample orders ([E, N] or [N])"
    )


PLANS = ("auto", "vmap", "map")


def _plan(name: str, v: Any) -> str:
    if not isinstance(v, str) or v not in PLANS:
        raise ValueError(f"{name}={v!r} must be one of {PLANS}")
    return v


def _metrics(name: str, v: Any) -> str:
    if v not in METRICS:
        raise ValueError(f"{name}={v!r} must be one of {METRICS}")
    return v


def _mapping_or_none(name: str, v: Any) -> Any:
    if v is not None and not isinstance(v, Mapping):
        raise TypeError(f"{name}={v!r} must be a dict of name -> number")
    return v


def _callable_or_none(what: str) -> Callable[[str, Any], Any]:
    def check(name: str, v: Any) -> Any:
        if v is not None and not callable(v):
            raise TypeError(f"{name}={v!r} must be {what}")
        return v

    return check


def _stop(name: str, v: Any) -> Any:
    return None if v is None else stops.check_stop_param(name, name, v)


def _builtin_optimizer(name: str, v: Any) -> Any:
    from .optim import resolve_optimizer

    resolve_optimizer(v)  # raises with "did you mean"
    return v


def _schedule(name: str, v: Any) -> Any:
    from .optim import check_schedule

    return check_schedule(v)


# ----------------------------------------------------------------------------- the table

_TRAIN: tuple[Option, ...] = (
    Option("grid", None, "dict | None", "``{axis: values}``, Cartesian product.",
           scope=SWEEP, fingerprint="own"),
    Option("random", None, "dict | None",
           "``{\"n\": n, axis: (kind, ...)}``, see :func:`jaxgd.axes.expand_configs`.",
           scope=SWEEP, fingerprint="own"),
    Option("configs", None, "list[dict] | None", "explicit list of configuration dicts.",
           scope=SWEEP, fingerprint="own"),
    Option("optimizer", "sgd", "str | factory | optax.GradientTransformation",
           "an optax factory (``optax.adam``) called with ``hparams`` inside the program, a "
           "built-in name (``\"sgd\"``, ``\"momentum\"``, ``\"nesterov\"``, ``\"rmsprop\"``, "
           "``\"adagrad\"``, ``\"adam\"``, ``\"adamw\"``, ``\"adamax\"``) or (``fit`` only) a "
           "ready ``optax.GradientTransformation`` (or ``optax.MultiSteps``). One taking "
           "optax's extra arguments gets ``value=`` the update's batch objective.",
           file=True, check=_builtin_optimizer, what="a built-in optimizer name",
           fingerprint="own", axis=2),
    Option("hparams", None, "dict[str, number] | None",
           "numbers, traced in the program (new values never recompile): the factory's "
           "keywords (``learning_rate``, ``b1``, ``momentum``, ...), the schedule's "
           "parameters, ``l1``/``l2`` penalties (``l1*sum|w| + l2/2*sum w^2`` over non-bias "
           "leaves; the subgradient of ``|w|`` at 0 is 0), ``clip_value``/``clip_norm`` "
           "and decoupled ``weight_decay``. In a "
           "sweep, the values every configuration starts from: an axis (``grid``, "
           "``random``, ``configs``) of the same name replaces its value.",
           file=True, check=_mapping_or_none, what="a table of numbers", fingerprint="own"),
    Option("batch_size", None, "int | None",
           "``None`` (or ``\"full\"``: full batch), 1 (SGD) or B (mini-batch).",
           file=True, check=_batch_size, what='a positive integer or "full" (full batch)',
           fingerprint="own", axis=1),
    Option("epochs", None, "int | None",
           "maximum number of passes over the data (100 when neither ``epochs`` nor "
           "``steps`` is given).",
           file=True, check=_positive_int_or_none, what="a positive integer", fingerprint="own"),
    Option("steps", None, "int | None",
           "a budget of updates instead of ``epochs`` (give one of them): training visits "
           "the batches of the epoch program in the same order (epoch ``t // "
           "steps_per_epoch``, position ``t mod steps_per_epoch`` for update ``t``) and stops "
           "after ``steps`` updates, inside an epoch if need be. ``eval_every`` then counts "
           "updates, history rows are indexed by ``history[\"step\"]`` (each row's 0-based "
           "last update; ``best_epoch`` holds that step), search rungs and intervals are in "
           "updates, ``epochs_run`` counts the epochs begun, and the stop reason when the "
           "budget is spent stays ``\"max_epochs\"``. Not with ``shuffle=\"uniform\"``.",
           file=True, check=_positive_int_or_none, what="a positive integer (updates)",
           fingerprint="own"),
    Option("windows", None, "int | None",
           "``L``: ``data`` is a 1-D integer token stream and each step's batch is "
           "``batch_size`` random windows of ``L + 1`` tokens drawn inside the program "
           "(``(x, y)``, each ``[batch_size, L]``, ``y`` the next token of each ``x``; "
           "window starts from the run's key and the update's index: "
           ":func:`jaxgd.data.window_starts`), so configurations of a seed share them. "
           "Needs ``steps`` and an integer ``batch_size``; evaluations record the means of "
           "the block's batch losses (``metrics`` is ``\"batch\"``); ``val_data`` is "
           "fixed windows, e.g. ``jaxgd.data.token_windows(val_tokens, L)``; not with "
           "``standardize``, ``folds`` or ``shuffle=`` orders.",
           check=_positive_int_or_none, what="a positive integer (window length)",
           fingerprint="own"),
    Option("feed", "auto", "str",
           "where the training data lives: ``\"device\"`` (placed on the device whole), "
           "``\"host\"`` (kept on the host: NumPy arrays or an ``np.memmap``, gathered per "
           "block of updates in the same order as on the device, or an iterable of batches "
           "used one per update in the order it gives them, a later batch possibly holding "
           "fewer samples than the first on one device) or ``\"auto\"`` (host for an "
           "``np.memmap`` and for an iterable, device otherwise). Host-fed data needs "
           "``steps``; evaluations record the means of the block's batch losses (``metrics`` "
           "is ``\"batch\"``); not with ``windows``, ``standardize`` or ``folds``. Device "
           "memory holds the batches of one program call (at most 16 MB per seed, or one "
           "evaluation's ``eval_every`` updates), built on the host while the previous call "
           "runs. On a mesh each batch of the block is split over the ``\"data\"`` axis; "
           "with several processes each supplies only the rows its devices hold (arrays: "
           "gathered alone; an iterable must yield the process's share of every batch, "
           "like a per-host ``DataLoader``, whole batches when the data axis lies within "
           "each process; ``batch_size`` is the global batch). See the README's \"Data "
           "larger than memory\".",
           check=lambda name, v: _check_feed(name, v), what='"auto", "device" or "host"',
           fingerprint=""),
    Option("shuffle", True, "bool | str | array",
           "``True`` visits samples in a fresh pseudo-random order every epoch (a keyed "
           "Feistel bijection, cheap and shared by every configuration of a seed; not "
           "uniform over all N! orders; also ``\"feistel\"``), ``\"uniform\"`` uses "
           "``jax.random.permutation``, ``False`` (or ``\"none\"``) visits samples in order "
           "(the textbook SGD loop). Or your own orders: an integer array ``[E, N]`` (epoch "
           "e visits row ``e mod E``) or ``[N]`` (every epoch), each row a permutation of "
           "the N training samples (e.g. a PyTorch ``DataLoader``'s); a program input, so "
           "new orders of the same shape never recompile. Every configuration then shares "
           "it (``seed``/``key`` still draw the loss's keys and ``init``'s parameters); "
           "not with ``folds``; not in a TOML file.",
           file=True, check=normalize_shuffle,
           what='true, false, "feistel", "uniform" or "none"', fingerprint="own"),
    Option("drop_last", False, "bool", "drop the last, smaller batch of each epoch.",
           file=True, check=check_bool, what="true or false", fingerprint="own"),
    Option("key", None, "int | jax.random.key | None",
           "int seed or ``jax.random.key``: the data order of every epoch and the "
           "loss's keys (``jaxgd.loss_key``).", scope=FIT),
    Option("seed", 0, "int",
           "the base training seed (a ``seed`` axis overrides it); seed s reproduces "
           "``fit(..., key=s)``.", scope=SWEEP, file=True, check=check_seed,
           what="an integer in 0..2**64 - 1", fingerprint="own", axis=5),
    Option("schedule", "constant", "str",
           "learning-rate schedule: ``\"constant\"``, ``\"exponential\"``, ``\"step\"``, "
           "``\"inverse_time\"``, ``\"cosine\"``, ``\"warmup_cosine\"``, "
           "``\"polynomial\"``, ``\"linear\"``, each its optax builder with "
           "``learning_rate`` as the initial or peak value (parameters in ``hparams``, "
           "every one traced: ``decay_rate``, ``transition_steps``, ``decay_steps``, "
           "``alpha``, ``exponent``, ``power``, ``end_value``, ...; ``warmup_steps`` W puts "
           "optax's linear warm-up from ``init_value`` (default 0) before any of them, which "
           "then starts at update W: see :func:`jaxgd.schedule_value`).",
           file=True, check=_schedule, what="a schedule name", fingerprint="own", axis=3),
    Option("accumulate", 1, "int",
           "average the gradients of this many consecutive batches of ``batch_size`` per "
           "update (equal to one batch ``accumulate`` times larger).",
           file=True, check=_positive, what="a positive integer", fingerprint="own", axis=4),
    Option("val_data", None, "pytree | None",
           "optional validation pytree; its loss is recorded and monitored.",
           fingerprint="own"),
    Option("state", None, "pytree | None",
           "initial non-trainable model state (e.g. flax BatchNorm ``batch_stats``), for a "
           "loss declaring ``state``: ``loss(params, batch, *, state) -> (loss, new_state"
           "[, metrics])``. Never differentiated, optimised or penalised; replaced after "
           "every accepted step; returned as ``.state`` (see :mod:`jaxgd.lossform`).",
           fingerprint="own"),
    Option("folds", None, "int | None",
           "k-fold cross-validation: each configuration runs on every fold, validation loss "
           "recorded on the held-out part (``kfold_indices(N, k, seed=fold_seed)``). With "
           "``standardize``, each fold is scaled with its own training part's statistics.",
           scope=SWEEP, file=True, check=_folds, what="an integer >= 2", fingerprint="own"),
    Option("fold_seed", 0, "int", "the seed of the folds' random split.", scope=SWEEP,
           file=True, check=_nonneg, what="an integer >= 0", fingerprint="own"),
    *(Option(p.name, None if p.name != "min_delta" else 0.0,
             "int | None" if p.integer else "float | None", p.doc, file=True, check=_stop,
             what=p.what)
      for p in stops.STOP_PARAMS.values()),
    Option("restore_best", False, "bool",
           "return the parameters of the best monitored evaluation (also when the run "
           "diverged later).", file=True, check=check_bool, what="true or false"),
    Option("metrics", "auto", "str",
           "what an evaluation computes. ``\"auto\"`` (the default): ``\"full\"`` with an "
           "epoch budget, ``\"batch\"`` with a step budget (``steps``: an evaluation every "
           "update by default, where a pass over the whole training set at each would cost "
           "N / B updates), token ``windows`` or host-fed data. ``\"full\"``: the loss on the "
           "whole training set "
           "(one forward pass over the N samples per configuration); ``history[\"grad_norm\"]``"
           " is the full-data gradient norm when ``grad_tol`` is given (a forward and "
           "backward pass, the cost of a full-batch step), else the mean of the epoch's "
           "batch gradient norms (free: the steps compute them). ``\"full_grad\"``: always "
           "the full-data loss and gradient norm. ``\"batch\"``: the means of the epoch's "
           "batch losses and gradient norms (``objective``: of the batch objectives, loss + "
           "penalty), no pass over the data (cheapest); the initial "
           "loss (``init_loss``, the reference of ``diverge_factor``) is then the first "
           "update's batch loss.",
           file=True, check=_metrics, what='"auto", "full", "batch" or "full_grad"'),
    Option("record_steps", False, "bool",
           "also record every step's batch loss in ``history[\"step_loss\"]`` (NaN for a "
           "step that did not run: after the configuration stopped, e.g. at a non-finite "
           "step, or past the budget).",
           file=True, check=check_bool, what="true or false"),
    Option("record_params", False, "bool",
           "also record the parameters at every evaluation, one history entry per leaf "
           "named by its path (``history[\"params['w']\"]``, shape [row, *leaf]); "
           ":meth:`FitResult.param_history` gives them back as one pytree.",
           file=True, check=check_bool, what="true or false"),
    Option("eval_every", 1, "int",
           "evaluate (record a history row, check the stop conditions) every this many "
           "epochs (updates with ``steps``); ``patience`` then counts evaluations. Long "
           "full-batch runs (100 000 "
           "iterations of the textbook loop) are several times faster with e.g. 1000, since "
           "the per-epoch bookkeeping then costs nothing. A non-finite step still stops a "
           "configuration at once. ``history[\"epoch\"]`` gives each row's (0-based) epoch.",
           file=True, check=_positive, what="a positive integer (epochs between history rows)"),
    Option("loop", "auto", "str | int",
           "the execution plan of an evaluation's updates: ``\"scan\"`` (a loop inside "
           "the compiled program), ``\"host\"`` (a Python loop over a jitted step: the "
           "loop a user would write; the evaluation a jitted call of its own) or a positive "
           "int ``k`` (the host loop over a jitted scan of ``k`` updates), ``\"auto\"``: "
           "the host loop when the loss has a convolution and the program runs on the CPU "
           "in one process (XLA:CPU runs a convolution step several times slower inside a "
           "loop than jitted alone), else the scan; in a run long enough to pay for it, "
           "both are measured and the faster runs (:mod:`jaxgd.autoplan`; the measurements "
           "are ``result.plan_trials``). Several processes run the scan whatever "
           "this says. Every plan gives the same numbers; the plan used is ``result.loop``.",
           file=True, check=check_loop,
           what='"auto", "scan", "host" or a positive integer', fingerprint=""),
    Option("standardize", None, "bool | int | tuple[int, ...] | None",
           "scale data leaves to mean 0 and standard deviation 1 with statistics of the "
           "*training* data only, inside the program (validation data and, in a k-fold "
           "sweep, each fold's held-out part use the training part's statistics). ``True`` = "
           "the first leaf (``x`` of ``(x, y)``), or leaf indices in "
           "``jax.tree.leaves(data)`` order. The parameters then live in the standardised "
           "feature space."),
    Option("penalty_mask", None, "Callable | None",
           "``mask(params) -> pytree of bool``: leaves penalised by ``l1``/``l2`` and "
           "decoupled weight decay (default: all but leaves named ``b``/``bias``).",
           check=_callable_or_none("a function params -> bool pytree")),
    Option("init", None, "Callable | None",
           "``init(key) -> params`` draws each seed's initial parameters (``params`` may "
           "then be ``None``) from ``jaxgd.init_key(seed)`` (``fold_in(key(seed), "
           "0x5EED)``).", scope=SWEEP,
           check=_callable_or_none("a function key -> params")),
    Option("chunk_size", None, "int | None",
           "most configurations per program call (default: as many as ``memory_budget`` "
           "allows, at most 4096). Results depend on it (and on the device count) only in the "
           "last bits: another vmap width may order a reduction differently (a few float32 "
           "ulps; the same chunk size gives identical bits).", scope=SWEEP, file=True,
           check=_positive_or_none,
           what="a positive integer", fingerprint=""),
    Option("memory_budget", None, "int | None",
           "bytes the per-configuration state of one call may take (default 2 GiB): "
           "parameters and optimizer state, a step's activations, the intermediates of "
           "the full-data loss pass and the call's history block (at most 16 MiB).",
           scope=SWEEP, file=True, check=_positive_or_none,
           what="a positive integer (bytes)", fingerprint=""),
    Option("only", None, "Iterable[int] | None",
           "indices of the configurations to run (to spread a sweep over launchers; combine "
           "the parts with :meth:`SweepResult.concat`).", scope=SWEEP, fingerprint="own"),
    Option("search", None,
           "jaxgd.search.Halving | jaxgd.search.PBT | jaxgd.search.Median | dict | None",
           "an adaptive search instead of training every configuration for ``epochs``: "
           "successive halving / Hyperband (``jaxgd.search.Halving``, "
           "``jaxgd.search.hyperband``), population-based training "
           "(``jaxgd.search.PBT``) or the median stopping rule (``jaxgd.search.Median``); "
           "see :mod:`jaxgd.search`. Pruned configurations have "
           "``stop_reason == \"pruned\"``; PBT's hyper-parameters over time are in "
           "``SweepResult.lineage``.", scope=SWEEP, fingerprint="own"),
    Option("out", None, "str | PathLike | None",
           "folder to save the result in (new, empty, or written by this same call); "
           "finished chunks (a ``fit``: its result) are kept there, so the same call after "
           "an interruption resumes instead of recomputing, and once finished loads the "
           "result without running; another call's folder is refused. Files are checked "
           "against the run's fingerprint and their checksums (see :mod:`jaxgd.store`); the "
           "folder is locked while in use.", check=_out, fingerprint=""),
    Option("checkpoint_every", None, "int | float | str | None",
           "with ``out``, also save the running chunk's whole program state (parameters, "
           "optimizer and model state, stop counters, history so far; the data order and "
           "loss keys follow from the seed and the step) every this many evaluations (an "
           "int), or every this many seconds (a float, or a string such as ``\"30s\"``, "
           "``\"10min\"``, ``\"2h\"``), and at the next block boundary after SIGTERM or "
           "SIGINT, which then act as before (Ctrl-C raises KeyboardInterrupt, a default "
           "SIGTERM ends the process). The same call resumes from the newest valid "
           "checkpoint and gives the bits of a run never interrupted. Not with ``search`` "
           "(a search saves at its rung boundaries). None: checkpoints at chunk ends only, "
           "and the program runs exactly as without ``out``.",
           file=True, check=check_every,
           what='a positive integer (evaluations) or a duration such as "10min"',
           fingerprint=""),
    Option("mesh", None, "jax.sharding.Mesh | None",
           "a ``jax.sharding.Mesh`` with an axis named ``\"config\"`` (configurations "
           "split over it) and optionally one named ``\"data\"`` (each batch's samples "
           "split over it); by default all devices of all processes on ``\"config\"`` "
           "when there are several.", scope=SWEEP, fingerprint=""),
    Option("track", None, "str | Writer | list | None",
           "write the run live to experiment trackers, at every block boundary of the "
           "program: ``\"tensorboard:DIR\"``, ``\"mlflow:DIR\"`` (a folder, MLflow's file "
           "store, or a tracking URI: ``\"mlflow:sqlite:///runs.db\"``), "
           "``\"wandb:DIR\"`` (offline runs), a writer of :func:`jaxgd.trackers.writer` "
           "(closed when the run ends), or a list of them. One tracker run per "
           "configuration, grouped under the run folder's name (a sweep's ``out=``; else "
           "``jaxgd-sweep``): its "
           "hyper-parameters, every history column as a series over epochs (``step_loss`` "
           "over steps) and, when the run ends, the table's figures and stop reason; "
           "exactly what ``jaxgd.trackers.export`` writes from the saved sweep (see "
           ":mod:`jaxgd.trackers`). A ``fit`` is one run named ``fit`` in the group "
           "``jaxgd-fit``, with or without ``out=``: what ``export`` writes from its "
           "``FitResult``. Rows read back from a run folder (a resumed run) are "
           "written when read. Each configuration's tracker run stays open until the run "
           "ends. Only process 0 writes. A missing tracker package raises before anything "
           "runs.", check=track_targets, fingerprint=""),
    Option("plan", "auto", '"auto" | "vmap" | "map"',
           "how the configurations of one compiled group run inside its program: "
           "``\"vmap\"`` batched together (one vectorised step for all of them), "
           "``\"map\"`` one after another (``jax.lax.map``: each configuration's own "
           "unbatched step), ``\"auto\"`` chosen per group by :func:`jaxgd.plans."
           "choose_plan`, or, in a run long enough to pay for it, by measuring both "
           "(:mod:`jaxgd.autoplan`; the measurements are ``SweepResult.plan_trials``). "
           "The choice is recorded in ``SweepResult.plans`` and "
           "``result.json``; results agree to float rounding (bit-identical where the "
           "arithmetic is the same), and resuming does not depend on it.",
           scope=SWEEP, check=_plan, fingerprint=""),
    Option("progress", False, "bool",
           "show a progress bar over epochs (a host callback per evaluation; a sweep also "
           "shows one over chunks, with the number of configurations still active). With "
           "several processes it is on when any process asks for it, and only process 0 "
           "draws.", check=check_bool, fingerprint=""),
)

OPTIONS: dict[str, Option] = {o.name: o for o in _TRAIN}


DEFAULT_EPOCHS = 100


def budget(epochs: Any, steps: Any) -> tuple[int, bool]:
    """(budget, counted in steps): ``steps`` updates, or ``epochs`` epochs (100 when
    neither is given); a ValueError when both are given or either is not a positive int."""
    if epochs is not None and steps is not None:
        raise ValueError(f"epochs={epochs!r} and steps={steps!r}: give one budget, epochs= "
                         "or steps=, not both")
    if steps is not None:
        return check_positive_int("steps", steps), True
    return (DEFAULT_EPOCHS if epochs is None else check_positive_int("epochs", epochs)), False


def options_for(scope: str) -> tuple[Option, ...]:
    """The options of ``fit`` (``"fit"``) or ``sweep`` (``"sweep"``), in table order."""
    return tuple(o for o in _TRAIN if o.scope in (scope, BOTH))


def file_options() -> tuple[Option, ...]:
    """The options a TOML ``[train]`` table accepts."""
    return tuple(o for o in _TRAIN if o.file)


def file_axes() -> tuple[str, ...]:
    """``[train]`` keys whose list value becomes a sweep axis, outermost first."""
    return tuple(o.name for o in sorted((o for o in _TRAIN if o.axis), key=lambda o: o.axis))


def fingerprint_settings() -> tuple[str, ...]:
    """The sweep options that the resume fingerprint holds under ``settings``."""
    return tuple(o.name for o in options_for(SWEEP) if o.fingerprint == "settings")


def check(name: str, value: Any) -> Any:
    """``value`` checked (and normalised) by option ``name``'s check."""
    o = OPTIONS[name]
    return value if o.check is None else o.check(name, value)


@dataclasses.dataclass(frozen=True)
class Options:
    """The keyword options of one ``fit`` or ``sweep`` call, by name (built by
    :func:`collect`; the fields and defaults are the table's: a test checks them). An
    option of the other front door keeps its default (``key`` in a sweep, ``grid`` in a
    fit)."""

    optimizer: Any = "sgd"
    hparams: Mapping[str, Any] | None = None
    batch_size: int | str | None = None
    epochs: int | None = None
    steps: int | None = None
    windows: int | None = None
    feed: str = "auto"
    shuffle: bool | str = True
    drop_last: bool = False
    key: Any = None
    schedule: str = "constant"
    accumulate: int = 1
    val_data: Any = None
    state: Any = None
    grad_tol: float | None = None
    loss_target: float | None = None
    patience: int | None = None
    min_delta: float | None = 0.0
    diverge_factor: float | None = None
    restore_best: bool = False
    metrics: str = "auto"
    record_steps: bool = False
    record_params: bool = False
    eval_every: int = 1
    standardize: bool | int | tuple[int, ...] | None = None
    loop: str | int = "auto"
    penalty_mask: Callable[[Any], Any] | None = None
    progress: bool = False
    track: Any = None
    grid: Mapping[str, Any] | None = None
    random: Mapping[str, Any] | None = None
    configs: Sequence[Mapping[str, Any]] | None = None
    seed: int = 0
    folds: int | None = None
    fold_seed: int = 0
    init: Callable[..., Any] | None = None
    chunk_size: int | None = None
    memory_budget: int | None = None
    only: Iterable[int] | None = None
    search: Any = None
    out: Any = None
    checkpoint_every: Any = None
    mesh: Any = None
    plan: str = "auto"

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes`` (option name -> value)."""
        return dataclasses.replace(self, **changes)

    def checked(self, names: Iterable[str]) -> Options:
        """A copy with the options ``names`` checked and normalised (:func:`check`)."""
        return self.replace(**{n: check(n, getattr(self, n)) for n in names})

    def pick(self, names: Iterable[str]) -> dict[str, Any]:
        """The values of the options ``names`` by name."""
        return {n: getattr(self, n) for n in names}


def collect(scope: str, namespace: Mapping[str, Any]) -> Options:
    """The options of ``scope`` picked from ``namespace`` (a call's ``locals()``), checked.

    Values are kept as given (the checks only raise); :func:`check` normalises.
    """
    out = {}
    for o in options_for(scope):
        value = namespace[o.name]
        if o.check is not None:
            o.check(o.name, value)
        out[o.name] = value
    return Options(**out)


def document(scope: str, skip: Iterable[str] = ()) -> str:
    """The ``Args`` entries of the options of ``scope``, indented for a docstring."""
    import textwrap

    skip = set(skip)
    lines = []
    for o in options_for(scope):
        if o.name in skip:
            continue
        lines += textwrap.wrap(f"{o.name}: {o.doc}", 86, initial_indent="      ",
                               subsequent_indent="        ")
    return "\n".join(lines)


def check_folds(folds, n: int, windows, shuffle) -> None:
    """``sweep``'s ``folds=`` with the data's ``n`` samples, ``windows=`` and ``shuffle=``
    (ValueError before anything compiles)."""
    if folds is None:
        return
    if folds > n:
        raise ValueError(f"folds={folds!r} is more than the {n} samples of data")
    if windows is not None:
        raise ValueError(f"folds={folds!r} cannot be combined with windows={windows!r} (a "
                         "token stream has no samples to split)")
    if normalize_shuffle("shuffle", shuffle) == GIVEN:
        raise ValueError(f"shuffle= an order array cannot be combined with folds={folds!r} "
                         "(each fold trains on its own part of the data): use shuffle=True "
                         "or False")
