"""Digits (8x8 images, 10 classes): softmax regression, an MLP and a small CNN with Adam.

``jaxgd.datasets.load("digits")``, pixels scaled to [0, 1], a random 80/20 train/test
split (``jaxgd.data.train_val_split``). Each model is one ``jaxgd.fit`` with Adam,
mini-batches of 64 and the test set as ``val_data`` (its loss recorded every epoch);
accuracy from ``jaxgd.losses.accuracy``. The softmax regression carries the L2 penalty
that matches scikit-learn's ``LogisticRegression(C=1)`` (``l2 = 1 / (C n_train)`` with a
mean loss), and its test accuracy is compared with scikit-learn's.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

import jaxgd
from experiments._common import check, main, save_figure, save_table
from jaxgd import data, losses, models

NAME = "e14_digits"
C = 1.0
ACC_TOL = 0.02  # |softmax regression accuracy - sklearn LogisticRegression accuracy|


def run(out: Path, quick: bool) -> dict:
    out = Path(out) / NAME
    ds = jaxgd.datasets.load("digits")
    x = (ds.x / 16.0).astype(np.float32)
    y = ds.y
    tr, te = data.train_val_split(len(y), 0.2, 0)
    n_train = len(tr)
    epochs = 4 if quick else 30
    k = ds.num_classes
    specs = {
        "softmax regression": (models.softmax(64, k), {"learning_rate": 1e-2,
                                                       "l2": 1.0 / (C * n_train)}),
        "MLP 64-64-10": (models.mlp(64, (64,), k), {"learning_rate": 3e-3}),
        "CNN (3x3 conv x 8, pool, dense)": (models.cnn(k, channels=8), {"learning_rate": 3e-3}),
    }
    rows, hist = [], {}
    for name, (model, hp) in specs.items():
        loss = losses.make_loss(model.apply, "softmax_ce")
        params = model.init(jax.random.key(0))
        t0 = time.perf_counter()
        r = jaxgd.fit(loss, params, (x[tr], y[tr]), val_data=(x[te], y[te]), optimizer="adam",
                      hparams=hp, batch_size=64, epochs=epochs, key=0)
        secs = time.perf_counter() - t0
        n_params = sum(int(np.size(a)) for a in jax.tree.leaves(params))
        rows.append({
            "model": name, "parameters": n_params, "learning_rate": hp["learning_rate"],
            "l2": hp.get("l2", 0.0), "epochs": r.epochs_run,
            "train_accuracy": float(losses.accuracy(model.apply(r.params, x[tr]), y[tr])),
            "test_accuracy": float(losses.accuracy(model.apply(r.params, x[te]), y[te])),
            "test_loss": float(r.history["val_loss"][-1]),
            "seconds (incl. compile)": secs,
        })
        hist[name] = r.history
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = LogisticRegression(C=C, max_iter=2000 if not quick else 200).fit(x[tr], y[tr])
    rows.append({"model": f"scikit-learn LogisticRegression(C={C:g})",
                 "parameters": sk.coef_.size + sk.intercept_.size, "learning_rate": np.nan,
                 "l2": 1.0 / (C * n_train), "epochs": np.nan,
                 "train_accuracy": sk.score(x[tr], y[tr]), "test_accuracy": sk.score(x[te], y[te]),
                 "test_loss": np.nan, "seconds (incl. compile)": np.nan})
    table = pd.DataFrame(rows)
    save_table(table, out, "accuracy")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    for i, (name, h) in enumerate(hist.items()):
        ep = np.arange(1, len(h["loss"]) + 1)
        axes[0].plot(ep, h["loss"], color=f"C{i}", label=f"{name} train")
        axes[0].plot(ep, h["val_loss"], "--", color=f"C{i}", label=f"{name} test")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("cross-entropy")
    axes[0].set_title("Digits, Adam, batch 64")
    axes[0].legend(fontsize=7)
    ax = axes[1]
    ax.barh(np.arange(len(table)), table.test_accuracy, color=[f"C{i}" for i in range(len(table))])
    for i, a in enumerate(table.test_accuracy):
        ax.text(a, i, f" {a:.3f}", va="center", fontsize=8)
    ax.set_yticks(np.arange(len(table)), table.model, fontsize=8)
    ax.set_xlim(0.8, 1.02)
    ax.set_xlabel(f"test accuracy ({len(te)} images)")
    save_figure(fig, out, "digits")

    acc = table.set_index("model").test_accuracy
    soft = float(acc["softmax regression"])
    sk_acc = float(acc[f"scikit-learn LogisticRegression(C={C:g})"])
    diff = check("softmax regression accuracy vs sklearn", abs(soft - sk_acc), ACC_TOL)
    return {
        "test_accuracy": {m: round(float(a), 4) for m, a in acc.items()},
        "softmax_vs_sklearn_accuracy_diff": diff,
    }


if __name__ == "__main__":
    main(run, __doc__)
