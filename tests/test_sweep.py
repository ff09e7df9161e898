"""``jaxgd.sweep``: every configuration equals its own ``fit``, whatever else is in the sweep.

The problem is tiny (linear regression, N=23, so ``batch_size=5`` leaves a last batch of
3) so that the cost is compilation, which is shared as much as possible: one reference
``fit`` per program structure, sweeps whose block shapes repeat. Sweep results come from
vmapped blocks of a different width than ``fit``'s 1 x 1 block, so they agree to float32
round-off (rtol 1e-4), not bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxgd

N, D = 23, 3
EPOCHS = 4
RTOL, ATOL = 1e-4, 1e-6
LRS = [0.01, 0.05, 0.2, 0.1]
BATCHES = [None, 5]  # full batch, and mini-batches of 5 with a last batch of 3
SEEDS = [0, 1]
GRID = {"learning_rate": LRS, "batch_size": BATCHES, "seed": SEEDS}


def make_data(dtype=np.float32):
    r = np.random.default_rng(0)
    x = r.normal(size=(N, D))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * r.normal(size=N)
    return x.astype(dtype), y.astype(dtype)


def mse(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


X, Y = make_data()
P0 = {"w": jnp.asarray([0.1, 0.0, -0.1], jnp.float32), "b": jnp.zeros((), jnp.float32)}

_FITS: dict = {}


def ref_fit(lr, batch_size, seed, optimizer="sgd", extra=(), data=None, val_data=None,
            epochs=EPOCHS, key=None):
    """``jaxgd.fit`` of one configuration (memoised)."""
    cache_key = (lr, batch_size, seed, optimizer, tuple(sorted(dict(extra).items())),
                 None if data is None else id(data), epochs)
    if cache_key in _FITS and val_data is None:
        return _FITS[cache_key]
    res = jaxgd.fit(mse, P0, (X, Y) if data is None else data, optimizer=optimizer,
                    hparams={"learning_rate": lr, **dict(extra)}, batch_size=batch_size,
                    epochs=epochs, key=seed if key is None else key, val_data=val_data)
    if val_data is None:
        _FITS[cache_key] = res
    return res


def row_params(sw, i):
    return jax.tree.map(lambda a: np.asarray(a)[i], sw.params)


def assert_row_is_fit(sw, i, fr, rtol=RTOL, atol=ATOL):
    """Row ``i`` of a sweep (table, history, params) equals the FitResult ``fr``."""
    row = sw.table.iloc[i]
    e = fr.epochs_run
    assert int(row["epochs_run"]) == e
    assert int(row["steps_run"]) == fr.steps_run
    assert row["stop_reason"] == fr.stop_reason
    for k, v in fr.history.items():
        np.testing.assert_allclose(sw.history[k][i, :e], v, rtol=rtol, atol=atol, err_msg=k)
        assert np.all(np.isnan(sw.history[k][i, e:])), k
    np.testing.assert_allclose(row["final_loss"], fr.final_loss, rtol=rtol, atol=atol)
    for a, b in zip(jax.tree.leaves(row_params(sw, i)), jax.tree.leaves(fr.params),
                    strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=rtol, atol=atol)


def assert_rows_equal(sw_a, i, sw_b, j, rtol=RTOL, atol=ATOL):
    """Row i of sweep a equals row j of sweep b (history, params, stop)."""
    ta, tb = sw_a.table.iloc[i], sw_b.table.iloc[j]
    for col in ("epochs_run", "steps_run", "stop_reason", "diverged"):
        assert ta[col] == tb[col], col
    for k in sw_a.history:
        np.testing.assert_allclose(sw_a.history[k][i], sw_b.history[k][j], rtol=rtol, atol=atol,
                                   err_msg=k)
    for a, b in zip(jax.tree.leaves(row_params(sw_a, i)), jax.tree.leaves(row_params(sw_b, j)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def cfg_of(sw, i):
    c = sw.configs[i]
    return c["learning_rate"], c.get("batch_size"), c.get("seed", 0)


@pytest.fixture(scope="module")
def full_sweep():
    return jaxgd.sweep(mse, P0, (X, Y), grid=GRID, epochs=EPOCHS)


# ----------------------------------------------------------------------------- fit parity


@pytest.mark.parametrize("chunk_size", [1, pytest.param(6, marks=pytest.mark.slow), None])
def test_every_config_equals_its_fit(chunk_size, full_sweep):
    # chunk_size=6 over 2 seeds: blocks 2 x 3, the second one padded
    sw = full_sweep if chunk_size is None else jaxgd.sweep(
        mse, P0, (X, Y), grid=GRID, epochs=EPOCHS, chunk_size=chunk_size)
    n = len(LRS) * len(BATCHES) * len(SEEDS)
    assert len(sw) == n and list(sw.table["config"]) == list(range(n))
    assert sw.history["loss"].shape == (n, EPOCHS)
    assert set(sw.table["batch_size"]) == {"full", 5}
    for i in range(n):
        lr, bs, seed = cfg_of(sw, i)
        assert_row_is_fit(sw, i, ref_fit(lr, bs, seed))
    # the grid order: last axis fastest
    assert [cfg_of(sw, i) for i in range(3)] == [(0.01, None, 0), (0.01, None, 1), (0.01, 5, 0)]
    # mini-batch steps: ceil(23/5)=5 per epoch; the seeds' data orders really differ
    assert set(sw.table.loc[sw.table["batch_size"] == 5, "steps_run"]) == {5 * EPOCHS}
    assert not np.allclose(sw.history["loss"][2], sw.history["loss"][3])


def test_seed_is_fit_key():
    """Seed s in a sweep is exactly fit(key=jax.random.key(s))."""
    a = ref_fit(0.05, 5, 3)
    b = ref_fit(0.05, 5, None, key=jax.random.key(3))
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    sw = jaxgd.sweep(mse, P0, (X, Y), grid={"learning_rate": [0.05]}, batch_size=5, seed=3,
                     epochs=EPOCHS)
    assert_row_is_fit(sw, 0, b)


def test_config_does_not_depend_on_the_rest(full_sweep):
    """Explicit configurations: the same configuration in two different sweeps."""
    cfgs = [{"learning_rate": 0.05, "batch_size": 5, "seed": 1},
            {"learning_rate": 50.0, "batch_size": 5, "seed": 0},  # diverges
            {"learning_rate": 0.01, "batch_size": None, "seed": 1},
            {"learning_rate": 0.2, "batch_size": "full", "seed": 0}]
    sw = jaxgd.sweep(mse, P0, (X, Y), configs=cfgs, epochs=EPOCHS)
    assert sw.table["diverged"].tolist() == [False, True, False, False]
    where = {cfg_of(full_sweep, i): i for i in range(len(full_sweep))}
    for k, (lr, bs, seed) in [(0, (0.05, 5, 1)), (2, (0.01, None, 1)), (3, (0.2, None, 0))]:
        assert_rows_equal(sw, k, full_sweep, where[(lr, bs, seed)])
        assert_row_is_fit(sw, k, ref_fit(lr, bs, seed))


# ----------------------------------------------------------------------------- other axes


@pytest.mark.slow
def test_momentum_axis():
    sw = jaxgd.sweep(mse, P0, (X, Y), optimizer="momentum", batch_size=5, epochs=EPOCHS,
                     grid={"learning_rate": [0.01, 0.05], "momentum": [0.0, 0.5, 0.9]})
    assert len(sw) == 6 and "momentum" in sw.table
    for i, c in enumerate(sw.configs):
        fr = ref_fit(c["learning_rate"], 5, 0, optimizer="momentum",
                     extra={"momentum": c["momentum"]})
        assert_row_is_fit(sw, i, fr)


@pytest.mark.slow
def test_adam_axes():
    sw = jaxgd.sweep(mse, P0, (X, Y), optimizer="adam", epochs=EPOCHS, seed=1,
                     grid={"learning_rate": [0.01, 0.1], "b1": [0.5, 0.9], "b2": [0.99, 0.999]})
    assert len(sw) == 8
    for i, c in enumerate(sw.configs):
        fr = ref_fit(c["learning_rate"], None, 1, optimizer="adam",
                     extra={"b1": c["b1"], "b2": c["b2"]})
        assert_row_is_fit(sw, i, fr)


@pytest.mark.slow
def test_optimizer_as_axis():
    sw = jaxgd.sweep(mse, P0, (X, Y), epochs=EPOCHS, batch_size=5,
                     grid={"optimizer": ["sgd", "adam"], "learning_rate": [0.01, 0.1]})
    assert sw.table["optimizer"].tolist() == ["sgd", "sgd", "adam", "adam"]
    for i, c in enumerate(sw.configs):
        assert_row_is_fit(sw, i, ref_fit(c["learning_rate"], 5, 0, optimizer=c["optimizer"]))


def test_random_search():
    spec = {"n": 6, "random_seed": 3, "learning_rate": ("loguniform", 1e-3, 0.3),
            "batch_size": ("choice", [None, 5]), "seed": ("choice", [0, 1])}
    sw = jaxgd.sweep(mse, P0, (X, Y), random=spec, epochs=EPOCHS)
    assert len(sw) == 6
    lrs = np.asarray([c["learning_rate"] for c in sw.configs])
    assert np.all((lrs >= 1e-3) & (lrs <= 0.3)) and len(set(lrs)) == 6
    assert {c["batch_size"] for c in sw.configs} <= {None, 5}
    assert {c["seed"] for c in sw.configs} <= {0, 1}
    # the draws are a function of random_seed
    from jaxgd.sweep import expand_configs

    assert expand_configs(random=spec) == sw.configs
    assert expand_configs(random={**spec, "random_seed": 4}) != sw.configs
    for i in range(len(sw)):
        assert_row_is_fit(sw, i, ref_fit(*cfg_of(sw, i)))


def test_folds_equal_fit_on_the_training_part():
    k = 3
    sw = jaxgd.sweep(mse, P0, (X, Y), grid={"learning_rate": [0.05, 0.1]}, folds=k,
                     batch_size=5, epochs=EPOCHS)
    assert sw.table["fold"].tolist() == [0, 1, 2, 0, 1, 2]
    assert "final_val_loss" in sw.table and "val_loss" in sw.history
    split = jaxgd.data.kfold_indices(N, k, shuffle=True, seed=0)
    # the held-out parts partition the data
    assert sorted(np.concatenate([v for _, v in split]).tolist()) == list(range(N))
    for i, c in enumerate(sw.configs):
        tr, va = split[c["fold"]]
        fr = jaxgd.fit(mse, P0, (X[tr], Y[tr]), hparams={"learning_rate": c["learning_rate"]},
                       batch_size=5, epochs=EPOCHS, key=0, val_data=(X[va], Y[va]))
        assert "val_loss" in fr.history
        assert_row_is_fit(sw, i, fr)
        np.testing.assert_allclose(sw.table["final_val_loss"][i], fr.history["val_loss"][-1],
                                   rtol=RTOL)
    cv = sw.cv_table()
    assert len(cv) == 2 and cv["folds"].tolist() == [3, 3]


# ----------------------------------------------------------------------------- divergence


@pytest.fixture(scope="module")
def diverging_sweep():
    return jaxgd.sweep(mse, P0, (X, Y), grid={"learning_rate": [0.05, 50.0, 0.1, 1e4]},
                       batch_size=5, epochs=EPOCHS)


def test_divergence_is_flagged_and_isolated(diverging_sweep):
    sw = diverging_sweep
    assert sw.table["diverged"].tolist() == [False, True, False, True]
    assert sw.table["stop_reason"].tolist()[1::2] == ["diverged", "diverged"]
    assert (sw.table["epochs_run"][1::2] < EPOCHS).all()
    for leaf in jax.tree.leaves(sw.params):  # the last finite parameters are kept
        assert np.all(np.isfinite(leaf))
    # the others are untouched: equal to a sweep without the diverging ones, and to fit
    calm = jaxgd.sweep(mse, P0, (X, Y), grid={"learning_rate": [0.05, 0.1]}, batch_size=5,
                       epochs=EPOCHS)
    for i, j in [(0, 0), (2, 1)]:
        assert_rows_equal(sw, i, calm, j)
        assert np.all(np.isfinite(sw.history["loss"][i]))
        assert_row_is_fit(sw, i, ref_fit(sw.configs[i]["learning_rate"], 5, 0))
    # fit flags it the same way
    assert ref_fit(1e4, 5, 0).stop_reason == "diverged"


def test_best_is_min_final_loss_not_diverged(diverging_sweep, full_sweep):
    for sw in (diverging_sweep, full_sweep):
        best = sw.best()
        t = sw.table
        ok = t[~t["diverged"]]
        i = int(ok["final_loss"].idxmin())
        assert best.index == i and best.row["config"] == t["config"][i]
        assert best.row["final_loss"] == ok["final_loss"].min()
        for a, b in zip(jax.tree.leaves(best.params), jax.tree.leaves(row_params(sw, i)),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    # a diverged row is never the best, even where its table loss is lower
    t = diverging_sweep.table.copy()
    t.loc[1, "final_loss"] = -1.0
    hacked = jaxgd.SweepResult(diverging_sweep.configs, t, diverging_sweep.history,
                               diverging_sweep.params)
    assert hacked.best().index != 1
    assert full_sweep.best("best_loss").row["best_loss"] == full_sweep.table["best_loss"].min()


# ----------------------------------------------------------------------------- compilation




def test_no_recompilation_for_new_values(compiles):
    def run(lrs, seeds, momenta):
        return jaxgd.sweep(mse, P0, (X, Y), optimizer="momentum", batch_size=5,
                           epochs=EPOCHS, grid={"learning_rate": lrs, "momentum": momenta,
                                                "seed": seeds})

    run([0.01, 0.02], [0, 1], [0.1, 0.9])
    assert any("jit(block)" in m for m in compiles.messages)  # the counter works
    compiles.messages.clear()
    sw = run([0.03, 0.2], [5, 7], [0.3, 0.5])
    assert compiles.messages == []
    assert sorted({c["seed"] for c in sw.configs}) == [5, 7]
    fr = ref_fit(0.2, 5, 7, optimizer="momentum", extra={"momentum": 0.5})
    assert_row_is_fit(sw, len(sw) - 1, fr)


# ----------------------------------------------------------------------------- files, parts


def test_save_load_round_trip(full_sweep, tmp_path):
    full_sweep.save(tmp_path / "run")
    back = jaxgd.load(tmp_path / "run")
    pd.testing.assert_frame_equal(back.table, full_sweep.table, check_dtype=False)
    assert back.configs == full_sweep.configs
    assert back.folds is None and len(back) == len(full_sweep)
    assert back.history.keys() == full_sweep.history.keys()
    for k in back.history:
        np.testing.assert_array_equal(back.history[k], full_sweep.history[k])
    assert jax.tree.structure(back.params) == jax.tree.structure(full_sweep.params)
    for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(full_sweep.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    assert back.best().index == full_sweep.best().index
    assert not (tmp_path / "run" / ".lock").exists()
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_sweep_out_writes_a_loadable_run(tmp_path):
    sw = jaxgd.sweep(mse, P0, (X, Y), grid={"learning_rate": [0.05, 0.1]}, batch_size=5,
                     epochs=EPOCHS, out=tmp_path / "o")
    back = jaxgd.load(tmp_path / "o")
    pd.testing.assert_frame_equal(back.table, sw.table, check_dtype=False)
    assert len(list((tmp_path / "o" / "chunks").glob("*.npz"))) == 1


def test_only_parts_concat_to_the_full_sweep(full_sweep):
    n = len(full_sweep)
    parts = [jaxgd.sweep(mse, P0, (X, Y), grid=GRID, epochs=EPOCHS, only=range(8, n)),
             jaxgd.sweep(mse, P0, (X, Y), grid=GRID, epochs=EPOCHS, only=range(0, 8))]
    assert parts[0].table["config"].tolist() == list(range(8, n))
    whole = jaxgd.SweepResult.concat(parts)
    assert whole.table["config"].tolist() == list(range(n))
    assert whole.configs == full_sweep.configs
    cols = [c for c in full_sweep.table if c not in ("final_loss", "best_loss", "init_loss")]
    pd.testing.assert_frame_equal(whole.table[cols], full_sweep.table[cols], check_dtype=False)
    for i in range(n):
        assert_rows_equal(whole, i, full_sweep, i)
    with pytest.raises(ValueError, match="overlap"):
        jaxgd.SweepResult.concat([parts[0], parts[0]])


def test_memory_budget_splits_into_chunks(full_sweep, tmp_path):
    sw = jaxgd.sweep(mse, P0, (X, Y), grid=GRID, epochs=EPOCHS, memory_budget=4000,
                     out=tmp_path / "m")
    # the budget holds one or two configurations per call: many chunks, seeds split too
    chunks = list((tmp_path / "m" / "chunks").glob("*.npz"))
    assert len(chunks) >= 8
    for c in chunks:
        with np.load(c) as z:
            assert len(z["config"]) <= 2
    for i in range(len(sw)):
        assert_rows_equal(sw, i, full_sweep, i)


# ----------------------------------------------------------------------------- determinism


def _bitwise_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_determinism_float32(full_sweep):
    a = jaxgd.fit(mse, P0, (X, Y), hparams={"learning_rate": 0.05}, batch_size=5, key=1,
                  epochs=EPOCHS)
    b = jaxgd.fit(mse, P0, (X, Y), hparams={"learning_rate": 0.05}, batch_size=5, key=1,
                  epochs=EPOCHS)
    _bitwise_equal((a.params, a.history), (b.params, b.history))
    again = jaxgd.sweep(mse, P0, (X, Y), grid=GRID, epochs=EPOCHS)
    _bitwise_equal((again.params, again.history), (full_sweep.params, full_sweep.history))
    pd.testing.assert_frame_equal(again.table, full_sweep.table)


@pytest.mark.slow
def test_determinism_float64(x64):
    x, y = make_data(np.float64)
    p0 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), P0)

    def run_fit():
        return jaxgd.fit(mse, p0, (x, y), hparams={"learning_rate": 0.05}, batch_size=5,
                         key=1, epochs=EPOCHS)

    def run_sweep():
        return jaxgd.sweep(mse, p0, (x, y), grid={"learning_rate": [0.05, 0.1], "seed": [0, 1]},
                           batch_size=5, epochs=EPOCHS)

    a, b = run_fit(), run_fit()
    assert a.params["w"].dtype == jnp.float64
    _bitwise_equal((a.params, a.history), (b.params, b.history))
    s1, s2 = run_sweep(), run_sweep()
    assert s1.params["w"].dtype == np.float64 and s1.history["loss"].dtype == np.float64
    _bitwise_equal((s1.params, s1.history), (s2.params, s2.history))
    pd.testing.assert_frame_equal(s1.table, s2.table)
    # and the sweep row equals fit in float64 to round-off
    assert_row_is_fit(s1, 1, a, rtol=1e-10, atol=1e-12)


def test_boolean_axis_splits_groups_and_equals_fit():
    # nesterov changes the program (a Python bool of optax.sgd): each value is a group
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)

    def loss(p, b):
        return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)

    p0 = {"w": jnp.zeros(3)}
    sw = jaxgd.sweep(loss, p0, (x, y), optimizer="sgd",
                     grid={"nesterov": [True, False], "learning_rate": [0.01, 0.05]},
                     hparams={"momentum": 0.9}, batch_size=5, epochs=4)
    assert list(sw.table["nesterov"]) == [True, True, False, False]
    for i, c in enumerate(sw.configs):
        r = jaxgd.fit(loss, p0, (x, y), optimizer="sgd", batch_size=5, epochs=4,
                      hparams={"momentum": 0.9, **c})
        np.testing.assert_allclose(sw.params["w"][i], np.asarray(r.params["w"]),
                                   rtol=1e-5, atol=1e-6)
    # the two values really differ
    assert not np.allclose(sw.params["w"][0], sw.params["w"][2])


def test_folds_standardise_with_each_folds_training_statistics():
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(11)
    x = (rng.normal(size=(31, 3)) * [1.0, 40.0, 0.05] + [2.0, 10.0, 0.0]).astype(np.float32)
    y = (x @ np.array([0.5, 0.01, 20.0], np.float32)).astype(np.float32)

    def loss(p, b):
        return jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)

    p0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    sw = jaxgd.sweep(loss, p0, (x, y), grid={"learning_rate": [0.02, 0.1]}, folds=3,
                     batch_size=4, epochs=3, standardize=True)
    folds = jaxgd.data.kfold_indices(len(x), 3, shuffle=True, seed=0)
    for i, c in enumerate(sw.configs):
        tr, va = folds[c["fold"]]
        sc = StandardScaler().fit(x[tr])  # the fold's training rows only
        r = jaxgd.fit(loss, p0, (sc.transform(x[tr]).astype(np.float32), y[tr]),
                      val_data=(sc.transform(x[va]).astype(np.float32), y[va]),
                      hparams={"learning_rate": c["learning_rate"]}, batch_size=4, epochs=3)
        np.testing.assert_allclose(sw.params["w"][i], np.asarray(r.params["w"]),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sw.table["final_val_loss"][i], r.history["val_loss"][-1],
                                   rtol=1e-4)


def test_chunk_size_below_the_number_of_seeds_is_honoured(monkeypatch):
    import importlib

    engine = importlib.import_module("jaxgd.engine")

    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 2)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0], np.float32)).astype(np.float32)

    def loss(p, b):
        return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)

    p0 = {"w": jnp.zeros(2)}
    widths = []
    real = engine.Engine.run_chunk

    def spy(self, plan, ci, *a):
        widths.append(len(plan.streams) * plan.width)
        return real(self, plan, ci, *a)

    grid = {"seed": [0, 1, 2, 3, 4], "learning_rate": [0.01, 0.1]}
    ref = jaxgd.sweep(loss, p0, (x, y), grid=grid, batch_size=5, epochs=3)
    monkeypatch.setattr(engine.Engine, "run_chunk", spy)
    small = jaxgd.sweep(loss, p0, (x, y), grid=grid, batch_size=5, epochs=3, chunk_size=2)
    assert max(widths) <= 2 and sum(widths) >= 10
    np.testing.assert_allclose(small.params["w"], ref.params["w"], rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(small.table, ref.table)
