"""JAX's and optax's own example scripts ported as their authors wrote them, each compared
with its own loop (the reference), sized for scikit-learn's 8x8 digits:

- JAX's ``examples/mnist_classifier_fromscratch.py``: parameters a list of ``(W, b)``
  tuples of NumPy float64 arrays, ``jax.grad``, SGD by hand (``w - step_size * dw``), a
  ``data_stream()`` generator with a NumPy permutation per epoch and
  ``num_batches = ceil(N / batch_size)``, train and test accuracy after every epoch;
- JAX's ``examples/mnist_classifier.py``: a ``jax.example_libraries.stax`` model (its
  parameter list holds ``()`` for the layers without parameters) trained by
  ``optimizers.momentum``, the optimizer swapped for ``optax.sgd(momentum=...)``;
- optax's ``optax.contrib.reduce_on_plateau`` (the loss passed to ``update`` as
  ``value=``) and ``optax.MultiSteps`` (gradient accumulation) examples;
- scikit-learn's ``SGDRegressor``/``SGDClassifier`` with ``learning_rate="constant"`` and
  ``shuffle=False`` (per-sample SGD, its own penalty and intercept conventions), float64.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpy.random as npr
import optax
import pytest
from jax.scipy.special import logsumexp

import jaxgd

datasets = pytest.importorskip("sklearn.datasets")

STEP_SIZE, EPOCHS, BATCH, N_TRAIN = 0.1, 3, 128, 1500


def digits():
    """Digits as the examples read MNIST: pixels in [0, 1], one-hot float32 targets."""
    d = datasets.load_digits()
    x = (d.data / 16).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[d.target]
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


# ------------------------------------------------------- mnist_classifier_fromscratch.py

def init_random_params(scale, layer_sizes, rng=None):
    rng = npr.RandomState(0) if rng is None else rng
    return [(scale * rng.randn(m, n), scale * rng.randn(n))
            for m, n, in zip(layer_sizes[:-1], layer_sizes[1:], strict=False)]


def predict(params, inputs):
    activations = inputs
    for w, b in params[:-1]:
        outputs = jnp.dot(activations, w) + b
        activations = jnp.tanh(outputs)

    final_w, final_b = params[-1]
    logits = jnp.dot(activations, final_w) + final_b
    return logits - logsumexp(logits, axis=1, keepdims=True)


def loss(params, batch):
    inputs, targets = batch
    preds = predict(params, inputs)
    return -jnp.mean(jnp.sum(preds * targets, axis=1))


def accuracy(params, batch):
    inputs, targets = batch
    target_class = jnp.argmax(targets, axis=1)
    predicted_class = jnp.argmax(predict(params, inputs), axis=1)
    return jnp.mean(predicted_class == target_class)


def data_stream(train_images, train_labels, batch_size=BATCH):
    num_train = train_images.shape[0]
    num_complete_batches, leftover = divmod(num_train, batch_size)
    num_batches = num_complete_batches + bool(leftover)
    rng = npr.RandomState(0)
    while True:
        perm = rng.permutation(num_train)
        for i in range(num_batches):
            batch_idx = perm[i * batch_size:(i + 1) * batch_size]
            yield train_images[batch_idx], train_labels[batch_idx]


def num_batches_of(n, batch_size=BATCH):
    num_complete_batches, leftover = divmod(n, batch_size)
    return num_complete_batches + bool(leftover)


def fromscratch_reference():
    """The script's loop (its printing replaced by lists): final parameters, the train and
    test accuracy after each epoch, every update's batch loss."""
    train_images, train_labels, test_images, test_labels = digits()
    num_batches = num_batches_of(len(train_images))
    batches = data_stream(train_images, train_labels)

    @jax.jit
    def update(params, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)  # the loss kept for the test
        return [(w - STEP_SIZE * dw, b - STEP_SIZE * db)
                for (w, b), (dw, db) in zip(params, grads, strict=True)], value

    params = init_random_params(0.1, [64, 128, 128, 10])
    accs, batch_losses = [], []
    for _ in range(EPOCHS):
        for _ in range(num_batches):
            params, value = update(params, next(batches))
            batch_losses.append(float(value))
        accs.append((float(accuracy(params, (train_images, train_labels))),
                     float(accuracy(params, (test_images, test_labels)))))
    return params, np.array(accs), np.array(batch_losses)


def assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def with_accuracy(params, batch):
    return loss(params, batch), {"accuracy": accuracy(params, batch)}


def test_mnist_fromscratch_with_the_scripts_permutations():
    """The script's own orders as ``shuffle=`` (one NumPy permutation per epoch, the last
    of ceil(N/B) batches holding N mod B = 92 samples): the same list of (W, b) tuples and
    the same train and test accuracy after every epoch, from the initial NumPy float64
    arrays as the script draws them (float32 in the program, as the script's jit makes
    them)."""
    params, accs, _ = fromscratch_reference()
    train_images, train_labels, test_images, test_labels = digits()
    rng = npr.RandomState(0)
    orders = np.stack([rng.permutation(N_TRAIN) for _ in range(EPOCHS)])
    res = jaxgd.fit(with_accuracy, init_random_params(0.1, [64, 128, 128, 10]),
                    (train_images, train_labels), optimizer="sgd",
                    hparams={"learning_rate": STEP_SIZE}, batch_size=BATCH, epochs=EPOCHS,
                    shuffle=orders, val_data=(test_images, test_labels))
    assert isinstance(res.params, list) and all(isinstance(t, tuple) for t in res.params)
    assert res.steps_run == EPOCHS * num_batches_of(N_TRAIN) == 36
    assert_trees_close(res.params, params)
    np.testing.assert_allclose(res.history["accuracy"], accs[:, 0], atol=1e-6)
    np.testing.assert_allclose(res.history["val_accuracy"], accs[:, 1], atol=1e-6)
    assert accs[-1, 1] > 0.8  # it learns


def test_mnist_fromscratch_with_the_scripts_generator():
    """The script's endless ``data_stream()`` itself as the data (one batch per update,
    ``steps`` = epochs x num_batches): the same parameters, and the per-epoch means of the
    batch losses (an unweighted mean over the epoch's updates, the short one included)."""
    params, _, batch_losses = fromscratch_reference()
    train_images, train_labels, _, _ = digits()
    nb = num_batches_of(N_TRAIN)
    res = jaxgd.fit(loss, init_random_params(0.1, [64, 128, 128, 10]),
                    data_stream(train_images, train_labels), optimizer="sgd",
                    hparams={"learning_rate": STEP_SIZE}, steps=EPOCHS * nb, eval_every=nb)
    assert_trees_close(res.params, params)
    np.testing.assert_allclose(res.history["batch_loss"],
                               batch_losses.reshape(EPOCHS, nb).mean(1), rtol=1e-5)


# ---------------------------------------------------------------------- mnist_classifier.py

stax = pytest.importorskip("jax.example_libraries.stax")
optimizers = pytest.importorskip("jax.example_libraries.optimizers")

MOMENTUM_LR, MASS = 0.01, 0.9


def stax_model():
    init_random_params, stax_predict = stax.serial(
        stax.Dense(128), stax.Relu, stax.Dense(128), stax.Relu, stax.Dense(10),
        stax.LogSoftmax)

    def stax_loss(params, batch):
        inputs, targets = batch
        preds = stax_predict(params, inputs)
        return -jnp.mean(jnp.sum(preds * targets, axis=1))

    def stax_accuracy(params, batch):
        inputs, targets = batch
        target_class = jnp.argmax(targets, axis=1)
        predicted_class = jnp.argmax(stax_predict(params, inputs), axis=1)
        return jnp.mean(predicted_class == target_class)

    _, init_params = init_random_params(jax.random.PRNGKey(0), (-1, 64))
    return init_params, stax_loss, stax_accuracy


def stax_reference(init_params, stax_loss, stax_accuracy, use_optax):
    """The script's loop with ``optimizers.momentum`` (``use_optax=False``) or with the
    user's swap to ``optax.sgd(step_size, momentum=mass)``: final parameters, test
    accuracy after each epoch."""
    train_images, train_labels, test_images, test_labels = digits()
    batches = data_stream(train_images, train_labels)
    if use_optax:
        tx = optax.sgd(MOMENTUM_LR, momentum=MASS)

        @jax.jit
        def update(i, state, batch):
            params, opt_state = state
            updates, opt_state = tx.update(jax.grad(stax_loss)(params, batch), opt_state)
            return optax.apply_updates(params, updates), opt_state

        state, get_params = (init_params, tx.init(init_params)), lambda s: s[0]
    else:
        opt_init, opt_update, get_params = optimizers.momentum(MOMENTUM_LR, mass=MASS)

        @jax.jit
        def update(i, opt_state, batch):
            params = get_params(opt_state)
            return opt_update(i, jax.grad(stax_loss)(params, batch), opt_state)

        state = opt_init(init_params)
    itercount = itertools.count()
    accs = []
    for _ in range(EPOCHS):
        for _ in range(num_batches_of(len(train_images))):
            state = update(next(itercount), state, next(batches))
        accs.append(float(stax_accuracy(get_params(state), (test_images, test_labels))))
    return get_params(state), np.array(accs)


@pytest.mark.parametrize("optimizer", ["momentum", "optax.sgd", "transformation"])
def test_mnist_stax_with_optax_momentum(optimizer):
    """stax's parameters (``[(W, b), (), (W, b), (), (W, b), ()]``) as they are, trained by
    jaxgd with the built-in ``"momentum"``, the factory ``optax.sgd`` or a ready
    ``optax.sgd(lr, momentum=mass)``: the same parameters and test accuracies as the
    script's loop with its ``optimizers.momentum`` and with the optax swap."""
    init_params, stax_loss, stax_accuracy = stax_model()
    ref, accs = stax_reference(init_params, stax_loss, stax_accuracy, use_optax=False)
    swapped, swapped_accs = stax_reference(init_params, stax_loss, stax_accuracy, True)
    assert_trees_close(swapped, ref)  # the swap itself changes nothing
    np.testing.assert_array_equal(swapped_accs, accs)
    opt, hp = {"momentum": ("momentum", {"learning_rate": MOMENTUM_LR, "momentum": MASS}),
               "optax.sgd": (optax.sgd, {"learning_rate": MOMENTUM_LR, "momentum": MASS}),
               "transformation": (optax.sgd(MOMENTUM_LR, momentum=MASS), None)}[optimizer]
    train_images, train_labels, test_images, test_labels = digits()
    rng = npr.RandomState(0)
    orders = np.stack([rng.permutation(N_TRAIN) for _ in range(EPOCHS)])
    res = jaxgd.fit(lambda p, b: (stax_loss(p, b), {"accuracy": stax_accuracy(p, b)}),
                    init_params, (train_images, train_labels), optimizer=opt, hparams=hp,
                    batch_size=BATCH, epochs=EPOCHS, shuffle=orders,
                    val_data=(test_images, test_labels))
    assert res.params[1] == () and res.params[5] == ()
    assert_trees_close(res.params, ref)
    np.testing.assert_allclose(res.history["val_accuracy"], accs, atol=1e-6)


def test_example_libraries_optimizers_are_refused_by_name():
    """``jax.example_libraries.optimizers`` gives (init, update, get_params) triples, not
    optax transformations: passed as jaxgd's optimizer (whose ``step_size`` keyword takes
    ``learning_rate``), a TypeError names the optimizer and the optax equivalent, rather
    than an AttributeError from inside the program or the factory's bare complaint."""
    init_params, stax_loss, _ = stax_model()
    train_images, train_labels, _, _ = digits()
    common = dict(batch_size=BATCH, epochs=1, shuffle=False)
    with pytest.raises(TypeError, match=r"optimizer 'sgd' .*not an optax.GradientTrans"
                                        r".*optax.sgd"):
        jaxgd.fit(stax_loss, init_params, (train_images, train_labels),
                  optimizer=optimizers.sgd, hparams={"learning_rate": 0.1}, **common)
    with pytest.raises(TypeError, match=r"optimizer 'momentum' .*'mass'"):
        jaxgd.fit(stax_loss, init_params, (train_images, train_labels),
                  optimizer=optimizers.momentum, hparams={"learning_rate": 0.1}, **common)
    with pytest.raises(TypeError, match=r"optimizer=Optimizer.*GradientTransformation"):
        jaxgd.fit(stax_loss, init_params, (train_images, train_labels),
                  optimizer=optimizers.momentum(0.1, 0.9), **common)


# ------------------------------------------- optax: reduce_on_plateau, MultiSteps examples

contrib = pytest.importorskip("optax.contrib")

SOFTMAX_BATCH = 100  # 15 updates per epoch of the 1500 training digits


def softmax_loss(params, batch):
    xb, yb = batch
    logits = xb @ params["w"] + params["b"]
    return optax.softmax_cross_entropy(logits, yb).mean()


def softmax_params():
    return {"w": jnp.zeros((64, 10), jnp.float32), "b": jnp.zeros(10, jnp.float32)}


def optax_reference(opt, epochs, with_value):
    """optax's examples' loop: ``update(grads, opt_state, params, value=loss)`` with the
    batch's loss (``with_value``), batches of 100 in order; every update's batch loss."""
    train_images, train_labels, _, _ = digits()
    params = softmax_params()
    opt_state = opt.init(params)

    @jax.jit
    def train_step(params, opt_state, batch):
        value, grads = jax.value_and_grad(softmax_loss)(params, batch)
        extra = {"value": value} if with_value else {}
        updates, opt_state = opt.update(grads, opt_state, params, **extra)
        return optax.apply_updates(params, updates), opt_state, value

    losses = []
    for _ in range(epochs):
        for i in range(0, N_TRAIN, SOFTMAX_BATCH):
            batch = train_images[i:i + SOFTMAX_BATCH], train_labels[i:i + SOFTMAX_BATCH]
            params, opt_state, value = train_step(params, opt_state, batch)
            losses.append(float(value))
    return params, opt_state, np.array(losses)


def plateau_optimizer():
    """The example's chain: Adam, then ``reduce_on_plateau`` on the batch loss averaged over
    an epoch's 15 updates (``accumulation_size``), so the scale drops within 12 epochs."""
    return optax.chain(optax.adam(0.5),
                       contrib.reduce_on_plateau(patience=1, cooldown=0, factor=0.5,
                                                 rtol=1e-3, accumulation_size=15))


def test_optax_reduce_on_plateau_gets_the_loss_as_value():
    """jaxgd passes each update's batch loss as ``value=`` (optax's extra argument, what
    the example's loop passes): the same parameters, batch losses and plateau scale as
    the hand loop, in a run where the scale is cut (before, ``update_fn() missing 1
    required keyword-only argument: 'value'``)."""
    epochs = 12
    ref, ref_state, losses = optax_reference(plateau_optimizer(), epochs, with_value=True)
    scale = float(ref_state[1].scale)
    assert scale < 1  # the plateau logic acted
    train_images, train_labels, _, _ = digits()
    res = jaxgd.fit(softmax_loss, softmax_params(), (train_images, train_labels),
                    optimizer=plateau_optimizer(), batch_size=SOFTMAX_BATCH, epochs=epochs,
                    shuffle=False, record_steps=True, metrics="batch")
    assert_trees_close(res.params, ref)
    np.testing.assert_allclose(res.history["step_loss"].ravel(), losses, rtol=1e-5)
    assert float(res.opt_state[1].scale) == scale


def test_an_optimizer_wanting_other_extra_arguments_is_named():
    """A line search wants ``value_fn`` too, which jaxgd does not pass: a TypeError says
    what jaxgd passes to ``update``."""
    train_images, train_labels, _, _ = digits()
    opt = optax.chain(optax.sgd(0.1), optax.scale_by_backtracking_linesearch(15))
    with pytest.raises(TypeError, match=r"jaxgd calls update\(grads, opt_state, params, "
                                        r"value=objective\).*value_fn"):
        jaxgd.fit(softmax_loss, softmax_params(), (train_images, train_labels),
                  optimizer=opt, batch_size=SOFTMAX_BATCH, epochs=1, shuffle=False)


def test_an_extra_args_update_without_value_is_called_without_it():
    """A ``GradientTransformationExtraArgs`` of one's own whose ``update`` takes no extra
    arguments still runs (called without ``value``), as the same SGD by hand."""
    sgd = optax.sgd(0.1)
    own = optax.GradientTransformationExtraArgs(sgd.init,
                                                lambda g, s, p=None: sgd.update(g, s, p))
    ref, _, _ = optax_reference(optax.sgd(0.1), 1, with_value=False)
    train_images, train_labels, _, _ = digits()
    res = jaxgd.fit(softmax_loss, softmax_params(), (train_images, train_labels),
                    optimizer=own, batch_size=SOFTMAX_BATCH, epochs=1, shuffle=False)
    assert_trees_close(res.params, ref)


def test_optax_multisteps_object_as_the_optimizer():
    """optax's gradient-accumulation example passes the ``optax.MultiSteps`` object itself
    (``opt.init``/``opt.update``): jaxgd takes it as given (before: refused, as neither a
    factory nor a transformation) and gives the hand loop's parameters, every one of
    ``steps_run`` an ``update`` call (a micro-step)."""
    epochs = 2
    ref, _, _ = optax_reference(optax.MultiSteps(optax.adam(0.01), every_k_schedule=3),
                                epochs, with_value=False)
    train_images, train_labels, _, _ = digits()
    res = jaxgd.fit(softmax_loss, softmax_params(), (train_images, train_labels),
                    optimizer=optax.MultiSteps(optax.adam(0.01), every_k_schedule=3),
                    batch_size=SOFTMAX_BATCH, epochs=epochs, shuffle=False)
    assert res.steps_run == epochs * 15
    assert_trees_close(res.params, ref)


def test_accumulate_equals_multisteps_of_sgd():
    """jaxgd's own ``accumulate=3`` on the same batches (3 x 100 divides 1500): one update
    per 3 batches, equal to ``MultiSteps(optax.sgd(...), 3)``. (With Adam the two differ
    by more than float32 rounding of the parameters, 1.2e-5 here: MultiSteps' running
    mean of the 3 gradients and jaxgd's mean over the 300 samples differ in the last bits,
    and Adam's division by the root of the second moment magnifies that for the
    components whose gradients are near 0.)"""
    epochs = 2
    ref, _, _ = optax_reference(optax.MultiSteps(optax.sgd(0.1, momentum=0.9), 3),
                                epochs, with_value=False)
    train_images, train_labels, _, _ = digits()
    acc = jaxgd.fit(softmax_loss, softmax_params(), (train_images, train_labels),
                    optimizer="momentum", hparams={"learning_rate": 0.1, "momentum": 0.9},
                    accumulate=3, batch_size=SOFTMAX_BATCH, epochs=epochs, shuffle=False)
    assert acc.steps_run == epochs * 5
    assert_trees_close(acc.params, ref)


# ----------------------------------------------- scikit-learn SGDRegressor / SGDClassifier

linear_model = pytest.importorskip("sklearn.linear_model")

SK_EPOCHS = 5


def sklearn_fit(estimator, x, y):
    """``estimator.fit(x, y)`` for ``SK_EPOCHS`` epochs (``tol=None``: no early stop; its
    "maximum number of iterations reached" warning silenced)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(x, y)


def half_squared(params, batch):
    xb, yb = batch
    return jnp.mean(0.5 * (xb @ params["w"] + params["b"] - yb) ** 2)


def linear_params(d):
    return {"w": jnp.zeros(d), "b": jnp.zeros(())}


def regression_data():
    return datasets.make_regression(n_samples=100, n_features=5, noise=1.0, random_state=0)


def test_sklearn_sgd_regressor_constant_rate(x64):
    """``SGDRegressor(learning_rate="constant", shuffle=False)`` is per-sample SGD on
    ``0.5 (h - y)^2 + alpha/2 ||w||^2`` (intercept not penalised; its L2 step
    ``w (1 - eta alpha) - eta dloss x`` is the gradient step at the sample's starting
    point), i.e. jaxgd's ``batch_size=1, shuffle=False`` with ``l2=alpha`` (jaxgd's
    ``l2/2 sum w^2``, biases left out): the same coefficients and intercept in float64
    to 1e-10 after 5 epochs, 500 updates."""
    x, y = regression_data()
    sk = linear_model.SGDRegressor(learning_rate="constant", eta0=0.01, alpha=0.01,
                                   shuffle=False, max_iter=SK_EPOCHS, tol=None)
    sklearn_fit(sk, x, y)
    res = jaxgd.fit(half_squared, linear_params(5), (x, y), optimizer="sgd",
                    hparams={"learning_rate": 0.01, "l2": 0.01}, batch_size=1,
                    epochs=SK_EPOCHS, shuffle=False)
    assert res.steps_run == sk.t_ - 1 == 500
    np.testing.assert_allclose(res.params["w"], sk.coef_, rtol=1e-10)
    np.testing.assert_allclose(res.params["b"], sk.intercept_[0], rtol=1e-10)


def test_sklearn_sgd_classifier_log_loss(x64):
    """Binary ``SGDClassifier(loss="log_loss", learning_rate="constant", shuffle=False)``:
    labels {0, 1} read as y = -1/+1 and the loss ``log(1 + exp(-y h))``; the same
    coefficients and intercept as jaxgd's per-sample SGD with ``l2=alpha``, to 1e-10."""
    x, y = datasets.make_classification(n_samples=100, n_features=5, random_state=0)
    sk = linear_model.SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.05,
                                    alpha=0.001, shuffle=False, max_iter=SK_EPOCHS, tol=None)
    sklearn_fit(sk, x, y)

    def log_loss(params, batch):
        xb, yb = batch
        return jnp.mean(jnp.logaddexp(0.0, -(2 * yb - 1) * (xb @ params["w"] + params["b"])))

    res = jaxgd.fit(log_loss, linear_params(5), (x, y.astype(np.float64)), optimizer="sgd",
                    hparams={"learning_rate": 0.05, "l2": 0.001}, batch_size=1,
                    epochs=SK_EPOCHS, shuffle=False)
    np.testing.assert_allclose(res.params["w"], sk.coef_[0], rtol=1e-10)
    np.testing.assert_allclose(res.params["b"], sk.intercept_[0], rtol=1e-10)


def test_sklearn_l1_is_another_rule(x64):
    """scikit-learn's L1 (``penalty="l1"``) is not a subgradient step: after each
    gradient step it moves every weight towards 0 by the penalty accumulated so far and
    not yet applied, stopping at 0 (Tsuruoka et al.'s cumulative truncation), where
    jaxgd adds ``l1 sign(w)`` at the step's starting point (0 at w = 0, the initial
    weights). The two runs are close, not equal: documented here, not a tolerance."""
    x, y = regression_data()
    sk = linear_model.SGDRegressor(learning_rate="constant", eta0=0.01, alpha=0.5,
                                   penalty="l1", shuffle=False, max_iter=SK_EPOCHS, tol=None)
    sklearn_fit(sk, x, y)
    res = jaxgd.fit(half_squared, linear_params(5), (x, y), optimizer="sgd",
                    hparams={"learning_rate": 0.01, "l1": 0.5}, batch_size=1,
                    epochs=SK_EPOCHS, shuffle=False)
    diff = np.abs(np.asarray(res.params["w"]) - sk.coef_).max()
    assert 1e-4 < diff < 1e-2 * np.abs(sk.coef_).max()


def test_optax_polyak_sgd_reads_the_objective_with_its_penalty():
    """``optax.polyak_sgd`` takes its step size from ``value`` (``value / ||g||^2``, capped):
    with ``l2`` jaxgd passes the objective whose gradient it gives, loss + l2/2 ||w||^2
    (the bias not penalised), as a hand loop differentiating that objective does."""
    l2, epochs = 0.01, 2

    def objective(params, batch):
        return softmax_loss(params, batch) + 0.5 * l2 * jnp.sum(params["w"] ** 2)

    train_images, train_labels, _, _ = digits()
    opt = optax.polyak_sgd(max_learning_rate=1.0)
    params = softmax_params()
    state = opt.init(params)
    for _ in range(epochs):
        for i in range(0, N_TRAIN, SOFTMAX_BATCH):
            batch = train_images[i:i + SOFTMAX_BATCH], train_labels[i:i + SOFTMAX_BATCH]
            value, grads = jax.value_and_grad(objective)(params, batch)
            updates, state = opt.update(grads, state, params, value=value)
            params = optax.apply_updates(params, updates)
    res = jaxgd.fit(softmax_loss, softmax_params(), (train_images, train_labels),
                    optimizer=optax.polyak_sgd(max_learning_rate=1.0), hparams={"l2": l2},
                    batch_size=SOFTMAX_BATCH, epochs=epochs, shuffle=False)
    assert_trees_close(res.params, params)
