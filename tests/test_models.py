"""Models: shapes, gradients, and forward passes against NumPy / PyTorch references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxgd import models

KEY = jax.random.key(0)


def test_linear_zero_init_and_shapes():
    m = models.linear(3)
    p = m.init(KEY)
    assert p["w"].shape == (3, 1) and p["b"].shape == (1,)
    assert not np.any(np.asarray(p["w"])) and not np.any(np.asarray(p["b"]))
    out = m.apply(p, jnp.ones((5, 3)))
    assert out.shape == (5, 1)


def test_linear_matches_numpy_with_init_scale():
    m = models.linear(4, 2, init_scale=0.5)
    p = m.init(KEY)
    assert float(jnp.std(p["w"])) > 0.05
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    ref = x @ np.asarray(p["w"]) + np.asarray(p["b"])
    np.testing.assert_allclose(np.asarray(m.apply(p, x)), ref, rtol=1e-5, atol=1e-6)


def test_logistic_and_softmax_shapes():
    lg = models.logistic(2)
    assert lg.apply(lg.init(KEY), jnp.ones((4, 2))).shape == (4, 1)
    sm = models.softmax(4, 3)
    p = sm.init(KEY)
    assert p["w"].shape == (4, 3)
    assert sm.apply(p, jnp.ones((2, 4))).shape == (2, 3)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_mlp_matches_numpy_forward(activation):
    m = models.mlp(3, hidden=(5, 4), out_features=2, activation=activation)
    p = m.init(KEY)
    assert [layer["w"].shape for layer in p["layers"]] == [(3, 5), (5, 4), (4, 2)]
    x = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float64)
    act = {
        "relu": lambda z: np.maximum(z, 0),
        "tanh": np.tanh,
        "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    }[activation]
    h = x
    layers = [{k: np.asarray(v, np.float64) for k, v in layer.items()} for layer in p["layers"]]
    for layer in layers[:-1]:
        h = act(h @ layer["w"] + layer["b"])
    ref = h @ layers[-1]["w"] + layers[-1]["b"]
    np.testing.assert_allclose(np.asarray(m.apply(p, x.astype(np.float32))), ref, rtol=1e-4)


def test_mlp_init_scale_is_lecun_he():
    m = models.mlp(400, hidden=(300,), out_features=1, activation="relu")
    w = np.asarray(m.init(KEY)["layers"][0]["w"])
    assert abs(w.std() - np.sqrt(2 / 400)) < 0.05 * np.sqrt(2 / 400)
    m2 = models.mlp(400, hidden=(300,), activation="tanh")
    w2 = np.asarray(m2.init(KEY)["layers"][0]["w"])
    assert abs(w2.std() - np.sqrt(1 / 400)) < 0.05 * np.sqrt(1 / 400)


def test_cnn_matches_torch():
    m = models.cnn(10)
    p = m.init(KEY)
    x = np.random.default_rng(2).uniform(0, 16, size=(3, 64)).astype(np.float32)
    out = m.apply(p, x)
    assert out.shape == (3, 10)
    np.testing.assert_allclose(np.asarray(m.apply(p, x.reshape(3, 8, 8))), np.asarray(out))
    # torch reference: NCHW conv with OIHW weights, padding=1 == SAME for 3x3
    xt = torch.tensor(x.reshape(3, 1, 8, 8))
    wt = torch.tensor(np.asarray(p["conv"]["w"]).transpose(3, 2, 0, 1))
    h = torch.nn.functional.conv2d(xt, wt, torch.tensor(np.asarray(p["conv"]["b"])), padding=1)
    h = torch.nn.functional.max_pool2d(torch.relu(h), 2)
    h = h.permute(0, 2, 3, 1).reshape(3, -1)  # NHWC flatten order
    ref = h.numpy() @ np.asarray(p["dense"]["w"]) + np.asarray(p["dense"]["b"])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_rnn_matches_numpy_loop():
    m = models.rnn(2, 4, out_features=3)
    p = {k: v for k, v in m.init(KEY).items()}
    x = np.random.default_rng(3).normal(size=(5, 6, 2)).astype(np.float32)
    out = m.apply(p, x)
    assert out.shape == (5, 3)
    h = np.zeros((5, 4))
    for t in range(6):
        h = np.tanh(x[:, t] @ np.asarray(p["wx"]) + h @ np.asarray(p["wh"]) + np.asarray(p["bh"]))
    ref = h @ np.asarray(p["out"]["w"]) + np.asarray(p["out"]["b"])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name,kwargs,x",
    [
        ("linear", {"in_features": 3}, jnp.ones((4, 3))),
        ("logistic", {"in_features": 3}, jnp.ones((4, 3))),
        ("softmax", {"in_features": 3, "num_classes": 5}, jnp.ones((4, 3))),
        ("mlp", {"in_features": 3, "hidden": (8,)}, jnp.ones((4, 3))),
        ("cnn", {"num_classes": 10}, jnp.ones((4, 64))),
        ("rnn", {"in_features": 3, "hidden": 5}, jnp.ones((4, 7, 3))),
    ],
)
def test_grad_jit_vmap_work(name, kwargs, x):
    m = models.get_model(name, **kwargs)
    loss = lambda p: jnp.mean(m.apply(p, x) ** 2) + jnp.mean(m.apply(p, x))

    @jax.jit  # one compile per model: grad, and vmap over parameter sets (configurations)
    def run(key):
        p = m.init(key)
        ps = jax.vmap(m.init)(jax.random.split(key, 3))
        return p, jax.grad(loss)(p), jax.vmap(m.apply, in_axes=(0, None))(ps, x)

    p, g, outs = run(KEY)
    assert jax.tree.structure(g) == jax.tree.structure(p)
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(g)]
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
    assert any(np.max(np.abs(leaf)) > 0 for leaf in leaves)
    assert outs.shape[:2] == (3, x.shape[0])


def test_init_is_deterministic_per_key():
    m = models.mlp(3, (4,))
    a, b, c = m.init(KEY), m.init(KEY), m.init(jax.random.key(1))
    assert all(
        np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    assert not np.array_equal(a["layers"][0]["w"], c["layers"][0]["w"])


@pytest.mark.parametrize(
    "call,arg",
    [
        (lambda: models.linear(0), "in_features"),
        (lambda: models.linear(3, -1), "out_features"),
        (lambda: models.linear(2, init_scale=-1.0), "init_scale"),
        (lambda: models.softmax(3, 0), "num_classes"),
        (lambda: models.mlp(3, hidden=(4, 0)), "hidden[1]"),
        (lambda: models.mlp(3, hidden=4), "hidden"),
        (lambda: models.mlp(3, activation="gelu"), "activation"),
        (lambda: models.cnn(0), "num_classes"),
        (lambda: models.rnn(3, 0), "hidden"),
        (lambda: models.get_model("resnet"), "resnet"),
    ],
)
def test_invalid_arguments_raise(call, arg):
    with pytest.raises(ValueError, match=arg.replace("[", r"\[").replace("]", r"\]")):
        call()


@pytest.mark.parametrize("bad", [True, 2.5])
def test_non_integer_sizes_raise_type_error(bad):
    with pytest.raises(TypeError, match="in_features"):
        models.linear(bad)


def test_get_model_lists_valid_names():
    with pytest.raises(ValueError, match="mlp"):
        models.get_model("nope")
