"""Learning rate: too small, good, too large; a learning-rate x batch-size divergence map.

Left: full-batch GD on the standardised diabetes regression (linear model, MSE) with
learning rates too small (1e-3), good (0.1), just below the stability edge (0.24: the top
eigen-direction oscillates), just above it (0.27: the loss first falls, then rises until
jaxgd stops the run as "diverged" at 100x the initial loss) and far above it (1.0). The edge
of full-batch GD on a quadratic is lr < 2 / lambda_max(Hessian) = 0.2485, computed here from
the data. Right: one ``jaxgd.sweep`` over learning rate x batch size (plain SGD, 20 epochs,
quick: 5) whose final-loss heatmap marks diverged configurations: the edge moves to
smaller learning rates as the batch gets smaller.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import jaxgd
from experiments._common import check, main, save_figure, save_table

NAME = "e05_learning_rate"
CASES = (("too small", 1e-3), ("good", 0.1), ("near the edge", 0.24), ("too large", 0.27),
         ("far too large", 1.0))
DIVERGE_FACTOR = 100.0


def loss(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def load_data():
    ds = jaxgd.datasets.load("diabetes")
    s = jaxgd.data.fit_standardizer(ds.x)
    x = jaxgd.data.standardize(ds.x, s).astype(np.float32)
    y = ((ds.y - ds.y.mean()) / ds.y.std()).astype(np.float32)
    return x, y


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    x, y = load_data()
    n, d = x.shape
    p0 = {"w": jnp.zeros(d), "b": jnp.zeros(())}
    # Hessian of the MSE in (w, b): 2/n [x 1]^T [x 1]
    xa = np.hstack([x, np.ones((n, 1), np.float32)]).astype(np.float64)
    lam_max = float(np.linalg.eigvalsh(2.0 / n * xa.T @ xa).max())
    lr_edge = 2.0 / lam_max

    epochs = 40 if quick else 100
    results = {}
    rows = []
    for name, lr in CASES:
        r = jaxgd.fit(loss, p0, (x, y), hparams={"learning_rate": lr}, batch_size=None,
                      epochs=epochs, diverge_factor=DIVERGE_FACTOR)
        results[name] = (lr, r)
        rows.append({"case": name, "learning_rate": lr, "lr / (2/lambda_max)": lr / lr_edge,
                     "stop_reason": r.stop_reason, "epochs_run": r.epochs_run,
                     "init_loss": r.init_loss, "final_loss": r.final_loss,
                     "min_loss": float(np.nanmin(r.history["loss"]))})
    table = pd.DataFrame(rows)
    save_table(table, out, "learning_rates")
    # the theory: GD on a quadratic is stable iff lr < 2 / lambda_max
    for name, lr in CASES:
        diverged = results[name][1].stop_reason == "diverged"
        check(f"lr {lr} diverges iff lr > 2/lambda_max = {lr_edge:.4f}",
              float(diverged != (lr > lr_edge)), 0)
    r27 = results["too large"][1]
    h = r27.history["loss"]
    check("lr 0.27: the loss first falls, then rises",
          float(not (h[0] < r27.init_loss < h[-1])), 0)

    # learning-rate x batch-size sweep
    lrs = np.logspace(-2, 0.5, 6 if quick else 16)
    batch_sizes = [1, 32, None] if quick else [1, 4, 16, 64, None]
    sw_epochs = 5 if quick else 20
    sw = jaxgd.sweep(loss, p0, (x, y), optimizer="sgd",
                     grid={"batch_size": batch_sizes, "learning_rate": lrs},
                     epochs=sw_epochs, diverge_factor=DIVERGE_FACTOR, seed=0)
    t = sw.table
    save_table(t, out, "sweep")
    # every configuration inside the sweep equals its own fit
    probe = t.iloc[len(t) // 2]
    bs = None if probe["batch_size"] == "full" else int(probe["batch_size"])
    r1 = jaxgd.fit(loss, p0, (x, y), hparams={"learning_rate": float(probe["learning_rate"])},
                   batch_size=bs, epochs=sw_epochs, diverge_factor=DIVERGE_FACTOR, key=0)
    sweep_vs_fit = abs(r1.final_loss - float(probe["final_loss"])) / max(r1.final_loss, 1e-12)
    check("a sweep configuration equals its own fit (relative)", sweep_vs_fit, 1e-4)

    # edge per batch size: smallest diverging lr
    labels = [("full" if b is None else str(b)) for b in batch_sizes]
    grid = np.full((len(batch_sizes), len(lrs)), np.nan)
    div = np.zeros_like(grid, bool)
    edge = {}
    for i, lab in enumerate(labels):
        sub = t[t["batch_size"].astype(str) == lab].sort_values("learning_rate")
        grid[i] = sub["final_loss"].to_numpy(float)
        div[i] = sub["diverged"].to_numpy(bool)
        dl = sub.loc[sub["diverged"], "learning_rate"]
        edge[lab] = float(dl.min()) if len(dl) else None

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, (lr, r) in results.items():
        h = np.concatenate([[r.init_loss], r.history["loss"]])
        lbl = f"{name}: lr {lr:g} ({r.stop_reason}, {r.epochs_run} epochs)"
        (line,) = axes[0].plot(np.arange(len(h)), h, label=lbl)
        if r.stop_reason == "diverged":
            axes[0].plot(len(h) - 1, h[-1], "x", color=line.get_color(), ms=10, mew=2)
    axes[0].axhline(results["good"][1].init_loss, color="gray", lw=0.8, ls=":")
    axes[0].set(yscale="log", xlabel="epoch", ylabel="training MSE",
                title=f"full-batch GD, diabetes (2/lambda_max = {lr_edge:.3f})")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)

    shown = np.where(div, np.nan, np.log10(grid))
    im = axes[1].imshow(shown, aspect="auto", cmap="viridis_r", origin="lower")
    for i in range(len(labels)):
        for j in range(len(lrs)):
            if div[i, j]:
                axes[1].text(j, i, "x", ha="center", va="center", color="red", fontsize=11)
    axes[1].set_xticks(range(len(lrs)), [f"{v:.2g}" for v in lrs], rotation=60, fontsize=8)
    axes[1].set_yticks(range(len(labels)), labels)
    axes[1].set(xlabel="learning rate", ylabel="batch size",
                title=f"log10 final MSE after {sw_epochs} epochs (red x = diverged)")
    axes[1].set_facecolor("mistyrose")
    fig.colorbar(im, ax=axes[1], label="log10 final MSE")
    save_figure(fig, out, "learning_rate")

    return {
        "lambda_max_edge_lr": round(lr_edge, 4),
        "stop_reasons": {k: v[1].stop_reason for k, v in results.items()},
        "final_loss": {k: float(v[1].final_loss) for k, v in results.items()},
        "smallest_diverging_lr_by_batch": edge,
        "sweep_configs": len(t),
        "sweep_diverged": int(t["diverged"].sum()),
        "sweep_vs_fit_rel_err": sweep_vs_fit,
    }


if __name__ == "__main__":
    main(run, __doc__)
