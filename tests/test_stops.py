"""The stop-condition table (jaxgd.stops): every entry is tested inside the program
against a NumPy loop, and its range check is the same in fit, sweep and a TOML file."""

from __future__ import annotations

import numpy as np
import pytest

import jaxgd
from jaxgd import stops
from jaxgd.config import ConfigError, read_config

LR = "[sweep]\nlearning_rate = [0.1]\n"


def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=40)
    return x, y


def loss(p, b):
    x, y = b
    return ((x @ p["w"] - y) ** 2).mean()


def numpy_history(lr, epochs):
    """Full-batch GD by hand: (loss, gradient norm) after each epoch's update."""
    x, y = problem()
    w = np.zeros(3)
    rows = []
    for _ in range(epochs):
        w = w - lr * (2 / len(y)) * x.T @ (x @ w - y)
        g = (2 / len(y)) * x.T @ (x @ w - y)
        rows.append((np.mean((x @ w - y) ** 2), np.linalg.norm(g)))
    return np.asarray(rows)


def first(mask):
    return int(np.argmax(mask)) if mask.any() else None


def expected_grad_tol(h):
    tol = float(h[5, 1] * 1.0001)  # crossed at epoch 5 (0-based)
    return {"grad_tol": tol}, first(h[:, 1] <= tol)


def expected_loss_target(h):
    target = float(h[7, 0] * 1.0001)
    return {"loss_target": target}, first(h[:, 0] <= target)


def expected_patience(h):
    min_delta = float(np.diff(h[:, 0])[3] * -1.01)  # improvements shrink below this
    best, bad = np.inf, 0
    for e, (v, _) in enumerate(h):
        if v < best - min_delta:
            best, bad = v, 0
        else:
            bad += 1
        if bad >= 2:
            return {"patience": 2, "min_delta": min_delta}, e
    return {"patience": 2, "min_delta": min_delta}, None


# one case per stop condition that the program tests at an evaluation: a new entry of
# stops.STOPS with a test needs its case here (test_every_tested_stop_has_a_case)
CASES = {
    "grad_tol": expected_grad_tol,
    "loss_target": expected_loss_target,
    "patience": expected_patience,
}


def test_reasons_and_codes_are_derived_from_the_table():
    assert jaxgd.STOP_REASONS == ("running", "max_epochs", "grad_tol", "loss_target",
                                  "patience", "diverged", "pruned")
    codes = [s.code for s in stops.STOPS]
    assert sorted(codes) == list(range(1, len(stops.STOPS) + 1))
    for s in stops.STOPS:
        assert jaxgd.STOP_REASONS[s.code] == s.name
    assert set(stops.STOP_DEFAULTS) == {"grad_tol", "loss_target", "patience", "min_delta",
                                        "diverge_factor"}


def test_every_tested_stop_has_a_case():
    assert [s.name for s in stops.TESTED] == list(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_stop_condition_in_the_program_matches_numpy(name, x64):
    epochs = 40
    h = numpy_history(0.05, epochs)
    kw, stop_epoch = CASES[name](h)
    assert stop_epoch is not None and stop_epoch < epochs - 1
    x, y = problem()
    p0 = {"w": np.zeros(3)}
    res = jaxgd.fit(loss, p0, (x, y), hparams={"learning_rate": 0.05}, epochs=epochs, **kw)
    assert res.stop_reason == name
    assert res.epochs_run == stop_epoch + 1
    np.testing.assert_allclose(res.history["loss"], h[: stop_epoch + 1, 0], rtol=1e-10)
    # the same keyword as a sweep axis (a traced value) gives the same stop
    key = next(iter(kw))
    sw = jaxgd.sweep(loss, p0, (x, y), hparams={"learning_rate": 0.05, **kw}, epochs=epochs,
                     grid={key: [kw[key]]})
    assert sw.table["stop_reason"].tolist() == [name]
    assert sw.table["epochs_run"].tolist() == [stop_epoch + 1]


def test_precedence_follows_the_table_order(x64):
    """Two conditions met at the same evaluation: the earlier entry names the stop."""
    h = numpy_history(0.05, 10)
    x, y = problem()
    res = jaxgd.fit(loss, {"w": np.zeros(3)}, (x, y), hparams={"learning_rate": 0.05},
                    epochs=10, grad_tol=float(h[0, 1] * 2), loss_target=float(h[0, 0] * 2))
    order = [s.name for s in stops.TESTED]
    assert order.index("grad_tol") < order.index("loss_target")
    assert (res.stop_reason, res.epochs_run) == ("grad_tol", 1)


BAD = [("grad_tol", -1.0), ("loss_target", float("nan")), ("patience", 1.5),
       ("patience", -1), ("min_delta", -0.1), ("diverge_factor", 0.5)]


def test_every_parameter_has_a_bad_value_case():
    assert {k for k, _ in BAD} == set(stops.STOP_PARAMS)


@pytest.mark.parametrize("name, value", BAD)
def test_range_checks_are_the_same_in_fit_sweep_and_toml(name, value):
    what = stops.STOP_PARAMS[name].what
    x, y = problem()
    p0 = {"w": np.zeros(3)}
    with pytest.raises(ValueError, match=f"{name}={value!r} must be {what}".replace(
            "(", r"\(").replace(")", r"\)").replace(".", r"\.").replace("+", r"\+")):
        jaxgd.fit(loss, p0, (x, y), hparams={"learning_rate": 0.1}, **{name: value})
    with pytest.raises(ValueError, match="must be " + what.split(" (")[0]):
        jaxgd.sweep(loss, p0, (x, y), hparams={"learning_rate": 0.1}, grid={name: [value]})
    if value == value:  # TOML has nan, but the message is the same
        with pytest.raises(ConfigError, match=f"train.{name} = .* is invalid: use "):
            read_config("sweep.toml", text=f"[train]\n{name} = {value}\n" + LR)
