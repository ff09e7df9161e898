"""Regularisation: L1, L2 and elastic-net paths on diabetes against scikit-learn.

One ``jaxgd.sweep`` trains a 2-D grid of penalty strengths ``l1 x l2`` (both traced, so
the whole grid is one compiled program) by full-batch Nesterov gradient descent with a
cosine learning-rate decay on the half-MSE ``1/(2n) ||y - Xw - b||^2`` of standardised diabetes.
jaxgd adds ``l1 * sum|w| + l2/2 * sum w^2`` (bias unpenalised), so the objectives equal
scikit-learn's exactly:

* ``l2 = 0``:  ``Lasso(alpha=l1)``
* ``l1 = 0``:  ``Ridge(alpha=l2 * n)`` (Ridge minimises ``||y - Xw||^2 + alpha ||w||^2``)
* both:        ``ElasticNet(alpha=l1 + l2, l1_ratio=l1 / (l1 + l2))``

Plain (sub)gradient descent does not land on exact zeros for L1; coefficients with
``|w| < 1e-3`` are counted as "near zero" and compared with the exact zeros of
coordinate descent. ``SGDRegressor(penalty="l1")`` (truncated-gradient SGD) is shown as a
further reference.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, Ridge, SGDRegressor

import jaxgd
from experiments._common import check, main, save_figure, save_table
from jaxgd import data, losses, models

NAME = "e08_regularisation"
NEAR_ZERO = 1e-3
COEF_TOL = 1e-2  # float32 sub-gradient descent vs coordinate descent, standardised units
OBJ_TOL = 1e-3  # relative objective excess of jaxgd over the exact optimum


def load_diabetes():
    ds = jaxgd.datasets.load("diabetes")
    x = np.asarray(data.standardize(ds.x, data.fit_standardizer(ds.x)), np.float32)
    y = ((ds.y - ds.y.mean()) / ds.y.std()).astype(np.float32)
    return x, y, ds.feature_names


def objective(w, b, x, y, l1, l2):
    r = x @ w + b - y
    return 0.5 * np.mean(r**2) + l1 * np.abs(w).sum() + 0.5 * l2 * np.sum(w**2)


def sklearn_solution(x, y, l1, l2):
    n = len(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if l1 == 0 and l2 == 0:
            m = LinearRegression()
        elif l1 == 0:
            m = Ridge(alpha=l2 * n, solver="cholesky")
        elif l2 == 0:
            m = Lasso(alpha=l1, tol=1e-12, max_iter=200_000)
        else:
            m = ElasticNet(alpha=l1 + l2, l1_ratio=l1 / (l1 + l2), tol=1e-12, max_iter=200_000)
        m.fit(x, y)
    return np.asarray(m.coef_, float), float(m.intercept_)


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    x, y, names = load_diabetes()
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    n, d = x.shape
    k = 6 if quick else 12
    epochs = 500 if quick else 2000
    strengths = np.concatenate([[0.0], np.logspace(-3, 0, k - 1)])

    model = models.linear(d)
    loss = losses.make_loss(model.apply, "half_mse")
    # step 1 / L, L = lambda_max(X^T X / n) + max l2 (~5), stable for every configuration
    lr = 1.0 / (np.linalg.eigvalsh(x64.T @ x64 / n).max() + strengths.max())
    sw = jaxgd.sweep(
        loss, model.init(jax.random.key(0)), (x, y), optimizer="nesterov",
        grid={"l1": strengths, "l2": strengths},
        hparams={"learning_rate": lr, "momentum": 0.9, "decay_steps": epochs}, schedule="cosine",
        batch_size=None, shuffle=False, epochs=epochs, diverge_factor=1e3,
    )
    assert not sw.table.diverged.any(), sw.table[sw.table.diverged]
    W = np.asarray(sw.params["w"], np.float64)[..., 0]
    B = np.asarray(sw.params["b"], np.float64)[..., 0]

    rows = []
    for i, c in enumerate(sw.configs):
        l1, l2 = float(c["l1"]), float(c["l2"])
        w_sk, b_sk = sklearn_solution(x64, y64, l1, l2)
        f_j = objective(W[i], B[i], x64, y64, l1, l2)
        f_s = objective(w_sk, b_sk, x64, y64, l1, l2)
        family = ("ols" if l1 == 0 and l2 == 0 else "ridge" if l1 == 0
                  else "lasso" if l2 == 0 else "elastic_net")
        rows.append(dict(
            family=family, l1=l1, l2=l2,
            coef_max_abs_diff=float(np.abs(W[i] - w_sk).max()),
            objective_rel_excess=float((f_j - f_s) / f_s),
            near_zero_jaxgd=int(np.sum(np.abs(W[i]) < NEAR_ZERO)),
            zeros_sklearn=int(np.sum(w_sk == 0)),
            w_sk=w_sk,
        ))
    res = pd.DataFrame(rows)

    # SGDRegressor (truncated-gradient L1) on a few lasso strengths, for reference
    sgd_rows = []
    for a in strengths[1::max(1, (k - 1) // 4)]:
        sgd = SGDRegressor(loss="squared_error", penalty="l1", alpha=float(a), max_iter=2000,
                           tol=None, learning_rate="invscaling", eta0=0.01, random_state=0)
        sgd.fit(x64, y64)
        w_sk, _ = sklearn_solution(x64, y64, float(a), 0.0)
        sgd_rows.append(dict(l1=float(a),
                             sgdregressor_coef_max_abs_diff=float(np.abs(sgd.coef_ - w_sk).max()),
                             sgdregressor_near_zero=int(np.sum(np.abs(sgd.coef_) < NEAR_ZERO)),
                             sklearn_zeros=int(np.sum(w_sk == 0))))
    sgd_table = pd.DataFrame(sgd_rows)

    summary = (res.groupby("family", sort=False)
               .agg(configs=("l1", "size"), coef_max_abs_diff=("coef_max_abs_diff", "max"),
                    objective_max_rel_excess=("objective_rel_excess", "max"))
               .reset_index())
    res["near_zero_mismatch"] = (res.l1 > 0) & (res.near_zero_jaxgd != res.zeros_sklearn)
    mism = res["near_zero_mismatch"].groupby(res["family"]).sum()
    summary["near_zero_mismatch"] = summary["family"].map(mism).astype(int)
    save_table(summary, out, "parity")
    save_table(res.drop(columns="w_sk"), out, "grid")
    save_table(sgd_table, out, "sgdregressor")

    # -- figure: three paths and the sparsity curve
    fig, axes = plt.subplots(1, 4, figsize=(17, 4), layout="constrained")
    colors = plt.cm.tab10(np.arange(d))
    paths = [("lasso", "l1", lambda c: c["l2"] == 0 and c["l1"] > 0, "Lasso (l2 = 0)"),
             ("ridge", "l2", lambda c: c["l1"] == 0 and c["l2"] > 0, "Ridge (l1 = 0)"),
             ("elastic_net", "l1", lambda c: c["l1"] == c["l2"] and c["l1"] > 0,
              "Elastic net (l1 = l2)")]
    for ax, (_, axis, sel, title) in zip(axes[:3], paths, strict=True):
        idx = [i for i, c in enumerate(sw.configs) if sel(c)]
        s = np.asarray([sw.configs[i][axis] for i in idx])
        for j in range(d):
            ax.plot(s, W[idx, j], color=colors[j], label=names[j])
            ax.plot(s, [res.w_sk[i][j] for i in idx], "o", ms=3, color=colors[j], mfc="none")
        ax.set_xscale("log")
        ax.set_xlabel(f"penalty {axis}")
        ax.set_title(title)
        ax.axhline(0, color="k", lw=0.5)
    axes[0].set_ylabel("coefficient (lines: jaxgd, circles: scikit-learn)")
    axes[0].legend(fontsize=7, ncol=2)
    ax = axes[3]
    for fam, axis, label in [("lasso", "l1", "lasso"), ("elastic_net", "l1", "elastic net")]:
        sub = res[(res.family == fam) & ((res.l1 == res.l2) | (fam == "lasso"))]
        ax.plot(sub[axis], sub.near_zero_jaxgd, "-", label=f"{label}: jaxgd |w| < {NEAR_ZERO:g}")
        ax.plot(sub[axis], sub.zeros_sklearn, "o", mfc="none", label=f"{label}: sklearn w == 0")
    ax.set_xscale("log")
    ax.set_xlabel("penalty l1")
    ax.set_ylabel("zero coefficients (of 10)")
    ax.set_title("Sparsity")
    ax.legend(fontsize=7)
    save_figure(fig, out, "paths")

    err = check("regularisation coefficients vs sklearn", float(res.coef_max_abs_diff.max()),
                COEF_TOL)
    obj = check("regularisation objective excess vs sklearn",
                float(res.objective_rel_excess.max()), OBJ_TOL)
    return {
        "configs_in_one_sweep": len(sw),
        "coef_max_abs_diff": err,
        "objective_max_rel_excess": obj,
        "near_zero_mismatches": int(res.near_zero_mismatch.sum()),
        "sgdregressor_coef_max_abs_diff": float(sgd_table.sgdregressor_coef_max_abs_diff.max()),
    }


if __name__ == "__main__":
    main(run, __doc__)
