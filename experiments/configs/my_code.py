"""Data, model and loss of ``my_code.toml``: a configuration's own Python functions.

``jaxgd sweep experiments/configs/my_code.toml`` imports this file and calls
``digits(**[data.kwargs])``, ``mlp(**[model.kwargs])`` and trains
``smoothed_ce(params, batch, apply=..., **[loss.kwargs])``.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxgd


def digits(val_fraction=0.2, seed=0):
    """8x8 digit images ``[n, 8, 8]`` and labels 0..9: ``((x, y), (x_val, y_val))``."""
    ds = jaxgd.datasets.load("digits")
    x, y = ds.x.reshape(-1, 8, 8), ds.y
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(val_fraction * len(x)))
    va, tr = order[:n_val], order[n_val:]
    return (x[tr], y[tr]), (x[va], y[va])


def mlp(classes=10, activation="relu"):
    """``(init, apply)``: one hidden layer; ``width`` is a shape axis [sweep] may vary."""
    act = {"relu": jax.nn.relu, "tanh": jnp.tanh}[activation]

    def init(key, *, width=32):
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (64, width)) / 8.0, "b1": jnp.zeros(width),
                "w2": jax.random.normal(k2, (width, classes)) / jnp.sqrt(width),
                "b2": jnp.zeros(classes)}

    def apply(params, x):
        h = act(x.reshape(len(x), -1) @ params["w1"] + params["b1"])
        return h @ params["w2"] + params["b2"]

    return init, apply


def smoothed_ce(params, batch, apply, smoothing=0.0):
    """Softmax cross-entropy with label smoothing; the classification error as a metric."""
    x, y = batch
    logits = apply(params, x)
    k = logits.shape[-1]
    target = jax.nn.one_hot(y, k) * (1 - smoothing) + smoothing / k
    loss = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))
    return loss, {"error": jnp.mean(jnp.argmax(logits, -1) != y)}
