"""Feature scaling: condition number and gradient-descent convergence, raw vs standardised.

Linear regression on diabetes in its original units (``load_diabetes(scaled=False)``:
age in years, blood pressure in mmHg, serum values in mg/dl, ...; jaxgd's built-in
``"diabetes"`` is scikit-learn's pre-scaled copy) and after standardising each feature.
Full-batch gradient descent on the half-MSE has Hessian ``H = A^T A / n`` with
``A = [X, 1]``; its condition number ``kappa = lambda_max / lambda_min`` sets the rate
(about ``kappa * ln(1/eps)`` steps at the best constant step). For each scaling, one
``jaxgd.sweep`` tries step sizes ``c / lambda_max`` (c in 0.25..1.9) with
``loss_target = 1.01 * optimum`` (closed form), so each configuration stops with reason
"loss_target" the epoch it gets within 1% of the optimum.
"""

from __future__ import annotations

from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.datasets import load_diabetes

import jaxgd
from experiments._common import main, save_figure, save_table
from jaxgd import data, losses, models

NAME = "e13_scaling"
FACTORS = (0.25, 0.5, 1.0, 1.5, 1.9)
TARGET = 1.01


def problems():
    raw = load_diabetes(scaled=False)
    x = np.asarray(raw.data, np.float64)
    y = np.asarray(raw.target, np.float64)
    std = np.asarray(data.standardize(x, data.fit_standardizer(x)))
    return {"raw units": (x, y), "standardised": (std, y)}


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    epochs = 1000 if quick else 5000
    rows, curves = [], {}
    for name, (x, y) in problems().items():
        n, d = x.shape
        a = np.column_stack([x, np.ones(n)])
        ev = np.linalg.eigvalsh(a.T @ a / n)
        theta = np.linalg.lstsq(a, y, rcond=None)[0]
        f_star = 0.5 * np.mean((a @ theta - y) ** 2)
        model = models.linear(d)
        loss = losses.make_loss(model.apply, "half_mse")
        sw = jaxgd.sweep(loss, model.init(jax.random.key(0)),
                         (x.astype(np.float32), y.astype(np.float32)),
                         grid={"learning_rate": [c / ev.max() for c in FACTORS]},
                         batch_size=None, shuffle=False, epochs=epochs,
                         loss_target=TARGET * f_star, diverge_factor=1e6)
        for i, c in enumerate(FACTORS):
            r = sw.table.iloc[i]
            reached = r.stop_reason == "loss_target"
            rows.append({
                "features": name, "cond(A^T A)": ev.max() / ev.min(),
                "lambda_max": ev.max(), "step": f"{c} / lambda_max",
                "learning_rate": r.learning_rate, "stop_reason": r.stop_reason,
                "epochs_to_target": int(r.epochs_run) if reached else np.nan,
                "final_loss_over_optimum": r.final_loss / f_star,
            })
            curves[(name, c)] = sw.history["loss"][i, : int(r.epochs_run)] / f_star
    table = pd.DataFrame(rows)
    save_table(table, out, "scaling")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    for name, ax in zip(("raw units", "standardised"), axes, strict=True):
        for c in FACTORS:
            h = curves[(name, c)]
            ax.plot(np.arange(1, len(h) + 1), h - 1, label=f"lr = {c} / lambda_max")
        ax.axhline(TARGET - 1, color="k", ls=":", label="target (1% above optimum)")
        kappa = table[table.features == name]["cond(A^T A)"].iloc[0]
        ax.set_title(f"{name}: cond(A^T A) = {kappa:.3g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("epoch (full-batch GD step)")
        ax.set_ylabel("loss / optimum - 1")
        ax.legend(fontsize=8)
    save_figure(fig, out, "scaling")

    raw = table[table.features == "raw units"]
    std = table[table.features == "standardised"]
    if std.epochs_to_target.isna().all():
        raise AssertionError("standardised features never reached the loss target")
    return {
        "cond_raw": float(raw["cond(A^T A)"].iloc[0]),
        "cond_standardised": float(std["cond(A^T A)"].iloc[0]),
        "epochs_to_target_standardised": int(std.epochs_to_target.min()),
        "epochs_to_target_raw": (int(raw.epochs_to_target.min())
                                 if raw.epochs_to_target.notna().any()
                                 else f"not reached in {epochs}"),
        "raw_best_loss_over_optimum": float(raw.final_loss_over_optimum.min()),
    }


if __name__ == "__main__":
    main(run, __doc__)
