"""The noisy line y = 1.477 x + 0.089 + noise: fit, time against the textbook loop, SGD vs Adam.

100 samples of ``jaxgd.datasets.noisy_line`` (x ~ U(-10, 10), noise sd 0.01), w = b = 0,
full-batch gradient descent on the MSE with learning rate 1e-4 for 100 000 iterations
(quick: 10 000). The fitted line is checked against ``np.polyfit`` and, iteration by
iteration, against a vectorised NumPy loop. Timing: jaxgd's first call (compile + run) and
a warm call (run only), the vectorised NumPy loop, and the textbook pure-Python loop over
the samples (timed on a slice of the iterations and extrapolated, stated in the table).
Adam is run for the same iterations at lr 1e-4 and 1e-2 against SGD.
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

NAME = "e04_noisy_line"
LR = 1e-4
N = 100


def loss(params, batch):
    x, y = batch
    return jnp.mean((params["w"] * x[:, 0] + params["b"] - y) ** 2)


def textbook_step(b, w, points, lr):
    """One step of the classic pure-Python loop (gradient accumulated sample by sample)."""
    b_grad = w_grad = 0.0
    n = float(len(points))
    for x, y in points:
        b_grad += (2 / n) * ((w * x + b) - y)
        w_grad += (2 / n) * x * ((w * x + b) - y)
    return b - lr * b_grad, w - lr * w_grad


def numpy_loop(x, y, iters, lr):
    x, y = x[:, 0].astype(np.float64), y.astype(np.float64)
    w = b = 0.0
    for _ in range(iters):
        r = w * x + b - y
        w, b = w - lr * 2 * np.mean(r * x), b - lr * 2 * np.mean(r)
    return w, b


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    iters = 10_000 if quick else 100_000
    x, y = jaxgd.datasets.noisy_line(N, seed=0, noise=0.01)
    p0 = {"w": jnp.zeros(()), "b": jnp.zeros(())}
    kw = dict(batch_size=None, epochs=iters, shuffle=False, metrics="batch")

    t = time.perf_counter()
    r = jaxgd.fit(loss, p0, (x, y), optimizer="sgd", hparams={"learning_rate": LR}, **kw)
    float(r.params["w"])
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    r = jaxgd.fit(loss, p0, (x, y), optimizer="sgd", hparams={"learning_rate": LR}, **kw)
    float(r.params["w"])
    warm_s = time.perf_counter() - t
    w, b = float(r.params["w"]), float(r.params["b"])

    t = time.perf_counter()
    w_np, b_np = numpy_loop(x, y, iters, LR)
    numpy_s = time.perf_counter() - t
    points = [(float(a), float(c)) for a, c in zip(x[:, 0], y, strict=True)]
    slice_its = 200 if quick else 2_000
    bb = ww = 0.0
    t = time.perf_counter()
    for _ in range(slice_its):
        bb, ww = textbook_step(bb, ww, points, LR)
    textbook_s = (time.perf_counter() - t) * iters / slice_its

    w_pf, b_pf = np.polyfit(x[:, 0].astype(np.float64), y.astype(np.float64), 1)
    err_loop = check("(w, b) vs NumPy loop of the same iterations",
                     max(abs(w - w_np), abs(b - b_np)), 1e-4)
    gap_pf = max(abs(w - w_pf), abs(b - b_pf))
    if not quick:  # 100 000 iterations are enough to reach the least-squares line
        check("(w, b) vs np.polyfit", gap_pf, 1e-3)

    # SGD against Adam, same iterations
    curves = {"SGD lr 1e-4": r.history["batch_loss"]}
    finals = {"SGD lr 1e-4": (w, b, r.final_loss)}
    for lr in (1e-4, 1e-2):
        ra = jaxgd.fit(loss, p0, (x, y), optimizer="adam", hparams={"learning_rate": lr}, **kw)
        curves[f"Adam lr {lr:g}"] = ra.history["batch_loss"]
        finals[f"Adam lr {lr:g}"] = (float(ra.params["w"]), float(ra.params["b"]), ra.final_loss)

    rows = [{"method": "np.polyfit (float64)", "w": w_pf, "b": b_pf,
             "mse": float(np.mean((w_pf * x[:, 0] + b_pf - y) ** 2)), "seconds": None, "note": ""}]
    rows.append({"method": f"NumPy vectorised loop, {iters} its", "w": w_np, "b": b_np,
                 "mse": float(np.mean((w_np * x[:, 0] + b_np - y) ** 2)), "seconds": numpy_s,
                 "note": "measured"})
    rows.append({"method": f"textbook pure-Python loop, {iters} its", "w": None, "b": None,
                 "mse": None, "seconds": textbook_s,
                 "note": f"timed on {slice_its} iterations x {iters // slice_its}"})
    rows.append({"method": f"jaxgd.fit SGD, {iters} its (warm)", "w": w, "b": b,
                 "mse": r.final_loss, "seconds": warm_s, "note": "run only"})
    rows.append({"method": "jaxgd.fit compile (first call - warm call)", "w": None, "b": None,
                 "mse": None, "seconds": first_s - warm_s, "note": "one-off"})
    for k, (wa, ba, la) in finals.items():
        if k.startswith("Adam"):
            rows.append({"method": f"jaxgd.fit {k}, {iters} its", "w": wa, "b": ba, "mse": la,
                         "seconds": None, "note": ""})
    save_table(pd.DataFrame(rows), out, "fit_and_timing")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(x[:, 0], y, ".", color="gray", label="data")
    xs = np.linspace(-10, 10, 2)
    axes[0].plot(xs, w * xs + b, label=f"jaxgd: {w:.4f} x + {b:.4f}")
    axes[0].plot(xs, w_pf * xs + b_pf, "--", label=f"polyfit: {w_pf:.4f} x + {b_pf:.4f}")
    axes[0].set(xlabel="x", ylabel="y", title="fitted line")
    axes[0].legend(fontsize=8)
    names = ["textbook\nPython loop*", "NumPy\nloop", "jaxgd\nwarm", "jaxgd\ncompile"]
    secs = [textbook_s, numpy_s, warm_s, first_s - warm_s]
    bars = axes[1].bar(names, secs, color=["tab:gray", "tab:orange", "tab:blue", "tab:cyan"])
    for bar, v in zip(bars, secs, strict=True):
        axes[1].text(bar.get_x() + bar.get_width() / 2, v, f"{v:.3g} s", ha="center",
                     va="bottom", fontsize=8)
    axes[1].set(yscale="log", ylabel="seconds", title=f"time for {iters:,} iterations")
    axes[1].text(0.01, -0.3, f"* timed on {slice_its:,} iterations and scaled", fontsize=7,
                 transform=axes[1].transAxes)
    for k, c in curves.items():
        axes[2].plot(np.arange(1, len(c) + 1), c, label=k)
    axes[2].set(xscale="log", yscale="log", xlabel="iteration", ylabel="MSE",
                title="SGD vs Adam (full batch)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    save_figure(fig, out, "noisy_line")

    return {
        "w_b_jaxgd": [round(w, 5), round(b, 5)],
        "w_b_polyfit": [round(float(w_pf), 5), round(float(b_pf), 5)],
        "gap_to_polyfit": gap_pf,
        "err_vs_numpy_loop": err_loop,
        "seconds_jaxgd_warm": round(warm_s, 4),
        "seconds_jaxgd_compile": round(first_s - warm_s, 3),
        "seconds_numpy_loop": round(numpy_s, 3),
        "seconds_textbook_loop_est": round(textbook_s, 2),
        "final_mse": {k: float(v[2]) for k, v in finals.items()},
    }


if __name__ == "__main__":
    main(run, __doc__)
