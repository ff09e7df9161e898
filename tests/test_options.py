"""The option table (jaxgd.options) against what is derived from it: the signatures and
docs of fit and sweep, the TOML [train] schema and checks, the resume fingerprint."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import jaxgd
from jaxgd import options
from jaxgd.config import TRAIN_KEYS, ConfigError, build, read_config

LR = "[sweep]\nlearning_rate = [0.1]\n"


def keyword_defaults(fn):
    return {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("fn, scope", [(jaxgd.fit, "fit"), (jaxgd.sweep, "sweep")])
def test_signature_is_the_table(fn, scope):
    table = {o.name: o.default for o in options.options_for(scope)}
    assert keyword_defaults(fn) == table


def test_the_options_object_is_the_table():
    """fit and sweep pass their options on as one frozen object whose fields (names and
    defaults) are the table's, so an option is followed by name (``opts.batch_size``)."""
    import dataclasses

    fields = {f.name: f.default for f in dataclasses.fields(options.Options)}
    assert fields == {o.name: o.default for o in options.OPTIONS.values()}
    got = options.collect("fit", {**keyword_defaults(jaxgd.fit), "batch_size": 8})
    assert isinstance(got, options.Options) and got.batch_size == 8 and got.grid is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.epochs = 3
    assert got.replace(epochs=3).epochs == 3 and got.epochs is None  # None: 100 epochs


@pytest.mark.parametrize("fn, scope", [(jaxgd.fit, "fit"), (jaxgd.sweep, "sweep")])
def test_docstring_documents_every_option(fn, scope):
    doc = fn.__doc__
    assert "{options}" not in doc
    for o in options.options_for(scope):
        assert f"\n      {o.name}: " in doc, o.name


# fit keywords that a file cannot hold, and why
NOT_IN_FILES = {
    "key": "[train] seed is the file's key",
    "val_data": "[data] val_fraction",
    "state": "arrays of a model library",
    "penalty_mask": "a function",
    "progress": "the command line's --quiet",
    "standardize": "[data] standardize",
    "out": "the command line's --out",
    "feed": "the data source of a file is device data ([data])",
    "track": "the [track] table",
    "windows": "a token stream: [data] holds (x, y) datasets",
}


def test_every_fit_option_that_fits_a_file_is_a_train_key():
    fit_names = {o.name for o in options.options_for("fit")}
    assert fit_names - set(TRAIN_KEYS) == set(NOT_IN_FILES)
    assert set(TRAIN_KEYS) == {o.name for o in options.file_options()} | {"init_seed"}


# a good and a bad value of every [train] option (TOML literals)
FILE_CASES = {
    "optimizer": ('"adam"', '"adma"'),
    "hparams": ("{ momentum = 0.0 }", "3"),
    "batch_size": ('"full"', "0"),
    "epochs": ("3", "2.5"),
    "checkpoint_every": ('"10min"', '"soon"'),
    "steps": ("30", "0"),
    "shuffle": ('"feistel"', '"random"'),
    "drop_last": ("true", "1"),
    "seed": ("2", "-1"),
    "schedule": ('"constant"', '"cos"'),
    "accumulate": ("2", "0"),
    "folds": ("3", "1"),
    "fold_seed": ("1", "-2"),
    "grad_tol": ("1e-6", "-1"),
    "loss_target": ("0.5", "true"),
    "patience": ("2", "1.5"),
    "min_delta": ("0.01", "-0.1"),
    "diverge_factor": ("10.0", "0.5"),
    "restore_best": ("true", '"yes"'),
    "metrics": ('"batch"', '"all"'),
    "record_steps": ("true", "0"),
    "record_params": ("true", "1"),
    "eval_every": ("2", "0"),
    "loop": ("\"host\"", "\"fast\""),
    "chunk_size": ("8", "0"),
    "memory_budget": ("1000000", "-5"),
}


def test_every_file_option_has_a_case():
    assert set(FILE_CASES) == {o.name for o in options.file_options()}


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_file_accepts_good_and_rejects_bad_like_the_keyword(name):
    good, bad = FILE_CASES[name]
    sweep = "[sweep]\nlearning_rate = [0.1]\n"
    if name == "hparams":
        read_config("sweep.toml", text=f"[train]\nhparams = {good}\n" + sweep)
    else:
        cfg = read_config("sweep.toml", text=f"[train]\n{name} = {good}\n" + sweep)
        assert name in cfg.train or name in cfg.grid
    with pytest.raises(ConfigError) as e:
        read_config("sweep.toml", text=f"[train]\n{name} = {bad}\n" + sweep)
    assert str(e.value).startswith("sweep.toml:2: train." + name), str(e.value)
    if name in ("hparams", "optimizer", "schedule"):
        return
    # the same value as a keyword is refused by the same check
    import tomllib

    value = tomllib.loads(f"v = {bad}")["v"]
    with pytest.raises((TypeError, ValueError), match=name):
        options.check(name, value)


def test_record_params_and_feistel_from_a_file_reach_the_sweep():
    text = ('[data]\ndataset = "line"\n[train]\nepochs = 2\nshuffle = "feistel"\n'
            'record_params = true\n' + LR)
    sw = build(read_config("sweep.toml", text=text)).run()
    assert "params['w']" in sw.history
    assert sw.history["params['w']"].shape[:2] == (1, 2)


def test_fingerprint_settings_are_derived():
    # the keys the resume fingerprint has always held (a change re-keys every run folder)
    assert set(options.fingerprint_settings()) == {
        "metrics", "grad_tol", "loss_target", "patience", "min_delta", "diverge_factor",
        "restore_best", "record_steps", "record_params", "eval_every", "init",
        "penalty_mask", "standardize"}
    for o in options.options_for("sweep"):
        assert o.fingerprint in ("settings", "own", ""), o.name


def test_fingerprint_changes_with_a_settings_option(tmp_path):
    x = np.linspace(0, 1, 8, dtype=np.float32)[:, None]
    y = 2 * x[:, 0]

    def loss(p, b):
        return ((b[0][:, 0] * p["w"] - b[1]) ** 2).mean()

    kw = dict(grid={"learning_rate": [0.1]}, epochs=2, out=tmp_path / "run")
    jaxgd.sweep(loss, {"w": np.zeros((), np.float32)}, (x, y), **kw)
    with pytest.raises(ValueError, match="different sweep"):
        jaxgd.sweep(loss, {"w": np.zeros((), np.float32)}, (x, y), eval_every=2, **kw)
