"""The figures a sweep records beside its histories, against independent references:
the losses of the returned parameters computed with NumPy, and what the documented
algorithms give by hand (PBT's lineage)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from test_history_reference import XV, YV, X, Y, mse, p0

import jaxgd


def _mse(params, x, y):
    w, b = np.asarray(params["w"]), float(params["b"])
    return float(np.mean((x @ w + b - y) ** 2))


def test_pbt_best_epoch_figures_are_those_of_the_returned_parameters(x64):
    # with restore_best a PBT member returns the parameters of its best evaluation; when
    # that evaluation came before it copied a parent (which may have copied another
    # before), its parameters (and figures) are from that lineage, not the member's own
    # row of that epoch
    lrs = [0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6]
    sw = jaxgd.sweep(mse, p0(), (X, Y), grid={"learning_rate": lrs}, batch_size=4,
                     shuffle=False, epochs=12, restore_best=True, val_data=(XV, YV),
                     search=jaxgd.search.PBT(interval=1, resample=0.0))
    t, lin = sw.table, sw.lineage
    copies = lin[lin["epoch"] > 0]
    assert all((copies[copies["config"] == c]["epoch"] > e).any()  # each best predates a copy
               for c, e in zip(t["config"], t["best_epoch"], strict=True))
    for i in range(len(t)):
        p = sw.params_of(i)
        np.testing.assert_allclose(t["best_epoch_loss"][i], _mse(p, X, Y), rtol=1e-9)
        np.testing.assert_allclose(t["best_epoch_val_loss"][i], _mse(p, XV, YV), rtol=1e-9)


def test_pbt_init_loss_is_the_members_own_after_a_copy(x64):
    # members start from their seed's parameters (init); a member that copies another's
    # state keeps the loss it started from
    def init(key):
        return {"w": jax.random.normal(key, (3,)), "b": jnp.zeros(())}

    sw = jaxgd.sweep(mse, None, (X, Y), init=init, batch_size=4, shuffle=False, epochs=6,
                     grid={"learning_rate": [0.01, 0.1], "seed": [0, 1, 2, 3]},
                     search=jaxgd.search.PBT(interval=2, resample=0.0))
    copied = set(sw.lineage[sw.lineage["epoch"] > 0]["config"])
    assert copied
    for i, (c, s) in enumerate(zip(sw.table["config"], sw.table["seed"], strict=True)):
        p0_i = init(jax.random.fold_in(jax.random.key(int(s)), 0x5EED))  # jaxgd.init_key
        np.testing.assert_allclose(sw.table["init_loss"][i], _mse(p0_i, X, Y), rtol=1e-9,
                                   err_msg=f"config {c} (copied: {c in copied})")


def _mse32(params, x, y):
    w, b = np.asarray(params["w"], np.float32), np.float32(params["b"])
    with np.errstate(over="ignore"):
        return float(np.mean((x.astype(np.float32) @ w + b - y.astype(np.float32)) ** 2))


def test_final_loss_is_that_of_the_returned_parameters_when_the_last_one_overflowed():
    # float32, no diverge_factor: the parameters grow until the evaluation's loss is
    # infinite; the run stops there with those parameters, whose loss final_loss records
    # (as FitResult.final_loss), not an earlier evaluation's
    sw = jaxgd.sweep(mse, p0(), (X, Y), grid={"learning_rate": [3.0, 0.01]}, batch_size=None,
                     shuffle=False, epochs=40, diverge_factor=float("inf"), val_data=(XV, YV))
    t = sw.table
    assert list(t["stop_reason"]) == ["diverged", "max_epochs"]
    for i in range(2):
        p = sw.params_of(i)
        assert np.all(np.isfinite(np.asarray(p["w"])))
        np.testing.assert_allclose(t["final_loss"][i], _mse32(p, X, Y), rtol=1e-5)
        np.testing.assert_allclose(t["final_val_loss"][i], _mse32(p, XV, YV), rtol=1e-5)
    assert np.isinf(t["final_loss"][0])
