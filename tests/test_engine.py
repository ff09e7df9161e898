"""The engine's observers: the boundaries a fit, a sweep and a search report, in order."""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd
from jaxgd.observers import Observer

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 2)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0], np.float32)).astype(np.float32)
P0 = {"w": jnp.zeros(2)}


def mse(p, b):
    return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)


class Recorder(Observer):
    """Every boundary the engine reports, as tuples."""

    made: list[Recorder] = []

    def __init__(self, *args, **kwargs):
        self.events = []
        Recorder.made.append(self)

    def run_start(self, n_calls):
        self.events.append(("run_start", n_calls))

    def call_start(self, call):
        self.events.append(("call_start", call.start, call.end, call.cached))

    def block_end(self, call, evals_done):
        self.events.append(("block_end", evals_done))

    def call_end(self, call):
        self.events.append(("call_end",))

    def run_end(self):
        self.events.append(("run_end",))


@pytest.fixture
def recorded(monkeypatch):
    Recorder.made.clear()
    for mod in ("jaxgd.train", "jaxgd.sweep"):  # where the progress bar is the observer
        monkeypatch.setattr(sys.modules[mod], "ProgressBar", Recorder)
    return Recorder.made


def test_fit_reports_one_call_of_every_evaluation(recorded):
    jaxgd.fit(mse, P0, (X, Y), hparams={"learning_rate": 0.1}, batch_size=8, epochs=6,
              eval_every=2)
    (rec,) = recorded
    assert rec.events == [("run_start", 1), ("call_start", 0, 3, False), ("block_end", 3),
                          ("call_end",), ("run_end",)]


def test_sweep_reports_its_chunks_and_the_ones_read_back(recorded, tmp_path):
    kw = dict(grid={"learning_rate": [0.01, 0.02, 0.03, 0.04]}, batch_size=8, epochs=4,
              chunk_size=2, out=tmp_path / "run")
    jaxgd.sweep(mse, P0, (X, Y), **kw)
    call = [("call_start", 0, 4, False), ("block_end", 4), ("call_end",)]
    assert recorded[0].events == [("run_start", 2), *call, *call, ("run_end",)]
    jaxgd.sweep(mse, P0, (X, Y), **kw)  # resumed: both chunks read back, none run
    cached = [("call_start", 0, 4, True), ("call_end",)]
    assert recorded[1].events == [("run_start", 2), *cached, *cached, ("run_end",)]


def test_a_search_reports_each_rung(recorded):
    jaxgd.sweep(mse, P0, (X, Y), grid={"learning_rate": [0.01, 0.05, 0.1, 0.2]},
                batch_size=8, epochs=4,
                search=jaxgd.search.Halving(eta=2, min_epochs=1, compact=True))
    ev = recorded[0].events
    assert ev[0] == ("run_start", None) and ev[-1] == ("run_end",)
    spans = [(e[1], e[2]) for e in ev if e[0] == "call_start"]
    assert spans == [(0, 1), (1, 2), (2, 4)]  # rungs at 1, 2, 4 epochs
    done = [e[1] for e in ev if e[0] == "block_end"]
    assert done == [1, 2, 4]
