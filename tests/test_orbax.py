"""Orbax interoperability: a configuration's parameters exported as an orbax checkpoint
are restored, bit for bit, by a fresh process that imports orbax and the model library
only (never jaxgd), into the user's own pytree (flax linen variable dict, flax.nnx state,
equinox Module, plain dict); an orbax checkpoint written by plain orbax is read back as
``params``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd

orbax = pytest.importorskip("orbax.checkpoint")

TIMEOUT = 300
HIDE = Path(__file__).resolve().parent / "hide_modules"

X = np.random.default_rng(0).normal(size=(24, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0, 0.5], np.float32))[:, None] + 0.3


def restore_elsewhere(tmp_path, body: str) -> dict[str, np.ndarray]:
    """Run ``body`` in a fresh interpreter where jaxgd cannot be imported (hidden by
    ``tests/hide_modules``; the script checks it); ``body`` sets ``restored``, whose leaves
    come back by key path."""
    script = textwrap.dedent("""
        import sys
        try:
            import jaxgd
            raise SystemExit("jaxgd importable")
        except ModuleNotFoundError:
            pass
        import numpy as np, jax, jax.numpy as jnp
        import orbax.checkpoint as ocp
        """) + textwrap.dedent(body) + textwrap.dedent("""
        assert "jaxgd" not in sys.modules
        flat = jax.tree_util.tree_flatten_with_path(restored)[0]
        np.savez(sys.argv[1], **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})
        """)
    out = tmp_path / "restored.npz"
    r = subprocess.run([sys.executable, "-c", script, str(out)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=TIMEOUT,
                       env={**os.environ, "PYTHONPATH": str(HIDE), "HIDE_MODULES": "jaxgd"})
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def same_bits(expected, restored: dict[str, np.ndarray]) -> None:
    flat = jax.tree_util.tree_flatten_with_path(expected)[0]
    flat = [(jax.tree_util.keystr(p), np.asarray(v)) for p, v in flat
            if isinstance(v, np.ndarray | jax.Array)]
    assert sorted(k for k, _ in flat) == sorted(restored)
    for k, v in flat:
        got = restored[k]
        assert got.dtype == v.dtype and got.shape == v.shape, k
        assert got.tobytes() == v.tobytes(), k  # bit for bit


def mse(apply):
    def loss(params, batch):
        xb, yb = batch
        return jnp.mean((apply(params, xb) - yb) ** 2)
    return loss


def test_linen_fit_params_restore_with_plain_orbax(tmp_path):
    import flax.linen as nn

    model = nn.Dense(1)
    variables = model.init(jax.random.key(0), X[:1])
    res = jaxgd.fit(mse(model.apply), variables, (X, Y), optimizer=optax.adam,
                    hparams={"learning_rate": 0.05}, epochs=5)
    assert not np.array_equal(res.params["params"]["kernel"], variables["params"]["kernel"])
    path = res.export_orbax(tmp_path / "ckpt")
    got = restore_elsewhere(tmp_path, f"""
        import flax.linen as nn
        target = nn.Dense(1).init(jax.random.key(1), np.zeros((1, 3), np.float32))
        restored = ocp.StandardCheckpointer().restore({str(path)!r}, target)
        assert set(restored) == {{"params"}}
        """)
    same_bits(res.params, got)


def test_nnx_sweep_row_restores_into_nnx_state(tmp_path):
    from flax import nnx

    graphdef, state0 = nnx.split(nnx.Linear(3, 1, rngs=nnx.Rngs(0)))
    loss = mse(lambda p, xb: nnx.merge(graphdef, p)(xb))
    sw = jaxgd.sweep(loss, state0, (X, Y), optimizer=optax.sgd,
                     grid={"learning_rate": [0.01, 0.1]}, epochs=4)
    path = sw.export_orbax(tmp_path / "ckpt", row=1)
    got = restore_elsewhere(tmp_path, f"""
        from flax import nnx
        graphdef, abstract = nnx.split(nnx.eval_shape(
            lambda: nnx.Linear(3, 1, rngs=nnx.Rngs(5))))
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
        restored = ocp.StandardCheckpointer().restore({str(path)!r}, abstract)
        assert isinstance(restored, nnx.State), type(restored)
        nnx.merge(graphdef, restored)  # a usable model
        """)
    expected = sw.params_of(1)
    same_bits(expected, got)
    assert not np.array_equal(np.asarray(sw.params_of(0)["kernel"][...]),
                              np.asarray(expected["kernel"][...]))


def test_equinox_best_row_restores_into_module(tmp_path):
    import equinox as eqx

    mlp = eqx.nn.MLP(3, 1, 4, 1, key=jax.random.key(0))
    loss = mse(lambda m, xb: jax.vmap(m)(xb))
    sw = jaxgd.sweep(loss, mlp, (X, Y), optimizer=optax.adam,
                     grid={"learning_rate": [1e-3, 3e-2]}, epochs=4)
    path = sw.export_orbax(tmp_path / "ckpt")  # the best row
    best = sw.best()
    got = restore_elsewhere(tmp_path, f"""
        import equinox as eqx
        model = eqx.nn.MLP(3, 1, 4, 1, key=jax.random.key(9))
        target = eqx.filter(model, eqx.is_array)
        restored = ocp.PyTreeCheckpointer().restore({str(path)!r}, item=target)
        model = eqx.combine(restored, model)
        assert isinstance(model, eqx.nn.MLP)
        model(jnp.zeros(3))
        restored = eqx.filter(model, eqx.is_array)
        """)
    same_bits(eqx.filter(best.params, eqx.is_array), got)


def test_linen_state_as_variable_dict_from_a_loaded_run_folder(tmp_path):
    """A run folder loaded without ``like=`` (nested dicts) exports the same names: a flax
    linen BatchNorm model's ``{"params", "batch_stats"}`` restores as its variable dict."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            return nn.Dense(1)(nn.BatchNorm(use_running_average=not train)(x))

    net = Net()
    variables = net.init(jax.random.key(0), X[:2], train=False)

    def loss(params, batch, *, state, train):
        xb, yb = batch
        v = {"params": params, "batch_stats": state}
        if train:
            out, upd = net.apply(v, xb, train=True, mutable=["batch_stats"])
            state = upd["batch_stats"]
        else:
            out = net.apply(v, xb, train=False)
        return jnp.mean((out - yb) ** 2), state

    sw = jaxgd.sweep(loss, variables["params"], (X, Y), state=variables["batch_stats"],
                     optimizer=optax.sgd, grid={"learning_rate": [0.01, 0.05]}, epochs=3,
                     batch_size=8)
    sw.save(tmp_path / "run")
    loaded = jaxgd.load(tmp_path / "run")
    path = loaded.export_orbax(tmp_path / "ckpt", row=0, state="batch_stats")
    got = restore_elsewhere(tmp_path, f"""
        import flax.linen as nn
        class Net(nn.Module):
            @nn.compact
            def __call__(self, x, train):
                return nn.Dense(1)(nn.BatchNorm(use_running_average=not train)(x))
        target = Net().init(jax.random.key(3), np.zeros((2, 3), np.float32), train=False)
        restored = ocp.StandardCheckpointer().restore({str(path)!r}, target)
        """)
    expected = {"params": sw.params_of(0),
                "batch_stats": jax.tree.map(lambda a: a[0], sw.state)}
    same_bits(expected, got)
    assert not np.array_equal(expected["batch_stats"]["BatchNorm_0"]["mean"],
                              variables["batch_stats"]["BatchNorm_0"]["mean"])


def test_from_orbax_reads_a_plain_orbax_save_as_params(tmp_path):
    """A checkpoint written by orbax alone starts a fit, into the template's type."""
    import equinox as eqx

    lin = eqx.nn.Linear(3, 1, key=jax.random.key(0))
    saved = {"weight": np.full((1, 3), 0.25, np.float32), "bias": np.array([0.5], np.float32)}
    ck = orbax.StandardCheckpointer()
    ck.save((tmp_path / "plain").absolute(), saved)
    ck.wait_until_finished()
    params = jaxgd.from_orbax(tmp_path / "plain", like=lin)
    assert isinstance(params, eqx.nn.Linear)
    assert params.weight.tobytes() == saved["weight"].tobytes()
    assert params.bias.tobytes() == saved["bias"].tobytes()
    res = jaxgd.fit(mse(lambda m, xb: jax.vmap(m)(xb)), params, (X, Y), optimizer=optax.sgd,
                    hparams={"learning_rate": 0.1}, epochs=1)
    # one full-batch step from the checkpoint's values (a hand-written step)
    g = jax.grad(lambda w, b: jnp.mean((X @ w.T + b - Y) ** 2), argnums=(0, 1))(
        saved["weight"], saved["bias"])
    np.testing.assert_allclose(res.params.weight, saved["weight"] - 0.1 * g[0], rtol=1e-6)
    np.testing.assert_allclose(res.params.bias, saved["bias"] - 0.1 * g[1], rtol=1e-6)
    plain = jaxgd.from_orbax(tmp_path / "plain")
    assert set(plain) == {"weight", "bias"} and plain["weight"].dtype == np.float32


def test_from_orbax_refuses_a_template_that_does_not_match(tmp_path):
    path = jaxgd.FitResult({"w": np.ones(3, np.float32)}, {}, "max_epochs", 0, 0)\
        .export_orbax(tmp_path / "c")
    with pytest.raises(ValueError, match=r"like= does not match .*float64\[3\].*float32\[3\]"):
        jaxgd.from_orbax(path, like={"w": np.ones(3)})
    with pytest.raises(ValueError, match=r"no leaf \['v'\]"):
        jaxgd.from_orbax(path, like={"v": np.ones(3, np.float32)})


def test_export_refuses_a_non_empty_folder_unless_asked(tmp_path):
    res = jaxgd.FitResult({"w": np.arange(3, dtype=np.float32)}, {}, "max_epochs", 0, 0)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="exists and is not empty"):
        res.export_orbax(tmp_path / "c")
    assert (tmp_path / "c" / "mine.txt").read_text() == "keep"
    (tmp_path / "e").mkdir()  # an empty folder is fine
    res.export_orbax(tmp_path / "e")
    res2 = jaxgd.FitResult({"w": np.full(3, 7, np.float32)}, {}, "max_epochs", 0, 0)
    res2.export_orbax(tmp_path / "c", overwrite=True)
    assert not (tmp_path / "c" / "mine.txt").exists()
    assert jaxgd.from_orbax(tmp_path / "c")["w"].tolist() == [7, 7, 7]
    # nothing left beside it: the temporary folders are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "e"]
    with pytest.raises(TypeError, match="state=1"):
        res.export_orbax(tmp_path / "d", state=1)
    with pytest.raises(ValueError, match="i=5 is not a row"):
        jaxgd.SweepResult([{}], __import__("pandas").DataFrame({"config": [0]}), {},
                          {"w": np.ones((1, 2))}).export_orbax(tmp_path / "d", row=5)
