"""Edge cases found in review: each test fails on the behaviour it guards against."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd

X, Y = jaxgd.datasets.textbook_line()  # y = 2x on x = 1, 2, 3


def loss(p, b):
    return jnp.mean((b[0][:, 0] * p["w"] - b[1]) ** 2)


def test_a_run_starting_at_zero_loss_is_not_diverged():
    # starts at the optimum; the l2 penalty moves it to a tiny positive loss
    r = jaxgd.fit(loss, {"w": jnp.array(2.0)}, (X, Y), hparams={"learning_rate": 0.01,
                                                                "l2": 0.1}, epochs=5)
    assert r.stop_reason == "max_epochs"
    assert 0 < r.history["loss"][-1] < 1e-2


def test_ready_transformation_rejects_learning_rate_owned_keys():
    with pytest.raises(ValueError, match="weight_decay"):
        jaxgd.fit(loss, {"w": jnp.array(1.0)}, (X, Y), optimizer=optax.sgd(0.01),
                  hparams={"weight_decay": 0.01})
    with pytest.raises(ValueError, match="schedule='cosine'"):
        jaxgd.fit(loss, {"w": jnp.array(1.0)}, (X, Y), optimizer=optax.sgd(0.01),
                  schedule="cosine")
    # penalties and clipping still apply to a ready transformation
    r = jaxgd.fit(loss, {"w": jnp.array(1.0)}, (X, Y), optimizer=optax.sgd(0.01),
                  hparams={"l2": 0.1, "clip_norm": 1.0}, epochs=3)
    assert r.stop_reason == "max_epochs"


def test_a_stop_condition_on_a_sweep_axis_overrides_the_base_keyword():
    sw = jaxgd.sweep(loss, {"w": jnp.array(1.0)}, (X, Y), grid={"loss_target": [1e-9, 0.5]},
                     hparams={"learning_rate": 0.01}, loss_target=1e-12, epochs=200)
    assert list(sw.table["stop_reason"]) == ["loss_target", "loss_target"]
    assert sw.table["epochs_run"][1] < sw.table["epochs_run"][0]


def test_record_steps_with_several_batch_sizes_pads_with_nan(tmp_path):
    sw = jaxgd.sweep(loss, {"w": jnp.array(1.0)}, (X, Y), grid={"batch_size": [None, 1]},
                     hparams={"learning_rate": 0.01}, epochs=2, record_steps=True,
                     shuffle=False, out=tmp_path / "run")
    sl = sw.history["step_loss"]
    assert sl.shape == (2, 2, 3)
    assert np.all(np.isnan(sl[0, :, 1:])) and np.all(np.isfinite(sl[0, :, 0]))
    assert np.all(np.isfinite(sl[1]))
    assert not (tmp_path / "run" / ".lock").exists()


def test_sweep_best_epoch_is_the_monitored_best_like_fit():
    val = (X, 1.5 * X[:, 0])  # validation targets pull away from the training optimum
    kw = dict(val_data=val, epochs=20, restore_best=True, shuffle=False)
    sw = jaxgd.sweep(loss, {"w": jnp.array(1.0)}, (X, Y), grid={"learning_rate": [0.01]}, **kw)
    r = jaxgd.fit(loss, {"w": jnp.array(1.0)}, (X, Y), hparams={"learning_rate": 0.01}, **kw)
    assert 0 <= r.best_epoch < 19
    assert sw.table["best_epoch"][0] == r.best_epoch
    np.testing.assert_allclose(sw.params["w"][0], np.asarray(r.params["w"]), rtol=1e-6)


def test_batch_metrics_of_a_block_without_a_step_are_nan_not_zero():
    r = jaxgd.fit(loss, {"w": jnp.array(1.0)}, (X, Y), hparams={"learning_rate": 1e30},
                  metrics="batch", epochs=3)
    assert r.stop_reason == "diverged"
    assert np.isnan(r.history["loss"][-1])


def test_restore_best_after_divergence_returns_the_best_parameters():
    r = jaxgd.fit(loss, {"w": jnp.array(1.0)}, (X, Y), hparams={"learning_rate": 0.3},
                  epochs=200, restore_best=True, shuffle=False)
    assert r.stop_reason == "diverged" and r.best_epoch >= 0
    best = jaxgd.fit(loss, {"w": jnp.array(1.0)}, (X, Y), hparams={"learning_rate": 0.3},
                     epochs=r.best_epoch + 1, shuffle=False)
    np.testing.assert_allclose(np.asarray(r.params["w"]), np.asarray(best.params["w"]))


def test_restore_best_reports_the_loss_of_the_returned_parameters():
    """With restore_best the params are the best epoch's: best_epoch_loss (fit) and the
    table's best_epoch_loss / best_epoch_val_loss are their losses, computed here directly;
    final_loss stays the last evaluation's."""
    kw = dict(hparams={"learning_rate": 0.2}, epochs=30, val_data=(X + 0.3, Y), patience=50,
              restore_best=True, shuffle=False)
    r = jaxgd.fit(loss, {"w": jnp.array(1.0)}, (X, Y), **kw)
    assert 0 <= r.best_epoch < r.epochs_run - 1  # the returned params are not the last
    direct = float(loss(r.params, (X, Y)))
    assert r.best_epoch_loss == pytest.approx(direct, rel=1e-6)
    assert r.final_loss == r.history["loss"][-1] != pytest.approx(direct, rel=1e-3)
    sw = jaxgd.sweep(loss, {"w": jnp.array(1.0)}, (X, Y), grid={"learning_rate": [0.2, 0.05]},
                     **{k: v for k, v in kw.items() if k != "hparams"})
    for i in range(2):
        p = jax.tree.map(lambda a, i=i: a[i], sw.params)
        row = sw.table.iloc[i]
        assert row["best_epoch_loss"] == pytest.approx(float(loss(p, (X, Y))), rel=1e-6)
        assert row["best_epoch_val_loss"] == pytest.approx(
            float(loss(p, (X + 0.3, Y))), rel=1e-6)
    assert sw.table["best_epoch_loss"].iloc[0] == pytest.approx(r.best_epoch_loss, rel=1e-6)


def test_accumulate_with_drop_last_names_the_product():
    x = np.ones((100, 1), np.float32)
    with pytest.raises(ValueError, match=r"accumulate=3 x batch_size=40 = 120"):
        jaxgd.fit(loss, {"w": jnp.array(1.0)}, (x, x[:, 0]), hparams={"learning_rate": 0.1},
                  batch_size=40, accumulate=3, drop_last=True)


def test_resume_refuses_a_loss_closing_over_another_value(tmp_path):
    def make_loss(a):
        return lambda p, b: a * loss(p, b)

    kw = dict(grid={"learning_rate": [0.01]}, epochs=2, out=tmp_path / "run")
    jaxgd.sweep(make_loss(1.0), {"w": jnp.array(1.0)}, (X, Y), **kw)
    with pytest.raises(ValueError, match="different sweep"):
        jaxgd.sweep(make_loss(100.0), {"w": jnp.array(1.0)}, (X, Y), **kw)
    jaxgd.sweep(make_loss(1.0), {"w": jnp.array(1.0)}, (X, Y), **kw)  # same values resume


def test_seed_keys_made_inside_a_trace_are_not_kept():
    """An int seed's key made while a function is traced (a user's ``init`` calling
    ``jaxgd.init_key`` under ``jit``) is that trace's tracer: a later call outside gets a
    concrete key with the same data, not the escaped tracer."""
    from jaxgd.prepare import as_key

    seed = 987_654
    traced = jax.jit(lambda x: jax.random.key_data(as_key(seed)) + x)(np.uint32(0))
    key = as_key(seed)
    assert not isinstance(key, jax.core.Tracer)
    np.testing.assert_array_equal(jax.random.key_data(key), [0, seed])
    np.testing.assert_array_equal(traced, [0, seed])
