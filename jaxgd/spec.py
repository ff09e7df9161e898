"""The program's typed core: its spec, its inputs, its state, its carries and its outputs.

:class:`ProgramSpec` fixes the structure of a compiled program (everything that is not a
traced value); :class:`Traced` holds the traced inputs that differ per configuration (the
hyper-parameters, the loss key's words, the padding mask); :class:`State` is what the
program carries from one evaluation to the next
(and what the engine holds on the host between calls); :class:`ProgramOutput` is what it
returns for each configuration. :mod:`jaxgd.program` computes with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import lossform, optim, stops
from .data import BatchPlan
from .history import PARAMS_PREFIX

# stop reasons, as integers inside the program
RUNNING = stops.RUNNING
MAX_EPOCHS = stops.code("max_epochs")
DIVERGED = stops.code("diverged")


class ProgramSpec(NamedTuple):
    """Everything that fixes the structure of the compiled program (hashable)."""

    loss: Callable[..., Any]
    has_aux: bool
    opt: optim.OptimizerSpec
    schedule: str
    static_hparams: tuple[tuple[str, Any], ...]
    numeric_names: tuple[str, ...]
    plan: BatchPlan
    accumulate: int
    shuffle: str
    epochs: int  # the budget: epochs, or updates with ``by_steps``
    metrics: str
    record_steps: bool
    record_params: bool
    restore_best: bool
    penalty_mask: Callable[[Any], Any] | None
    init_fn: Callable[[jax.Array], Any] | None
    has_val: bool
    track_init: bool  # evaluate the initial loss on the data (else: the first step's batch)
    full_grad: bool  # evaluations compute the full-data gradient (grad_tol, "full_grad")
    eval_every: int  # budget units (epochs or steps) between evaluations
    progress: bool  # report each evaluation to the host (progress bar)
    standardize: tuple[int, ...]  # data leaves scaled with statistics of the training part
    form: lossform.LossForm = lossform.LossForm()  # key, train, state, hparams, metrics
    # a mesh's ``"data"`` axis: each batch's samples are split over it (a NamedSharding of
    # P("data")), or None; set by the engine for the call (jaxgd.engine.data_sharding)
    batch_sharding: Any = None
    by_steps: bool = False  # the budget, evaluations and history rows count updates
    window: int = 0  # > 0: data is a token stream; a step draws windows of window + 1 tokens
    # how the configurations of a stream run in the program: "vmap" (batched together)
    # or "map" (one after another, lax.map); see jaxgd.plans
    config_plan: str = "vmap"
    # > 0: host-fed data (jaxgd.feed); the program's data is a fed block of the call's
    # updates, at most this many evaluations per block
    fed: int = 0
    # the execution plan of an evaluation's updates: "scan" (a loop inside one program) or
    # "host" (host calls of a jitted function of ``host_steps`` updates: jaxgd.hostloop)
    loop: str = "scan"
    host_steps: int = 1


class Traced(NamedTuple):
    """The traced inputs of a program call that vary per configuration (leaves with
    leading axes [stream, config] outside the program; one configuration's inside).

    The program's parameters take these fields in order: ``key_bits``, ``valid``, then
    the hyper-parameters by name (a NamedTuple flattens in field order, a dict by sorted
    keys).
    """

    key_bits: Any  # the words of the configuration's loss key (lossform.key_bits), or None
    valid: Any  # bool, False for a sharded block's padding (progress counts), or None
    values: dict[str, Any]  # the traced hyper-parameters by name (user values only)


class State(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array
    active: jax.Array
    reason: jax.Array
    epochs_run: jax.Array
    init_loss: jax.Array
    best_metric: jax.Array
    best_epoch: jax.Array
    bad_epochs: jax.Array
    best_params: Any
    evals_run: jax.Array
    # the update count when the configuration was found diverged (-1: not diverged); see
    # ProgramOutput.diverged_step
    diverged_step: jax.Array
    model_state: Any = None  # non-trainable model state (None: the loss has none)
    best_model_state: Any = None
    ahead: Any = None  # Ahead at ``params`` when :func:`lookahead` (else None)


class Ahead(NamedTuple):
    """The data loss, its gradient and the loss's metrics over the whole training set
    at the current parameters (an evaluation call: ``key=None``, ``train=False``)."""

    loss: jax.Array
    grad: Any
    metrics: Any


class StepCarry(NamedTuple):
    """The carry of the steps of an epoch (one configuration)."""

    params: Any
    opt_state: Any
    step: jax.Array  # updates applied
    active: jax.Array
    reason: jax.Array
    sum_loss: jax.Array  # batch losses of the accepted steps of this block, summed
    sum_grad_norm: jax.Array
    model_state: Any = None
    sum_metrics: Any = None  # dict: the metrics of the accepted steps, summed
    ahead: Any = None  # Ahead at ``params`` (lookahead), else None
    # the initial loss; without ``track_init``, NaN until the first update's step sets
    # it to that step's batch loss (the loss of the initial parameters on that batch)
    init_loss: Any = None
    # batch objectives (loss + penalty) of the accepted steps of this block, summed: only
    # where the evaluation records their mean (``metrics="batch"`` with a penalty), else None
    sum_objective: Any = None


class EpochCarry(NamedTuple):
    """The carry of the epochs of an evaluation block."""

    steps: StepCarry
    epochs_run: jax.Array


class EpochContext(NamedTuple):
    """What the steps of a block read and never change (one configuration)."""

    opt: optax.GradientTransformation
    tc: Any  # traced hyper-parameters by name (Traced.values)
    key: jax.Array  # the stream's key (its data order)
    data: Any
    tidx: Any  # the stream's training indices into data, or None (all of it)
    wd_mask: Any  # leaves under decoupled weight decay, or None (the optimizer's own)
    tf: Callable[[Any], Any]  # the standardisation of a batch
    cfg_key: jax.Array | None = None  # the configuration's loss key (lossform.config_key)
    orders: jax.Array | None = None  # shuffle= explicit orders [E, n] (spec.shuffle "given")


class Metrics(NamedTuple):
    """The numbers of one evaluation."""

    objective: jax.Array  # loss + penalty
    loss: jax.Array
    grad_norm: jax.Array
    batch_loss: jax.Array  # mean of the block's batch losses
    val_loss: jax.Array | None
    metrics: Any = None  # dict: the loss's metrics (full data, or the batch means)
    batch_metrics: Any = None  # dict: means over the block's accepted steps
    val_metrics: Any = None  # dict: on the validation data


class ProgramOutput(NamedTuple):
    """The program's result for each configuration (leading axes [stream, config]).

    Fields in alphabetical order: the flattened outputs keep the order they had as
    a dictionary, so the compiled program is unchanged.
    """

    best_epoch: jax.Array
    best_metric: jax.Array
    # -1 unless the configuration stopped as diverged: then the updates it had applied
    # when it was found diverged, the 0-based index of the update that found it (a
    # non-finite objective or gradient norm at that update's parameters); divergence found
    # at an evaluation (non-finite parameters, a loss grown past ``diverge_factor``, a
    # non-finite evaluation loss) gives the updates up to that evaluation, 0 a non-finite
    # initial loss
    diverged_step: jax.Array
    epochs_run: jax.Array
    evals_run: jax.Array
    history: dict[str, jax.Array]
    init_loss: jax.Array
    params: Any
    reason: jax.Array
    state: Any  # the model state (None: the loss has none)
    steps_run: jax.Array


def loop_name(spec: ProgramSpec) -> str:
    """The execution plan of ``spec`` as results record it: ``"scan"``, ``"host"`` (a
    jitted step per host call) or ``"host:k"`` (``k`` updates per host call)."""
    if spec.loop != "host":
        return "scan"
    return "host" if spec.host_steps == 1 else f"host:{spec.host_steps}"


def evals_of(spec: ProgramSpec) -> tuple[int, int]:
    """(budget units, epochs or steps, per evaluation; number of evaluations)."""
    K = min(spec.eval_every, spec.epochs)
    return K, -(-spec.epochs // K)


def updates_per_evaluation(spec: ProgramSpec) -> int:
    """The updates between two evaluations of ``spec`` (``eval_every`` epochs of updates,
    or ``eval_every`` updates with a step budget): the most a block's batch means average."""
    K, _ = evals_of(spec)
    return K if spec.by_steps else K * spec.plan.steps_per_epoch


def float_dtype(params):
    for leaf in jax.tree.leaves(params):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return jnp.float32


def metric_dtype(params):
    """Losses, metrics and stop checks are computed in at least float32 (bfloat16 and
    float16 params included)."""
    return jnp.promote_types(float_dtype(params), jnp.float32)


def param_leaves(params) -> list[tuple[str, jax.Array]]:
    """History names of the parameter leaves: ``params['w']``, ``params['layers'][0]...``."""
    return [(PARAMS_PREFIX + jax.tree_util.keystr(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
