"""``diverged_step``: the update at which a configuration was found diverged, against a
NumPy loop of plain SGD that finds the first update from non-finite parameters or with a
non-finite loss or gradient."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd

N, D, B = 12, 3, 4  # three mini-batches per epoch


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1).astype(np.float32)
    return x, y


def _loss(p, batch):
    x, y = batch
    return jnp.mean((x @ p["w"] - y) ** 2)


def _first_bad_update(lr, x, y, batch, updates):
    """NumPy SGD (float32, batches in order): the 0-based index of the first update whose
    parameters, loss or gradient are not finite; -1 if none within ``updates``."""
    w = np.zeros(D, np.float32)
    lr = np.float32(lr)
    spe = -(-N // batch)
    with np.errstate(all="ignore"):
        for t in range(updates):
            s = (t % spe) * batch
            xb, yb = x[s:s + batch], y[s:s + batch]
            r = xb @ w - yb
            loss = np.mean(r * r)
            g = np.float32(2.0 / len(yb)) * (xb.T @ r)
            if not (np.all(np.isfinite(w)) and np.isfinite(loss)
                    and np.all(np.isfinite(g))):
                return t
            w = (w - lr * g).astype(np.float32)
    return -1


def _p0():
    return {"w": jnp.zeros(D, jnp.float32)}


def test_diverged_step_inside_an_evaluation_block():
    x, y = _data()
    lr = 4.0
    steps = 60
    want = _first_bad_update(lr, x, y, B, steps)
    assert 3 <= want < steps and want % 3 != 0  # inside a block of eval_every=3
    res = jaxgd.fit(_loss, _p0(), (x, y), optimizer=optax.sgd,
                    hparams={"learning_rate": lr}, batch_size=B, steps=steps,
                    eval_every=3, shuffle=False, diverge_factor=float("inf"))
    assert res.stop_reason == "diverged"
    assert res.diverged_step == want
    # the kept parameters are those of the start of the block holding the divergence
    assert res.steps_run == (want // 3) * 3


def test_diverged_step_epoch_budget_and_not_diverged():
    x, y = _data()
    lr = 3.0
    want = _first_bad_update(lr, x, y, B, 90)
    res = jaxgd.fit(_loss, _p0(), (x, y), optimizer=optax.sgd,
                    hparams={"learning_rate": lr}, batch_size=B, epochs=30, eval_every=2,
                    shuffle=False, diverge_factor=float("inf"))
    assert res.diverged_step == want
    ok = jaxgd.fit(_loss, _p0(), (x, y), optimizer=optax.sgd,
                   hparams={"learning_rate": 0.01}, batch_size=B, epochs=3, shuffle=False)
    assert _first_bad_update(0.01, x, y, B, 9) == -1
    assert ok.stop_reason == "max_epochs" and ok.diverged_step == -1


@pytest.mark.parametrize("plan", ["vmap", "map"])
def test_sweep_diverged_steps_differ(plan):
    x, y = _data()
    lrs = [0.01, 1.5, 2.0, 4.0, 10.0]
    steps = 60
    want = [_first_bad_update(lr, x, y, B, steps) for lr in lrs]
    assert want[0] == -1 and len({w for w in want[1:]}) >= 3 and min(want[1:]) >= 0
    sw = jaxgd.sweep(_loss, _p0(), (x, y), optimizer=optax.sgd,
                     grid={"learning_rate": lrs}, batch_size=B, steps=steps, eval_every=3,
                     shuffle=False, diverge_factor=float("inf"), plan=plan)
    got = sw.table.sort_values("learning_rate")["diverged_step"].tolist()
    assert got == want
    assert sw.table["diverged_step"].dtype == np.int64
    assert (sw.table["diverged"] == (sw.table["diverged_step"] >= 0)).all()


@pytest.mark.parametrize("eval_every,batch", [(1, None), (3, B)])
def test_diverged_step_overflow_from_finite_loss(eval_every, batch):
    """An update whose loss and gradient are finite but whose step overflows the
    parameters: the next update (index 1 here) is the one found diverged."""
    x, y = _data()
    y = y * np.float32(10.0)  # gradients of tens: lr * g overflows
    lr = 3e38
    bsz = N if batch is None else batch
    want = _first_bad_update(lr, x, y, bsz, 9)
    assert want == 1
    # NumPy: the first update's loss and gradient are finite, its parameters are not
    r = x[:bsz] @ np.zeros(D, np.float32) - y[:bsz]
    g = np.float32(2.0 / bsz) * (x[:bsz].T @ r)
    assert np.isfinite(np.mean(r * r)) and np.all(np.isfinite(g))
    with np.errstate(over="ignore"):
        assert not np.all(np.isfinite(np.float32(lr) * g))
    res = jaxgd.fit(_loss, _p0(), (x, y), optimizer=optax.sgd,
                    hparams={"learning_rate": lr}, batch_size=batch, steps=9,
                    eval_every=eval_every, shuffle=False, diverge_factor=float("inf"))
    assert res.stop_reason == "diverged"
    assert res.diverged_step == want
    assert res.steps_run == 0


def test_diverged_step_non_finite_initial_loss():
    x, y = _data()

    def loss(p, batch):  # -inf at w[0] = 0
        return _loss(p, batch) + jnp.log(p["w"][0])

    res = jaxgd.fit(loss, _p0(), (x, y), optimizer=optax.sgd, hparams={"learning_rate": 0.1},
                    batch_size=B, epochs=2, shuffle=False)
    assert res.stop_reason == "diverged" and res.diverged_step == 0 and res.steps_run == 0


def test_diverged_step_from_growth_at_an_evaluation():
    """Growth past diverge_factor is found at an evaluation: the updates up to it."""
    x, y = _data()
    lr = 1.2
    # NumPy: the full-data loss after each epoch of 3 updates, first above 10 x init
    w = np.zeros(D, np.float32)
    init = np.mean(y * y)
    found = None
    for e in range(20):
        for k in range(3):
            xb, yb = x[k * B:(k + 1) * B], y[k * B:(k + 1) * B]
            w = w - np.float32(lr) * np.float32(2.0 / B) * (xb.T @ (xb @ w - yb))
        if np.mean((x @ w - y) ** 2) > 10 * max(init, 1.0):
            found = 3 * (e + 1)
            break
    assert found is not None
    res = jaxgd.fit(_loss, _p0(), (x, y), optimizer=optax.sgd,
                    hparams={"learning_rate": lr}, batch_size=B, epochs=20, shuffle=False,
                    diverge_factor=10.0)
    assert res.stop_reason == "diverged" and res.diverged_step == found


def test_run_folder_without_the_column_loads(tmp_path):
    """A run folder written before the field existed (no column) still loads; a new one
    keeps the column."""
    x, y = _data()
    sw = jaxgd.sweep(_loss, _p0(), (x, y), optimizer=optax.sgd,
                     grid={"learning_rate": [0.01, 3.0]}, batch_size=B, epochs=12,
                     shuffle=False, diverge_factor=float("inf"))
    want = [_first_bad_update(lr, x, y, B, 36) for lr in (0.01, 3.0)]
    sw.save(tmp_path / "new")
    assert jaxgd.load(tmp_path / "new").table["diverged_step"].tolist() == want
    sw.table = sw.table.drop(columns=["diverged_step"])  # as written without the field
    sw.save(tmp_path / "old")
    old = jaxgd.load(tmp_path / "old")
    assert "diverged_step" not in old.table.columns
    assert old.table["diverged"].tolist() == [False, True]


def test_diverged_step_through_a_checkpoint_and_resume(tmp_path, monkeypatch):
    """One configuration diverges before the checkpoint (its diverged_step travels in the
    saved state), one after the resumption."""
    from jaxgd import store as store_mod

    x, y = _data()
    lrs = [1.5, 4.0]
    want = [_first_bad_update(lr, x, y, B, 60) for lr in lrs]
    assert want[1] < 27 < want[0]  # the checkpoint is at evaluation 9: update 27

    def run():
        return jaxgd.sweep(_loss, _p0(), (x, y), optimizer=optax.sgd,
                           grid={"learning_rate": lrs}, batch_size=B, steps=60, eval_every=3,
                           shuffle=False, diverge_factor=float("inf"), out=tmp_path / "run",
                           checkpoint_every=9)

    real = store_mod.RunStore.save_checkpoint

    def save(self, tag, arrays, at):
        real(self, tag, arrays, at)
        raise KeyboardInterrupt

    monkeypatch.setattr(store_mod.RunStore, "save_checkpoint", save)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.undo()
    assert list((tmp_path / "run" / "chunks").glob("*.ckpt-*.npz"))
    from jaxgd import engine as engine_mod

    starts, blocks = [], engine_mod.run_blocks

    def spy(prog, spec, st, start, end, *a, **kw):
        starts.append(start)
        return blocks(prog, spec, st, start, end, *a, **kw)

    monkeypatch.setattr(engine_mod, "run_blocks", spy)
    sw = run()
    assert starts == [9]  # went on from the checkpoint
    assert sw.table.sort_values("learning_rate")["diverged_step"].tolist() == want


def test_diverged_step_in_a_search():
    """A successive-halving search carries the members' states between its calls."""
    x, y = _data()
    lrs = [0.01, 0.02, 0.05, 10.0]
    want = _first_bad_update(10.0, x, y, B, 60)
    assert want < 18  # before the first rung (epoch 6)
    sw = jaxgd.sweep(_loss, _p0(), (x, y), optimizer=optax.sgd, grid={"learning_rate": lrs},
                     batch_size=B, epochs=24, shuffle=False, diverge_factor=float("inf"),
                     search=jaxgd.search.Halving(eta=2, min_epochs=6))
    t = sw.table.sort_values("learning_rate")
    assert t["stop_reason"].tolist()[-1] == "diverged"
    assert t["diverged_step"].tolist() == [-1, -1, -1, want]
