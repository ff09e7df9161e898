"""The full-data evaluation computes only what is recorded or checked.

``metrics="full"`` (the default) takes the loss over all N samples with one forward pass;
the full-data gradient is computed only with ``grad_tol`` (or ``metrics="full_grad"``);
otherwise ``history["grad_norm"]`` is the mean of the epoch's batch gradient norms.
Checked against a NumPy reference, and by which batch sizes a gradient is traced for.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd

R = np.random.default_rng(0)
X = R.normal(size=(40, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * R.normal(size=40)).astype(np.float32)
P0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
B, LR, EPOCHS = 8, 0.05, 4

GRAD_SHAPES: list[int] = []  # batch sizes for which a backward pass was traced


@jax.custom_vjp
def _residual(r):
    return r


def _fwd(r):
    return r, r.shape[0]


def _bwd(n, g):
    GRAD_SHAPES.append(n)
    return (g,)


_residual.defvjp(_fwd, _bwd)


def mse(p, batch):
    x, y = batch
    return jnp.mean(_residual(x @ p["w"] + p["b"] - y) ** 2)


def numpy_run():
    """Plain SGD in order (shuffle=False): per epoch, the full-data loss and gradient norm
    and the mean of the batch gradient norms."""
    w, b = np.zeros(3, np.float64), 0.0
    x, y = X.astype(np.float64), Y.astype(np.float64)
    rows = []
    for _ in range(EPOCHS):
        norms = []
        for s in range(0, len(x), B):
            xb, yb = x[s:s + B], y[s:s + B]
            r = xb @ w + b - yb
            gw, gb = 2 * xb.T @ r / len(xb), 2 * r.mean()
            norms.append(np.sqrt(np.sum(gw ** 2) + gb ** 2))
            w, b = w - LR * gw, b - LR * gb
        r = x @ w + b - y
        full = np.sqrt(np.sum((2 * x.T @ r / len(x)) ** 2) + (2 * r.mean()) ** 2)
        rows.append((np.mean(r ** 2), full, np.mean(norms)))
    return np.asarray(rows)


def fit(**kw):
    return jaxgd.fit(mse, P0, (X, Y), hparams={"learning_rate": LR}, batch_size=B,
                     epochs=EPOCHS, shuffle=False, **kw)


@pytest.mark.parametrize("kw, grad_col, full_grad_traced", [
    ({}, 2, False),  # the default: the batch mean, no full-data gradient
    ({"metrics": "full_grad"}, 1, True),
    ({"grad_tol": 1e-9}, 1, True),  # a grad_tol stop needs the full-data gradient
])
def test_full_metrics_compute_what_is_recorded(kw, grad_col, full_grad_traced):
    ref = numpy_run()
    GRAD_SHAPES.clear()
    res = fit(**kw)
    np.testing.assert_allclose(res.history["loss"], ref[:, 0], rtol=2e-5)
    np.testing.assert_allclose(res.history["grad_norm"], ref[:, grad_col], rtol=2e-5)
    assert B in GRAD_SHAPES  # the steps' gradients
    assert (len(X) in GRAD_SHAPES) == full_grad_traced


def test_batch_metrics_never_pass_over_the_data():
    ref = numpy_run()
    GRAD_SHAPES.clear()
    res = fit(metrics="batch")
    np.testing.assert_allclose(res.history["grad_norm"], ref[:, 2], rtol=2e-5)
    assert set(GRAD_SHAPES) == {B}


def test_bad_metrics_value_names_the_choices():
    with pytest.raises(ValueError, match=r"metrics='fast'.*full_grad"):
        fit(metrics="fast")
