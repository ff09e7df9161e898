"""Public training scripts ported as their authors wrote them: equinox's MNIST example
(``docs/examples/mnist.ipynb``: an ``eqx.Module`` CNN whose layer list holds functions and
pooling layers, ``loss(model, x, y)``, ``optax.adamw``, a shuffling PyTorch ``DataLoader``
read by an endless generator for a number of steps), sized for scikit-learn's 8x8 digits.
The tutorial's own loop (``eqx.filter_jit`` step) is the reference."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd

torch = pytest.importorskip("torch")  # the test extra installs it

STEPS, BATCH = 40, 64


class CNN(eqx.Module):
    layers: list

    def __init__(self, key):
        key1, key2, key3, key4 = jax.random.split(key, 4)
        # Standard CNN setup: convolutional layer, followed by flattening,
        # with a small MLP on top (48 = 3 channels x 4 x 4 for 8x8 digits).
        self.layers = [
            eqx.nn.Conv2d(1, 3, kernel_size=4, key=key1),
            eqx.nn.MaxPool2d(kernel_size=2),
            jax.nn.relu,
            jnp.ravel,
            eqx.nn.Linear(48, 512, key=key2),
            jax.nn.sigmoid,
            eqx.nn.Linear(512, 64, key=key3),
            jax.nn.relu,
            eqx.nn.Linear(64, 10, key=key4),
            jax.nn.log_softmax,
        ]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def loss(model, x, y):
    pred_y = jax.vmap(model)(x)
    return cross_entropy(y, pred_y)


def cross_entropy(y, pred_y):
    pred_y = jnp.take_along_axis(pred_y, jnp.expand_dims(y, 1), axis=1)
    return -jnp.mean(pred_y)


def trainloader():
    """The tutorial's shuffling loader over digits, as it builds it (``drop_last`` left at
    False: each pass of 1797 samples ends with a batch of 5), with a seeded generator (the
    same batches for every run)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images[:, None] / 16).astype(np.float32))
    y = torch.from_numpy(d.target.astype(np.int64))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                       batch_size=BATCH, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


def infinite(loader):
    while True:
        yield from loader


def tutorial_train(model, loader, optim, steps):
    """The tutorial's ``train`` (its evaluation and printing left out)."""
    opt_state = optim.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def make_step(model, opt_state, x, y):
        loss_value, grads = eqx.filter_value_and_grad(loss)(model, x, y)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
        return model, opt_state, loss_value

    losses = []
    for _, (x, y) in zip(range(steps), infinite(loader), strict=False):
        model, opt_state, train_loss = make_step(model, opt_state, x.numpy(), y.numpy())
        losses.append(float(train_loss))
    return model, losses


@pytest.mark.parametrize("loop", ["auto", "scan"])
def test_equinox_mnist_example_as_written(loop):
    """``jaxgd.fit`` takes the tutorial's model, loss and loader as they are (the batches
    as NumPy, as the tutorial's loop converts them; update 28 on a pass's short batch of 5):
    the same parameters and per-step losses as the tutorial's loop; ``loop="auto"`` runs
    the host loop (a convolution on the CPU), the scan plan gives the same to float
    rounding (its block holding the short batch in the host plan)."""
    model = CNN(jax.random.PRNGKey(5678))
    optim = optax.adamw(3e-4)
    ref, ref_losses = tutorial_train(model, trainloader(), optim, STEPS)
    sizes = [len(y) for _, (_, y) in zip(range(STEPS), infinite(trainloader()), strict=False)]
    assert sizes[28] == 5 and set(sizes[:28] + sizes[29:]) == {BATCH}
    batches = ((x.numpy(), y.numpy()) for x, y in infinite(trainloader()))
    res = jaxgd.fit(lambda m, b: loss(m, *b), model, batches, optimizer=optim,
                    steps=STEPS, shuffle=False, loop=loop)
    assert res.loop == ("host" if loop == "auto" else "scan") and res.steps_run == STEPS
    assert isinstance(res.params, CNN)
    got = jax.tree.leaves(eqx.filter(res.params, eqx.is_array))
    want = jax.tree.leaves(eqx.filter(ref, eqx.is_array))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.history["batch_loss"], ref_losses, rtol=1e-5)
    # the learning rate of an optimizer object is not known to jaxgd: absent, not guessed
    assert np.isnan(res.history["lr"]).all()
