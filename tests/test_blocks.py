"""History in blocks of evaluations: memory follows the evaluations run, not ``epochs``.

The program runs in host-side blocks (one compiled block length) and stops calling when
no configuration is active. Results in several blocks must equal one block; a run with
an enormous epoch budget that stops early must not allocate history for the budget.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd
from jaxgd import outputs, program

X = np.linspace(-1.0, 1.0, 24, dtype=np.float32)[:, None]
Y = (2.0 * X[:, 0] + 0.5 + 0.1 * np.sin(7 * X[:, 0])).astype(np.float32)
XV, YV = X[::3] + 0.01, Y[::3]
P0 = {"w": jnp.zeros(1), "b": jnp.zeros(())}


def mse(p, batch):
    x, y = batch
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


@pytest.fixture
def small_blocks(monkeypatch):
    """History blocks of 7 evaluations (so a run of 30 evaluations is 5 program calls)."""
    calls = []
    real = program.compiled_program

    def counting(spec, rows):  # one call per program run (fit, chunk)
        calls.append(rows)
        prog = real(spec, rows)
        real_block = prog.block

        def block(*b):
            calls.append("block")
            return real_block(*b)

        return prog._replace(block=block)

    counting.cache_clear = real.cache_clear
    real.cache_clear()
    monkeypatch.setattr(program, "HISTORY_BLOCK_BYTES", 1)
    monkeypatch.setattr(program, "HISTORY_MIN_ROWS", 7)
    monkeypatch.setattr(program, "compiled_program", counting)
    yield calls
    real.cache_clear()


def _fit(**kw):
    return jaxgd.fit(mse, P0, (X, Y), optimizer="momentum",
                     hparams={"learning_rate": 0.05, "momentum": 0.5, "l2": 1e-3},
                     batch_size=5, epochs=30, val_data=(XV, YV), record_steps=True,
                     record_params=True, key=3, **kw)


def _same(a, b):
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k], err_msg=k)
    assert a.history.keys() == b.history.keys()
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert (a.stop_reason, a.epochs_run, a.steps_run, a.best_epoch) == (
        b.stop_reason, b.epochs_run, b.steps_run, b.best_epoch)


@pytest.mark.parametrize("stop", [{}, {"loss_target": 0.02}, {"patience": 2, "min_delta": 1e-3,
                                                               "restore_best": True}])
def test_fit_in_blocks_equals_one_block(small_blocks, stop):
    program.compiled_program.cache_clear()
    ref = None
    # one block: the reference (the fixture's small blocks are switched off for it)
    program.HISTORY_BLOCK_BYTES, program.HISTORY_MIN_ROWS = 1 << 30, 16
    ref = _fit(**stop)
    program.HISTORY_BLOCK_BYTES, program.HISTORY_MIN_ROWS = 1, 7
    small_blocks.clear()
    res = _fit(**stop)
    assert small_blocks[0] == 7
    n_blocks = small_blocks.count("block")
    assert n_blocks == -(-res.history["loss"].shape[0] // 7)  # stopped after the last
    assert res.history["step_loss"].shape[0] == res.epochs_run
    _same(res, ref)
    if stop:
        assert res.stop_reason != "max_epochs" and res.epochs_run < 30


def test_sweep_in_blocks_equals_one_block(small_blocks):
    def run():
        return jaxgd.sweep(mse, P0, (X, Y), optimizer="sgd", batch_size=6, epochs=20,
                           grid={"learning_rate": [0.01, 0.1, 0.5, 3.0], "seed": [0, 1]},
                           loss_target=0.05, chunk_size=3, record_steps=True)

    program.HISTORY_BLOCK_BYTES, program.HISTORY_MIN_ROWS = 1 << 30, 16
    ref = run()
    program.HISTORY_BLOCK_BYTES, program.HISTORY_MIN_ROWS = 1, 7
    small_blocks.clear()
    sw = run()
    assert small_blocks.count("block") > small_blocks.count(7) >= 2  # chunks of blocks
    for k in ref.history:
        np.testing.assert_array_equal(sw.history[k], ref.history[k], err_msg=k)
    cols = ["final_loss", "epochs_run", "steps_run", "stop_reason"]
    assert sw.table[cols].equals(ref.table[cols])
    assert set(sw.table.stop_reason) >= {"loss_target", "diverged"}


@pytest.mark.parametrize("stop", [{}, {"loss_target": 0.02}, {"patience": 2, "min_delta": 1e-3,
                                                               "restore_best": True}])
@pytest.mark.parametrize("min_rows", [7, 16])
def test_sub_blocks_equal_one_evaluation_at_a_time(monkeypatch, stop, min_rows):
    """Rows collected in sub-blocks (here of 4 evaluations: the last one of a block of 7
    overlaps the one before it; the runs stop after 6 and 11 evaluations, inside a
    sub-block) equal the program that writes each evaluation's row into the block
    directly (sub-blocks of 1)."""
    monkeypatch.setattr(program, "HISTORY_BLOCK_BYTES", 1)
    monkeypatch.setattr(program, "HISTORY_MIN_ROWS", min_rows)
    runs = []
    for sub in (1, 4):
        monkeypatch.setattr(jaxgd.loop, "sub_rows", lambda hist, rows, sub=sub: min(rows, sub))
        program.compiled_program.cache_clear()
        runs.append(_fit(**stop))
    program.compiled_program.cache_clear()
    _same(runs[1], runs[0])
    assert runs[0].epochs_run == (11 if "patience" in stop else 6 if stop else 30)


def test_block_stops_at_end_inside_a_sub_block():
    """``block(st, start, end)`` runs evaluations ``start .. end - 1`` exactly, when ``end``
    falls inside a sub-block: the state after two calls (0..4, 4..11) equals one call
    (0..11), and the rows past ``end`` stay NaN."""
    cap = {}
    real = jaxgd.engine.run_blocks

    def spy(prog, spec, st, start, end, args, **kw):
        cap.update(prog=prog, st=st, args=args)
        return real(prog, spec, st, start, end, args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jaxgd.engine, "run_blocks", spy)
        jaxgd.fit(mse, P0, (X, Y), optimizer="sgd", hparams={"learning_rate": 0.1},
                  epochs=40)
    prog, st0, (data, val, tc, keys, tidx, vidx) = cap["prog"], cap["st"], cap["args"]
    assert jaxgd.loop.sub_rows({"scalars": jnp.zeros((prog.rows, 5))}, prog.rows) > 4

    def call(st, start, end):
        return prog.block(st, np.int32(start), np.int32(end), data, val, tc, keys, tidx, vidx)

    st_a, _, hist_a, _ = call(st0, 0, 4)
    st_b, _, hist_b, _ = call(st_a, 4, 11)
    st_c, _, hist_c, _ = call(st0, 0, 11)
    for u, v in zip(jax.tree.leaves(st_b), jax.tree.leaves(st_c), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert int(st_a.evals_run) == 4 and int(st_c.evals_run) == 11
    scal_a, scal_c = np.asarray(hist_a["scalars"])[0, 0], np.asarray(hist_c["scalars"])[0, 0]
    np.testing.assert_array_equal(scal_a[:4], scal_c[:4])
    assert np.isnan(scal_a[4:]).all() and np.isnan(scal_c[11:]).all()
    assert not np.isnan(scal_c[:11]).any()
    np.testing.assert_array_equal(np.asarray(hist_b["scalars"])[0, 0, :7], scal_c[4:11])


def test_huge_epoch_budget_stopping_early_uses_memory_of_the_run(monkeypatch):
    """epochs=10**9 with an early stop: history of the evaluations run, one block in the
    program (at most HISTORY_BLOCK_BYTES), and no rise of the peak RSS by the budget."""
    rows = []
    real = jaxgd.hostloop.program_for

    def spy(*a, **kw):
        prog, cols = real(*a, **kw)
        rows.append((prog.rows, program.history_row_bytes(a[0], a[1], a[2])))
        return prog, cols

    monkeypatch.setattr(jaxgd.engine, "program_for", spy)
    kw = dict(optimizer="sgd", hparams={"learning_rate": 0.3}, loss_target=0.01)
    jaxgd.fit(mse, P0, (X, Y), epochs=10**9, **kw)  # compile (and warm) first
    from experiments.bench import peak_rss

    with peak_rss() as rise:  # NaN where /proc cannot reset the peak
        res = jaxgd.fit(mse, P0, (X, Y), epochs=10**9, **kw)
    assert res.stop_reason == "loss_target"
    assert 1 < res.epochs_run < 1000
    assert all(len(v) == res.epochs_run for k, v in res.history.items())
    n_rows, row_bytes = rows[-1]
    assert n_rows * row_bytes <= program.HISTORY_BLOCK_BYTES
    # the old program held 10**9 rows of 5 float32 columns (20 GB)
    if not np.isnan(rise[0]):
        assert rise[0] < 200, f"peak RSS rose by {rise[0]:.0f} MB"


def test_packed_carry_groups_are_fusable_stacks():
    """The loop carry packs the scalar leaves of one dtype (booleans with int32) into one
    stack, also past the 8 operands of a concatenate XLA:CPU fuses (then assembled from
    the bits of concatenations of 8: still one kernel), keeps array leaves as they are (a
    stack would copy them), and unpacks them bit for bit; with configuration axes,
    stacks of at most 8."""
    v = jnp.arange(3.0)
    tree = {"i": [jnp.int32(k - 9) for k in range(19)], "b": jnp.asarray(True),
            "f": [jnp.float32(0.1 * k) for k in range(8)] + [jnp.float32(-0.0),
                                                             jnp.float32(jnp.nan)],
            "v": v, "m": jnp.ones((2, 3), jnp.bfloat16)}
    packed, layout = jaxgd.loop.pack(tree)
    stacks = sorted((g.dtype.name, g.shape) for g in packed.groups
                    if g.ndim == 1 and g is not v)
    assert stacks == [("float32", (10,)), ("int32", (20,))]
    assert len(packed.groups) == 4  # v and m: entries of their own
    assert any(g is v for g in packed.groups)
    round_trip = jax.jit(lambda t: jaxgd.loop.unpack(*jaxgd.loop.pack(t)))
    for back in (jaxgd.loop.unpack(packed, layout), round_trip(tree)):
        for u, w in zip(jax.tree.leaves(back), jax.tree.leaves(tree), strict=True):
            assert u.dtype == w.dtype and u.shape == w.shape
            assert np.asarray(u).tobytes() == np.asarray(w).tobytes()  # -0.0, NaN too
    # one fused kernel for a stack of 20 scalars (a concatenate of 20 is 20 kernels)
    hlo = jax.jit(lambda t: jaxgd.loop.pack(t)[0]).lower(tree["i"]).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    assert entry.count(" fusion(") == 1 and " concatenate(" not in entry
    # with one configuration axis (a vmapped state), leaves [C] are the scalars: stacked
    per_config = {"a": jnp.arange(4), "b": jnp.arange(4) + 1, "w": jnp.ones((4, 3))}
    packed, layout = jaxgd.loop.pack(per_config, lead=1)
    assert sorted(g.shape for g in packed.groups) == [(2, 4), (4, 3)]
    back = jaxgd.loop.unpack(packed, layout)
    for u, w in zip(jax.tree.leaves(back), jax.tree.leaves(per_config), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(w))
    ints = {"i": [jnp.arange(4) + k for k in range(9)]}
    assert [g.shape for g in jaxgd.loop.pack(ints, lead=1)[0].groups] == [(8, 4), (1, 4)]


@pytest.mark.parametrize("kw", [{}, {"metrics": "batch"},
                                {"metrics": "batch", "loss_target": 1.0, "patience": 5}])
def test_full_batch_evaluations_compile_to_one_kernel(monkeypatch, kw):
    """A full-batch fit of the benchmark's problem A (16 points), at the defaults and with
    ``metrics="batch"``: the loop over a sub-block's evaluations is small enough for
    XLA:CPU to compile it as one kernel (a call marked ``xla_cpu_small_call``; its limit
    is 1 kB read and written per iteration by XLA's cost model) rather than a loop of
    kernels launched one by one (~3x slower per evaluation)."""
    texts = []
    real = program.compiled_program

    def spy(spec, rows):
        prog = real(spec, rows)

        def block(*args):
            texts.append(prog.block.lower(*args).compile().as_text())
            return prog.block(*args)

        return prog._replace(block=block)

    monkeypatch.setattr(program, "compiled_program", spy)
    jaxgd.fit(lambda p, b: jnp.mean((b[0][:, 0] * p["w"] + p["b"] - b[1]) ** 2),
              {"w": jnp.zeros(()), "b": jnp.zeros(())}, jaxgd.datasets.noisy_line(16, seed=0),
              optimizer="sgd", hparams={"learning_rate": 1e-4}, epochs=300, shuffle=False,
              **kw)
    assert texts and all('xla_cpu_small_call="true"' in t for t in texts)


def test_block_program_copies_no_weight_into_a_stack_and_returns_no_outputs(monkeypatch):
    """The block program of a one-layer fit with Adam: no [3, 5, 7] stack of the weight
    and its two moments in the compiled program (each stack and unstack is a copy, and a
    kernel for XLA to compile), and no outputs of its own (the host takes them from the
    last state); the fit's parameters are the hand-written optax loop's."""
    import optax

    texts, outs = [], []
    real = program.compiled_program

    def spy(spec, rows):
        prog = real(spec, rows)

        def block(*args):
            texts.append(prog.block.lower(*args).compile().as_text())
            res = prog.block(*args)
            outs.append(res[1])
            return res

        return prog._replace(block=block)

    monkeypatch.setattr(program, "compiled_program", spy)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    y = rng.normal(size=(16, 7)).astype(np.float32)
    p0 = {"w": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32), "b": jnp.zeros(7)}

    def loss(p, b):
        return jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)

    res = jaxgd.fit(loss, p0, (x, y), optimizer="adam", hparams={"learning_rate": 0.01},
                    epochs=5, shuffle=False)
    assert texts and outs == [None] * len(texts)
    assert all("[3,5,7]" not in t for t in texts)
    opt = optax.adam(0.01)
    p, s = p0, opt.init(p0)
    for _ in range(5):
        g = jax.grad(loss)(p, (x, y))
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
    for k in p:
        np.testing.assert_allclose(np.asarray(res.params[k]), np.asarray(p[k]), rtol=1e-6,
                                   atol=1e-7)


def test_host_outputs_are_the_programs_finalize(monkeypatch):
    """The outputs taken on the host from a [stream, config] state with ``restore_best``
    are the selections the program's ``finalize`` makes under vmap (best parameters where
    an evaluation improved, the last ones where none did)."""
    specs = []
    real = program.compiled_program
    monkeypatch.setattr(program, "compiled_program",
                        lambda spec, rows: specs.append(spec) or real(spec, rows))
    jaxgd.fit(mse, P0, (X, Y), optimizer="sgd", hparams={"learning_rate": 0.1}, epochs=3,
              restore_best=True)
    spec = specs[0]
    assert spec.restore_best
    rng = np.random.default_rng(0)
    S, C = 2, 3

    def arr(*shape, dt=np.float32):
        return rng.normal(size=(S, C) + shape).astype(dt)

    st = program.State(
        params={"w": arr(1), "b": arr()}, opt_state=(), step=np.arange(6).reshape(S, C),
        active=np.zeros((S, C), bool), reason=np.ones((S, C), np.int32),
        epochs_run=np.full((S, C), 3), init_loss=arr(), best_metric=arr(),
        best_epoch=np.asarray([[-1, 0, 2], [1, -1, -1]], np.int32), bad_epochs=np.zeros((S, C)),
        best_params={"w": arr(1), "b": arr()}, evals_run=np.full((S, C), 3),
        diverged_step=np.full((S, C), -1), model_state=None, best_model_state=None,
        ahead=None)
    keys = jax.random.wrap_key_data(np.zeros((S, 2), np.uint32))
    traced = program.Traced(None, None, {"learning_rate": np.zeros((S, C), np.float32)})
    got = outputs.host_outputs(spec, st, keys, traced)
    want = jax.vmap(jax.vmap(lambda s: outputs.finalize(spec, s)))(st)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(got.params["w"][0, 0], st.params["w"][0, 0])  # no best
    np.testing.assert_array_equal(got.params["w"][0, 1], st.best_params["w"][0, 1])
