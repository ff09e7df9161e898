"""Every recorded number of a run (each history column, ``step_loss`` and the result's
fields) against a NumPy loop of plain SGD on a linear regression that records what the
docs say each one is, in the less-travelled combinations of the execution plans
(``loop=``, ``plan=``), budgets (``steps=``/``epochs=``), ``eval_every``, a partial last
batch, ``accumulate``, stops and divergence."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd

RNG = np.random.default_rng(3)
N = 11  # batch_size 4: batches of 4, 4 and a partial 3
X = RNG.normal(size=(N, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.3 * RNG.normal(size=N)
XV = RNG.normal(size=(5, 3))
YV = XV @ np.array([1.0, -2.0, 0.5])
INF = float("inf")


def mse(p, b):
    return jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)


def p0():
    return {"w": jnp.zeros(3), "b": jnp.zeros(())}


def _mse_np(w, b, x, y):
    """(loss, gradient norm) of the mean squared error."""
    r = x @ w + b - y
    gw, gb = 2 * x.T @ r / len(y), 2 * np.mean(r)
    return float(np.mean(r ** 2)), math.sqrt(float(gw @ gw) + gb * gb), gw, gb


def _mean(xs):
    return float(np.mean(xs)) if xs else math.nan


def _updates(t0, t1, by_steps, spe, budget):
    """The 0-based updates of evaluation units ``t0 .. t1`` (updates or epochs)."""
    return range(t0, t1) if by_steps else range(t0 * spe, min(t1, budget) * spe)


@np.errstate(all="ignore")  # a diverging run overflows
def numpy_run(lr, bs, acc=1, epochs=None, steps=None, eval_every=1, val=None,
              patience=0, min_delta=0.0, loss_target=-INF, metrics="full",
              restore_best=False, diverge_factor=1e6, l2=0.0):
    """Plain SGD, batches in order, as the docs describe the records: one row per
    ``eval_every`` epochs (updates with ``steps``) indexed by its last epoch (update);
    ``batch_loss``/``grad_norm`` the means over the row's applied updates; ``lr`` the last
    applied update's (NaN in a row that applied none); a non-finite step stops the run
    with the parameters of the last evaluation;
    ``step_loss`` the loss of every update that ran (NaN for one that did not); ``l2``
    penalises ``w`` (not the bias), ``objective`` is loss + penalty."""
    bsz = bs * acc
    full, last = N // bsz, N % bsz
    spe = full + (last > 0)
    by_steps = steps is not None
    budget = steps if by_steps else epochs
    w, b, t, init = np.zeros(3), 0.0, 0, None
    rows, step_loss = [], []
    best, best_at, best_p, bad, reason, run_epochs, dstep = INF, -1, None, 0, None, 0, -1
    if metrics != "batch":
        init = _mse_np(w, b, X, Y)[0]
    for g in range(-(-budget // eval_every)):
        hi = min(g * eval_every + eval_every, budget)
        start, losses, norms, objs, stopped = (w.copy(), b, t), [], [], [], False
        for u in _updates(g * eval_every, hi, by_steps, spe, budget):
            pos = u % spe
            if stopped and (by_steps or pos == 0):  # the rest of the epoch did not run
                break
            if stopped:
                step_loss.append(math.nan)
                continue
            run_epochs += pos == 0
            lo = pos * bsz
            x, y = X[lo:min(lo + bsz, N)], Y[lo:min(lo + bsz, N)]
            loss, _, gw, gb = _mse_np(w, b, x, y)
            step_obj = loss + l2 / 2 * float(w @ w)
            gw = gw + l2 * w
            gn = math.sqrt(float(gw @ gw) + gb * gb)
            step_loss.append(loss)
            init = loss if init is None else init
            if not (np.isfinite(loss) and np.isfinite(gn)):
                stopped, dstep, reason = True, t, "diverged"
                continue
            w, b, t = w - lr * gw, b - lr * gb, t + 1
            losses.append(loss)
            norms.append(gn)
            objs.append(step_obj)
        if stopped:
            w, b = start[0], start[1]
        full_loss = _mse_np(w, b, X, Y)[0]
        full_obj = full_loss + l2 / 2 * float(w @ w)
        loss = _mean(losses) if metrics == "batch" else full_loss
        obj = _mean(objs) if metrics == "batch" else full_obj
        rows.append(dict(at=hi - 1, loss=loss, batch_loss=_mean(losses),
                         grad_norm=_mean(norms), lr=lr if losses else math.nan,
                         objective=obj if l2 else None,
                         val_loss=None if val is None else _mse_np(w, b, *val)[0]))
        if stopped:
            t = start[2]
            break
        if loss > diverge_factor * max(abs(init), 1.0):
            reason, dstep = "diverged", t
            break
        mon = loss if val is None else rows[-1]["val_loss"]
        if mon < best - min_delta:
            best, best_at, best_p, bad = mon, hi - 1, (w.copy(), b), 0
        else:
            bad += 1
        if loss <= loss_target:
            reason = "loss_target"
        elif patience and bad >= patience:
            reason = "patience"
        elif hi == budget:
            reason = "max_epochs"
        if reason:
            break
    params = best_p if restore_best and best_at >= 0 else (w, b)
    return dict(rows=rows, step_loss=np.asarray(step_loss), params=params, reason=reason,
                epochs_run=run_epochs, steps_run=t, best_epoch=best_at, init_loss=init,
                diverged_step=dstep)


def assert_matches(res, ref, tol=1e-9):
    """Every column and field of ``res`` (a FitResult, or a sweep's row as one) equals
    ``ref`` (:func:`numpy_run`)."""
    h = res.history
    ix = "step" if "step" in h else "epoch"
    np.testing.assert_array_equal(h[ix], [r["at"] for r in ref["rows"]])
    for c in ("loss", "batch_loss", "grad_norm", "lr", "objective", "val_loss"):
        if ref["rows"][0][c] is None:
            assert c not in h
            continue
        np.testing.assert_allclose(h[c], [r[c] for r in ref["rows"]], rtol=tol, atol=tol,
                                   err_msg=c)
    if "step_loss" in h:  # the updates that ran, then NaN (epochs and updates not run)
        got = np.asarray(h["step_loss"]).reshape(-1)
        n = len(ref["step_loss"])
        np.testing.assert_allclose(got[:n], ref["step_loss"], rtol=tol, err_msg="step_loss")
        assert np.isnan(got[n:]).all()
        if "epoch" in h:  # a row per epoch run
            assert len(h["step_loss"]) == res.epochs_run
    got = (res.stop_reason, res.epochs_run, res.steps_run, res.best_epoch, res.diverged_step)
    assert got == (ref["reason"], ref["epochs_run"], ref["steps_run"], ref["best_epoch"],
                   ref["diverged_step"])
    np.testing.assert_allclose(res.init_loss, ref["init_loss"], rtol=tol)
    np.testing.assert_allclose(res.params["w"], ref["params"][0], rtol=tol, atol=tol)
    np.testing.assert_allclose(res.params["b"], ref["params"][1], rtol=tol, atol=tol)


def flagged_loss(p, b):
    """The mean squared error, infinite on a batch holding a flagged sample (a
    non-finite objective whose gradient is finite)."""
    x, y, flag = b
    return jnp.mean((x @ p["w"] - y) ** 2) + jnp.where(jnp.any(flag > 0), jnp.inf, 0.0)


@pytest.mark.parametrize("loop", ["scan", "host"])
def test_step_loss_is_nan_after_a_non_finite_step_inside_an_epoch(x64, loop):
    # the second update's objective is infinite (its gradient finite): the run stops
    # there; the epoch's third update never runs, so its step loss is NaN, as with steps=
    x = np.arange(12.0).reshape(6, 2) / 10
    y = x.sum(1)
    flag = np.array([0, 0, 1, 0, 0, 0.0])
    first = float(np.mean(y[:2] ** 2))  # update 0 from w = 0
    # (the returned parameters are the last evaluation's: the initial ones with an epoch
    # budget, those after update 0 with a step budget evaluated at every update)
    for budget, applied in ((dict(epochs=2), 0), (dict(steps=6), 1)):
        res = jaxgd.fit(flagged_loss, {"w": jnp.zeros(2)}, (x, y, flag), batch_size=2,
                        shuffle=False, record_steps=True, metrics="batch", loop=loop,
                        hparams={"learning_rate": 0.1}, **budget)
        assert (res.stop_reason, res.diverged_step, res.steps_run) == ("diverged", 1, applied)
        want = [first, INF] + [math.nan] * (1 if "epochs" in budget else 4)
        np.testing.assert_allclose(res.history["step_loss"].reshape(-1), want, rtol=1e-12)


@pytest.mark.parametrize("budget", [dict(epochs=3, eval_every=2), dict(steps=7, eval_every=3)])
@pytest.mark.parametrize("loop", ["scan", "host"])
def test_batch_metrics_record_the_mean_batch_objective_with_a_penalty(x64, loop, budget):
    # metrics="batch" with an l2 penalty: objective is the mean of the steps' loss +
    # penalty (at each step's parameters), not the mean batch loss
    res = jaxgd.fit(mse, p0(), (X, Y), batch_size=4, shuffle=False, metrics="batch",
                    hparams={"learning_rate": 0.05, "l2": 0.5}, loop=loop, **budget)
    assert_matches(res, numpy_run(0.05, 4, metrics="batch", l2=0.5, **budget))


# (name, fit options): a partial last batch everywhere (11 samples, batches of 4)
CASES = [
    ("steps_eval_every", dict(steps=7, eval_every=3, metrics="full", val_data=(XV, YV))),
    ("accumulate_partial", dict(batch_size=2, accumulate=2, epochs=3, eval_every=2)),
    ("patience_restore_steps", dict(steps=40, eval_every=3, metrics="full", patience=2,
                                    min_delta=0.02, restore_best=True, lr=0.1)),
    ("loss_target_batch", dict(steps=30, eval_every=4, loss_target=1.0)),
    ("restore_best_non_finite", dict(epochs=100, eval_every=3, restore_best=True,
                                     diverge_factor=INF, lr=30.0)),
    ("restore_best_growth", dict(epochs=40, restore_best=True, val_data=(XV, YV), lr=0.55)),
]


@pytest.mark.parametrize("loop", ["scan", "host", 2])
@pytest.mark.parametrize("name, kw", CASES, ids=[c[0] for c in CASES])
def test_every_record_equals_a_numpy_loop(x64, loop, name, kw):
    kw = {"batch_size": 4, "lr": 0.05, **kw}
    lr, val = kw.pop("lr"), kw.get("val_data")
    res = jaxgd.fit(mse, p0(), (X, Y), shuffle=False, record_steps=True, loop=loop,
                    hparams={"learning_rate": lr}, **kw)
    ref_kw = {k: v for k, v in kw.items() if k not in ("batch_size", "accumulate", "val_data")}
    if "steps" in kw and "metrics" not in kw:
        ref_kw["metrics"] = "batch"  # the default with a step budget
    assert_matches(res, numpy_run(lr, kw["batch_size"], kw.get("accumulate", 1), val=val,
                                  **ref_kw))


class _Row:
    """A sweep's configuration ``i`` as a FitResult's fields (its history's NaN rows of
    evaluations not run dropped)."""

    def __init__(self, sw, i):
        row = sw.table.iloc[i]
        hist = {k: np.asarray(v[i]) for k, v in sw.history.items()}
        ran = ~np.isnan(hist["step" if "step" in hist else "epoch"])
        self.history = {k: v if k == "step_loss" else v[ran] for k, v in hist.items()}
        self.stop_reason, self.init_loss = row["stop_reason"], float(row["init_loss"])
        self.epochs_run, self.steps_run = int(row["epochs_run"]), int(row["steps_run"])
        if "epoch" in hist and "step_loss" in hist:  # epochs not run: NaN rows
            assert np.isnan(hist["step_loss"][self.epochs_run:]).all()
            self.history["step_loss"] = hist["step_loss"][:self.epochs_run]
        self.best_epoch, self.diverged_step = int(row["best_epoch"]), int(row["diverged_step"])
        self.params = sw.params_of(i)


STEPS = dict(steps=120, eval_every=3, loss_target=1.0, restore_best=True, diverge_factor=INF)
EPOCHS = dict(epochs=40, eval_every=2, loss_target=0.95, patience=3, diverge_factor=INF)


@pytest.mark.parametrize("plan, loop, kw, chunk", [
    ("map", "scan", STEPS, None), ("map", "host", STEPS, None), ("vmap", "host", STEPS, None),
    ("map", "host", EPOCHS, 2)])
def test_sweep_configurations_stopping_differently_equal_numpy_loops(x64, plan, loop, kw,
                                                                     chunk):
    # configurations that run their budget out, reach loss_target, diverge (a non-finite
    # step inside an evaluation) or lose patience, in one chunk or several
    lrs = [0.002, 0.2, 30.0]
    sw = jaxgd.sweep(mse, p0(), (X, Y), grid={"learning_rate": lrs}, batch_size=4,
                     shuffle=False, record_steps=True, plan=plan, loop=loop, chunk_size=chunk,
                     **kw)
    last = "diverged" if "steps" in kw else "patience"
    assert list(sw.table["stop_reason"]) == ["max_epochs", "loss_target", last]
    for i, lr in enumerate(lrs):
        want = numpy_run(lr, 4, metrics="batch" if "steps" in kw else "full", **kw)
        assert_matches(_Row(sw, i), want)


@pytest.mark.parametrize("budget", ["steps", "epochs"])
def test_row_index_exact_past_float32_integers(budget):
    """A budget of more than 2**24 epochs or updates: each row's index is its last epoch
    (update) exactly, where float32 would round 2**24 + 1 to 2**24, and a sweep's best
    row is found by it."""
    total, every = 2**24 + 2, 2**23 + 1
    x = np.linspace(-1.0, 1.0, 8, dtype=np.float32)

    def line(p, b):
        return jnp.mean((p["w"] * b[0] - b[1]) ** 2)

    kw = {budget: total, "eval_every": every}
    res = jaxgd.fit(line, {"w": jnp.zeros(())}, (x, 2 * x), hparams={"learning_rate": 0.01},
                    **kw)
    col = "step" if budget == "steps" else "epoch"
    want = [every - 1, total - 1]  # each row's last epoch or update: 2**23, 2**24 + 1
    assert res.history[col].tolist() == want
    assert res.best_epoch in want
    sw = jaxgd.sweep(line, {"w": jnp.zeros(())}, (x, 2 * x),
                     grid={"learning_rate": [0.01, 0.02]}, **kw)
    assert sw.history[col].tolist() == [want, want]  # [configuration, evaluation]
    for i, row in sw.table.iterrows():
        at = want.index(row["best_epoch"])
        assert row["best_epoch_loss"] == sw.history["loss"][i][at]  # found by its index
