"""``fit``: one training configuration as one compiled program."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .prepare import as_key, prepare, tc_array
from .program import STOP_REASONS, compiled_program, epoch_progress, float_dtype

__all__ = ["fit", "STOP_REASONS"]


def fit(
    loss: Callable[..., Any],
    params: Any,
    data: Any,
    *,
    optimizer: Any = "sgd",
    hparams: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    epochs: int = 100,
    shuffle: bool | str = True,
    drop_last: bool = False,
    key: Any = None,
    schedule: str = "constant",
    accumulate: int = 1,
    val_data: Any = None,
    grad_tol: float | None = None,
    loss_target: float | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    diverge_factor: float | None = None,
    restore_best: bool = False,
    metrics: str = "full",
    record_steps: bool = False,
    record_params: bool = False,
    penalty_mask: Callable[[Any], Any] | None = None,
    eval_every: int = 1,
    progress: bool = False,
    standardize: bool | int | tuple[int, ...] | None = None,
):
    """Train ``params`` on ``data`` by gradient descent; the whole run is one jitted program.

    Batch, stochastic and mini-batch gradient descent are the same loop with a different
    ``batch_size``: ``None`` uses all N samples per step (one step per epoch), ``1`` one
    sample per step, ``B`` B samples. An epoch has ceil(N/B) steps, the last holding
    N mod B samples with its gradient the mean over those alone (PyTorch's DataLoader), or
    floor(N/B) steps with ``drop_last=True``.

    Args:
      loss: pure ``loss(params, batch) -> scalar`` (or ``(scalar, aux)``); ``batch`` has
        the structure of ``data`` with a leading batch axis. It should be a mean over the
        batch so that the last, smaller batch is weighted like PyTorch's.
      params: initial parameters (any pytree of floating arrays).
      data: pytree of arrays sharing the leading axis N, e.g. ``(x, y)``.
      optimizer: an optax factory (``optax.adam``) called with ``hparams`` inside the
        program, a built-in name (``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"rmsprop"``,
        ``"adagrad"``, ``"adam"``, ``"adamw"``, ``"adamax"``) or a ready
        ``optax.GradientTransformation``.
      hparams: numbers, traced in the program (new values never recompile): the factory's
        keywords (``learning_rate``, ``b1``, ``momentum``, ...), the schedule's parameters,
        ``l1``/``l2`` penalties (``l1*sum|w| + l2/2*sum w^2`` over non-bias leaves),
        ``clip_value``/``clip_norm`` and decoupled ``weight_decay``.
      batch_size: ``None`` (full batch), 1 (SGD) or B (mini-batch).
      epochs: maximum number of passes over the data.
      shuffle: ``True`` visits samples in a fresh pseudo-random order every epoch (a keyed
        Feistel bijection, cheap and shared by every configuration of a seed; not uniform
        over all N! orders), ``"uniform"`` uses ``jax.random.permutation``, ``False`` visits
        samples in order (the textbook SGD loop).
      drop_last: drop the last, smaller batch of each epoch.
      key: int seed or ``jax.random.key``: the data order of every epoch.
      schedule: learning-rate schedule: ``"constant"``, ``"exponential"``, ``"step"``,
        ``"inverse_time"``, ``"cosine"`` (parameters in ``hparams``; ``warmup_steps`` adds
        a linear warm-up to any of them).
      accumulate: average the gradients of this many consecutive batches of ``batch_size``
        per update (equal to one batch ``accumulate`` times larger).
      val_data: optional validation pytree; its loss is recorded and monitored.
      grad_tol: stop when the gradient norm is <= this ("grad_tol"): of the full training
        data with ``metrics="full"``, the mean of the epoch's batch gradient norms with
        ``metrics="batch"`` (mini-batch noise keeps that one higher).
      loss_target: stop when the training loss is <= this ("loss_target").
      patience: stop after this many epochs without improvement of the monitored loss
        (validation loss if given, else training loss) by more than ``min_delta``
        (``None`` or 0: no patience stop).
      diverge_factor: stop as "diverged" when the training loss exceeds this times
        max(|initial loss|, 1) (default 1e6; ``float("inf")`` turns the check off; with
        ``metrics="batch"`` the first epoch's mean batch loss is the reference). A non-finite
        loss or gradient always stops as "diverged", keeping the last finite parameters.
      restore_best: return the parameters of the best monitored epoch (also when the run
        diverged later).
      metrics: ``"full"`` evaluates loss and gradient norm on the whole training set at
        every epoch end; ``"batch"`` records the means over the epoch's batches (cheaper).
      record_steps: also record every step's batch loss in ``history["step_loss"]``.
      record_params: also record the parameters at every evaluation, one history entry
        per leaf named by its path (``history["params['w']"]``, shape [row, *leaf]);
        :meth:`FitResult.param_history` gives them back as one pytree.
      penalty_mask: ``mask(params) -> pytree of bool``: leaves penalised by ``l1``/``l2``
        and decoupled weight decay (default: all but leaves named ``b``/``bias``).
      eval_every: evaluate (record a history row, check the stop conditions) every this
        many epochs; ``patience`` then counts evaluations. Long full-batch runs (100 000
        iterations of the textbook loop) are several times faster with e.g. 1000, since
        the per-epoch bookkeeping then costs nothing. A non-finite step still stops a
        configuration at once. ``history["epoch"]`` gives each row's (0-based) epoch.
      progress: show a progress bar over epochs (a host callback per evaluation).
      standardize: scale data leaves to mean 0 and standard deviation 1 with statistics
        of the *training* data only, inside the program (validation data and, in a
        k-fold sweep, each fold's held-out part use the training part's statistics).
        ``True`` = the first leaf (``x`` of ``(x, y)``), or leaf indices in
        ``jax.tree.leaves(data)`` order. The parameters then live in the standardised
        feature space.

    Returns:
      :class:`jaxgd.FitResult` with ``params``, ``history``, ``stop_reason``,
      ``epochs_run`` and ``steps_run``.

    Example:
      >>> import jax.numpy as jnp, jaxgd
      >>> x = jnp.array([[1.0], [2.0], [3.0]]); y = 2 * x[:, 0]
      >>> loss = lambda p, b: jnp.mean((b[0][:, 0] * p["w"] - b[1]) ** 2)
      >>> res = jaxgd.fit(loss, {"w": jnp.array(1.0)}, (x, y),
      ...                 hparams={"learning_rate": 0.01}, epochs=100)
      >>> round(float(res.params["w"]), 3)
      2.0
    """
    from .results import FitResult

    prepared = prepare(
        loss, params, data, optimizer=optimizer, hparams=hparams, batch_size=batch_size,
        epochs=epochs, shuffle=shuffle, drop_last=drop_last, schedule=schedule,
        accumulate=accumulate, val_data=val_data, grad_tol=grad_tol, loss_target=loss_target,
        patience=patience, min_delta=min_delta, diverge_factor=diverge_factor,
        restore_best=restore_best, metrics=metrics, record_steps=record_steps,
        record_params=record_params,
        penalty_mask=penalty_mask, eval_every=eval_every, progress=progress,
        standardize=standardize,
    )
    key = as_key(key)
    spec, params, data, val_data, numeric = prepared
    dt = float_dtype(params)
    tc = jax.device_put({k: tc_array(k, v, dt)[None, None] for k, v in numeric.items()})
    with epoch_progress(spec):
        out = compiled_program(spec)(params, data, val_data, tc, key[None], None, None)
        out = jax.block_until_ready(out)
    out = jax.tree.map(lambda a: a[0, 0], jax.device_get(out))  # one transfer, host slicing
    out["params"] = jax.tree.map(jnp.asarray, out["params"])
    return FitResult.from_program(out, spec)
