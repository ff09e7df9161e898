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


# steps around the warm-up's end (W = 100) and the decays' boundaries
W = 100
W_STEPS = np.array([0, 1, 2, 3, 50, 98, 99, 100, 101, 150, 999, 1000, 1099, 1100, 1101, 2100,
                    5000, 12_345])


def optax_at(sched, steps):
    return np.asarray([sched(int(t)) for t in steps])


def assert_optax(got, ref):
    """jaxgd's traced schedule equals optax's: the same float32 arithmetic, so equal up to a
    few units in the last place (XLA's pow inside a vmapped jit rounds a little apart)."""
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-12)


def test_warmup_closed_form_starts_at_zero():
    """W = 4 on a constant 0.1: updates 0, 1, 2, 3 get 0, 0.025, 0.05, 0.075, then 0.1 (as
    optax.warmup_constant_schedule(0, 0.1, 4) and optax.linear_schedule)."""
    got = value("constant", np.arange(7), 0.1, warmup_steps=4.0)
    np.testing.assert_allclose(got, [0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rtol=1e-6)
    assert got[0] == 0.0
    assert_optax(got, optax_at(optax.warmup_constant_schedule(0.0, 0.1, 4), np.arange(7)))
    # warmup_steps = 0 is no warm-up
    np.testing.assert_allclose(value("constant", STEPS, 0.1, warmup_steps=0.0), 0.1, rtol=1e-6)


@pytest.mark.parametrize("staircase", [0.0, 1.0])
@pytest.mark.parametrize("begin", [0.0, 300.0])
def test_warmup_exponential_is_optax(staircase, begin):
    got = value("exponential", W_STEPS, 0.1, decay_rate=0.5, transition_steps=1000.0,
                staircase=staircase, transition_begin=begin, warmup_steps=float(W))
    ref = optax.warmup_exponential_decay_schedule(
        0.0, 0.1, W, transition_steps=1000, decay_rate=0.5, transition_begin=int(begin),
        staircase=bool(staircase))
    assert_optax(got, optax_at(ref, W_STEPS))
    # independent closed form: ramp t/W, then the decay counted from W (+ transition_begin)
    t = W_STEPS.astype(float)
    e = np.maximum(t - W - begin, 0) / 1000
    e = np.floor(e) if staircase else e
    np.testing.assert_allclose(got, np.where(t < W, 0.1 * t / W, 0.1 * 0.5 ** e), rtol=1e-5)


def test_warmup_cosine_is_optax():
    """optax.warmup_cosine_decay_schedule counts the warm-up inside its decay_steps: jaxgd's
    cosine with warmup_steps W and decay_steps D is optax's with decay_steps W + D."""
    d, alpha = 2000.0, 0.1
    got = value("cosine", W_STEPS, 0.2, decay_steps=d, alpha=alpha, warmup_steps=float(W))
    ref = optax.warmup_cosine_decay_schedule(0.0, 0.2, W, W + int(d), end_value=alpha * 0.2)
    assert_optax(got, optax_at(ref, W_STEPS))
    t = W_STEPS.astype(float)
    frac = np.clip(t - W, 0, d) / d
    closed = 0.2 * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * frac)) + alpha)
    np.testing.assert_allclose(got, np.where(t < W, 0.2 * t / W, closed), rtol=1e-5, atol=1e-8)


def test_warmup_step_and_inverse_time_are_optax_joins():
    warm = optax.linear_schedule(0.0, 0.5, W)
    got = value("step", W_STEPS, 0.5, step_size=1000.0, gamma=0.1, warmup_steps=float(W))
    steps = optax.piecewise_constant_schedule(0.5, {k * 1000: 0.1 for k in range(1, 20)})
    assert_optax(got, optax_at(optax.join_schedules([warm, steps], [W]), W_STEPS))
    got = value("inverse_time", W_STEPS, 0.5, decay_rate=0.5, decay_steps=100.0,
                warmup_steps=float(W))
    inv = lambda t: 0.5 / (1.0 + 0.5 * (t / 100.0))  # noqa: E731 - TensorFlow's closed form
    assert_optax(got, optax_at(optax.join_schedules([warm, inv], [W]), W_STEPS))


def test_step_is_optax_piecewise_constant():
    got = value("step", STEPS, 0.5, step_size=1000.0, gamma=0.1)
    ref = optax.piecewise_constant_schedule(0.5, {k * 1000: 0.1 for k in range(1, 20)})
    assert_optax(got, optax_at(ref, STEPS))
    # gamma = 0: the rate drops to 0 at the first boundary, as piecewise_constant does
    got = value("step", STEPS, 0.5, step_size=1000.0, gamma=0.0)
    ref = optax.piecewise_constant_schedule(0.5, {1000: 0.0})
    assert_optax(got, optax_at(ref, STEPS))


def test_exponential_edge_cases_as_optax():
    # decay_rate = 0: optax's exponential_decay keeps the initial value (no decay)
    got = value("exponential", STEPS, 0.1, decay_rate=0.0, transition_steps=10.0)
    assert_optax(got, optax_at(optax.exponential_decay(0.1, 10, 0.0), STEPS))
    np.testing.assert_allclose(got, 0.1, rtol=1e-7)
    # a growing rate and transition_begin, smooth and staircase
    for stair in (False, True):
        got = value("exponential", STEPS, 0.01, decay_rate=1.5, transition_steps=1000.0,
                    transition_begin=999.0, staircase=float(stair))
        ref = optax.exponential_decay(0.01, 1000, 1.5, transition_begin=999, staircase=stair)
        assert_optax(got, optax_at(ref, STEPS))


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


def test_fit_uses_optax_warmup(x64):
    """fit with warmup_steps = 3 on a cosine: update t uses lr t/3 for t < 3 (0 first: the
    parameters do not move), then the cosine at t - 3 (NumPy loop, closed form)."""
    n, b, epochs, w, d = 6, 2, 4, 3, 5.0  # 3 updates per epoch
    lr = 0.2
    x = np.linspace(-1.0, 1.0, n)
    y = 3.0 * x
    loss = lambda p, batch: jnp.mean((batch[0] * p["w"] - batch[1]) ** 2)
    res = jaxgd.fit(loss, {"w": jnp.asarray(0.0)}, (x, y), schedule="cosine",
                    hparams={"learning_rate": lr, "decay_steps": d, "warmup_steps": w},
                    batch_size=b, epochs=epochs, shuffle=False)

    def rate(t):
        if t < w:
            return lr * t / w
        return lr * 0.5 * (1 + np.cos(np.pi * min(t - w, d) / d))

    wv, t, lrs = 0.0, 0, []
    for _ in range(epochs):
        for s in range(0, n, b):
            xb, yb = x[s:s + b], y[s:s + b]
            wv -= rate(t) * np.mean(2 * (xb * wv - yb) * xb)
            lrs.append(rate(t))
            t += 1
    assert float(res.params["w"]) == pytest.approx(wv, abs=1e-12)
    np.testing.assert_allclose(res.history["lr"], lrs[n // b - 1::n // b], rtol=1e-12)
    one = jaxgd.fit(loss, {"w": jnp.asarray(0.0)}, (x, y), schedule="cosine",
                    hparams={"learning_rate": lr, "decay_steps": d, "warmup_steps": w},
                    batch_size=b, epochs=1, shuffle=False)
    assert float(one.params["w"]) != 0.0  # updates 1 and 2 moved it (update 0 did not)


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
    # warmup_steps traced too: one program, many warm-up lengths
    def warm_at(w, step):
        p = params_of("constant", warmup_steps=w)
        return jaxgd.schedule_value("constant", step, jnp.asarray(0.1, jnp.float32), p)

    h = jax.jit(jax.vmap(warm_at, in_axes=(0, None)))
    np.testing.assert_allclose(h(jnp.asarray([0.0, 4.0, 10.0]), 2), [0.1, 0.05, 0.02],
                               rtol=1e-6)
    np.testing.assert_allclose(h(jnp.asarray([1.0, 2.0, 8.0]), 4), [0.1, 0.1, 0.05], rtol=1e-6)
    assert h._cache_size() == 1
    # nested vmap: rates x steps
    grid = jax.vmap(jax.vmap(lr_at, in_axes=(None, 0)), in_axes=(0, None))(
        rates, jnp.asarray([0, 1000, 2000]))
    np.testing.assert_allclose(grid, 0.1 * np.asarray(rates)[:, None] ** np.array([0, 1, 2]),
                               rtol=1e-5)
