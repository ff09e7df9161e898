"""More public training scripts ported as their authors wrote them, each compared with its
own loop (the reference), sized for scikit-learn's digits or small synthetic data:

- flax linen's ``examples/mnist/train.py``: ``TrainState`` with ``apply_fn``,
  ``optax.sgd(lr, momentum)``, per-epoch ``jax.random.permutation`` orders with the partial
  last batch skipped (``steps_per_epoch = train_ds_size // batch_size``), epoch means of
  the batch loss and accuracy, test loss and accuracy after every epoch;
- equinox's ``docs/examples/stateful.ipynb``: ``eqx.nn.make_with_state`` (BatchNorm and
  SpectralNorm state in an ``eqx.nn.State``), ``vmap(..., axis_name="batch")``, full-batch
  Adam, inference through ``eqx.nn.inference_mode``;
- equinox's ``docs/examples/train_rnn.ipynb``: a GRU over ``lax.scan``, an endless NumPy
  dataloader dropping each pass's incomplete batch, Adam for a number of steps;
- flax's ``examples/nnx_toy_examples/01_functional_api.py``: ``nnx.split`` into
  ``nnx.Param`` and a ``Count`` variable the model increments at every call, batches drawn
  with replacement by an endless generator, SGD by hand, a test loss every 100 steps;
- optax's ``optax.lookahead`` example: ``LookaheadParams``, gradients of ``params.fast``;
- optax's ``optax.contrib.schedule_free_adamw`` example.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd

# --------------------------------------------------------------------------- flax linen MNIST

nn = pytest.importorskip("flax.linen")
train_state = pytest.importorskip("flax.training.train_state")
eqx = pytest.importorskip("equinox")
nnx = pytest.importorskip("flax.nnx")

LR, MOMENTUM, BATCH, EPOCHS, N_TRAIN = 0.1, 0.9, 128, 3, 1200


class LinenCNN(nn.Module):
    """The example's CNN (its 28x28 input read as digits' 8x8)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(features=32, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(features=64, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))  # flatten
        x = nn.Dense(features=256)(x)
        x = nn.relu(x)
        x = nn.Dense(features=10)(x)
        return x


@jax.jit
def apply_model(state, images, labels):
    """Computes gradients, loss and accuracy for a single batch (the example's)."""

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, images)
        one_hot = jax.nn.one_hot(labels, 10)
        loss = jnp.mean(optax.softmax_cross_entropy(logits=logits, labels=one_hot))
        return loss, logits

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return grads, loss, accuracy


@jax.jit
def update_model(state, grads):
    return state.apply_gradients(grads=grads)


def train_epoch(state, train_ds, batch_size, rng):
    """Train for a single epoch (the example's)."""
    train_ds_size = len(train_ds["image"])
    steps_per_epoch = train_ds_size // batch_size
    perms = jax.random.permutation(rng, len(train_ds["image"]))
    perms = perms[: steps_per_epoch * batch_size]  # skip incomplete batch
    perms = perms.reshape((steps_per_epoch, batch_size))
    epoch_loss, epoch_accuracy = [], []
    for perm in perms:
        batch_images = train_ds["image"][perm, ...]
        batch_labels = train_ds["label"][perm, ...]
        grads, loss, accuracy = apply_model(state, batch_images, batch_labels)
        state = update_model(state, grads)
        epoch_loss.append(loss)
        epoch_accuracy.append(accuracy)
    return state, np.mean(epoch_loss), np.mean(epoch_accuracy)


def create_train_state(rng):
    cnn = LinenCNN()
    params = cnn.init(rng, jnp.ones([1, 8, 8, 1]))["params"]
    tx = optax.sgd(LR, MOMENTUM)
    return train_state.TrainState.create(apply_fn=cnn.apply, params=params, tx=tx)


def digits_split():
    ds = jaxgd.datasets.load("digits")
    image = np.asarray(ds.x / 16.0, np.float32).reshape(-1, 8, 8, 1)
    label = np.asarray(ds.y, np.int32)
    return ({"image": jnp.asarray(image[:N_TRAIN]), "label": jnp.asarray(label[:N_TRAIN])},
            {"image": jnp.asarray(image[N_TRAIN:]), "label": jnp.asarray(label[N_TRAIN:])})


def train_and_evaluate(train_ds, test_ds):
    """The example's ``train_and_evaluate`` (summary writer left out): its metrics per
    epoch, the permutation of every epoch, the initial and final parameters."""
    rng = jax.random.key(0)
    rng, init_rng = jax.random.split(rng)
    state = create_train_state(init_rng)
    params0, metrics, orders = state.params, [], []
    for _ in range(1, EPOCHS + 1):
        rng, input_rng = jax.random.split(rng)
        orders.append(np.asarray(jax.random.permutation(input_rng, N_TRAIN)))
        state, train_loss, train_accuracy = train_epoch(state, train_ds, BATCH, input_rng)
        _, test_loss, test_accuracy = apply_model(state, test_ds["image"], test_ds["label"])
        metrics.append((train_loss, train_accuracy, test_loss, test_accuracy))
    return params0, np.asarray(metrics, np.float64), np.stack(orders), state.params


def linen_loss(params, batch):
    """The port: the example's loss function, its accuracy as a recorded metric."""
    logits = LinenCNN().apply({"params": params}, batch["image"])
    one_hot = jax.nn.one_hot(batch["label"], 10)
    loss = jnp.mean(optax.softmax_cross_entropy(logits=logits, labels=one_hot))
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


@pytest.fixture(scope="module")
def linen_reference():
    train_ds, test_ds = digits_split()
    return (train_ds, test_ds) + train_and_evaluate(train_ds, test_ds)


def assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=rtol, atol=atol)


@pytest.mark.parametrize("loop", ["auto", "scan"])
def test_flax_linen_mnist_example(linen_reference, loop):
    """The example's epochs as ``fit``: its permutations as ``shuffle=`` orders and its
    skipped incomplete batch as ``drop_last=True`` (9 updates of 128 per epoch of 1200);
    ``batch_loss``/``batch_accuracy`` are its epoch means of the batch metrics,
    ``val_loss``/``val_accuracy`` its test metrics, the parameters its ``state.params``."""
    train_ds, test_ds, params0, ref, orders, ref_params = linen_reference
    res = jaxgd.fit(linen_loss, params0, train_ds, optimizer=optax.sgd,
                    hparams={"learning_rate": LR, "momentum": MOMENTUM}, batch_size=BATCH,
                    epochs=EPOCHS, shuffle=orders, drop_last=True, val_data=test_ds,
                    loop=loop)
    assert res.steps_run == EPOCHS * (N_TRAIN // BATCH)
    h = res.history
    got = np.stack([h["batch_loss"], h["batch_accuracy"], h["val_loss"], h["val_accuracy"]], 1)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert_trees_close(res.params, ref_params)


def test_flax_linen_mnist_example_as_a_sweep(linen_reference):
    """The example's learning rate as a sweep axis: the row of its rate equals its run
    (the orders shared by every configuration)."""
    train_ds, test_ds, params0, ref, orders, ref_params = linen_reference
    sw = jaxgd.sweep(linen_loss, params0, train_ds, optimizer=optax.sgd,
                     hparams={"momentum": MOMENTUM}, grid={"learning_rate": [0.03, LR]},
                     batch_size=BATCH, epochs=EPOCHS, shuffle=orders, drop_last=True,
                     val_data=test_ds)
    row = int(np.flatnonzero(np.isclose(sw.table["learning_rate"], LR))[0])
    np.testing.assert_allclose(sw.history["val_accuracy"][row], ref[:, 3], rtol=1e-5)
    np.testing.assert_allclose(sw.history["batch_loss"][row], ref[:, 0], rtol=1e-4)
    assert_trees_close(sw.params_of(row), ref_params, rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------- equinox stateful (BatchNorm)


class StatefulModel(eqx.Module):
    """The example's mish-mash of stateful and non-stateful layers."""

    norm1: eqx.nn.BatchNorm
    spectral_linear: eqx.nn.SpectralNorm
    norm2: eqx.nn.BatchNorm
    linear1: eqx.nn.Linear
    linear2: eqx.nn.Linear

    def __init__(self, key):
        key1, key2, key3, key4 = jax.random.split(key, 4)
        self.norm1 = eqx.nn.BatchNorm(input_size=3, axis_name="batch")
        self.spectral_linear = eqx.nn.SpectralNorm(
            layer=eqx.nn.Linear(in_features=3, out_features=32, key=key1),
            weight_name="weight", key=key2)
        self.norm2 = eqx.nn.BatchNorm(input_size=32, axis_name="batch")
        self.linear1 = eqx.nn.Linear(in_features=32, out_features=32, key=key3)
        self.linear2 = eqx.nn.Linear(in_features=32, out_features=3, key=key4)

    def __call__(self, x, state):
        x, state = self.norm1(x, state)
        x, state = self.spectral_linear(x, state)
        x = jax.nn.relu(x)
        x, state = self.norm2(x, state)
        x = self.linear1(x)
        x = jax.nn.relu(x)
        x = self.linear2(x)
        return x, state


def compute_loss(model, state, xs, ys):
    batch_model = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    pred_ys, state = batch_model(xs, state)
    loss = jnp.mean((pred_ys - ys) ** 2)
    return loss, state


def evaluate(model, xs):
    out, _ = jax.vmap(model)(xs)  # discard state
    return out


STATEFUL_LR, STATEFUL_STEPS = 3e-4, 5


@pytest.fixture(scope="module")
def stateful_reference():
    """The example's set-up and loop (``make_step`` returns its loss too, for the
    comparison), then its inference model on test inputs with targets made the way the
    training targets are."""
    key = jax.random.PRNGKey(5678)
    mkey, xkey, xkey2 = jax.random.split(key, 3)
    with warnings.catch_warnings():  # equinox's note that BatchNorm's mode defaults to "ema"
        warnings.simplefilter("ignore", UserWarning)
        model0, state0 = eqx.nn.make_with_state(StatefulModel)(mkey)
    xs = jax.random.normal(xkey, (10, 3))
    ys = jnp.sin(xs) + 1
    optim = optax.adam(STATEFUL_LR)

    @eqx.filter_jit
    def make_step(model, state, opt_state, xs, ys):
        (loss, state), grads = eqx.filter_value_and_grad(compute_loss, has_aux=True)(
            model, state, xs, ys)
        updates, opt_state = optim.update(grads, opt_state)
        model = eqx.apply_updates(model, updates)
        return model, state, opt_state, loss

    model, state = model0, state0
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))
    losses = []
    for _ in range(STATEFUL_STEPS):  # full-batch gradient descent
        model, state, opt_state, loss = make_step(model, state, opt_state, xs, ys)
        losses.append(float(loss))
    losses.append(float(eqx.filter_jit(compute_loss)(model, state, xs, ys)[0]))
    test_xs = jax.random.normal(xkey2, (5, 3))
    test_ys = jnp.sin(test_xs) + 1
    inference_model = eqx.Partial(eqx.nn.inference_mode(model), state=state)
    test_loss = float(jnp.mean((eqx.filter_jit(evaluate)(inference_model, test_xs) - test_ys)
                               ** 2))
    return dict(model0=model0, state0=state0, data=(xs, ys), val=(test_xs, test_ys),
                losses=np.asarray(losses), model=model, state=state, test_loss=test_loss)


def stateful_loss(model, batch, *, state):
    """The port as written: the example's loss, its state threaded through."""
    return compute_loss(model, state, *batch)


def stateful_loss_with_inference(model, batch, *, state, train):
    """Evaluation passes in inference mode, as the example evaluates its trained model."""
    if train:
        return compute_loss(model, state, *batch)
    xs, ys = batch
    out = evaluate(eqx.Partial(eqx.nn.inference_mode(model), state=state), xs)
    return jnp.mean((out - ys) ** 2), state


def arrays_of(model):
    return eqx.filter(model, eqx.is_array)


def test_equinox_stateful_example(stateful_reference, tmp_path):
    """``fit`` with the example's ``eqx.nn.State`` as ``state=``: the same per-step
    losses, parameters and state (BatchNorm statistics, SpectralNorm's power-iteration
    vectors, the flags), the full-data loss after each update being the next step's;
    the state saved with ``out=`` comes back as an ``eqx.nn.State`` (``state_like``)."""
    ref = stateful_reference
    res = jaxgd.fit(stateful_loss, ref["model0"], ref["data"], state=ref["state0"],
                    optimizer=optax.adam, hparams={"learning_rate": STATEFUL_LR},
                    batch_size=None, epochs=STATEFUL_STEPS, shuffle=False,
                    record_steps=True, out=tmp_path / "fit")
    np.testing.assert_allclose(np.ravel(res.history["step_loss"]), ref["losses"][:-1],
                               rtol=1e-6)
    np.testing.assert_allclose(res.history["loss"], ref["losses"][1:], rtol=1e-6)
    assert isinstance(res.params, StatefulModel)
    assert isinstance(res.state, eqx.nn.State)
    assert_trees_close(arrays_of(res.params), arrays_of(ref["model"]), rtol=1e-6, atol=1e-7)
    assert_trees_close(res.state, ref["state"], rtol=1e-6, atol=1e-7)
    back = jaxgd.load(tmp_path / "fit", like=ref["model0"], state_like=ref["state0"])
    assert isinstance(back.state, eqx.nn.State)
    assert_trees_close(jax.tree.map(lambda a: a[0], back.state), res.state, rtol=0, atol=0)


def test_equinox_stateful_example_inference_and_sweep(stateful_reference):
    """A loss declaring ``train`` evaluates in inference mode: the last validation loss is
    the example's inference model's test loss; a learning-rate sweep (``plan="map"``, each
    configuration's own step) holds the example's run in the row of its rate."""
    ref = stateful_reference
    common = dict(state=ref["state0"], optimizer=optax.adam, batch_size=None,
                  epochs=STATEFUL_STEPS, shuffle=False)
    res = jaxgd.fit(stateful_loss_with_inference, ref["model0"], ref["data"],
                    val_data=ref["val"], hparams={"learning_rate": STATEFUL_LR}, **common)
    np.testing.assert_allclose(res.history["val_loss"][-1], ref["test_loss"], rtol=1e-6)
    np.testing.assert_allclose(res.history["batch_loss"], ref["losses"][:-1], rtol=1e-6)
    assert_trees_close(arrays_of(res.params), arrays_of(ref["model"]), rtol=1e-6, atol=1e-7)
    sw = jaxgd.sweep(stateful_loss, ref["model0"], ref["data"],
                     grid={"learning_rate": [1e-4, STATEFUL_LR]}, plan="map", **common)
    np.testing.assert_allclose(sw.history["loss"][1], ref["losses"][1:], rtol=1e-6)
    assert_trees_close(arrays_of(sw.params_of(1)), arrays_of(ref["model"]), rtol=1e-6,
                       atol=1e-7)


# ----------------------------------------------------------------------- equinox train RNN


def dataloader(arrays, batch_size):
    """The example's loader: endless passes, each a new ``np.random`` permutation, an
    incomplete last batch never yielded."""
    dataset_size = arrays[0].shape[0]
    assert all(array.shape[0] == dataset_size for array in arrays)
    indices = np.arange(dataset_size)
    while True:
        perm = np.random.permutation(indices)
        start = 0
        end = batch_size
        while end <= dataset_size:
            batch_perm = perm[start:end]
            yield tuple(array[batch_perm] for array in arrays)
            start = end
            end = start + batch_size


def get_data(dataset_size, *, key):
    t = jnp.linspace(0, 2 * math.pi, 16)
    offset = jax.random.uniform(key, (dataset_size, 1), minval=0, maxval=2 * math.pi)
    x1 = jnp.sin(t + offset) / (1 + t)
    x2 = jnp.cos(t + offset) / (1 + t)
    y = jnp.ones((dataset_size, 1))
    half_dataset_size = dataset_size // 2
    x1 = x1.at[:half_dataset_size].multiply(-1)
    y = y.at[:half_dataset_size].set(0)
    x = jnp.stack([x1, x2], axis=-1)
    return x, y


class RNN(eqx.Module):
    hidden_size: int
    cell: eqx.Module
    linear: eqx.nn.Linear
    bias: jax.Array

    def __init__(self, in_size, out_size, hidden_size, *, key):
        ckey, lkey = jax.random.split(key)
        self.hidden_size = hidden_size
        self.cell = eqx.nn.GRUCell(in_size, hidden_size, key=ckey)
        self.linear = eqx.nn.Linear(hidden_size, out_size, use_bias=False, key=lkey)
        self.bias = jnp.zeros(out_size)

    def __call__(self, input):
        hidden = jnp.zeros((self.hidden_size,))

        def f(carry, inp):
            return self.cell(inp, carry), None

        out, _ = jax.lax.scan(f, hidden, input)
        # sigmoid because we're performing binary classification
        return jax.nn.sigmoid(self.linear(out) + self.bias)


RNN_N, RNN_BATCH, RNN_LR, RNN_STEPS, RNN_SEED = 256, 32, 3e-3, 40, 5678


def bce(model, x, y):
    pred_y = jax.vmap(model)(x)
    return -jnp.mean(y * jnp.log(pred_y) + (1 - y) * jnp.log(1 - pred_y))


def rnn_main():
    """The example's ``main`` (dataset 256, 40 steps: 8 batches of 32 per pass), returning
    the model, the printed losses and the final accuracy."""
    data_key, model_key = jax.random.split(jax.random.PRNGKey(RNN_SEED), 2)
    xs, ys = get_data(RNN_N, key=data_key)
    iter_data = dataloader((xs, ys), RNN_BATCH)
    model = RNN(in_size=2, out_size=1, hidden_size=16, key=model_key)
    compute_loss = eqx.filter_value_and_grad(bce)
    optim = optax.adam(RNN_LR)

    @eqx.filter_jit
    def make_step(model, x, y, opt_state):
        loss, grads = compute_loss(model, x, y)
        updates, opt_state = optim.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
        return loss, model, opt_state

    opt_state = optim.init(eqx.filter(model, eqx.is_array))
    losses = []
    for _, (x, y) in zip(range(RNN_STEPS), iter_data, strict=False):
        loss, model, opt_state = make_step(model, x, y, opt_state)
        losses.append(loss.item())
    pred_ys = jax.vmap(model)(xs)
    num_correct = jnp.sum((pred_ys > 0.5) == ys)
    return model, np.asarray(losses), (num_correct / RNN_N).item()


def rnn_loss(model, batch):
    x, y = batch
    pred_y = jax.vmap(model)(x)
    return (-jnp.mean(y * jnp.log(pred_y) + (1 - y) * jnp.log(1 - pred_y)),
            {"accuracy": jnp.mean((pred_y > 0.5) == y)})


@pytest.mark.parametrize("source", ["dataloader", "orders"])
def test_equinox_train_rnn_example(source):
    """The example's endless loader as ``data`` (host-fed, one batch per update), or the
    same passes as ``shuffle=`` orders with ``drop_last=True`` and ``steps=``: the same
    per-step losses and parameters; the final accuracy as ``val_accuracy`` on the training
    inputs."""
    np.random.seed(0)
    ref, ref_losses, ref_accuracy = rnn_main()
    data_key, model_key = jax.random.split(jax.random.PRNGKey(RNN_SEED), 2)
    xs, ys = get_data(RNN_N, key=data_key)
    model0 = RNN(in_size=2, out_size=1, hidden_size=16, key=model_key)
    np.random.seed(0)
    if source == "dataloader":
        data, kw = dataloader((xs, ys), RNN_BATCH), {}
    else:
        passes = -(-RNN_STEPS // (RNN_N // RNN_BATCH))
        orders = np.stack([np.random.permutation(np.arange(RNN_N)) for _ in range(passes)])
        data, kw = (xs, ys), dict(batch_size=RNN_BATCH, shuffle=orders, drop_last=True)
    res = jaxgd.fit(rnn_loss, model0, data, optimizer=optax.adam,
                    hparams={"learning_rate": RNN_LR}, steps=RNN_STEPS, record_steps=True,
                    val_data=(xs, ys), eval_every=RNN_STEPS, **kw)
    assert res.steps_run == RNN_STEPS
    np.testing.assert_allclose(np.ravel(res.history["step_loss"]), ref_losses, rtol=1e-5)
    assert_trees_close(arrays_of(res.params), arrays_of(ref))
    np.testing.assert_allclose(res.history["val_accuracy"][-1], ref_accuracy)


# ------------------------------------------------------------------------- optax lookahead

LA_X = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
LA_Y = (LA_X @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1).astype(np.float32)
LA_P0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
LA_BATCH, LA_EPOCHS = 16, 3


def la_mse(p, x, y):
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def la_optimizer():
    return optax.lookahead(optax.adam(0.05), sync_period=5, slow_step_size=0.5)


def lookahead_reference():
    """optax's example, over mini-batches in order: gradients of the fast parameters, the
    loss of the slow ones evaluated after every epoch."""
    opt = la_optimizer()
    params = optax.LookaheadParams.init_synced(LA_P0)
    state = opt.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(la_mse)(params.fast, x, y)  # wrt the fast params
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses, slow_losses = [], []
    for _ in range(LA_EPOCHS):
        for i in range(0, len(LA_X), LA_BATCH):
            params, state, loss = step(params, state, LA_X[i:i + LA_BATCH],
                                       LA_Y[i:i + LA_BATCH])
            losses.append(float(loss))
        slow_losses.append(float(la_mse(params.slow, LA_X, LA_Y)))
    return params, np.asarray(losses), np.asarray(slow_losses)


def la_loss(params, batch, *, train):
    """Steps on the fast parameters; evaluations of the slow ones, as the example's."""
    return la_mse(params.fast if train else params.slow, *batch)


def test_optax_lookahead_needs_the_fast_gradient_and_says_so():
    """``optax.lookahead`` as the optimizer receives the gradient of the whole
    ``LookaheadParams`` (jaxgd differentiates the loss with respect to all of ``params``),
    where it expects that of ``params.fast``: a ValueError naming the optimizer, the
    structure and the wrapper to use, before anything runs."""
    with pytest.raises(ValueError, match=r"optimizer .*update.*LookaheadParams.*g\.fast"):
        jaxgd.fit(la_loss, optax.LookaheadParams.init_synced(LA_P0), (LA_X, LA_Y),
                  optimizer=la_optimizer(), batch_size=LA_BATCH, epochs=LA_EPOCHS,
                  shuffle=False)


def test_optax_lookahead_example_through_the_fast_gradient():
    """The documented wrapper (the fast part of the gradient to ``lookahead.update``)
    gives the example's run: per-step losses, fast and slow parameters, and the slow
    parameters' loss after every epoch as ``history["loss"]``."""
    ref, ref_losses, ref_slow = lookahead_reference()
    la = la_optimizer()
    wrapped = optax.GradientTransformation(la.init, lambda g, s, p=None: la.update(g.fast, s, p))
    res = jaxgd.fit(la_loss, optax.LookaheadParams.init_synced(LA_P0), (LA_X, LA_Y),
                    optimizer=wrapped, batch_size=LA_BATCH, epochs=LA_EPOCHS, shuffle=False,
                    record_steps=True)
    assert isinstance(res.params, optax.LookaheadParams)
    np.testing.assert_allclose(np.ravel(res.history["step_loss"]), ref_losses, rtol=1e-6)
    np.testing.assert_allclose(res.history["loss"], ref_slow, rtol=1e-6)
    assert_trees_close(res.params, ref, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------ optax.contrib schedule-free


def schedule_free_reference():
    """optax's schedule-free example over mini-batches in order: gradients at the
    parameters the optimizer updates (``y``), the loss of those and of
    ``schedule_free_eval_params`` (``x``) after every epoch."""
    opt = optax.contrib.schedule_free_adamw(learning_rate=0.1)
    params = LA_P0
    state = opt.init(params)
    losses, y_losses, x_losses = [], [], []

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(la_mse)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    for _ in range(LA_EPOCHS):
        for i in range(0, len(LA_X), LA_BATCH):
            params, state, loss = step(params, state, LA_X[i:i + LA_BATCH],
                                       LA_Y[i:i + LA_BATCH])
            losses.append(float(loss))
        eval_params = optax.contrib.schedule_free_eval_params(state, params)
        y_losses.append(float(la_mse(params, LA_X, LA_Y)))
        x_losses.append(float(la_mse(eval_params, LA_X, LA_Y)))
    return params, np.asarray(losses), np.asarray(y_losses), np.asarray(x_losses)


def test_optax_schedule_free_example_trains_the_y_sequence():
    """``optax.contrib.schedule_free_adamw`` as a ready transformation: the example's
    per-step losses and parameters (the sequence its gradients are taken at); the
    evaluations, as every evaluation of ``fit``, are of those parameters, whose loss is
    not the one of ``schedule_free_eval_params``."""
    ref, ref_losses, ref_y, ref_x = schedule_free_reference()
    res = jaxgd.fit(lambda p, b: la_mse(p, *b), LA_P0, (LA_X, LA_Y),
                    optimizer=optax.contrib.schedule_free_adamw(learning_rate=0.1),
                    batch_size=LA_BATCH, epochs=LA_EPOCHS, shuffle=False, record_steps=True)
    np.testing.assert_allclose(np.ravel(res.history["step_loss"]), ref_losses, rtol=1e-6)
    assert_trees_close(res.params, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(res.history["loss"], ref_y, rtol=1e-6)
    assert np.all(np.abs(ref_x - ref_y) > 1e-2)  # the example's reported losses differ
    # the example's evaluated point, from the optimizer state paired with the parameters
    x = optax.contrib.schedule_free_eval_params(res.opt_state, res.params)
    np.testing.assert_allclose(float(la_mse(x, LA_X, LA_Y)), ref_x[-1], rtol=1e-5)


# ------------------------------------------------------------------- flax nnx toy example

TOY_STEPS, TOY_LOG_EVERY = 200, 100


class ToyLinear(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.w = nnx.Param(jax.random.uniform(rngs.params(), (din, dout)))
        self.b = nnx.Param(jnp.zeros((dout,)))

    def __call__(self, x):
        return x @ self.w.value + self.b.value


class Count(nnx.Variable[nnx.A]):
    pass


class ToyMLP(nnx.Module):
    def __init__(self, din, dhidden, dout, *, rngs: nnx.Rngs):
        self.count = Count(jnp.array(0))
        self.linear1 = ToyLinear(din, dhidden, rngs=rngs)
        self.linear2 = ToyLinear(dhidden, dout, rngs=rngs)

    def __call__(self, x):
        self.count[...] += 1
        return self.linear2(jax.nn.relu(self.linear1(x) * 0.5))


def toy_data():
    rng = np.random.RandomState(0)
    x = np.linspace(-np.pi, np.pi, 100)[:, None]
    y = 0.8 * np.sin(x) + 0.1 + rng.normal(0, 0.1, size=x.shape)
    return x, y


def toy_dataset(x, y, batch_size):
    """The example's endless sampler (indices drawn with replacement by ``np.random``)."""
    while True:
        idx = np.random.choice(len(x), size=batch_size)
        yield x[idx], y[idx]


def toy_reference(graphdef, params, counts, x, y):
    """The example's loop, its test loss after every step (it prints every 100th). One
    change for flax 0.12: the model is merged from containers made in the trace that
    mutates them (``jax.tree.map(lambda a: a, counts)``), since the example as written
    raises flax's TraceContextError ("Cannot mutate Count from a different trace level")."""

    @jax.jit
    def train_step(params, counts, batch):
        xb, yb = batch

        def loss_fn(params):
            model = nnx.merge(graphdef, params, jax.tree.map(lambda a: a, counts))
            y_pred = model(xb)
            new_counts = nnx.state(model, Count)
            loss = jnp.mean((yb - y_pred) ** 2)
            return loss, new_counts

        grad, counts = jax.grad(loss_fn, has_aux=True)(params)
        params = jax.tree.map(lambda w, g: w - 0.1 * g, params, grad)
        return params, counts

    @jax.jit
    def test_step(params, counts, batch):
        xb, yb = batch
        model = nnx.merge(graphdef, params, jax.tree.map(lambda a: a, counts))
        return {"loss": jnp.mean((yb - model(xb)) ** 2)}

    logs = []
    for step, batch in enumerate(toy_dataset(x, y, 32)):
        params, counts = train_step(params, counts, batch)
        logs.append(float(test_step(params, counts, (x, y))["loss"]))
        if step >= TOY_STEPS - 1:
            break
    return params, counts, np.asarray(logs)


def test_flax_nnx_toy_functional_example():
    """The example's generator as ``data`` and its ``Count`` as ``state``: the same
    parameters, the count of training calls (evaluation passes leave the state as it
    was: ``times called`` is the number of steps) and, with ``eval_every=1``, the test
    losses the example prints at steps 0 and 100."""
    x, y = toy_data()
    graphdef, params0, counts0 = nnx.split(ToyMLP(din=1, dhidden=32, dout=1,
                                                  rngs=nnx.Rngs(0)), nnx.Param, Count)
    np.random.seed(1)
    ref_params, ref_counts, logs = toy_reference(graphdef, params0, counts0, x, y)
    assert int(ref_counts["count"][...]) == TOY_STEPS

    def loss(params, batch, *, state):
        xb, yb = batch
        model = nnx.merge(graphdef, params, state)
        y_pred = model(xb)
        return jnp.mean((yb - y_pred) ** 2), nnx.state(model, Count)

    np.random.seed(1)
    res = jaxgd.fit(loss, params0, toy_dataset(x, y, 32), state=counts0, optimizer=optax.sgd,
                    hparams={"learning_rate": 0.1}, steps=TOY_STEPS, val_data=(x, y))
    assert int(res.state["count"][...]) == TOY_STEPS
    assert_trees_close(res.params, ref_params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.history["val_loss"][::TOY_LOG_EVERY],
                               logs[::TOY_LOG_EVERY], rtol=1e-5)
