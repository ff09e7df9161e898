"""k-fold cross-validation of the learning rate on diabetes, folds as a vmapped axis.

``jaxgd.sweep(..., folds=5, grid={"learning_rate": ...})`` trains every (learning rate,
fold) pair of mini-batch SGD (batch 32) on a linear model in one compiled program per
training-set size, recording the held-out loss of each fold; ``SweepResult.cv_table``
averages over folds and ``SweepResult.best()`` picks the setting with the lowest
mean (settings with a diverged fold excluded). The reference is the usual scikit-learn
loop: ``KFold(5)`` over the same permutation of the samples (``jaxgd.data.kfold_indices`` cuts
``np.random.default_rng(fold_seed).permutation(n)`` into consecutive folds, which is what
``KFold(5, shuffle=False)`` does on the permuted order), and one ``jaxgd.fit`` per fold
and learning rate. Both must pick the same learning rate and agree on every fold's
validation loss. The time ratio is reported cold (compilation included) and warm.
The first 440 of the 442 samples are used so that every fold trains on 352 samples: one
shape, so one compiled program for the sweep (and one for the loop) instead of two.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

import jaxgd
from experiments._common import check, main, save_figure, save_table
from jaxgd import data, losses, models

NAME = "e11_kfold"
K = 5
FOLD_SEED = 0
TOL = 1e-4  # relative, per fold's validation loss (float32)


def load_diabetes():
    ds = jaxgd.datasets.load("diabetes")
    x = np.asarray(data.standardize(ds.x, data.fit_standardizer(ds.x)), np.float32)
    y = ((ds.y - ds.y.mean()) / ds.y.std()).astype(np.float32)
    return x, y


def sklearn_folds(n: int):
    """scikit-learn's KFold on the permutation kfold_indices uses, as sorted index arrays."""
    order = np.random.default_rng(FOLD_SEED).permutation(n)
    return [(np.sort(order[tr]), np.sort(order[va]))
            for tr, va in KFold(K, shuffle=False).split(order)]


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    x, y = load_diabetes()
    x, y = x[:440], y[:440]  # 5 equal folds
    n, d = x.shape
    lrs = np.logspace(-3, -0.5, 5 if quick else 11)
    epochs = 8 if quick else 30
    model = models.linear(d)
    params = model.init(jax.random.key(0))
    loss = losses.make_loss(model.apply, "mse")
    common = dict(optimizer="sgd", batch_size=32, epochs=epochs)

    def cv_sweep():
        return jaxgd.sweep(loss, params, (x, y), grid={"learning_rate": lrs}, folds=K,
                           fold_seed=FOLD_SEED, seed=0, **common)

    def cv_loop():
        scores = np.zeros((len(lrs), K))
        diverged = np.zeros((len(lrs), K), bool)
        for f, (tr, va) in enumerate(sklearn_folds(n)):
            for i, lr in enumerate(lrs):
                r = jaxgd.fit(loss, params, (x[tr], y[tr]), val_data=(x[va], y[va]),
                              hparams={"learning_rate": float(lr)}, key=0, **common)
                v = r.history["val_loss"]
                v = v[np.isfinite(v)]  # the last finite value, as SweepResult.table keeps
                scores[i, f] = v[-1] if len(v) else np.nan
                diverged[i, f] = r.stop_reason == "diverged"
        return scores, diverged

    times = {}
    for tag in ("cold", "warm"):
        t0 = time.perf_counter()
        sw = cv_sweep()
        t1 = time.perf_counter()
        scores, loop_diverged = cv_loop()
        t2 = time.perf_counter()
        times[tag] = (t1 - t0, t2 - t1)

    # the folds themselves agree with scikit-learn's KFold
    pairs = zip(data.kfold_indices(n, K, seed=FOLD_SEED), sklearn_folds(n), strict=True)
    folds_equal = all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
                      for a, b in pairs)

    cv = sw.cv_table()
    t = sw.table
    sweep_scores = np.zeros((len(lrs), K))
    for _, row in t.iterrows():
        i = int(np.argmin(np.abs(lrs - row.learning_rate)))
        sweep_scores[i, int(row.fold)] = row.final_val_loss
    sweep_diverged = np.zeros((len(lrs), K), bool)
    for _, row in t.iterrows():
        i = int(np.argmin(np.abs(lrs - row.learning_rate)))
        sweep_diverged[i, int(row.fold)] = row.diverged
    rel = np.abs(sweep_scores - scores) / np.abs(scores)
    rel = np.where(sweep_diverged | loop_diverged, 0.0, rel)  # compare trained ones
    # a learning rate is eligible when no fold diverged
    ok = ~sweep_diverged.any(1)
    cv_mean = np.where(ok, cv.final_val_loss_mean.to_numpy(), np.nan)
    cv_std = np.where(ok, cv.final_val_loss_std.to_numpy(), np.nan)
    loop_ok = ~loop_diverged.any(1)
    loop_mean = np.where(loop_ok, scores.mean(1), np.nan)
    loop_std = np.where(loop_ok, scores.std(1, ddof=1), np.nan)
    best_sweep = float(sw.best().row["learning_rate"])  # fold mean, diverged settings out
    assert best_sweep == float(lrs[np.nanargmin(cv_mean)])
    best_loop = float(lrs[np.nanargmin(loop_mean)])
    table = pd.DataFrame({
        "learning_rate": lrs,
        "cv_mean_sweep": cv_mean, "cv_std_sweep": cv_std,
        "cv_mean_loop": loop_mean, "cv_std_loop": loop_std,
        "max_rel_diff": rel.max(1),
        "diverged_folds_sweep": sweep_diverged.sum(1),
        "diverged_folds_loop": loop_diverged.sum(1),
    })
    save_table(table, out, "cv")
    timing = pd.DataFrame([
        {"run": tag, "sweep_s": s, "kfold_loop_s": lp, "loop_over_sweep": lp / s}
        for tag, (s, lp) in times.items()])
    save_table(timing, out, "timing")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    ax = axes[0]
    ax.errorbar(lrs, table.cv_mean_sweep, yerr=table.cv_std_sweep, fmt="o-", capsize=3,
                label=f"jaxgd.sweep(folds={K}): mean ± std")
    ax.plot(lrs, loop_mean, "kx", ms=8, label="KFold loop of jaxgd.fit")
    for f in range(K):
        ax.plot(lrs, np.where(ok, sweep_scores[:, f], np.nan), "-", color="gray", alpha=0.3,
                lw=1)
    for lr in lrs[~ok]:
        ax.axvline(lr, color="k", ls="--", lw=0.8)
        ax.text(lr, ax.get_ylim()[1], " diverged", rotation=90, va="top", fontsize=8)
    ax.axvline(best_sweep, color="C3", ls=":", label=f"chosen lr = {best_sweep:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"validation MSE after {epochs} epochs")
    ax.set_title(f"{K}-fold CV on diabetes (gray: single folds)")
    ax.legend(fontsize=8)
    ax = axes[1]
    w = 0.35
    pos = np.arange(len(times))
    ax.bar(pos - w / 2, [v[0] for v in times.values()], w, label="sweep (vmapped folds x lr)")
    ax.bar(pos + w / 2, [v[1] for v in times.values()], w, label="KFold loop of fit")
    ax.set_xticks(pos, [f"{k}\nratio {v[1] / v[0]:.1f}x" for k, v in times.items()])
    ax.set_ylabel("seconds")
    ax.set_title(f"{len(lrs) * K} trainings")
    ax.legend(fontsize=8)
    save_figure(fig, out, "kfold")

    if best_sweep != best_loop or not folds_equal or (sweep_diverged != loop_diverged).any():
        raise AssertionError(f"sweep chose {best_sweep}, the KFold loop {best_loop}; "
                             f"folds equal: {folds_equal}")
    err = check("k-fold validation loss vs KFold loop", float(rel.max()), TOL)
    return {
        "chosen_learning_rate": best_sweep,
        "same_choice_as_kfold_loop": best_sweep == best_loop,
        "cv_mse_at_choice": f"{np.nanmin(cv_mean):.4f} ± {cv_std[np.nanargmin(cv_mean)]:.4f}",
        "max_rel_diff_val_loss": err,
        "time_ratio_cold": times["cold"][1] / times["cold"][0],
        "time_ratio_warm": times["warm"][1] / times["warm"][0],
    }


if __name__ == "__main__":
    main(run, __doc__)
