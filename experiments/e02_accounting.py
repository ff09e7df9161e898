"""Epoch / batch / iteration accounting: steps per epoch and the size of the last batch.

For N = 50 000 samples and B in {1, 32, 256, 50 000}, ``jaxgd.batch_plan`` is compared with a
direct count of the textbook loop that slices ``range(N)`` in order (``drop_last=False`` and
``True``), and with PyTorch's ``DataLoader`` batch sampler when PyTorch is installed.
A real small ``fit`` confirms that ``steps_run == epochs * steps_per_epoch``.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import matplotlib.pyplot as plt
import pandas as pd

import jaxgd
from experiments._common import NOT_INSTALLED, check, main, save_figure, save_table

NAME = "e02_accounting"
N = 50_000
BATCH_SIZES = (1, 32, 256, 50_000)


def slicing_loop(n: int, b: int, drop_last: bool) -> list[int]:
    """Batch sizes of one epoch of ``for s in range(0, n, b): batch = idx[s:s+b]``."""
    idx = range(n)
    sizes = [len(idx[s:s + b]) for s in range(0, n, b)]
    if drop_last and sizes and sizes[-1] < b:
        sizes.pop()
    return sizes


def torch_sizes(n: int, b: int, drop_last: bool) -> list[int] | None:
    try:
        from torch.utils.data import BatchSampler, SequentialSampler
    except ImportError:  # PyTorch is an optional reference
        return None
    return [len(x) for x in BatchSampler(SequentialSampler(range(n)), b, drop_last)]


def loss(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    rows = []
    mismatches = 0
    for drop_last in (False, True):
        for b in BATCH_SIZES:
            plan = jaxgd.batch_plan(N, b, drop_last)
            last = plan.last_batch_size if plan.last_batch_size else plan.batch_size
            loop = slicing_loop(N, b, drop_last)
            ts = torch_sizes(N, b, drop_last)
            ok = plan.steps_per_epoch == len(loop) and last == loop[-1]
            ok &= sum([plan.batch_size] * plan.full_steps) + plan.last_batch_size == sum(loop)
            if ts is not None:
                ok &= ts == loop
            mismatches += not ok
            rows.append({"N": N, "B": b, "drop_last": drop_last,
                         "steps_per_epoch": plan.steps_per_epoch,
                         "full_batches": plan.full_steps, "last_batch": last,
                         "samples_seen": plan.full_steps * plan.batch_size + plan.last_batch_size,
                         "loop_steps": len(loop), "loop_last_batch": loop[-1],
                         "torch_steps": len(ts) if ts is not None else NOT_INSTALLED,
                         "torch_last_batch": ts[-1] if ts is not None else NOT_INSTALLED,
                         "agree": ok})
    check("batch_plan vs slicing loop / DataLoader (mismatching rows)", mismatches, 0)
    p256 = jaxgd.batch_plan(N, 256)
    check("B=256 -> 196 steps", abs(p256.steps_per_epoch - 196), 0)
    check("B=256 -> last batch of 80", abs(p256.last_batch_size - 80), 0)
    table = pd.DataFrame(rows)
    save_table(table, out, "batch_plan")

    # a real fit: count the updates it applies
    n_fit = 1_000 if quick else 10_000
    epochs = 2 if quick else 3
    ds = jaxgd.datasets.synthetic_regression(n_fit, 4, seed=0)
    params0 = {"w": jnp.zeros(4), "b": jnp.zeros(())}
    fit_rows = []
    # every (B, drop_last) is its own compiled program: quick mode checks three of them
    cases = ([(1, False), (32, True), (256, False)] if quick else
             [(b, d) for b in (1, 32, 256, None) for d in (False, True)])
    for b, drop_last in cases:
        r = jaxgd.fit(loss, params0, (ds.x, ds.y), hparams={"learning_rate": 1e-3},
                      batch_size=b, epochs=epochs, drop_last=drop_last, key=0)
        spe = jaxgd.batch_plan(n_fit, b, drop_last).steps_per_epoch
        check(f"fit steps_run (B={b}, drop_last={drop_last})",
              abs(r.steps_run - epochs * spe), 0)
        fit_rows.append({"N": n_fit, "B": "full" if b is None else b, "drop_last": drop_last,
                         "epochs": epochs, "steps_per_epoch": spe,
                         "expected_steps": epochs * spe, "steps_run": r.steps_run,
                         "final_loss": r.final_loss})
    save_table(pd.DataFrame(fit_rows), out, "fit_steps")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    t = table[~table["drop_last"]]
    labels = [str(b) for b in t["B"]]
    bars = axes[0].bar(labels, t["steps_per_epoch"], color="tab:blue")
    axes[0].set(yscale="log", xlabel="batch size B", ylabel="updates per epoch",
                title=f"N = {N:,}: ceil(N/B) updates per epoch")
    for bar, v in zip(bars, t["steps_per_epoch"], strict=True):
        axes[0].text(bar.get_x() + bar.get_width() / 2, v, f"{v:,}", ha="center",
                     va="bottom", fontsize=8)
    bars = axes[1].bar(labels, t["last_batch"], color="tab:orange")
    axes[1].set(yscale="log", xlabel="batch size B", ylabel="samples in the last batch",
                title="last batch = N mod B (or B when it divides N)")
    for bar, v in zip(bars, t["last_batch"], strict=True):
        axes[1].text(bar.get_x() + bar.get_width() / 2, v, f"{v:,}", ha="center",
                     va="bottom", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    save_figure(fig, out, "steps_per_epoch")

    return {
        "B=256": f"{p256.steps_per_epoch} steps, last of {p256.last_batch_size}",
        "steps_per_epoch": dict(zip(map(int, t["B"]), map(int, t["steps_per_epoch"]), strict=True)),
        "rows_agreeing": f"{len(table) - mismatches}/{len(table)}",
        "torch_checked": True if torch_sizes(1, 1, False) is not None else NOT_INSTALLED,
        "fit_steps_checked": len(fit_rows),
    }


if __name__ == "__main__":
    main(run, __doc__)
