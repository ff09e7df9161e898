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


def _updates(t0, t1, by_steps, spe, budget):
    """The 0-based updates of evaluation units ``t0 .. t1`` (updates or epochs)."""
    return range(t0, t1) if by_steps else range(t0 * spe, min(t1, budget) * spe)


def numpy_run(lr, bs, acc=1, epochs=None, steps=None, eval_every=1, val=None,
              patience=0, min_delta=0.0, loss_target=-INF, metrics="full",
              restore_best=False, diverge_factor=1e6, l2=0.0):
    """Plain SGD, batches in order, as the docs describe the records: one row per
    ``eval_every`` epochs (updates with ``steps``) indexed by its last epoch (update);
    ``batch_loss``/``grad_norm`` the means over the row's applied updates; ``lr`` the last
    update's; a non-finite step stops the run with the parameters of the last evaluation;
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
            run_epochs += pos == 0
            if stopped:
                step_loss.append(math.nan)
                continue
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
        loss = float(np.mean(losses)) if metrics == "batch" else full_loss
        obj = float(np.mean(objs)) if metrics == "batch" else full_obj
        rows.append(dict(at=hi - 1, loss=loss, batch_loss=float(np.mean(losses)),
                         grad_norm=float(np.mean(norms)), lr=lr,
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
    if by_steps:  # one row per update (the updates of the last row that never ran: NaN)
        step_loss += [math.nan] * (len(rows) and rows[-1]["at"] + 1 - len(step_loss))
    elif len(step_loss) % spe:
        step_loss += [math.nan] * (spe - len(step_loss) % spe)
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
    if "step_loss" in h:
        np.testing.assert_allclose(np.asarray(h["step_loss"]).reshape(-1), ref["step_loss"],
                                   rtol=tol, err_msg="step_loss")
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
