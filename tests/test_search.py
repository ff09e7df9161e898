"""Adaptive search (jaxgd.search): successive halving / Hyperband and PBT.

References are independent NumPy loops: full-batch gradient descent (with momentum) of a
linear least-squares model, replaying the search's decisions (rankings by the NumPy
validation loss; PBT's copies and hyper-parameter changes from the recorded lineage).
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd
from jaxgd import search

RNG = np.random.default_rng(3)
X = RNG.normal(size=(64, 3)).astype(np.float32)
W = np.array([1.5, -2.0, 0.5], np.float32)
Y = (X @ W + 0.3 * RNG.normal(size=64)).astype(np.float32)
XV = RNG.normal(size=(32, 3)).astype(np.float32)
YV = (XV @ W + 0.3 * RNG.normal(size=32)).astype(np.float32)
P0 = {"w": jnp.zeros(3, jnp.float32)}


def mse(p, b):
    return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)


def np_gd(w, v, lr, mom, epochs):
    """Full-batch heavy-ball GD (optax.sgd(momentum=...)): returns (w, v, val losses)."""
    w, v = w.astype(np.float64).copy(), v.astype(np.float64).copy()
    vals = []
    for _ in range(epochs):
        g = 2 * X.T.astype(np.float64) @ (X @ w - Y) / len(Y)
        v = mom * v + g
        w = w - lr * v
        vals.append(np.mean((XV @ w - YV) ** 2))
    return w, v, vals


# lrs far enough apart that float32 and float64 rank them the same
LRS = [0.002, 0.005, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2]


def halving_replay(curves: dict, rungs) -> tuple[int, dict]:
    """Successive halving replayed on the host: at each ``(end, keep)`` rung the ``keep``
    configurations with the lowest ``curves[i][end - 1]`` go on. Returns (the winner,
    {pruned configuration: the rung end it reached})."""
    live, reached = list(curves), {}
    for end, keep in rungs:
        order = sorted(live, key=lambda i: curves[i][end - 1])
        for i in order[keep:]:
            reached[i] = end
        live = order[:keep]
    (winner,) = live
    return winner, reached


def test_halving_matches_a_numpy_replay():
    res = jaxgd.sweep(mse, P0, (X, Y), optimizer="momentum", hparams={"momentum": 0.5},
                      grid={"learning_rate": LRS}, epochs=9, val_data=(XV, YV),
                      search=search.Halving(eta=3, min_epochs=1))
    # the reference: rungs end at epochs 1, 3, 9; keep 9 // 3 = 3, then 9 // 9 = 1
    runs = {i: np_gd(np.zeros(3), np.zeros(3), lr, 0.5, 9) for i, lr in enumerate(LRS)}
    winner, reached = halving_replay({i: r[2] for i, r in runs.items()}, ((1, 3), (3, 1)))
    t = res.table
    assert list(t["stop_reason"]) == ["max_epochs" if i == winner else "pruned"
                                      for i in range(len(LRS))]
    assert [int(e) for e in t["epochs_run"]] == [reached.get(i, 9) for i in range(len(LRS))]
    assert int(t["steps_run"].sum()) == 9 + sum(reached.values())
    np.testing.assert_allclose(res.params_of(winner)["w"], runs[winner][0], rtol=1e-5)
    for i in range(len(LRS)):  # each row's history is its own run up to where it stopped
        e = reached.get(i, 9)
        np.testing.assert_allclose(res.history["val_loss"][i, :e], runs[i][2][:e], rtol=1e-4)
        assert np.isnan(res.history["val_loss"][i, e:]).all()
        np.testing.assert_allclose(res.params_of(i)["w"],
                                   np_gd(np.zeros(3), np.zeros(3), LRS[i], 0.5, e)[0],
                                   rtol=1e-5, atol=1e-7)


def _widths(monkeypatch):
    """The [streams, width] shapes of every program call (block) made."""
    from jaxgd import program

    shapes = []
    real = program.compiled_program

    def spy(spec, rows):
        prog = real(spec, rows)

        def block(st, start, end, data, val, tc, *rest):
            shapes.append(tuple(np.shape(tc.values["learning_rate"])))
            return prog.block(st, start, end, data, val, tc, *rest)

        return prog._replace(block=block)

    monkeypatch.setattr(program, "compiled_program", spy)
    return shapes


@pytest.mark.parametrize("compact, widths", [(True, [(1, 4), (1, 2), (1, 1)]),
                                             (False, [(1, 4), (1, 4), (1, 4)])])
def test_survivors_continue_from_their_state_adam_minibatch(compact, widths, monkeypatch):
    """Adam, shuffled mini-batches: a survivor's run equals the same configuration in a
    plain sweep (optimizer state, step count and data order carried across rungs), in
    compacted (narrower) programs or in the first width with pruned lanes masked."""
    kw = dict(optimizer="adam", grid={"learning_rate": [0.001, 0.01, 0.03, 0.1]},
              epochs=8, batch_size=16, val_data=(XV, YV), seed=4)
    full = jaxgd.sweep(mse, P0, (X, Y), **kw)
    shapes = _widths(monkeypatch)
    res = jaxgd.sweep(mse, P0, (X, Y), **kw,
                      search=search.Halving(eta=2, min_epochs=2, compact=compact))
    assert shapes == widths  # rungs end at epochs 2, 4, 8: 4 -> 2 -> 1 survivors
    done = res.table.index[res.table["stop_reason"] == "max_epochs"]
    assert len(done) == 1
    i = int(done[0])
    np.testing.assert_allclose(res.params_of(i)["w"], full.params_of(i)["w"], rtol=2e-6)
    np.testing.assert_allclose(res.history["loss"][i], full.history["loss"][i], rtol=2e-6)
    assert res.table["steps_run"][i] == full.table["steps_run"][i] == 8 * 4


def test_hyperband_brackets_follow_the_definition():
    h = search.hyperband(eta=3, min_epochs=1)
    assert search.max_bracket(h, 27, 1) == 3
    assert [search.rung_ends(h, s, 27, 1) for s in (3, 2, 1, 0)] == [
        [1, 3, 9, 27], [3, 9, 27], [9, 27], [27]]
    # n_s = ceil(4 / (s + 1) * 3**s): 27, 12, 6, 4 (49 in all) for 49 configurations
    brs = search.brackets(h, list(range(49)), 27, 1)
    assert [len(b.units) for b in brs] == [27, 12, 6, 4]
    assert sorted(u for b in brs for u in b.units) == list(range(49))
    assert [[k for _, k in b.rungs] for b in brs] == [[9, 3, 1, 1], [4, 1, 1], [2, 2], [4]]
    # eval_every=2: rung ends in evaluations, rounded down to evaluations
    assert search.rung_ends(search.Halving(eta=3, min_epochs=2), 2, 20, 2) == [1, 3, 10]


def test_hyperband_run_spends_less_and_keeps_rows():
    res = jaxgd.sweep(mse, P0, (X, Y), random={"n": 12, "learning_rate": ("loguniform",
                                                                          1e-3, 0.3)},
                      epochs=9, batch_size=16, val_data=(XV, YV),
                      search=search.hyperband(eta=3))
    assert len(res.table) == 12
    reasons = set(res.table["stop_reason"])
    assert reasons <= {"pruned", "max_epochs"} and "pruned" in reasons
    assert res.table["steps_run"].sum() < 12 * 9 * 4
    pruned = res.table[res.table["stop_reason"] == "pruned"]
    assert (pruned["epochs_run"] < 9).all()


def test_average_keeps_or_prunes_a_setting_as_a_whole():
    res = jaxgd.sweep(mse, P0, (X, Y), grid={"learning_rate": LRS[:6], "seed": [0, 1]},
                      epochs=6, batch_size=16, val_data=(XV, YV),
                      search=search.Halving(eta=3, min_epochs=2, average=("seed",)))
    by_lr = res.table.groupby("learning_rate")["stop_reason"].agg(set)
    assert all(len(s) == 1 for s in by_lr)  # both seeds share the decision
    assert sum(s == {"max_epochs"} for s in by_lr) == 2  # 6 settings // 3


def test_pbt_matches_a_numpy_replay_of_its_lineage():
    lrs = [0.002, 0.01, 0.05, 0.12]
    res = jaxgd.sweep(mse, P0, (X, Y), optimizer="momentum", hparams={"momentum": 0.5},
                      grid={"learning_rate": lrs}, epochs=8, val_data=(XV, YV),
                      search=search.PBT(interval=2, quantile=0.25, seed=1))
    lin = res.lineage
    assert list(lin.columns) == ["config", "epoch", "parent", "learning_rate"]
    assert (lin[lin["epoch"] > 0].groupby("epoch").size() == 1).all()  # 4 * 0.25
    # replay: each member runs its lr; at a step the worst member (NumPy val loss) copies
    # the best's weights and velocity and continues with the lineage's new lr
    w = {i: np.zeros(3) for i in range(4)}
    v = {i: np.zeros(3) for i in range(4)}
    lr = dict(enumerate(lrs))
    for e0 in (0, 2, 4, 6):
        vals = {}
        for i in range(4):
            w[i], v[i], hist = np_gd(w[i], v[i], lr[i], 0.5, 2)
            vals[i] = hist[-1]
            np.testing.assert_allclose(res.history["val_loss"][i, e0 + 1], hist[-1],
                                       rtol=1e-4)
        step = lin[lin["epoch"] == e0 + 2]
        if e0 == 6:
            assert step.empty
            break
        (row,) = step.itertuples()
        # the worst copies the best (ties: either member of the tie)
        assert vals[row.config] >= max(vals.values()) * (1 - 1e-5)
        assert vals[row.parent] <= min(vals.values()) * (1 + 1e-5)
        w[row.config], v[row.config] = w[row.parent].copy(), v[row.parent].copy()
        new = row.learning_rate
        assert any(math.isclose(new, lr[row.parent] * f, rel_tol=1e-9) for f in (0.8, 1.2)
                   ) or new in lrs  # perturbed, or resampled from the grid
        lr[row.config] = new
    for i in range(4):
        np.testing.assert_allclose(res.params_of(i)["w"], w[i], rtol=2e-5)
    # the table: each member's starting value, then the one it ended with (the replay's)
    np.testing.assert_array_equal(res.table["learning_rate"], lrs)
    np.testing.assert_allclose(res.table["final_learning_rate"], [lr[i] for i in range(4)],
                               rtol=1e-7)
    assert list(res.table.columns[1:3]) == ["learning_rate", "final_learning_rate"]


def test_pbt_is_deterministic_and_saved(tmp_path):
    kw = dict(grid={"learning_rate": [0.001, 0.01, 0.05, 0.1]}, epochs=6, batch_size=16,
              val_data=(XV, YV), search=search.PBT(interval=2, quantile=0.5, seed=7))
    a = jaxgd.sweep(mse, P0, (X, Y), out=tmp_path / "run", **kw)
    b = jaxgd.sweep(mse, P0, (X, Y), **kw)
    assert a.lineage.equals(b.lineage)
    np.testing.assert_array_equal(a.params["w"], b.params["w"])
    loaded = jaxgd.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.lineage.to_numpy(float), a.lineage.to_numpy(float))
    np.testing.assert_allclose(loaded.table["final_learning_rate"],
                               a.table["final_learning_rate"])
    # no loss-vs-learning-rate figure: a member's loss is not its starting rate's
    from jaxgd.plots import plot_sweep

    figs = [Path(f).stem for f in plot_sweep(a, tmp_path / "figs")]
    assert "pbt_lineage" in figs and "final_loss_vs_lr" not in figs
    (tmp_path / "run" / "lineage.csv").write_text("config,epoch\n0,0\n")
    with pytest.raises(ValueError, match="lineage.csv does not match"):
        jaxgd.load(tmp_path / "run")


def np_median_rule(vals, epochs, warmup, interval):
    """The median stopping rule replayed on full runs' validation losses ``vals[i][t]``
    (epoch t + 1): at each check epoch, a configuration still training stops when its best
    loss so far exceeds the median of the others' mean losses so far (the others: those
    still training there). Returns {configuration: epoch it stopped at}."""
    live, stopped = set(range(len(vals))), {}
    for t in range(warmup, epochs, interval):
        means = {j: np.mean(vals[j][:t]) for j in live}
        out = [k for k in sorted(live)
               if len(live) > 1 and min(vals[k][:t]) > np.median(
                   [means[j] for j in live if j != k])]
        for k in out:
            stopped[k] = t
        live -= set(out)
    return stopped


# the slow ones stop at the first check, an oscillating fast one at the second (the
# smallest gap between a best loss and its median is 4%: float32 decides as float64 does)
LRS_M = LRS + [0.4, 0.5, 0.55]


def test_median_rule_matches_a_numpy_replay():
    res = jaxgd.sweep(mse, P0, (X, Y), optimizer="momentum", hparams={"momentum": 0.5},
                      grid={"learning_rate": LRS_M}, epochs=6, val_data=(XV, YV),
                      search=search.Median(warmup=1, interval=1, compact=False))
    runs = {i: np_gd(np.zeros(3), np.zeros(3), lr, 0.5, 6) for i, lr in enumerate(LRS_M)}
    vals = [runs[i][2] for i in range(len(LRS_M))]
    stopped = np_median_rule(vals, 6, 1, 1)
    assert 0 < len(stopped) < len(LRS_M) - 1  # the rule acted, and not on everyone
    assert len(set(stopped.values())) > 1  # at more than one check
    t = res.table
    assert list(t["stop_reason"]) == ["pruned" if i in stopped else "max_epochs"
                                      for i in range(len(LRS_M))]
    assert [int(e) for e in t["epochs_run"]] == [stopped.get(i, 6) for i in range(len(LRS_M))]
    for i, lr in enumerate(LRS_M):  # each row is its own run up to where it stopped
        e = stopped.get(i, 6)
        np.testing.assert_allclose(res.history["val_loss"][i, :e], vals[i][:e], rtol=1e-4)
        assert np.isnan(res.history["val_loss"][i, e:]).all()
        np.testing.assert_allclose(res.params_of(i)["w"],
                                   np_gd(np.zeros(3), np.zeros(3), lr, 0.5, e)[0],
                                   rtol=1e-5, atol=1e-7)


def test_median_rule_with_max_mode_and_a_toml_table(tmp_path):
    """mode="max" on a metric of the loss (the accuracy-like negative loss) stops the same
    configurations as mode="min" on the loss; the TOML spelling builds the same method."""
    from jaxgd.config import read_config

    def scored(p, b):
        v = mse(p, b)
        return v, {"score": -v}

    kw = dict(optimizer="momentum", hparams={"momentum": 0.5},
              grid={"learning_rate": LRS_M}, epochs=6, val_data=(XV, YV))
    a = jaxgd.sweep(scored, P0, (X, Y), search=search.Median(metric="val_score", mode="max"),
                    **kw)
    vals = [np_gd(np.zeros(3), np.zeros(3), lr, 0.5, 6)[2] for lr in LRS_M]
    stopped = np_median_rule(vals, 6, 1, 1)
    assert [int(e) for e in a.table["epochs_run"]] == [stopped.get(i, 6)
                                                       for i in range(len(LRS_M))]
    f = tmp_path / "m.toml"
    f.write_text('[data]\ndataset = "diabetes"\n[model]\nname = "linear"\n[train]\n'
                 'epochs = 10\n[sweep]\nlearning_rate = [0.01, 0.1]\n[search]\n'
                 'method = "median"\nwarmup = 2\ninterval = 3\n')
    assert read_config(f).search == search.Median(warmup=2, interval=3)
    f.write_text(f.read_text().replace("warmup = 2", "warmup = 10"))
    with pytest.raises(jaxgd.config.ConfigError, match=r"m.toml:\d+: search warmup=10 must "
                                                       "be less than epochs=10"):
        read_config(f)


def test_search_from_a_toml_file(tmp_path):
    from jaxgd.config import ConfigError, load_config

    text = """
[data]
dataset = "diabetes"
standardize = true
standardize_target = true
val_fraction = 0.25
[model]
name = "linear"
[train]
epochs = 9
batch_size = 64
[sweep]
learning_rate = [0.003, 0.01, 0.03, 0.1, 0.3, 0.6]
[search]
method = "halving"
eta = 3
min_epochs = 1
"""
    f = tmp_path / "s.toml"
    f.write_text(text)
    exp = load_config(f)
    res = exp.run()
    ref = jaxgd.sweep(exp.loss, exp.params, exp.data,
                      **{**exp.sweep_kwargs, "search": search.Halving(eta=3, min_epochs=1)})
    assert list(res.table["stop_reason"]) == list(ref.table["stop_reason"])
    assert list(res.table["stop_reason"]).count("max_epochs") == 1  # 6 // 3 // 3 -> 1
    f.write_text(text.replace("eta = 3", "eta = 1"))
    with pytest.raises(ConfigError, match=r"s.toml:16: search eta=1 must be an integer >= 2"):
        load_config(f)
    f.write_text(text.replace("eta = 3", "rungs = 3"))
    with pytest.raises(ConfigError, match="unknown key 'rungs'"):
        load_config(f)
    # refused when the sweep starts (what it records, the population): still at the line
    f.write_text(text.replace("val_fraction = 0.25\n", "").replace(
        "eta = 3", 'eta = 3\nmetric = "val_loss"'))
    with pytest.raises(ConfigError, match=r"s.toml:16: search metric='val_loss' is not "
                                          "recorded"):
        load_config(f).run()
    pbt = text.split("[search]")[0].replace("[0.003, 0.01, 0.03, 0.1, 0.3, 0.6]", "[0.01, 0.1]")
    f.write_text(pbt + '[search]\nmethod = "pbt"\ninterval = 3\nquantile = 0.25\n')
    with pytest.raises(ConfigError, match=r"s.toml:17: search quantile=0.25 of a population "
                                          "of 2 replaces no member"):
        load_config(f).run()
    f.write_text(pbt + '[search]\nmethod = "pbt"\n')
    with pytest.raises(ConfigError, match=r"s.toml:\d+: \[search\]: method='pbt' needs "
                                          "interval = "):
        load_config(f)
    f.write_text(pbt.replace('[train]', '[train]\noptimizer = ["sgd", "adam"]').replace(
        "[sweep]", "[sweep]\nb1 = [0.8, 0.9]"))
    with pytest.raises(ConfigError, match=r"s.toml:14: configuration 0 .*hparams key 'b1'"):
        load_config(f).run()


@pytest.mark.parametrize("kw, match", [
    (dict(search=search.Halving(eta=1)), "eta=1 must be an integer >= 2"),
    (dict(search=search.Halving(min_epochs=4)), "leaves no second rung"),
    (dict(search=search.Halving(brackets=5)), "brackets=5 is more than the 3"),
    (dict(search=search.Halving(metric="val_accuracy")), "metric='val_accuracy' is not "
                                                         "recorded"),
    (dict(search=search.Halving(average=("seed",))), "'seed' is not a swept axis"),
    (dict(search=search.PBT(interval=3, quantile=0.1)), "replaces no member"),
    (dict(search=search.PBT(interval=3, explore=("momentum",))), "'momentum' is not a traced"),
    (dict(search=search.PBT(interval=9)), "interval=9 must be less than epochs=9"),
    (dict(search=search.PBT(interval=2), eval_every=3), "multiple of eval_every=3"),
    (dict(search={"method": "asha"}), "method='asha' must be one of"),
    (dict(search=search.Median(warmup=9)), "warmup=9 must be less than epochs=9"),
    (dict(search=search.Median(interval=2), eval_every=3), "multiple of eval_every=3"),
    (dict(search="halving"), "must be jaxgd.search.Halving"),
])
def test_bad_searches_are_refused_before_compiling(kw, match, monkeypatch):
    from jaxgd import program

    def no_compile(*a, **k):
        raise AssertionError("compiled")

    monkeypatch.setattr(program, "compiled_program", no_compile)
    with pytest.raises((ValueError, TypeError), match=match):
        jaxgd.sweep(mse, P0, (X, Y), grid={"learning_rate": [0.01, 0.02, 0.03, 0.04]},
                    epochs=9, val_data=(XV, YV), **kw)


def test_pbt_needs_one_group():
    with pytest.raises(ValueError, match="one compiled group"):
        jaxgd.sweep(mse, P0, (X, Y), grid={"learning_rate": [0.01, 0.02],
                                           "batch_size": [8, 16]},
                    epochs=4, search=search.PBT(interval=2, quantile=0.5))


def test_auto_compacts_only_when_the_saving_beats_a_compile(monkeypatch):
    """compact="auto": with a compile measured as very costly the survivors stay in the
    first width; with compiles free they move to narrower programs."""
    clock = jaxgd.engine.CompileClock
    kw = dict(optimizer="adam", grid={"learning_rate": [0.001, 0.01, 0.03, 0.1]},
              epochs=8, batch_size=16, val_data=(XV, YV), seed=4,
              search=search.Halving(eta=2, min_epochs=2))
    shapes = _widths(monkeypatch)
    monkeypatch.setattr(clock, "longest", _Always(1e9))
    jaxgd.sweep(mse, P0, (X, Y), **kw)
    assert shapes == [(1, 4)] * 3
    shapes.clear()
    monkeypatch.setattr(clock, "longest", _Always(0.0))
    monkeypatch.setattr(clock, "note", lambda self, spec, c0: 0.0)  # compiles look free
    jaxgd.sweep(mse, P0, (X, Y), **kw)
    assert shapes == [(1, 4), (1, 2), (1, 1)]


class _Always(dict):
    """A compile-time record that reads ``value`` for every program."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def get(self, key, default=None):
        return self.value

    def __setitem__(self, key, v):
        pass


def test_search_figures_and_cli(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "pbt.toml"
    cfg.write_text("""
[data]
dataset = "diabetes"
standardize = true
standardize_target = true
val_fraction = 0.25
[model]
name = "linear"
[train]
epochs = 6
batch_size = 32
[sweep]
learning_rate = [0.001, 0.01, 0.05, 0.1]
[search]
method = "pbt"
interval = 2
quantile = 0.25
""")
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "jaxgd.cli", "sweep", str(cfg), "--out",
                        str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (out / "pbt_lineage.png").stat().st_size > 1000
    assert (out / "lineage.csv").exists()
    res = jaxgd.load(out)
    assert len(res.lineage) == 4 + 2  # the initial members, one copy at epochs 2 and 4
    from jaxgd.plots import plot_sweep

    assert "pbt_lineage.png" in " ".join(plot_sweep(res, tmp_path / "figs"))


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("kind", ["halving", "pbt", "median"])
def test_interrupted_search_resumes_at_its_last_boundary(kind, tmp_path, monkeypatch):
    """Killed after its second boundary, the same call with the same out= continues from
    the saved boundary (no evaluation before it runs again) and ends with the result of
    an uninterrupted search."""
    mod = jaxgd.population.Population  # the calls a search method makes
    s = {"halving": search.Halving(eta=2, min_epochs=1, compact=True),
         "pbt": search.PBT(interval=1, quantile=0.25, seed=2),
         "median": search.Median(warmup=1, interval=2, compact=True)}[kind]
    kw = dict(optimizer="momentum", hparams={"momentum": 0.5},
              grid={"learning_rate": [0.002, 0.01, 0.03, 0.05, 0.08, 0.1, 0.12, 0.15]},
              epochs=4 if kind == "pbt" else 8, batch_size=16, val_data=(XV, YV),
              search=s)
    ref = jaxgd.sweep(mse, P0, (X, Y), **kw)
    real_members, real_check = mod.advance, mod.checkpoint
    saved, starts = [], []

    def counting(run, keys, start, end, desc):
        starts.append(start)
        return real_members(run, keys, start, end, desc)

    def dying(run, where):
        real_check(run, where)
        saved.append(where)
        if len(saved) == 2:
            raise _Interrupt

    monkeypatch.setattr(mod, "advance", counting)
    monkeypatch.setattr(mod, "checkpoint", dying)
    with pytest.raises(_Interrupt):
        jaxgd.sweep(mse, P0, (X, Y), out=tmp_path / "run", **kw)
    assert (tmp_path / "run" / "chunks" / "search.npz").exists()
    starts.clear()
    monkeypatch.setattr(mod, "checkpoint", real_check)
    res = jaxgd.sweep(mse, P0, (X, Y), out=tmp_path / "run", **kw)
    assert starts and min(starts) > 0  # nothing before the saved boundary ran again
    assert list(res.table["stop_reason"]) == list(ref.table["stop_reason"])
    np.testing.assert_array_equal(res.table["steps_run"], ref.table["steps_run"])
    np.testing.assert_allclose(res.params["w"], ref.params["w"], rtol=1e-6)
    np.testing.assert_allclose(res.history["val_loss"], ref.history["val_loss"], rtol=1e-6)
    if kind == "pbt":
        assert res.lineage.equals(ref.lineage)
    assert jaxgd.load(tmp_path / "run").table["stop_reason"].tolist() == list(
        ref.table["stop_reason"])


def test_a_search_state_of_another_layout_is_refused_by_name(tmp_path, monkeypatch):
    """A saved search whose program state has another number of arrays per member (as
    one written by another version of jaxgd would) is refused with the file to remove,
    not unpacked into the wrong fields."""
    mod = pop_mod = jaxgd.population.Population
    kw = dict(grid={"learning_rate": [0.01, 0.05, 0.1, 0.2]}, epochs=4, batch_size=16,
              search=search.Halving(eta=2, min_epochs=1))
    real_check = mod.checkpoint

    def dying(run, where):
        real_check(run, where)
        raise _Interrupt

    monkeypatch.setattr(mod, "checkpoint", dying)
    with pytest.raises(_Interrupt):
        jaxgd.sweep(mse, P0, (X, Y), out=tmp_path / "run", **kw)
    monkeypatch.setattr(mod, "checkpoint", real_check)
    real_treedef = pop_mod.state_treedef
    monkeypatch.setattr(pop_mod, "state_treedef", lambda run, gi: jax.tree.structure(
        (jax.tree.unflatten(real_treedef(run, gi), [0] * real_treedef(run, gi).num_leaves),
         0)))
    with pytest.raises(ValueError, match=r"saved by another version.*search\.npz"):
        jaxgd.sweep(mse, P0, (X, Y), out=tmp_path / "run", **kw)


def test_pbt_refuses_folds_before_compiling(monkeypatch):
    # a member would copy the state of another fold's member, trained on its held-out part
    from jaxgd import program

    def no_compile(*a, **k):
        raise AssertionError("compiled")

    monkeypatch.setattr(program, "compiled_program", no_compile)
    with pytest.raises(ValueError, match="PBT.*cannot be combined with folds"):
        jaxgd.sweep(mse, P0, (X, Y), grid={"learning_rate": [0.01, 0.02]}, folds=2,
                    epochs=4, search=search.PBT(interval=2, quantile=0.5))
