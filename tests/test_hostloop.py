"""The host plan (``loop="host"`` / ``loop=k``: an evaluation's updates as host calls of a
jitted step or scan of k steps, the evaluation a jitted call of its own) against the scan
plan and against hand-written optax loops: the same numbers and every guarantee."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd
from jaxgd import program

RNG = np.random.default_rng(0)
X = RNG.normal(size=(50, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1 * RNG.normal(size=50)).astype(np.float32)
P0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}


def mse(p, b):
    x, y = b
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def mse_metrics(p, b):
    x, y = b
    r = x @ p["w"] + p["b"] - y
    return jnp.mean(r ** 2), {"mae": jnp.mean(jnp.abs(r))}


def same(x, y, tol=0.0, err_msg=""):
    """Bit for bit (``tol=0``), else to ``tol`` relative and absolute (float rounding: XLA
    may compile a step alone differently from the same step in a loop)."""
    if tol:
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol,
                                   err_msg=err_msg)
    else:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=err_msg)


def assert_same_fit(a, b, tol=0.0):
    assert sorted(a.history) == sorted(b.history)
    for k in a.history:
        same(a.history[k], b.history[k], tol, k)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        same(x, y, tol)
    assert (a.stop_reason, a.epochs_run, a.steps_run, a.best_epoch) == (
        b.stop_reason, b.epochs_run, b.steps_run, b.best_epoch)
    assert np.array_equal(a.init_loss, b.init_loss, equal_nan=True)


def assert_same_sweep(a, b, tol=0.0):
    assert list(a.table.columns) == list(b.table.columns)
    for c in a.table.columns:
        x, y = a.table[c].to_numpy(), b.table[c].to_numpy()
        if x.dtype.kind == "f":
            same(x, y, tol, c)
        else:
            assert list(x) == list(y), c
    for k in a.history:
        same(a.history[k], b.history[k], tol, k)
    for i in range(len(a.table)):
        for x, y in zip(jax.tree.leaves(a.params_of(i)), jax.tree.leaves(b.params_of(i)),
                        strict=True):
            same(x, y, tol)


FITS = [
    dict(batch_size=8, epochs=7),  # a short last batch (50 = 6 x 8 + 2)
    dict(batch_size=8, epochs=7, eval_every=3, record_steps=True),
    dict(batch_size=None, epochs=20),  # full batch (the lookahead program)
    dict(batch_size=8, steps=30, eval_every=4, record_steps=True),  # a step budget
    dict(batch_size=8, epochs=30, patience=2, record_steps=True, restore_best=True,
         hparams={"learning_rate": 0.3}),
    dict(batch_size=16, epochs=5, metrics="batch", record_params=True),
    dict(batch_size=10, epochs=4, accumulate=2, shuffle="uniform", val_data=(X[:10], Y[:10])),
]


@pytest.mark.parametrize("kw", FITS)
def test_fit_host_plan_equals_scan_plan_bit_for_bit(kw):
    kw = {"hparams": {"learning_rate": 0.05}, **kw}
    scan = jaxgd.fit(mse, P0, (X, Y), optimizer="adam", loop="scan", **kw)
    assert scan.loop == "scan"
    for lp, name in (("host", "host"), (1, "host"), (3, "host:3")):
        host = jaxgd.fit(mse, P0, (X, Y), optimizer="adam", loop=lp, **kw)
        assert host.loop == name
        assert_same_fit(host, scan)


def optax_loop(lr, epochs, bs):
    """A hand-written optax loop: adam, batches in order, the short last batch's gradient
    its own mean."""
    opt = optax.adam(lr)
    p = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    s = opt.init(p)
    step = jax.jit(lambda p, s, b: (lambda g: (lambda u, s2: (optax.apply_updates(p, u), s2))(
        *opt.update(g, s, p)))(jax.grad(mse)(p, b)))
    for _ in range(epochs):
        for i in range(0, len(X), bs):
            p, s = step(p, s, (X[i:i + bs], Y[i:i + bs]))
    return p


@pytest.mark.parametrize("lp", ["host", 4])
def test_fit_host_plan_equals_a_hand_written_optax_loop(lp):
    res = jaxgd.fit(mse, P0, (X, Y), optimizer="adam", hparams={"learning_rate": 0.05},
                    batch_size=8, epochs=6, shuffle=False, loop=lp)
    want = optax_loop(0.05, 6, 8)
    assert res.steps_run == 6 * 7
    for k in ("w", "b"):
        np.testing.assert_allclose(np.asarray(res.params[k]), np.asarray(want[k]),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.history["loss"][-1], float(mse(want, (X, Y))), rtol=1e-5)


@pytest.mark.parametrize("metrics", ["full", "batch"])
def test_sweep_host_plan_equals_scan_plan(metrics):
    """Several learning rates and seeds, one diverging configuration (isolated: the others
    are unchanged), patience stops, a short last batch, metrics."""
    kw = dict(optimizer="sgd", grid={"learning_rate": [0.01, 0.1, 5.0], "seed": [0, 1]},
              batch_size=8, epochs=12, patience=2, min_delta=1e-3, metrics=metrics,
              record_steps=True)
    scan = jaxgd.sweep(mse_metrics, P0, (X, Y), loop="scan", **kw)
    host = jaxgd.sweep(mse_metrics, P0, (X, Y), loop="host", **kw)
    host3 = jaxgd.sweep(mse_metrics, P0, (X, Y), loop=3, **kw)
    reasons = set(scan.table["stop_reason"])
    assert "diverged" in reasons and len(reasons) > 1  # the test is not vacuous
    assert (scan.loop, host.loop, host3.loop) == ("scan", "host", "host:3")
    assert_same_sweep(host, scan)
    assert_same_sweep(host3, scan)


def test_sweep_host_plan_folder_resume_and_checkpoints(tmp_path):
    """out= and checkpoint_every= under the host plan: the scan plan's numbers, the plan in
    result.json, and a second call reads the folder back (resume does not depend on the
    plan: the folder written by the host plan is read back by a scan-plan call)."""
    kw = dict(optimizer="adam", grid={"learning_rate": [0.01, 0.1]}, batch_size=8, epochs=6)
    scan = jaxgd.sweep(mse, P0, (X, Y), loop="scan", **kw)
    host = jaxgd.sweep(mse, P0, (X, Y), loop="host", out=tmp_path / "run",
                       checkpoint_every=2, **kw)
    assert_same_sweep(host, scan)
    meta = json.loads((tmp_path / "run" / "result.json").read_text())
    assert meta["loop"] == "host"
    assert jaxgd.load(tmp_path / "run").loop == "host"
    again = jaxgd.sweep(mse, P0, (X, Y), loop="scan", out=tmp_path / "run", **kw)
    assert_same_sweep(again, scan)


def test_host_plan_reports_progress_as_the_scan_plan(monkeypatch):
    """progress=True: the bar's sink gets the same (evaluations done, configurations
    active) reports from both plans, a configuration that diverges counted out."""
    got = []
    real = program.set_progress_sink

    def spy(sink):
        real(None if sink is None else lambda d, a: (got.append((d, a)), sink(d, a)))

    monkeypatch.setattr(program, "set_progress_sink", spy)
    seen = {}
    for lp in ("scan", "host"):
        got.clear()
        jaxgd.sweep(mse, P0, (X, Y), optimizer="sgd", loop=lp, batch_size=8, epochs=5,
                    grid={"learning_rate": [0.01, 5.0]}, progress=True)
        jax.effects_barrier()
        seen[lp] = list(got)
    assert seen["scan"] == seen["host"] == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 0)]


@pytest.mark.parametrize("bad", ["fast", 0, -2, 1.5, None, True])
def test_bad_loop_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="loop="):
        jaxgd.fit(mse, P0, (X, Y), hparams={"learning_rate": 0.1}, loop=bad)


def conv_loss(p, b):
    x, y = b
    h = jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean((jnp.mean(h, axis=(1, 2, 3)) - y) ** 2)


def test_auto_takes_the_host_loop_for_a_convolution_on_cpu():
    xs = RNG.normal(size=(20, 4, 4, 1)).astype(np.float32)
    ys = RNG.normal(size=20).astype(np.float32)
    pk = {"k": jnp.full((3, 3, 1, 2), 0.1)}
    kw = dict(hparams={"learning_rate": 0.1}, batch_size=6, epochs=3)
    auto = jaxgd.fit(conv_loss, pk, (xs, ys), **kw)
    assert auto.loop == ("host" if jax.default_backend() == "cpu" else "scan")
    assert jaxgd.fit(mse, P0, (X, Y), **kw).loop == "scan"
    assert_same_fit(auto, jaxgd.fit(conv_loss, pk, (xs, ys), loop="scan", **kw))


def test_model_state_and_keys_host_plan_equals_scan_plan():
    """A flax BatchNorm + Dropout model (state and per-step keys), with validation data
    and restore_best: fit and a sweep of seeds and learning rates, both plans."""
    nn = pytest.importorskip("flax.linen")

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            h = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
            h = nn.Dropout(0.2, deterministic=not train)(nn.relu(h))
            return nn.Dense(1)(h)[:, 0]

    model = MLP()
    v = model.init(jax.random.key(0), X[:1], train=False)

    def loss(params, batch, *, state, key, train):
        xb, yb = batch
        vv = {"params": params, "batch_stats": state}
        if train:
            out, upd = model.apply(vv, xb, train=True, rngs={"dropout": key},
                                   mutable=["batch_stats"])
            state = upd["batch_stats"]
        else:
            out = model.apply(vv, xb, train=False)
        return jnp.mean((out - yb) ** 2), state, {"mae": jnp.mean(jnp.abs(out - yb))}

    # sgd: adam would scale the rounding noise of the pre-BatchNorm bias's gradient (zero
    # in exact arithmetic) to steps of the learning rate
    kw = dict(state=v["batch_stats"], val_data=(X[:10], Y[:10]), optimizer=optax.sgd,
              batch_size=8, epochs=4, restore_best=True)
    # the same arithmetic up to float rounding: XLA:CPU compiles this step alone and inside
    # a loop with different fusions (the mean-squared-error problems above are bit-identical)
    tol = 1e-5
    fits = [jaxgd.fit(loss, v["params"], (X, Y), hparams={"learning_rate": 0.05}, key=2,
                      loop=lp, **kw) for lp in ("scan", "host")]
    assert_same_fit(fits[1], fits[0], tol)
    for a, b in zip(jax.tree.leaves(fits[0].state), jax.tree.leaves(fits[1].state),
                    strict=True):
        same(a, b, tol)
    sws = [jaxgd.sweep(loss, v["params"], (X, Y), grid={"learning_rate": [0.01, 0.05],
                                                        "seed": [0, 1]}, loop=lp, **kw)
           for lp in ("scan", 2)]
    assert_same_sweep(sws[1], sws[0], tol)
    for a, b in zip(jax.tree.leaves(sws[0].state), jax.tree.leaves(sws[1].state),
                    strict=True):
        same(a, b, tol)


def test_halving_search_host_plan_equals_scan_plan():
    """An adaptive search calls the programs up to its rung boundaries: the same survivors
    and numbers in both plans."""
    from jaxgd import search

    kw = dict(optimizer="sgd", grid={"learning_rate": [0.003, 0.01, 0.03, 0.1]},
              batch_size=8, epochs=9, val_data=(X[:10], Y[:10]),
              search=search.Halving(eta=2, min_epochs=2))
    scan = jaxgd.sweep(mse, P0, (X, Y), loop="scan", **kw)
    host = jaxgd.sweep(mse, P0, (X, Y), loop="host", **kw)
    assert host.loop == "host"
    assert_same_sweep(host, scan)


def test_kfold_and_step_budget_sweeps_host_plan_equals_scan_plan():
    """Folds (training and held-out indices per stream) and a step budget with a short last
    batch inside the budget, several seeds."""
    kw = dict(optimizer="adam", grid={"learning_rate": [0.01, 0.1]}, batch_size=8, epochs=3,
              folds=3, record_steps=True)
    # to float rounding (the fold's gathered evaluation is fused differently alone)
    assert_same_sweep(jaxgd.sweep(mse, P0, (X, Y), loop="host", **kw),
                      jaxgd.sweep(mse, P0, (X, Y), loop="scan", **kw), 1e-6)
    kw = dict(optimizer="sgd", grid={"learning_rate": [0.01, 0.1], "seed": [0, 3]},
              batch_size=8, steps=17, eval_every=5, record_steps=True)
    assert_same_sweep(jaxgd.sweep(mse, P0, (X, Y), loop=4, **kw),
                      jaxgd.sweep(mse, P0, (X, Y), loop="scan", **kw))


def test_host_loop_runs_the_map_plan_it_records(monkeypatch):
    """``plan="map"`` with the host loop on one device: each configuration runs the jitted
    calls of a single configuration (the steps a user's loop calls, no ``lax.map`` around
    them), one after another; configurations stopping at different evaluations (loss
    target, divergence, the budget) equal their own ``fit`` bit for bit, and the scan
    plan's map to the bit too."""
    from jaxgd import hostloop, loop

    x = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 2.0], np.float32)).astype(np.float32)

    def mse(p, b):
        return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)

    wrapped = []
    real = loop.mapped

    def spy(fn, in_axes):
        wrapped.append(getattr(fn, "func", fn))
        return real(fn, in_axes)

    monkeypatch.setattr(loop, "mapped", spy)
    hostloop.host_program.cache_clear()
    lrs = [0.01, 0.05, 0.1, 3.0]
    kw = dict(epochs=6, batch_size=8, loss_target=0.5)
    host = jaxgd.sweep(mse, {"w": jnp.zeros(3)}, (x, y), loop="host", plan="map",
                       grid={"learning_rate": lrs}, **kw)
    assert host.plans == ["map"] and host.loop == "host"
    # the scan plan's init maps; no piece of the host plan does
    assert wrapped and not {hostloop.host_steps, hostloop.host_finish,
                            hostloop.host_epoch_start} & set(wrapped)
    assert list(host.table["stop_reason"]) == ["max_epochs", "loss_target", "loss_target",
                                          "diverged"]
    assert len(set(host.table["epochs_run"])) == 3
    scan = jaxgd.sweep(mse, {"w": jnp.zeros(3)}, (x, y), loop="scan", plan="map",
                       grid={"learning_rate": lrs}, **kw)
    assert_same_sweep(host, scan)
    for i, lr in enumerate(lrs):
        one = jaxgd.fit(mse, {"w": jnp.zeros(3)}, (x, y), hparams={"learning_rate": lr},
                        loop="host", **kw)
        assert one.stop_reason == host.table["stop_reason"][i]
        same(one.params["w"], host.params["w"][i])
        for k in ("loss", "grad_norm", "batch_loss"):
            n = one.epochs_run
            same(one.history[k], np.asarray(host.history[k])[i, :n], 0.0, k)
