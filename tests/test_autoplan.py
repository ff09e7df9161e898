"""Execution plans chosen by measurement (``loop="auto"`` / ``plan="auto"``,
:mod:`jaxgd.autoplan`): the fastest measured candidate runs, its results are the forced
plan's, short runs keep the rules, the recorded times are the measured ones, and resume
does not depend on the choice.

The candidates' evaluation times come from a scripted clock (``autoplan.clock``
monkeypatched): the trials still run every candidate's program, only the readings are
chosen, so a test decides which candidate is fastest without sleeping."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd
from jaxgd import autoplan
from jaxgd.engine import Engine
from jaxgd.store import RunStore

RNG = np.random.default_rng(1)
X = RNG.normal(size=(50, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1 * RNG.normal(size=50)).astype(np.float32)
P0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
GRID = {"learning_rate": [0.01, 0.03, 0.1, 0.2]}
# the candidates of a sweep of this tiny model in the order they are tried: the rules'
# choice (vmap: few parameters; scan: no convolution) first
ORDER = [("vmap", "scan"), ("vmap", "host"), ("map", "scan"), ("map", "host")]


@pytest.fixture(autouse=True)
def measure_tiny_models(monkeypatch):
    """These tests' model is tiny (dispatch-bound updates, which auto does not measure):
    measure it anyway, so that the trials run quickly."""
    monkeypatch.setattr(autoplan, "MIN_UPDATE_FLOPS", 0.0)


def make_loss():
    """A new loss function object: a program spec of its own, so its compiles are fresh."""
    def mse(p, b):
        x, y = b
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
    return mse


MSE = make_loss()


class ScriptedClock:
    """A clock whose timed spans (a reading at the start and one at the end) last the
    given seconds, in order."""

    def __init__(self, spans):
        self.spans, self.t, self.open, self.readings = list(spans), 0.0, False, 0

    def __call__(self):
        self.readings += 1
        if self.open:
            self.t += self.spans.pop(0)
        self.open = not self.open
        return self.t


def scripted(monkeypatch, spans) -> ScriptedClock:
    clock = ScriptedClock(spans)
    monkeypatch.setattr(autoplan, "clock", clock)
    return clock


def same_sweep(a, b, tol=0.0):
    for c in a.table.columns:
        x, y = a.table[c].to_numpy(), b.table[c].to_numpy()
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=tol, atol=tol, err_msg=c)
        else:
            assert list(x) == list(y), c
    assert sorted(a.history) == sorted(b.history)
    for k in a.history:
        np.testing.assert_allclose(a.history[k], b.history[k], rtol=tol, atol=tol, err_msg=k)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


KW = dict(optimizer="adam", grid=GRID, batch_size=8, epochs=100)


def test_sweep_runs_the_fastest_measured_candidate(monkeypatch):
    """Scripted evaluation times make (map, host) the fastest: it runs (its results are
    bit for bit those of plan="map", loop="host" forced), and every candidate's trial is
    recorded with the times measured."""
    seen = []
    listen = lambda event, secs, **_: seen.append(secs) if event.startswith(  # noqa: E731
        "/jax/core/compile/") else None
    jax.monitoring.register_event_duration_secs_listener(listen)
    loss = make_loss()
    clock = scripted(monkeypatch, [10.0, 7.0, 12.0, 3.0])
    try:
        sw = jaxgd.sweep(loss, P0, (X, Y), **KW)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert clock.readings == 8 and clock.spans == []
    assert (sw.plans, sw.loop) == (["map"], "host")
    t = sw.plan_trials
    assert list(zip(t.plan, t.loop, strict=True)) == ORDER
    assert t.eval_s.tolist() == [10.0, 7.0, 12.0, 3.0]
    assert t.chosen.tolist() == [False, False, False, True] and set(t.group) == {0}
    # the compile seconds are JAX's own compile events: a fresh loss compiles
    assert t.compile_s.iloc[0] > 0 and t.compile_s.sum() <= sum(seen) + 1e-9
    forced = jaxgd.sweep(loss, P0, (X, Y), plan="map", loop="host", **KW)
    assert forced.plan_trials is None  # nothing to choose: nothing measured
    same_sweep(sw, forced)


def test_host_candidates_whose_dispatches_outlast_the_default_are_not_tried(monkeypatch):
    """A host-loop candidate makes a jitted call per update (per configuration, too, with
    plan="map" on one device): when its calls per evaluation at ``DISPATCH_S`` each take
    longer than the default's measured evaluation, it cannot win and is not run (its
    first evaluation alone could take minutes); the scan candidates still are."""
    specs = {}
    real = autoplan.trial

    def spy(engine, prep, *a):
        specs[prep.spec.config_plan, prep.spec.loop] = prep.spec
        return real(engine, prep, *a)

    monkeypatch.setattr(autoplan, "trial", spy)
    scripted(monkeypatch, [10.0, 10.0, 10.0, 10.0])
    jaxgd.sweep(make_loss(), P0, (X, Y), **KW)
    assert sorted(specs) == sorted(ORDER)
    # 50 samples in batches of 8: 6 full and 1 short update, the epoch's start, the block's
    # start and the evaluation; with plan="map" on one device, per configuration
    assert autoplan.host_calls(specs["vmap", "host"], 4, 1) == 10
    assert autoplan.host_calls(specs["map", "host"], 4, 1) == 40
    assert autoplan.host_calls(specs["map", "host"], 4, 2) == 10  # several devices: mapped
    assert autoplan.host_calls(specs["vmap", "scan"], 4, 1) == 0

    specs.clear()
    monkeypatch.setattr(autoplan, "DISPATCH_S", 1.0)  # 10+ calls: >= 10 s an evaluation
    clock = scripted(monkeypatch, [10.0, 12.0])
    sw = jaxgd.sweep(make_loss(), P0, (X, Y), **KW)
    assert clock.spans == [] and clock.readings == 4
    t = sw.plan_trials
    assert list(zip(t.plan, t.loop, strict=True)) == [("vmap", "scan"), ("map", "scan")]
    assert sorted(specs) == [("map", "scan"), ("vmap", "scan")]
    assert (sw.plans, sw.loop) == (["vmap"], "scan")


def test_fit_auto_loop_by_measurement(monkeypatch):
    """fit has one configuration (no plan to choose): the loop alone is measured."""
    kw = dict(hparams={"learning_rate": 0.05}, batch_size=8, epochs=100)
    scripted(monkeypatch, [10.0, 1.0])
    res = jaxgd.fit(MSE, P0, (X, Y), **kw)
    assert res.loop == "host"
    t = res.plan_trials
    assert list(zip(t.plan, t.loop, t.eval_s, t.chosen, strict=True)) == [
        ("vmap", "scan", 10.0, False), ("vmap", "host", 1.0, True)]
    forced = jaxgd.fit(MSE, P0, (X, Y), loop="host", **kw)
    for x, y in zip(jax.tree.leaves(res.params), jax.tree.leaves(forced.params), strict=True):
        np.testing.assert_array_equal(x, y)
    for k in forced.history:
        np.testing.assert_array_equal(res.history[k], forced.history[k], err_msg=k)
    scripted(monkeypatch, [1.0, 10.0])
    assert jaxgd.fit(MSE, P0, (X, Y), **kw).loop == "scan"


def test_short_runs_keep_the_rules_without_measuring(monkeypatch):
    """Too few evaluations for the trials to be cheap: nothing is measured (the clock is
    never read). Enough evaluations but a run whose estimated time is small next to the
    trials: only the default candidate is measured, and runs."""
    clock = scripted(monkeypatch, [])
    sw = jaxgd.sweep(MSE, P0, (X, Y), **(KW | {"epochs": 10}))
    assert clock.readings == 0 and sw.plan_trials is None
    assert (sw.plans, sw.loop) == (["vmap"], "scan")
    # 4 candidates, two evaluations each: 80 evaluations at least
    assert not autoplan.worth_measuring(4, 79) and autoplan.worth_measuring(4, 80)
    assert not autoplan.worth_measuring(1, 10 ** 6)  # nothing to choose from
    # measured: the default (a fresh loss: its compile is real, > 0.02 s), one timed call
    # (a candidate's trial may run 100 x 0.1 / 4 = 2 evaluations) of 0.01 s: the others'
    # trials, 3 x (compile + 0.02 s), cost more than 0.1 x the run's 100 x 0.01 s
    clock = scripted(monkeypatch, [0.01])
    sw = jaxgd.sweep(make_loss(), P0, (X, Y), **KW)
    assert clock.readings == 2
    t = sw.plan_trials
    assert list(zip(t.plan, t.loop, t.eval_s, t.chosen, strict=True)) == [
        ("vmap", "scan", 0.01, True)]
    assert t.compile_s[0] > 0.02
    assert (sw.plans, sw.loop) == (["vmap"], "scan")


def test_timed_calls_double_up_to_the_trials_share(monkeypatch):
    """The timed calls run n, 2n, 4n, ... evaluations (n a tenth of the candidate's share
    of the trials, at least 1) until one takes TIMED_MIN_S or the next would pass that
    share (fit: 2 candidates, 400 evaluations: 20 each, n = 2, the first evaluation
    untimed); the seconds per evaluation are the last call's. (Only the default is
    measured here: the others' trials are tested above.)"""
    monkeypatch.setattr(autoplan, "worth_trying", lambda *a: False)
    kw = dict(hparams={"learning_rate": 0.05}, batch_size=8, epochs=400)
    assert 2 ** -5 < autoplan.TIMED_MIN_S <= 2 ** -3
    # 1 + 2 + 4 + 8 = 15 evaluations; 16 more would pass 20
    clock = scripted(monkeypatch, [2 ** -8, 2 ** -7, 2 ** -6])
    res = jaxgd.fit(MSE, P0, (X, Y), **kw)
    assert clock.readings == 6 and clock.spans == []
    assert res.plan_trials.eval_s.tolist() == [2 ** -6 / 8]
    # the second call (4 evaluations) takes TIMED_MIN_S: the last
    clock = scripted(monkeypatch, [2 ** -8, 2 ** -3])
    res = jaxgd.fit(MSE, P0, (X, Y), **kw)
    assert clock.readings == 4 and res.plan_trials.eval_s.tolist() == [2 ** -5]


def test_forced_options_limit_the_candidates(monkeypatch):
    """plan= or loop= given: only the other option is chosen by measurement."""
    scripted(monkeypatch, [5.0, 1.0])
    sw = jaxgd.sweep(MSE, P0, (X, Y), plan="map", **KW)
    t = sw.plan_trials
    assert list(zip(t.plan, t.loop, strict=True)) == [("map", "scan"), ("map", "host")]
    assert (sw.plans, sw.loop) == (["map"], "host")
    scripted(monkeypatch, [5.0, 1.0])
    sw = jaxgd.sweep(MSE, P0, (X, Y), loop="scan", **KW)
    t = sw.plan_trials
    assert list(zip(t.plan, t.loop, strict=True)) == [("vmap", "scan"), ("map", "scan")]
    assert (sw.plans, sw.loop) == (["map"], "scan")


class Stop(Exception):
    pass


def test_resume_does_not_depend_on_the_choice(monkeypatch, tmp_path):
    """A run chose (map, host) and saved a checkpoint, then stopped; resumed, it measures
    anew and chooses (vmap, scan) for the rest: the result equals the uninterrupted
    run's to float rounding; the folder records the resumed run's trials, and neither
    plan as the one that ran (part ran under each: unknown, not a wrong label)."""
    kw = KW | {"epochs": 200, "checkpoint_every": 30}
    real = RunStore.save_checkpoint

    def save_then_stop(self, *a, **k):
        real(self, *a, **k)
        raise Stop

    monkeypatch.setattr(RunStore, "save_checkpoint", save_then_stop)
    scripted(monkeypatch, [10.0, 7.0, 12.0, 3.0])
    with pytest.raises(Stop):
        jaxgd.sweep(MSE, P0, (X, Y), out=tmp_path / "run", **kw)
    monkeypatch.setattr(RunStore, "save_checkpoint", real)
    clock = scripted(monkeypatch, [1.0, 7.0, 12.0, 3.0])
    resumed_from = []
    real_resume = Engine.resume_of

    def spy(self, *a, **k):
        got = real_resume(self, *a, **k)
        resumed_from.append(got)
        return got

    monkeypatch.setattr(Engine, "resume_of", spy)
    resumed = jaxgd.sweep(MSE, P0, (X, Y), out=tmp_path / "run", **kw)
    assert clock.readings == 8
    assert (resumed.plans, resumed.loop) == (None, None)
    assert [r.at for r in resumed_from] == [30]  # it went on from the checkpoint
    whole = jaxgd.sweep(MSE, P0, (X, Y), plan="map", loop="host", **(KW | {"epochs": 200}))
    same_sweep(resumed, whole, tol=1e-5)
    meta = json.loads((tmp_path / "run" / "result.json").read_text())
    assert [r["chosen"] for r in meta["plan_trials"]] == [True, False, False, False]
    back = jaxgd.load(tmp_path / "run")
    assert (back.plans, back.loop) == (None, None)
    assert back.plan_trials.equals(resumed.plan_trials)


def test_read_back_results_keep_the_plans_that_computed_them(monkeypatch, tmp_path):
    """A sweep and a fit measured and ran (map, host) / host into run folders; called again,
    they read their results back (nothing measured: nothing left to run) and report the
    plans the folders record, not the rules' (vmap, scan)."""
    scripted(monkeypatch, [10.0, 7.0, 12.0, 3.0])
    first = jaxgd.sweep(MSE, P0, (X, Y), out=tmp_path / "sw", **KW)
    assert (first.plans, first.loop) == (["map"], "host")
    clock = scripted(monkeypatch, [])
    again = jaxgd.sweep(MSE, P0, (X, Y), out=tmp_path / "sw", **KW)
    assert clock.readings == 0
    assert (again.plans, again.loop) == (["map"], "host")
    assert again.plan_trials.equals(first.plan_trials)
    same_sweep(again, first)
    kw = dict(hparams={"learning_rate": 0.05}, batch_size=8, epochs=100)
    scripted(monkeypatch, [10.0, 1.0])
    fit = jaxgd.fit(MSE, P0, (X, Y), out=tmp_path / "fit", **kw)
    assert fit.loop == "host"
    clock = scripted(monkeypatch, [])
    back = jaxgd.fit(MSE, P0, (X, Y), out=tmp_path / "fit", **kw)
    assert clock.readings == 0 and back.loop == "host"
    assert back.plan_trials.equals(fit.plan_trials)
    assert jaxgd.load(tmp_path / "fit").loop == "host"


def test_dispatch_bound_updates_keep_the_rules(monkeypatch):
    """An update estimated below MIN_UPDATE_FLOPS (6 x 8 samples x 4 parameters here) is
    never measured, however long the run: the scan over vmapped configurations."""
    monkeypatch.setattr(autoplan, "MIN_UPDATE_FLOPS", 6 * 8 * 4 + 1)
    clock = scripted(monkeypatch, [])
    sw = jaxgd.sweep(MSE, P0, (X, Y), **KW)
    fit = jaxgd.fit(MSE, P0, (X, Y), hparams={"learning_rate": 0.05}, batch_size=8,
                    epochs=100)
    assert clock.readings == 0 and sw.plan_trials is None and fit.plan_trials is None
    assert (sw.plans, sw.loop, fit.loop) == (["vmap"], "scan", "scan")
    monkeypatch.setattr(autoplan, "MIN_UPDATE_FLOPS", 6 * 8 * 4)  # at the threshold: measured
    scripted(monkeypatch, [10.0, 1.0])
    assert jaxgd.fit(MSE, P0, (X, Y), hparams={"learning_rate": 0.05}, batch_size=8,
                     epochs=100).plan_trials is not None
