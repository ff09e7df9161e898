"""jaxgd.optuna_search: Optuna's proposals, each round trained as one sweep, told back.

Every told value and reported curve is checked against a hand-written optax loop run on
the parameters Optuna proposed (full-batch SGD with momentum on a least-squares problem:
no data order involved), the study's storage against what it was told, and the rounds
against recompilation.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optuna
import pytest
from test_optional_deps import without
from test_recompile import count_compiles

import jaxgd
from jaxgd.optuna_search import distributions

optuna.logging.set_verbosity(optuna.logging.WARNING)

EPOCHS = 6
SPACE = {"learning_rate": ("loguniform", 1e-3, 0.3), "momentum": ("uniform", 0.0, 0.9)}


def problem(seed=0, n=48, d=4):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, d)).astype(np.float32)
    y = (x @ r.normal(size=d) + 0.3 + 0.1 * r.normal(size=n)).astype(np.float32)
    return (x[:32], y[:32]), (x[32:], y[32:])


def mse(p, batch):
    x, y = batch
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def mse_mae(p, batch):
    x, y = batch
    r = x @ p["w"] + p["b"] - y
    return jnp.mean(r ** 2), {"mae": jnp.mean(jnp.abs(r))}


P0 = {"w": jnp.zeros(4), "b": jnp.zeros(())}
TRAIN, VAL = problem()
KW = dict(optimizer="sgd", epochs=EPOCHS, batch_size=None, val_data=VAL, progress=False)


def reference(lr: float, momentum: float, metric=None) -> np.ndarray:
    """Validation curve of a hand-written optax loop: full-batch SGD with momentum, the
    validation loss (or ``metric(params, batch)``) after every epoch."""
    opt = optax.sgd(lr, momentum=momentum)
    p, s = P0, opt.init(P0)
    curve = []
    for _ in range(EPOCHS):
        g = jax.grad(mse)(p, TRAIN)
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
        curve.append(float((metric or mse)(p, VAL)))
    return np.array(curve)


def test_told_values_and_curves_equal_an_optax_loop():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    res, got = jaxgd.optuna_search(mse, P0, TRAIN, SPACE, n_trials=7, round_size=3,
                                   study=study, **KW)
    assert got is study and len(study.trials) == 7 and len(res) == 7
    assert list(res.table["trial"]) == list(range(7))
    for t in study.trials:
        ref = reference(t.params["learning_rate"], t.params["momentum"])
        assert t.state == optuna.trial.TrialState.COMPLETE
        np.testing.assert_allclose(t.value, ref[-1], rtol=1e-5)
        assert sorted(t.intermediate_values) == list(range(EPOCHS))
        np.testing.assert_allclose([t.intermediate_values[e] for e in range(EPOCHS)], ref,
                                   rtol=1e-5)
        row = res.table.iloc[t.user_attrs["config"]]
        assert row["trial"] == t.number and row["learning_rate"] == t.params["learning_rate"]
        np.testing.assert_allclose(row["trial_value"], ref[-1], rtol=1e-5)
    best = min(study.trials, key=lambda t: t.value)
    assert study.best_trial.number == best.number
    assert res.best("final_val_loss").row["trial"] == best.number


def test_metric_objective_best_value_tpe():
    """A loss's own metric as the objective, its best recorded value, a TPE sampler."""
    res, study = jaxgd.optuna_search(
        mse_mae, P0, TRAIN, SPACE, n_trials=4, round_size=4, objective="val_mae",
        reduce="best", sampler=optuna.samplers.TPESampler(seed=0), **KW)
    mae = lambda p, b: mse_mae(p, b)[1]["mae"]  # noqa: E731
    for t in study.trials:
        ref = reference(t.params["learning_rate"], t.params["momentum"], mae)
        np.testing.assert_allclose(t.value, ref.min(), rtol=1e-5)
        np.testing.assert_allclose([t.intermediate_values[e] for e in range(EPOCHS)], ref,
                                   rtol=1e-5)


def test_storage_holds_every_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=optuna.storages.RDBStorage(url), study_name="s",
                                sampler=optuna.samplers.TPESampler(seed=1))
    res, _ = jaxgd.optuna_search(mse, P0, TRAIN, SPACE, n_trials=5, round_size=2,
                                 study=study, **KW)
    again = optuna.load_study(study_name="s", storage=optuna.storages.RDBStorage(url))
    trials = again.get_trials()
    assert len(trials) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        ref = reference(t.params["learning_rate"], t.params["momentum"])
        np.testing.assert_allclose(t.value, ref[-1], rtol=1e-5)
        np.testing.assert_allclose([t.intermediate_values[e] for e in range(EPOCHS)], ref,
                                   rtol=1e-5)
        assert t.user_attrs["stop_reason"] == "max_epochs"
        assert t.user_attrs["epochs_run"] == EPOCHS
    assert sorted(res.table["trial"]) == [t.number for t in trials]


def test_rounds_of_the_same_shapes_do_not_recompile():
    kw = dict(KW, epochs=4)
    jaxgd.optuna_search(mse, P0, TRAIN, SPACE, n_trials=4, round_size=4, **kw)  # warm-up
    with count_compiles() as events:  # 3 rounds, the last padded from 2 to 4 trials
        res, study = jaxgd.optuna_search(
            mse, P0, TRAIN, SPACE, n_trials=10, round_size=4,
            sampler=optuna.samplers.RandomSampler(seed=5), **kw)
    assert events == []
    assert len(res) == 10 and len(study.trials) == 10
    with count_compiles() as events:  # positive control: another width compiles
        jaxgd.optuna_search(mse, P0, TRAIN, SPACE, n_trials=3, round_size=3, **kw)
    assert events


def test_diverged_trial_pruned_with_the_worst_value():
    """A diverged configuration is PRUNED, its value inf (not the huge number recorded
    at its blow-up), its curve reported up to the evaluation before it stopped."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"learning_rate": 0.05, "momentum": 0.0})
    study.enqueue_trial({"learning_rate": 3.0, "momentum": 0.0})  # diverges
    space = {"learning_rate": ("loguniform", 1e-3, 10.0), "momentum": ("uniform", 0.0, 0.9)}
    res, _ = jaxgd.optuna_search(mse, P0, TRAIN, space, n_trials=2, round_size=2,
                                 study=study, **KW)
    ok, bad = study.trials
    assert ok.state == optuna.trial.TrialState.COMPLETE
    np.testing.assert_allclose(ok.value, reference(0.05, 0.0)[-1], rtol=1e-5)
    assert bad.state == optuna.trial.TrialState.PRUNED and bad.value == math.inf
    assert bad.user_attrs["stop_reason"] == "diverged"
    row = res.table.iloc[bad.user_attrs["config"]]
    assert row["stop_reason"] == "diverged" and row["trial_state"] == "PRUNED"
    assert row["trial_value"] == math.inf
    stop = bad.user_attrs["epochs_run"] - 1
    ref = reference(3.0, 0.0)
    assert not np.all(np.isfinite(ref) & (ref < 1e6))  # the loop diverges too
    assert bad.intermediate_values[stop] == math.inf
    np.testing.assert_allclose([bad.intermediate_values[e] for e in range(stop)],
                               ref[:stop], rtol=1e-4)
    assert study.best_trial.number == ok.number


def test_maximised_study_and_direction_check():
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=2))
    with pytest.raises(ValueError, match="direction='minimize' but the study's direction "
                                         "is 'maximize'"):
        jaxgd.optuna_search(mse, P0, TRAIN, SPACE, n_trials=2, study=study,
                            direction="minimize", **KW)
    _, study = jaxgd.optuna_search(mse, P0, TRAIN, SPACE, n_trials=3, round_size=3,
                                   study=study, reduce="best", **KW)
    for t in study.trials:  # maximising the validation loss: its highest recorded value
        ref = reference(t.params["learning_rate"], t.params["momentum"])
        np.testing.assert_allclose(t.value, ref.max(), rtol=1e-5)


def test_space_spellings():
    d = distributions({"a": ("loguniform", 1e-3, 1), "b": ["uniform", 0, 2],
                       "c": ("randint", 1, 4), "d": ("choice", [16, 32]), "e": [None, 8],
                       "f": optuna.distributions.FloatDistribution(0, 1)})
    D = optuna.distributions
    assert d["a"] == D.FloatDistribution(1e-3, 1, log=True)
    assert d["b"] == D.FloatDistribution(0, 2)
    assert d["c"] == D.IntDistribution(1, 3)  # high excluded, as random= draws it
    assert d["d"] == D.CategoricalDistribution([16, 32])
    assert d["e"] == D.CategoricalDistribution([None, 8])
    assert d["f"] == D.FloatDistribution(0, 1)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_trials=0), ValueError, r"n_trials=0 must be a positive integer"),
    (dict(n_trials=-2), ValueError, r"n_trials=-2 must be a positive integer"),
    (dict(n_trials=4, round_size=0), ValueError, r"round_size=0 must be a positive"),
    (dict(n_trials=4, space={}), ValueError, r"space=\{\} is empty"),
    (dict(n_trials=4, space={"learning_rate": ("loguniform", 0, 1)}), ValueError,
     r"space\['learning_rate'\]=\('loguniform', 0, 1\): loguniform needs low > 0"),
    (dict(n_trials=4, space={"learning_rate": ("normal", 0, 1)}), ValueError,
     r"space\['learning_rate'\]=\('normal', 0, 1\) is invalid"),
    (dict(n_trials=4, objective="val_accuracy"), ValueError,
     r"objective='val_accuracy' is not a history column of this sweep: use one of "
     r"\['loss', 'val_loss'\]"),
    (dict(n_trials=4, objective="val_loss", val_data=None), ValueError,
     r"objective='val_loss' needs validation data"),
    (dict(n_trials=4, reduce="mean"), ValueError, r"reduce='mean' must be one of"),
    (dict(n_trials=4, grid={"l2": [0.0, 0.1]}), TypeError, r"optuna_search sets grid="),
    (dict(n_trials=4, direction="up"), ValueError, r"direction='up' must be"),
    (dict(n_trials=4, study="s"), TypeError, r"study='s' must be an optuna.Study"),
    (dict(n_trials=4, track="tensorboard:tb"), TypeError,
     r"optuna_search does not take track= .*out=DIR, then jaxgd.trackers.export"),
    (dict(n_trials=4, out=3), TypeError, r"out=3 must be a folder path"),
    (dict(n_trials=4, out=Path(__file__).parent), ValueError,
     r"out='.*tests' must be a new or empty folder"),
])
def test_bad_input_before_anything_compiles(kwargs, error, match, compiles):
    args = dict(KW, space=SPACE)
    args.update(kwargs)
    space = args.pop("space")
    study = optuna.create_study()
    given = args.pop("study", study)
    before = len(compiles.messages)
    with pytest.raises(error, match=match):
        jaxgd.optuna_search(mse, P0, TRAIN, space, study=given, **args)
    assert len(compiles.messages) == before
    assert study.trials == []  # nothing asked


def noisy_loss(p, batch, *, key, hparams):
    """Dropout-style noise on the residual (off in evaluations), a metric."""
    x, y = batch
    r = x @ p["w"] + p["b"] - y
    if key is not None:
        r = r * (1 + hparams["noise"] * jax.random.normal(key, r.shape))
    return jnp.mean(r ** 2), {"mae": jnp.mean(jnp.abs(r))}


def test_unknown_metric_of_a_keyed_loss_before_anything_compiles(compiles):
    """The metric names of a loss with a key and its own hyper-parameters are found by
    tracing it (no compile)."""
    space = {"learning_rate": ("loguniform", 1e-3, 0.3), "noise": ("uniform", 0.0, 0.5)}
    before = len(compiles.messages)
    with pytest.raises(ValueError, match=r"objective='val_accuracy' is not a history column "
                       r"of this sweep: use one of \['loss', 'val_loss', 'mae', 'val_mae'\]"):
        jaxgd.optuna_search(noisy_loss, P0, TRAIN, space, n_trials=2,
                            objective="val_accuracy", **KW)
    assert len(compiles.messages) == before


def test_missing_optuna_one_line(tmp_path):
    code = ("import jax.numpy as jnp, jaxgd\n"
            "jaxgd.optuna_search(lambda p, b: jnp.mean(p * b), jnp.zeros(()), jnp.ones(4), "
            "{'learning_rate': [0.1]}, n_trials=1)\n")
    r = without("optuna", ["-c", code], tmp_path, timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1
    assert last == ("ModuleNotFoundError: jaxgd.optuna_search needs the Python package "
                    "'optuna', which is not installed; install it with: pip install optuna")


def test_experiment_without_optuna_passes_with_a_note(tmp_path):
    code = ("from pathlib import Path\nfrom experiments import e18_optuna as m\n"
            f"print(m.run(Path({str(tmp_path)!r}), True))\n")
    r = without("optuna", ["-c", code], Path(__file__).parents[1], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not installed (pip install optuna, or the optuna extra)" in r.stdout
    table = (tmp_path / "e18_optuna" / "optuna_sequential_vs_batched.csv").read_text()
    assert "not installed (pip install optuna" in table


def test_out_saves_the_joined_result_as_a_run_folder(tmp_path):
    """``out=`` writes the joined trials as a run folder: ``jaxgd.load`` gives back the
    table (trial columns included) and the curves, which equal an optax loop's."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    res, _ = jaxgd.optuna_search(mse, P0, TRAIN, SPACE, n_trials=3, round_size=2,
                                 study=study, out=tmp_path / "opt", **KW)
    saved = jaxgd.load(tmp_path / "opt")
    assert list(saved.table["trial"]) == [0, 1, 2]
    assert list(saved.table["trial_state"]) == list(res.table["trial_state"])
    np.testing.assert_array_equal(saved.table["trial_value"], res.table["trial_value"])
    for i, t in enumerate(study.trials):
        np.testing.assert_allclose(saved.history["val_loss"][i],
                                   reference(t.params["learning_rate"], t.params["momentum"]),
                                   rtol=2e-5)


OPTUNA_TOML = """\
[data]
dataset = "diabetes"
standardize = true
standardize_target = true
val_fraction = 0.25
[train]
epochs = 3
batch_size = "full"
optimizer = "momentum"
[sweep.random]
n = 5
learning_rate = ["loguniform", 1e-3, 0.5]
momentum = ["uniform", 0.0, 0.9]
[search]
method = "optuna"
sampler = "random"
seed = 4
round_size = 3
"""


def test_toml_method_optuna_runs_optuna_search(tmp_path):
    """``[search] method = "optuna"`` runs optuna_search over [sweep.random]'s
    distributions, its n trials, with the named sampler: the same trials and results as
    optuna_search called with that sampler."""
    from jaxgd.config import build, read_config

    exp = build(read_config("opt.toml", text=OPTUNA_TOML))
    got = exp.run(progress=False, out=str(tmp_path / "run"))
    kw = {k: v for k, v in exp.sweep_kwargs.items() if k != "random"}
    want, study = jaxgd.optuna_search(
        exp.loss, exp.params, exp.data,
        {"learning_rate": ("loguniform", 1e-3, 0.5), "momentum": ("uniform", 0.0, 0.9)},
        n_trials=5, round_size=3, sampler=optuna.samplers.RandomSampler(seed=4),
        objective="val_loss", progress=False, **kw)
    assert len(got) == 5 and list(got.table["trial"]) == [0, 1, 2, 3, 4]
    for c in ("learning_rate", "momentum", "final_val_loss", "trial_value"):
        np.testing.assert_array_equal(got.table[c], want.table[c])
    assert [t.params["learning_rate"] for t in study.trials] == list(got.table["learning_rate"])
    assert jaxgd.load(tmp_path / "run").table["trial_state"].tolist() == ["COMPLETE"] * 5


@pytest.mark.parametrize("edit, key, match", [
    (lambda t: t.replace("[sweep.random]\nn = 5\n", "[sweep]\nseed = [0, 1]\n[sweep.random]\n"
                         "n = 5\n"), "sweep.seed", "seed has several values"),
    (lambda t: t.replace('sampler = "random"', 'sampler = "tpee"'), "search.sampler",
     "did you mean 'tpe'"),
    (lambda t: t.replace("round_size = 3", "round_size = 0"), "search.round_size",
     "use a positive integer"),
    (lambda t: t.replace("round_size = 3", "n_trial = 3"), "search.n_trial", "unknown"),
    (lambda t: t.replace("n = 5\n", "n = 5\nrandom_seed = 2\n"), "sweep.random.random_seed",
     "give its seed as \\[search\\] seed"),
])
def test_toml_method_optuna_errors_name_the_key(edit, key, match):
    from jaxgd.config import ConfigError, read_config

    with pytest.raises(ConfigError, match=match) as e:
        read_config("opt.toml", text=edit(OPTUNA_TOML))
    assert e.value.key == key and e.value.line is not None
