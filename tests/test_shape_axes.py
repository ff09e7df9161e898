"""Shape axes: a sweep over an ``init`` keyword (hidden width) that changes parameter shapes.

Every configuration is compared with its own :func:`jaxgd.fit` run (the independent
reference: one configuration, one program, no grouping, no stacking).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd
from jaxgd import models
from jaxgd.prepare import as_key
from jaxgd.sweep import shape_axes

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 3)).astype(np.float32)
Y = np.sin(X @ np.array([1.0, -0.5, 0.3], np.float32)).astype(np.float32)
APPLY = models.mlp(3, (8,), activation="tanh").apply  # apply does not depend on the widths


def init(key, hidden):
    return models.mlp(3, (hidden,), activation="tanh").init(key)


def loss(p, b):
    return jnp.mean((APPLY(p, b[0])[:, 0] - b[1]) ** 2)


GRID = {"hidden": [8, 16], "learning_rate": [0.02, 0.1]}
KW = dict(optimizer="sgd", epochs=6, batch_size=10, shuffle=True, seed=3)


@pytest.fixture(scope="module")
def full():
    return jaxgd.sweep(loss, None, (X, Y), init=init, grid=GRID, **KW)


def _fit(hidden, lr, seed=3):
    # the sweep draws a seed's parameters from init(fold_in(key(seed), 0x5EED))
    p0 = init(jax.random.fold_in(as_key(seed), 0x5EED), hidden)
    return jaxgd.fit(loss, p0, (X, Y), optimizer="sgd", hparams={"learning_rate": lr},
                     epochs=KW["epochs"], batch_size=KW["batch_size"], shuffle=True, key=seed)


def _close_trees(a, b, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.shape(u) == np.shape(v)
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def test_shape_axes_are_inits_keywords():
    assert shape_axes(init) == ("hidden",)
    assert shape_axes(lambda key, hidden, *, depth=2: None) == ("hidden", "depth")
    assert shape_axes(lambda key: None) == ()
    assert shape_axes(lambda key, *a, **k: None) == ()
    assert shape_axes(None) == ()


def test_every_configuration_equals_its_fit(full):
    assert list(full.table["hidden"]) == [8, 8, 16, 16]
    assert [g.rows.tolist() for g in full.param_groups] == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="2 parameter shapes.*params_of"):
        _ = full.params
    for i, c in enumerate(full.configs):
        fr = _fit(c["hidden"], c["learning_rate"])
        p = full.params_of(i)
        assert p["layers"][0]["w"].shape == (3, c["hidden"])
        _close_trees(p, fr.params)
        np.testing.assert_allclose(full.history["loss"][i], fr.history["loss"],
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(full.table["final_loss"][i], fr.final_loss, rtol=1e-5)
        assert full.table["stop_reason"][i] == fr.stop_reason


def test_best_returns_parameters_of_its_shape(full):
    b = full.best()
    assert b.params["layers"][0]["w"].shape == (3, b.row["hidden"])
    assert b.row["final_loss"] == full.table["final_loss"].min()
    _close_trees(b.params, _fit(b.row["hidden"], b.row["learning_rate"]).params)
    last = full.best(metric="config", mode="max")  # a row of the second shape
    assert last.index == 3 and last.params["layers"][0]["w"].shape == (3, 16)
    first = full.best(metric="config")
    assert first.index == 0 and first.params["layers"][1]["w"].shape == (8, 1)


def test_only_slices_and_concat(full):
    a = jaxgd.sweep(loss, None, (X, Y), init=init, grid=GRID, only=[3, 0], **KW)
    b = jaxgd.sweep(loss, None, (X, Y), init=init, grid=GRID, only=[2, 1], **KW)
    assert list(a.table["config"]) == [0, 3] and len(a.param_groups) == 2
    both = jaxgd.SweepResult.concat([a, b])
    assert list(both.table["config"]) == [0, 1, 2, 3]
    assert [g.rows.tolist() for g in both.param_groups] == [[0, 1], [2, 3]]
    for i in range(4):
        _close_trees(both.params_of(i), full.params_of(i))
    np.testing.assert_allclose(both.history["loss"], full.history["loss"], rtol=1e-5)
    one = jaxgd.sweep(loss, None, (X, Y), init=init, grid=GRID, only=[2, 3], **KW)
    assert len(one.param_groups) == 1  # one shape: the stacked tree as before
    assert one.params["layers"][0]["w"].shape == (2, 3, 16)


LOADER = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, jaxgd
    from jaxgd import models
    path, out = sys.argv[1], sys.argv[2]
    sw = jaxgd.load(path)
    like = lambda c: models.mlp(3, (c["hidden"],), activation="tanh").init(jax.random.key(0))
    typed = jaxgd.load(path, like=like)
    np.savez(out, **{f"{i}/{k}": np.asarray(v) for i in range(len(sw))
                     for k, v in enumerate(jax.tree.leaves(sw.params_of(i)))})
    print(json.dumps({"hidden": list(map(int, sw.table["hidden"])),
                      "groups": [g.rows.tolist() for g in typed.param_groups],
                      "best": int(sw.best().index)}))
""")


def test_save_load_in_a_fresh_process(full, tmp_path):
    full.save(tmp_path / "run")
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    p = subprocess.run([sys.executable, str(script), str(tmp_path / "run"),
                        str(tmp_path / "p.npz")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info == {"hidden": [8, 8, 16, 16], "groups": [[0, 1], [2, 3]],
                    "best": int(full.best().index)}
    got = np.load(tmp_path / "p.npz")
    for i in range(4):
        for k, v in enumerate(jax.tree.leaves(full.params_of(i))):
            np.testing.assert_array_equal(got[f"{i}/{k}"], np.asarray(v))
    # a single template cannot match two shapes: refused, naming what to give
    with pytest.raises(ValueError, match="2 parameter shapes: give like= a function"):
        jaxgd.load(tmp_path / "run", like=init(jax.random.key(0), 8))
    with pytest.raises(ValueError, match="like= does not match"):
        jaxgd.load(tmp_path / "run", like=lambda c: init(jax.random.key(0), 8))


def test_single_shape_files_unchanged(tmp_path):
    sw = jaxgd.sweep(loss, None, (X, Y), init=init, grid={"hidden": [8], "learning_rate":
                                                            [0.1]}, **KW)
    sw.save(tmp_path / "r")
    with np.load(tmp_path / "r" / "params.npz") as z:
        names = sorted(z.files)
        meta = json.loads(bytes(z["__jaxgd__"]).decode())
    assert not any(n.startswith("rows/") for n in names) and "groups" not in meta
    assert "tree" in meta
    back = jaxgd.load(tmp_path / "r")
    _close_trees(back.params, sw.params)


def test_run_folder_resumes_shape_groups(tmp_path):
    first = jaxgd.sweep(loss, None, (X, Y), init=init, grid=GRID, out=tmp_path / "o", **KW)
    chunks = sorted(p.name for p in (tmp_path / "o" / "chunks").iterdir())
    assert len(chunks) == 2  # one per shape group
    again = jaxgd.sweep(loss, None, (X, Y), init=init, grid=GRID, out=tmp_path / "o", **KW)
    for i in range(4):
        _close_trees(again.params_of(i), first.params_of(i), rtol=0, atol=0)


def test_default_shape_value_keeps_one_group():
    def init_d(key, hidden=8):
        return init(key, hidden)

    sw = jaxgd.sweep(loss, None, (X, Y), init=init_d, grid={"learning_rate": [0.02, 0.1]},
                     **KW)
    assert sw.params["layers"][0]["w"].shape == (2, 3, 8)
    _close_trees(sw.params_of(1), _fit(8, 0.1).params)


def _no_compile(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("compiled")

    monkeypatch.setattr(sys.modules["jaxgd.program"], "compiled_program", boom)


def test_rejected_shape_value_refused_before_compiling(monkeypatch):
    _no_compile(monkeypatch)
    kw = {**KW, "hparams": {"learning_rate": 0.1}}
    with pytest.raises(ValueError, match=r"init rejects shape axis hidden=-4"):
        jaxgd.sweep(loss, None, (X, Y), init=init, grid={"hidden": [8, -4]}, **kw)
    with pytest.raises(ValueError, match=r"init needs 'hidden', a shape axis"):
        jaxgd.sweep(loss, None, (X, Y), init=init, grid={"learning_rate": [0.1]}, **KW)
    # a shape value may also come from hparams (the base of every configuration)
    with pytest.raises(ValueError, match=r"init rejects shape axis hidden=0"):
        jaxgd.sweep(loss, None, (X, Y), init=init, optimizer="sgd", epochs=2,
                    hparams={"learning_rate": 0.1, "hidden": 0})
    with pytest.raises(TypeError, match=r"shape axis 'hidden' has value \{"):
        jaxgd.sweep(loss, None, (X, Y), init=init, configs=[{"hidden": {"a": 1}}], **kw)


# ----------------------------------------------------------------------------- TOML

SHAPE_ARG_CASES = {("mlp", "hidden"): ((5, 7), (3,)), ("cnn", "channels"): (2, 5),
                   ("rnn", "hidden"): (3, 6)}


def test_registry_shape_args_have_shape_free_apply():
    """An argument the registry marks ``shape=True`` may be swept: the model built with
    one value applies the parameters of another exactly as that one's own apply does."""
    marked = {(n, a) for n, e in models.REGISTRY.items() for a, arg in e.args.items()
              if arg.shape}
    assert marked == set(SHAPE_ARG_CASES)
    x = {"mlp": np.ones((2, 4), np.float32), "cnn": np.ones((2, 64), np.float32),
         "rnn": np.ones((2, 4, 1), np.float32)}  # one feature a step
    for (name, arg), (a, b) in SHAPE_ARG_CASES.items():
        build = models.REGISTRY[name].build
        ma, mb = build(4, 3, **{arg: a}), build(4, 3, **{arg: b})
        pb = mb.init(jax.random.key(1))
        np.testing.assert_array_equal(ma.apply(pb, x[name]), mb.apply(pb, x[name]))


def test_toml_sweep_over_a_model_argument():
    from jaxgd.config import build, read_config

    text = ('[data]\ndataset = "diabetes"\nstandardize = true\n'
            '[model]\nname = "mlp"\nactivation = "tanh"\n'
            '[train]\nepochs = 3\nbatch_size = "full"\ninit_seed = 3\n'
            '[sweep]\nhidden = [4, [3, 2]]\nlearning_rate = [0.01, 0.1]\n')
    exp = build(read_config("m.toml", text=text))
    assert exp.params is None and shape_axes(exp.sweep_kwargs["init"]) == ("hidden",)
    sw = exp.run()
    assert [g.rows.tolist() for g in sw.param_groups] == [[0, 1], [2, 3]]
    assert list(sw.table["hidden"]) == [4, 4, "[3, 2]", "[3, 2]"]
    ds = jaxgd.datasets.load("diabetes")
    x = np.asarray(jaxgd.data.standardize(ds.x, jaxgd.data.fit_standardizer(ds.x)), np.float32)
    y = ds.y.astype(np.float32)
    for i, (hidden, lr) in enumerate([(4, 0.01), (4, 0.1), ((3, 2), 0.01), ((3, 2), 0.1)]):
        m = models.mlp(10, (hidden,) if isinstance(hidden, int) else hidden, 1, "tanh")
        fr = jaxgd.fit(jaxgd.losses.make_loss(m.apply, "mse"), m.init(jax.random.key(3)),
                       (x, y), optimizer="sgd", hparams={"learning_rate": lr}, epochs=3)
        # float32, unscaled targets (~1e2) and a vmap of width 2 vs 1: DESIGN's 1e-4
        _close_trees(sw.params_of(i), fr.params, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sw.history["loss"][i], fr.history["loss"], rtol=1e-4)


@pytest.mark.parametrize("lines, needle", [
    ("hidden = 5", "sweep.hidden = 5 is invalid: a model argument swept in [sweep] is a "
                   "non-empty list"),
    ("hidden = [4, 0]", "sweep.hidden = 0 is invalid: use a list whose values are each"),
    ('activation = ["relu", "tanh"]', "activation"),
])
def test_toml_shape_axis_refusals(lines, needle):
    from jaxgd.config import ConfigError, read_config

    text = f'[model]\nname = "mlp"\n[sweep]\nlearning_rate = [0.1]\n{lines}\n'
    with pytest.raises(ConfigError) as e:
        read_config("m.toml", text=text)
    assert needle in str(e.value)
    with pytest.raises(ConfigError, match="given both in \\[model\\] and in \\[sweep\\]"):
        read_config("m.toml", text='[model]\nname = "mlp"\nhidden = [4]\n'
                                   '[sweep]\nlearning_rate = [0.1]\nhidden = [4, 8]\n')
