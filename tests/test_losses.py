"""Losses and penalties against NumPy/SciPy formulas and torch.nn.functional."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import torch
import torch.nn.functional as F

from jaxgd import losses, models

RNG = np.random.default_rng(0)


def test_mse_and_half_mse_closed_form():
    pred = RNG.normal(size=(8, 1)).astype(np.float32)
    y = RNG.normal(size=8).astype(np.float32)
    ref = np.mean((pred[:, 0].astype(np.float64) - y) ** 2)
    np.testing.assert_allclose(float(losses.mse(pred, y)), ref, rtol=1e-5)
    np.testing.assert_allclose(float(losses.half_mse(pred, y)), ref / 2, rtol=1e-5)
    # torch reference
    t = F.mse_loss(torch.tensor(pred[:, 0]), torch.tensor(y)).item()
    np.testing.assert_allclose(float(losses.mse(pred, y)), t, rtol=1e-5)


def test_half_mse_multi_output_divides_by_batch():
    pred = RNG.normal(size=(5, 3))
    y = RNG.normal(size=(5, 3))
    ref = np.sum((pred - y) ** 2) / (2 * 5)
    np.testing.assert_allclose(float(losses.half_mse(pred, y)), ref, rtol=1e-5)


def test_shape_mismatch_raises_instead_of_broadcasting():
    with pytest.raises(ValueError, match="shape"):
        losses.mse(jnp.ones((4, 2)), jnp.ones(3))


def test_half_mse_gradient_is_textbook():
    x = RNG.normal(size=(6, 2)).astype(np.float32)
    y = RNG.normal(size=6).astype(np.float32)
    w = np.array([0.3, -0.2], np.float32)
    g = jax.grad(lambda w: losses.half_mse(x @ w, y))(w)
    np.testing.assert_allclose(np.asarray(g), x.T @ (x @ w - y) / 6, rtol=1e-4, atol=1e-6)


def test_bce_matches_torch_and_scipy():
    z = RNG.normal(scale=3, size=(10, 1)).astype(np.float32)
    y = RNG.integers(0, 2, size=10).astype(np.float32)
    ours = float(losses.binary_cross_entropy(z, y))
    t = F.binary_cross_entropy_with_logits(torch.tensor(z[:, 0]), torch.tensor(y)).item()
    p = scipy.special.expit(z[:, 0].astype(np.float64))
    ref = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(ours, t, rtol=1e-5)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


def test_bce_extreme_logits_finite():
    z = np.array([[1000.0], [-1000.0], [1000.0], [-1000.0]], np.float32)
    y = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    ours = losses.binary_cross_entropy(z, y)
    t = F.binary_cross_entropy_with_logits(torch.tensor(z[:, 0]), torch.tensor(y)).item()
    assert np.isfinite(float(ours))
    np.testing.assert_allclose(float(ours), t, rtol=1e-6)  # (0 + 0 + 1000 + 1000) / 4
    g = jax.grad(losses.binary_cross_entropy)(jnp.asarray(z), y)
    assert bool(jnp.all(jnp.isfinite(g)))
    zt = torch.tensor(z[:, 0], requires_grad=True)
    F.binary_cross_entropy_with_logits(zt, torch.tensor(y)).backward()
    np.testing.assert_allclose(np.asarray(g)[:, 0], zt.grad.numpy(), atol=1e-7)


def test_softmax_ce_matches_torch_including_extremes():
    z = RNG.normal(scale=2, size=(7, 4)).astype(np.float32)
    z[0] = [1000.0, -1000.0, 0.0, 500.0]
    z[1] = [-1000.0, -1000.0, -1000.0, 1000.0]
    labels = np.array([1, 0, 2, 3, 1, 0, 2], np.int32)
    ours = losses.softmax_cross_entropy(z, labels)
    t = F.cross_entropy(torch.tensor(z), torch.tensor(labels, dtype=torch.long)).item()
    assert np.isfinite(float(ours))
    np.testing.assert_allclose(float(ours), t, rtol=1e-5)
    g = jax.grad(losses.softmax_cross_entropy)(jnp.asarray(z), labels)
    assert bool(jnp.all(jnp.isfinite(g)))
    ref = -np.mean(
        scipy.special.log_softmax(z[2:].astype(np.float64), axis=1)[np.arange(5), labels[2:]]
    )
    part = losses.softmax_cross_entropy(z[2:], labels[2:])
    np.testing.assert_allclose(float(part), ref, rtol=1e-5)


def test_softmax_ce_label_shape_checked():
    with pytest.raises(ValueError, match="labels"):
        losses.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.zeros((2,), jnp.int32))


def test_accuracy_binary_and_multiclass():
    assert float(losses.accuracy(jnp.array([[2.0], [-1.0], [0.5]]), jnp.array([1, 0, 0]))) == (
        pytest.approx(2 / 3)
    )
    assert float(losses.accuracy(jnp.array([2.0, -1.0]), jnp.array([1.0, 1.0]))) == 0.5
    z = RNG.normal(size=(20, 5))
    lab = RNG.integers(0, 5, size=20)
    assert float(losses.accuracy(z, lab)) == pytest.approx(np.mean(z.argmax(1) == lab))


def test_penalties_with_default_mask():
    params = {
        "w": jnp.array([1.0, -2.0]),
        "b": jnp.array([5.0]),
        "layers": [{"w": jnp.array([[3.0]]), "bias": jnp.array([7.0])}],
    }
    mask = losses.default_penalty_mask(params)
    assert mask == {"w": True, "b": False, "layers": [{"w": True, "bias": False}]}
    assert float(losses.l1(params)) == 6.0
    assert float(losses.l2(params)) == 0.5 * (1 + 4 + 9)
    assert float(losses.elastic_net(params, 0.1, 2.0)) == pytest.approx(0.6 + 14.0)
    all_true = jax.tree.map(lambda _: True, params)
    assert float(losses.l1(params, all_true)) == 18.0
    assert float(losses.l2(params, all_true)) == 0.5 * (1 + 4 + 25 + 9 + 49)


def test_l2_gradient_is_weights_and_traced_strengths():
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([5.0])}
    g = jax.grad(losses.l2)(params)
    np.testing.assert_array_equal(np.asarray(g["w"]), [1.0, -2.0])
    np.testing.assert_array_equal(np.asarray(g["b"]), [0.0])
    f = jax.jit(jax.vmap(lambda a: losses.elastic_net(params, a, a)))
    np.testing.assert_allclose(np.asarray(f(jnp.array([0.0, 1.0]))), [0.0, 3.0 + 2.5])


def test_make_loss_and_get_loss():
    m = models.linear(1)
    x = jnp.array([[1.0], [2.0], [3.0]])
    y = jnp.array([2.0, 4.0, 6.0])
    p = m.init(jax.random.key(0))
    assert float(losses.make_loss(m.apply, "half_mse")(p, (x, y))) == pytest.approx(56 / 6)
    assert float(losses.make_loss(m.apply, "mse")(p, (x, y))) == pytest.approx(56 / 3)
    assert float(losses.make_loss(m.apply, "bce")(p, (x, jnp.ones(3)))) == pytest.approx(
        np.log(2), rel=1e-6
    )
    sm = models.softmax(1, 3)
    ce = losses.make_loss(sm.apply, "softmax_ce")(
        sm.init(jax.random.key(0)), (x, jnp.array([0, 1, 2]))
    )
    assert float(ce) == pytest.approx(np.log(3), rel=1e-6)
    with pytest.raises(ValueError, match="half_mse"):
        losses.get_loss("hinge")
    with pytest.raises(ValueError, match="hinge"):
        losses.make_loss(m.apply, "hinge")


def test_bce_gradient_at_zero_logit_is_sigmoid_minus_label():
    # zero-initialised logistic models start at z = 0, where max(z, 0) and |z| have a kink
    z = jnp.array([0.0, 0.0, 3.0, -2.0])
    y = jnp.array([1.0, 0.0, 1.0, 0.0])
    g = jax.grad(lambda z: losses.binary_cross_entropy(z, y))(z)
    expected = (1.0 / (1.0 + np.exp(-np.asarray(z))) - np.asarray(y)) / len(z)
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-6, atol=1e-7)
