"""Optimizers: SGD, momentum, Nesterov, RMSprop and Adam on Rosenbrock and on a digits MLP.

Rosenbrock f(x, y) = (1 - x)^2 + 100 (y - x^2)^2 from (-1.5, 2), one update per epoch
(``batch_size=None`` on a one-row dummy data set; the loss ignores the batch).

The trajectory is the parameter history of one ``fit`` per optimizer
(``record_params=True``, read back with ``res.param_history()``); its last point is checked
against the returned ``params``, and the Adam and Nesterov endpoints against a
hand-written optax loop.

Digits: an MLP (64-64-10, ReLU) on scikit-learn's 8x8 digits (pixels / 16, 80/20 split),
softmax cross-entropy, mini-batches of 64, all five optimizers in one ``jaxgd.sweep``
(one configuration per optimizer); loss curves and test accuracy.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import pandas as pd

import jaxgd
from experiments._common import check, main, save_figure, save_table

NAME = "e06_optimizers"
START = (-1.5, 2.0)
ROSEN_HP = {
    "sgd": {"learning_rate": 1e-3},
    "momentum": {"learning_rate": 2e-4, "momentum": 0.9},
    "nesterov": {"learning_rate": 2e-4, "momentum": 0.9},
    "rmsprop": {"learning_rate": 1e-2},
    "adam": {"learning_rate": 5e-2},
}
DIGITS_LR = {"sgd": 0.1, "momentum": 0.02, "nesterov": 0.02, "rmsprop": 1e-3, "adam": 1e-3}


def rosenbrock(xy):
    return (1.0 - xy[0]) ** 2 + 100.0 * (xy[1] - xy[0] ** 2) ** 2


def rosenbrock_np(path: np.ndarray) -> np.ndarray:
    x, y = path[..., 0].astype(np.float64), path[..., 1].astype(np.float64)
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


def rosenbrock_loss(params, batch):
    """Rosenbrock of the parameters; the (dummy) batch is not used."""
    del batch
    return rosenbrock(params["xy"])


def optax_reference(opt: optax.GradientTransformation, steps: int) -> np.ndarray:
    p = jnp.array(START)
    state = opt.init(p)

    @jax.jit
    def step(p, state):
        g = jax.grad(rosenbrock)(p)
        u, state = opt.update(g, state, p)
        return optax.apply_updates(p, u), state

    for _ in range(steps):
        p, state = step(p, state)
    return np.asarray(p)


def rosenbrock_part(out: Path, steps: int):
    p0 = {"xy": jnp.array(START)}
    dummy = jnp.zeros((1, 1))
    paths, rows, finals = {}, [], {}
    for name, hp in ROSEN_HP.items():
        r = jaxgd.fit(rosenbrock_loss, p0, dummy, optimizer=name, hparams=hp, batch_size=None,
                      epochs=steps, shuffle=False, record_params=True)
        path = np.vstack([np.array(START), r.param_history()["xy"]])
        end = np.asarray(r.params["xy"])
        check(f"{name}: recorded path ends at params", float(np.abs(path[-1] - end).max()), 1e-7)
        paths[name] = path
        finals[name] = end
        f_path = rosenbrock_np(path)
        rows.append({"optimizer": name, **{k: v for k, v in hp.items()}, "steps": r.steps_run,
                     "x": end[0], "y": end[1], "f(x, y)": float(rosenbrock_np(end)),
                     "dist_to_(1,1)": float(np.hypot(end[0] - 1, end[1] - 1)),
                     "steps_to_f<1e-3": int(np.argmax(f_path < 1e-3)) if (f_path < 1e-3).any()
                     else None})
    ref = optax_reference(optax.adam(ROSEN_HP["adam"]["learning_rate"]), steps)
    err_adam = check("Adam endpoint vs hand-written optax loop",
                     float(np.abs(finals["adam"] - ref).max()), 1e-5)
    ref_n = optax_reference(optax.sgd(2e-4, momentum=0.9, nesterov=True), steps)
    err_nest = check("Nesterov endpoint vs hand-written optax loop",
                     float(np.abs(finals["nesterov"] - ref_n).max()), 1e-5)
    table = pd.DataFrame(rows)
    save_table(table, out, "rosenbrock")

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    gx, gy = np.meshgrid(np.linspace(-2, 2, 400), np.linspace(-1, 3, 400))
    fz = (1 - gx) ** 2 + 100 * (gy - gx**2) ** 2
    axes[0].contour(gx, gy, fz, levels=np.logspace(-1, 3.5, 20), colors="0.55",
                    linewidths=0.6)
    for name, path in paths.items():
        axes[0].plot(path[:, 0], path[:, 1], "-", lw=1.2, label=name)
        axes[0].plot(*path[-1], "o", ms=4, color=axes[0].lines[-1].get_color())
    axes[0].plot(*START, "ks", ms=6, label="start (-1.5, 2)")
    axes[0].plot(1, 1, "r*", ms=14, label="minimum (1, 1)")
    axes[0].set(xlim=(-2, 2), ylim=(-1, 3), xlabel="x", ylabel="y",
                title=f"Rosenbrock, {steps} steps")
    axes[0].legend(fontsize=8, loc="lower right")
    for name, path in paths.items():
        f_path = rosenbrock_np(path)
        axes[1].plot(np.arange(len(f_path)), np.maximum(f_path, 1e-12), label=name)
    axes[1].set(yscale="log", xlabel="step", ylabel="f(x, y)", title="Rosenbrock value")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    save_figure(fig, out, "rosenbrock")
    return table, err_adam, err_nest


def digits_part(out: Path, epochs: int, optimizers=tuple(DIGITS_LR)):
    ds = jaxgd.datasets.load("digits")
    x = (ds.x / 16.0).astype(np.float32)
    tr, te = jaxgd.data.train_val_split(len(x), 0.2, 0)
    model = jaxgd.models.mlp(64, (64,), 10)
    loss = jaxgd.losses.make_loss(model.apply, "softmax_ce")
    params0 = model.init(jax.random.key(0))
    configs = [{"optimizer": k, "learning_rate": DIGITS_LR[k]} for k in optimizers]
    sw = jaxgd.sweep(loss, params0, (x[tr], ds.y[tr]), configs=configs, batch_size=64,
                     epochs=epochs, val_data=(x[te], ds.y[te]), seed=0)
    t = sw.table.copy()
    acc = []
    for i in range(len(t)):
        p = jax.tree.map(lambda a, i=i: a[i], sw.params)
        acc.append(float(jaxgd.losses.accuracy(model.apply(p, x[te]), ds.y[te])))
    t["test_accuracy"] = acc
    cols = ["optimizer", "learning_rate", "final_loss", "final_val_loss", "test_accuracy",
            "steps_run", "stop_reason"]
    t = t[cols]
    save_table(t, out, "digits_mlp")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ep = np.arange(1, epochs + 1)
    for i, row in t.iterrows():
        lbl = f"{row['optimizer']} (lr {row['learning_rate']:g}): {row['test_accuracy']:.3f}"
        axes[0].plot(ep, sw.history["loss"][i], label=lbl)
        axes[1].plot(ep, sw.history["val_loss"][i], label=row["optimizer"])
    axes[0].set(yscale="log", xlabel="epoch", ylabel="training cross-entropy",
                title="digits MLP 64-64-10, batch 64 (legend: test accuracy)")
    axes[1].set(yscale="log", xlabel="epoch", ylabel="test cross-entropy", title="held-out loss")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    save_figure(fig, out, "digits_mlp")
    return t


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    steps = 500 if quick else 2000
    ros, err_adam, err_nest = rosenbrock_part(out, steps)
    # each optimizer is its own compiled program; quick mode compiles two of them
    dig = digits_part(out, 3, ("sgd", "adam")) if quick else digits_part(out, 20)
    return {
        "rosenbrock_f_final": dict(zip(ros["optimizer"], ros["f(x, y)"].round(6), strict=True)),
        "adam_vs_optax_loop": err_adam,
        "nesterov_vs_optax_loop": err_nest,
        "digits_test_accuracy": dict(
            zip(dig["optimizer"], dig["test_accuracy"].round(4), strict=True)),
    }


if __name__ == "__main__":
    main(run, __doc__)
