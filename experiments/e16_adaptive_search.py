"""Adaptive search inside the compiled sweep: successive halving, Hyperband and PBT
against the full grid they are drawn from.

1. Digits MLP with dropout (a loss key) over learning rate x weight decay x dropout
   (Adam): the full grid, successive halving and Hyperband, each one ``jaxgd.sweep``.
   Reported: the best validation loss each finds (lowest recorded), the optimizer steps
   each spends (``steps_run`` summed) and the wall time, as ratios to the grid.
2. A regression (scikit-learn's diabetes, a one-hidden-layer MLP, SGD) over learning
   rate x L2: the same comparison.
3. PBT on a problem where a schedule matters (mini-batch SGD on an ill-conditioned
   noisy linear regression: slow directions want a large rate, the mini-batch noise
   floor a small one): PBT's best member against the best fixed learning rate of the
   same initial population, final validation loss, for 3 seeds (data, data order, PBT
   choices). The validation loss includes the label noise (0.09), so ratios are near 1.

Optuna (TPE + median pruner, one optax loop per trial) is compared when installed (an
optional extra); otherwise its row says so.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import jaxgd
from experiments._common import save_figure, save_table
from jaxgd import data, search
from jaxgd.plots import plot_sweep

NAME = "e16_adaptive_search"
QUALITY = 0.02  # best validation loss within 2% of the grid's
BUDGET = 0.35  # at most 35% of the grid's optimizer steps


SEARCHES = [  # the searches compared with each grid (default compact="auto")
    ("successive halving (eta=3)", search.Halving(eta=3)),
    ("successive halving (eta=2, min_epochs=3)", search.Halving(eta=2, min_epochs=3)),
    ("Hyperband (eta=3)", search.hyperband(eta=3)),
]


def _digits():
    ds = jaxgd.datasets.load("digits")
    x = (ds.x / 16.0).astype(np.float32)
    y = ds.y.astype(np.int32)
    tr, va = data.train_val_split(len(y), 0.25, 0)
    return (x[tr], y[tr]), (x[va], y[va])


def _mlp_init(key, d_in, hidden, d_out):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (d_in, hidden)) * np.sqrt(2.0 / d_in),
            "b1": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden, d_out)) * np.sqrt(1.0 / hidden),
            "b2": jnp.zeros(d_out)}


def digits_loss(p, batch, *, key, hparams):
    """Softmax cross-entropy of an MLP with inverted dropout (no dropout when key=None,
    the evaluation passes), and the accuracy."""
    x, y = batch
    h = jax.nn.relu(x @ p["w1"] + p["b1"])
    if key is not None:
        keep = 1.0 - hparams["dropout"]
        h = jnp.where(jax.random.bernoulli(key, keep, h.shape), h / keep, 0.0)
    logits = h @ p["w2"] + p["b2"]
    ce = jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, y[:, None], -1)[:, 0])
    return ce, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


def regression_loss(p, batch):
    x, y = batch
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean(((h @ p["w2"] + p["b2"])[:, 0] - y) ** 2)


def _cold():
    """Forget compiled programs: every timed run below pays its own compiles."""
    jax.clear_caches()
    jaxgd.program.compiled_program.cache_clear()


def _compare(name, run_grid, searches, quick):
    """Grid vs each search: best validation loss, optimizer steps, seconds (each run
    cold: its compiles included)."""
    rows, results = [], {}
    for label, s in [("grid", None), *searches]:
        _cold()
        t0 = time.perf_counter()
        res = results[label] = run_grid(s)
        rows.append({"method": f"grid ({len(res)} configurations)" if s is None else label,
                     "best_val_loss": float(np.nanmin(res.table["best_val_loss"])),
                     "optimizer steps": int(res.table["steps_run"].sum()),
                     "seconds": time.perf_counter() - t0})
    g = rows[0]  # ratios to the grid (its own row: 1)
    rows = [{"problem": name, "method": r["method"], "best_val_loss": r["best_val_loss"],
             "vs grid best": r["best_val_loss"] / g["best_val_loss"],
             "optimizer steps": r["optimizer steps"],
             "steps / grid": r["optimizer steps"] / g["optimizer steps"],
             "seconds": r["seconds"], "time / grid": r["seconds"] / g["seconds"]}
            for r in rows]
    return rows, results


def part_digits(quick: bool):
    (xtr, ytr), val = _digits()
    epochs = 9 if quick else 27
    p0 = _mlp_init(jax.random.key(0), 64, 64, 10)
    axes = {"learning_rate": [3e-4, 1e-3, 3e-3, 1e-2], "weight_decay": [0.0, 1e-4, 1e-3],
            "dropout": [0.0, 0.2, 0.4]}

    def run_grid(s):
        return jaxgd.sweep(digits_loss, p0, (xtr, ytr), optimizer="adam", grid=axes,
                           epochs=epochs, batch_size=64, val_data=val, seed=0, search=s)

    return _compare("digits MLP: lr x weight decay x dropout", run_grid,
                    SEARCHES, quick)


def part_regression(quick: bool):
    ds = jaxgd.datasets.load("diabetes")
    x = ((ds.x - ds.x.mean(0)) / ds.x.std(0)).astype(np.float32)
    y = ((ds.y - ds.y.mean()) / ds.y.std()).astype(np.float32)
    tr, va = data.train_val_split(len(y), 0.25, 0)
    epochs = 27 if quick else 81
    p0 = _mlp_init(jax.random.key(1), 10, 32, 1)
    axes = {"learning_rate": list(np.geomspace(3e-3, 0.3, 8)), "l2": [0.0, 1e-3, 1e-2]}

    def run_grid(s):
        return jaxgd.sweep(regression_loss, p0, (x[tr], y[tr]), optimizer="sgd", grid=axes,
                           epochs=epochs, batch_size=16, val_data=(x[va], y[va]), seed=0,
                           search=s)

    return _compare("diabetes MLP: lr x L2 (SGD)", run_grid,
                    SEARCHES, quick)


def _noisy_line(seed: int):
    """Least squares, 8 features with variances from 1 to 1/30 (slow directions want a
    large rate), label noise 0.3 (mini-batch noise wants a small one)."""
    r = np.random.default_rng(100 + seed)
    w = r.normal(size=8)
    x = (r.normal(size=(2000, 8)) * np.geomspace(1, 30, 8) ** -0.5).astype(np.float32)
    y = (x @ w + 0.3 * r.normal(size=2000)).astype(np.float32)
    return (x[:1500], y[:1500]), (x[1500:], y[1500:])


def linear_loss(p, batch):
    return jnp.mean((batch[0] @ p["w"] + p["b"] - batch[1]) ** 2)


def part_pbt(quick: bool):
    """PBT's best member vs the best constant learning rate of the same population."""
    epochs = 6 if quick else 10
    lrs = list(np.geomspace(3e-3, 1.0, 8))
    rows, last = [], None
    for seed in (0, 1, 2):
        train, val = _noisy_line(seed)
        kw = dict(optimizer="sgd", grid={"learning_rate": lrs}, epochs=epochs, batch_size=4,
                  val_data=val, seed=seed)
        p0 = {"w": jnp.zeros(8), "b": jnp.zeros(())}
        fixed = jaxgd.sweep(linear_loss, p0, train, **kw)
        pbt = jaxgd.sweep(linear_loss, p0, train, **kw,
                          search=search.PBT(interval=1, quantile=0.25, seed=seed))
        f = float(np.nanmin(fixed.table["final_val_loss"]))
        p = float(np.nanmin(pbt.table["final_val_loss"]))
        rows.append({"seed": seed, "best fixed lr: final val loss": f,
                     "PBT best member: final val loss": p, "PBT / fixed": p / f})
        last = pbt
    return pd.DataFrame(rows), last


def _optuna_row(quick: bool) -> dict:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return {"problem": "digits MLP: lr x weight decay x dropout",
                "method": "Optuna TPE + median pruner: not installed (pip install optuna)"}
    return _optuna_digits(quick)


def _optuna_digits(quick: bool) -> dict:
    """Optuna TPE + median pruner, one jitted optax loop per trial, the same epochs budget
    as the grid spends on 12 trials."""
    import optax
    import optuna

    (xtr, ytr), (xva, yva) = _digits()
    epochs = 9 if quick else 27
    p0 = _mlp_init(jax.random.key(0), 64, 64, 10)

    def objective(trial):
        lr = trial.suggest_float("learning_rate", 3e-4, 1e-2, log=True)
        wd = trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True)
        rate = trial.suggest_float("dropout", 0.0, 0.4)
        opt = optax.adamw(lr, weight_decay=wd)
        hp = {"dropout": jnp.float32(rate)}

        @jax.jit
        def step(p, s, b, k):
            g = jax.grad(lambda q: digits_loss(q, b, key=k, hparams=hp)[0])(p)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        p, s = p0, opt.init(p0)
        k = jax.random.key(trial.number)
        best = np.inf
        for e in range(epochs):
            for i in range(0, len(ytr), 64):
                k, sub = jax.random.split(k)
                p, s = step(p, s, (xtr[i:i + 64], ytr[i:i + 64]), sub)
            v = float(digits_loss(p, (xva, yva), key=None, hparams=hp)[0])
            best = min(best, v)
            trial.report(v, e)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_warmup_steps=1))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=12)
    return {"problem": "digits MLP: lr x weight decay x dropout",
            "method": "Optuna TPE + median pruner (12 trials, optax loop each)",
            "best_val_loss": float(study.best_value), "seconds": time.perf_counter() - t0}


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    rows_d, res_d = part_digits(quick)
    rows_r, res_r = part_regression(quick)
    opt = _optuna_row(quick)
    if "best_val_loss" in opt:  # against the digits grid of this run
        opt["vs grid best"] = opt["best_val_loss"] / rows_d[0]["best_val_loss"]
        opt["time / grid"] = opt["seconds"] / rows_d[0]["seconds"]
    table = pd.DataFrame(rows_d + rows_r + [opt])
    save_table(table, out, "halving_vs_grid")
    pbt_table, pbt = part_pbt(quick)
    save_table(pbt_table, out, "pbt_vs_fixed")
    plot_sweep(res_d[SEARCHES[0][0]], out / "digits_halving")
    plot_sweep(pbt, out / "pbt")

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for (_, r) in table.dropna(subset=["steps / grid"]).iterrows():
        ax.scatter(r["steps / grid"], r["vs grid best"], s=40)
        ax.annotate(f"{r['method'].split(' (')[0]}\n{r['problem'].split(':')[0]}",
                    (r["steps / grid"], r["vs grid best"]), fontsize=7)
    ax.axhline(1 + QUALITY, ls="--", color="0.5")
    ax.axvline(BUDGET, ls="--", color="0.5")
    ax.set_xscale("log")
    ax.set_xlabel("optimizer steps / the full grid's")
    ax.set_ylabel("best validation loss / the grid's")
    ax.set_title("adaptive search vs the grid it is drawn from")
    save_figure(fig, out, "cost_vs_quality")

    searches = table[table["method"].str.startswith(("successive", "Hyperband"))]
    ok = searches[(searches["vs grid best"] <= 1 + QUALITY)
                  & (searches["steps / grid"] <= BUDGET)]
    return {
        "search best val loss / grid best": [round(float(v), 3)
                                             for v in searches["vs grid best"]],
        "search steps / grid steps": [round(float(v), 3) for v in searches["steps / grid"]],
        "search time / grid time": [round(float(v), 2) for v in searches["time / grid"]],
        "searches within 2% of the grid's best at <= 35% of its steps": [
            f"{r['problem'].split(':')[0]}: {r['method']}" for _, r in ok.iterrows()],
        "PBT / best fixed lr, final val loss (3 seeds)": [
            round(float(v), 3) for v in pbt_table["PBT / fixed"]],
        "PBT beats the best fixed lr on average": bool(pbt_table["PBT / fixed"].mean() < 1),
    }


if __name__ == "__main__":
    from experiments._common import main

    main(run, __doc__)
