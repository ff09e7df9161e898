"""Research code as it is: a flax CNN with BatchNorm and dropout on digits, trained by
``jaxgd.fit`` and by a hand-written flax + optax loop; then a sweep over dropout rate x
learning rate with accuracy in the table.

The loss declares what it needs (``jaxgd.lossform``): ``state`` (the BatchNorm
statistics, carried beside the parameters, never differentiated), ``key`` (a new dropout
key every step: ``fold_in(config key, step)``, ``jaxgd.loss_key``), ``train`` (False in
evaluation passes: running averages, no dropout) and ``hparams`` (the dropout rate, a
traced sweep axis), and returns ``(loss, new_state, {"accuracy": ...})``.

The hand loop derives its keys by the documented rule with ``jax.random`` alone, visits
the batches in order (``shuffle=False`` for the comparison run) and updates the state
after every step; the agreement of parameters, statistics and test accuracy is checked.
Needs flax (the test extra); without it the experiment prints a note and does nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import pandas as pd

import jaxgd
from experiments._common import check, main, save_figure, save_table
from jaxgd import data

NAME = "e15_research_code"
# max |params - hand loop params| after training: float32 rounding, grown by Adam over the
# steps (fit's default plan for a convolution on the CPU is the host loop, whose jitted
# step XLA fuses otherwise than the hand loop's: measured up to 4.5e-4 in the full demo)
PARAM_TOL = 1e-3
ACC_TOL = 0.0  # test accuracy: identical
KEY_TAG = 0x4C055  # documented in jaxgd.lossform


def _model():
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, *, train, rate, key):
            h = nn.Conv(8, (3, 3), use_bias=False)(x[..., None])
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
            h = nn.avg_pool(nn.relu(h), (2, 2), (2, 2)).reshape((x.shape[0], -1))
            if key is not None:  # dropout with a traced rate (a sweep axis)
                keep = 1.0 - rate
                mask = jax.random.bernoulli(key, keep, h.shape)
                h = jnp.where(mask, h / keep, 0.0)
            return nn.Dense(10)(h)

    return CNN()


def _loss_fn(model):
    def loss(params, batch, *, state, key, train, hparams):
        x, y = batch
        v = {"params": params, "batch_stats": state}
        if train:
            logits, upd = model.apply(v, x, train=True, rate=hparams["dropout"], key=key,
                                      mutable=["batch_stats"])
            state = upd["batch_stats"]
        else:
            logits = model.apply(v, x, train=False, rate=hparams["dropout"], key=None)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce, state, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    return loss


def hand_loop(loss, params, stats, x, y, xt, yt, hp, seed, epochs, bs):
    """flax + optax, batches in order, keys by the documented rule; per-epoch test
    accuracy, final params and statistics."""
    k = jax.random.fold_in(jax.random.key(seed), KEY_TAG)
    for name in sorted(hp):
        k = jax.random.fold_in(k, np.float32(hp[name]).view(np.uint32))
    opt = optax.adam(hp["learning_rate"])
    ost = opt.init(params)
    hpj = {"dropout": jnp.float32(hp["dropout"])}

    @jax.jit
    def step(params, stats, ost, b, t):
        def f(p):
            value, new, _ = loss(p, b, state=stats, key=jax.random.fold_in(k, t), train=True,
                                 hparams=hpj)
            return value, new
        (_, new), g = jax.value_and_grad(f, has_aux=True)(params)
        u, ost = opt.update(g, ost, params)
        return optax.apply_updates(params, u), new, ost

    acc = jax.jit(lambda p, s: loss(p, (xt, yt), state=s, key=None, train=False,
                                    hparams=hpj)[2]["accuracy"])
    t, accs = 0, []
    for _ in range(epochs):
        for i in range(0, len(x), bs):
            params, stats, ost = step(params, stats, ost, (x[i:i + bs], y[i:i + bs]), t)
            t += 1
        accs.append(float(acc(params, stats)))
    return params, stats, np.asarray(accs)


def run(out: Path, quick: bool) -> dict:
    try:
        import flax  # noqa: F401
    except ImportError:
        print(f"{NAME}: flax is not installed (pip install flax, or the test extra): skipped")
        return {"skipped": "flax not installed"}
    out = Path(out) / NAME
    ds = jaxgd.datasets.load("digits")
    x = (ds.x / 16.0).astype(np.float32).reshape(-1, 8, 8)
    y = ds.y.astype(np.int32)
    tr, te = data.train_val_split(len(y), 0.2, 0)
    xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    epochs = 2 if quick else 15
    model = _model()
    loss = _loss_fn(model)
    v0 = model.init(jax.random.key(0), xtr[:2], train=False, rate=0.0, key=None)
    p0, s0 = v0["params"], v0["batch_stats"]
    hp = {"learning_rate": 3e-3, "dropout": 0.2}

    t0 = time.perf_counter()
    res = jaxgd.fit(loss, p0, (xtr, ytr), state=s0, optimizer=optax.adam, hparams=hp,
                    batch_size=64, epochs=epochs, shuffle=False, val_data=(xte, yte), key=0,
                    metrics="batch")
    secs_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    hp_p, hp_s, hand_acc = hand_loop(loss, p0, s0, xtr, ytr, xte, yte, hp, 0, epochs, 64)
    secs_hand = time.perf_counter() - t0
    p_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                 zip(jax.tree.leaves(res.params), jax.tree.leaves(hp_p), strict=True))
    s_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                 zip(jax.tree.leaves(res.state), jax.tree.leaves(hp_s), strict=True))
    acc_diff = float(np.max(np.abs(res.history["val_accuracy"] - hand_acc)))
    compare = pd.DataFrame({
        "epoch": np.arange(1, epochs + 1),
        "jaxgd test accuracy": res.history["val_accuracy"],
        "hand loop test accuracy": hand_acc,
        "jaxgd train accuracy (epoch's batch mean)": res.history["batch_accuracy"],
    })
    save_table(compare, out, "fit_vs_hand_loop")

    lrs, rates = ([1e-3, 3e-3], [0.0, 0.3]) if quick else ([1e-3, 3e-3, 1e-2], [0.0, 0.2, 0.4])
    t0 = time.perf_counter()
    sw = jaxgd.sweep(loss, p0, (xtr, ytr), state=s0, optimizer=optax.adam,
                     grid={"dropout": rates, "learning_rate": lrs}, batch_size=64,
                     epochs=epochs, val_data=(xte, yte), seed=0, metrics="batch")
    secs_sweep = time.perf_counter() - t0
    cols = ["dropout", "learning_rate", "final_accuracy", "final_val_accuracy",
            "best_epoch_val_accuracy", "final_val_loss", "stop_reason"]
    table = sw.table[cols]
    save_table(table, out, "sweep")
    best = sw.best(metric="val_accuracy", mode="max")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    ep = np.arange(1, epochs + 1)
    axes[0].plot(ep, res.history["val_accuracy"], "o-", label="jaxgd.fit")
    axes[0].plot(ep, hand_acc, "x--", label="hand flax + optax loop")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title(f"CNN + BatchNorm + dropout: max |params diff| {p_diff:.1e}")
    axes[0].legend()
    grid = table.pivot(index="dropout", columns="learning_rate", values="final_val_accuracy")
    im = axes[1].imshow(grid.to_numpy(), cmap="viridis")
    axes[1].set_xticks(range(len(lrs)), [f"{v:g}" for v in grid.columns])
    axes[1].set_yticks(range(len(rates)), [f"{v:g}" for v in grid.index])
    for (i, j), a in np.ndenumerate(grid.to_numpy()):
        axes[1].text(j, i, f"{a:.3f}", ha="center", va="center", color="w")
    axes[1].set_xlabel("learning rate")
    axes[1].set_ylabel("dropout rate")
    axes[1].set_title(f"sweep of {len(sw)}: test accuracy after {epochs} epochs")
    fig.colorbar(im, ax=axes[1])
    save_figure(fig, out, "research_code")

    return {
        "params_max_abs_diff": check("params vs hand loop", p_diff, PARAM_TOL),
        "batch_stats_max_abs_diff": check("batch_stats vs hand loop", s_diff, PARAM_TOL),
        "test_accuracy_max_diff": check("test accuracy vs hand loop", acc_diff, ACC_TOL),
        "test_accuracy": round(float(res.history["val_accuracy"][-1]), 4),
        "best": {"dropout": best.row["dropout"], "learning_rate": best.row["learning_rate"],
                 "val_accuracy": round(float(best.row["final_val_accuracy"]), 4)},
        "seconds": {"fit": round(secs_fit, 1), "hand loop": round(secs_hand, 1),
                    "sweep": round(secs_sweep, 1)},
    }


if __name__ == "__main__":
    main(run, __doc__)
