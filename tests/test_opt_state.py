"""``FitResult.opt_state``: the optimizer state paired with the returned parameters,
against a hand-written optax loop over the same batches (``shuffle=False``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd

X = np.linspace(-1.0, 1.0, 40, dtype=np.float32)[:, None] * np.arange(1, 4, dtype=np.float32)
Y = X @ np.asarray([1.5, -2.0, 0.5], np.float32) + 0.3
P0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
BATCH, EPOCHS = 16, 3  # 40 = 16 + 16 + 8: a short last batch


def mse(p, batch):
    x, y = batch
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def hand_loop(opt, epochs=EPOCHS):
    """The loop a user writes: batches in order, the last one short."""
    params, state = P0, opt.init(P0)

    @jax.jit
    def step(params, state, x, y):
        g = jax.grad(mse)(params, (x, y))
        u, state = opt.update(g, state, params)
        return optax.apply_updates(params, u), state

    for _ in range(epochs):
        for i in range(0, len(X), BATCH):
            params, state = step(params, state, X[i:i + BATCH], Y[i:i + BATCH])
    return params, state


def assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("loop", ["scan", "host"])
def test_adam_state_equals_the_hand_loops(loop):
    ref_p, ref_s = hand_loop(optax.adam(0.05))
    res = jaxgd.fit(mse, P0, (X, Y), optimizer=optax.adam, hparams={"learning_rate": 0.05},
                    batch_size=BATCH, epochs=EPOCHS, shuffle=False, loop=loop)
    assert_trees_close(res.params, ref_p)
    assert_trees_close(res.opt_state, ref_s)
    assert int(res.opt_state[0].count) == EPOCHS * 3


def test_state_goes_on_training_in_a_loop_of_ones_own():
    """Two epochs by fit, one more by hand from its parameters and state: the same as
    three epochs by hand."""
    opt = optax.adam(0.05)
    res = jaxgd.fit(mse, P0, (X, Y), optimizer=opt, batch_size=BATCH, epochs=2, shuffle=False)
    params, state = res.params, res.opt_state
    for i in range(0, len(X), BATCH):
        g = jax.grad(mse)(params, (X[i:i + BATCH], Y[i:i + BATCH]))
        u, state = opt.update(g, state, params)
        params = optax.apply_updates(params, u)
    ref_p, ref_s = hand_loop(opt, epochs=3)
    assert_trees_close(params, ref_p, rtol=1e-5, atol=1e-6)
    assert_trees_close(state, ref_s, rtol=1e-5, atol=1e-6)


def test_clipping_gives_the_chains_state_clipping_first():
    ref_p, ref_s = hand_loop(optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.1, 0.9)))
    res = jaxgd.fit(mse, P0, (X, Y), optimizer="momentum",
                    hparams={"learning_rate": 0.1, "momentum": 0.9, "clip_norm": 0.5},
                    batch_size=BATCH, epochs=EPOCHS, shuffle=False)
    assert_trees_close(res.params, ref_p)
    assert_trees_close(res.opt_state, ref_s)


def test_schedule_free_eval_params_from_the_state():
    """optax.contrib's schedule-free AdamW evaluates at a point that lives in its state."""
    opt = optax.contrib.schedule_free_adamw(learning_rate=0.1)
    ref_p, ref_s = hand_loop(opt)
    res = jaxgd.fit(mse, P0, (X, Y), optimizer=opt, batch_size=BATCH, epochs=EPOCHS,
                    shuffle=False)
    want = optax.contrib.schedule_free_eval_params(ref_s, ref_p)
    got = optax.contrib.schedule_free_eval_params(res.opt_state, res.params)
    assert_trees_close(got, want)
    assert float(jnp.abs(got["b"] - res.params["b"])) > 1e-3  # not the trained point


def test_none_where_no_state_matches_the_params(tmp_path):
    # restore_best=True returns the best evaluation's parameters, not the final state's
    res = jaxgd.fit(mse, P0, (X, Y), optimizer="sgd", hparams={"learning_rate": 0.35},
                    batch_size=BATCH, epochs=6, shuffle=False, restore_best=True)
    best = int(res.best_epoch)
    assert best >= 0 and res.opt_state is None
    plain = jaxgd.fit(mse, P0, (X, Y), optimizer="adam", hparams={"learning_rate": 0.05},
                      batch_size=BATCH, epochs=2, shuffle=False, out=tmp_path / "run")
    assert plain.opt_state is not None
    again = jaxgd.fit(mse, P0, (X, Y), optimizer="adam", hparams={"learning_rate": 0.05},
                      batch_size=BATCH, epochs=2, shuffle=False, out=tmp_path / "run")
    assert again.opt_state is None  # read back from the run folder, which does not hold it
    assert_trees_close(again.params, plain.params, rtol=0, atol=0)


def test_a_diverged_run_returns_the_state_of_its_parameters():
    """The guard puts back parameters and optimizer state together: the returned pair
    is the hand loop's after ``steps_run`` updates."""
    res = jaxgd.fit(mse, P0, (X, Y), optimizer="momentum",
                    hparams={"learning_rate": 1.5, "momentum": 0.9},
                    batch_size=BATCH, epochs=40, shuffle=False, eval_every=2)
    assert res.stop_reason == "diverged"
    n = res.steps_run
    opt = optax.sgd(1.5, momentum=0.9)
    params, state = P0, opt.init(P0)
    t = 0
    while t < n:
        for i in range(0, len(X), BATCH):
            if t == n:
                break
            g = jax.grad(mse)(params, (X[i:i + BATCH], Y[i:i + BATCH]))
            u, state = opt.update(g, state, params)
            params = optax.apply_updates(params, u)
            t += 1
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(res.params))
    assert 0 < n < 40 * 3
    assert_trees_close(res.params, params, rtol=1e-5, atol=1e-5)
    assert_trees_close(res.opt_state, state, rtol=1e-5, atol=1e-5)
