"""Learning-rate schedules: closed forms in NumPy, optax where it agrees, and tracing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd
from jaxgd.optim import SCHEDULES

STEPS = np.array([0, 1, 7, 250, 999, 1000, 1001, 1999, 2000, 2500, 5000, 12_345])


def params_of(kind, **given):
    """The schedule's full parameter dict (defaults filled in, as fit does)."""
    p = {k: v for k, v in SCHEDULES[kind].items() if v is not None}
    p.update(given)
    return {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}


def value(kind, steps, lr, **given):
    f = lambda t: jaxgd.schedule_value(kind, t, jnp.asarray(lr, jnp.float32),
                                       params_of(kind, **given))
    return np.asarray(jax.vmap(f)(jnp.asarray(steps)))


def test_exponential_staircase_tensorflow_example():
    p = dict(decay_rate=0.96, transition_steps=1000.0, staircase=1.0)
    got = value("exponential", [0, 999, 1000, 1999, 2000], 0.1, **p)
    np.testing.assert_allclose(got, [0.1, 0.1, 0.096, 0.096, 0.1 * 0.96**2], rtol=1e-6)
    np.testing.assert_allclose(got, 0.1 * 0.96 ** np.floor(np.array([0, 999, 1000, 1999,
                                                                      2000]) / 1000),
                               rtol=1e-6)


def test_exponential_smooth_and_optax():
    got = value("exponential", STEPS, 0.1, decay_rate=0.96, transition_steps=1000.0)
    np.testing.assert_allclose(got, 0.1 * 0.96 ** (STEPS / 1000), rtol=1e-5)
    ref = optax.exponential_decay(0.1, 1000, 0.96)
    np.testing.assert_allclose(got, [float(ref(t)) for t in STEPS], rtol=1e-5)
    stair = value("exponential", STEPS, 0.1, decay_rate=0.96, transition_steps=1000.0,
                  staircase=1.0)
    ref = optax.exponential_decay(0.1, 1000, 0.96, staircase=True)
    np.testing.assert_allclose(stair, [float(ref(t)) for t in STEPS], rtol=1e-5)


def test_exponential_transition_begin():
    got = value("exponential", STEPS, 0.1, decay_rate=0.5, transition_steps=100.0,
                transition_begin=1000.0)
    np.testing.assert_allclose(got, 0.1 * 0.5 ** (np.maximum(STEPS - 1000, 0) / 100), rtol=1e-5)


def test_step_decay():
    got = value("step", STEPS, 0.5, step_size=1000.0, gamma=0.1)
    np.testing.assert_allclose(got, 0.5 * 0.1 ** np.floor(STEPS / 1000), rtol=1e-5)
    assert got[list(STEPS).index(999)] == pytest.approx(0.5)
    assert got[list(STEPS).index(1000)] == pytest.approx(0.05)


@pytest.mark.parametrize("staircase", [0.0, 1.0])
def test_inverse_time(staircase):
    got = value("inverse_time", STEPS, 0.1, decay_rate=0.5, decay_steps=100.0,
                staircase=staircase)
    e = STEPS / 100
    if staircase:
        e = np.floor(e)
    np.testing.assert_allclose(got, 0.1 / (1 + 0.5 * e), rtol=1e-5)


def test_cosine_and_optax():
    got = value("cosine", STEPS, 0.2, decay_steps=2000.0, alpha=0.1)
    frac = np.minimum(STEPS, 2000) / 2000
    np.testing.assert_allclose(got, 0.2 * (0.9 * 0.5 * (1 + np.cos(np.pi * frac)) + 0.1),
                               rtol=1e-5, atol=1e-8)
    ref = optax.cosine_decay_schedule(0.2, 2000, alpha=0.1)
    np.testing.assert_allclose(got, [float(ref(t)) for t in STEPS], rtol=1e-5, atol=1e-8)
    assert got[-1] == pytest.approx(0.02)


def test_warmup_then_schedule():
    w = 100
    got = value("exponential", STEPS, 0.1, decay_rate=0.5, transition_steps=1000.0,
                warmup_steps=float(w))
    warm = np.minimum(1.0, (STEPS + 1) / w)
    ref = warm * 0.1 * 0.5 ** (np.maximum(STEPS - w, 0) / 1000)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert got[0] == pytest.approx(0.1 / w)
    # warm-up on a constant rate: a linear ramp to lr, then flat
    const = value("constant", STEPS, 0.1, warmup_steps=float(w))
    np.testing.assert_allclose(const, 0.1 * warm, rtol=1e-6)
    # warmup_steps=0 means no warm-up
    np.testing.assert_allclose(value("constant", STEPS, 0.1, warmup_steps=0.0), 0.1, rtol=1e-6)


def test_fit_records_and_uses_exponential_schedule(x64):
    """history["lr"] is the rate of each epoch's last update, and the updates use it."""
    n, b, epochs = 10, 2, 6  # 5 updates per epoch
    lr, rate, steps = 0.1, 0.5, 4.0
    x = np.linspace(-1.0, 1.0, n)
    y = 3.0 * x
    loss = lambda p, batch: jnp.mean((batch[0] * p["w"] - batch[1]) ** 2)
    res = jaxgd.fit(loss, {"w": jnp.asarray(0.0)}, (x, y), schedule="exponential",
                    hparams={"learning_rate": lr, "decay_rate": rate, "transition_steps": steps},
                    batch_size=b, epochs=epochs, shuffle=False)
    last_update = np.arange(1, epochs + 1) * (n // b) - 1
    np.testing.assert_allclose(res.history["lr"], lr * rate ** (last_update / steps), rtol=1e-12)
    # NumPy SGD with the closed-form rate at update t = 0, 1, 2, ...
    w, t = 0.0, 0
    for _ in range(epochs):
        for s in range(0, n, b):
            xb, yb = x[s:s + b], y[s:s + b]
            w -= lr * rate ** (t / steps) * np.mean(2 * (xb * w - yb) * xb)
            t += 1
    assert float(res.params["w"]) == pytest.approx(w, abs=1e-12)


def test_schedule_traced_over_decay_rate_under_jit_and_vmap():
    """Every schedule parameter may be traced: one compiled function, many decay rates."""

    def lr_at(rate, step):
        p = params_of("exponential", decay_rate=rate, transition_steps=1000.0, staircase=1.0)
        p["decay_rate"] = rate
        return jaxgd.schedule_value("exponential", step, jnp.asarray(0.1, jnp.float32), p)

    rates = jnp.linspace(0.5, 0.99, 8)
    f = jax.jit(jax.vmap(lr_at, in_axes=(0, None)))
    got = f(rates, 2000)
    np.testing.assert_allclose(got, 0.1 * np.asarray(rates) ** 2, rtol=1e-5)
    # a new value of the traced step or rates reuses the compiled program
    f(rates * 0.9, 3000)
    assert f._cache_size() == 1
    # jit of a scalar rate too; optax.exponential_decay takes Python numbers and checks
    # them on the host, so it cannot be traced over its decay_rate like this.
    g = jax.jit(lambda r: lr_at(r, 1000))
    assert float(g(0.5)) == pytest.approx(0.05)
    assert float(g(0.25)) == pytest.approx(0.025)
    # nested vmap: rates x steps
    grid = jax.vmap(jax.vmap(lr_at, in_axes=(None, 0)), in_axes=(0, None))(
        rates, jnp.asarray([0, 1000, 2000]))
    np.testing.assert_allclose(grid, 0.1 * np.asarray(rates)[:, None] ** np.array([0, 1, 2]),
                               rtol=1e-5)
