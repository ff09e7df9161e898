"""Inputs refused or mapped clearly before anything is compiled: large seeds, epochs past
the counters, small mistakes in data, losses and arguments, config values with FILE:LINE,
argparse errors as one line."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from test_store import P0, X, Y, mse, one_line, run

import jaxgd
from jaxgd.cli import main

# ----------------------------------------------------------------------------- seeds


def test_large_seeds_are_distinct_streams():
    from jaxgd.prepare import seed_key

    kd = lambda s: tuple(np.asarray(jax.random.key_data(seed_key(s))).tolist())
    for s in (0, 1, 12345, 2**32 - 1):  # unchanged: jax.random.key(seed)
        assert kd(s) == tuple(np.asarray(jax.random.key_data(jax.random.key(s))).tolist())
    seeds = [0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**33, 2**63, 2**63 + 1, 2**64 - 1]
    assert len({kd(s) for s in seeds}) == len(seeds)
    with pytest.raises(ValueError, match=r"seed=18446744073709551616: a seed must be < 2\*\*64"):
        seed_key(2**64)


def test_large_seeds_in_fit_and_sweep():
    hp = {"learning_rate": 0.1}
    kw = dict(epochs=2, batch_size=1, record_steps=True, hparams=hp)
    fits = {s: jaxgd.fit(mse, P0, (X, Y), key=s, **kw) for s in (0, 2**32, 2**63)}
    order = lambda r: r.history["step_loss"].ravel()
    assert not np.allclose(order(fits[0]), order(fits[2**32]))  # not seed 0 again
    assert not np.allclose(order(fits[2**32]), order(fits[2**63]))
    sw = jaxgd.sweep(mse, P0, (X, Y), grid={"seed": [0, 2**32, 2**63]}, **kw)
    assert sw.table["seed"].tolist() == [0, 2**32, 2**63]  # the user's seeds
    for i, s in enumerate((0, 2**32, 2**63)):
        np.testing.assert_allclose(sw.history["step_loss"][i].ravel(), order(fits[s]),
                                   rtol=1e-5)
    base = jaxgd.sweep(mse, P0, (X, Y), seed=2**32, **kw)
    np.testing.assert_allclose(base.history["step_loss"][0].ravel(), order(fits[2**32]),
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"seed.*must be < 2\*\*64"):
        jaxgd.sweep(mse, P0, (X, Y), grid={"seed": [2**64]}, **kw)
    with pytest.raises(ValueError, match=r"seed=.*must be < 2\*\*64"):
        jaxgd.sweep(mse, P0, (X, Y), seed=2**64, **kw)


# ----------------------------------------------------------------------------- small items


def test_epochs_beyond_the_counters_are_refused_before_compiling(compiles):
    for e in (2**31, 2**62):
        with pytest.raises(ValueError, match=rf"epochs={e} is more than the 2147483647"):
            jaxgd.fit(mse, P0, (X, Y), hparams={"learning_rate": 0.1}, epochs=e)
    with pytest.raises(ValueError, match=r"x 12 steps per epoch = .* steps is more than"):
        jaxgd.fit(mse, P0, (X, Y), hparams={"learning_rate": 0.1}, epochs=2**28, batch_size=1)
    assert compiles.messages == []


def test_small_input_mistakes_are_named_before_compiling(compiles):
    hp = {"learning_rate": 0.1}
    with pytest.raises(ValueError, match=r"val_data\[0\] has shape \(4, 3\) but data\[0\]"):
        jaxgd.fit(mse, P0, (X, Y), hparams=hp, val_data=(np.ones((4, 3), np.float32),
                                                         np.ones(4, np.float32)))
    with pytest.raises(TypeError, match=r"loss returned a Python/NumPy number \(float\)"):
        jaxgd.fit(lambda p, b: 0.5, P0, (X, Y), hparams=hp)
    with pytest.raises(TypeError, match=r"only=\[0\.5\] must hold integer"):
        run(only=[0.5])
    with pytest.raises(TypeError, match=r"data\[0\]\[0\]\[0\] is a Python number: data looks "
                                        "like a nested list"):
        jaxgd.fit(mse, P0, ([[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0]), hparams=hp)
    with pytest.raises(TypeError, match=r"path=None"):
        jaxgd.load(None)
    with pytest.raises(TypeError, match=r"out=123 must be a folder path"):
        run(out=123)
    assert compiles.messages == []


@pytest.mark.parametrize("toml, needle", [
    ("[train]\nepochs = 2\n\n[sweep]\nlearning_rate = [0.1, -0.1]\n",
     ":5: configuration 1 {'learning_rate': -0.1}: hparams['learning_rate']=-0.1 must be"),
    ('[train]\nepochs = 2\noptimizer = "momentum"\n\n[train.hparams]\nmomentum = -0.5\n\n'
     "[sweep]\nlearning_rate = [0.1]\n", ":6: configuration 0 {'learning_rate': 0.1}: "
     "hparams['momentum']=-0.5 must be >= 0"),
    ('[data]\ndataset = "DATA"\n\n[train]\nepochs = 2\nfolds = 50\n\n[sweep]\n'
     "learning_rate = [0.1]\n", ":6: folds=50 is more than the 3 samples of data"),
    ('[data]\ndataset = "HEADER"\n\n[train]\nepochs = 2\n\n[sweep]\nlearning_rate = [0.1]\n',
     ":2: HEADER has no data rows (only a header, or empty)"),
], ids=["negative-lr", "negative-momentum", "folds>N", "header-only-csv"])
def test_config_values_refused_by_sweep_name_file_and_line(tmp_path, capsys, toml, needle):
    data, header = tmp_path / "d.csv", tmp_path / "h.csv"
    data.write_text("1,2,3\n4,5,6\n7,8,9\n")
    header.write_text("a,b,c\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml.replace("DATA", str(data)).replace("HEADER", str(header)))
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = one_line(capsys)
    assert f"{cfg}{needle.replace('HEADER', str(header))}" in line, line
    assert not (tmp_path / "o" / "chunks").exists() or not any((tmp_path / "o" / "chunks"
                                                                 ).iterdir())


def test_toml_large_seed_is_its_own_stream(tmp_path):
    from jaxgd.config import build, read_config

    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nepochs = 2\nbatch_size = 16\nseed = [0, 4294967296]\n\n"
                   "[sweep]\nlearning_rate = [0.01]\n")
    sw = build(read_config(cfg)).run()
    assert sw.table["seed"].tolist() == [0, 2**32]
    assert not np.allclose(sw.history["loss"][0], sw.history["loss"][1])


def test_argparse_errors_are_one_line(capsys):
    assert main(["sweep", "--chunk-size", "x"]) == 2
    assert "argument --chunk-size: 'x' is not an integer" in one_line(capsys)
    assert main(["shw"]) == 2
    assert "invalid choice: 'shw'" in one_line(capsys)
    assert main(["show", "a", "b"]) == 2
    assert "unrecognized arguments: b" in one_line(capsys)
