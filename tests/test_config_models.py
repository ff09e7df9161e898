"""Every model of jaxgd.models.REGISTRY is usable from a TOML file, and the file's run
equals the same sweep written in Python with the model's public constructor."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxgd
from jaxgd import losses, models
from jaxgd.config import ConfigError, build, read_config

# name -> (dataset, [model] lines, the constructor call the file should amount to,
#          its loss, how a row of x is shaped)
CASES = {
    "linear": ("diabetes", "init_scale = 0.1",
               lambda d, k: models.linear(d, k, init_scale=0.1), "mse", lambda x: x),
    "logistic": ("breast_cancer", "", lambda d, k: models.logistic(d), "bce", lambda x: x),
    "softmax": ("iris", "", lambda d, k: models.softmax(d, k), "softmax_ce", lambda x: x),
    "mlp": ("diabetes", "hidden = [8, 4]\nactivation = \"tanh\"",
            lambda d, k: models.mlp(d, (8, 4), k, "tanh"), "mse", lambda x: x),
    "cnn": ("digits", "channels = 2", lambda d, k: models.cnn(k, 2), "softmax_ce",
            lambda x: x),
    "rnn": ("diabetes", "steps = 5\nhidden = 3",
            lambda d, k: models.rnn(2, 3, k), "mse", lambda x: x.reshape(len(x), 5, 2)),
}


def test_every_registered_model_has_a_case():
    assert set(CASES) == set(models.REGISTRY)


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_from_toml_equals_the_python_sweep(name):
    dataset, lines, make, loss_name, shape = CASES[name]
    text = (f'[data]\ndataset = "{dataset}"\nstandardize = true\n'
            f'[model]\nname = "{name}"\n{lines}\n'
            "[train]\nepochs = 2\nbatch_size = \"full\"\ninit_seed = 3\n"
            "[sweep]\nlearning_rate = [0.01, 0.1]\n")
    exp = build(read_config("m.toml", text=text))
    assert exp.info["model"] == name and exp.info["loss"] == loss_name
    sw = exp.run()
    # the same run written by hand from the public API
    ds = jaxgd.datasets.load(dataset)
    x = np.asarray(jaxgd.data.standardize(ds.x, jaxgd.data.fit_standardizer(ds.x)), np.float32)
    y = ds.y
    task = models.REGISTRY[name].task if dataset != "diabetes" else "regression"
    k = 1 if task in ("regression", "binary") else int(y.max()) + 1
    y = y.astype(np.float32) if loss_name in ("mse", "bce") else y.astype(np.int32)
    model = make(x.shape[1], k)
    ref = jaxgd.sweep(losses.make_loss(model.apply, loss_name),
                      model.init(jax.random.key(3)), (shape(x), y),
                      grid={"learning_rate": [0.01, 0.1]}, epochs=2)
    np.testing.assert_array_equal(sw.history["loss"], ref.history["loss"])
    assert np.all(np.isfinite(sw.history["loss"]))
    for a, b in zip(jax.tree.leaves(sw.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("text, needle", [
    ('[model]\nname = "rnn"\nchannels = 3\n', "does not apply to model 'rnn' (only to cnn)"),
    ('[model]\nname = "rnn"\nhidden = [3]\n', "model.hidden = [3] is invalid: use a positive"),
    ('[model]\nname = "mlp"\nhidden = 0\n', "model.hidden = 0 is invalid"),
    ('[model]\nname = "mlp"\nactivaton = "tanh"\n', "did you mean 'activation'"),
    ('[model]\nname = "rnn"\nsteps = 0\n', "model.steps = 0 is invalid"),
])
def test_model_arguments_are_checked_by_the_registry(text, needle):
    with pytest.raises(ConfigError) as e:
        read_config("m.toml", text=text + "[sweep]\nlearning_rate = [0.1]\n")
    assert needle in str(e.value)


def test_rnn_steps_must_divide_the_features():
    text = ('[data]\ndataset = "diabetes"\n[model]\nname = "rnn"\nsteps = 3\n'
            "[sweep]\nlearning_rate = [0.1]\n")
    with pytest.raises(ConfigError, match="needs a multiple of 3 features, got 10"):
        build(read_config("m.toml", text=text))
