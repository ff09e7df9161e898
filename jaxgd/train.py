"""``fit``: one training configuration as one compiled program.

The front door of a single run: the options are checked (:mod:`jaxgd.options`,
:mod:`jaxgd.prepare`), and the engine (:mod:`jaxgd.engine`) runs a population of one
through the program (:mod:`jaxgd.program`); the result is a :class:`jaxgd.FitResult`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from .engine import Engine, single_inputs
from .observers import Call, ProgressBar
from .options import collect, document
from .prepare import as_key, prepare, program_data
from .spec import evals_of

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
        ``windows=``, a 1-D integer token stream.
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

    p = prepare(loss, params, data, collect("fit", locals()))
    spec = p.spec
    ch = single_inputs(p, as_key(key), hparams)
    engine = Engine(program_data(p), observers=[ProgressBar()])
    with engine.running(1):
        out = engine.advance(p, ch, 0, evals_of(spec)[1], Call(spec, 0, 1, 1, 0,
                                                              evals_of(spec)[1]))
    out = out.output(spec)
    out = jax.tree.map(lambda a: a[0, 0], out)  # host arrays
    out = out._replace(params=jax.tree.map(jnp.asarray, out.params),
                       state=jax.tree.map(jnp.asarray, out.state))
    if p.combined is not None:  # the model object, with its trained arrays
        out = out._replace(params=p.combined.rebuild(out.params))
    return FitResult.from_program(out, spec)


# the options' entries of the docstring come from the table in jaxgd.options
fit.__doc__ = fit.__doc__.replace("      {options}\n", document("fit") + "\n")
