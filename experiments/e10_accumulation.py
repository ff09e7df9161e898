"""Gradient accumulation: k micro-batches of B give the update of one batch of k*B.

An MLP regression (N = 1000, so the last batch of an epoch is short) is trained with SGD +
momentum in float64 two ways: ``fit(batch_size=B, accumulate=k)`` and
``fit(batch_size=k*B)``, same data order (the shuffle depends on the key, not on the batch
size), for k in {2, 4, 8}. The parameters agree to round-off. A PyTorch reference
accumulates by hand: it walks the same batches of k*B (each epoch's order taken from
``jaxgd.data.epoch_permutation``, the shuffle ``fit`` uses), calls ``backward()`` on
each B-sample piece weighted by its share of the batch, and steps ``torch.optim.SGD`` once
per k*B samples. With N = 1000 and k*B = 64 the last update holds 40 samples and its
gradient is their mean (PyTorch's ``DataLoader`` convention), in both libraries.
PyTorch is optional (the [test] extra): without it the PyTorch column reads "not
installed" and only the jaxgd-vs-large-batch parity is asserted.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import jaxgd
from experiments._common import NOT_INSTALLED, check, main, optional_torch, save_figure, save_table
from jaxgd import losses, models

NAME = "e10_accumulation"
B = 8
KS = (2, 4, 8)
HP = {"learning_rate": 0.05, "momentum": 0.9}
TOL_JAX = 1e-10  # accumulate=k vs batch k*B, float64
TOL_TORCH = 1e-9  # jaxgd vs PyTorch manual accumulation, float64
torch = optional_torch()  # None without PyTorch


def make_data(n: int, seed: int = 0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, 5))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.1 * r.normal(size=n)
    return x, y


def flat(params) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(params)])


def torch_accumulate(params, x, y, k: int, epochs: int, key) -> np.ndarray:
    """SGD+momentum on an MLP with manual gradient accumulation over pieces of B samples."""
    layers = params["layers"]
    ws = [torch.tensor(np.asarray(la["w"]), requires_grad=True) for la in layers]
    bs = [torch.tensor(np.asarray(la["b"]), requires_grad=True) for la in layers]
    trainable = [p for pair in zip(ws, bs, strict=True) for p in pair]
    opt = torch.optim.SGD(trainable, lr=HP["learning_rate"], momentum=HP["momentum"])
    n = len(y)

    def forward(xb):
        h = xb
        for w, b in zip(ws[:-1], bs[:-1], strict=True):
            h = torch.tanh(h @ w + b)
        return (h @ ws[-1] + bs[-1])[:, 0]

    for epoch in range(epochs):
        order = np.asarray(jaxgd.data.epoch_permutation(key, epoch, n))
        xt, yt = torch.tensor(x[order]), torch.tensor(y[order])
        for start in range(0, n, k * B):
            big = slice(start, min(start + k * B, n))
            m = big.stop - big.start
            opt.zero_grad()
            if m == k * B:
                pieces = [slice(s, s + B) for s in range(big.start, big.stop, B)]
            else:  # the short last batch: one piece, as jaxgd does
                pieces = [big]
            for p in pieces:
                share = (p.stop - p.start) / m
                loss = torch.mean((forward(xt[p]) - yt[p]) ** 2) * share
                loss.backward()
            opt.step()
    # in jax.tree.leaves order of {"layers": [{"b", "w"}, ...]}
    pairs = zip(bs, ws, strict=True)
    return np.concatenate([t.detach().numpy().ravel() for pair in pairs for t in pair])


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    n = 1000
    epochs, ks = (2, (4,)) if quick else (10, KS)
    x, y = make_data(n)
    rows = []
    curves = {}
    with jax.enable_x64(True):
        model = models.mlp(5, (16, 16), activation="tanh")
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.key(0)))
        loss = losses.make_loss(model.apply, "mse")
        for k in ks:
            key = jax.random.key(1)
            common = dict(optimizer="momentum", hparams=HP, epochs=epochs, key=key)
            t0 = time.perf_counter()
            acc = jaxgd.fit(loss, params, (x, y), batch_size=B, accumulate=k, **common)
            t1 = time.perf_counter()
            big = jaxgd.fit(loss, params, (x, y), batch_size=k * B, **common)
            t2 = time.perf_counter()
            ref = torch_accumulate(params, x, y, k, epochs, key) if torch else None
            pa, pb = flat(acc.params), flat(big.params)
            plan = jaxgd.batch_plan(n, k * B)
            rows.append({
                "k": k, "micro_batch": B, "update_batch": k * B,
                "updates_per_epoch": plan.steps_per_epoch,
                "last_update_samples": plan.last_batch_size or k * B,
                "steps_run_accumulate": acc.steps_run, "steps_run_big_batch": big.steps_run,
                "max_abs_diff_vs_big_batch": float(np.abs(pa - pb).max()),
                "max_abs_diff_vs_torch": (float(np.abs(pa - ref).max()) if ref is not None
                                          else NOT_INSTALLED),
                "max_abs_param": float(np.abs(pb).max()),
                "time_accumulate_s": t1 - t0, "time_big_batch_s": t2 - t1,
            })
            curves[k] = (acc.history["loss"], big.history["loss"])
    table = pd.DataFrame(rows)
    save_table(table.drop(columns=["time_accumulate_s", "time_big_batch_s"]), out,
               "accumulation")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for k, (la, lb) in curves.items():
        ep = np.arange(1, len(la) + 1)
        (line,) = axes[0].plot(ep, lb, lw=3, alpha=0.4, label=f"batch {k * B}")
        axes[0].plot(ep, la, "--", color=line.get_color(), label=f"{k} x {B} accumulated")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training MSE")
    axes[0].set_title("Accumulated vs large batch (curves coincide)")
    axes[0].legend(fontsize=8)
    axes[1].bar(np.arange(len(ks)) - 0.2, np.maximum(table.max_abs_diff_vs_big_batch, 1e-17),
                0.4, label="accumulate=k vs batch k*B (jaxgd)")
    if torch is not None:
        axes[1].bar(np.arange(len(ks)) + 0.2,
                    np.maximum(table.max_abs_diff_vs_torch.astype(float), 1e-17), 0.4,
                    label="jaxgd vs PyTorch manual accumulation")
    else:
        axes[1].text(0.5, 0.9, f"PyTorch {NOT_INSTALLED}", transform=axes[1].transAxes,
                     ha="center", fontsize=7)
    axes[1].set_xticks(np.arange(len(ks)), [f"k = {k}" for k in ks])
    axes[1].set_yscale("log")
    axes[1].set_ylabel(f"max |parameter difference| after {epochs} epochs (float64)")
    axes[1].legend(fontsize=8)
    save_figure(fig, out, "accumulation")

    err_big = check("accumulate=k vs batch k*B", float(table.max_abs_diff_vs_big_batch.max()),
                    TOL_JAX)
    err_torch = (check("accumulation vs PyTorch", float(table.max_abs_diff_vs_torch.max()),
                       TOL_TORCH) if torch is not None else NOT_INSTALLED)
    return {"max_abs_diff_vs_big_batch": err_big, "max_abs_diff_vs_torch": err_torch,
            "ks": list(ks)}


if __name__ == "__main__":
    main(run, __doc__)
