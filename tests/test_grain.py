"""grain pipelines as host-fed data: a run interrupted at a checkpoint and resumed restores
the pipeline's iterator state (``get_state``/``set_state``) saved with the checkpoint,
reads no batch it had used, and equals the run never interrupted and a hand-written optax
loop over the same grain batches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_checkpoint import Calls, interrupt_after, same_fit

import jaxgd
from jaxgd import store as store_mod

grain = pytest.importorskip(
    "grain", reason="grain not installed (pip install grain, or the [test] extra)")

N, D, B, STEPS = 100, 3, 10, 37  # 10 batches an epoch, 4 epochs
KW = dict(steps=STEPS, eval_every=1, metrics="batch", hparams={"learning_rate": 0.05})


def _problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1).astype(np.float32)
    return x, y


def loss(p, b):
    return jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)


P0 = {"w": jnp.zeros(D), "b": jnp.zeros(())}


class Records:
    """A random-access source of (x, y) records that notes which it was asked for."""

    def __init__(self, x, y):
        self.x, self.y, self.read = x, y, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.x[i], self.y[i]

    def __repr__(self):  # a DataLoader's restored state names its source by repr()
        return f"Records(n={len(self.x)})"


# no read-ahead, so that the records read are those of the batches used
READ = grain.ReadOptions(prefetch_buffer_size=0)


def _map_dataset(src):
    """Shuffled records -> 4 epochs -> batches -> an IterDataset."""
    return (grain.MapDataset.source(src).shuffle(seed=5).repeat(4).batch(B)
            .to_iter_dataset(READ))


def _loader(src):
    sampler = grain.samplers.IndexSampler(N, shard_options=grain.sharding.NoSharding(),
                                          shuffle=True, seed=1, num_epochs=4)
    return grain.DataLoader(data_source=src, sampler=sampler, worker_count=0,
                            operations=[grain.transforms.Batch(B, drop_remainder=True)],
                            read_options=READ)


PIPELINES = {
    "map_dataset": _map_dataset,
    "data_loader": _loader,
    "iterator": lambda src: iter(_map_dataset(src)),  # one-shot, its state restorable
}


def _optax_loop(batches):
    """A hand-written optax SGD loop over the first STEPS batches."""
    opt = optax.sgd(0.05)
    p, s = P0, opt.init(P0)
    for t, (bx, by) in enumerate(batches):
        if t == STEPS:
            break
        g = jax.grad(loss)(p, (jnp.asarray(bx), jnp.asarray(by)))
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
    return p


def _interrupted(tmp_path, monkeypatch, make, how="raise"):
    """fit(out=) over ``make()`` interrupted as its 2nd checkpoint (evaluation 10) is
    saved (``how``: :func:`test_checkpoint.interrupt_after`), then run again over a fresh
    ``make()``: (program calls' starts, result)."""
    out = tmp_path / "run"
    interrupt_after(monkeypatch, 2, how)
    with pytest.raises(KeyboardInterrupt):
        jaxgd.fit(loss, P0, make(), out=out, checkpoint_every=5, **KW)
    monkeypatch.undo()
    calls = Calls(monkeypatch)
    got = jaxgd.fit(loss, P0, make(), out=out, checkpoint_every=5, **KW)
    return calls.starts, got


@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_grain_resumed_equals_uninterrupted_and_optax_loop(tmp_path, monkeypatch, kind):
    x, y = _problem()
    made = []

    def make():
        made.append(Records(x, y))
        return PIPELINES[kind](made[-1])

    ref = jaxgd.fit(loss, P0, make(), **KW)
    how = "signal" if kind == "data_loader" else "raise"
    starts, got = _interrupted(tmp_path, monkeypatch, make, how)
    # went on from the second checkpoint (10); a SIGINT after it saves at the next one
    assert starts == [15 if how == "signal" else 10]
    same_fit(got, ref)
    # the resumed run read the first batch (its shapes) and the batches from its start
    assert len(made[-1].read) == B * (1 + STEPS - starts[0])
    want = _optax_loop(make())
    for k in want:
        np.testing.assert_allclose(np.asarray(got.params[k]), np.asarray(want[k]),
                                   rtol=1e-6, atol=1e-7)


def test_grain_resume_reads_no_used_batch(tmp_path, monkeypatch):
    """The resumed run sets the iterator to the checkpoint's position: besides the first
    batch (read once by every call: its shapes, the run's fingerprint) it reads batches
    10 .. 36 once each, none of those used before (record positions counted; no
    read-ahead); the checkpoint holds the state as JSON at update 10; the result is the
    uninterrupted run's."""
    x, y = _problem()
    pos = []  # the position in the repeated, shuffled record stream of each record read

    def make():
        ds = grain.MapDataset.source(Records(x, y)).shuffle(seed=5).repeat(4)
        ds = ds.map_with_index(lambda i, r: (pos.append(i), r)[1])
        return ds.batch(B).to_iter_dataset(grain.ReadOptions(prefetch_buffer_size=0))

    ref = jaxgd.fit(loss, P0, make(), **KW)
    out = tmp_path / "run"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        jaxgd.fit(loss, P0, make(), out=out, checkpoint_every=5, **KW)
    monkeypatch.undo()
    saved = [store_mod.read_npz(p)[0] for p in sorted((out / "chunks").glob("*.ckpt-*"))]
    assert sorted(int(a["feed/at"]) for a in saved) == [5, 10]
    for a in saved:
        assert {"feed/at", "feed/json"} <= set(a) and "feed/bytes" not in a
    pos.clear()
    got = jaxgd.fit(loss, P0, make(), out=out, checkpoint_every=5, **KW)
    same_fit(got, ref)
    assert pos == list(range(B)) + list(range(10 * B, STEPS * B))


class Stateful:
    """A one-shot iterator whose state is no JSON (an object)."""

    def __init__(self, x, y):
        self.x, self.y, self.t = x, y, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.t += 1
        return self.x[:B], self.y[:B]

    def get_state(self):
        return object()

    def set_state(self, state):
        pass


def test_iterator_whose_state_is_not_json_refuses_out(tmp_path):
    x, y = _problem()
    with pytest.raises(ValueError, match=r"one-shot iterator \(Stateful\).*get_state\(\)"):
        jaxgd.fit(loss, P0, Stateful(x, y), out=tmp_path / "run", **KW)
