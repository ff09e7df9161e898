"""Batch vs stochastic vs mini-batch gradient descent on y = 2x (x = 1, 2, 3).

One weight ``w`` (no bias), ``w0 = 1``, learning rate 0.01, 100 epochs, samples visited in
order (``shuffle=False``), cost J(w) = mean((w x - y)^2). Batch GD (B = 3) takes one update
per epoch, SGD (B = 1) three, mini-batch (B = 2) two (a batch of 2, then the last of 1).
Cost is plotted against epoch, against number of updates and against wall time; every
trajectory is checked against a plain NumPy loop of the same updates.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import jaxgd
from experiments._common import check, main, save_figure, save_table

NAME = "e01_batch_vs_sgd"
LR, W0, EPOCHS = 0.01, 1.0, 100
METHODS = (("batch GD (B=3)", None), ("SGD (B=1)", 1), ("mini-batch (B=2)", 2))


def loss(params, batch):
    x, y = batch
    return jnp.mean((x[:, 0] * params["w"] - y) ** 2)


def numpy_loop(x, y, batch_size, epochs=EPOCHS, lr=LR, w0=W0):
    """The textbook loop: per epoch, slices in order; returns (w, cost per update, per epoch,
    wall-clock time stamp at each epoch end)."""
    x = x[:, 0].astype(np.float64)
    y = y.astype(np.float64)
    n = len(x)
    b = n if batch_size is None else batch_size
    w = w0
    per_update, per_epoch, stamps = [], [], []
    t0 = time.perf_counter()
    for _ in range(epochs):
        for s in range(0, n, b):
            xb, yb = x[s:s + b], y[s:s + b]
            w -= lr * np.mean(2.0 * (w * xb - yb) * xb)
            per_update.append(np.mean((w * x - y) ** 2))
        per_epoch.append(np.mean((w * x - y) ** 2))
        stamps.append(time.perf_counter() - t0)
    return w, np.array(per_update), np.array(per_epoch), np.array(stamps)


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    x, y = jaxgd.datasets.textbook_line()
    repeats = 3 if quick else 20
    rows, curves, res = [], {}, {}
    for label, bs in METHODS:
        kw = dict(hparams={"learning_rate": LR}, batch_size=bs, epochs=EPOCHS, shuffle=False)
        t = time.perf_counter()
        r = jaxgd.fit(loss, {"w": jnp.array(W0)}, (x, y), **kw)
        first = time.perf_counter() - t
        times = []
        for _ in range(repeats):  # the same program again: cached, so this is run time only
            t = time.perf_counter()
            r = jaxgd.fit(loss, {"w": jnp.array(W0)}, (x, y), **kw)
            float(r.params["w"])
            times.append(time.perf_counter() - t)
        run_s = float(np.median(times))
        w_np, cost_upd, cost_ep, stamps = numpy_loop(x, y, bs)
        w = float(r.params["w"])
        err_w = check(f"{label}: final w vs NumPy", abs(w - w_np), 1e-5)
        err_j = check(f"{label}: cost per epoch vs NumPy",
                      float(np.max(np.abs(r.history["loss"] - cost_ep))), 1e-5)
        spe = jaxgd.batch_plan(len(x), bs).steps_per_epoch
        assert r.steps_run == EPOCHS * spe, (r.steps_run, spe)
        curves[label] = (r.history["loss"], cost_upd, spe, run_s / EPOCHS, stamps)
        res[label] = r
        rows.append({"method": label, "batch_size": "full" if bs is None else bs,
                     "updates_per_epoch": spe, "updates": r.steps_run, "final_w": w,
                     "numpy_w": w_np, "abs_err_w": err_w, "max_err_cost": err_j,
                     "final_cost": float(r.history["loss"][-1]),
                     "jaxgd_first_call_s": first, "jaxgd_run_s": run_s,
                     "numpy_loop_s": float(stamps[-1])})
    table = pd.DataFrame(rows)
    save_table(table, out, "results")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    epochs = np.arange(1, EPOCHS + 1)
    for label, (hist, cost_upd, spe, per_epoch_s, stamps) in curves.items():
        (line,) = axes[0].plot(epochs, hist, label=label)
        c = line.get_color()
        axes[1].plot(np.arange(1, len(cost_upd) + 1), cost_upd, color=c, lw=1,
                     label=f"{label}, NumPy, every update")
        axes[1].plot(epochs * spe, hist, "o", color=c, ms=2.5, label=f"{label}, jaxgd, epoch end")
        axes[2].plot(epochs * per_epoch_s * 1e3, hist, color=c, label=f"{label}: jaxgd")
        axes[2].plot(stamps * 1e3, cost_ep_of(cost_upd, spe), "--", color=c,
                     label=f"{label}: NumPy loop")
    axes[0].set(xlabel="epoch", ylabel="cost J(w)", yscale="log", title="cost vs epoch")
    axes[1].set(xlabel="parameter updates", ylabel="cost J(w)", yscale="log",
                title="cost vs number of updates")
    axes[2].set(xlabel="wall time (ms)", ylabel="cost J(w)", yscale="log", xscale="log",
                title="cost vs wall time")
    fig.text(0.5, -0.06,
             "Wall time: jaxgd runs all 100 epochs as one compiled program, so its time per epoch "
             "is (median warm run time) / 100, compile time excluded (see results table); the "
             "NumPy curves are measured\ntime stamps at each epoch end of a float64 Python loop. "
             "jaxgd computes in float32, so its cost floors near 1e-13 (the NumPy reference is "
             "float64); axes are cut at 1e-14.", ha="center", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(1e-14, 20)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=6)
    axes[2].legend(fontsize=6, loc="upper right")
    fig.suptitle("y = 2x, w0 = 1, lr 0.01, 100 epochs, in-order batches")
    save_figure(fig, out, "cost_curves")

    return {
        **{f"final_w[{lbl.split(' ')[0]}]": round(float(res[lbl].params["w"]), 6)
           for lbl, _ in METHODS},
        "max_abs_err_vs_numpy": float(table[["abs_err_w", "max_err_cost"]].to_numpy().max()),
        "jaxgd_ms_per_run": {r["method"]: round(1e3 * r["jaxgd_run_s"], 3) for r in rows},
    }


def cost_ep_of(cost_upd, spe):
    """Cost at each epoch end from the per-update costs."""
    return cost_upd[spe - 1::spe]


if __name__ == "__main__":
    main(run, __doc__)
