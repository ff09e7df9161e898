"""Research code as it is (issue 10): per-step PRNG keys, model state, metrics, model
libraries. Every trajectory is compared with a hand-written optax loop that derives its
keys by the documented rule (jaxgd.lossform), written out here with jax.random alone."""

import sys

import equinox as eqx  # the test extra
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd

TAG = 0x4C055  # the documented tag: fold_in(run key, TAG) starts a configuration's keys

rng = np.random.RandomState(0)
X = rng.randn(24, 3).astype(np.float32)
Y = (X @ np.asarray([1.0, -2.0, 0.5], np.float32) + 0.1 * rng.randn(24).astype(np.float32))


def hand_config_key(seed, hparams):
    """The documented derivation, by hand."""
    k = jax.random.fold_in(jax.random.key(seed), TAG)
    for name in sorted(hparams):
        k = jax.random.fold_in(k, np.float32(hparams[name]).view(np.uint32))
    return k


def batches(bs):
    return [(X[i:i + bs], Y[i:i + bs]) for i in range(0, len(X), bs)]


def hand_loop(loss, params, hparams, seed, epochs, bs, opt, eval_loss):
    """optax loop in data order; the loss gets fold_in(config key, t) at update t."""
    kc = hand_config_key(seed, hparams)
    state = opt.init(params)
    t = 0
    losses = []
    for _ in range(epochs):
        for b in batches(bs):
            g = jax.grad(lambda p: loss(p, b, key=jax.random.fold_in(kc, t)))(params)  # noqa: B023
            u, state = opt.update(g, state, params)
            params = optax.apply_updates(params, u)
            t += 1
        losses.append(float(eval_loss(params)))
    return params, np.asarray(losses)


def close_trees(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- keys


class DropMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        h = nn.relu(nn.Dense(16)(x))
        h = nn.Dropout(0.3, deterministic=not train)(h)
        return nn.Dense(1)(h)[:, 0]


LINEN = DropMLP()
LINEN_P0 = LINEN.init(jax.random.key(1), X[:2], train=False)["params"]


def linen_loss(params, batch, *, key, train):
    x, y = batch
    rngs = {"dropout": key} if train else {}
    return jnp.mean((LINEN.apply({"params": params}, x, train=train, rngs=rngs) - y) ** 2)


def test_flax_linen_dropout_fit_equals_hand_loop():
    hp = {"learning_rate": 0.05}
    res = jaxgd.fit(linen_loss, LINEN_P0, (X, Y), optimizer=optax.sgd, hparams=hp,
                    batch_size=8, epochs=4, shuffle=False, key=3)
    ref_p, ref_l = hand_loop(lambda p, b, key: linen_loss(p, b, key=key, train=True),
                             LINEN_P0, hp, 3, 4, 8, optax.sgd(0.05),
                             lambda p: linen_loss(p, (X, Y), key=None, train=False))
    close_trees(res.params, ref_p)
    np.testing.assert_allclose(res.history["loss"], ref_l, rtol=1e-5)
    # the public derivation is the documented one
    k = jaxgd.loss_key(3, hp, 5)
    np.testing.assert_array_equal(jax.random.key_data(k), jax.random.key_data(
        jax.random.fold_in(hand_config_key(3, hp), 5)))


def test_flax_linen_dropout_sweep_equals_fit_and_hand_loop():
    sw = jaxgd.sweep(linen_loss, LINEN_P0, (X, Y), optimizer=optax.sgd,
                     grid={"learning_rate": [0.02, 0.05], "seed": [0, 1]},
                     batch_size=8, epochs=3, shuffle=False)
    for i, c in enumerate(sw.configs):
        hp = {"learning_rate": c["learning_rate"]}
        ref_p, ref_l = hand_loop(lambda p, b, key: linen_loss(p, b, key=key, train=True),
                                 LINEN_P0, hp, c["seed"], 3, 8, optax.sgd(hp["learning_rate"]),
                                 lambda p: linen_loss(p, (X, Y), key=None, train=False))
        close_trees(jax.tree.map(lambda a: a[i], sw.params), ref_p, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sw.history["loss"][i], ref_l, rtol=1e-4)
    # different seeds (data order fixed: shuffle=False) differ only by their dropout keys
    assert not np.allclose(sw.history["loss"][0], sw.history["loss"][1])


class EqxModel(eqx.Module):
    mlp: eqx.nn.MLP
    drop: eqx.nn.Dropout

    def __call__(self, x, key):
        return jax.vmap(self.mlp)(self.drop(x, key=key, inference=key is None))[:, 0]


EQX_M0 = EqxModel(eqx.nn.MLP(3, 1, 8, 1, key=jax.random.key(2)), eqx.nn.Dropout(0.25))


def eqx_loss(model, batch, *, key):
    x, y = batch
    return jnp.mean((model(x, key) - y) ** 2)


def test_equinox_module_with_dropout_fit_and_sweep_equal_hand_loop():
    hp = {"learning_rate": 0.03}
    res = jaxgd.fit(eqx_loss, EQX_M0, (X, Y), hparams=hp, batch_size=6, epochs=3,
                    shuffle=False, key=0)
    assert isinstance(res.params, EqxModel)  # the module back, activation and dropout kept
    assert res.params.drop.p == 0.25
    params0, static = eqx.partition(EQX_M0, eqx.is_inexact_array)
    ref_p, ref_l = hand_loop(
        lambda p, b, key: eqx_loss(eqx.combine(p, static), b, key=key), params0, hp, 0, 3, 6,
        optax.sgd(0.03), lambda p: eqx_loss(eqx.combine(p, static), (X, Y), key=None))
    close_trees(eqx.filter(res.params, eqx.is_inexact_array), ref_p)
    np.testing.assert_allclose(res.history["loss"], ref_l, rtol=1e-5)

    sw = jaxgd.sweep(eqx_loss, EQX_M0, (X, Y), grid={"learning_rate": [0.01, 0.03]},
                     batch_size=6, epochs=3, shuffle=False)
    np.testing.assert_allclose(sw.history["loss"][1], res.history["loss"], rtol=1e-4)
    best = sw.best()
    assert isinstance(best.params, EqxModel)


def key_probe(params, batch, *, key):
    """A loss that reports a uniform draw of its key as a metric (-1: no key)."""
    u = jnp.float32(-1.0) if key is None else jax.random.uniform(key)
    return jnp.mean((batch[0] @ params["w"] - batch[1]) ** 2), {"u": u}


def test_keys_per_step_config_and_seed_and_none_in_evaluation():
    p0 = {"w": jnp.zeros(3)}
    sw = jaxgd.sweep(key_probe, p0, (X, Y), grid={"learning_rate": [0.01, 0.02],
                                                   "seed": [0, 7]},
                     epochs=4, val_data=(X[:4], Y[:4]))
    seen = set()
    for i, c in enumerate(sw.configs):
        kc = hand_config_key(c["seed"], {"learning_rate": c["learning_rate"]})
        # full batch: one update per epoch, so batch_u of epoch t is the key of update t
        want = [float(jax.random.uniform(jax.random.fold_in(kc, t))) for t in range(4)]
        np.testing.assert_allclose(sw.history["batch_u"][i], want, rtol=1e-6)
        seen |= set(np.round(want, 7))
        assert np.all(sw.history["u"][i] == -1.0)  # full-data evaluation: key=None
        assert np.all(sw.history["val_u"][i] == -1.0)
    assert len(seen) == 16  # never reused over steps, configurations and seeds
    assert "final_u" in sw.table and "final_val_u" in sw.table


def test_accumulation_keys_fold_in_the_micro_batch():
    p0 = {"w": jnp.zeros(3)}
    hp = {"learning_rate": 0.01}
    res = jaxgd.fit(key_probe, p0, (X, Y), hparams=hp, batch_size=12, accumulate=2,
                    epochs=2, key=5, metrics="batch")
    kc = hand_config_key(5, hp)
    want = [np.mean([float(jax.random.uniform(jax.random.fold_in(jax.random.fold_in(kc, t), j)))
                     for j in range(2)]) for t in range(2)]
    np.testing.assert_allclose(res.history["batch_u"], want, rtol=1e-6)


def test_loss_hparams_are_traced_and_reach_the_loss():
    def loss(params, batch, *, hparams):
        return hparams["scale"] * jnp.mean((batch[0] @ params["w"] - batch[1]) ** 2)

    sw = jaxgd.sweep(loss, {"w": jnp.zeros(3)}, (X, Y),
                     grid={"scale": [1.0, 2.0], "learning_rate": [0.01]}, epochs=2)
    assert len(sw) == 2
    np.testing.assert_allclose(sw.table["init_loss"][1], 2 * sw.table["init_loss"][0],
                               rtol=1e-6)
    def loss_default(params, batch, *, hparams):  # declares hparams, none given
        return hparams.get("scale", 1.0) * jnp.mean((batch[0] @ params["w"] - batch[1]) ** 2)

    res = jaxgd.fit(loss_default, {"w": jnp.zeros(3)}, (X, Y),
                    hparams={"learning_rate": 0.01}, epochs=1)
    np.testing.assert_allclose(res.init_loss, float(np.mean(Y**2)), rtol=1e-6)
    with pytest.raises(ValueError, match="'scael'.*does not read"):
        jaxgd.fit(loss, {"w": jnp.zeros(3)}, (X, Y),
                  hparams={"learning_rate": 0.1, "scale": 1.0, "scael": 1.0})


# ----------------------------------------------------------------------------- state


class BNMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        # no bias before BatchNorm: its gradient is zero up to rounding, which Adam
        # would blow up into arbitrary steps (in any implementation)
        h = nn.Dense(8, use_bias=False)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.8)(h)
        return nn.Dense(1)(nn.relu(h))[:, 0]


BN = BNMLP()
BN_VARS = BN.init(jax.random.key(4), X[:2], train=False)


def bn_loss(params, batch, *, state, train):
    x, y = batch
    variables = {"params": params, "batch_stats": state}
    if train:
        out, upd = BN.apply(variables, x, train=True, mutable=["batch_stats"])
        new = upd["batch_stats"]
    else:
        out, new = BN.apply(variables, x, train=False), state
    err = out - y
    return jnp.mean(err**2), new, {"mae": jnp.mean(jnp.abs(err))}


def l2_penalty(params, l2):
    """0.5 * l2 * sum of squares of every leaf but biases (jaxgd's default mask)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return 0.5 * l2 * sum(jnp.sum(v**2) for p, v in leaves if p[-1].key != "bias")


def hand_bn(lr, epochs, bs, l2=0.0):
    params, stats = BN_VARS["params"], BN_VARS["batch_stats"]
    opt = optax.adam(lr)
    ost = opt.init(params)
    losses = []
    for _ in range(epochs):
        for b in batches(bs):
            (_, (stats_new, _)), g = jax.value_and_grad(
                lambda p, b=b, s=stats: (lambda o: (o[0] + l2_penalty(p, l2), o[1:]))(
                    bn_loss(p, b, state=s, train=True)),
                has_aux=True)(params)
            u, ost = opt.update(g, ost, params)
            params = optax.apply_updates(params, u)
            stats = stats_new
        losses.append(float(bn_loss(params, (X, Y), state=stats, train=False)[0]))
    return params, stats, np.asarray(losses)


def test_flax_batchnorm_state_matches_hand_loop_step_for_step():
    res = jaxgd.fit(bn_loss, BN_VARS["params"], (X, Y), state=BN_VARS["batch_stats"],
                    optimizer=optax.adam, hparams={"learning_rate": 0.01, "l2": 0.1},
                    batch_size=8, epochs=3, shuffle=False)
    # the penalty covers params only (not the state), biases excluded
    ref_p, ref_s, ref_l = hand_bn(0.01, 3, 8, l2=0.1)
    close_trees(res.params, ref_p)
    close_trees(res.state, ref_s)
    np.testing.assert_allclose(res.history["loss"], ref_l, rtol=1e-5)
    # the running statistics moved (they were trained as parameters before: stayed 0)
    assert float(jnp.abs(res.state["BatchNorm_0"]["mean"]).max()) > 1e-3
    # per-epoch hand loop, 1 epoch: the state after one epoch too
    one = jaxgd.fit(bn_loss, BN_VARS["params"], (X, Y), state=BN_VARS["batch_stats"],
                    optimizer=optax.adam, hparams={"learning_rate": 0.01}, batch_size=8,
                    epochs=1, shuffle=False)
    close_trees(one.state, hand_bn(0.01, 1, 8)[1])
    assert "mae" in res.history and "batch_mae" in res.history


def test_state_in_sweep_best_and_saved(tmp_path):
    sw = jaxgd.sweep(bn_loss, BN_VARS["params"], (X, Y), state=BN_VARS["batch_stats"],
                     optimizer=optax.adam, grid={"learning_rate": [0.003, 0.01]},
                     batch_size=8, epochs=3, shuffle=False)
    ref_p, ref_s, _ = hand_bn(0.01, 3, 8)
    close_trees(jax.tree.map(lambda a: a[1], sw.state), ref_s, rtol=1e-4, atol=1e-5)
    best = sw.best()
    assert best.state is not None
    close_trees(best.state, jax.tree.map(lambda a: a[best.index], sw.state))
    sw.save(tmp_path / "run")
    back = jaxgd.load(tmp_path / "run")
    close_trees(back.state, sw.state, rtol=0, atol=0)
    close_trees(back.params, sw.params, rtol=0, atol=0)


def fit_lr(*args, **kw):
    return jaxgd.fit(*args, hparams={"learning_rate": 0.1}, epochs=1, **kw)


def test_state_bad_forms_refused_before_compiling():
    variables = BN_VARS

    def drops_state(params, batch):  # the silent bug of old: batch_stats "trained"
        out, _ = BN.apply(params, batch[0], train=True, mutable=["batch_stats"])
        return jnp.mean((out - batch[1]) ** 2)

    with pytest.raises(ValueError, match=r"params\['batch_stats'\].*state="):
        fit_lr(drops_state, dict(variables), (X, Y))

    def returns_state_as_aux(params, batch):
        out, upd = BN.apply({"params": params, "batch_stats": BN_VARS["batch_stats"]},
                            batch[0], train=True, mutable=["batch_stats"])
        return jnp.mean((out - batch[1]) ** 2), upd

    with pytest.raises(TypeError, match="metrics.*'batch_stats'.*declare"):
        fit_lr(returns_state_as_aux, variables["params"], (X, Y))
    with pytest.raises(TypeError, match="declares a 'state' parameter but no state"):
        fit_lr(bn_loss, variables["params"], (X, Y))
    with pytest.raises(TypeError, match="state= was given but loss has no 'state'"):
        fit_lr(linen_loss, LINEN_P0, (X, Y), state=variables["batch_stats"])

    def wrong_state(params, batch, *, state):
        return jnp.mean(batch[0] @ params["w"]), {"other": jnp.zeros(2)}

    with pytest.raises(TypeError, match="new state whose structure differs"):
        fit_lr(wrong_state, {"w": jnp.zeros(3)}, (X, Y), state={"s": jnp.zeros(2)})

    def metrics_vector(params, batch):
        return jnp.mean(batch[0] @ params["w"]), {"v": batch[0][:, 0]}

    with pytest.raises(TypeError, match=r"metrics\['v'\] has shape \(2,\)"):
        fit_lr(metrics_vector, {"w": jnp.zeros(3)}, (X, Y))

    def needs_arg(params, batch, rng):
        return jnp.mean(batch[0] @ params["w"])

    with pytest.raises(TypeError, match="required parameter 'rng'"):
        fit_lr(needs_arg, {"w": jnp.zeros(3)}, (X, Y))


# ----------------------------------------------------------------------------- metrics


def acc_loss(params, batch):
    x, y = batch
    pred = x @ params["w"]
    return jnp.mean((pred - y) ** 2), {"sign_acc": jnp.mean((pred > 0) == (y > 0))}


def test_metrics_history_table_and_best_by_metric_and_seed_mean():
    p0 = {"w": jnp.zeros(3)}
    val = (X[:8], Y[:8])
    lrs = [0.001, 0.05]
    sw = jaxgd.sweep(acc_loss, p0, (X, Y), grid={"learning_rate": lrs, "seed": [0, 1, 2]},
                     batch_size=6, epochs=3, val_data=val)
    # independent reference: the metric recomputed from the recorded parameters
    res = jaxgd.fit(acc_loss, p0, (X, Y), hparams={"learning_rate": 0.05}, batch_size=6,
                    epochs=3, val_data=val, key=1, record_params=True)
    ph = res.param_history()
    want = [float(np.mean(((X[:8] @ np.asarray(w)) > 0) == (Y[:8] > 0))) for w in ph["w"]]
    np.testing.assert_allclose(res.history["val_sign_acc"], want)
    want_full = [float(np.mean(((X @ np.asarray(w)) > 0) == (Y > 0))) for w in ph["w"]]
    np.testing.assert_allclose(res.history["sign_acc"], want_full)
    i = [k for k, c in enumerate(sw.configs) if c == {"learning_rate": 0.05, "seed": 1}][0]
    np.testing.assert_allclose(sw.history["val_sign_acc"][i], want, rtol=1e-6)
    np.testing.assert_allclose(sw.table["final_val_sign_acc"][i], want[-1])
    b = sw.best(metric="val_sign_acc", mode="max")
    assert b.row["final_val_sign_acc"] == sw.table["final_val_sign_acc"].max()
    # mean over seeds, by hand
    means = {lr: np.mean([sw.table["final_val_loss"][k] for k, c in enumerate(sw.configs)
                          if c["learning_rate"] == lr]) for lr in lrs}
    ba = sw.best(average=["seed"])
    assert ba.row["learning_rate"] == min(means, key=means.get)
    np.testing.assert_allclose(ba.row["final_val_loss_mean"], min(means.values()))
    assert ba.row["n"] == 3
    with pytest.raises(ValueError, match="'sed' is not a swept axis"):
        sw.best(average=["sed"])


def test_metrics_plotted_and_saved(tmp_path):
    sw = jaxgd.sweep(acc_loss, {"w": jnp.zeros(3)}, (X, Y), grid={"learning_rate": [0.01, 0.1]},
                     epochs=2, val_data=(X[:8], Y[:8]))
    paths = sw.plot(tmp_path / "fig")
    assert str(tmp_path / "fig" / "metric_sign_acc.png") in paths
    sw.save(tmp_path / "run")
    back = jaxgd.load(tmp_path / "run")
    np.testing.assert_array_equal(back.history["val_sign_acc"], sw.history["val_sign_acc"])
    assert back.best(metric="val_sign_acc", mode="max").index == sw.best(
        metric="val_sign_acc", mode="max").index


def test_plain_loss_compiles_to_the_same_program():
    """A loss using none of the new features: the jaxpr of the program is unchanged by
    a loss that only adds an ignored (non-dict) aux."""
    from jaxgd.options import Options
    from jaxgd.prepare import prepare
    from jaxgd.program import build_program

    def plain(p, b):
        return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)

    opts = Options(hparams={"learning_rate": 0.1}, epochs=2)
    a = prepare(plain, {"w": jnp.zeros(3)}, (X, Y), opts)
    assert a.spec.form.plain and a.state is None
    from jaxgd.spec import Traced

    tc = {k: np.asarray([[v]], np.float32) for k, v in a.numeric.items()}
    traced = Traced(key_bits=None, valid=None, values=tc)
    args = (a.params, a.data, None, traced, jax.random.key(0)[None], None, None)
    init, block = build_program(a.spec, 2)  # the state's init and a block of evaluations
    text = str(jax.make_jaxpr(
        lambda *xs: block(init(*xs), jnp.int32(0), jnp.int32(2), *xs[1:]))(*args))
    assert "random_fold_in" not in text and "random_bits" not in text


# ----------------------------------------------------------------------------- libraries


def test_default_mask_recognises_biases_of_every_library():
    """The public mask is the one the program applies: nnx's trailing ``.value`` is
    skipped, so ``losses.l2`` without a mask leaves an nnx bias out, as ``fit`` does."""
    from flax import nnx

    from jaxgd.losses import default_penalty_mask, l2

    lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    _, nnx_state = nnx.split(lin)
    mask = default_penalty_mask(nnx_state)
    assert mask["bias"].value is False and mask["kernel"].value is True
    kernel = np.asarray(nnx_state["kernel"].value)
    np.testing.assert_allclose(float(l2(nnx_state)), 0.5 * np.sum(kernel ** 2),
                               rtol=1e-6)
    eq = eqx.nn.Linear(3, 2, key=jax.random.key(0))
    m = default_penalty_mask(eq)
    assert m.bias is False and m.weight is True
    assert default_penalty_mask({"b": 1.0, "w": 2.0}) == {"b": False, "w": True}  # haiku
    assert default_penalty_mask({"linear": {"b": 1.0, "w": 2.0}})["linear"] == {
        "b": False, "w": True}  # haiku, nested
    assert default_penalty_mask({"Dense_0": {"bias": 1.0, "kernel": 2.0}})["Dense_0"] == {
        "bias": False, "kernel": True}  # linen
    assert jaxgd.program.default_penalty_mask is default_penalty_mask  # one function


def test_nnx_state_fit_with_l2_equals_hand_loop():
    from flax import nnx

    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    graphdef, params0 = nnx.split(model)

    def loss(params, batch):
        m = nnx.merge(graphdef, params)
        return jnp.mean((m(batch[0])[:, 0] - batch[1]) ** 2)

    res = jaxgd.fit(loss, params0, (X, Y), hparams={"learning_rate": 0.05, "l2": 0.5},
                    batch_size=8, epochs=3, shuffle=False)
    p = {"w": jnp.asarray(params0["kernel"][...]), "b": jnp.asarray(params0["bias"][...])}

    def hand(p, b):  # the bias is not penalised
        return jnp.mean((b[0] @ p["w"][:, 0] + p["b"][0] - b[1]) ** 2) + 0.25 * jnp.sum(
            p["w"] ** 2)

    for _ in range(3):
        for b in batches(8):
            g = jax.grad(hand)(p, b)
            p = jax.tree.map(lambda a, d: a - 0.05 * d, p, g)
    np.testing.assert_allclose(res.params["kernel"][...], p["w"], rtol=1e-5)
    np.testing.assert_allclose(res.params["bias"][...], p["b"], rtol=1e-5)


def test_bfloat16_params_train_with_float32_losses():
    p0 = {"w": jnp.zeros(3, jnp.bfloat16)}

    def loss(p, b):
        return jnp.mean((b[0].astype(jnp.bfloat16) @ p["w"] - b[1]) ** 2)

    res = jaxgd.fit(loss, p0, (X, Y), hparams={"learning_rate": 0.05}, batch_size=8,
                    epochs=2, shuffle=False)
    assert res.params["w"].dtype == jnp.bfloat16
    assert res.history["loss"].dtype == np.float32
    p = p0
    opt = optax.sgd(jnp.asarray(0.05, jnp.bfloat16))
    s = opt.init(p)
    for _ in range(2):
        for b in batches(8):
            g = jax.grad(loss)(p, b)
            u, s = opt.update(g, s, p)
            p = optax.apply_updates(p, u)
    np.testing.assert_array_equal(np.asarray(res.params["w"], np.float32),
                                  np.asarray(p["w"], np.float32))
    # the loss itself is a bfloat16 computation: equal to its rounding (XLA may fuse it)
    np.testing.assert_allclose(res.history["loss"][-1], float(jax.jit(loss)(p, (X, Y))),
                               rtol=4e-3)


LOAD_SCRIPT = """
import sys, jax, equinox as eqx, jaxgd
class EqxModel(eqx.Module):
    mlp: eqx.nn.MLP
    drop: eqx.nn.Dropout
    def __call__(self, x, key):
        return jax.vmap(self.mlp)(self.drop(x, key=key, inference=key is None))[:, 0]
like = EqxModel(eqx.nn.MLP(3, 1, 8, 1, key=jax.random.key(9)), eqx.nn.Dropout(0.25))
sw = jaxgd.load(sys.argv[1], like=like)
best = sw.best()
print(type(best.params).__name__, float(best.params.mlp.layers[0].weight.sum()),
      best.params.drop.p, best.params.mlp.activation is jax.nn.relu)
"""


def test_load_equinox_params_in_a_fresh_process(tmp_path):
    import subprocess

    sw = jaxgd.sweep(eqx_loss, EQX_M0, (X, Y), grid={"learning_rate": [0.01, 0.03]},
                     batch_size=6, epochs=2, out=tmp_path / "run")
    best = sw.best()
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name, wsum, p, relu = out.stdout.split()
    assert name == "EqxModel" and p == "0.25" and relu == "True"
    np.testing.assert_allclose(float(wsum), float(best.params.mlp.layers[0].weight.sum()),
                               rtol=1e-6)


# ----------------------------------------------------------------------------- optax


def sq_loss(p, b):
    return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)


def optax_loop(opt, epochs, bs):
    p = {"w": jnp.zeros(3)}
    s = opt.init(p)
    for _ in range(epochs):
        for b in batches(bs):
            g = jax.grad(sq_loss)(p, b)
            u, s = opt.update(g, s, p)
            p = optax.apply_updates(p, u)
    return p


def test_optax_schedule_callable_as_learning_rate():
    sched = optax.warmup_cosine_decay_schedule(0.0, 0.1, 3, 10, end_value=0.01)
    res = jaxgd.fit(sq_loss, {"w": jnp.zeros(3)}, (X, Y), optimizer=optax.adam,
                    hparams={"learning_rate": sched}, batch_size=8, epochs=4, shuffle=False)
    close_trees(res.params, optax_loop(optax.adam(sched), 4, 8))
    # history["lr"]: the rate of each epoch's last update (updates 2, 5, 8, 11)
    np.testing.assert_allclose(res.history["lr"], [float(sched(t)) for t in (2, 5, 8, 11)],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="schedule function and schedule='cosine'"):
        jaxgd.fit(sq_loss, {"w": jnp.zeros(3)}, (X, Y), optimizer=optax.adam,
                  hparams={"learning_rate": sched, "decay_steps": 5}, schedule="cosine")


def test_rate_keyword_aliases_collisions_and_injected_lr():
    def sgd_lr(lr, momentum=0.0):
        return optax.sgd(lr, momentum)

    res = jaxgd.fit(sq_loss, {"w": jnp.zeros(3)}, (X, Y), optimizer=sgd_lr,
                    hparams={"learning_rate": 0.05, "momentum": 0.5}, batch_size=8,
                    epochs=2, shuffle=False)
    close_trees(res.params, optax_loop(optax.sgd(0.05, 0.5), 2, 8))

    def with_warmup(learning_rate, warmup_steps=0):
        return optax.sgd(learning_rate)

    with pytest.raises(ValueError, match="keyword 'warmup_steps' that is also jaxgd's own"):
        jaxgd.fit(sq_loss, {"w": jnp.zeros(3)}, (X, Y), optimizer=with_warmup,
                  hparams={"learning_rate": 0.1})
    ready = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05)
    res = jaxgd.fit(sq_loss, {"w": jnp.zeros(3)}, (X, Y), optimizer=ready, epochs=2)
    np.testing.assert_allclose(res.history["lr"], [0.05, 0.05])
    res = jaxgd.fit(sq_loss, {"w": jnp.zeros(3)}, (X, Y), optimizer=optax.sgd(0.05), epochs=2)
    assert np.all(np.isnan(res.history["lr"]))  # documented: optax does not expose it


@pytest.mark.slow
def test_readme_research_example_runs_verbatim():
    """The README's research-code example, exactly as written."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Research code:", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102
    assert float(ns["res"].history["val_accuracy"][-1]) > 0.85
    best = ns["sw"].best(metric="val_accuracy", mode="max", average=["seed"])
    assert best.row["n"] == 3 and best.row["final_val_accuracy_mean"] > 0.85


def test_state_resumed_from_chunks(tmp_path, monkeypatch):
    kw = dict(state=BN_VARS["batch_stats"], optimizer=optax.adam,
              grid={"learning_rate": [0.003, 0.01]}, batch_size=8, epochs=2, shuffle=False,
              out=tmp_path / "run", chunk_size=1)
    a = jaxgd.sweep(bn_loss, BN_VARS["params"], (X, Y), **kw)

    def recompute(*args, **kwargs):
        raise AssertionError("a finished chunk was recomputed")

    monkeypatch.setattr(jaxgd.engine.Engine, "run_chunk", recompute)
    b = jaxgd.sweep(bn_loss, BN_VARS["params"], (X, Y), **kw)
    close_trees(b.state, a.state, rtol=0, atol=0)
    close_trees(b.params, a.params, rtol=0, atol=0)


def test_state_updated_only_on_accepted_steps():
    def counting(params, batch, *, state, train):
        base = jnp.mean((batch[0] @ params["w"] - batch[1]) ** 2)
        bad = train & (state["n"] >= 3)  # the 4th training step is non-finite: refused
        value = jnp.where(bad, jnp.nan, base)
        return value, {"n": state["n"] + (1.0 if train else 0.0)}

    res = jaxgd.fit(counting, {"w": jnp.zeros(3)}, (X, Y), state={"n": jnp.float32(0.0)},
                    hparams={"learning_rate": 0.01}, batch_size=8, epochs=3, shuffle=False)
    assert res.stop_reason == "diverged"
    assert res.steps_run == 3
    assert float(res.state["n"]) == 3.0  # the refused step left the state as it was


# ----------------------------------------------------------------------------- init= a model


def eqx_init(key, hidden=8):
    return EqxModel(eqx.nn.MLP(3, 1, hidden, 1, key=key), eqx.nn.Dropout(0.25))


def test_init_returning_an_equinox_module_equals_hand_loop():
    sw = jaxgd.sweep(eqx_loss, None, (X, Y), init=eqx_init,
                     grid={"learning_rate": [0.01, 0.03], "seed": [0, 1]}, batch_size=6,
                     epochs=3, shuffle=False)
    assert isinstance(sw.params, EqxModel) and sw.params.drop.p == 0.25
    assert sw.params.mlp.activation is jax.nn.relu
    trained = eqx.filter(sw.params, eqx.is_inexact_array)
    t = sw.table
    for i in (0, len(t) - 1):  # (0.01, seed 0) and (0.03, seed 1)
        lr, seed = float(t["learning_rate"][i]), int(t["seed"][i])
        # the documented draw: init(fold_in(key(seed), 0x5EED)); the module's dropout p
        # and activation held as they are
        m0 = eqx_init(jax.random.fold_in(jax.random.key(seed), 0x5EED))
        np.testing.assert_array_equal(  # the public name of that key
            jax.random.key_data(jaxgd.init_key(seed)),
            jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 0x5EED)))
        p0, static = eqx.partition(m0, eqx.is_inexact_array)
        ref_p, ref_l = hand_loop(
            lambda p, b, key, static=static: eqx_loss(eqx.combine(p, static), b, key=key),
            p0, {"learning_rate": lr}, seed, 3, 6, optax.sgd(lr),
            lambda p, static=static: eqx_loss(eqx.combine(p, static), (X, Y), key=None))
        close_trees(jax.tree.map(lambda a, i=i: a[i], trained), ref_p, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sw.history["loss"][i], ref_l, rtol=1e-4)
    best = sw.best()
    assert isinstance(best.params, EqxModel)
    # a shape axis of such an init: each width its own group, modules back
    sh = jaxgd.sweep(eqx_loss, None, (X, Y), init=eqx_init,
                     grid={"hidden": [4, 8], "learning_rate": [0.03]}, batch_size=6, epochs=1)
    assert sh.table["final_loss"].notna().all()
    assert isinstance(sh.best().params, EqxModel)


def test_init_returning_a_model_with_a_computed_held_array_refused():
    class Counted(eqx.Module):
        w: jax.Array
        n: jax.Array  # an int array computed in init: cannot be held as a fixed value

    def init(key):
        return Counted(jax.random.normal(key, (3,)), jnp.arange(3))

    def loss(m, b):
        return jnp.mean((b[0] @ m.w - b[1]) ** 2)

    with pytest.raises(ValueError, match=r"init\(key\) returned a model object whose leaf "
                       r"\.n is a int32 array"):
        jaxgd.sweep(loss, None, (X, Y), init=init, grid={"learning_rate": [0.1]}, epochs=1)
