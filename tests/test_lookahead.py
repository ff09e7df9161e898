"""Full-batch GD passes over the training data once per epoch.

With full batches and full-data metrics (the defaults of ``fit(batch_size=None)``), the
evaluation after an update computes the loss and gradient at the new parameters, and the
next update uses that gradient (``program.lookahead``). The reference is the program
without it: the same loss declaring a ``train`` flag it ignores (a loss with ``train``
may behave differently in steps and evaluations, so it gets a step's pass and an
evaluation's pass), itself checked against NumPy elsewhere; and NumPy here.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd
from jaxgd import program, search

R = np.random.default_rng(3)
X = R.normal(size=(48, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.2 * R.normal(size=48)
XV = R.normal(size=(16, 3))
YV = XV @ np.array([1.0, -2.0, 0.5]) + 0.3
P0 = {"w": np.zeros(3), "b": np.zeros(())}

TRACED_N: list[int] = []  # batch sizes the loss was traced at (program builds only)


def mse(p, batch):
    x, y = batch
    TRACED_N.append(x.shape[0])
    r = x @ p["w"] + p["b"] - y
    return jnp.mean(r ** 2), {"mae": jnp.mean(jnp.abs(r))}


def mse_train(p, batch, *, train):  # same numbers; a train flag forbids the lookahead
    return mse(p, batch)


def numpy_rows(lr, l2, epochs):
    """Full-batch GD on loss + l2/2 |w|^2 (bias not penalised): per epoch the loss, the
    objective and the full gradient's norm at the epoch-end parameters."""
    w, b = np.zeros(3), 0.0
    rows = []
    for _ in range(epochs):
        r = X @ w + b - Y
        gw, gb = 2 * X.T @ r / len(Y) + l2 * w, 2 * r.mean()
        w, b = w - lr * gw, b - lr * gb
        r = X @ w + b - Y
        gw, gb = 2 * X.T @ r / len(Y) + l2 * w, 2 * r.mean()
        loss = np.mean(r ** 2)
        rows.append((loss, loss + 0.5 * l2 * w @ w, np.sqrt(gw @ gw + gb * gb)))
    return np.array(rows), w, b


@pytest.mark.parametrize("grad_tol", [None, 1e-12])
def test_full_batch_history_equals_the_two_pass_program_and_numpy(x64, grad_tol):
    kw = dict(hparams={"learning_rate": 0.1, "l2": 0.05}, batch_size=None, epochs=12,
              shuffle=False, val_data=(XV, YV), restore_best=True)
    if grad_tol is not None:
        kw["grad_tol"] = grad_tol
    TRACED_N.clear()
    one = jaxgd.fit(mse, P0, (X, Y), **kw)
    # one pass per epoch: the loss is traced at N once for init and once for the step
    # (an evaluation pass would be a third)
    assert TRACED_N.count(len(Y)) == 2
    two = jaxgd.fit(mse_train, P0, (X, Y), **kw)
    assert set(one.history) == set(two.history)
    for k in one.history:
        np.testing.assert_allclose(one.history[k], two.history[k], rtol=1e-12, atol=1e-15,
                                   err_msg=k)
    for k in ("w", "b"):
        np.testing.assert_allclose(one.params[k], two.params[k], rtol=1e-12, atol=1e-15)
    assert (one.stop_reason, one.best_epoch, one.init_loss) == (
        two.stop_reason, two.best_epoch, two.init_loss)
    ref, w, b = numpy_rows(0.1, 0.05, 12)
    np.testing.assert_allclose(one.history["loss"], ref[:, 0], rtol=1e-12)
    np.testing.assert_allclose(one.history["objective"], ref[:, 1], rtol=1e-12)
    if grad_tol is not None:  # the full-data gradient at the epoch-end parameters
        np.testing.assert_allclose(one.history["grad_norm"], ref[:, 2], rtol=1e-10)
    np.testing.assert_allclose(one.params["w"], w, rtol=1e-12)  # the loss keeps falling


def test_sweep_with_folds_and_standardize_equals_the_two_pass_program(x64):
    kw = dict(grid={"learning_rate": [0.01, 0.1, 0.3], "l2": [0.0, 0.1], "seed": [0, 1]},
              batch_size=None, epochs=9, folds=3, standardize=True, loss_target=0.2)
    one = jaxgd.sweep(mse, P0, (X, Y), **kw)
    two = jaxgd.sweep(mse_train, P0, (X, Y), **kw)
    for k in one.history:
        np.testing.assert_allclose(one.history[k], two.history[k], rtol=1e-12, atol=1e-15,
                                   err_msg=k)
    np.testing.assert_allclose(one.params["w"], two.params["w"], rtol=1e-12, atol=1e-15)
    assert (one.table["stop_reason"] == two.table["stop_reason"]).all()


def test_pbt_changing_the_penalty_uses_the_new_penalty_gradient(x64):
    """PBT explores l2 between calls: the carried gradient is the data loss's only, and
    the penalty's gradient is taken at each step with the member's current l2."""
    kw = dict(grid={"learning_rate": [0.05, 0.1, 0.2, 0.3], "l2": [0.0, 0.5]},
              batch_size=None, epochs=8, val_data=(XV, YV),
              search=search.PBT(interval=2, quantile=0.25, explore=("l2", "learning_rate"),
                                resample=0.5, seed=2))
    one = jaxgd.sweep(mse, P0, (X, Y), **kw)
    two = jaxgd.sweep(mse_train, P0, (X, Y), **kw)
    assert one.lineage["l2"].nunique() > 1
    assert one.lineage.equals(two.lineage)
    for k in ("w", "b"):
        np.testing.assert_allclose(one.params[k], two.params[k], rtol=1e-12, atol=1e-15)


def test_which_programs_look_ahead():
    from jaxgd.options import collect, options_for
    from jaxgd.prepare import prepare

    def spec_of(loss, **kw):
        opts = {o.name: o.default for o in options_for("fit")} | kw
        opts["hparams"] = {"learning_rate": 0.1}
        return prepare(loss, P0, (X, Y), collect("fit", opts)).spec

    assert program.lookahead(spec_of(mse, batch_size=None))
    assert not program.lookahead(spec_of(mse_train, batch_size=None))  # train flag
    assert not program.lookahead(spec_of(mse, batch_size=16))  # mini-batches
    assert not program.lookahead(spec_of(mse, batch_size=None, metrics="batch"))
    assert not program.lookahead(spec_of(mse, batch_size=24, accumulate=2))
