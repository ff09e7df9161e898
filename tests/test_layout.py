"""The program's typed inputs (``spec.Traced``), the one hyper-parameter splitter
(``prepare.split_hparams``) and the one description of the history's columns
(``history.HistoryLayout``), each against hand-written expectations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd
from jaxgd import optim, options, prepare, program
from jaxgd.history import HistoryLayout
from jaxgd.spec import Traced

RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 2)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0], np.float32)).astype(np.float32)
P0 = {"w": jnp.zeros(2)}
STOPS = {"grad_tol", "loss_target", "patience", "min_delta", "diverge_factor"}


def mse(p, b):
    return jnp.mean((b[0] @ p["w"] - b[1]) ** 2)


def noisy(p, b, *, key):
    return mse(p, b) + (0.0 if key is None else 0.0 * jax.random.normal(key, ()))


@pytest.fixture
def block_inputs(monkeypatch):
    """The ``traced`` argument of every program block call."""
    seen = []
    real = program.compiled_program

    def spy(spec, rows):
        prog = real(spec, rows)

        def block(st, start, end, data, val, traced, *rest):
            seen.append(traced)
            return prog.block(st, start, end, data, val, traced, *rest)

        return prog._replace(block=block)

    monkeypatch.setattr(program, "compiled_program", spy)
    return seen


def test_a_sweeps_traced_inputs_are_typed(block_inputs):
    """The hyper-parameters' dict holds the user's names only; the loss key's words and
    the padding mask (progress on, 3 configurations in chunks of 2; the padding repeats
    the first configuration) are their own fields."""
    jaxgd.sweep(noisy, P0, (X, Y), optimizer="sgd", epochs=2, batch_size=8, chunk_size=2,
                grid={"learning_rate": [0.01, 0.02, 0.03]}, progress=True)
    assert len(block_inputs) == 2
    for t, lrs, valid in zip(block_inputs, ([0.01, 0.02], [0.03, 0.01]),
                             ([True, True], [True, False]), strict=True):
        assert isinstance(t, Traced)
        assert set(t.values) == {"learning_rate"} | STOPS
        np.testing.assert_allclose(np.asarray(t.values["learning_rate"]), [lrs], rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(t.valid), [valid])
        assert np.asarray(t.key_bits).dtype == np.uint32
        assert np.asarray(t.key_bits).shape[:2] == (1, 2)


def test_a_fits_traced_inputs_have_no_key_or_mask(block_inputs):
    jaxgd.fit(mse, P0, (X, Y), optimizer="momentum", epochs=2,
              hparams={"learning_rate": 0.1, "momentum": 0.5})
    (t,) = block_inputs
    assert isinstance(t, Traced) and t.key_bits is None and t.valid is None
    assert set(t.values) == {"learning_rate", "momentum"} | STOPS


def test_the_splitter_fills_in_the_stop_keywords_under_the_hparams():
    opts = options.Options(patience=3, loss_target=0.5)
    spec_opt = optim.resolve_optimizer("sgd")
    s = prepare.split_hparams(mse, spec_opt, "constant",
                              {"learning_rate": 0.1, "nesterov": True, "loss_target": 0.2},
                              opts)
    assert s.static == {"nesterov": True}
    assert s.numeric["patience"] == 3 and s.numeric["loss_target"] == 0.2
    assert s.numeric["learning_rate"] == 0.1 and s.numeric["grad_tol"] == -1.0
    assert s.loss_hp == {}
    assert s.given == {"learning_rate", "nesterov", "loss_target", "patience", "min_delta"}
    with pytest.raises(ValueError, match="learning_rat"):
        prepare.split_hparams(mse, spec_opt, "constant", {"learning_rat": 0.1}, opts)


def test_history_layout_of_a_run():
    full = HistoryLayout.of(penalty=True, has_val=True, metrics=("acc",), record_steps=True)
    assert full.scalars == ("epoch", "loss", "batch_loss", "grad_norm", "lr", "objective",
                            "val_loss")
    assert full.metrics == ("acc", "batch_acc", "val_acc")
    assert full.per_step == ("step_loss",)
    bare = HistoryLayout.of(penalty=False, has_val=False)
    assert bare.scalars == ("epoch", "loss", "batch_loss", "grad_norm", "lr")
    assert bare.metrics == () and bare.per_step == ()


def test_history_layout_unpacks_by_column():
    layout = HistoryLayout.of(penalty=False, has_val=True)
    packed = RNG.normal(size=(2, 3, 4, 6)).astype(np.float32)
    steps = RNG.normal(size=(2, 3, 8, 5)).astype(np.float16)
    out = layout.unpack({"scalars": packed, "step_loss": steps}, np.float16)
    names = ["epoch", "loss", "batch_loss", "grad_norm", "lr", "val_loss"]
    assert list(out) == names + ["step_loss"]
    for i, name in enumerate(names):
        want = packed[..., i] if name == "epoch" else packed[..., i].astype(np.float16)
        assert out[name].dtype == want.dtype
        np.testing.assert_array_equal(out[name], want)
    assert out["step_loss"] is steps


def test_the_program_writes_its_layouts_columns(monkeypatch):
    layouts = []
    real = jaxgd.engine.program_for

    def spy(*a, **kw):
        prog, layout = real(*a, **kw)
        layouts.append(layout)
        return prog, layout

    monkeypatch.setattr(jaxgd.engine, "program_for", spy)

    def loss(p, b):
        return mse(p, b), {"acc": -mse(p, b)}

    r = jaxgd.fit(loss, P0, (X, Y), optimizer="sgd", epochs=3, batch_size=8,
                  hparams={"learning_rate": 0.1, "l2": 1e-3}, val_data=(X[:6], Y[:6]),
                  record_steps=True)
    (layout,) = layouts
    assert layout.scalars == ("epoch", "loss", "batch_loss", "grad_norm", "lr", "objective",
                              "val_loss")
    assert set(r.history) == set(layout.scalars + layout.metrics + layout.per_step) == {
        "epoch", "loss", "batch_loss", "grad_norm", "lr", "objective", "val_loss", "acc",
        "batch_acc", "val_acc", "step_loss"}
    assert r.history["step_loss"].shape == (3, 3)
