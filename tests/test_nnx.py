"""flax.nnx models as their authors write them: flax's MNIST CNN (Conv, BatchNorm, Dropout,
Linear) split into ``nnx.Param`` parameters and ``nnx.BatchStat`` state, the loss rebuilding
the model with ``nnx.merge``. ``fit`` and ``sweep`` are compared with flax's own training
loop (``nnx.Optimizer``, ``nnx.value_and_grad``, the model updated in place) driven by the
documented per-step keys and data order, written out here with jax.random alone."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd
from jaxgd.data import epoch_permutation

nnx = pytest.importorskip("flax.nnx")

TAG = 0x4C055  # fold_in(seed key, TAG) starts a configuration's loss keys (documented)
N, BS, EPOCHS, MOMENTUM = 96, 32, 2, 0.9

_ds = jaxgd.datasets.load("digits")
DATA = {"image": np.asarray(_ds.x[:N] / 16.0, np.float32).reshape(N, 8, 8, 1),
        "label": np.asarray(_ds.y[:N], np.int32)}


class CNN(nnx.Module):
    """flax's examples/mnist CNN, sized for 8x8 images (2x2 after two poolings)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(32, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(64, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(64 * 2 * 2, 256, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.025)
        self.linear2 = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)  # flatten
        x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
        return self.linear2(x)


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def split_model():
    graphdef, params, stats = nnx.split(CNN(rngs=nnx.Rngs(0)), nnx.Param, nnx.BatchStat)
    return graphdef, params, stats


GRAPHDEF, PARAMS0, STATS0 = split_model()


def loss(params, batch, *, state, key, train):
    """The natural port: merge, set the mode, a dropout stream from the step's key."""
    model = nnx.merge(GRAPHDEF, params, state)
    if train:
        model.train()
    else:
        model.eval()
    logits = model(batch["image"], nnx.Rngs(dropout=key) if train else None)
    return cross_entropy(logits, batch["label"]), nnx.state(model, nnx.BatchStat)


def step_key(seed, hparams, t):
    """The documented key of update t: fold_in(seed key, TAG), then the float32 bits of each
    numeric hyper-parameter in sorted-name order, then t."""
    k = jax.random.fold_in(jax.random.key(seed), TAG)
    for name in sorted(hparams):
        k = jax.random.fold_in(k, np.float32(hparams[name]).view(np.uint32))
    return jax.random.fold_in(k, t)


@nnx.jit
def flax_train_step(model, optimizer, batch, rngs):
    """flax's examples/mnist train_step (without its metrics)."""
    def loss_fn(model, batch, rngs):
        return cross_entropy(model(batch["image"], rngs), batch["label"])

    grads = nnx.grad(loss_fn)(model, batch, rngs)
    optimizer.update(model, grads)


def flax_loop(seed, lr):
    """flax's own loop: SGD with momentum on nnx.Param (as flax's example), data in the
    epoch order shuffle=True documents (jaxgd.data.epoch_permutation of the seed's key),
    dropout keyed per update."""
    model = CNN(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(lr, MOMENTUM), wrt=nnx.Param)
    model.train()
    hp, t = {"learning_rate": lr, "momentum": MOMENTUM}, 0
    for epoch in range(EPOCHS):
        order = np.asarray(epoch_permutation(jax.random.key(seed), epoch, N))
        for i in range(0, N, BS):
            batch = jax.tree.map(lambda a, idx=order[i:i + BS]: a[idx], DATA)
            flax_train_step(model, optimizer, batch, nnx.Rngs(dropout=step_key(seed, hp, t)))
            t += 1
    return nnx.state(model, nnx.Param), nnx.state(model, nnx.BatchStat)


def assert_tree_close(got, want, tol=1e-6):
    got_l = jax.tree_util.tree_flatten_with_path(got)[0]
    want_l = jax.tree_util.tree_flatten_with_path(want)[0]
    assert [jax.tree_util.keystr(p) for p, _ in got_l] == [
        jax.tree_util.keystr(p) for p, _ in want_l]
    for (p, a), (_, b) in zip(got_l, want_l, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol,
                                   err_msg=jax.tree_util.keystr(p))


def test_nnx_cnn_batchnorm_dropout_fit_equals_flax_loop():
    res = jaxgd.fit(loss, PARAMS0, DATA, state=STATS0, optimizer=optax.sgd,
                    hparams={"learning_rate": 0.05, "momentum": MOMENTUM}, batch_size=BS,
                    epochs=EPOCHS, key=1)
    params, stats = flax_loop(1, 0.05)
    # a convolution on the CPU: the default plan is the host loop (a jitted step per call)
    assert res.loop == ("host" if jax.default_backend() == "cpu" else "scan")
    assert_tree_close(res.params, params)
    assert_tree_close(res.state, stats)
    moved = np.abs(np.asarray(stats["batch_norm1"]["mean"][...])).max()
    assert moved > 1e-3  # the BatchNorm statistics did move (the test is not vacuous)
    assert np.isfinite(res.history["loss"]).all()


def test_nnx_cnn_batchnorm_dropout_sweep_equals_flax_loop():
    sw = jaxgd.sweep(loss, PARAMS0, DATA, state=STATS0, optimizer=optax.sgd,
                     hparams={"momentum": MOMENTUM},
                     grid={"learning_rate": [0.02, 0.05], "seed": [0, 1]},
                     batch_size=BS, epochs=EPOCHS)
    assert len(sw.table) == 4
    assert sw.loop == ("host" if jax.default_backend() == "cpu" else "scan")
    for i in range(4):
        lr, seed = float(sw.table["learning_rate"][i]), int(sw.table["seed"][i])
        params, stats = flax_loop(seed, lr)
        assert_tree_close(sw.params_of(i), params)
        assert_tree_close(jax.tree.map(lambda a, i=i: a[i], sw.state), stats)


# ----------------------------------------------------------------------------- loss forms


def test_loss_whose_first_parameter_is_named_state():
    """loss(state, batch): the first two positional parameters are params and batch,
    whatever their names (``graphdef, state = nnx.split(model)``)."""
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    graphdef, state0 = nnx.split(model)
    rng = np.random.RandomState(0)
    x = rng.randn(16, 3).astype(np.float32)
    y = (x @ np.asarray([1.0, -2.0, 0.5], np.float32)).astype(np.float32)

    def loss(state, batch):
        m = nnx.merge(graphdef, state)
        return jnp.mean((m(batch[0])[:, 0] - batch[1]) ** 2)

    res = jaxgd.fit(loss, state0, (x, y), hparams={"learning_rate": 0.1}, batch_size=8,
                    epochs=2, shuffle=False)
    sw = jaxgd.sweep(loss, state0, (x, y), grid={"learning_rate": [0.05, 0.1]},
                     batch_size=8, epochs=2, shuffle=False)
    w, b = np.asarray(state0["kernel"][...])[:, 0], np.asarray(state0["bias"][...])[0]
    for lr, got in ((0.1, res.params), (0.05, sw.params_of(0)), (0.1, sw.params_of(1))):
        ww, bb = w.astype(np.float64), float(b)
        for _ in range(2):
            for i in range(0, 16, 8):
                xb, yb = x[i:i + 8].astype(np.float64), y[i:i + 8]
                r = xb @ ww + bb - yb
                ww, bb = ww - lr * 2 * xb.T @ r / 8, bb - lr * 2 * r.mean()
        np.testing.assert_allclose(np.asarray(got["kernel"][...])[:, 0], ww, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(got["bias"][...])[0], bb, rtol=1e-5)


def test_state_keyword_after_params_and_batch_is_still_model_state():
    from jaxgd.lossform import declared

    def named_state(state, batch):
        return 0.0

    def keyword_state(params, batch, *, state, key=None):
        return 0.0

    def third_positional(p, b, state):
        return 0.0

    assert declared(named_state) == {"key": False, "train": False, "state": False,
                                     "hparams": False}
    assert declared(keyword_state)["state"] and declared(keyword_state)["key"]
    assert declared(third_positional)["state"]
    with pytest.raises(TypeError, match="no state was given"):
        jaxgd.fit(lambda p, b, *, state: (jnp.sum(p["w"]), state), {"w": jnp.ones(2)},
                  (np.ones((4, 2), np.float32),), hparams={"learning_rate": 0.1}, epochs=1)


def test_rng_stream_in_the_state_is_refused_by_name():
    """A model holding its own Dropout stream, split with the rest (``...``) into the state:
    a clear TypeError naming the leaf before anything is compiled, not a crash inside."""
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(64, 10, rngs=rngs)
            self.dropout = nnx.Dropout(0.2, rngs=rngs)

        def __call__(self, x):
            return self.dropout(self.linear(x))

    graphdef, params, rest = nnx.split(Net(nnx.Rngs(0)), nnx.Param, ...)

    def loss(params, batch, *, state, train):
        model = nnx.merge(graphdef, params, state)
        logits = model(batch["image"].reshape(-1, 64))
        return cross_entropy(logits, batch["label"]), nnx.state(model, nnx.Not(nnx.Param))

    with pytest.raises(TypeError, match=r"state\['dropout'\]\['rngs'\]\['key'\].* PRNG key"):
        jaxgd.fit(loss, params, DATA, state=rest, hparams={"learning_rate": 0.1}, epochs=1)


def test_only_trees_holding_objects_are_copied_for_the_loss():
    """Plain pytrees reach the loss as they are (nothing added to a plain loss's trace);
    nnx States reach it in new containers holding the same arrays."""
    from jaxgd import lossform

    seen = []

    def loss(params, batch, *, state):
        seen.append((params, state))
        return jnp.sum(jax.tree.leaves(params)[0]) * 0.0, state

    batch = (np.ones((2, 3), np.float32),)
    plain_p, plain_s = {"w": jnp.ones(3)}, {"n": jnp.zeros(())}
    form = lossform.check_form(loss, plain_p, batch, plain_s, {})
    lossform.call(form, loss, plain_p, batch, state=plain_s)
    assert seen[-1][0] is plain_p and seen[-1][1] is plain_s
    form = lossform.check_form(loss, PARAMS0, batch, STATS0, {})
    lossform.call(form, loss, PARAMS0, batch, state=STATS0)
    got_p, got_s = seen[-1]
    assert got_p is not PARAMS0 and got_s is not STATS0
    assert got_s["batch_norm1"]["mean"] is not STATS0["batch_norm1"]["mean"]  # new Variable
    assert all(a is b for a, b in zip(jax.tree.leaves(got_s), jax.tree.leaves(STATS0),
                                      strict=True))
