"""Parity: jaxgd against the closed form, scipy.optimize, scikit-learn and PyTorch (float64).

1. Linear regression (standardised diabetes, half-MSE ``1/(2n)||Xw + b - y||^2``): the
   normal equations (``np.linalg.lstsq``), ``scipy.optimize.minimize`` with L-BFGS-B and
   TNC, and ``jaxgd.fit`` (full-batch Nesterov GD).
2. L2-regularised logistic regression (standardised breast_cancer): mean binary
   cross-entropy + ``l2/2 ||w||^2``, bias unpenalised. scikit-learn's
   ``LogisticRegression(C)`` minimises ``0.5||w||^2 + C * sum(logloss)``, i.e. the same
   objective times ``C n`` with ``l2 = 1 / (C n)``. scipy L-BFGS-B and TNC minimise it too.
3. Trajectories: ``torch.optim.SGD`` and ``torch.optim.Adam`` on the same logistic
   problem, same initial parameters, the same in-order mini-batches of 32 (the last one
   short) against ``jaxgd.fit(..., shuffle=False)``: the objective after every epoch and the
   final parameters.

Every run is float64 (``jax.enable_x64``), so the tolerances are tight. PyTorch is optional
(the [test] extra): without it the trajectory table reads "not installed" and parts 1-2
are still asserted.

The logistic loss here is written out as ``mean(softplus(z) - y z)``: at this writing
``jaxgd.losses.binary_cross_entropy`` (``max(z, 0) - z y + log1p(exp(-|z|))``) has the
wrong gradient at exactly ``z = 0`` (``-y`` instead of ``0.5 - y``: JAX differentiates the
kinks of ``max`` and ``abs`` as 0), which is where a zero-initialised logistic regression
starts, so the first step differs from PyTorch's. The headline ``bce_grad_error_at_0``
measures it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.optimize
from sklearn.linear_model import LogisticRegression

import jaxgd
from experiments._common import NOT_INSTALLED, check, main, optional_torch, save_figure, save_table
from jaxgd import data, losses, models

NAME = "e12_parity"
C = 1.0
TOL_OPT = 1e-5  # parameters at the optimum, max abs (sklearn itself stops at ~1e-6)
TOL_TRAJ = 1e-10  # torch vs jaxgd, same batches, float64
torch = optional_torch()  # None without PyTorch


def standardised(name: str):
    ds = jaxgd.datasets.load(name)
    x = np.asarray(data.standardize(ds.x, data.fit_standardizer(ds.x)), np.float64)
    return x, ds.y.astype(np.float64)


def bce(params, batch):
    """Mean binary cross-entropy on logits, smooth at z = 0."""
    x, y = batch
    z = models.logistic(x.shape[1]).apply(params, x)[:, 0]
    return jnp.mean(jax.nn.softplus(z) - y * z)


def flat(p) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(p["w"])), np.ravel(np.asarray(p["b"]))])


def linear_objective(theta, x, y):
    w, b = theta[:-1], theta[-1]
    r = x @ w + b - y
    return 0.5 * np.mean(r**2), np.append(x.T @ r / len(y), np.mean(r))


def logistic_objective(theta, x, y, l2):
    w, b = theta[:-1], theta[-1]
    z = x @ w + b
    f = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * w @ w
    s = 1 / (1 + np.exp(-z)) - y
    return f, np.append(x.T @ s / len(y) + l2 * w, np.mean(s))


def scipy_solutions(fun, d, args):
    out = {}
    for method in ("L-BFGS-B", "TNC"):
        opts = {"gtol": 1e-12, "ftol": 1e-15, "maxiter": 20_000} if method == "L-BFGS-B" \
            else {"gtol": 1e-12, "ftol": 1e-15, "xtol": 1e-14, "maxfun": 20_000}
        r = scipy.optimize.minimize(fun, np.zeros(d + 1), args=args, jac=True, method=method,
                                    options=opts)
        out[f"scipy {method}"] = r.x
    return out


def jaxgd_optimum(loss, d, xy, lr, epochs, l2=None):
    hp = {"learning_rate": lr, "momentum": 0.9}
    if l2 is not None:
        hp["l2"] = l2
    params = jax.tree.map(lambda a: a.astype(jnp.float64), models.linear(d).init(jax.random.key(0)))
    r = jaxgd.fit(loss, params, xy, optimizer="nesterov", hparams=hp, batch_size=None,
                  epochs=epochs, grad_tol=1e-11)
    return flat(r.params), r


def torch_trajectory(opt_name, x, y, l2, lr, epochs, batch):
    xt, yt = torch.tensor(x), torch.tensor(y)
    w = torch.zeros(x.shape[1], 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = (torch.optim.SGD if opt_name == "sgd" else torch.optim.Adam)([w, b], lr=lr)
    bce = torch.nn.BCEWithLogitsLoss()

    def obj(xb, yb):
        return bce((xb @ w + b)[:, 0], yb) + 0.5 * l2 * torch.sum(w * w)

    hist = []
    for _ in range(epochs):
        for s in range(0, len(y), batch):
            opt.zero_grad()
            obj(xt[s:s + batch], yt[s:s + batch]).backward()
            opt.step()
        with torch.no_grad():
            hist.append(float(obj(xt, yt)))
    theta = np.concatenate([w.detach().numpy().ravel(), b.detach().numpy()])
    return np.asarray(hist), theta


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    rows, traj_rows, curves = [], [], {}
    with jax.enable_x64(True):
        # 1. linear regression
        x, y = standardised("diabetes")
        y = (y - y.mean()) / y.std()
        n, d = x.shape
        lr = 1.0 / np.linalg.eigvalsh(x.T @ x / n).max()
        lin = losses.make_loss(models.linear(d).apply, "half_mse")
        theta_j, res_lin = jaxgd_optimum(lin, d, (x, y), lr, 4000)
        xb = np.column_stack([x, np.ones(n)])
        refs = {"closed form": np.linalg.lstsq(xb, y, rcond=None)[0]}
        refs.update(scipy_solutions(linear_objective, d, (x, y)))
        f_j = linear_objective(theta_j, x, y)[0]
        for name, th in refs.items():
            rows.append({"problem": "linear (diabetes)", "reference": name,
                         "max_abs_param_diff": float(np.abs(theta_j - th).max()),
                         "objective_jaxgd_minus_ref": float(f_j - linear_objective(th, x, y)[0]),
                         "jaxgd_epochs": res_lin.epochs_run, "jaxgd_stop": res_lin.stop_reason})

        # 2. logistic regression
        x, y = standardised("breast_cancer")
        n, d = x.shape
        l2 = 1.0 / (C * n)
        lr = 1.0 / (0.25 * np.linalg.eigvalsh(x.T @ x / n).max() + l2)
        logi = bce
        theta_j, res_log = jaxgd_optimum(logi, d, (x, y), lr, 5000, l2=l2)
        sk = LogisticRegression(C=C, tol=1e-12, max_iter=20_000).fit(x, y)
        refs = {"sklearn LogisticRegression": np.append(sk.coef_.ravel(), sk.intercept_)}
        refs.update(scipy_solutions(logistic_objective, d, (x, y, l2)))
        f_j = logistic_objective(theta_j, x, y, l2)[0]
        for name, th in refs.items():
            rows.append({"problem": f"logistic (breast_cancer, l2 = 1/(C n), C = {C:g})",
                         "reference": name,
                         "max_abs_param_diff": float(np.abs(theta_j - th).max()),
                         "objective_jaxgd_minus_ref": float(
                             f_j - logistic_objective(th, x, y, l2)[0]),
                         "jaxgd_epochs": res_log.epochs_run, "jaxgd_stop": res_log.stop_reason})

        # 3. PyTorch trajectories, in-order mini-batches
        epochs = 3 if quick else 20
        zeros = jax.tree.map(lambda a: a.astype(jnp.float64), models.logistic(d).init(
            jax.random.key(0)))
        for opt_name, lr_t in (("sgd", 0.1), ("adam", 0.01)):
            r = jaxgd.fit(logi, zeros, (x, y), optimizer=opt_name,
                          hparams={"learning_rate": lr_t, "l2": l2}, batch_size=32,
                          shuffle=False, epochs=epochs)
            row = {"optimizer": opt_name, "learning_rate": lr_t, "epochs": epochs,
                   "steps": r.steps_run}
            if torch is None:
                curves[opt_name] = (r.history["objective"], None)
                row.update(max_abs_objective_diff=NOT_INSTALLED, max_abs_param_diff=NOT_INSTALLED)
            else:
                hist_t, theta_t = torch_trajectory(opt_name, x, y, l2, lr_t, epochs, 32)
                curves[opt_name] = (r.history["objective"], hist_t)
                row.update(
                    max_abs_objective_diff=float(np.abs(r.history["objective"] - hist_t).max()),
                    max_abs_param_diff=float(np.abs(flat(r.params) - theta_t).max()))
            traj_rows.append(row)
        # the library loss's gradient at the zero initialisation
        g_lib = jax.grad(losses.make_loss(models.logistic(d).apply, "bce"))(zeros, (x, y))
        g_ref = jax.grad(bce)(zeros, (x, y))
        bce_grad_err = float(np.abs(flat(g_lib) - flat(g_ref)).max())
    table = pd.DataFrame(rows)
    traj = pd.DataFrame(traj_rows)
    save_table(table, out, "optimum")
    save_table(traj, out, "torch_trajectories")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    ax = axes[0]
    labels = [f"{p.split(' ')[0]}: {r}"
              for p, r in zip(table.problem, table.reference, strict=True)]
    ax.barh(np.arange(len(table)), np.maximum(table.max_abs_param_diff, 1e-16))
    ax.set_yticks(np.arange(len(table)), labels, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(TOL_OPT, color="C3", ls=":", label=f"tolerance {TOL_OPT:g}")
    ax.set_xlabel("max |jaxgd - reference| over parameters (float64)")
    ax.set_title("Optimum")
    ax.legend(fontsize=8)
    ax = axes[1]
    for name, (hj, ht) in curves.items():
        ep = np.arange(1, len(hj) + 1)
        (line,) = ax.plot(ep, hj, lw=3, alpha=0.4, label=f"jaxgd {name}")
        if ht is not None:
            ax.plot(ep, ht, "x", color=line.get_color(), label=f"torch.optim.{name.upper()}"
                    if name == "sgd" else "torch.optim.Adam")
    if torch is None:
        ax.text(0.5, 0.95, f"PyTorch {NOT_INSTALLED}", transform=ax.transAxes, ha="center",
                va="top", fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel("objective (BCE + l2/2 ||w||^2)")
    ax.set_yscale("log")
    ax.set_title("Logistic regression, in-order batches of 32")
    ax.legend(fontsize=8)
    save_figure(fig, out, "parity")

    err_opt = check("optimum vs closed form / scipy / sklearn",
                    float(table.max_abs_param_diff.max()), TOL_OPT)
    err_traj = NOT_INSTALLED if torch is None else check(
        "trajectory vs PyTorch",
        float(max(traj.max_abs_objective_diff.max(), traj.max_abs_param_diff.max())), TOL_TRAJ)
    return {"max_abs_param_diff_at_optimum": err_opt, "max_abs_diff_torch_trajectory": err_traj,
            "linear_epochs": int(res_lin.epochs_run), "logistic_epochs": int(res_log.epochs_run),
            "bce_grad_error_at_0": bce_grad_err}


if __name__ == "__main__":
    main(run, __doc__)
