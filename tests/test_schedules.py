"""Learning-rate schedules: closed forms in NumPy, optax where it agrees, and tracing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_recompile import count_compiles

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


# ----------------------------------------------------------------------------- optax's builders
# Each extended schedule against optax's own builder for the same parameters. The optax
# reference is built here from the documented mapping (jaxgd's learning_rate = optax's
# init/peak value; a warm-up is optax's linear_schedule(init_value, lr, W) joined in front).


def optax_ref(kind, hp):
    """optax's schedule for jaxgd's ``schedule=kind`` with ``hparams=hp``."""
    lr, g = hp["learning_rate"], hp.get
    if kind == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            g("init_value", 0.0), lr, int(g("warmup_steps")), int(g("decay_steps")),
            g("end_value", 0.0), g("exponent", 1.0))
    if kind == "constant":
        base = optax.constant_schedule(lr)
    elif kind == "exponential":
        base = optax.exponential_decay(lr, int(g("transition_steps", 1)), g("decay_rate"),
                                       int(g("transition_begin", 0)), bool(g("staircase", 0)),
                                       end_value=g("end_value"))
    elif kind == "cosine":
        alpha = g("end_value", 0.0) / lr if g("end_value", 0.0) else g("alpha", 0.0)
        base = optax.cosine_decay_schedule(lr, int(g("decay_steps")), alpha, g("exponent", 1.0))
    elif kind == "polynomial":
        base = optax.polynomial_schedule(lr, g("end_value", 0.0), g("power"),
                                         int(g("transition_steps")), int(g("transition_begin", 0)))
    elif kind == "linear":
        base = optax.linear_schedule(lr, g("end_value", 0.0), int(g("transition_steps")),
                                     int(g("transition_begin", 0)))
    if "warmup_steps" not in hp:
        return base
    w = int(hp["warmup_steps"])
    return optax.join_schedules([optax.linear_schedule(g("init_value", 0.0), lr, w), base], [w])


# (kind, hparams): several parameter sets of each extended schedule
EXTENDED = [
    ("constant", {"learning_rate": 0.1, "warmup_steps": 4, "init_value": 0.02}),
    ("constant", {"learning_rate": 0.3, "warmup_steps": 7, "init_value": 0.5}),  # warm down
    ("exponential", {"learning_rate": 0.1, "decay_rate": 0.5, "transition_steps": 5,
                     "end_value": 0.02}),
    ("exponential", {"learning_rate": 0.1, "decay_rate": 0.5, "transition_steps": 5,
                     "transition_begin": 2, "staircase": 1, "end_value": 0.02,
                     "warmup_steps": 3, "init_value": 0.01}),
    ("exponential", {"learning_rate": 0.01, "decay_rate": 1.5, "transition_steps": 4,
                     "end_value": 0.05}),  # a growth bounded above
    ("cosine", {"learning_rate": 0.1, "decay_steps": 20, "alpha": 0.1, "exponent": 2.0}),
    ("cosine", {"learning_rate": 0.2, "decay_steps": 30, "end_value": 0.01, "exponent": 0.5}),
    ("cosine", {"learning_rate": 0.1, "decay_steps": 20, "end_value": 0.001, "exponent": 1.5,
                "warmup_steps": 5, "init_value": 0.01}),
    ("warmup_cosine", {"learning_rate": 0.1, "warmup_steps": 5, "decay_steps": 25}),
    ("warmup_cosine", {"learning_rate": 0.1, "warmup_steps": 5, "init_value": 0.01,
                       "decay_steps": 25, "end_value": 0.001, "exponent": 0.5}),
    ("warmup_cosine", {"learning_rate": 0.05, "warmup_steps": 0, "decay_steps": 40,
                       "end_value": 0.01, "exponent": 3.0}),
    ("polynomial", {"learning_rate": 0.1, "transition_steps": 20, "power": 2.0,
                    "end_value": 0.01, "transition_begin": 3}),
    ("polynomial", {"learning_rate": 0.1, "transition_steps": 30, "power": 0.5,
                    "warmup_steps": 4, "init_value": 0.03}),
    ("linear", {"learning_rate": 0.1, "transition_steps": 20}),
    ("linear", {"learning_rate": 0.1, "transition_steps": 20, "end_value": 0.01,
                "transition_begin": 5, "warmup_steps": 2}),
]
E_STEPS = np.arange(0, 60)


def schedule_params(hp):
    return {k: v for k, v in hp.items() if k != "learning_rate"}


def assert_lr(got, ref, peak):
    """Equal to float32 rounding: relative, and absolute on the scale of the peak rate (a
    cosine near its end, 1 + cos(~pi), loses digits to cancellation on both sides)."""
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * peak)


@pytest.mark.parametrize("kind,hp", EXTENDED)
def test_extended_schedules_equal_optax(kind, hp):
    got = value(kind, E_STEPS, hp["learning_rate"], **schedule_params(hp))
    assert_lr(got, optax_at(optax_ref(kind, hp), E_STEPS), hp["learning_rate"])


def test_cosine_warmup_from_init_to_end_value_is_optax_warmup_cosine():
    """jaxgd's cosine with W, D, init_value and end_value is optax's warmup_cosine_decay_schedule
    with decay_steps W + D, and schedule="warmup_cosine" takes optax's own decay_steps."""
    hp = {"init_value": 3e-4, "warmup_steps": 10.0, "end_value": 3e-5, "exponent": 1.0}
    ref = optax_at(optax.warmup_cosine_decay_schedule(3e-4, 3e-3, 10, 100, 3e-5), E_STEPS * 2)
    assert_lr(value("cosine", E_STEPS * 2, 3e-3, decay_steps=90.0, **hp), ref, 3e-3)
    assert_lr(value("warmup_cosine", E_STEPS * 2, 3e-3, decay_steps=100.0, **hp), ref, 3e-3)


def test_schedule_value_takes_python_numbers_and_fills_defaults():
    got = jaxgd.schedule_value("cosine", 5, 0.1, {"decay_steps": 10})
    assert float(got) == pytest.approx(float(optax.cosine_decay_schedule(0.1, 10)(5)), rel=1e-6)
    got = jaxgd.schedule_value("exponential", np.arange(4), 1, {"decay_rate": 0.5,
                                                               "transition_steps": 2})
    np.testing.assert_allclose(got, 0.5 ** (np.arange(4) / 2), rtol=1e-6)
    got = jaxgd.schedule_value("constant", 2.0, np.float32(0.1),
                               {"warmup_steps": 4, "init_value": 0.02})
    assert float(got) == pytest.approx(0.06, rel=1e-6)
    with pytest.raises(ValueError, match="needs parameter 'decay_steps'"):
        jaxgd.schedule_value("cosine", 1, 0.1)
    with pytest.raises(ValueError, match="has no parameter 'decay_rate'"):
        jaxgd.schedule_value("cosine", 1, 0.1, {"decay_steps": 3, "decay_rate": 0.5})
    with pytest.raises(ValueError, match="schedule='cosin' is unknown"):
        jaxgd.schedule_value("cosin", 1, 0.1, {"decay_steps": 3})
    with pytest.raises(ValueError, match="'init_value' is the warm-up's start"):
        jaxgd.schedule_value("constant", 1, 0.1, {"init_value": 0.01})


def test_extended_parameters_are_checked_before_compiling():
    base = dict(loss=lambda p, b: jnp.mean((b[0] * p["w"] - b[1]) ** 2),
                params={"w": jnp.asarray(0.0)}, data=(np.ones(4), np.ones(4)))
    bad = [
        ("constant", {"init_value": 0.01}, "needs hparams\\['warmup_steps'\\]"),
        ("cosine", {"decay_steps": 5, "alpha": 0.1, "end_value": 0.01}, "give one of them"),
        ("warmup_cosine", {"warmup_steps": 5, "decay_steps": 5}, "decay_steps > warmup_steps"),
        ("linear", {"transition_steps": 5, "end_value": -0.1}, "'end_value'.*>= 0"),
        ("polynomial", {"transition_steps": 5}, "needs hparams\\['power'\\]"),
        ("exponential", {"decay_rate": 0.5, "transition_begin": -1}, "transition_begin"),
    ]
    for kind, hp, msg in bad:
        with pytest.raises(ValueError, match=msg):
            jaxgd.fit(base["loss"], base["params"], base["data"], schedule=kind, epochs=1,
                      hparams={"learning_rate": 0.1, **hp})


# ----------------------------------------------------------------------------- fits and sweeps

RNG = np.random.default_rng(3)
FX = RNG.normal(size=(24, 3)).astype(np.float32)
FY = (FX @ np.asarray([1.0, -2.0, 0.5], np.float32) + 0.1).astype(np.float32)
FB, FEPOCHS = 8, 12  # 3 updates an epoch, 36 in all
RECORDED = np.arange(1, FEPOCHS + 1) * (len(FX) // FB) - 1  # each epoch's last update


def fsq(p, b):
    return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)


def optax_run(opt, epochs=FEPOCHS, bs=FB):
    """A hand-written optax loop over the batches in order."""
    p = {"w": jnp.zeros(3)}
    s = opt.init(p)
    for _ in range(epochs):
        for i in range(0, len(FX), bs):
            u, s = opt.update(jax.grad(fsq)(p, (FX[i:i + bs], FY[i:i + bs])), s, p)
            p = optax.apply_updates(p, u)
    return p


# per kind: fixed hparams and two grid axes of two values each
SWEPT = {
    "constant": ({"learning_rate": 0.1},
                 {"warmup_steps": [4.0, 9.0], "init_value": [0.0, 0.03]}),
    "exponential": ({"learning_rate": 0.1, "transition_steps": 5.0, "warmup_steps": 3.0},
                    {"decay_rate": [0.5, 0.8], "end_value": [0.02, 0.05],
                     "init_value": [0.01, 0.2]}),
    "cosine": ({"learning_rate": 0.1, "decay_steps": 20.0, "warmup_steps": 5.0},
               {"exponent": [0.5, 2.0], "end_value": [0.001, 0.02], "init_value": [0.0, 0.01]}),
    "warmup_cosine": ({"learning_rate": 0.1, "init_value": 0.01},
                      {"warmup_steps": [3.0, 8.0], "decay_steps": [20.0, 30.0],
                       "end_value": [0.0, 0.005], "exponent": [1.0, 1.5]}),
    "polynomial": ({"learning_rate": 0.1, "transition_steps": 20.0},
                   {"power": [0.5, 2.0], "end_value": [0.0, 0.01],
                    "transition_begin": [0.0, 4.0]}),
    "linear": ({"learning_rate": 0.1, "warmup_steps": 2.0},
               {"transition_steps": [10.0, 25.0], "end_value": [0.0, 0.02]}),
}


FAST_KINDS = ("cosine", "warmup_cosine")  # the others in the slow tier (~10 s each)


@pytest.mark.parametrize("kind", [k if k in FAST_KINDS else pytest.param(k, marks=pytest.mark.slow)
                                  for k in SWEPT])
def test_extended_schedule_sweep_equals_fits_and_optax(kind):
    """A sweep over the schedule's parameters records optax's rates, trains as the
    hand-written optax loop, equals separate fits, and new values compile nothing."""
    fixed, grid = SWEPT[kind]
    kw = dict(optimizer="sgd", schedule=kind, batch_size=FB, epochs=FEPOCHS, shuffle=False)
    sw = jaxgd.sweep(fsq, {"w": jnp.zeros(3)}, (FX, FY), hparams=fixed, grid=grid, **kw)
    rows = sw.table.to_dict("records")
    assert len(rows) == int(np.prod([len(v) for v in grid.values()]))
    fits = []
    for i, row in enumerate(rows):
        hp = {**fixed, **{k: float(row[k]) for k in grid}}
        ref = optax_ref(kind, hp)
        assert_lr(sw.history["lr"][i], optax_at(ref, RECORDED), hp["learning_rate"])
        want = optax_run(optax.sgd(ref))
        np.testing.assert_allclose(sw.params["w"][i], want["w"], rtol=1e-5, atol=1e-6)
        if i in (0, len(rows) - 1):  # the first compiles the fit's program, the last reuses it
            with count_compiles() as events:
                fits.append(jaxgd.fit(fsq, {"w": jnp.zeros(3)}, (FX, FY), hparams=hp, **kw))
            if i:
                assert events == [], f"recompiled for new {kind} parameters: {events}"
            np.testing.assert_allclose(fits[-1].params["w"], sw.params["w"][i], rtol=1e-6,
                                       atol=1e-7)
            assert_lr(fits[-1].history["lr"], optax_at(ref, RECORDED), hp["learning_rate"])


# ----------------------------------------------------------------------------- history["lr"]
# nanodo's optimizer: clip, adamw, warm-up from 0.1 lr and cosine decay to 0.01 lr (optax's
# warmup_cosine_decay_schedule(0.1 lr, lr, 10, 100, 0.01 lr)), built from a peak rate.
PEAK, NW, ND = 0.05, 10, 100


def nanodo_reference(peak=PEAK):
    return optax.warmup_cosine_decay_schedule(0.1 * peak, peak, NW, ND, 0.01 * peak)


def nanodo_schedule(learning_rate):
    """The same schedule from a traced peak (optax's warmup_cosine_decay_schedule tests
    peak == 0 in Python, so a factory must spell it as its join)."""
    return optax.join_schedules(
        [optax.linear_schedule(0.1 * learning_rate, learning_rate, NW),
         optax.cosine_decay_schedule(learning_rate, ND - NW, alpha=0.01)], [NW])


def nanodo_opt(learning_rate):
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(nanodo_schedule(learning_rate)))


def nanodo_inject(learning_rate):
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.inject_hyperparams(optax.adamw)(
                           learning_rate=nanodo_schedule(learning_rate)))


def lr_fit(optimizer, hp=None, **kw):
    return jaxgd.fit(fsq, {"w": jnp.zeros(3)}, (FX, FY), optimizer=optimizer,
                     hparams={"learning_rate": PEAK, **(hp or {})},
                     **{"batch_size": FB, "epochs": FEPOCHS, "shuffle": False, **kw})


def test_self_scheduling_factory_records_nan_not_its_peak():
    """A factory that builds its own schedule from learning_rate: jaxgd does not know its
    step size, so history["lr"] is NaN (not the constant peak); training is unchanged."""
    res = lr_fit(nanodo_opt)
    assert np.all(np.isnan(res.history["lr"])), res.history["lr"]
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(nanodo_reference()))
    np.testing.assert_allclose(res.params["w"], optax_run(ref)["w"], rtol=1e-5, atol=1e-6)
    # a user factory with another rate keyword is not known either
    res = lr_fit(lambda lr: optax.sgd(lr))
    assert np.all(np.isnan(res.history["lr"]))
    # optax's own optimizers (also partials such as optax.nadam) step with learning_rate
    for opt in ("adamw", optax.adamw, optax.nadam):
        np.testing.assert_allclose(lr_fit(opt).history["lr"], PEAK, rtol=1e-7)
    # the rate of an optax schedule given as the learning rate of optax's adamw
    res = jaxgd.fit(fsq, {"w": jnp.zeros(3)}, (FX, FY), optimizer=optax.adamw,
                    hparams={"learning_rate": nanodo_reference()}, batch_size=FB,
                    epochs=FEPOCHS, shuffle=False)
    assert_lr(res.history["lr"], optax_at(nanodo_reference(), RECORDED), PEAK)


def test_factory_needing_python_numbers_gets_a_clear_error():
    def literal(learning_rate):  # optax.warmup_cosine_decay_schedule tests peak == 0
        return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
            optax.warmup_cosine_decay_schedule(0.1 * learning_rate, learning_rate, 10, 100,
                                               0.01 * learning_rate)))

    with pytest.raises(TypeError, match="Python control flow.*schedule='warmup_cosine'"):
        lr_fit(literal)


def test_inject_hyperparams_inside_a_factory_records_the_true_rate():
    """optax.inject_hyperparams inside the user's chain holds the rate of the last update:
    history["lr"] is optax's schedule at each epoch's last update (README), also under
    optax.MultiSteps (the rate of the last real update)."""
    res = lr_fit(nanodo_inject)
    sched = nanodo_reference()
    assert_lr(res.history["lr"], optax_at(sched, RECORDED), PEAK)
    assert res.history["lr"][0] != pytest.approx(PEAK)
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched))
    np.testing.assert_allclose(res.params["w"], optax_run(ref)["w"], rtol=1e-5, atol=1e-6)
    # MultiSteps(k=3) with 6 mini-batches an epoch: 2 real updates an epoch
    res = lr_fit(lambda learning_rate: optax.MultiSteps(nanodo_inject(learning_rate), 3),
                 batch_size=4)
    real = np.arange(1, FEPOCHS + 1) * 2 - 1
    assert_lr(res.history["lr"], optax_at(sched, real), PEAK)
    # two inject_hyperparams states with different rates: unknown, NaN
    res = lr_fit(lambda learning_rate: optax.chain(
        optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate),
        optax.inject_hyperparams(optax.scale)(step_size=1.0)))
    np.testing.assert_allclose(res.history["lr"], PEAK, rtol=1e-7)  # scale has no rate
    res = lr_fit(lambda learning_rate: optax.chain(
        optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate),
        optax.inject_hyperparams(optax.sgd)(learning_rate=2 * learning_rate)))
    assert np.all(np.isnan(res.history["lr"]))


def test_nanodo_port_through_the_builtin_schedule_equals_the_optax_factory():
    """nanodo's optimizer (clip 1, adamw, warm-up from init_value to a cosine ending at
    end_value, MultiSteps k = 2) ported to jaxgd's options equals the hand-written optax
    run, and history["lr"] is optax's schedule at each epoch's last update."""
    hp = {"init_value": 0.1 * PEAK, "warmup_steps": NW, "decay_steps": ND,
          "end_value": 0.01 * PEAK, "clip_norm": 1.0, "weight_decay": 0.1, "b2": 0.95}
    res = lr_fit(optax.adamw, hp, schedule="warmup_cosine", batch_size=4, accumulate=2)
    sched = nanodo_reference()
    opt = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0),
                                       optax.adamw(sched, b2=0.95, weight_decay=0.1)), 2)
    np.testing.assert_allclose(res.params["w"], optax_run(opt, bs=4)["w"], rtol=1e-5,
                               atol=1e-6)
    updates = np.arange(1, FEPOCHS + 1) * 3 - 1  # 6 batches of 4, 3 updates an epoch
    assert_lr(res.history["lr"], optax_at(sched, updates), PEAK)
    # the same with schedule="cosine", whose decay_steps start after the warm-up
    cos = lr_fit(optax.adamw, {**hp, "decay_steps": ND - NW}, schedule="cosine",
                 batch_size=4, accumulate=2)
    np.testing.assert_allclose(cos.params["w"], res.params["w"], rtol=1e-6, atol=1e-7)


def test_toml_takes_the_extended_schedules():
    from jaxgd.config import ConfigError, read_config

    text = ("[train]\nschedule = 'warmup_cosine'\nhparams = { init_value = 1e-4, "
            "warmup_steps = 10, decay_steps = 100, end_value = 1e-5 }\n"
            "[sweep]\nlearning_rate = [0.1]\nexponent = [1.0, 2.0]\n")
    read_config("sweep.toml", text=text)
    with pytest.raises(ConfigError, match="schedule 'warmup_cosine' needs warmup_steps"):
        read_config("sweep.toml", text=text.replace("warmup_steps = 10, ", ""))
    read_config("sweep.toml", text="[train]\nschedule = 'polynomial'\nhparams = { "
                "transition_steps = 50, power = 2.0, end_value = 1e-3 }\n"
                "[sweep]\nlearning_rate = [0.1]\ninit_value = [0.0, 0.01]\n"
                "warmup_steps = [5]\n")


def test_float64_schedule_equals_optax_at_a_float64_count():
    """In float64 jaxgd's warm-up + cosine equals optax's formula to rounding (1e-15), and
    optax's own optimizer, which evaluates the schedule at its int32 count in float32
    even with x64, differs by ~1e-9: the README's note on comparing in float64."""
    import jax

    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(32, 4))
        y = x @ np.array([1.0, -2.0, 0.5, 3.0])

        def loss(p, b):
            return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)

        p0 = {"w": jnp.zeros(4, jnp.float64)}
        hp = {"learning_rate": 0.03, "warmup_steps": 27, "decay_steps": 81, "init_value": 0.0}
        res = jaxgd.fit(loss, p0, (x, y), steps=40, batch_size=None, optimizer="sgd",
                        schedule="warmup_cosine", hparams=hp)
        sched = optax.warmup_cosine_decay_schedule(0.0, 0.03, 27, 81, 0.0)

        def hand(opt):
            st, p = opt.init(p0), p0
            for _ in range(40):
                g = jax.grad(loss)(p, (x, y))
                u, st = opt.update(g, st, p)
                p = optax.apply_updates(p, u)
            return np.asarray(p["w"])

        exact = hand(optax.sgd(lambda c: sched(jnp.asarray(c, jnp.float64))))
        np.testing.assert_allclose(np.asarray(res.params["w"]), exact, rtol=0, atol=1e-14)
        assert sched(jnp.int32(30)).dtype == jnp.float32  # optax's own count
        assert np.max(np.abs(hand(optax.sgd(sched)) - exact)) > 1e-10
