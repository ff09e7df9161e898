"""Host-fed data (feed="host"): np.memmap and iterables of batches equal the in-memory run
with the same order, and a hand-written optax loop; bad input gives clear errors."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd

N, D, B = 103, 3, 10  # 11 steps per epoch, the last of 3 samples


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1).astype(np.float32)
    return x, y


def _memmap(tmp_path, a, name):
    m = np.memmap(tmp_path / name, a.dtype, "w+", shape=a.shape)
    m[:] = a
    m.flush()
    return np.memmap(tmp_path / name, a.dtype, "r", shape=a.shape)


def loss(p, b):
    return jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)


P0 = {"w": jnp.zeros(D), "b": jnp.zeros(())}
KW = dict(batch_size=B, steps=37, eval_every=3, metrics="batch")


def _same(a, b):
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]))
    for k in ("loss", "step"):
        np.testing.assert_array_equal(a.history[k], b.history[k])
    assert a.stop_reason == b.stop_reason and a.steps_run == b.steps_run


@pytest.mark.parametrize("shuffle", [True, False, "orders"])
def test_memmap_fit_equals_in_memory(tmp_path, shuffle):
    x, y = _problem()
    if shuffle == "orders":
        shuffle = np.stack([np.random.default_rng(i).permutation(N) for i in range(2)])
    kw = dict(KW, hparams={"learning_rate": 0.05}, shuffle=shuffle, key=3)
    ref = jaxgd.fit(loss, P0, (x, y), **kw)
    mx = _memmap(tmp_path, x, "x")
    assert jaxgd.feed.host_data((mx, y), "auto") is not None  # auto: a memmap stays home
    assert jaxgd.feed.host_data((x, y), "auto") is None
    got = jaxgd.fit(loss, P0, (mx, y), feed="host", **kw)
    _same(ref, got)
    assert got.steps_run == 37 and np.all(np.isfinite(got.history["loss"]))


def test_memmap_sweep_equals_in_memory(tmp_path):
    x, y = _problem()
    grid = {"learning_rate": [0.01, 0.05, 0.1], "seed": [0, 1]}
    ref = jaxgd.sweep(loss, P0, (x, y), grid=grid, **KW)
    got = jaxgd.sweep(loss, P0, (_memmap(tmp_path, x, "x"), _memmap(tmp_path, y, "y")),
                      grid=grid, feed="host", **KW)
    assert ref.table.equals(got.table)
    for k in ("loss", "batch_loss", "step"):
        np.testing.assert_array_equal(ref.history[k], got.history[k])
    for k in ref.params:
        np.testing.assert_array_equal(np.asarray(ref.params[k]), np.asarray(got.params[k]))


def _batches(x, y, steps):
    for t in range(steps):
        s = (t % (len(x) // B)) * B
        yield x[s:s + B], y[s:s + B]


def test_generator_fit_equals_in_memory_and_optax_loop():
    x, y = _problem()
    x, y = x[:100], y[:100]
    kw = dict(KW, hparams={"learning_rate": 0.05}, shuffle=False)
    ref = jaxgd.fit(loss, P0, (x, y), **kw)
    got = jaxgd.fit(loss, P0, _batches(x, y, 37), **kw)
    _same(ref, got)
    # a hand-written optax loop over the same batches
    opt = optax.sgd(0.05)
    p, s = P0, opt.init(P0)
    for bx, by in _batches(x, y, 37):
        g = jax.grad(loss)(p, (jnp.asarray(bx), jnp.asarray(by)))
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
    for k in p:
        np.testing.assert_allclose(np.asarray(got.params[k]), np.asarray(p[k]), rtol=1e-6,
                                   atol=1e-7)


class Loader:
    """A re-iterable source, like a DataLoader: every iter() starts over."""

    def __init__(self, x, y, steps):
        self.x, self.y, self.steps = x, y, steps

    def __iter__(self):
        return _batches(self.x, self.y, self.steps)

    def __len__(self):
        return self.steps


def test_reiterable_sweep_equals_in_memory():
    x, y = _problem()
    x, y = x[:100], y[:100]
    grid = {"learning_rate": [0.01, 0.05, 0.1], "seed": [0, 1]}
    kw = dict(KW, shuffle=False)
    ref = jaxgd.sweep(loss, P0, (x, y), grid=grid, **kw)
    got = jaxgd.sweep(loss, P0, Loader(x, y, 37), grid=grid, chunk_size=2, **kw)
    np.testing.assert_array_equal(ref.history["loss"], got.history["loss"])
    for k in ref.params:
        np.testing.assert_array_equal(np.asarray(ref.params[k]), np.asarray(got.params[k]))


def _threads():
    return {t for t in threading.enumerate() if t.name.startswith("jaxgd-feed")}


def test_iterable_runs_dry_names_count_and_joins_thread():
    x, y = _problem()
    before = _threads()
    with pytest.raises(ValueError, match=r"ran dry: the iterable gave 20 batches.*37"):
        jaxgd.fit(loss, P0, _batches(x, y, 20), hparams={"learning_rate": 0.05}, **KW)
    assert _threads() == before  # the feeding thread was joined


def test_len_checked_before_running():
    x, y = _problem()
    with pytest.raises(ValueError, match=r"gives 20 batches \(len\(data\)\).*steps=37"):
        jaxgd.fit(loss, P0, Loader(x, y, 20), hparams={"learning_rate": 0.05}, **KW)


@pytest.mark.parametrize("bad, match", [
    (dict(steps=None, epochs=3), r"give a budget of updates, steps="),
    (dict(windows=4), r"windows=4 .* cannot be combined with host-fed arrays"),
    (dict(metrics="full_grad"), r"metrics='full_grad'"),
    (dict(standardize=True), r"standardize=True"),
    (dict(feed="disk"), r"feed='disk' must be one of"),
])
def test_bad_host_options(tmp_path, bad, match):
    x, y = _problem()
    kw = dict(KW, hparams={"learning_rate": 0.05}, **bad)
    with pytest.raises(ValueError, match=match):
        jaxgd.fit(loss, P0, (_memmap(tmp_path, x, "x"), y), **kw)


def test_one_shot_iterator_refuses_out(tmp_path):
    x, y = _problem()
    with pytest.raises(ValueError, match=r"one-shot iterator.*cannot be restored"):
        jaxgd.fit(loss, P0, _batches(x, y, 37), hparams={"learning_rate": 0.05},
                  out=tmp_path / "run", **KW)


def test_batches_of_other_shapes_refused():
    x, y = _problem()

    def ragged():
        yield x[:10], y[:10]
        yield x[:7], y[:7]

    with pytest.raises(ValueError, match=r"batch 1 of data .* every batch must have the same"):
        jaxgd.fit(loss, P0, ragged(), hparams={"learning_rate": 0.05}, **dict(KW, steps=2))


def test_memmap_resume_equals_uncut(tmp_path):
    """A host-fed run resumed from a checkpoint equals one never cut (the block's batches
    follow from the step)."""
    x, y = _problem()
    mx = _memmap(tmp_path, x, "x")
    kw = dict(KW, hparams={"learning_rate": 0.05}, eval_every=1)
    ref = jaxgd.fit(loss, P0, (x, y), **kw)
    got = jaxgd.fit(loss, P0, (mx, y), out=tmp_path / "run", checkpoint_every=5, **kw)
    _same(ref, got)
