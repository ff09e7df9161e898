"""Execution plans (sweep's ``plan=``): configurations batched by ``vmap`` or run one
after another by ``lax.map`` inside the program give the same results; ``"auto"``
follows its documented rule; the choice is recorded."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd
from jaxgd import plans

rng = np.random.default_rng(0)
X = rng.normal(size=(60, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=60)


def mse(p, b):
    return jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)


P0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
# learning rates 50 and 1e4 diverge; loss_target stops the others at different epochs
KW = dict(grid={"learning_rate": [0.05, 50.0, 0.1, 1e4], "seed": [0, 1]}, batch_size=7,
          epochs=12, loss_target=0.05, folds=3, eval_every=2)


def run(plan, **kw):
    with jax.enable_x64(True):
        p0 = jax.tree.map(lambda a: a.astype(jnp.float64), P0)
        return jaxgd.sweep(mse, p0, (X, Y), plan=plan, **(KW | kw))


@pytest.fixture(scope="module")
def both():
    return {plan: run(plan) for plan in ("vmap", "map")}


def test_map_and_vmap_give_the_same_results(both):
    a, b = both["vmap"], both["map"]
    assert (a.plans, b.plans) == (["vmap"], ["map"])
    t = a.table
    assert set(t.stop_reason) == {"loss_target", "diverged"}
    assert len(set(t.epochs_run)) > 2  # stops at different epochs
    for col in ("stop_reason", "epochs_run", "steps_run", "best_epoch", "diverged"):
        assert t[col].tolist() == b.table[col].tolist(), col
    assert a.history.keys() == b.history.keys()
    for k in a.history:  # the same rows run (NaN alike), the same values to rounding
        np.testing.assert_array_equal(np.isnan(a.history[k]), np.isnan(b.history[k]))
        np.testing.assert_allclose(a.history[k], b.history[k], rtol=1e-12, atol=0, err_msg=k)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        assert np.all(np.isfinite(x))  # the diverged ones keep finite parameters
        np.testing.assert_allclose(x, y, rtol=1e-12)


@pytest.mark.parametrize("i", [0, 6])  # a configuration stopped by loss_target, a diverged
def test_a_mapped_configuration_equals_it_run_alone(both, i):
    """The reference: the configuration alone (``only=``: a program of one configuration,
    no configuration axis at all)."""
    b = both["map"]
    assert b.table["stop_reason"][i] == ("loss_target", "diverged")[i > 0]
    one = run("vmap", only=[i])
    assert one.table["stop_reason"][0] == b.table["stop_reason"][i]
    n = one.history["loss"].shape[1]
    np.testing.assert_allclose(one.history["loss"][0], b.history["loss"][i, :n], rtol=1e-12)
    for x, y in zip(jax.tree.leaves(one.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x[0], y[i], rtol=1e-12)


@pytest.mark.parametrize("plan", ["fast", None, 1, "MAP"])
def test_bad_plan_is_refused_before_compiling(plan):
    with pytest.raises(ValueError, match=r"plan=.*must be one of"):
        jaxgd.sweep(mse, P0, (X, Y), grid={"learning_rate": [0.1]}, plan=plan, epochs=1)


def _spec(loop="scan", by_steps=False, eval_every=1, epochs=100, steps_per_epoch=29):
    return SimpleNamespace(loop=loop, by_steps=by_steps, eval_every=eval_every, epochs=epochs,
                           plan=SimpleNamespace(steps_per_epoch=steps_per_epoch))


def test_auto_rule():
    small = {"w": np.zeros(3)}
    net = {"w1": np.zeros((64, 64)), "w2": np.zeros(10)}
    assert plans.MAP_MIN_PARAMS == 4096 and plans.MAP_MIN_UPDATES == 8
    spec = _spec()
    assert plans.choose_plan("auto", spec, small, 8, 1) == "vmap"
    assert plans.choose_plan("auto", spec, net, 8, 1) == "map"
    assert plans.choose_plan("auto", spec, net, 1, 1) == "vmap"  # nothing to batch
    assert plans.choose_plan("auto", spec, net, 4, 4) == "vmap"  # one per device
    assert plans.choose_plan("map", spec, small, 8, 1) == "map"
    assert plans.choose_plan("vmap", spec, net, 8, 1) == "vmap"
    # an evaluation every few updates: the scan plan vmaps, the host loop still maps
    few = [_spec(by_steps=True), _spec(by_steps=True, eval_every=7),
           _spec(steps_per_epoch=2, eval_every=3)]
    many = [_spec(by_steps=True, eval_every=8), _spec(steps_per_epoch=2, eval_every=4),
            _spec(steps_per_epoch=8)]
    assert [plans.choose_plan("auto", s, net, 8, 1) for s in few] == ["vmap"] * 3
    assert [plans.choose_plan("auto", s, net, 8, 1) for s in many] == ["map"] * 3
    assert plans.choose_plan("auto", _spec(loop="host", by_steps=True), net, 8, 1) == "map"


def test_auto_plan_is_recorded_and_saved(tmp_path):
    sw = jaxgd.sweep(mse, P0, (X.astype(np.float32), Y.astype(np.float32)),
                     grid={"learning_rate": [0.05, 0.1], "batch_size": [7, None]}, epochs=2,
                     out=tmp_path / "run")
    assert sw.plans == ["vmap", "vmap"]  # two groups (batch sizes), tiny parameters
    assert jaxgd.load(tmp_path / "run").plans == ["vmap", "vmap"]
