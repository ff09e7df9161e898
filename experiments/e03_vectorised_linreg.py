"""Vectorised linear regression with a bias column: J history and theta vs the closed form.

X = [[1, 2], [1, 3], [1, 4], [1, 5]] (first column = bias), y = [3, 4, 5, 6], theta0 = 0,
alpha = 0.01, 1 000 full-batch iterations of theta <- theta - alpha/m X^T (X theta - y), i.e.
gradient descent on J(theta) = sum((X theta - y)^2) / 2m (``jaxgd.losses.half_mse``), with
theta over both columns (no separate bias parameter). The J history and theta are checked
against a NumPy loop of the same iterations; a longer run stopped by ``grad_tol`` is checked
against the normal equations theta* = (X^T X)^-1 X^T y = [1, 1].
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import jaxgd
from experiments._common import check, main, save_figure, save_table

NAME = "e03_vectorised_linreg"
ALPHA, ITERS = 0.01, 1000


def loss(params, batch):
    x, y = batch
    return jaxgd.losses.half_mse(x @ params["theta"], y)


def numpy_loop(x, y, alpha, iters):
    x, y = x.astype(np.float64), y.astype(np.float64)
    m = len(y)
    theta = np.zeros(x.shape[1])
    js, thetas = [], []
    for _ in range(iters):
        theta = theta - alpha / m * x.T @ (x @ theta - y)
        js.append(np.sum((x @ theta - y) ** 2) / (2 * m))
        thetas.append(theta.copy())
    return theta, np.array(js), np.array(thetas)


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    x, y = jaxgd.datasets.bias_column_example()
    theta_star = np.linalg.solve(x.T.astype(np.float64) @ x, x.T.astype(np.float64) @ y)
    p0 = {"theta": jnp.zeros(2)}
    r = jaxgd.fit(loss, p0, (x, y), hparams={"learning_rate": ALPHA}, batch_size=None,
                  epochs=ITERS, shuffle=False)
    theta = np.asarray(r.params["theta"], np.float64)
    theta_np, j_np, thetas_np = numpy_loop(x, y, ALPHA, ITERS)
    err_theta = check("theta vs NumPy loop", float(np.max(np.abs(theta - theta_np))), 1e-5)
    err_j = check("J history vs NumPy loop", float(np.max(np.abs(r.history["loss"] - j_np))), 1e-5)
    gap = float(np.max(np.abs(theta - theta_star)))

    # run on until the gradient vanishes: GD reaches the normal-equation solution
    long_epochs = 20_000 if quick else 100_000
    r_long = jaxgd.fit(loss, p0, (x, y), hparams={"learning_rate": ALPHA}, batch_size=None,
                       epochs=long_epochs, shuffle=False, grad_tol=1e-5)
    theta_long = np.asarray(r_long.params["theta"], np.float64)
    err_closed = check("converged theta vs normal equations",
                       float(np.max(np.abs(theta_long - theta_star))), 1e-3)

    table = pd.DataFrame([
        {"solution": "normal equations (float64)", "theta_0": theta_star[0],
         "theta_1": theta_star[1], "J": 0.0, "iterations": None, "stop_reason": None},
        {"solution": f"NumPy loop, {ITERS} iterations", "theta_0": theta_np[0],
         "theta_1": theta_np[1], "J": j_np[-1], "iterations": ITERS, "stop_reason": None},
        {"solution": f"jaxgd.fit, {ITERS} iterations", "theta_0": theta[0], "theta_1": theta[1],
         "J": r.final_loss, "iterations": r.steps_run, "stop_reason": r.stop_reason},
        {"solution": "jaxgd.fit, grad_tol=1e-5", "theta_0": theta_long[0],
         "theta_1": theta_long[1], "J": r_long.final_loss, "iterations": r_long.steps_run,
         "stop_reason": r_long.stop_reason},
    ])
    save_table(table, out, "theta")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    it = np.arange(1, ITERS + 1)
    axes[0].plot(it, r.history["loss"], label="jaxgd.fit")
    axes[0].plot(it[::40], j_np[::40], "k.", ms=4, label="NumPy loop")
    axes[0].set(xlabel="iteration", ylabel="J(theta) = sum(h - y)^2 / 2m", yscale="log",
                title=f"J history (alpha = {ALPHA})")
    axes[0].legend()
    # theta path on the contours of J
    t0, t1 = np.meshgrid(np.linspace(-0.5, 1.6, 200), np.linspace(-0.1, 1.6, 200))
    xx = x.astype(np.float64)
    res = t0[..., None] * xx[:, 0] + t1[..., None] * xx[:, 1] - y
    jj = np.sum(res**2, -1) / (2 * len(y))
    axes[1].contour(t0, t1, jj, levels=np.logspace(-3, 1.5, 16), cmap="viridis", linewidths=0.8)
    path = np.vstack([[0.0, 0.0], thetas_np])
    axes[1].plot(path[:, 0], path[:, 1], "-", color="tab:blue", label="GD path (1 000 its)")
    axes[1].plot(*theta, "o", color="tab:blue", label=f"jaxgd after {ITERS}: "
                 f"({theta[0]:.3f}, {theta[1]:.3f})")
    axes[1].plot(*theta_star, "r*", ms=12, label="normal equations (1, 1)")
    axes[1].plot(*theta_long, "x", color="k", label=f"jaxgd, grad_tol ({r_long.steps_run} its)")
    axes[1].set(xlabel="theta_0 (bias)", ylabel="theta_1", title="theta on contours of J")
    axes[1].legend(fontsize=8, loc="lower left")
    for ax in axes:
        ax.grid(alpha=0.3)
    save_figure(fig, out, "j_history")

    return {
        "theta_1000": [round(float(v), 5) for v in theta],
        "J_1000": float(r.final_loss),
        "max_err_vs_numpy": max(err_theta, err_j),
        "gap_to_closed_form_after_1000": gap,
        "converged_err_vs_closed_form": err_closed,
        "iterations_to_grad_tol": r_long.steps_run,
    }


if __name__ == "__main__":
    main(run, __doc__)
