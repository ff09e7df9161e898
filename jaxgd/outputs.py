"""A program's outputs from its state: on the device (:func:`finalize`, inside a program)
or on the host from a block's last state (:func:`host_outputs`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from . import loop
from .objective import tree_where
from .spec import ProgramOutput, ProgramSpec, State, Traced


def finalize(spec: ProgramSpec, st: State) -> ProgramOutput:
    """The outputs of one configuration (its best parameters with ``restore_best``); the
    history is assembled on the host from the blocks (see :func:`jaxgd.engine.run_blocks`)."""
    params, mstate = st.params, st.model_state
    if spec.restore_best:
        use_best = st.best_epoch >= 0
        params = tree_where(use_best, st.best_params, params)
        if spec.form.state:
            mstate = tree_where(use_best, st.best_model_state, mstate)
    return _outputs(st, params, mstate)


def host_outputs(spec: ProgramSpec, st: State, keys, traced: Traced,
                 to_host: Callable[[Any], Any] = np.asarray) -> ProgramOutput:
    """:func:`finalize` of a state in the program's layout for ``keys`` and ``traced``,
    on the host: the fields it reads brought home with ``to_host``, their [stream, config]
    axes back, the same selections in NumPy (so the same numbers). The block program
    returns its state only (each output copied from the state would be one more kernel
    for XLA to compile, ~10 ms each); the host takes the outputs from the last state."""
    st = jax.tree.map(to_host, st._replace(opt_state=None, ahead=None))
    st = loop.unsqueeze(*loop.single(keys, traced), st)
    params, mstate = st.params, st.model_state
    if spec.restore_best:
        use_best = np.asarray(st.best_epoch) >= 0

        def pick(best, last):
            last = np.asarray(last)
            cond = use_best.reshape(use_best.shape + (1,) * (last.ndim - use_best.ndim))
            return np.where(cond, np.asarray(best), last)

        params = jax.tree.map(pick, st.best_params, params)
        if spec.form.state:
            mstate = jax.tree.map(pick, st.best_model_state, mstate)
    return _outputs(st, params, mstate)


def _outputs(st: State, params, mstate) -> ProgramOutput:
    """The outputs read from state ``st`` (device or host arrays), with the chosen
    ``params`` and model state ``mstate``; the history is assembled elsewhere."""
    return ProgramOutput(
        best_epoch=st.best_epoch,
        best_metric=st.best_metric,
        diverged_step=st.diverged_step,
        epochs_run=st.epochs_run,
        evals_run=st.evals_run,
        history={},
        init_loss=st.init_loss,
        params=params,
        reason=st.reason,
        state=mstate,
        steps_run=st.step,
    )
