"""New hyper-parameter values never recompile; new shapes or structure do.

Compilations are counted with JAX's own monitoring events: every XLA compilation,
anywhere in the process, records ``/jax/core/compile/backend_compile_duration``. After a
warm-up call, a second ``fit`` with other values must compile *nothing*. A positive
control (another number of epochs) shows that the counter does see compilations, and a
fresh compile of the second configuration shows the values were really used.
"""

from __future__ import annotations

import contextlib

import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd
from jaxgd import program as train  # the compiled programs live there

COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration")


@contextlib.contextmanager
def count_compiles():
    events: list[str] = []

    def listener(name, *_args, **_kwargs):
        if name in COMPILE_EVENTS:
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is None:  # older jax
            from jax._src import monitoring

            unregister = monitoring._unregister_event_duration_listener_by_callback
        unregister(listener)


def loss(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def problem(seed=0, n=20, d=3):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, d)).astype(np.float32)
    y = (x @ r.normal(size=d) + 0.1).astype(np.float32)
    return (x, y), {"w": jnp.zeros(d), "b": jnp.zeros(())}


CASES = {
    "momentum+l2+clip": dict(
        kw=dict(optimizer="momentum", batch_size=8),
        a={"learning_rate": 0.05, "momentum": 0.9, "l2": 1e-3, "clip_norm": 1.0,
           "clip_value": 0.5},
        b={"learning_rate": 0.01, "momentum": 0.5, "l2": 1e-1, "clip_norm": 0.3,
           "clip_value": 2.0},
    ),
    "adam+schedule+l1+wd+stops": dict(
        kw=dict(optimizer="adam", batch_size=None, schedule="exponential",
                val_data=True, restore_best=True),
        a={"learning_rate": 0.05, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "decay_rate": 0.9,
           "transition_steps": 10.0, "l1": 1e-3, "weight_decay": 1e-2, "grad_tol": 1e-9,
           "loss_target": -1.0, "patience": 5, "diverge_factor": 1e6, "min_delta": 0.0},
        b={"learning_rate": 0.2, "b1": 0.5, "b2": 0.9, "eps": 1e-6, "decay_rate": 0.5,
           "transition_steps": 3.0, "l1": 1e-1, "weight_decay": 0.0, "grad_tol": 1e-3,
           "loss_target": 1e-4, "patience": 2, "diverge_factor": 10.0, "min_delta": 1e-3},
    ),
}

STOP_KEYS = ("grad_tol", "loss_target", "patience", "diverge_factor", "min_delta")


def run(case, hp, data, params, key=0, epochs=15):
    kw = dict(case["kw"])
    hp = dict(hp)
    stops = {k: hp.pop(k) for k in STOP_KEYS if k in hp}
    if kw.pop("val_data", False):
        kw["val_data"] = data
    return jaxgd.fit(loss, params, data, hparams=hp, epochs=epochs, key=key, **kw, **stops)


def same(a, b):
    return all(np.array_equal(np.asarray(u), np.asarray(v))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_one_cache_entry_per_structure(monkeypatch):
    """Values share one jitted program: one ``compiled_program`` entry, one trace.

    (Runs first: it also warms the program that the next test reuses.)"""
    case = CASES["momentum+l2+clip"]
    data, params = problem(0)
    seen = []
    original = train.compiled_program

    def spy(spec, *args, **kwargs):
        seen.append(original(spec, *args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(train, "compiled_program", spy)
    for lr, m in ((0.1, 0.9), (0.05, 0.0), (0.01, 0.5)):
        run(case, {**case["a"], "learning_rate": lr, "momentum": m}, data, params)
    assert len(seen) == 3 and seen[0] is seen[1] is seen[2]
    assert seen[0].init._cache_size() == 1 and seen[0].block._cache_size() == 1


@pytest.mark.parametrize("name", list(CASES))
def test_new_values_do_not_recompile(name):
    case = CASES[name]
    data, params = problem(0)
    first = run(case, case["a"], data, params)  # warm-up: compiles
    data2, params2 = problem(1)
    params2 = jax.tree.map(lambda p: p + 0.1, params2)
    with count_compiles() as events:
        second = run(case, case["b"], data, params)  # other hyper-parameter values
        third = run(case, case["b"], data2, params2, key=7)  # other data / init / key
    assert events == [], f"recompiled for new values: {events}"
    assert not same(first.params, second.params)
    assert not same(second.params, third.params)

    # the values reached the program: a fresh compilation of "b" gives the same bits
    # (and, as a positive control, the counter does see that compilation)
    train.compiled_program.cache_clear()
    with count_compiles() as events:
        fresh = run(case, case["b"], data, params)
    assert len(events) > 0
    assert same(fresh.params, second.params)
    assert fresh.stop_reason == second.stop_reason
    assert fresh.epochs_run == second.epochs_run
    assert np.array_equal(fresh.history["loss"], second.history["loss"], equal_nan=True)


def _memory_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"),
                    reason="counts the process's memory maps (/proc, Linux)")
def test_clear_caches_releases_the_compiled_programs():
    """XLA:CPU maps each compiled kernel into memory separately and a Linux process may
    hold 65 530 maps (a long test session crashed past them): the programs jaxgd keeps
    for later calls are bounded, and ``jaxgd.clear_caches()`` releases them."""
    import gc

    x, y = jaxgd.datasets.textbook_line()
    gc.collect()
    before = _memory_maps()
    keep = []
    for i in range(4):  # four losses, four specs: eight programs kept by jaxgd
        loss = lambda p, b, i=i: jnp.mean((jnp.tanh(b[0] @ p["w"])[:, 0] - b[1]) ** 2 * (i + 1))  # noqa: E731
        keep.append(loss)
        jaxgd.fit(loss, {"w": jnp.ones((1, 1))}, (x, y), optimizer="adam",
                  hparams={"learning_rate": 0.01}, epochs=3)
    gc.collect()
    grown = _memory_maps() - before
    assert grown > 4 * 20, grown  # each fit's programs hold dozens of maps
    jaxgd.clear_caches()
    gc.collect()
    assert _memory_maps() - before < 0.2 * grown
    assert train.compiled_program.cache_info().maxsize == train.PROGRAM_CACHE_SIZE


@pytest.mark.skipif(not __import__("os").path.exists("/proc/sys/vm/max_map_count"),
                    reason="Linux's memory-map limit")
def test_a_process_near_the_memory_map_limit_keeps_running():
    """A process holding most of its memory maps (its own: here single pages) runs 20
    fits of new losses: each call first releases the programs jaxgd kept, with a
    warning, so XLA always finds maps for the next one (without that, the 11th fit's
    compile dies of a segmentation fault). The losses equal a NumPy loop's."""
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("maps_worker.py")
    r = subprocess.run([sys.executable, str(worker), "2000", "20"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[-1] == "warnings 20", lines[-3:]
    x, y = (np.asarray(a, np.float64) for a in jaxgd.datasets.textbook_line())
    for line in lines:
        if line.startswith("loss "):
            _, i, got = line.split()
            w, m, v = 1.0, 0.0, 0.0  # Adam on tanh(x w) with the loss scaled by i + 1
            for t in range(1, 4):
                z = np.tanh(x[:, 0] * w)
                g = np.mean(2 * (z - y) * (1 - z ** 2) * x[:, 0]) * (int(i) + 1)
                m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
                w -= 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
            z = np.tanh(x[:, 0] * w)
            np.testing.assert_allclose(float(got), np.mean((z - y) ** 2) * (int(i) + 1),
                                       rtol=1e-5)


def test_repeated_calls_trace_the_loss_no_more():
    """A fit or sweep repeated with other values and the same shapes runs the loss's
    Python code no more: its form, whether it has a convolution (the loop plan) and its
    full-data pass's size (the memory plan) are kept per loss and argument shapes, and
    the programs per spec."""
    calls = []

    def loss(p, b):
        calls.append(1)
        return jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)

    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = x.sum(1)
    p0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    for lr in (0.1, 0.2):
        calls.clear()
        jaxgd.sweep(loss, p0, (x, y), optimizer="adam", grid={"learning_rate": [lr, 0.01]},
                    batch_size=16, epochs=2)
        jaxgd.fit(loss, p0, (x, y), optimizer="adam", hparams={"learning_rate": lr},
                  batch_size=16, epochs=2)
    assert calls == []


def test_memory_maps_read_again_only_after_a_compile(monkeypatch):
    """Reading /proc/self/maps costs ~0.4 us per map (more than a tiny fit's program in
    a process holding thousands): a warm call reuses the last reading while nothing was
    compiled since, and any compile in the process (here the user's own jit) makes the
    next call read the maps again, and release jaxgd's programs past the share."""
    from jaxgd import caches

    reads, held = [], [10]

    def fake_maps():
        reads.append(held[0])
        return held[0], 1000

    monkeypatch.setattr(caches, "memory_maps", fake_maps)
    monkeypatch.setattr(caches, "REREAD_S", 1e9)  # no re-read for time's sake
    x, y = jaxgd.datasets.textbook_line()
    loss = lambda p, b: jnp.mean((b[0][:, 0] * p["w"] - b[1]) ** 2)  # noqa: E731

    def fit():
        return jaxgd.fit(loss, {"w": jnp.ones(())}, (x, y), hparams={"learning_rate": 0.1},
                         epochs=2)

    fit()  # warm-up (compiles)
    jax.jit(lambda v: v * 3.0)(jnp.ones(2))  # a compile of the user's
    n = len(reads)
    fit()
    assert len(reads) == n + 1  # read after the compile
    fit()
    fit()
    assert len(reads) == n + 1  # warm calls, nothing compiled: the reading reused
    held[0] = 900  # past MAP_SHARE of the limit
    jax.jit(lambda v: v * 4.0)(jnp.ones(2))
    with pytest.warns(RuntimeWarning, match="memory maps"):
        fit()
    assert len(reads) == n + 3  # read, released, read again
    monkeypatch.setattr(caches, "REREAD_S", 0.0)
    held[0] = 10
    fit()
    fit()
    assert len(reads) == n + 5  # a reading older than REREAD_S is read again
def test_a_first_fit_or_sweep_compiles_its_two_programs_only():
    """From cleared caches, a fit and a sweep on NumPy params, data and integer seeds
    compile the program's ``init`` and ``block`` and nothing else: no small program per
    parameter shape, seed key or key stack (each costs ~10-40 ms of a first call)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 5)).astype(np.float32)
    y = rng.normal(size=37).astype(np.float32)
    p0 = {"w": np.zeros((5, 1), np.float32), "b": np.zeros((1,), np.float32)}

    def loss(p, b):
        return jnp.mean(((b[0] @ p["w"] + p["b"])[:, 0] - b[1]) ** 2)

    for run in (lambda: jaxgd.fit(loss, p0, (x, y), optimizer="adam", batch_size=8,
                                  hparams={"learning_rate": 0.01}, epochs=3, key=5),
                lambda: jaxgd.sweep(loss, p0, (x, y), optimizer="adam", batch_size=8,
                                    grid={"learning_rate": [0.01, 0.1], "seed": [1, 2]},
                                    epochs=3)):
        jax.clear_caches()
        jaxgd.clear_caches()
        with count_compiles() as events:
            run()
        assert events.count(COMPILE_EVENTS[0]) == 2, events
