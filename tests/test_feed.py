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


@pytest.mark.parametrize("second, match", [
    (lambda x, y: (x[:10, :2], y[:10]), r"batch 1 of data has structure/sample shapes .*"
                                        r"\(only its number of samples may be smaller\)"),
    (lambda x, y: (x[:10].astype(np.float64), y[:10]), r"batch 1 of data .* sample shapes "
                                                       r"and dtypes"),
    (lambda x, y: {"x": x[:10], "y": y[:10]}, r"batch 1 of data has structure"),
    (lambda x, y: (x[:12], y[:12]), r"batch 1 of data holds 12 samples, more than the "
                                    r"first batch's 10"),
    (lambda x, y: (x[:7], y[:6]), r"batch 1 of data has leaves of leading lengths \[7, 6\]"),
])
def test_batches_of_other_shapes_refused(second, match):
    """Only the number of samples of a later batch may differ (be smaller)."""
    x, y = _problem()

    def ragged():
        yield x[:10], y[:10]
        yield second(x, y)

    with pytest.raises(ValueError, match=match):
        jaxgd.fit(loss, P0, ragged(), hparams={"learning_rate": 0.05}, **dict(KW, steps=2))


# ------------------------------------------------- an iterable's batches of other sizes

SHORT_N, SHORT_B = 100, 32  # a pass: batches of 32, 32, 32 and 4


def _short_problem():
    x, y = _problem()
    return x[:SHORT_N], y[:SHORT_N]


def _passes(x, y, passes=3):
    """An endless loader's batches, as a generator: passes over x, y in order, each
    ending with a short batch (drop_last=False)."""
    for _ in range(passes):
        for s in range(0, len(x), SHORT_B):
            yield x[s:s + SHORT_B], y[s:s + SHORT_B]


def _torch_passes(x, y, passes=3):
    """A PyTorch DataLoader with its default drop_last=False, read pass after pass."""
    torch = pytest.importorskip("torch")
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    loader = torch.utils.data.DataLoader(ds, batch_size=SHORT_B, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    for _ in range(passes):
        for bx, by in loader:
            yield bx.numpy(), by.numpy()


def _optax_loop(opt, batches, steps):
    """A hand-written loop: a jitted optax step per batch (recompiled for a short one):
    (params, per-step losses)."""
    @jax.jit
    def step(p, s, b):
        value, g = jax.value_and_grad(loss)(p, b)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    p, s, losses = P0, opt.init(P0), []
    for _, b in zip(range(steps), batches, strict=False):
        p, s, value = step(p, s, b)
        losses.append(float(value))
    return p, np.asarray(losses)


def _close(res, p, losses, eval_every):
    for k in p:
        np.testing.assert_allclose(np.asarray(res.params[k]), np.asarray(p[k]), rtol=1e-6,
                                   atol=1e-7)
    steps = len(losses)
    np.testing.assert_allclose(np.asarray(res.history["step_loss"]).reshape(-1)[:steps],
                               losses, rtol=1e-6)
    # an evaluation's batch loss: the mean of its steps' losses, each step weighing one
    means = [losses[i:i + eval_every].mean() for i in range(0, steps, eval_every)]
    np.testing.assert_allclose(res.history["batch_loss"], means, rtol=1e-6)
    assert res.steps_run == steps


@pytest.mark.parametrize("loop", ["auto", "scan", "host", 3])
@pytest.mark.parametrize("source", ["generator", "torch"])
def test_short_batches_equal_an_optax_loop(loop, source):
    """An iterable whose passes end with a short batch (100 samples by 32: 32, 32, 32, 4)
    for a step budget over two passes: each short batch is an update on its own samples
    (the mean over its rows), as a hand-written jitted optax loop takes it, in either plan
    (the scan plan runs a block holding one in the host plan)."""
    x, y = _short_problem()
    batches = _passes if source == "generator" else _torch_passes
    opt = optax.adam(0.05)
    p, losses = _optax_loop(opt, batches(x, y), 7)
    assert losses.shape == (7,)
    res = jaxgd.fit(loss, P0, batches(x, y), optimizer=opt, steps=7, eval_every=3,
                    shuffle=False, record_steps=True, loop=loop)
    _close(res, p, losses, 3)
    assert res.loop == {"auto": "scan", 3: "host:3"}.get(loop, loop)


def test_short_batches_in_a_sweep_equal_optax_loops():
    """Configurations mapped over a re-iterable source with short batches: each equals its
    own optax loop (the scan plan's block with a short batch in the host plan)."""
    x, y = _short_problem()

    class Passes:
        def __iter__(self):
            return _passes(x, y)

    lrs = [0.01, 0.05, 0.2]
    res = jaxgd.sweep(loss, P0, Passes(), grid={"learning_rate": lrs}, optimizer="sgd",
                      steps=9, eval_every=2, shuffle=False, record_steps=True, chunk_size=2)
    for i, lr in enumerate(lrs):
        p, losses = _optax_loop(optax.sgd(lr), _passes(x, y), 9)
        for k in p:
            np.testing.assert_allclose(np.asarray(res.params[k][i]), np.asarray(p[k]),
                                       rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(res.history["step_loss"][i]).reshape(-1)[:9],
                                   losses, rtol=1e-6)


class ShortLoader:
    """A re-iterable source whose passes end with a short batch (three passes)."""

    def __iter__(self):
        return _passes(*_short_problem())


class StatefulPasses:
    """A one-shot iterator over the short-batch passes whose position is saved and
    restored (``get_state``/``set_state``, as grain's iterators have)."""

    def __init__(self):
        self.batches = list(_passes(*_short_problem()))
        self.at = self.reads = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.at == len(self.batches):
            raise StopIteration
        self.at += 1
        self.reads += 1
        return self.batches[self.at - 1]

    def get_state(self):
        return {"at": self.at}

    def set_state(self, state):
        self.at = state["at"]


@pytest.mark.parametrize("loop", ["scan", "host"])
@pytest.mark.parametrize("source", [ShortLoader, StatefulPasses])
def test_short_batches_resumed_equal_an_optax_loop(tmp_path, monkeypatch, loop, source):
    """A run over short batches interrupted at its 2nd checkpoint and resumed reads on from
    there (a re-iterable source read again, or an iterator set to the saved position): the
    optax loop's parameters and step losses."""
    x, y = _short_problem()
    opt = optax.adam(0.05)
    p, losses = _optax_loop(opt, _passes(x, y), 11)
    kw = dict(optimizer=opt, steps=11, eval_every=1, shuffle=False, record_steps=True,
              loop=loop)
    again = source()
    starts, got = _interrupted_then_resumed(tmp_path, monkeypatch, source(), again, **kw)
    assert starts == [10]
    if source is StatefulPasses:  # the first batch (its shapes), then update 10's only
        assert again.reads == 2
    _close(got, p, losses, 1)


def _interrupted_then_resumed(tmp_path, monkeypatch, data, again=None, **kw):
    """A fit(out=) interrupted as its 2nd checkpoint is saved, then run again (on
    ``again``, default ``data``): the evaluation the second call went on from, and its
    result."""
    from jaxgd import engine as engine_mod
    from jaxgd import store as store_mod

    real = store_mod.RunStore.save_checkpoint
    count = [0]

    def save(self, tag, arrays, at):
        real(self, tag, arrays, at)
        count[0] += 1
        if count[0] == 2:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(store_mod.RunStore, "save_checkpoint", save)
    with pytest.raises(KeyboardInterrupt):
        jaxgd.fit(loss, P0, data, out=out, checkpoint_every=5, **kw)
    monkeypatch.undo()
    starts, run_blocks = [], engine_mod.run_blocks

    def spy(prog, spec, st, start, end, *a, **k):
        starts.append(start)
        return run_blocks(prog, spec, st, start, end, *a, **k)

    monkeypatch.setattr(engine_mod, "run_blocks", spy)
    return starts, jaxgd.fit(loss, P0, data if again is None else again, out=out,
                             checkpoint_every=5, **kw)


def test_memmap_fit_resumed_equals_in_memory(tmp_path, monkeypatch):
    """A host-fed run interrupted and resumed from a checkpoint equals the in-memory run
    never cut (a block's batches follow from its step)."""
    x, y = _problem()
    kw = dict(KW, hparams={"learning_rate": 0.05}, eval_every=1)
    ref = jaxgd.fit(loss, P0, (x, y), **kw)
    starts, got = _interrupted_then_resumed(tmp_path, monkeypatch,
                                            (_memmap(tmp_path, x, "x"), y), feed="host", **kw)
    assert starts == [10]  # went on from the second checkpoint
    _same(ref, got)


def test_reiterable_fit_resumed_equals_in_memory(tmp_path, monkeypatch):
    x, y = _problem()
    x, y = x[:100], y[:100]
    kw = dict(KW, hparams={"learning_rate": 0.05}, eval_every=1, shuffle=False)
    ref = jaxgd.fit(loss, P0, (x, y), **kw)
    starts, got = _interrupted_then_resumed(tmp_path, monkeypatch, Loader(x, y, 37), **kw)
    assert starts == [10]
    _same(ref, got)


MESH_SCRIPT = r'''
import os, sys
import numpy as np, jax, jax.numpy as jnp, jaxgd
from jax.sharding import Mesh
rng = np.random.default_rng(0)
x = rng.normal(size=(104, 3)).astype(np.float32)  # batches of 16: the last one of 8
y = x @ np.array([1.0, -2.0, 0.5], np.float32)
m = np.memmap(os.path.join(sys.argv[1], "x"), np.float32, "w+", shape=x.shape)
m[:] = x
m.flush()
m = np.memmap(os.path.join(sys.argv[1], "x"), np.float32, "r", shape=x.shape)
loss = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
p0 = {"w": jnp.zeros(3)}
kw = dict(grid={"learning_rate": [0.01, 0.05, 0.1, 2.0], "seed": [0, 1]}, batch_size=16,
          steps=25, eval_every=2, metrics="batch")  # shuffle=True: Feistel orders per seed
placed = []
build = jaxgd.feed.Feeder._build
def spy(self, *a):  # how each fed block was placed
    out = build(self, *a)
    leaf = jax.tree.leaves(out)[0]
    placed.append((str(leaf.sharding.spec), leaf.shape,
                   {s.data.shape for s in leaf.addressable_shards}))
    return out
jaxgd.feed.Feeder._build = spy
def same(a, b):
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    np.testing.assert_array_equal(np.asarray(a.params["w"]), np.asarray(b.params["w"]))
    assert list(a.table["stop_reason"]) == list(b.table["stop_reason"])
ref = jaxgd.sweep(loss, p0, (x, y), **kw)  # one device, in memory
assert {"max_epochs", "diverged"} == set(ref.table["stop_reason"])
for c, d in [(8, 1), (4, 2), (1, 8)]:
    mesh = Mesh(np.array(jax.devices()).reshape(c, d), ("config", "data"))
    got = jaxgd.sweep(loss, p0, (m, y), mesh=mesh, feed="host", **kw)
    np.testing.assert_allclose(got.history["loss"], ref.history["loss"], rtol=1e-5)
    assert list(got.table["stop_reason"]) == list(ref.table["stop_reason"])
    # each device holds its 16/d samples of every batch of the block [seeds, updates, 16]
    spec, shape, shards = placed[-1]
    assert spec == ("P()" if d == 1 else "P(None, None, 'data')"), spec
    assert shape[0] == 2 and shape[2] == 16 and shards == {(2, shape[1], 16 // d, 3)}
    # bit for bit: the in-memory sweep on the same mesh, and the block placed whole on
    # every device (each batch then split by the program)
    same(got, jaxgd.sweep(loss, p0, (x, y), mesh=mesh, **kw))
    if d == 1:
        continue
    jaxgd.engine.fed_sharding = lambda mesh: jax.NamedSharding(mesh, jax.P())
    same(got, jaxgd.sweep(loss, p0, (m, y), mesh=mesh, feed="host", **kw))
    jaxgd.engine.fed_sharding = jaxgd.feed.fed_sharding
def ragged():  # an iterable whose third batch is short: taken on one device only
    for t in range(25):
        n = 8 if t == 2 else 16
        yield x[:n], y[:n]
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("config", "data"))
try:
    jaxgd.sweep(loss, p0, ragged(), mesh=mesh, **dict(kw, shuffle=False))
except ValueError as e:
    assert "batch 2 of data holds 8 samples" in str(e) and "has 8" in str(e), e
else:
    raise AssertionError("a short batch was taken on 8 devices")
print("MESH OK")
'''


def test_host_fed_on_config_data_meshes_equals_one_device(tmp_path):
    """8 forced CPU devices as (8,1), (4,2), (1,8) ("config", "data") meshes: a host-fed
    memmap (Feistel orders, a short last batch) is placed with each batch split over
    "data" and gives the single-device table, and bit for bit the in-memory sweep on the
    same mesh and the block placed whole on every device. An iterable's short batch is
    refused there, with a message naming it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0 and "MESH OK" in r.stdout, r.stderr[-3000:]


@pytest.mark.parametrize("loop", ["host", 4])
def test_host_fed_in_the_host_loop_equals_the_scan_plan(tmp_path, loop):
    """The host loop (a jitted call per update, or per 4) runs host-fed blocks too, on one
    device: a memmap fit, an iterable fit and a sweep mapped one configuration at a time
    equal the scan plan's bit for bit, and the memmap fit the in-memory fit."""
    x, y = _problem()
    data = (_memmap(tmp_path, x, "x.bin"), _memmap(tmp_path, y, "y.bin"))
    kw = dict(KW, hparams={"learning_rate": 0.05}, key=3)
    host = jaxgd.fit(loss, P0, data, loop=loop, **kw)
    assert host.loop == ("host" if loop == "host" else "host:4")
    _same(host, jaxgd.fit(loss, P0, data, loop="scan", **kw))
    _same(host, jaxgd.fit(loss, P0, (x, y), loop=loop, **kw))
    it = dict(KW, hparams={"learning_rate": 0.05}, shuffle=False)
    _same(jaxgd.fit(loss, P0, _batches(x, y, 37), loop=loop, **it),
          jaxgd.fit(loss, P0, _batches(x, y, 37), loop="scan", **it))
    # one seed: the configurations one by one; two: the seeds' own fed batches
    for grid in ({"learning_rate": [0.01, 0.05, 3.0]},
                 {"learning_rate": [0.01, 0.05, 3.0], "seed": [0, 1]}):
        got = jaxgd.sweep(loss, P0, data, grid=grid, loop=loop, plan="map", **KW)
        scan = jaxgd.sweep(loss, P0, data, grid=grid, loop="scan", plan="map", **KW)
        assert got.table.equals(scan.table)
        assert "diverged" in set(scan.table["stop_reason"])
        for k in ("loss", "batch_loss", "step"):
            np.testing.assert_array_equal(got.history[k], scan.history[k])


def test_gather_chunks_bound_samples_and_windows():
    """The memmap gather's chunks cover the sorted indices in order, each with at most
    GATHER_CHUNK samples within at most GATHER_WINDOWS 2 MB windows of addresses (counted
    here with a loop)."""
    from jaxgd import feed

    rng = np.random.default_rng(0)
    for n_rows, k, stride in [(1 << 20, 20_000, 256), (1 << 16, 9000, 64), (3000, 3000, 4)]:
        ordered = np.sort(rng.choice(n_rows, k, replace=False))
        address = 4096 * 12345 + 768
        chunks = feed.gather_chunks(ordered, address, stride)
        assert chunks[0][0] == 0 and chunks[-1][1] == k
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
        for i, j in chunks:
            assert 0 < j - i <= feed.GATHER_CHUNK
            windows = {(address + int(r) * stride) // (2 << 20) for r in ordered[i:j]}
            assert len(windows) <= feed.GATHER_WINDOWS

