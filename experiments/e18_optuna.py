"""Optuna's TPE proposals, sequential (one optax loop per trial) against batched
(``jaxgd.optuna_search``: each round of trials one compiled sweep).

Two problems, each searched by the same sampler (``optuna.samplers.TPESampler(seed=0)``)
for the same number of trials and epochs, both in this one process:

1. Digits MLP with dropout (AdamW, mini-batches of 64): learning rate x weight decay x
   dropout.
2. Diabetes regression (one-hidden-layer tanh MLP, SGD, mini-batches of 16): learning
   rate x L2.

A trial's value is its lowest validation loss over the epochs. Optuna's sequential loop
(``study.optimize``) trains each trial with a jitted optax step whose hyper-parameters
are traced (``optax.inject_hyperparams``: compiled once per batch shape for all trials),
once without a pruner (the same epochs as the batched search) and once with Optuna's
median pruner (stops poor trials early). The batched search asks rounds of ``ROUND`` trials, so TPE
sees the results of earlier rounds only. Reported: the best value found and the wall time
(compiles included) of each, and their ratios to the sequential loop without a pruner;
for the batched search also the time of the same search run again in the process
("seconds warm": the compiled program reused, as every further search of the same shapes
is; not measured for the sequential loops).
Optuna is an optional package (``pip install optuna``): without it the experiment
writes one row saying so and passes.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import pandas as pd

import jaxgd
from experiments._common import save_figure, save_table
from experiments.e16_adaptive_search import (
    _cold,
    _digits,
    _mlp_init,
    digits_loss,
    regression_loss,
)
from jaxgd import data
from jaxgd.orbax_io import require

NAME = "e18_optuna"
ROUND = 16  # trials per round of the batched search (one sweep each)
QUICK_ROUND = 8
NOT_INSTALLED = "not installed (pip install optuna, or the optuna extra)"


def _diabetes():
    ds = jaxgd.datasets.load("diabetes")
    x = ((ds.x - ds.x.mean(0)) / ds.x.std(0)).astype(np.float32)
    y = ((ds.y - ds.y.mean()) / ds.y.std()).astype(np.float32)
    tr, va = data.train_val_split(len(y), 0.25, 0)
    return (x[tr], y[tr]), (x[va], y[va])


def problems(quick: bool) -> list[dict]:
    """The two searches: data, initial parameters, space, optimizer, sizes."""
    return [
        dict(name="digits MLP: lr x weight decay x dropout", data=_digits(),
             p0=_mlp_init(jax.random.key(0), 64, 64, 10), loss=digits_loss,
             space={"learning_rate": ("loguniform", 3e-4, 1e-2),
                    "weight_decay": ("loguniform", 1e-5, 1e-3),
                    "dropout": ("uniform", 0.0, 0.4)},
             optimizer="adamw", batch_size=64, epochs=6 if quick else 20,
             n_trials=16 if quick else 64),
        dict(name="diabetes MLP: lr x L2 (SGD)", data=_diabetes(),
             p0=_mlp_init(jax.random.key(1), 10, 32, 1), loss=regression_loss,
             space={"learning_rate": ("loguniform", 3e-3, 0.3),
                    "l2": ("loguniform", 1e-4, 1e-1)},
             optimizer="sgd", batch_size=16, epochs=15 if quick else 40,
             n_trials=16 if quick else 64),
    ]


def _scalar_loss(prob: dict):
    """loss(params, batch, key, hp) -> scalar, with jaxgd's L2 (0.5 * l2 * sum of squares
    of every leaf: none is named b or bias) for the regression."""
    if prob["loss"] is digits_loss:
        return lambda p, b, k, hp: digits_loss(p, b, key=k, hparams=hp)[0]

    def loss(p, b, k, hp):
        pen = 0.5 * hp["l2"] * sum(jnp.sum(a * a) for a in jax.tree.leaves(p))
        return regression_loss(p, b) + pen
    return loss


def _optimizer(prob: dict):
    if prob["optimizer"] == "adamw":
        return optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=0.0)
    return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)


def sequential_objective(prob: dict, optuna, pruned: bool):
    """Optuna's own loop: one trial = one optax loop, the step jitted once (hyper-parameters
    in the optimizer state and the ``hp`` argument, traced)."""
    (xtr, ytr), (xva, yva) = prob["data"]
    loss, opt, bs = _scalar_loss(prob), _optimizer(prob), prob["batch_size"]

    @jax.jit
    def step(p, s, b, k, hp):
        g = jax.grad(loss)(p, b, k, hp)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    @jax.jit
    def val(p, hp):
        return loss(p, (xva, yva), None, {**hp, "l2": 0.0})

    def objective(trial):
        hp = {k: jnp.float32(suggest(trial, k, d)) for k, d in prob["space"].items()}
        s = opt.init(prob["p0"])
        for k in set(hp) & set(s.hyperparams):
            s.hyperparams[k] = hp[k]
        p, key = prob["p0"], jax.random.key(trial.number)
        rng, best = np.random.default_rng(trial.number), np.inf
        for e in range(prob["epochs"]):
            order = rng.permutation(len(ytr))
            for i in range(0, len(ytr), bs):
                key, sub = jax.random.split(key)
                idx = order[i:i + bs]
                p, s = step(p, s, (xtr[idx], ytr[idx]), sub, hp)
            v = float(val(p, hp))
            best = min(best, v)
            trial.report(v, e)
            if pruned and trial.should_prune():
                raise optuna.TrialPruned()
        return best
    return objective


def suggest(trial, name: str, spec: tuple) -> float:
    kind, lo, hi = spec
    return trial.suggest_float(name, lo, hi, log=kind == "loguniform")


def run_sequential(prob: dict, pruned: bool) -> tuple[float, float, object, float]:
    optuna = require("optuna", NAME)
    pruner = optuna.pruners.MedianPruner(n_warmup_steps=1) if pruned else \
        optuna.pruners.NopPruner()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), pruner=pruner)
    _cold()
    t0 = time.perf_counter()
    study.optimize(sequential_objective(prob, optuna, pruned), n_trials=prob["n_trials"])
    return float(study.best_value), time.perf_counter() - t0, study, np.nan


def run_batched(prob: dict, round_size: int) -> tuple[float, float, object, float]:
    """The batched search cold (its compiles included), then again warm (the same
    proposals: a new study, the same sampler seed; the compiled program reused)."""
    optuna = require("optuna", NAME)
    (xtr, ytr), val = prob["data"]

    def search():
        t0 = time.perf_counter()
        _, study = jaxgd.optuna_search(
            prob["loss"], prob["p0"], (xtr, ytr), prob["space"], n_trials=prob["n_trials"],
            round_size=round_size, objective="val_loss", reduce="best",
            sampler=optuna.samplers.TPESampler(seed=0), optimizer=prob["optimizer"],
            epochs=prob["epochs"], batch_size=prob["batch_size"], val_data=val, seed=0,
            progress=False)
        return study, time.perf_counter() - t0

    _cold()
    study, seconds = search()
    again, warm = search()
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    return float(study.best_value), seconds, study, warm


def _best_so_far(study) -> np.ndarray:
    v = [t.value if t.state.name == "COMPLETE" else np.inf for t in study.trials]
    return np.minimum.accumulate(np.array(v, float))


def compare(prob: dict, round_size: int) -> tuple[list[dict], dict]:
    """The three searches of one problem: rows of the table, and their studies."""
    runs = {"Optuna sequential (TPE, one optax loop per trial)":
            lambda: run_sequential(prob, False),
            "Optuna sequential (TPE + median pruner)": lambda: run_sequential(prob, True),
            f"jaxgd.optuna_search (TPE, rounds of {round_size})":
            lambda: run_batched(prob, round_size)}
    rows, studies = [], {}
    for method, go in runs.items():
        best, seconds, studies[method], warm = go()
        rows.append({"problem": prob["name"], "method": method, "trials": prob["n_trials"],
                     "epochs": prob["epochs"], "best val loss": best, "seconds": seconds,
                     "seconds warm": warm})
    base = rows[0]
    for r in rows:
        r["best / sequential"] = r["best val loss"] / base["best val loss"]
        r["time / sequential"] = r["seconds"] / base["seconds"]
    return rows, studies


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    try:
        import optuna
    except ImportError:  # an optional package: the demo goes on without this comparison
        save_table(pd.DataFrame([{"method": NOT_INSTALLED}]), out,
                   "optuna_sequential_vs_batched")
        return {"optuna": NOT_INSTALLED}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    round_size = QUICK_ROUND if quick else ROUND
    rows, curves = [], {}
    for prob in problems(quick):
        r, studies = compare(prob, round_size)
        rows += r
        curves[prob["name"]] = {m: _best_so_far(s) for m, s in studies.items()}
    table = pd.DataFrame(rows)
    save_table(table, out, "optuna_sequential_vs_batched")

    fig, axes = plt.subplots(1, len(curves), figsize=(11, 4), layout="constrained")
    for ax, (name, by_method) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        for method, c in by_method.items():
            ax.plot(np.arange(1, len(c) + 1), c, label=method.split(" (")[0]
                    + (" + pruner" if "pruner" in method else ""))
        ax.set_yscale("log")
        ax.set_xlabel("trial")
        ax.set_ylabel("best validation loss so far")
        ax.set_title(name.split(":")[0])
        ax.legend(fontsize=7)
    save_figure(fig, out, "best_so_far")

    batched = table[table["method"].str.startswith("jaxgd")]
    return {
        "problems": list(curves),
        "batched best / sequential best": [round(float(v), 3)
                                          for v in batched["best / sequential"]],
        "batched time / sequential time": [round(float(v), 3)
                                          for v in batched["time / sequential"]],
        "pruned sequential time / sequential time": [
            round(float(v), 3) for v in
            table[table["method"].str.contains("pruner")]["time / sequential"]],
    }


if __name__ == "__main__":
    from experiments._common import main

    main(run, __doc__)
