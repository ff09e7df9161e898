"""Step budgets (``steps=``) and token streams (``windows=``).

References are hand-written loops: optax's own update on the batches a NumPy loop cuts
(epoch ``t // steps_per_epoch``, position ``t mod steps_per_epoch`` of update ``t``), a
NumPy replay of a successive-halving search whose rungs are in updates, and NumPy
gathers of random windows whose starts are drawn with ``jax.random`` from the documented
keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_search import halving_replay

import jaxgd
from jaxgd import search

RNG = np.random.default_rng(7)
N, B = 10, 4  # 3 steps per epoch: 4, 4 and a last batch of 2
X = RNG.normal(size=(N, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * RNG.normal(size=N)
XV = RNG.normal(size=(6, 3))
YV = XV @ np.array([1.0, -2.0, 0.5])


def mse(p, b):
    return jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)


def p0():
    return {"w": jnp.zeros(3), "b": jnp.zeros(())}


def optax_loop(opt, steps, orders, batch=B, drop_last=False):
    """``steps`` updates of ``opt`` on the batches of a NumPy epoch loop over ``orders``
    (row ``e mod E`` for epoch e): (params, batch losses)."""
    per = -(-N // batch) if not drop_last else N // batch
    params = jax.tree.map(np.asarray, p0())
    state = opt.init(params)
    losses = []
    for t in range(steps):
        e, pos = divmod(t, per)
        idx = orders[e % len(orders)][pos * batch: min(pos * batch + batch, N)]
        b = (X[idx], Y[idx])
        loss, g = jax.value_and_grad(mse)(params, b)
        upd, state = opt.update(g, state, params)
        params = optax.apply_updates(params, upd)
        losses.append(float(loss))
    return params, np.asarray(losses)


@pytest.mark.parametrize("steps, every", [(7, 2), (6, 3), (2, 1), (5, 5)])
def test_steps_equal_an_optax_loop(x64, steps, every):
    # 7 and 5 end inside an epoch; 6 is two whole epochs with their short last batches
    orders = np.stack([RNG.permutation(N) for _ in range(2)])
    res = jaxgd.fit(mse, p0(), (X, Y), optimizer=optax.adam,
                    hparams={"learning_rate": 0.05}, batch_size=B, steps=steps,
                    eval_every=every, shuffle=orders, record_steps=True, metrics="batch")
    ref, losses = optax_loop(optax.adam(0.05), steps, orders)
    for k in ("w", "b"):
        np.testing.assert_allclose(res.params[k], ref[k], rtol=1e-10, atol=1e-12)
    assert res.steps_run == steps and res.stop_reason == "max_epochs"
    assert res.epochs_run == -(-steps // 3)  # epochs begun
    ends = [min(e + every, steps) for e in range(0, steps, every)]
    np.testing.assert_array_equal(res.history["step"], np.asarray(ends) - 1)
    np.testing.assert_allclose(res.history["step_loss"][:, 0], losses, rtol=1e-10)
    # the rows' batch losses: the means of their updates' losses
    want = [losses[a:e].mean() for a, e in zip([0] + ends[:-1], ends, strict=True)]
    np.testing.assert_allclose(res.history["batch_loss"], want, rtol=1e-10)


def test_a_step_budget_records_batch_means_by_default(x64):
    """``metrics="auto"`` with ``steps``: an evaluation (every update by default) records
    the mean of its updates' batch losses, no pass over the training data; the optax loop's
    losses are the reference. ``metrics="full"`` records the loss on all the data after
    the evaluation's updates."""
    orders = np.stack([RNG.permutation(N) for _ in range(2)])
    kw = dict(optimizer=optax.adam, hparams={"learning_rate": 0.05}, batch_size=B, steps=7,
              shuffle=orders)
    ref, losses = optax_loop(optax.adam(0.05), 7, orders)
    res = jaxgd.fit(mse, p0(), (X, Y), **kw)
    np.testing.assert_allclose(res.history["loss"], losses, rtol=1e-10)
    np.testing.assert_allclose(res.init_loss, losses[0], rtol=1e-10)
    full = jaxgd.fit(mse, p0(), (X, Y), metrics="full", eval_every=7, **kw)
    want = np.mean((X @ ref["w"] + ref["b"] - Y) ** 2)
    np.testing.assert_allclose(full.history["loss"], [want], rtol=1e-10)


def test_steps_in_order_with_accumulation_and_validation(x64):
    # accumulate=2 x batch_size=2: updates of 4 samples, the last of 2 (micro-batch 1)
    res = jaxgd.fit(mse, p0(), (X, Y), optimizer="sgd", hparams={"learning_rate": 0.1},
                    batch_size=2, accumulate=2, steps=8, shuffle=False, val_data=(XV, YV))
    ref, _ = optax_loop(optax.sgd(0.1), 8, [np.arange(N)])
    for k in ("w", "b"):
        np.testing.assert_allclose(res.params[k], ref[k], rtol=1e-10, atol=1e-12)
    val = np.mean((XV @ ref["w"] + ref["b"] - YV) ** 2)
    np.testing.assert_allclose(res.history["val_loss"][-1], val, rtol=1e-10)
    assert list(res.history["step"]) == list(range(8))


def test_whole_epochs_equal_epochs_exactly():
    kw = dict(optimizer="adam", hparams={"learning_rate": 0.05}, batch_size=B,
              val_data=(XV, YV), key=4)
    a = jaxgd.fit(mse, p0(), (X, Y), epochs=4, **kw)
    b = jaxgd.fit(mse, p0(), (X, Y), steps=12, eval_every=3, metrics="full", **kw)
    for k in ("w", "b"):
        np.testing.assert_array_equal(a.params[k], b.params[k])
    for k in ("loss", "val_loss", "batch_loss", "grad_norm"):
        np.testing.assert_array_equal(a.history[k], b.history[k])
    np.testing.assert_array_equal(b.history["step"], [2, 5, 8, 11])
    assert (a.steps_run, a.epochs_run) == (b.steps_run, b.epochs_run) == (12, 4)
    # a budget ending inside an epoch: the first updates of the epoch program
    c = jaxgd.fit(mse, p0(), (X, Y), steps=7, record_steps=True, **kw)
    d = jaxgd.fit(mse, p0(), (X, Y), epochs=3, record_steps=True, **kw)
    np.testing.assert_array_equal(c.history["step_loss"][:, 0],
                                  d.history["step_loss"].reshape(-1)[:7])


def test_full_batch_steps_equal_epochs_exactly():
    # one update per epoch (the look-ahead program: each step's loss and gradient are
    # computed at the parameters it produces)
    kw = dict(optimizer="momentum", hparams={"learning_rate": 0.05, "momentum": 0.9},
              val_data=(XV, YV))
    a = jaxgd.fit(mse, p0(), (X, Y), epochs=6, eval_every=2, **kw)
    b = jaxgd.fit(mse, p0(), (X, Y), steps=6, eval_every=2, metrics="full", **kw)
    for k in ("w", "b"):
        np.testing.assert_array_equal(a.params[k], b.params[k])
    for k in ("loss", "val_loss", "grad_norm"):
        np.testing.assert_array_equal(a.history[k], b.history[k])
    np.testing.assert_array_equal(a.history["epoch"], b.history["step"])


def test_sweep_in_steps_equals_its_fits():
    kw = dict(optimizer="adam", batch_size=B, steps=8, eval_every=4, val_data=(XV, YV))
    sw = jaxgd.sweep(mse, p0(), (X, Y), grid={"learning_rate": [0.01, 0.1], "seed": [1, 2]},
                     **kw)
    for i, c in enumerate(sw.configs):
        r = jaxgd.fit(mse, p0(), (X, Y), hparams={"learning_rate": c["learning_rate"]},
                      key=c["seed"], **kw)
        np.testing.assert_allclose(sw.params_of(i)["w"], r.params["w"], rtol=1e-5)
        np.testing.assert_allclose(sw.history["val_loss"][i], r.history["val_loss"], rtol=1e-5)
    np.testing.assert_array_equal(sw.history["step"][0], [3, 7])


LRS = [0.002, 0.005, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2]


def test_halving_in_steps_matches_a_numpy_replay(x64):
    # rungs end at updates 20 // 9 = 2 and 20 // 3 = 6 (inside the first epochs of 3
    # updates) and 20; keep 9 // 3 = 3, then 1
    res = jaxgd.sweep(mse, p0(), (X, Y), optimizer="sgd", grid={"learning_rate": LRS},
                      batch_size=B, steps=20, shuffle=False, val_data=(XV, YV),
                      search=search.Halving(eta=3, min_epochs=2))

    def val_curve(lr, steps):
        return [np.mean((XV @ p["w"] + p["b"] - YV) ** 2)
                for p in (optax_loop(optax.sgd(lr), t, [np.arange(N)])[0]
                          for t in range(1, steps + 1))]

    curves = {i: val_curve(lr, 6) for i, lr in enumerate(LRS)}
    winner, reached = halving_replay(curves, ((2, 3), (6, 1)))
    t = res.table
    assert list(t["stop_reason"]) == ["max_epochs" if i == winner else "pruned"
                                      for i in range(len(LRS))]
    assert [int(s) for s in t["steps_run"]] == [reached.get(i, 20) for i in range(len(LRS))]
    for i in range(len(LRS)):
        ref, _ = optax_loop(optax.sgd(LRS[i]), reached.get(i, 20), [np.arange(N)])
        np.testing.assert_allclose(res.params_of(i)["w"], ref["w"], rtol=1e-10, atol=1e-12)


def _no_compile(monkeypatch):
    from jaxgd import program

    def no_compile(*a, **k):
        raise AssertionError("compiled")

    monkeypatch.setattr(program, "compiled_program", no_compile)


TOK = (np.arange(300) * 7 + np.arange(300) // 11) % 13


@pytest.mark.parametrize("kw, match", [
    (dict(epochs=3, steps=5), r"epochs=3 and steps=5: give one budget"),
    (dict(steps=0), r"steps=0 must be a positive integer"),
    (dict(steps=-2), r"steps=-2 must be a positive integer"),
    (dict(steps=2.5), r"steps=2.5 must be a positive integer"),
    (dict(steps=5, shuffle="uniform"), r"shuffle='uniform' .* steps=5"),
])
@pytest.mark.parametrize("front", ["fit", "sweep"])
def test_bad_budgets_are_refused_before_compiling(kw, match, front, monkeypatch):
    _no_compile(monkeypatch)
    with pytest.raises(TypeError if kw.get("steps") == 2.5 else ValueError, match=match):
        if front == "fit":
            jaxgd.fit(mse, p0(), (X, Y), batch_size=B, **kw)
        else:
            jaxgd.sweep(mse, p0(), (X, Y), grid={"learning_rate": [0.1, 0.2]}, batch_size=B,
                        **kw)


# ------------------------------------------------------------------ token windows

V, L = 13, 6


def bigram(p, b):
    x, y = b
    lp = jax.nn.log_softmax(p["E"][x], axis=-1)  # [B, L, V]
    return -jnp.mean(jnp.take_along_axis(lp, y[..., None], axis=-1))


def e0():
    return {"E": jnp.zeros((V, V))}


def numpy_windows(tokens, key, t, batch):
    """Step t's windows: starts from jax.random (the documented keys), gathered in NumPy."""
    k = jax.random.fold_in(jax.random.fold_in(key, jaxgd.data.WINDOW_TAG), t)
    s = np.asarray(jax.random.randint(k, (batch,), 0, len(tokens) - L, dtype=jnp.int32))
    w = np.stack([tokens[a: a + L + 1] for a in s])
    return w[:, :L], w[:, 1:]


def window_loop(lr, steps, key, batch, val):
    params, losses = jax.tree.map(np.asarray, e0()), []
    opt = optax.sgd(lr)
    state = opt.init(params)
    for t in range(steps):
        loss, g = jax.value_and_grad(bigram)(params, numpy_windows(TOK, key, t, batch))
        upd, state = opt.update(g, state, params)
        params = optax.apply_updates(params, upd)
        losses.append(float(loss))
    return params, np.asarray(losses), float(bigram(params, val))


def test_windows_equal_a_numpy_reimplementation(x64):
    vt = TOK[:40]
    vx = np.stack([vt[i * L: i * L + L] for i in range((len(vt) - 1) // L)])
    vy = np.stack([vt[i * L + 1: i * L + L + 1] for i in range((len(vt) - 1) // L)])
    got = jaxgd.data.token_windows(vt, L)
    np.testing.assert_array_equal(got[0], vx)
    np.testing.assert_array_equal(got[1], vy)
    res = jaxgd.fit(bigram, e0(), TOK, optimizer="sgd", hparams={"learning_rate": 2.0},
                    batch_size=5, steps=9, windows=L, eval_every=3, key=11,
                    val_data=(vx, vy), record_steps=True)
    ref, losses, val = window_loop(2.0, 9, jax.random.key(11), 5, (vx, vy))
    np.testing.assert_allclose(res.params["E"], ref["E"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.history["step_loss"][:, 0], losses, rtol=1e-10)
    np.testing.assert_allclose(res.history["loss"], [losses[i:i + 3].mean()
                                                     for i in (0, 3, 6)], rtol=1e-10)
    np.testing.assert_allclose(res.history["val_loss"][-1], val, rtol=1e-10)


def test_a_windows_sweep_row_equals_its_fit_and_a_seed_shares_windows():
    kw = dict(optimizer="sgd", batch_size=4, steps=6, windows=L, eval_every=3,
              record_steps=True)
    sw = jaxgd.sweep(bigram, e0(), TOK, grid={"learning_rate": [0.5, 1.0], "seed": [3, 5]},
                     **kw)
    for i, c in enumerate(sw.configs):
        r = jaxgd.fit(bigram, e0(), TOK, hparams={"learning_rate": c["learning_rate"]},
                      key=c["seed"], **kw)
        np.testing.assert_allclose(sw.params_of(i)["E"], r.params["E"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(sw.history["step_loss"][i], r.history["step_loss"],
                                   rtol=1e-5)
        # every row of a seed trains on that seed's windows (the NumPy reference's)
        ref, losses, _ = window_loop(c["learning_rate"], 6, jax.random.key(c["seed"]), 4,
                                     (TOK[None, :L], TOK[None, 1:L + 1]))
        np.testing.assert_allclose(sw.params_of(i)["E"], ref["E"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sw.history["step_loss"][i, :, 0], losses, rtol=1e-5)


@pytest.mark.parametrize("data, kw, match", [
    (TOK[:6], dict(steps=3), r"windows of 6 \+ 1 tokens are longer than data's 6 tokens"),
    (TOK, dict(epochs=3), r"windows=6 .* give a budget of updates, steps="),
    (TOK, dict(steps=3, batch_size=None), r"windows=6 needs an integer batch_size"),
    (TOK.astype(np.float32), dict(steps=3), r"data must be a 1-D integer array"),
    (TOK, dict(steps=3, val_data=(np.zeros((2, 5), int),) * 2), r"val_data must be \(x, y\)"),
])
def test_bad_windows_are_refused_before_compiling(data, kw, match, monkeypatch):
    _no_compile(monkeypatch)
    kw = {"batch_size": 4, **kw}
    with pytest.raises((ValueError, TypeError), match=match):
        jaxgd.fit(bigram, e0(), data, windows=L, **kw)
    with pytest.raises((ValueError, TypeError), match=match):
        jaxgd.sweep(bigram, e0(), data, windows=L, grid={"learning_rate": [0.1]}, **kw)


def test_a_step_budget_from_a_toml_file():
    from jaxgd.config import ConfigError, build, read_config

    text = ('[data]\ndataset = "line"\n[train]\nsteps = 5\neval_every = 2\nbatch_size = 8\n'
            '[sweep]\nlearning_rate = [0.01, 0.1]\n')
    sw = build(read_config("s.toml", text=text)).run()
    assert list(sw.table["steps_run"]) == [5, 5]
    np.testing.assert_array_equal(sw.history["step"][0], [1, 3, 4])
    with pytest.raises(ConfigError,
                       match=r"s.toml:4: train.epochs = 2 and train.steps = 5: give one budget"):
        read_config("s.toml", text=text.replace("steps = 5", "steps = 5\nepochs = 2"))
    with pytest.raises(ConfigError, match=r"train.steps = 0 is invalid"):
        read_config("s.toml", text=text.replace("steps = 5", "steps = 0"))


@pytest.mark.parametrize("kw, match", [
    (dict(search=search.Halving(min_epochs=3)), r"rung within steps=8: need min_epochs \* "
                                                r"eta <= steps"),
    (dict(search=search.PBT(interval=8)), r"interval=8 must be less than steps=8"),
    (dict(search=search.Median(warmup=9)), r"warmup=9 must be less than steps=8"),
])
def test_searches_in_steps_are_checked_in_steps(kw, match, monkeypatch):
    _no_compile(monkeypatch)
    with pytest.raises(ValueError, match=match):
        jaxgd.sweep(mse, p0(), (X, Y), grid={"learning_rate": [0.1, 0.2, 0.3, 0.4]},
                    batch_size=B, steps=8, val_data=(XV, YV), **kw)


def test_a_step_budget_is_part_of_a_run_folders_fingerprint(tmp_path):
    kw = dict(grid={"learning_rate": [0.05, 0.1]}, batch_size=B, out=tmp_path / "run")
    a = jaxgd.sweep(mse, p0(), (X, Y), steps=5, **kw)
    b = jaxgd.sweep(mse, p0(), (X, Y), steps=5, **kw)  # read back
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    np.testing.assert_array_equal(jaxgd.load(tmp_path / "run").history["step"],
                                  a.history["step"])
    with pytest.raises(ValueError, match="different sweep"):
        jaxgd.sweep(mse, p0(), (X, Y), steps=6, **kw)
    with pytest.raises(ValueError, match="different sweep"):
        jaxgd.sweep(mse, p0(), (X, Y), epochs=2, **kw)
