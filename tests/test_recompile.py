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
