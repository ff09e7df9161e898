"""Features of ``jaxgd.fit`` against NumPy references: stop reasons, clipping,
accumulation, penalties and weight decay, dtypes, auxiliary outputs, shuffling.

Several tests share one compiled program on purpose (same loss, shapes and keys of
``hparams``, other values): that keeps the suite fast and exercises value changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd
from jaxgd import losses

# ----------------------------------------------------------------------------- helpers


def mse(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def mse_aux(params, batch):
    x, y = batch
    r = x @ params["w"] + params["b"] - y
    return jnp.mean(r**2), {"max_abs_residual": jnp.max(jnp.abs(r)), "n": r.shape[0]}


def np_loss_grad(w, b, x, y):
    r = x @ w + b - y
    return np.mean(r**2), 2.0 / len(y) * x.T @ r, 2.0 / len(y) * np.sum(r)


def regression(n=50, d=3, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, d))
    y = x @ np.array([1.5, -2.0, 0.5])[:d] + 0.3 + 0.1 * r.normal(size=n)
    return x, y


def params_of(w, b):
    return {"w": jnp.asarray(w), "b": jnp.asarray(b)}


def np_batches(n, batch_size, drop_last=False):
    if batch_size is None:
        return [np.arange(n)]
    out = [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    return out[:-1] if drop_last and len(out[-1]) < batch_size else out


# ----------------------------------------------------------------------------- stops
# one program (full-batch SGD, float64, 3000 epochs) serves every stop reason below

STOP_EPOCHS = 3000


def run_quadratic(lr, **stops):
    x, y = regression()
    res = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y), hparams={"learning_rate": lr},
                    batch_size=None, epochs=STOP_EPOCHS, shuffle=False, **stops)
    return res, x, y


def np_gd(x, y, lr, steps):
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        _, gw, gb = np_loss_grad(w, b, x, y)
        w, b = w - lr * gw, b - lr * gb
    return w, b


def test_stop_grad_tol(x64, report):
    res, x, y = run_quadratic(0.1, grad_tol=1e-6)
    assert res.stop_reason == "grad_tol"
    assert res.epochs_run < STOP_EPOCHS
    gn = res.history["grad_norm"]
    assert gn[-1] <= 1e-6 < gn[-2]
    _, gw, gb = np_loss_grad(np.asarray(res.params["w"]), float(res.params["b"]), x, y)
    np_gn = np.sqrt(np.sum(gw**2) + gb**2)
    report("grad_norm vs numpy at grad_tol stop", rel=abs(np_gn - gn[-1]) / np_gn)
    assert np_gn == pytest.approx(gn[-1], rel=1e-8)
    w, b = np_gd(x, y, 0.1, res.steps_run)
    np.testing.assert_allclose(res.params["w"], w, rtol=0, atol=1e-12)


def test_stop_loss_target(x64):
    res, x, y = run_quadratic(0.01, loss_target=0.5)
    assert res.stop_reason == "loss_target"
    loss = res.history["loss"]
    assert loss[-1] <= 0.5 < loss[-2]
    w, b = np.asarray(res.params["w"]), float(res.params["b"])
    assert np_loss_grad(w, b, x, y)[0] == pytest.approx(loss[-1], rel=1e-12)


def test_stop_max_epochs(x64):
    res, _, _ = run_quadratic(1e-4)
    assert res.stop_reason == "max_epochs"
    assert res.epochs_run == STOP_EPOCHS == res.steps_run
    assert len(res.history["loss"]) == STOP_EPOCHS
    assert np.all(np.diff(res.history["loss"]) < 0)


def test_stop_diverged_keeps_last_finite_params(x64):
    lr = 50.0  # |1 - lr * L| >> 1: the iterates grow geometrically until they overflow
    # growth check off: this test is about the non-finite path
    res, x, y = run_quadratic(lr, diverge_factor=float("inf"))
    assert res.stop_reason == "diverged"
    assert 1 <= res.epochs_run < STOP_EPOCHS
    # the failing update is either refused (non-finite step) or, when only the epoch-end
    # loss of its result overflows, it is the last one applied
    assert res.steps_run in (res.epochs_run - 1, res.epochs_run)
    w, b = np.asarray(res.params["w"]), float(res.params["b"])
    assert np.all(np.isfinite(w)) and np.isfinite(b)
    assert np.max(np.abs(w)) > 1e100  # it really ran away
    # the returned parameters are the GD iterate after steps_run updates ...
    w_ref, b_ref = np_gd(x, y, lr, res.steps_run)
    np.testing.assert_allclose(w, w_ref, rtol=1e-8)
    # ... and their loss, gradient or next update is not finite
    with np.errstate(all="ignore"):
        loss, gw, gb = np_loss_grad(w, b, x, y)
        nxt = np.concatenate([w - lr * gw, [b - lr * gb]])
        ok = np.isfinite(loss) and np.all(np.isfinite(gw)) and np.all(np.isfinite(nxt))
    assert not ok
    assert np.all(np.isfinite(res.history["loss"][:-1]))


def np_sgd_until_divergence(x, y, lr, batch_size, epochs):
    """Mini-batch GD in order (NumPy) with jaxgd's documented guard: (w, b, steps applied,
    epochs run, global index of the first non-finite step or None). The parameters kept
    are those at the start of the epoch (eval_every=1) in which a step's loss or gradient
    is first non-finite; a non-finite full-data loss after an epoch keeps that epoch's."""
    w, b, steps = np.zeros(x.shape[1]), 0.0, 0
    with np.errstate(all="ignore"):
        for epoch in range(epochs):
            w1, b1 = w, b
            for j, idx in enumerate(np_batches(len(y), batch_size)):
                loss, gw, gb = np_loss_grad(w1, b1, x[idx], y[idx])
                gn = np.sqrt(np.sum(gw**2) + gb**2)
                if not (np.isfinite(loss) and np.isfinite(gn)):
                    return w, b, steps, epoch + 1, steps + j
                w1, b1 = w1 - lr * gw, b1 - lr * gb
            w, b, steps = w1, b1, steps + len(np_batches(len(y), batch_size))
            if not np.isfinite(np_loss_grad(w, b, x, y)[0]):
                return w, b, steps, epoch + 1, None
    return w, b, steps, epochs, None


def test_minibatch_divergence_keeps_the_parameters_of_the_last_evaluation(x64):
    """A step with a non-finite loss inside an epoch: the run keeps the parameters (and
    step count) of the epoch's start, the last evaluation's, as the NumPy loop says."""
    x, y = regression()
    lr, bsz = 1.0, 10
    w_ref, b_ref, steps_ref, epochs_ref, bad = np_sgd_until_divergence(x, y, lr, bsz, 400)
    assert bad is not None and bad % 5 != 0  # a step inside an epoch is the first bad one
    res = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y), hparams={"learning_rate": lr},
                    batch_size=bsz, epochs=400, shuffle=False, diverge_factor=float("inf"))
    assert res.stop_reason == "diverged"
    assert (res.steps_run, res.epochs_run) == (steps_ref, epochs_ref)
    np.testing.assert_allclose(np.asarray(res.params["w"]), w_ref, rtol=1e-10)
    np.testing.assert_allclose(float(res.params["b"]), b_ref, rtol=1e-10)
    assert np.max(np.abs(w_ref)) > 1e100  # it really ran away


def test_overflowing_update_from_a_finite_step_is_caught(x64):
    """An update that overflows from a finite loss and gradient (lr * g > float max) leaves
    non-finite parameters with finite losses after it; the evaluation's check stops the
    run as diverged with the epoch's starting parameters."""
    x = np.linspace(-1.0, 1.0, 50)
    y = x.copy()
    x[-1], y[-1] = 100.0, 101.0  # only the last batch has a gradient: 2 * (-1) * 100 / 10
    loss = lambda p, batch: jnp.mean((p["w"] * batch[0] - batch[1]) ** 2)  # noqa: E731
    res = jaxgd.fit(loss, {"w": jnp.float64(1.0)}, (x, y), hparams={"learning_rate": 1e308},
                    batch_size=10, epochs=3, shuffle=False, metrics="batch")
    assert np.isinf(1e308 * 20.0)  # the step's update (float64) overflows
    assert res.stop_reason == "diverged"
    assert (res.steps_run, res.epochs_run) == (0, 1)
    assert float(res.params["w"]) == 1.0


def test_default_diverge_factor_stops_a_runaway_before_overflow(x64):
    res, _, _ = run_quadratic(50.0)
    assert res.stop_reason == "diverged"
    loss = res.history["loss"]
    assert np.all(np.isfinite(loss))
    assert loss[-1] > 1e6 * res.init_loss >= loss[-2]


def test_stop_diverge_factor(x64):
    res, _, _ = run_quadratic(1.0, diverge_factor=1e3)
    assert res.stop_reason == "diverged"
    loss = res.history["loss"]
    assert loss[-1] > 1e3 * res.init_loss >= loss[-2]
    assert np.all(np.isfinite(loss))


def test_stop_patience_restores_best_validation_epoch(x64):
    """Train pulls w to 2, validation wants w = 1: the validation loss falls then rises."""
    x = np.linspace(-1.0, 1.0, 20)[:, None]
    y_tr, y_va = 2.0 * x[:, 0], 1.0 * x[:, 0]
    patience, lr = 4, 0.1
    res = jaxgd.fit(mse, params_of(np.zeros(1), 0.0), (x, y_tr), val_data=(x, y_va),
                    hparams={"learning_rate": lr}, batch_size=None, epochs=500,
                    shuffle=False, patience=patience, restore_best=True)
    val = res.history["val_loss"]
    assert res.stop_reason == "patience"
    assert res.best_epoch == int(np.argmin(val))
    assert res.epochs_run == res.best_epoch + 1 + patience
    assert val[-1] > val[res.best_epoch]  # so restoring matters
    # returned params = GD iterate after best_epoch + 1 updates
    w, b = np_gd(x, y_tr, lr, res.best_epoch + 1)
    np.testing.assert_allclose(res.params["w"], w, rtol=0, atol=1e-12)
    assert float(res.params["b"]) == pytest.approx(b, abs=1e-12)
    assert np_loss_grad(np.asarray(res.params["w"]), float(res.params["b"]), x, y_va)[0] == \
        pytest.approx(val[res.best_epoch], rel=1e-12)


# ----------------------------------------------------------------------------- clipping


@pytest.mark.parametrize(
    "clip_value,clip_norm",
    [(0.5, 1e9), (1e9, 0.7), (0.5, 0.7)],  # by value, by global norm, both (value first)
    ids=["value", "norm", "both"],
)
def test_clipping_matches_numpy(x64, report, clip_value, clip_norm):
    x, y = regression(n=20)
    lr, epochs = 0.1, 3
    w0, b0 = np.array([3.0, 3.0, -3.0]), 2.0
    res = jaxgd.fit(mse, params_of(w0, b0), (x, y), batch_size=None, epochs=epochs,
                    shuffle=False, hparams={"learning_rate": lr, "clip_value": clip_value,
                                            "clip_norm": clip_norm})
    w, b = w0.copy(), b0
    for step in range(epochs):
        _, gw, gb = np_loss_grad(w, b, x, y)
        g = np.concatenate([gw, [gb]])
        if step == 0:
            assert np.max(np.abs(g)) > 0.5 and np.linalg.norm(g) > 0.7  # clipping is active
        g = np.clip(g, -clip_value, clip_value)
        g = g * min(1.0, clip_norm / np.linalg.norm(g))
        w, b = w - lr * g[:-1], b - lr * g[-1]
    err = max(np.max(np.abs(np.asarray(res.params["w"]) - w)), abs(float(res.params["b"]) - b))
    report(f"clipping ({clip_value}, {clip_norm}) vs numpy", max_abs=err)
    assert err < 1e-12


# ----------------------------------------------------------------------------- accumulation


def test_accumulation_equals_larger_batch(x64, report):
    x, y = regression(n=26)  # 26 = 4 * 6 + 2: a short last batch
    common = dict(hparams={"learning_rate": 0.05, "momentum": 0.5}, optimizer="momentum",
                  epochs=3, shuffle=True, key=3, record_steps=True)
    p0 = params_of(np.ones(3), 0.0)
    acc = jaxgd.fit(mse, p0, (x, y), batch_size=3, accumulate=2, **common)
    big = jaxgd.fit(mse, p0, (x, y), batch_size=6, **common)
    assert acc.steps_run == big.steps_run == 3 * 5
    err = np.max(np.abs(np.asarray(acc.params["w"]) - np.asarray(big.params["w"])))
    report("accumulate=2 x B=3 vs B=6", max_abs=err,
           step_loss=np.max(np.abs(acc.history["step_loss"] - big.history["step_loss"])))
    assert err < 1e-12
    np.testing.assert_allclose(acc.history["step_loss"], big.history["step_loss"],
                               rtol=1e-12)


# ----------------------------------------------------------------------------- penalties


PENALTY_CASES = {
    "l1": dict(l1=0.1, l2=0.0, weight_decay=0.0),
    "l2": dict(l1=0.0, l2=0.3, weight_decay=0.0),
    "elastic_net": dict(l1=0.05, l2=0.2, weight_decay=0.0),
    "weight_decay": dict(l1=0.0, l2=0.0, weight_decay=0.4),
}


@pytest.mark.parametrize("name", list(PENALTY_CASES))
def test_penalties_and_weight_decay_match_numpy(x64, report, name):
    """Mini-batch SGD (B=4, N=10): penalties on w only, never on the bias b."""
    hp = PENALTY_CASES[name]
    x, y = regression(n=10)
    lr, epochs = 0.05, 3
    w0, b0 = np.array([1.0, -1.0, 2.0]), 0.5
    res = jaxgd.fit(mse, params_of(w0, b0), (x, y), batch_size=4, epochs=epochs,
                    shuffle=False, hparams={"learning_rate": lr, **hp})
    w, b = w0.copy(), b0
    for _ in range(epochs):
        for idx in np_batches(10, 4):
            _, gw, gb = np_loss_grad(w, b, x[idx], y[idx])
            gw = gw + hp["l1"] * np.sign(w) + hp["l2"] * w
            w, b = w - lr * gw - lr * hp["weight_decay"] * w, b - lr * gb
    err = max(np.max(np.abs(np.asarray(res.params["w"]) - w)), abs(float(res.params["b"]) - b))
    report(f"{name} vs numpy", max_abs=err)
    assert err < 1e-12
    # the recorded objective is the data loss plus the penalty at epoch end
    data_loss = np_loss_grad(w, b, x, y)[0]
    pen = hp["l1"] * np.sum(np.abs(w)) + 0.5 * hp["l2"] * np.sum(w * w)
    assert res.history["loss"][-1] == pytest.approx(data_loss, rel=1e-12)
    assert res.history["objective"][-1] == pytest.approx(data_loss + pen, rel=1e-12)


def test_l1_subgradient_is_zero_at_zero(x64):
    """Weights at exactly 0 (the built-in linear models start there) with no data gradient
    stay at 0 under L1, as with NumPy's sign: JAX's derivative of abs at 0 is 1, which
    would push them to -lr*l1 and back at every other step. The same for the public
    ``losses.l1`` / ``elastic_net`` used inside a user's loss."""
    x, y = regression(n=10)
    x[:, 1] = 0.0  # no data gradient for w[1]
    lr, l1, epochs = 0.5, 0.1, 4
    w0 = np.zeros(3)
    res = jaxgd.fit(mse, params_of(w0, 0.0), (x, y), batch_size=None, epochs=epochs,
                    shuffle=False, hparams={"learning_rate": lr, "l1": l1},
                    record_params=True)

    def own(p, batch):  # the penalty written by the user with the public helpers
        return mse(p, batch) + l1 * losses.l1(p) + 0.0 * losses.elastic_net(p, 1.0, 0.0)

    res_own = jaxgd.fit(own, params_of(w0, 0.0), (x, y), batch_size=None, epochs=epochs,
                        shuffle=False, hparams={"learning_rate": lr}, record_params=True)
    w, b, ws = w0.copy(), 0.0, []
    for _ in range(epochs):
        _, gw, gb = np_loss_grad(w, b, x, y)
        w, b = w - lr * (gw + l1 * np.sign(w)), b - lr * gb
        ws.append(w.copy())
    for r in (res, res_own):
        np.testing.assert_array_equal(r.param_history()["w"][:, 1], 0.0)
        np.testing.assert_allclose(r.param_history()["w"], np.array(ws), rtol=0, atol=1e-12)
        assert abs(float(r.params["b"]) - b) < 1e-12
    g = jax.grad(lambda w: losses.l1({"w": w}) + losses.elastic_net({"w": w}, 1.0, 0.0))
    np.testing.assert_array_equal(g(jnp.array([0.0, 2.0, -3.0])), [0.0, 2.0, -2.0])


# ----------------------------------------------------------------------------- dtypes, aux


def small_fit(loss, dtype):
    x, y = regression(n=12)
    x, y = x.astype(dtype), y.astype(dtype)
    p0 = {"w": jnp.zeros(3, dtype), "b": jnp.zeros((), dtype)}
    return jaxgd.fit(loss, p0, (x, y), hparams={"learning_rate": 0.05}, batch_size=5,
                     epochs=4, shuffle=True, key=1)


def test_float32_and_float64_give_dtype_consistent_params(report, x64_context):
    r32 = small_fit(mse, np.float32)
    with x64_context():
        r64 = small_fit(mse, np.float64)
    for res, dt in ((r32, np.float32), (r64, np.float64)):
        assert all(leaf.dtype == dt for leaf in jax.tree.leaves(res.params))
        assert all(h.dtype == dt for h in res.history.values())
        assert res.stop_reason == "max_epochs"
    err = np.max(np.abs(np.asarray(r32.params["w"], np.float64) - np.asarray(r64.params["w"])))
    report("float32 vs float64 same run", max_abs=err)
    np.testing.assert_allclose(np.asarray(r32.params["w"]), np.asarray(r64.params["w"]),
                               rtol=1e-5, atol=1e-6)


def test_float32_params_with_float64_data(x64):
    """The params' dtype rules: a loss widened to float64 by the data is cast back."""
    x, y = regression(n=12)  # float64 under x64
    p0 = {"w": jnp.zeros(3, jnp.float32), "b": jnp.zeros((), jnp.float32)}
    res = jaxgd.fit(mse, p0, (x, y), hparams={"learning_rate": 0.05}, batch_size=2,
                    accumulate=2, epochs=4, val_data=(x, y), record_steps=True)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(res.params))
    assert all(h.dtype == np.float32 for h in res.history.values())
    assert res.history["loss"][-1] < 0.5 * res.init_loss


def test_loss_with_aux_output():
    plain = small_fit(mse, np.float32)
    aux = small_fit(mse_aux, np.float32)
    assert aux.stop_reason == "max_epochs"
    for a, b in zip(jax.tree.leaves(aux.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(aux.history["loss"], plain.history["loss"])


# ----------------------------------------------------------------------------- shuffling
# sample i carries id i; a batch's loss is mean(2**id) + mean(w[id]), so B * step_loss
# rounds to sum(2**id): its binary digits are exactly the set of samples in the batch.

N_IDS, LR_IDS = 10, 2.0**-12


def id_loss(params, ids):
    return jnp.mean(2.0**ids) + jnp.mean(params["w"][ids.astype(jnp.int32)])


def decode_batches(step_loss, sizes):
    out = []
    for row in step_loss:
        batches = []
        for value, size in zip(row, sizes, strict=True):
            code = int(round(value * size))
            batches.append([i for i in range(N_IDS) if code >> i & 1])
            assert len(batches[-1]) == size
        out.append(batches)
    return out


def run_ids(shuffle, drop_last=False, key=0, epochs=3, batch_size=3):
    res = jaxgd.fit(id_loss, {"w": jnp.zeros(N_IDS)}, np.arange(N_IDS, dtype=np.float64),
                    hparams={"learning_rate": LR_IDS}, batch_size=batch_size, epochs=epochs,
                    shuffle=shuffle, drop_last=drop_last, key=key, record_steps=True)
    sizes = [len(b) for b in np_batches(N_IDS, batch_size, drop_last)]
    batches = decode_batches(res.history["step_loss"], sizes)
    # parameter updates agree with the decoded batches: w[i] -= lr / |batch| per visit
    w = np.zeros(N_IDS)
    for epoch in batches:
        for batch in epoch:
            w[batch] -= LR_IDS / len(batch)
    np.testing.assert_allclose(np.asarray(res.params["w"]), w, rtol=0, atol=1e-15)
    return res, batches


def test_no_shuffle_visits_in_order(x64):
    _, batches = run_ids(False)
    assert batches == [[[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]] * 3


@pytest.mark.parametrize("shuffle", [True, "feistel", "uniform"])
def test_shuffle_is_a_permutation_per_epoch_and_reproducible(x64, shuffle):
    res, batches = run_ids(shuffle)
    orders = [sum(epoch, []) for epoch in batches]
    for order in orders:
        assert sorted(order) == list(range(N_IDS))  # every sample exactly once
    assert len({tuple(o) for o in orders}) > 1  # a fresh order every epoch
    assert any(o != sorted(o) for o in orders)  # not the in-order loop
    again, _ = run_ids(shuffle)  # same key: bit-identical
    np.testing.assert_array_equal(np.asarray(again.params["w"]), np.asarray(res.params["w"]))
    np.testing.assert_array_equal(again.history["step_loss"], res.history["step_loss"])
    _, other = run_ids(shuffle, key=1)  # another key: another order
    assert other != batches


def test_shuffle_drop_last_visits_distinct_samples(x64):
    _, batches = run_ids(True, drop_last=True)
    for epoch in batches:
        seen = sum(epoch, [])
        assert len(epoch) == 3 and len(seen) == len(set(seen)) == 9


# ----------------------------------------------------------------------------- eval_every


def test_eval_every_same_trajectory_fewer_rows(x64):
    x, y = regression()
    kw = dict(hparams={"learning_rate": 0.05}, batch_size=4, epochs=23, key=3)
    every1 = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y), **kw)
    every5 = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y), eval_every=5, **kw)
    # the training steps do not depend on how often we evaluate
    np.testing.assert_array_equal(np.asarray(every5.params["w"]),
                                  np.asarray(every1.params["w"]))
    assert every5.epochs_run == every1.epochs_run == 23
    assert every5.steps_run == every1.steps_run
    # rows at epochs 4, 9, 14, 19 and the last epoch 22, equal to the per-epoch rows there
    np.testing.assert_array_equal(every5.history["epoch"], [4, 9, 14, 19, 22])
    np.testing.assert_allclose(every5.history["loss"],
                               every1.history["loss"][[4, 9, 14, 19, 22]], rtol=1e-12)


def test_eval_every_stops_at_an_evaluation(x64):
    x, y = regression()
    first = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y), batch_size=None,
                      hparams={"learning_rate": 0.1}, epochs=500, shuffle=False,
                      loss_target=0.1)
    assert first.stop_reason == "loss_target"
    later = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y), batch_size=None,
                      hparams={"learning_rate": 0.1}, epochs=500, shuffle=False,
                      loss_target=0.1, eval_every=7)
    assert later.stop_reason == "loss_target"
    # it runs on to the end of the block in which the target was first reached
    assert later.epochs_run == -(-first.epochs_run // 7) * 7
    assert later.history["loss"][-1] <= 0.1


def test_eval_every_non_finite_step_stops_at_once(x64):
    x, y = regression()
    res = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y), batch_size=None,
                    hparams={"learning_rate": 50.0}, epochs=5000, shuffle=False,
                    diverge_factor=float("inf"), eval_every=1000)
    assert res.stop_reason == "diverged"
    assert res.epochs_run < 1000  # the steps stopped inside the first block
    assert np.all(np.isfinite(np.asarray(res.params["w"])))


# ----------------------------------------------------------------------------- standardize


def test_standardize_in_program_equals_scaling_on_the_host():
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(5)
    x = (rng.normal(size=(60, 3)) * [1.0, 50.0, 0.01] + [3.0, -20.0, 0.0]).astype(np.float32)
    y = (x @ np.array([1.0, 0.02, 30.0]) + 0.1 * rng.normal(size=60)).astype(np.float32)
    xv = (rng.normal(size=(20, 3)) * [1.0, 50.0, 0.01]).astype(np.float32)
    yv = np.zeros(20, np.float32)
    sc = StandardScaler().fit(x)  # the independent reference: training rows only
    kw = dict(hparams={"learning_rate": 0.05}, batch_size=8, epochs=6, key=2)
    host = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (sc.transform(x).astype(np.float32), y),
                     val_data=(sc.transform(xv).astype(np.float32), yv), **kw)
    prog = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y), val_data=(xv, yv),
                     standardize=True, **kw)
    np.testing.assert_allclose(np.asarray(prog.params["w"]), np.asarray(host.params["w"]),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(prog.history["val_loss"], host.history["val_loss"], rtol=1e-4)


def test_standardize_rejects_labels_and_bad_indices():
    x = np.ones((5, 2), np.float32)
    labels = np.arange(5)
    with pytest.raises(TypeError, match="standardize"):
        jaxgd.fit(mse, params_of(np.zeros(2), 0.0), (x, labels), standardize=(1,),
                  hparams={"learning_rate": 0.1})
    with pytest.raises(ValueError, match="standardize"):
        jaxgd.fit(mse, params_of(np.zeros(2), 0.0), (x, labels), standardize=(3,),
                  hparams={"learning_rate": 0.1})


def test_record_params_equals_numpy_trajectory(x64):
    x, y = regression()
    lr, epochs = 0.1, 6
    res = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y), batch_size=None, shuffle=False,
                    hparams={"learning_rate": lr}, epochs=epochs, record_params=True)
    path = res.param_history()
    assert path["w"].shape == (epochs, 3)
    for e in range(epochs):
        w_ref, b_ref = np_gd(x, y, lr, e + 1)
        np.testing.assert_allclose(path["w"][e], w_ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(path["b"][e], b_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(path["w"][-1], np.asarray(res.params["w"]))
    plain = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y), hparams={"learning_rate": lr},
                      epochs=2)
    with pytest.raises(ValueError, match="record_params"):
        plain.param_history()


# ----------------------------------------------------------------------------- init_loss
# with metrics="batch" no pass over the data is made: the initial loss is the loss of the
# initial parameters on the first update's batch (computed by that step)


def np_mse(w, b, x, y):
    return float(np.mean((x @ w + b - y) ** 2))


def test_batch_metrics_init_loss_is_the_first_batch_loss(x64):
    x, y = regression(n=10)
    w0, b0 = np.array([0.5, -1.0, 2.0]), 0.25
    rng = np.random.default_rng(1)
    orders = np.stack([rng.permutation(10) for _ in range(2)])
    common = dict(hparams={"learning_rate": 0.05}, epochs=3, metrics="batch")
    cases = [  # (fit keywords, the samples of the first update)
        (dict(batch_size=4, shuffle=False), np.arange(4)),
        (dict(batch_size=3, accumulate=2, shuffle=False), np.arange(6)),
        (dict(batch_size=4, shuffle=orders), orders[0, :4]),
        (dict(batch_size=None, shuffle=False), np.arange(10)),
    ]
    for kw, first in cases:
        res = jaxgd.fit(mse, params_of(w0, b0), (x, y), **common, **kw)
        np.testing.assert_allclose(res.init_loss, np_mse(w0, b0, x[first], y[first]),
                                   rtol=1e-12, err_msg=str(kw))
    # a penalty is not part of it (as with metrics="full": the data loss)
    pen = jaxgd.fit(mse, params_of(w0, b0), (x, y), batch_size=4, shuffle=False,
                    metrics="batch", epochs=1, hparams={"learning_rate": 0.05, "l2": 1.0})
    np.testing.assert_allclose(pen.init_loss, np_mse(w0, b0, x[:4], y[:4]), rtol=1e-12)
    sw = jaxgd.sweep(mse, params_of(w0, b0), (x, y), grid={"batch_size": [2, 5, None]},
                     shuffle=False, **common)
    np.testing.assert_allclose(
        sw.table["init_loss"], [np_mse(w0, b0, x[:m], y[:m]) for m in (2, 5, 10)],
        rtol=1e-12)


def test_batch_metrics_divergence_is_measured_from_the_first_batch_loss(x64):
    """diverge_factor compares each evaluation's batch-mean loss with the initial loss
    (here the first batch's): the run stops at the first epoch where a NumPy replay of
    the trajectory exceeds factor x max(|init|, 1): here the first epoch (its batch mean
    is 5.5x the first batch's loss), which a reference taken from that epoch's own mean
    would never flag."""
    x, y = regression(n=12)
    lr, factor, B = 0.6, 5.0, 3
    res = jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y), hparams={"learning_rate": lr},
                    batch_size=B, shuffle=False, epochs=20, metrics="batch",
                    diverge_factor=factor)
    w, b = np.zeros(3), 0.0
    init = np_mse(w, b, x[:B], y[:B])
    for epoch in range(20):  # noqa: B007 (the epoch it stops at is used below)
        losses = []
        for idx in np_batches(12, B):
            loss, gw, gb = np_loss_grad(w, b, x[idx], y[idx])
            losses.append(loss)
            w, b = w - lr * gw, b - lr * gb
        if np.mean(losses) > factor * max(abs(init), 1.0):
            break
    else:
        raise AssertionError("the replay never crosses the threshold")
    assert res.stop_reason == "diverged"
    assert res.epochs_run == epoch + 1
    np.testing.assert_allclose(res.history["loss"][-1], np.mean(losses), rtol=1e-12)
    np.testing.assert_allclose(res.init_loss, init, rtol=1e-12)


# ----------------------------------------------------------------------------- given orders
# shuffle= an explicit order per epoch (e.g. a PyTorch DataLoader's) replays that loader's
# batches exactly


def torch_orders(n, epochs, seed=0):
    torch = pytest.importorskip("torch")
    sampler = torch.utils.data.RandomSampler(range(n), generator=torch.Generator().manual_seed(
        seed))
    return np.stack([np.asarray(list(sampler)) for _ in range(epochs)])


def optax_loop(opt, p0, x, y, orders, epochs, batch_size, drop_last=False):
    """A hand-written loop over the batches of each epoch's order (``e mod E``)."""
    p, s = params_of(*p0), None
    s = opt.init(p)
    grad = jax.jit(jax.grad(mse))
    for e in range(epochs):
        order = orders[e % len(orders)]
        for idx in np_batches(len(order), batch_size, drop_last):
            g = grad(p, (x[order[idx]], y[order[idx]]))
            u, s = opt.update(g, s, p)
            p = optax.apply_updates(p, u)
    return p


@pytest.mark.parametrize("drop_last", [False, True])
def test_given_orders_replay_a_torch_sampler_batch_for_batch(x64, drop_last):
    x, y = regression(n=13)  # B = 4: 3 full batches and one of 1 sample (or dropped)
    orders = torch_orders(13, 3)  # 5 epochs: rows 0, 1, 2, 0, 1
    p0 = (np.array([0.1, -0.2, 0.3]), 0.05)
    res = jaxgd.fit(mse, params_of(*p0), (x, y), optimizer="adam",
                    hparams={"learning_rate": 0.05}, batch_size=4, epochs=5, shuffle=orders,
                    drop_last=drop_last, key=7)
    ref = optax_loop(optax.adam(0.05), p0, x, y, orders, 5, 4, drop_last)
    assert res.steps_run == 5 * (3 if drop_last else 4)
    for k in ("w", "b"):
        np.testing.assert_allclose(np.asarray(res.params[k]), np.asarray(ref[k]), rtol=1e-10,
                                   atol=1e-12)
    # a single order [N] is every epoch's
    one = jaxgd.fit(mse, params_of(*p0), (x, y), optimizer="adam",
                    hparams={"learning_rate": 0.05}, batch_size=4, epochs=2,
                    shuffle=orders[1], drop_last=drop_last)
    ref = optax_loop(optax.adam(0.05), p0, x, y, orders[1:2], 2, 4, drop_last)
    np.testing.assert_allclose(np.asarray(one.params["w"]), np.asarray(ref["w"]), rtol=1e-10)


def test_given_orders_sweep_rows_equal_their_fits(x64):
    x, y = regression(n=13)
    orders = np.stack([np.random.default_rng(s).permutation(13) for s in range(2)])
    p0 = params_of(np.zeros(3), 0.0)
    kw = dict(batch_size=4, epochs=3, shuffle=orders, optimizer="momentum")
    sw = jaxgd.sweep(mse, p0, (x, y), grid={"learning_rate": [0.01, 0.05], "seed": [0, 1]},
                     hparams={"momentum": 0.9}, **kw)
    for i, c in enumerate(sw.configs):
        one = jaxgd.fit(mse, p0, (x, y), key=c["seed"],
                        hparams={"learning_rate": c["learning_rate"], "momentum": 0.9}, **kw)
        np.testing.assert_allclose(np.asarray(sw.params_of(i)["w"]),
                                   np.asarray(one.params["w"]), rtol=1e-10)
    # the seeds share the order: equal rows for equal learning rates
    assert [c["seed"] for c in sw.configs[:2]] == [0, 1]
    np.testing.assert_array_equal(sw.params_of(0)["w"], sw.params_of(1)["w"])


def test_new_orders_of_the_same_shape_do_not_recompile(x64):
    from test_recompile import count_compiles

    x, y = regression(n=13)
    rng = np.random.default_rng(0)
    run = lambda o: jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y),  # noqa: E731
                              hparams={"learning_rate": 0.05}, batch_size=4, epochs=2,
                              shuffle=o)
    a = run(np.stack([rng.permutation(13) for _ in range(2)]))
    with count_compiles() as events:
        b = run(np.stack([rng.permutation(13) for _ in range(2)]))
    assert events == []
    assert not np.array_equal(np.asarray(a.params["w"]), np.asarray(b.params["w"]))
    with count_compiles() as events:  # the control: another number of orders compiles
        run(np.stack([rng.permutation(13) for _ in range(3)]))
    assert events


def test_bad_orders_are_refused_before_compiling(monkeypatch):
    def no_program(*_a, **_k):
        raise AssertionError("a program was built")

    monkeypatch.setattr(jaxgd.engine, "program_for", no_program)
    x, y = regression(n=6)
    fit = lambda o, **kw: jaxgd.fit(mse, params_of(np.zeros(3), 0.0), (x, y),  # noqa: E731
                                    hparams={"learning_rate": 0.1}, batch_size=2, epochs=1,
                                    shuffle=o, **kw)
    good = np.arange(6)
    with pytest.raises(ValueError, match=r"shuffle: row 1 is not a permutation of range\(6\) "
                                         r"\(sample 5 is missing\)"):
        fit(np.stack([good, [0, 1, 2, 3, 4, 4]]))
    with pytest.raises(ValueError, match=r"shuffle: row 0 .*value 6 is outside 0\.\.5"):
        fit(np.array([1, 2, 3, 4, 5, 6]))
    with pytest.raises(ValueError, match=r"shuffle: .*shape \[E, 6\] or \[6\].*got shape \(5,\)"):
        fit(np.arange(5))
    with pytest.raises(TypeError, match=r"shuffle: .*integers.*float64"):
        fit(good.astype(float))
    with pytest.raises(ValueError, match=r"shuffle=\[0, 1\] must be .*integer array"):
        fit([0, 1])  # a list (as a TOML file would give) is not an order array
    with pytest.raises(ValueError, match=r"shuffle= an order array cannot be combined with "
                                         r"folds=2"):
        jaxgd.sweep(mse, params_of(np.zeros(3), 0.0), (x, y), shuffle=good, folds=2,
                    grid={"learning_rate": [0.1]})


def test_another_order_is_another_sweep(tmp_path):
    x, y = regression(n=6)
    run = lambda o: jaxgd.sweep(mse, params_of(np.zeros(3), 0.0), (x, y),  # noqa: E731
                                grid={"learning_rate": [0.1]}, batch_size=2, epochs=1,
                                shuffle=o, out=tmp_path / "r")
    run(np.arange(6))
    run(np.arange(6))  # the same order: the same sweep (loaded from its folder)
    with pytest.raises(ValueError, match="holds the results of a different sweep"):
        run(np.arange(6)[::-1].copy())


# ----------------------------------------------------------------------------- accumulation
# accumulate=k is optax.MultiSteps(opt, k) over the same mini-batches when k x B divides N


def test_accumulate_equals_optax_multisteps():
    """float32: optax.MultiSteps keeps its gradient sum in float32 (its default
    ``accumulator_dtype``) whatever the params."""
    x, y = (a.astype(np.float32) for a in regression(n=24))  # k x B = 2 x 3 divides 24
    p0 = (np.array([0.2, 0.1, -0.3], np.float32), np.float32(0.0))
    sched = optax.exponential_decay(0.05, transition_steps=3, decay_rate=0.5)
    res = jaxgd.fit(mse, params_of(*p0), (x, y), optimizer="adam", schedule="exponential",
                    hparams={"learning_rate": 0.05, "transition_steps": 3, "decay_rate": 0.5},
                    batch_size=3, accumulate=2, epochs=3, shuffle=False)
    ref = optax_loop(optax.MultiSteps(optax.adam(sched), 2), p0, x, y,
                     np.arange(24)[None], 3, 3)
    assert res.steps_run == 3 * 4  # updates, not mini-batches
    np.testing.assert_allclose(res.history["lr"][-1], float(sched(11)), rtol=1e-6)
    for k in ("w", "b"):
        np.testing.assert_allclose(np.asarray(res.params[k]), np.asarray(ref[k]), rtol=1e-5,
                                   atol=1e-6)
