"""A character-level transformer language model on the Python standard library's source:
random windows, a step budget with warm-up + cosine, a learning-rate x warm-up sweep and
Hyperband over it.

The text is a few standard-library modules (every Python install has them, offline),
ASCII bytes as tokens (vocabulary 128), the last 10% held out. The model is the 2-layer
flax-linen character transformer of ``experiments/bench_f.py``. Training draws each
update's batch as random windows inside the program (``windows=L``, nanoGPT's
``get_batch``) for a budget of ``steps=S`` updates of Adam with
``schedule="warmup_cosine"`` (``decay_steps`` = S, down to 0), evaluated on fixed
validation windows (``jaxgd.data.token_windows``) every ``eval_every`` updates.

1. The learning rate x warm-up grid as one ``jaxgd.sweep``: validation bits per character
   (val loss / ln 2) against updates (figure), and the final value over the grid (heatmap).
2. Hyperband (eta = 3, rungs in updates) over the same grid: best validation bits per
   character, optimizer updates spent and wall time against the full grid.
3. The grid's best configuration, by ``jaxgd.fit`` and by a hand-written optax loop
   (``optax.adam(optax.warmup_cosine_decay_schedule(0, lr, W, S, 0))``) on the same
   windows, drawn from the documented keys (``fold_in(fold_in(key(seed), WINDOW_TAG), t)``),
   both in float64, must give the same validation curve and parameters far below float32's
   precision (an assert). The float32 sweep row's distance from that curve is reported
   (batched and unbatched attention round differently; at a large learning rate the
   differences grow over the updates).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import pandas as pd

import jaxgd
from experiments._common import check, save_figure, save_table
from experiments.bench_f import char_transformer, stdlib_text
from jaxgd import search

NAME = "e17_char_lm"
SEED = 0  # the sweep's seed: every configuration trains on the windows of key(0)
# float64, jaxgd.fit against a hand-written optax loop (see parity); measured: 3.6e-16
# and 8.3e-15 after 81 updates (--quick), 1.8e-16 and 5.3e-15 after 243 (full); the
# float32 sweep row against it ~4e-5 (--quick), 1e-6 (full)
VAL_TOL = 1e-10  # relative, every validation loss of the curve
PARAM_TOL = 1e-10  # absolute, every parameter at the end


@dataclasses.dataclass(frozen=True)
class Sizes:
    context: int  # window input length L
    dim: int
    layers: int
    batch: int  # windows per update
    steps: int  # the budget S (also the cosine's decay_steps)
    eval_every: int  # also Hyperband's first rung
    lrs: tuple
    warmups: tuple
    val_windows: int


QUICK = Sizes(context=32, dim=32, layers=2, batch=16, steps=81, eval_every=9,
              lrs=(3e-3, 1e-2, 3e-2), warmups=(0, 9, 27), val_windows=64)

# the full size: a wider model on longer windows, 3x the updates (rungs 27, 81, 243)
FULL = Sizes(context=48, dim=48, layers=2, batch=16, steps=243, eval_every=27,
             lrs=(3e-3, 1e-2, 3e-2), warmups=(0, 27, 81), val_windows=96)

LN2 = math.log(2.0)


def corpus(s: Sizes):
    """Training tokens (the first 90% of the text) and the fixed validation windows."""
    text = stdlib_text()
    cut = int(0.9 * len(text))
    val = jaxgd.data.token_windows(text[cut:cut + s.val_windows * s.context + 1], s.context)
    return text[:cut], val


def make_loss(s: Sizes):
    model = char_transformer(s.context, s.dim, s.layers)
    tokens = jnp.zeros((1, s.context), jnp.int32)
    params0 = jax.jit(model.init)(jax.random.key(0), tokens)["params"]

    def lm_loss(p, batch):
        """Mean next-character cross-entropy (nats) over every position of the windows."""
        x, y = batch
        logits = model.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return lm_loss, params0


def unigram_bpc(train, val) -> float:
    """Bits per character of the training text's character frequencies on the validation
    windows (add-one smoothing): what a model without context reaches."""
    counts = np.bincount(train, minlength=128) + 1.0
    logp = np.log2(counts / counts.sum())
    return float(-logp[np.asarray(val[1])].mean())


def optax_loop(loss, params0, tokens, val, s: Sizes, lr: float, warmup: int):
    """The configuration trained by hand: Adam on optax's warm-up + cosine, update t's
    windows from ``fold_in(fold_in(key(SEED), WINDOW_TAG), t)``; returns the parameters and
    the validation loss after every ``eval_every`` updates."""
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, s.steps, 0.0)
    # optax evaluates a schedule at its int32 step count in float32, even with x64 on;
    # jaxgd computes it in the parameters' dtype: the count as a float64 gives optax's
    # formula in float64 (else the float64 runs part at ~1e-9 and grow apart)
    opt = optax.adam(lambda count: sched(jnp.asarray(count, jnp.float64)))
    tokens = jnp.asarray(tokens)
    key = jax.random.fold_in(jax.random.key(SEED), jaxgd.data.WINDOW_TAG)
    offsets = jnp.arange(s.context + 1, dtype=jnp.int32)

    @jax.jit
    def step(p, st, t):
        starts = jax.random.randint(jax.random.fold_in(key, t), (s.batch,), 0,
                                    tokens.shape[0] - s.context, dtype=jnp.int32)
        w = tokens[starts[:, None] + offsets]
        g = jax.grad(loss)(p, (w[:, :-1], w[:, 1:]))
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st

    val_loss = jax.jit(lambda p: loss(p, val))
    p, st, curve = params0, opt.init(params0), []
    for t in range(s.steps):
        p, st = step(p, st, t)
        if (t + 1) % s.eval_every == 0:
            curve.append(float(val_loss(p)))
    return p, np.asarray(curve)


def parity(loss, params0, train, val, s: Sizes, lr: float, warmup: int):
    """The configuration by ``jaxgd.fit`` (its sweep row's program, ``key`` = the sweep's
    seed) and by :func:`optax_loop`, both in float64 (a float32 trajectory at a large
    learning rate amplifies rounding differences between batched and unbatched attention
    to ~1e-2 over hundreds of updates; float64 keeps them far below float32's precision):
    the validation curves and their largest relative and the parameters' largest absolute
    difference, each checked."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params0)
        res = jaxgd.fit(loss, p64, train, optimizer="adam", schedule="warmup_cosine",
                        hparams={"learning_rate": lr, "warmup_steps": warmup,
                                 "decay_steps": s.steps},
                        batch_size=s.batch, windows=s.context, steps=s.steps,
                        eval_every=s.eval_every, val_data=val, key=SEED)
        ref_p, ref_curve = optax_loop(loss, p64, train, val, s, lr, warmup)
        got = np.asarray(res.history["val_loss"])
        val_err = check("validation curve vs the optax loop (float64, relative)",
                        float(np.max(np.abs(got - ref_curve) / ref_curve)), VAL_TOL)
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                             res.params, ref_p))
        param_err = check("parameters vs the optax loop (float64)", max(diffs), PARAM_TOL)
    return got, ref_curve, val_err, param_err


def _curves_figure(grid, hb, ref_curve, best_i, out: Path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained", sharey=True)
    for ax, res, title in ((axes[0], grid, "learning rate x warm-up grid"),
                           (axes[1], hb, "Hyperband (eta=3, rungs in updates; colours as "
                                         "on the left)")):
        steps = res.history["step"] + 1
        bpc = res.history["val_loss"] / LN2
        for i, c in enumerate(res.configs):
            ax.plot(steps[i], bpc[i], ".-", ms=4,
                    lw=2.2 if (i == best_i and res is grid) else 0.8,
                    label=f"lr {c['learning_rate']:.0e}, W {int(c['warmup_steps'])}")
        ax.set_title(title)
        ax.set_xlabel("updates")
    axes[0].plot(grid.history["step"][best_i] + 1, ref_curve / LN2, "k+", ms=8,
                 label="best, hand-written optax loop (float64)")
    axes[0].set_ylabel("validation bits per character")
    axes[0].legend(fontsize=6, ncol=2)
    return save_figure(fig, out, "val_bpc_vs_steps")


def _heatmap(table: pd.DataFrame, s: Sizes, out: Path):
    m = table.pivot(index="warmup_steps", columns="learning_rate", values="final val bpc")
    fig, ax = plt.subplots(figsize=(1.3 * len(s.lrs) + 2, 0.9 * len(s.warmups) + 1.5),
                           layout="constrained")
    im = ax.imshow(m.to_numpy(), cmap="viridis_r", aspect="auto")
    mid = np.nanmean(m.to_numpy())
    for (r, c), v in np.ndenumerate(m.to_numpy()):  # dark text on the light (low) cells
        ax.text(c, r, f"{v:.3f}", ha="center", va="center", fontsize=8,
                color="k" if v < mid else "w")
    ax.set_xticks(range(len(m.columns)), [f"{v:.0e}" for v in m.columns])
    ax.set_yticks(range(len(m.index)), [str(int(v)) for v in m.index])
    ax.set_xlabel("peak learning rate (Adam)")
    ax.set_ylabel("warm-up updates")
    ax.set_title(f"final validation bits per character after {s.steps} updates")
    fig.colorbar(im, ax=ax)
    return save_figure(fig, out, "lr_warmup_heatmap")


def run(out: Path, quick: bool) -> dict:
    try:
        import flax  # noqa: F401
    except ImportError:
        print(f"{NAME}: flax is not installed (pip install flax, or the test extra): skipped")
        return {"skipped": "flax not installed"}
    out = Path(out) / NAME
    s = QUICK if quick else FULL
    train, val = corpus(s)
    loss, params0 = make_loss(s)
    kw = dict(optimizer="adam", schedule="warmup_cosine", hparams={"decay_steps": s.steps},
              grid={"learning_rate": list(s.lrs), "warmup_steps": list(s.warmups)},
              batch_size=s.batch, windows=s.context, steps=s.steps, eval_every=s.eval_every,
              val_data=val, seed=SEED)
    timed = {}
    for label, method in (("grid", None), ("Hyperband", search.hyperband(
            eta=3, min_epochs=s.eval_every))):
        t0 = time.perf_counter()
        timed[label] = (jaxgd.sweep(loss, params0, train, search=method, **kw),
                        time.perf_counter() - t0)
    (grid, grid_s), (hb, hb_s) = timed["grid"], timed["Hyperband"]

    table = pd.DataFrame({"learning_rate": grid.table["learning_rate"],
                          "warmup_steps": grid.table["warmup_steps"].astype(int),
                          "final val bpc": grid.table["final_val_loss"] / LN2,
                          "best val bpc": grid.table["best_val_loss"] / LN2,
                          "stop_reason": grid.table["stop_reason"]})
    save_table(table, out, "lr_warmup_grid")
    best_i = int(np.nanargmin(grid.table["final_val_loss"]))
    lr = float(grid.configs[best_i]["learning_rate"])
    warmup = int(grid.configs[best_i]["warmup_steps"])

    _, ref_curve, val_err, param_err = parity(loss, params0, train, val, s, lr, warmup)
    f32_err = float(np.max(np.abs(grid.history["val_loss"][best_i] - ref_curve) / ref_curve))
    steps_grid, steps_hb = int(grid.table["steps_run"].sum()), int(hb.table["steps_run"].sum())
    hb_best = float(np.nanmin(hb.table["best_val_loss"])) / LN2
    grid_best = float(table["best val bpc"].min())
    search_table = pd.DataFrame([
        {"method": f"grid ({len(grid)} configurations)", "best val bpc": grid_best,
         "optimizer updates": steps_grid, "seconds": grid_s},
        {"method": "Hyperband (eta=3)", "best val bpc": hb_best,
         "optimizer updates": steps_hb, "seconds": hb_s}])
    save_table(search_table, out, "hyperband_vs_grid")
    save_table(pd.DataFrame([{"configuration": f"lr {lr:g}, warm-up {warmup}",
                              "max relative val-loss difference (float64)": val_err,
                              "max abs parameter difference (float64)": param_err,
                              "float32 sweep row: max relative val-loss difference": f32_err,
                              "tolerances": f"{VAL_TOL:g} / {PARAM_TOL:g}"}]),
               out, "parity_optax_loop")
    _curves_figure(grid, hb, ref_curve, best_i, out)
    _heatmap(table, s, out)
    return {
        "model": f"{s.layers}-layer char transformer d={s.dim}, L={s.context}, B={s.batch}, "
                 f"{s.steps} updates, {len(train)} training chars",
        "best (lr, warm-up)": (lr, warmup),
        "best final val bpc": round(float(table["final val bpc"][best_i]), 4),
        "worst final val bpc": round(float(table["final val bpc"].max()), 4),
        "unigram val bpc": round(unigram_bpc(train, val), 4),
        "Hyperband best val bpc / grid's": round(hb_best / grid_best, 4),
        "Hyperband updates / grid's": round(steps_hb / steps_grid, 3),
        "val curve rel diff vs optax loop": val_err,
        "params max abs diff vs optax loop": param_err,
        "float32 sweep row vs float64 loop, val rel diff": f32_err,
    }


if __name__ == "__main__":
    from experiments._common import main

    main(run, __doc__)
