"""``jaxgd.fit`` against a plain NumPy gradient-descent loop (float64, 1e-10).

The reference is the textbook loop written out below: linear regression with the mean
squared error, batches taken in order, the last short batch averaged over its own
samples (PyTorch's DataLoader), optionally dropped.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd

N, D = 10, 3
LR = 0.05
EPOCHS = 4
TOL = 1e-10


def mse(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def make_problem(seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(N, D))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * r.normal(size=N)
    w0 = r.normal(size=D)
    b0 = 0.1
    return x, y, w0, b0


# ----------------------------------------------------------------------------- reference


def np_loss_grad(w, b, x, y):
    r = x @ w + b - y
    n = len(y)
    return np.mean(r**2), 2.0 / n * x.T @ r, 2.0 / n * np.sum(r)


def np_batches(n, batch_size, drop_last):
    if batch_size is None:
        return [np.arange(n)]
    out = [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if drop_last and len(out[-1]) < batch_size:
        out = out[:-1]
    return out


def np_train(x, y, w, b, *, lr, epochs, batch_size, drop_last, momentum=0.0, nesterov=False):
    """SGD / heavy ball in optax's form: v = g + m v; p -= lr v (nesterov: g + m v_new)."""
    w, b = np.array(w, float), float(b)
    vw, vb = np.zeros_like(w), 0.0
    step_loss, epoch_loss = [], []
    for _ in range(epochs):
        row = []
        for idx in np_batches(len(y), batch_size, drop_last):
            loss, gw, gb = np_loss_grad(w, b, x[idx], y[idx])
            row.append(loss)
            vw, vb = gw + momentum * vw, gb + momentum * vb
            uw, ub = (gw + momentum * vw, gb + momentum * vb) if nesterov else (vw, vb)
            w, b = w - lr * uw, b - lr * ub
        step_loss.append(row)
        epoch_loss.append(np_loss_grad(w, b, x, y)[0])
    return w, b, np.array(step_loss), np.array(epoch_loss)


# ----------------------------------------------------------------------------- tests

CASES = [
    # batch_size, drop_last, optimizer, extra hparams
    (None, False, "sgd", {}),  # full-batch GD
    (1, False, "sgd", {}),  # in-order SGD
    (4, False, "sgd", {}),  # mini-batch, last batch of 2
    (4, True, "sgd", {}),  # mini-batch, last batch dropped
    (4, False, "momentum", {"momentum": 0.8}),  # heavy ball, optax/PyTorch form
    (3, False, "nesterov", {"momentum": 0.7}),
]


@pytest.mark.parametrize("batch_size,drop_last,optimizer,extra", CASES)
def test_trajectory_matches_numpy(x64, report, batch_size, drop_last, optimizer, extra):
    x, y, w0, b0 = make_problem()
    res = jaxgd.fit(
        mse, {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}, (x, y), optimizer=optimizer,
        hparams={"learning_rate": LR, **extra}, batch_size=batch_size, drop_last=drop_last,
        epochs=EPOCHS, shuffle=False, record_steps=True,
    )
    w, b, step_loss, epoch_loss = np_train(
        x, y, w0, b0, lr=LR, epochs=EPOCHS, batch_size=batch_size, drop_last=drop_last,
        momentum=extra.get("momentum", 0.0), nesterov=optimizer == "nesterov",
    )
    assert res.params["w"].dtype == jnp.float64
    assert res.stop_reason == "max_epochs"
    assert res.epochs_run == EPOCHS
    per_epoch = len(np_batches(N, batch_size, drop_last))  # ceil(N/B), floor(N/B) if drop_last
    assert res.steps_run == EPOCHS * per_epoch
    # the loss of every batch before its update = the whole parameter trajectory
    assert res.history["step_loss"].shape == step_loss.shape
    err_step = np.max(np.abs(res.history["step_loss"] - step_loss))
    err_epoch = np.max(np.abs(res.history["loss"] - epoch_loss))
    err_w = np.max(np.abs(np.asarray(res.params["w"]) - w))
    err_b = abs(float(res.params["b"]) - b)
    report(f"numpy f64 {optimizer} B={batch_size} drop_last={drop_last}",
           step_loss=err_step, epoch_loss=err_epoch, w=err_w, b=err_b,
           w_rel=err_w / np.max(np.abs(w)))
    assert err_step < TOL
    assert err_epoch < TOL
    assert err_w < TOL
    assert err_b < TOL
    # the trajectory really moved (guards against a vacuous comparison)
    assert np.max(np.abs(w - w0)) > 0.1


@pytest.mark.parametrize(
    "n,batch_size,drop_last,per_epoch",
    [
        # (None, 1, 4 with and without drop_last are covered by the parity test above)
        (10, 16, False, 1),  # B > N: one short batch of N
    ],
)
def test_step_and_epoch_accounting(n, batch_size, drop_last, per_epoch):
    epochs = 3
    x = np.linspace(-1, 1, n, dtype=np.float32)[:, None] * np.ones((1, D), np.float32)
    y = np.ones(n, np.float32)
    res = jaxgd.fit(mse, {"w": jnp.zeros(D), "b": jnp.zeros(())}, (x, y),
                    hparams={"learning_rate": 1e-3}, batch_size=batch_size,
                    drop_last=drop_last, epochs=epochs, shuffle=False, record_steps=True)
    plan = jaxgd.batch_plan(n, batch_size, drop_last)
    expected = (1 if batch_size is None
                else (n // batch_size if drop_last else math.ceil(n / batch_size)))
    assert per_epoch == expected == plan.steps_per_epoch
    assert res.steps_run == epochs * per_epoch
    assert res.epochs_run == epochs
    assert res.history["step_loss"].shape == (epochs, per_epoch)
    assert all(len(v) == epochs for v in res.history.values())


def test_batch_plan_pytorch_example():
    p = jaxgd.batch_plan(50_000, 256)
    assert (p.steps_per_epoch, p.full_steps, p.last_batch_size) == (196, 195, 80)
    p = jaxgd.batch_plan(50_000, 256, drop_last=True)
    assert (p.steps_per_epoch, p.full_steps, p.last_batch_size) == (195, 195, 0)


def np_line(x, y, lr, epochs, target):
    """Full-batch GD on the benchmark's line (problem A) in float64: per epoch the loss
    and gradient norm before the update and the loss after it; stops after the first
    epoch whose evaluated loss is <= ``target`` (``metrics="full"``: the loss after the
    update; ``"batch"``: the epoch's batch loss, before it)."""
    w = b = 0.0
    rows = []
    for _ in range(epochs):
        r = x * w + b - y
        gw, gb = 2.0 * np.mean(r * x), 2.0 * np.mean(r)
        before, norm = np.mean(r**2), math.hypot(gw, gb)
        w, b = w - lr * gw, b - lr * gb
        rows.append((before, norm, np.mean((x * w + b - y) ** 2), w, b))
    return np.array(rows)


@pytest.mark.parametrize("metrics", ["full", "batch"])
@pytest.mark.parametrize("target", [None, 1.0])
def test_full_batch_line_history_matches_numpy(x64, metrics, target):
    """Every history column of a full-batch fit of the line (one update per evaluation,
    so the batch means are that update's own numbers), the loss_target stop and the
    final parameters, against the float64 NumPy loop."""
    x, y = jaxgd.datasets.noisy_line(16, seed=0)
    x, y = np.asarray(x, np.float64)[:, 0], np.asarray(y, np.float64)
    lr, epochs = 1e-3, 200
    res = jaxgd.fit(lambda p, b: jnp.mean((b[0] * p["w"] + p["b"] - b[1]) ** 2),
                    {"w": jnp.zeros(()), "b": jnp.zeros(())}, (x, y), optimizer="sgd",
                    hparams={"learning_rate": lr}, epochs=epochs, shuffle=False,
                    metrics=metrics, loss_target=target)
    ref = np_line(x, y, lr, epochs, target)
    before, norm, after = ref[:, 0], ref[:, 1], ref[:, 2]
    evaluated = after if metrics == "full" else before
    n = epochs if target is None else int(np.argmax(evaluated <= target)) + 1
    assert res.stop_reason == ("max_epochs" if target is None else "loss_target")
    assert 1 < n < epochs or target is None
    assert res.epochs_run == res.steps_run == n
    h = res.history
    assert sorted(h) == ["batch_loss", "epoch", "grad_norm", "loss", "lr"]
    np.testing.assert_array_equal(h["epoch"], np.arange(n))
    np.testing.assert_array_equal(h["lr"], np.full(n, lr))
    for got, want in ((h["loss"], evaluated[:n]), (h["batch_loss"], before[:n]),
                      (h["grad_norm"], norm[:n])):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    np.testing.assert_allclose([float(res.params["w"]), float(res.params["b"])],
                               ref[n - 1, 3:], rtol=1e-12, atol=0)
    assert abs(float(res.params["w"])) > 0.1  # the trajectory moved
