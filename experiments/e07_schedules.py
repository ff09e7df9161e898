"""Learning-rate schedules: constant, exponential (smooth and staircase), step, cosine.

The schedules are drawn with ``jaxgd.schedule_value`` over 10 000 steps. The classic table
(initial rate 0.1, decayed by 0.96 every 1 000 steps, staircase: TensorFlow's
``exponential_decay``) is printed at steps 0, 999, 1000, 1999, 2000, ... and checked against
the closed form 0.1 * 0.96 ** floor(step / 1000) and against ``optax.exponential_decay``.
A small ``fit`` (linear regression on the standardised diabetes data, SGD, batch 32)
shows the effect of each schedule; its recorded per-epoch learning rate is checked against
the closed form at the epoch's last update.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import pandas as pd

import jaxgd
from experiments._common import check, main, save_figure, save_table

NAME = "e07_schedules"
LR0 = 0.1
SCHEDULES = {
    "constant": ("constant", {}),
    "exponential (smooth)": ("exponential", {"decay_rate": 0.96, "transition_steps": 1000}),
    "exponential (staircase)": ("exponential", {"decay_rate": 0.96, "transition_steps": 1000,
                                                "staircase": 1}),
    "step (x0.5 every 2 000)": ("step", {"step_size": 2000, "gamma": 0.5}),
    "cosine (10 000)": ("cosine", {"decay_steps": 10_000, "alpha": 0.0}),
}


def values(kind: str, params: dict, steps: np.ndarray) -> np.ndarray:
    p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    # fill the schedule's defaults the way fit does
    for k, v in jaxgd.SCHEDULES[kind].items():
        if k not in p:
            p[k] = jnp.asarray(v, jnp.float32)
    return np.asarray(jaxgd.schedule_value(kind, jnp.asarray(steps), jnp.float32(LR0), p))


def closed_form(kind: str, params: dict, steps: np.ndarray) -> np.ndarray:
    t = steps.astype(np.float64)
    if kind == "constant":
        return np.full_like(t, LR0)
    if kind == "exponential":
        e = t / params["transition_steps"]
        if params.get("staircase"):
            e = np.floor(e)
        return LR0 * params["decay_rate"] ** e
    if kind == "step":
        return LR0 * params["gamma"] ** np.floor(t / params["step_size"])
    if kind == "cosine":
        frac = np.minimum(t, params["decay_steps"]) / params["decay_steps"]
        return LR0 * ((1 - params["alpha"]) * 0.5 * (1 + np.cos(np.pi * frac)) + params["alpha"])
    raise ValueError(kind)


def loss(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    steps = np.arange(0, 10_001)
    curves, max_rel = {}, 0.0
    for label, (kind, p) in SCHEDULES.items():
        v = values(kind, p, steps)
        ref = closed_form(kind, p, steps)
        # relative to the initial rate (cosine ends at 0, where a relative error is meaningless)
        max_rel = max(max_rel, float(np.max(np.abs(v - ref)) / LR0))
        curves[label] = v
    check("every schedule vs its closed form (max |error| / 0.1)", max_rel, 1e-6)

    # the learning-rate table
    tab_steps = np.array(sorted({0} | {k * 1000 - 1 for k in range(1, 11)}
                                | {k * 1000 for k in range(1, 11)}))
    kind, p = SCHEDULES["exponential (staircase)"]
    lr_j = values(kind, p, tab_steps)
    lr_cf = closed_form(kind, p, tab_steps)
    lr_ox = np.asarray(optax.exponential_decay(LR0, 1000, 0.96, staircase=True)(tab_steps))
    err_cf = check("staircase table vs 0.1 * 0.96 ** floor(step/1000)",
                   float(np.max(np.abs(lr_j - lr_cf) / lr_cf)), 1e-6)
    err_ox = check("staircase table vs optax.exponential_decay",
                   float(np.max(np.abs(lr_j - lr_ox) / lr_cf)), 1e-6)
    table = pd.DataFrame({"step": tab_steps, "floor(step/1000)": tab_steps // 1000,
                          "learning_rate": [f"{v:.6f}" for v in lr_j],
                          "closed_form": [f"{v:.6f}" for v in lr_cf],
                          "optax": [f"{v:.6f}" for v in lr_ox]})
    save_table(table, out, "staircase_table")
    print(table.to_string(index=False))
    # the two rows every textbook gets wrong: 999 -> 0.1, 1000 -> 0.096
    check("lr at step 999 is 0.1", abs(float(lr_j[tab_steps == 999][0]) - 0.1), 1e-8)
    check("lr at step 1000 is 0.096", abs(float(lr_j[tab_steps == 1000][0]) - 0.096), 1e-8)

    # the effect on a small fit (schedules rescaled to the fit's number of updates)
    ds = jaxgd.datasets.load("diabetes")
    s = jaxgd.data.fit_standardizer(ds.x)
    x = jaxgd.data.standardize(ds.x, s).astype(np.float32)
    y = ((ds.y - ds.y.mean()) / ds.y.std()).astype(np.float32)
    epochs, bsz = (10, 32) if quick else (60, 32)
    spe = jaxgd.batch_plan(len(x), bsz).steps_per_epoch
    total = epochs * spe
    fit_scheds = {
        "constant": ("constant", {}),
        "exponential (staircase)": ("exponential", {"decay_rate": 0.5,
                                                    "transition_steps": total // 5,
                                                    "staircase": 1}),
        "step": ("step", {"step_size": total // 3, "gamma": 0.1}),
        "cosine": ("cosine", {"decay_steps": total, "alpha": 0.0}),
    }
    if quick:  # every schedule kind is its own compiled program
        fit_scheds = {k: fit_scheds[k] for k in ("constant", "cosine")}
    p0 = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}
    fits, rows, lr_err = {}, [], 0.0
    for label, (kind, p) in fit_scheds.items():
        r = jaxgd.fit(loss, p0, (x, y), optimizer="sgd", hparams={"learning_rate": 0.05, **p},
                      schedule=kind, batch_size=bsz, epochs=epochs, key=0)
        last_step = np.arange(1, epochs + 1) * spe - 1
        want = closed_form(kind, p, last_step) * 0.05 / LR0
        lr_err = max(lr_err, float(np.max(np.abs(r.history["lr"] - want)) / 0.05))
        fits[label] = r
        rows.append({"schedule": label, "final_lr": float(r.history["lr"][-1]),
                     "final_loss": r.final_loss, "min_loss": float(r.history["loss"].min())})
    check("fit's recorded lr vs closed form at each epoch's last update (/ lr0)", lr_err, 1e-6)
    save_table(pd.DataFrame(rows), out, "fit_effect")

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for label, v in curves.items():
        axes[0].plot(steps, v, label=label)
    axes[0].set(xlabel="step", ylabel="learning rate", title="schedules, initial rate 0.1")
    axes[0].legend(fontsize=8)
    for label, r in fits.items():
        e = np.arange(1, epochs + 1)
        axes[1].plot(e, r.history["lr"], label=label)
        axes[2].plot(e, r.history["loss"], label=label)
    axes[1].set(xlabel="epoch", ylabel="learning rate (last update of the epoch)",
                yscale="log", title=f"fit: SGD lr 0.05, batch {bsz}, {spe} updates/epoch")
    axes[2].set(xlabel="epoch", ylabel="training MSE", yscale="log",
                title="fit: diabetes linear regression")
    axes[1].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    save_figure(fig, out, "schedules")

    return {
        "lr_at_step": {int(k): float(f"{v:.6g}")
                       for k, v in zip(tab_steps[:6], lr_j[:6], strict=True)},
        "table_err_vs_closed_form": err_cf,
        "table_err_vs_optax": err_ox,
        "schedules_err_vs_closed_form": max_rel,
        "fit_lr_history_err": lr_err,
        "fit_final_loss": {r["schedule"]: round(r["final_loss"], 5) for r in rows},
    }


if __name__ == "__main__":
    main(run, __doc__)
