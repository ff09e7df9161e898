"""``fit``: one training configuration as one compiled program.

The front door of a single run: the options are checked (:mod:`jaxgd.options`,
:mod:`jaxgd.prepare`), and the engine (:mod:`jaxgd.engine`) runs a population of one
through the program (:mod:`jaxgd.program`); the result is a :class:`jaxgd.FitResult`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from . import autoplan, trackers
from .checkpoint import checkpointer_for
from .engine import ChunkInputs, Engine, chunk_record, single_inputs
from .fingerprint import fit_fingerprint
from .observers import Call, ProgressBar
from .options import collect, document
from .prepare import Prepared, prepare, program_data, seeds_key_stack
from .spec import ProgramOutput, evals_of, loop_name

__all__ = ["fit"]


def fit(
    loss: Callable[..., Any],
    params: Any,
    data: Any,
    *,
    optimizer: Any = "sgd",
    hparams: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    windows: int | None = None,
    feed: str = "auto",
    shuffle: bool | str = True,
    drop_last: bool = False,
    key: Any = None,
    schedule: str = "constant",
    accumulate: int = 1,
    val_data: Any = None,
    state: Any = None,
    grad_tol: float | None = None,
    loss_target: float | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    diverge_factor: float | None = None,
    restore_best: bool = False,
    metrics: str = "auto",
    record_steps: bool = False,
    record_params: bool = False,
    penalty_mask: Callable[[Any], Any] | None = None,
    eval_every: int = 1,
    loop: str | int = "auto",
    progress: bool = False,
    track: Any = None,
    standardize: bool | int | tuple[int, ...] | None = None,
    out: str | os.PathLike | None = None,
    checkpoint_every: int | float | str | None = None,
):
    """Train ``params`` on ``data`` by gradient descent; the whole run is one jitted program.

    Batch, stochastic and mini-batch gradient descent are the same loop with a different
    ``batch_size``: ``None`` uses all N samples per step (one step per epoch), ``1`` one
    sample per step, ``B`` B samples. An epoch has ceil(N/B) steps, the last holding
    N mod B samples with its gradient the mean over those alone (PyTorch's DataLoader), or
    floor(N/B) steps with ``drop_last=True``.

    Args:
      loss: pure ``loss(params, batch) -> scalar`` (or ``(scalar, metrics)``, metrics a
        dict of scalars recorded per evaluation); ``batch`` has the structure of ``data``
        with a leading batch axis. It should be a mean over the batch so that the last,
        smaller batch is weighted like PyTorch's. After its first two parameters (params
        and batch, whatever their names) it may declare keyword parameters
        ``key`` (a PRNG key per step, :func:`jaxgd.loss_key`; None in evaluation passes),
        ``train``, ``state`` (with ``state=``) and ``hparams``: see
        :mod:`jaxgd.lossform`.
      params: initial parameters: any pytree of floating arrays (bfloat16 included), a
        flax variable dict's ``params``, an nnx state, or a model object such as an
        equinox Module (its floating arrays trained, other leaves held as they are).
      data: pytree of arrays sharing the leading axis N, e.g. ``(x, y)``; with
        ``windows=``, a 1-D integer token stream; host-fed (``feed=``): NumPy arrays or
        ``np.memmap`` kept on the host, or an iterable of batches (one per update; a
        later batch may hold fewer samples than the first, a ``DataLoader``'s last).
      {options}

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
    from .store import RunStore

    opts = collect("fit", locals())
    ckpt = checkpointer_for(checkpoint_every, out)
    trackers.check(opts.track)  # a missing tracker package: before anything runs
    p = prepare(loss, params, data, opts)
    spec = p.spec
    ch = single_inputs(p, seeds_key_stack([key]), hparams)
    store = None if out is None else RunStore.open(
        out, fit_fingerprint(opts, loss, params, p), what="run")
    try:
        with trackers.tracking(opts.track, "jaxgd-fit", lambda: {0: ("fit", {})}) as tracked:
            engine = Engine(program_data(p), observers=[ProgressBar(), *tracked],
                            checkpoint=ckpt)
            rec, spec, trials, loop, opt_state = run_fit(engine, p, ch, store, opts.loop)
            if store is not None:  # the final files, as a sweep of this one configuration
                from .results import SweepResult

                row = {k: np.asarray(v).item() if np.size(v) == 1 else v
                       for k, v in (hparams or {}).items()}
                one = SweepResult.from_runs([row], [0], [rec], epochs)
                one.fingerprint = store.fingerprint
                one.loop = loop
                one.plan_trials = trials
                one.save(store.path, _store=store)  # releases the lock
            out = ProgramOutput(**{k: rec[k] for k in ProgramOutput._fields})
            out = jax.tree.map(lambda a: a[0], out)  # host arrays
            # on the device as they are (jnp.asarray would compile a copy per shape)
            params, state = jax.device_put((out.params, out.state))
            out = out._replace(params=params, state=state)
            if p.combined is not None:  # the model object, with its trained arrays
                out = out._replace(params=p.combined.rebuild(out.params))
            if spec.restore_best and int(out.best_epoch) >= 0:
                opt_state = None  # the best evaluation's parameters: not this state's
            res = dataclasses.replace(FitResult.from_program(out, spec), loop=loop,
                                      plan_trials=trials, opt_state=opt_state)
            for t in tracked:
                t.finish(res)
    finally:
        if store is not None:
            store.release_lock_on_error()
    return res


FIT_TAG = "fit"  # the name of a fit's result (and checkpoints) in its run folder


def run_fit(engine: Engine, p: Prepared, ch: ChunkInputs, store=None, loop_opt: Any = "scan"
            ) -> tuple[dict[str, Any], Any, Any, str | None, Any]:
    """The program's outputs of one configuration as a chunk record (leading axis of
    length 1): read from the run folder ``store`` when it holds them, else run (from
    the folder's last checkpoint, if any) and saved there; with the spec that ran (its
    loop chosen by :func:`jaxgd.autoplan.choose` for ``loop_opt="auto"``; ``p``'s when
    read back), the plan trials (a table, None when none was measured) and the loop
    that computed the record (:attr:`jaxgd.FitResult.loop`: when read back, the
    folder's record of it; None when unknown) and the final optimizer state (None when
    read back: a run folder does not hold it)."""
    spec = p.spec
    n = evals_of(spec)[1]
    call = Call(spec, 0, 1, 1, 0, n, configs=np.zeros((1, 1), np.int64))
    if store is not None:
        cached = store.load_chunk(FIT_TAG, jax.tree.structure(p.params),
                                  None if p.state is None else jax.tree.structure(p.state))
        if cached is not None and np.array_equal(cached.get("config"), [0]):
            with engine.running(1):  # the observers (trackers) see the rows read back
                engine.read_back(call._replace(cached=True), cached)
            from .store import recorded_plan

            rec = recorded_plan(store.path)  # what computed them, if recorded
            return cached, spec, rec["plan_trials"], rec["loop"], None
    resume = engine.resume_of(store, FIT_TAG, p, ch, [0])
    spec, trials = autoplan.choose(engine, p, ch, 0, n - (0 if resume is None else resume.at),
                                   loop_opt, "vmap")
    p = p._replace(spec=spec)
    with engine.running(1), engine.catching(store):
        a = engine.advance(p, ch, 0, n, call._replace(spec=spec), resume=resume,
                           save=engine.saver(store, FIT_TAG, [0]))
    rec = chunk_record(jax.tree.map(lambda a: a[0], a.output())._asdict(), [0])
    if store is not None:
        store.save_chunk(FIT_TAG, rec)
        store.drop_checkpoints(FIT_TAG)
    # resumed under loop="auto": the updates before the checkpoint may have run another
    # plan, measured then (every plan computes the same numbers, to float rounding)
    loop = None if resume is not None and loop_opt == "auto" else loop_name(spec)
    return rec, spec, autoplan.table(trials), loop, a.opt_state()


# the options' entries of the docstring come from the table in jaxgd.options
fit.__doc__ = fit.__doc__.replace("      {options}\n", document("fit") + "\n")
