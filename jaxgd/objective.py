"""What one update computes: the loss in its form, the penalty, the gradient.

:func:`call_loss` calls the user's loss (:mod:`jaxgd.lossform`) on a batch, split over a
mesh's ``"data"`` axis when there is one (:func:`shard_batch`); :func:`objective` adds the
``l1``/``l2`` penalty; :func:`mean_grad` averages the gradient over ``accumulate``
micro-batches; :func:`lookahead` (full-batch GD) computes the next step's loss and
gradient with this step. Used by :mod:`jaxgd.program` (the training loop and the
evaluation) and :mod:`jaxgd.hostloop`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import lossform
from .losses import abs_l1, default_penalty_mask
from .spec import Ahead, ProgramSpec, metric_dtype


def lookahead(spec: ProgramSpec) -> bool:
    """Full-batch GD whose evaluations pass over the training data: the evaluation
    after an update computes the loss *and gradient* at the new parameters, and that
    gradient is the next update's. One forward and backward pass per epoch instead of a
    step's pass plus an evaluation's pass; the same numbers (the batch is the training
    data, and a loss without key, train flag, state or hyper-parameters is called the
    same way in steps and evaluations). The penalty's gradient is added at each step, so
    a hyper-parameter changed between calls (population-based training) is never stale."""
    plan, f = spec.plan, spec.form
    return (plan.full_steps == 1 and plan.last_batch_size == 0 and spec.accumulate == 1
            and plan.batch_size == plan.n and spec.metrics != "batch" and not spec.window
            and not spec.fed
            and not (f.key or f.train or f.state or f.takes_hparams))


def ahead_of(spec: ProgramSpec, params, batch, tc) -> Ahead:
    def f(p):
        loss, _, m = call_loss(spec, p, None, batch, None, False, tc)
        return loss, m
    (loss, m), g = jax.value_and_grad(f, has_aux=True)(params)
    return Ahead(loss, g, m)


def with_penalty(spec: ProgramSpec, params, tc, a: Ahead):
    """(objective, its gradient) at ``params`` from the data loss's :class:`Ahead`."""
    pen = penalty(spec, params, tc)
    if pen is None:
        return a.loss, a.grad
    gp = jax.grad(lambda p: penalty(spec, p, tc))(params)
    return a.loss + pen, jax.tree.map(jnp.add, a.grad, gp)


def tree_where(c, a, b):
    return jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)


def penalty(spec: ProgramSpec, params, tc):
    if "l1" not in tc and "l2" not in tc:
        return None
    mask = (spec.penalty_mask or default_penalty_mask)(params)
    leaves = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True)
              if m]
    total = 0.0
    if "l1" in tc:
        total = total + tc["l1"] * sum(jnp.sum(abs_l1(p)) for p in leaves)
    if "l2" in tc:
        total = total + tc["l2"] * 0.5 * sum(jnp.sum(p * p) for p in leaves)
    return total


def call_loss(spec: ProgramSpec, params, state, batch, key, train: bool, tc):
    """The loss in its form (:mod:`jaxgd.lossform`): (loss in the params' dtype, new
    model state or None, metrics dict). Training steps pass a key and ``train=True``;
    evaluation passes ``key=None`` and ``train=False``."""
    f = spec.form
    hp = {k: tc[k] for k in f.hparams} if f.takes_hparams else None
    if spec.batch_sharding is not None:
        batch = shard_batch(spec.batch_sharding, batch)
    value, new_state, metrics = lossform.call(f, spec.loss, params, batch, state=state,
                                              key=key, train=train, hparams=hp)
    mdt = metric_dtype(params)
    # in the params' dtype (at least float32): float64 data with float32 params must not
    # widen the carries
    return (value.astype(mdt), new_state,
            {k: v.astype(mdt) for k, v in metrics.items()})


def shard_batch(sharding, batch):
    """The batch with its samples split over the mesh's ``"data"`` axis (a layout hint:
    XLA computes each device's part and sums the batch mean and the gradient across the
    axis, so the numbers are the single-device ones up to the order of the sums). Leaves
    whose first axis the data axis does not divide (the full-data evaluation of N samples)
    stay as they are, computed whole on each device."""
    n = sharding.mesh.shape["data"]

    def put(a):
        if jnp.ndim(a) >= 1 and a.shape[0] % n == 0:
            return jax.lax.with_sharding_constraint(a, sharding)
        return a

    return jax.tree.map(put, batch)


def data_loss(spec: ProgramSpec, params, batch, state=None, tc=None):
    """The loss of an evaluation pass (key=None, train=False)."""
    return call_loss(spec, params, state, batch, None, False, tc)[0]


def objective(spec: ProgramSpec, params, state, batch, tc, key, train=True):
    loss, new_state, metrics = call_loss(spec, params, state, batch, key, train, tc)
    pen = penalty(spec, params, tc)
    return (loss if pen is None else loss + pen), (loss, new_state, metrics)


def mean_grad(spec, params, state, batch, tc, micro: int, key=None):
    """(objective, data loss, gradient, new model state, metrics) of a batch, accumulated
    over ``micro`` pieces (the model state threaded through them in order; piece ``j``
    gets the key ``fold_in(key, j)`` when ``accumulate > 1``)."""
    vg = jax.value_and_grad(lambda p, s, b, k: objective(spec, p, s, b, tc, k),
                            has_aux=True)
    if micro == 1:
        k = key if key is None or spec.accumulate == 1 else jax.random.fold_in(key, 0)
        (obj, (loss, new_state, m)), g = vg(params, state, batch, k)
        return obj, loss, g, new_state, m
    pieces = jax.tree.map(lambda a: a.reshape((micro, a.shape[0] // micro) + a.shape[1:]), batch)

    def body(carry, xs):
        acc, s = carry
        b, k = (xs, None) if key is None else (xs[0], jax.random.fold_in(key, xs[1]))
        (obj, (loss, s, m)), g = vg(params, s, b, k)
        return (jax.tree.map(jnp.add, acc, (obj, loss, g, m)), s), None

    zero = (jnp.zeros((), metric_dtype(params)), jnp.zeros((), metric_dtype(params)),
            jax.tree.map(jnp.zeros_like, params))
    zero = zero + ({k: jnp.zeros((), metric_dtype(params)) for k in spec.form.metrics},)
    xs = pieces if key is None else (pieces, jnp.arange(micro, dtype=jnp.uint32))
    ((obj, loss, g, m), state), _ = jax.lax.scan(body, (zero, state), xs)
    return (obj / micro, loss / micro, jax.tree.map(lambda x: x / micro, g), state,
            {k: v / micro for k, v in m.items()})


def global_norm(tree) -> jax.Array:
    """Euclidean norm of all leaves together (in at least float32)."""
    def sq(x):
        if jnp.promote_types(x.dtype, jnp.float32) != x.dtype:
            x = x.astype(jnp.float32)
        return jnp.sum(jnp.square(x))
    return jnp.sqrt(sum(sq(x) for x in jax.tree.leaves(tree)))
