"""Exploding gradients: an Elman RNN with and without gradient clipping.

Task: read a sequence of T = 20 uniform(-1, 1) numbers and output the sum of the last
three. The recurrent matrix is initialised 1.5x larger than usual (spectral radius > 1),
so back-propagation through time multiplies gradients up; plain SGD with a large
learning rate blows up within an epoch or two and stops with ``stop_reason ==
"diverged"`` (its last finite parameters kept), while clipping each gradient element
(``clip_value``) or the global gradient norm (``clip_norm``) trains at the same rate.

Clipping thresholds are traced hyper-parameters: "no clipping" is a threshold of 1e30
(an exact no-op), so every variant and learning rate is one configuration of a single
``jaxgd.sweep`` (one compiled program), and the diverging ones never disturb the others.
``history["grad_norm"]`` is the full-data gradient norm *before* clipping
(``metrics="full_grad"``).
"""

from __future__ import annotations

from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import jaxgd
from experiments._common import check, main, save_figure, save_table
from jaxgd import losses, models

NAME = "e09_clipping"
OFF = 1e30  # a clipping threshold that never clips
VARIANTS = {
    "no clipping": {"clip_value": OFF, "clip_norm": OFF},
    "clip_value 0.05": {"clip_value": 0.05, "clip_norm": OFF},
    "clip_norm 1.0": {"clip_value": OFF, "clip_norm": 1.0},
}
LEARNING_RATES = (0.03, 0.1, 0.3, 1.0)
SHOWN_LR = 0.3


def make_task(n: int, t: int, seed: int = 0):
    r = np.random.default_rng(seed)
    x = r.uniform(-1, 1, (n, t, 1)).astype(np.float32)
    y = x[:, -3:, 0].sum(1).astype(np.float32)
    return x, y


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    n, epochs = (256, 12) if quick else (512, 40)
    x, y = make_task(n, 20)
    model = models.rnn(1, 32)
    params = model.init(jax.random.key(0))
    params["wh"] = 1.5 * params["wh"]  # large recurrent weights: exploding gradients
    loss = losses.make_loss(model.apply, "mse")

    configs = [{"learning_rate": lr, **clip} for lr in LEARNING_RATES for clip in VARIANTS.values()]
    sw = jaxgd.sweep(loss, params, (x, y), optimizer="sgd", configs=configs, batch_size=32,
                     epochs=epochs, seed=0, metrics="full_grad")  # full-data grad norms
    names = list(VARIANTS) * len(LEARNING_RATES)
    t = sw.table.assign(variant=names)
    table = t[["variant", "learning_rate", "init_loss", "final_loss", "best_loss",
               "stop_reason", "epochs_run", "steps_run"]]
    table = table.assign(max_grad_norm=np.nanmax(sw.history["grad_norm"], axis=1))
    save_table(table, out, "clipping")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    for name in VARIANTS:
        i = int(t.index[(t.variant == name) & np.isclose(t.learning_rate, SHOWN_LR)][0])
        e = int(t.epochs_run[i])
        ep = np.arange(1, e + 1)
        style = dict(marker="x" if t.stop_reason[i] == "diverged" else None)
        axes[0].plot(ep, sw.history["loss"][i, :e], label=f"{name} ({t.stop_reason[i]})", **style)
        axes[1].plot(ep, sw.history["grad_norm"][i, :e], label=name, **style)
    for ax, what in zip(axes[:2], ("training loss (MSE)", "gradient norm (before clipping)"),
                        strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.set_title(f"SGD, learning rate {SHOWN_LR}, batch 32")
    axes[0].legend()
    ax = axes[2]
    for name in VARIANTS:
        sub = t[t.variant == name]
        loss_shown = np.where(sub.diverged, np.nan, sub.final_loss)
        ax.plot(sub.learning_rate, loss_shown, "o-", label=name)
        div = sub[sub.diverged]
        ax.plot(div.learning_rate, np.full(len(div), 2.0), "x", ms=10, color="k")
    ax.axhline(float(np.var(y)), color="gray", ls=":", label="predict the mean")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"final training loss after {epochs} epochs")
    ax.set_title("x at the top: diverged")
    ax.legend(fontsize=8)
    save_figure(fig, out, "clipping")

    at = t[np.isclose(t.learning_rate, SHOWN_LR)].set_index("variant")
    if at.loc["no clipping", "stop_reason"] != "diverged":
        raise AssertionError(f"unclipped SGD at lr {SHOWN_LR} did not diverge: {at}")
    ratio = max(at.loc[v, "final_loss"] / at.loc[v, "init_loss"] for v in list(VARIANTS)[1:])
    check("clipped runs reduce the loss 10x", float(ratio), 0.1)
    return {
        "unclipped_stop": f"{at.loc['no clipping', 'stop_reason']} after "
                          f"{at.loc['no clipping', 'epochs_run']} epoch(s) at lr {SHOWN_LR}",
        "clip_value_final_loss": float(at.loc["clip_value 0.05", "final_loss"]),
        "clip_norm_final_loss": float(at.loc["clip_norm 1.0", "final_loss"]),
        "init_loss": float(at.loc["no clipping", "init_loss"]),
        "diverged_configs": f"{int(t.diverged.sum())}/{len(t)}",
        "max_unclipped_grad_norm": float(np.nanmax(pd.to_numeric(
            table[table.variant == "no clipping"].max_grad_norm))),
    }


if __name__ == "__main__":
    main(run, __doc__)
