"""TOML sweep configurations: every documented key, value forms, and one-line errors."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from jaxgd.config import (
    DEFAULT_CONFIG,
    ConfigError,
    build,
    key_lines,
    read_config,
    to_toml,
)

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def rc(text: str, name: str = "sweep.toml"):
    return read_config(name, text=text)


def err(text: str, name: str = "sweep.toml") -> ConfigError:
    with pytest.raises(ConfigError) as e:
        rc(text, name)
    assert "\n" not in str(e.value)
    return e.value


ALL_KEYS = """\
[data]
dataset = "diabetes"
standardize = true
standardize_target = true
val_fraction = 0.25
split_seed = 3

[model]
name = "mlp"
loss = "half_mse"
hidden = [8, 4]
activation = "tanh"

[train]
optimizer = ["sgd", "adam"]
epochs = 7
batch_size = [16, "full"]
shuffle = "uniform"
drop_last = true
schedule = "exponential"
accumulate = 2
patience = 3
min_delta = 0.001
grad_tol = 1e-6
loss_target = 0.01
diverge_factor = 100.0
restore_best = true
metrics = "batch"
record_steps = true
seed = 4
init_seed = 5
chunk_size = 64
memory_budget = 1000000
hparams = { decay_rate = 0.9, clip_norm = 5.0, l2 = [0.0, 0.01] }

[sweep]
learning_rate = { logspace = [-4, -1], num = 16 }
momentum = { linspace = [0.0, 0.9], num = 4 }
b1 = { geomspace = [0.5, 0.9], num = 3 }
weight_decay = 0.0

[sweep.random]
n = 5
random_seed = 7
clip_value = ["uniform", 0.5, 2.0]
"""


def test_every_documented_key():
    c = rc(ALL_KEYS)
    assert c.data == {"dataset": "diabetes", "standardize": True, "standardize_target": True,
                      "val_fraction": 0.25, "split_seed": 3}
    assert c.model == {"name": "mlp", "loss": "half_mse", "hidden": [8, 4],
                       "activation": "tanh"}
    assert list(c.grid) == ["batch_size", "optimizer", "l2", "learning_rate", "momentum", "b1",
                            "weight_decay"]
    assert c.grid["batch_size"] == [16, "full"] and c.grid["optimizer"] == ["sgd", "adam"]
    assert c.grid["l2"] == [0.0, 0.01]
    np.testing.assert_array_equal(c.grid["learning_rate"], np.logspace(-4, -1, 16))
    np.testing.assert_array_equal(c.grid["momentum"], np.linspace(0.0, 0.9, 4))
    np.testing.assert_array_equal(c.grid["b1"], np.geomspace(0.5, 0.9, 3))
    assert c.grid["weight_decay"] == [0.0]
    assert c.random == {"n": 5, "random_seed": 7, "clip_value": ("uniform", 0.5, 2.0)}
    assert c.train["hparams"] == {"decay_rate": 0.9, "clip_norm": 5.0}
    for k, v in {"epochs": 7, "shuffle": "uniform", "drop_last": True, "schedule": "exponential",
                 "accumulate": 2, "patience": 3, "min_delta": 0.001, "grad_tol": 1e-6,
                 "loss_target": 0.01, "diverge_factor": 100.0, "restore_best": True,
                 "metrics": "batch", "record_steps": True, "seed": 4, "init_seed": 5,
                 "chunk_size": 64, "memory_budget": 1000000}.items():
        assert c.train[k] == v, k
    exp = build(c)
    kw = exp.sweep_kwargs
    assert kw["grid"]["batch_size"] == [16, None]  # "full" -> None
    assert kw["chunk_size"] == 64 and kw["memory_budget"] == 1000000
    assert "init_seed" not in kw and kw["epochs"] == 7 and kw["seed"] == 4
    assert exp.info["n"] == 332 and exp.info["val"] == 110
    xv, yv = kw["val_data"]
    assert xv.shape == (110, 10) and yv.shape == (110,)
    # standardised with training statistics, target too
    x, y = exp.data
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(), 1, rtol=1e-4)
    assert [layer["w"].shape for layer in exp.params["layers"]] == [(10, 8), (8, 4), (4, 1)]


def test_logspace_equals_numpy_and_range():
    c = rc("[sweep]\nlearning_rate = { logspace = [-3, 0.5], num = 15 }\n"
           "momentum = { logspace = [-3, -1], num = 3, base = 2 }\nseed = { range = [1, 7, 2] }\n")
    assert c.grid["learning_rate"] == np.logspace(-3, 0.5, 15).tolist()
    assert c.grid["momentum"] == np.logspace(-3, -1, 3, base=2).tolist()
    assert c.grid["seed"] == [1, 3, 5]


def test_default_toml_is_the_builtin_default():
    a, b = read_config(), read_config(CONFIGS / "default.toml")
    assert (a.data, a.model, a.train, a.grid, a.random) == (b.data, b.model, b.train, b.grid,
                                                             b.random)
    assert (CONFIGS / "default.toml").read_text() == DEFAULT_CONFIG
    assert a.stem == "default"


@pytest.mark.parametrize("name", ["default", "digits_mlp", "cv_diabetes", "random_search"])
def test_example_configs_build(name):
    exp = build(read_config(CONFIGS / f"{name}.toml"))
    assert exp.sweep_kwargs["epochs"] > 0


def test_tasks_and_default_losses():
    e = build(rc('[data]\ndataset = "digits"\n[model]\nname = "softmax"\n'
                 "[sweep]\nlearning_rate = [0.1]\n"))
    assert e.info["loss"] == "softmax_ce" and e.params["w"].shape == (64, 10)
    e = build(rc('[data]\ndataset = "breast_cancer"\n[model]\nname = "logistic"\n'
                 "[sweep]\nlearning_rate = [0.1]\n"))
    assert e.info["loss"] == "bce" and e.data[1].dtype == np.float32
    e = build(rc('[data]\ndataset = "digits"\n[model]\nname = "cnn"\nchannels = 4\n'
                 '[train]\ninit_seed = "seed"\n[sweep]\nlearning_rate = [0.1]\n'))
    assert e.params is None and e.sweep_kwargs["init"] is e.model.init


def test_npz_and_csv_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\ndataset = "d.npz"\n[model]\nname = "logistic"\n'
                   "[sweep]\nlearning_rate = [0.1]\n")
    e = build(read_config(cfg))  # path relative to the config file
    assert e.info["task"] == "binary" and e.data[0].shape == (20, 3)
    np.savetxt(tmp_path / "d.csv", np.c_[x, x.sum(1)], delimiter=",", header="a,b,c,y",
               comments="")
    cfg.write_text('[data]\ndataset = "d.csv"\n[sweep]\nlearning_rate = [0.1]\n')
    e = build(read_config(cfg))
    np.testing.assert_allclose(e.data[1], x.sum(1), rtol=1e-5)
    assert e.info["loss"] == "mse"
    cfg.write_text('[data]\ndataset = "nope.csv"\n')
    with pytest.raises(ConfigError, match=r"c.toml:2: data.dataset file 'nope.csv' not found"):
        read_config(cfg)


def test_syntax_error_has_line():
    e = err("[train]\nepochs = 3\nbatch_size = [16, \n\n[sweep]\n")
    assert str(e).startswith("sweep.toml:") and "TOML syntax error" in str(e)
    e = err("[train]\nepochs = 3\noptimizer = adam\n")
    assert str(e).startswith("sweep.toml:3: TOML syntax error")


def test_unknown_key_suggests_and_points_at_line():
    e = err("[data]\ndataset = 'diabetes'\n\n[train]\n# comment\noptimizer = 'sgd'\nepoch = 5\n")
    assert str(e) == "sweep.toml:7: [train] key 'epoch' is unknown (did you mean 'epochs'?)"
    assert (e.key, e.line, e.file) == ("train.epoch", 7, "sweep.toml")
    e = err("[sweep]\nseed = [0]\nlearning_rat = [0.1]\n")
    assert str(e).startswith("sweep.toml:3: [sweep] key 'learning_rat' is unknown (did you mean "
                             "'learning_rate'?)")
    e = err("[train]\nhparams = { learning_rat = 0.1 }\n")
    assert "sweep.toml:2:" in str(e) and "'learning_rate'" in str(e)
    e = err("[sweeps]\n")
    assert str(e).startswith("sweep.toml:1: table [sweeps] is unknown (did you mean [sweep]?)")
    e = err("[sweep.random]\nn = 3\nlr = ['loguniform', 1e-3, 1e-1]\n")
    assert str(e).startswith("sweep.toml:3: [sweep.random] key 'lr' is unknown")


def test_unknown_dataset_lists_names():
    e = err('\n[data]\ndataset = "diabetis"\n')
    assert str(e).startswith('sweep.toml:3: data.dataset = "diabetis" is not a built-in dataset '
                             "(did you mean 'diabetes'?)")
    for n in ("breast_cancer", "digits", "iris", "wine"):
        assert n in str(e)


@pytest.mark.parametrize("value", ["0", "-2", '"fulll"', "1.5", "true", '[16, 0]', "[]"])
def test_bad_batch_size(value):
    e = err(f"[train]\nepochs = 2\nbatch_size = {value}\n")
    assert str(e).startswith("sweep.toml:3: train.batch_size")


@pytest.mark.parametrize("text, line, needle", [
    ("[train]\nepochs = 0\n", 2, "train.epochs = 0 is invalid"),
    ("[train]\noptimizer = 'adamm'\n", 2, "did you mean 'adam'"),
    ("[train]\nschedule = 'cos'\n", 2, "train.schedule"),
    ("[model]\nname = 'linear'\nhidden = [3]\n", 3, "does not apply to model 'linear'"),
    ("[model]\nname = 'resnet'\n", 2, "model.name"),
    ("[model]\nloss = 'mae'\n", 2, "model.loss"),
    ("[sweep]\nlearning_rate = { logspace = [-4, -1] }\n", 2, "needs num = N"),
    ("[sweep]\nlearning_rate = { logspace = [-4, -1], nun = 3 }\n", 2, "did you mean 'num'"),
    ("[sweep]\nlearning_rate = ['a']\n", 2, "sweep.learning_rate"),
    ("[sweep]\nbatch_size = [0]\n", 2, "sweep.batch_size"),
    ("[train]\nepochs = 3\nbatch_size = 4\n[sweep]\nbatch_size = [8]\n", 5, "both in [train]"),
    ("[sweep.random]\nn = 0\n", 2, "sweep.random.n"),
    ("[sweep.random]\nn = 2\nlearning_rate = ['logunif', 1, 2]\n", 3, "loguniform"),
    ("[sweep.random]\nn = 2\nlearning_rate = ['loguniform', 0, 2]\n", 3, "low > 0"),
    ("[data]\nval_fraction = 1.5\n", 2, "data.val_fraction"),
    ("[data]\nval_fraction = 0.2\n[train]\nfolds = 3\n", 2, "exclude each other"),
    ("[train]\nfolds = 1\n", 2, "train.folds"),
    ("[train]\ninit_seed = -1\n", 2, "train.init_seed"),
    ("[train]\nhparams = { learning_rate = 'x' }\n", 2, "train.hparams.learning_rate"),
    ("train = 3\n", 1, "must be a table"),
])
def test_bad_values(text, line, needle):
    e = err(text)
    assert str(e).startswith(f"sweep.toml:{line}: "), str(e)
    assert needle in str(e)


def test_build_errors():
    with pytest.raises(ConfigError, match="model 'logistic' needs binary labels"):
        build(rc('[model]\nname = "logistic"\n[sweep]\nlearning_rate = [0.1]\n'))
    with pytest.raises(ConfigError, match="standardize_target applies to regression"):
        build(rc('[data]\ndataset = "iris"\nstandardize_target = true\n[model]\n'
                 'name = "softmax"\n[sweep]\nlearning_rate = [0.1]\n'))


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        read_config("nope.toml")


def test_key_lines():
    lines = key_lines("a = 1\n[t]\n'b' = { c = 2, d = 3 }\n[t.u]\ne = [\n 1]\n")
    assert lines == {"a": 1, "t": 2, "t.b": 3, "t.b.c": 3, "t.b.d": 3, "t.u": 4, "t.u.e": 5}


LR = "[sweep]\nlearning_rate = [0.1]\n"


def _cfg(tmp_path, data: str, extra: str = "") -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[data]\n{data}\n{extra}{LR}")
    return cfg


def test_integer_labels_with_task(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 2)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(12) % 3)
    e = build(read_config(_cfg(tmp_path, 'dataset = "d.npz"\ntask = "multiclass"',
                               '[model]\nname = "softmax"\n')))
    assert e.info["task"] == "multiclass" and e.data[1].dtype == np.int32
    np.savez(tmp_path / "b.npz", x=x, y=np.arange(12) % 2)
    e = build(read_config(_cfg(tmp_path, 'dataset = "b.npz"\ntask = "binary"')))
    assert e.info["task"] == "binary" and e.info["loss"] == "bce"


def test_label_values_are_checked(tmp_path):
    x = np.zeros((6, 2), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 2, 1, 2, 1, 2]))
    with pytest.raises(ConfigError, match=r"c.toml:2: binary labels must be 0 or 1; d has "
                                          r"labels \{1, 2\}"):
        build(read_config(_cfg(tmp_path, 'dataset = "d.npz"\ntask = "binary"')))
    with pytest.raises(ConfigError, match=r"c.toml:2: multiclass labels must be 0, 1, \.\.\., "
                                          r"C-1; d has labels \{1, 2\}"):
        build(read_config(_cfg(tmp_path, 'dataset = "d.npz"\ntask = "multiclass"',
                               '[model]\nname = "softmax"\n')))


def test_csv_header_detection(tmp_path):
    # a data first row with repeated values is not a header (pandas would rename 1.5.1)
    (tmp_path / "d.csv").write_text("1.5,1.5,2\n0.5,1.0,3\n2.0,0.0,4\n")
    e = build(read_config(_cfg(tmp_path, 'dataset = "d.csv"')))
    assert e.info["n"] == 3
    np.testing.assert_array_equal(e.data[1], [2, 3, 4])
    (tmp_path / "h.csv").write_text("a,b,y\n1.5,1.5,2\n0.5,1.0,3\n")
    e = build(read_config(_cfg(tmp_path, 'dataset = "h.csv"')))
    assert e.info["n"] == 2


def test_csv_text_labels(tmp_path):
    (tmp_path / "d.csv").write_text("a,y\n1.0,cat\n2.0,dog\n")
    with pytest.raises(ConfigError, match=r"c.toml:2: the last column of d.csv \(y\) must be "
                                          r"numeric, found 'cat'"):
        build(read_config(_cfg(tmp_path, 'dataset = "d.csv"')))


def test_task_only_for_files():
    e = err('[data]\ndataset = "iris"\ntask = "multiclass"\n' + LR)
    assert str(e).startswith("sweep.toml:3: data.task only applies to .npz/.csv files")


@pytest.mark.parametrize("text, line, needle", [
    ("[train]\nepochs = 2\n", 1, "learning_rate is not given"),
    ("[train]\nmin_delta = -0.1\n" + LR, 2, "train.min_delta = -0.1 is invalid: use a number >= 0"),
    ("[train]\ngrad_tol = -1\n" + LR, 2, "train.grad_tol = -1 is invalid"),
    ("[train]\ndiverge_factor = 0.5\n" + LR, 2, "use a number > 1"),
    ("[train]\ndiverge_factor = 'x'\n" + LR, 2, "train.diverge_factor"),
    ("[train]\nschedule = 'step'\n" + LR, 2, "schedule 'step' needs step_size"),
    ("[train]\noptimizer = ['sgd', 'adam']\nhparams = { momentum = 0.9 }\n" + LR, 3,
     "train.hparams.momentum is not a hyper-parameter of optimizer 'adam'"),
])
def test_required_and_ranges_before_jax(text, line, needle):
    e = err(text)
    assert str(e).startswith(f"sweep.toml:{line}: " if line else "sweep.toml: "), str(e)
    assert needle in str(e)
    rc("[train]\nhparams = { learning_rate = 0.1 }\n")  # learning rate in hparams is enough
    rc("[sweep.random]\nn = 2\nlearning_rate = ['loguniform', 1e-3, 1e-1]\n")
    rc("[train]\nschedule = 'step'\nhparams = { step_size = 3 }\n" + LR)


def test_regression_loss_with_classes():
    with pytest.raises(ConfigError, match=r'sweep.toml: model.loss = "mse" is for regression'):
        build(rc('[data]\ndataset = "breast_cancer"\n[model]\nname = "logistic"\n'
                 'loss = "mse"\n' + LR))


# ----------------------------------------------------------------------------- named code

# A module a configuration names: it appends a line to imported.txt beside itself each
# time its code runs (an import), so a test sees whether anything imported it.
USER_CODE = '''\
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

with open(pathlib.Path(__file__).with_name("imported.txt"), "a") as f:
    f.write(__name__ + "\\n")

WIDTH = 3


def data(n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x @ np.arange(1.0, d + 1) + 0.5).astype(np.float32)


def model(d=3, scale=0.5):
    def init(key, *, width=4):
        k1, k2 = jax.random.split(key)
        return {"w1": scale * jax.random.normal(k1, (d, width)),
                "w2": scale * jax.random.normal(k2, (width,))}

    def apply(params, x):
        return jnp.tanh(x @ params["w1"]) @ params["w2"]

    return init, apply


def loss(params, batch, apply, power=2.0):
    x, y = batch
    return jnp.mean(jnp.abs(apply(params, x) - y) ** power)


def bad_data():
    return np.zeros((4, 2)), np.zeros(4), np.zeros(4)


def bad_model():
    return 3


def vector_loss(params, batch, apply):
    x, y = batch
    return (apply(params, x) - y) ** 2
'''

NAMED = """\
[data]
callable = "./usercode.py:data"
[data.kwargs]
n = 40
[model]
callable = "./usercode.py:model"
kwargs = { scale = 0.5 }
[loss]
callable = "./usercode.py:loss"
kwargs = { power = 1.5 }
[train]
epochs = 2
batch_size = "full"
[sweep]
learning_rate = [0.1, 0.3]
width = [2, 4]
"""


def imports_of(folder: Path) -> list[str]:
    """The module names under which usercode.py in ``folder`` was imported (its marker)."""
    f = folder / "imported.txt"
    return f.read_text().split() if f.exists() else []


def test_named_code_is_only_spelled_by_read_config(tmp_path, monkeypatch):
    """read_config checks the names (and that a named file exists) but imports nothing:
    neither the file form nor the module form, whatever the key."""
    (tmp_path / "usercode.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))  # importable as "usercode" too
    (tmp_path / "cfg.toml").write_text(NAMED)
    c = read_config(tmp_path / "cfg.toml")
    assert c.data == {"callable": "./usercode.py:data", "kwargs": {"n": 40}, "standardize":
                      False, "standardize_target": False, "split_seed": 0}
    assert c.model == {"callable": "./usercode.py:model", "kwargs": {"scale": 0.5}}
    assert c.loss == {"callable": "./usercode.py:loss", "kwargs": {"power": 1.5}}
    assert c.grid == {"learning_rate": [0.1, 0.3], "width": [2, 4]}
    module_form = NAMED.replace("./usercode.py", "usercode")
    read_config(tmp_path / "cfg.toml", text=module_form)
    assert imports_of(tmp_path) == [] and "usercode" not in sys.modules
    # every other key that takes a string refuses a module's name, and imports nothing
    for table, key in [("data", "dataset"), ("model", "name"), ("model", "loss"),
                       ("train", "optimizer"), ("train", "schedule"), ("train", "shuffle"),
                       ("train", "metrics"), ("train", "init_seed"), ("search", "method")]:
        text = (f'[{table}]\n{key} = "usercode:model"\n' + (
            "" if table == "train" else "[train]\n") + "hparams = { learning_rate = 0.1 }\n")
        with pytest.raises(ConfigError):
            build(read_config(tmp_path / "x.toml", text=text))
    assert imports_of(tmp_path) == [] and "usercode" not in sys.modules


@pytest.mark.parametrize("text, needle", [
    ('[model]\ncallable = "usercode"\n', 'model.callable = "usercode" is not a function'),
    ('[model]\ncallable = "./nofile.py:make"\n', "file './nofile.py' not found"),
    ('[model]\ncallable = "a b:make"\n', "'a b' is not a module name"),
    ('[model]\ncallable = 3\n', "model.callable = 3 must be a string"),
    ('[model]\nname = "mlp"\ncallable = "m:f"\n', "model.name and model.callable exclude"),
    ('[model]\ncallable = "m:f"\nhidden = 3\n', "[model] key 'hidden' is unknown"),
    ('[model]\nkwargs = { a = 1 }\n', "model.kwargs are the keyword arguments of"),
    ('[loss]\ncallable = "m:f"\nkwargs = 3\n', "loss.kwargs = 3 must be a table"),
    ('[loss]\ncalable = "m:f"\n', "(did you mean 'callable'?)"),
    ('[model]\nloss = "mse"\n[loss]\ncallable = "m:f"\n', "model.loss and loss.callable"),
    ('[data]\ndataset = "iris"\ncallable = "m:f"\n', "data.dataset and data.callable"),
])
def test_named_code_spelling_errors(text, needle):
    e = err(text + "[sweep]\nlearning_rate = [0.1]\n")
    assert needle in str(e) and str(e).startswith("sweep.toml:"), str(e)


def test_overrides_equal_editing_the_file(tmp_path):
    """``overrides`` set keys as if the file held them: the validated configuration is
    the edited file's, and the last override of a key wins."""
    (tmp_path / "usercode.py").write_text(USER_CODE)
    (tmp_path / "cfg.toml").write_text(NAMED)
    sets = ["train.epochs=abc", "train.epochs=20", "sweep.learning_rate=[1e-3, 1e-2]",
            "train.optimizer=adam", "model.kwargs.scale=0.25", "data.val_fraction=0.25",
            "loss.kwargs.power=3", "sweep.random.n=4", "sweep.random.l2=['uniform', 0, 1]",
            'train.hparams={ b1 = 0.9 }', "train.hparams.b1=0.5"]
    a = read_config(tmp_path / "cfg.toml", overrides=sets)
    edited = """\
[data]
callable = "./usercode.py:data"
val_fraction = 0.25
[data.kwargs]
n = 40
[model]
callable = "./usercode.py:model"
kwargs = { scale = 0.25 }
[loss]
callable = "./usercode.py:loss"
kwargs = { power = 3 }
[train]
epochs = 20
batch_size = "full"
optimizer = "adam"
hparams = { b1 = 0.5 }
[sweep]
learning_rate = [1e-3, 1e-2]
width = [2, 4]
[sweep.random]
n = 4
l2 = ["uniform", 0, 1]
"""
    (tmp_path / "edited.toml").write_text(edited)
    b = read_config(tmp_path / "edited.toml")
    for f in ("data", "model", "loss", "train", "grid", "random", "search"):
        assert getattr(a, f) == getattr(b, f), f
    assert a.raw == tomllib.loads(edited)
    assert a.overrides["train.epochs"] == "train.epochs=20"
    # an override that the file's checks refuse is named as the override
    with pytest.raises(ConfigError) as e:
        read_config(tmp_path / "cfg.toml", overrides=["train.epochs=abc"])
    assert str(e.value) == ('--set train.epochs=abc: train.epochs = "abc" is invalid: use a '
                            "positive integer")
    with pytest.raises(ConfigError, match=r"^--set sweep\.random\.l2=\[1\]: sweep\.random\.l2 "
                                          r"= \[1\] is invalid"):
        read_config(tmp_path / "cfg.toml", overrides=["sweep.random.n=2", "sweep.random.l2=[1]"])
    with pytest.raises(ConfigError, match=r"^--set sweep\.random\.l2=\[1\]: sweep\.random\.n "):
        read_config(tmp_path / "cfg.toml", overrides=["sweep.random.l2=[1]"])  # no n
    with pytest.raises(ConfigError, match=r"^--set train\.epoch=3: \[train\] key 'epoch' is "
                                          r"unknown \(did you mean 'epochs'\?\)$"):
        read_config(tmp_path / "cfg.toml", overrides=["train.epoch=3"])


@pytest.mark.parametrize("override, needle", [
    ("train.epochs", "write KEY=VALUE"),
    ("train epochs=3", "'train epochs' is not a dotted key"),
    ("train.epochs=", "no value after '='"),
    ("sweep.learning_rate=[0.1", "[0.1 is not a TOML value: Unclosed array"),
    ("train.epochs.x=1", "train.epochs is a value, not a table"),
    ("trian.epochs=1", "table [trian] is unknown (did you mean [train]?)"),
    ("train=1", "'train' must be a table"),
])
def test_override_errors_name_the_override(override, needle):
    with pytest.raises(ConfigError) as e:
        read_config(None, overrides=[override])
    assert str(e.value).startswith(f"--set {override}: ") and needle in str(e.value), e.value


def test_to_toml_reads_back(tmp_path):
    """The run folder's record of a configuration: its tables with the overrides set,
    paths absolute, a named function by its name; read back, the same configuration."""
    (tmp_path / "usercode.py").write_text(USER_CODE)
    (tmp_path / "cfg.toml").write_text(NAMED)
    a = read_config(tmp_path / "cfg.toml", overrides=["train.epochs=5", "sweep.seed=[0, 1]"])
    text = to_toml(a, "a header\nof two lines")
    assert text.startswith("# a header\n# of two lines\n") and "def " not in text
    assert f'callable = "{tmp_path / "usercode.py"}:model"' in text
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "copy.toml").write_text(text)
    b = read_config(tmp_path / "sub" / "copy.toml")
    for f in ("train", "grid", "random"):
        assert getattr(a, f) == getattr(b, f), f
    assert b.train["epochs"] == 5 and b.grid["seed"] == [0, 1]
    assert imports_of(tmp_path) == []


FORMS = '''\
import jax.numpy as jnp
import numpy as np

import jaxgd


def as_dataset():
    return jaxgd.datasets.load("iris")


def classes(n=30):
    return np.arange(2 * n, dtype=np.float32).reshape(n, 2), np.arange(n) % 3


def logits3():
    return (lambda key: {"w": jnp.zeros((2, 3))}), (lambda p, x: x @ p["w"])


def with_apply(params, batch, apply):
    x, y = batch
    return jnp.mean((apply(params, x) - y) ** 2)


def with_hparams(params, batch, apply, hparams):
    return with_apply(params, batch, apply) + hparams["extra"]
'''


def test_named_code_forms_build(tmp_path):
    """A Dataset (its task), integer labels for a named model (class labels, the loss by
    the model's outputs), a named loss given the built-in model's apply, and a loss's own
    hparams: as the contract in experiments/configs/README.md says."""
    (tmp_path / "forms.py").write_text(FORMS)
    lr = "[sweep]\nlearning_rate = [0.1]\n"

    def b(text):
        return build(read_config(tmp_path / "c.toml", text=text + lr))

    e = b('[data]\ncallable = "./forms.py:as_dataset"\n[model]\nname = "softmax"\n')
    iris = __import__("jaxgd").datasets.load("iris")
    assert (e.info["task"], e.info["loss"], e.info["dataset"]) == (
        "multiclass", "softmax_ce", "./forms.py:as_dataset")
    np.testing.assert_array_equal(e.data[0], iris.x)
    assert e.params["w"].shape == (4, 3)
    e = b('[data]\ncallable = "./forms.py:classes"\nkwargs = { n = 12 }\n'
          '[model]\ncallable = "./forms.py:logits3"\n')
    assert (e.info["task"], e.info["loss"], e.info["n"]) == ("multiclass", "softmax_ce", 12)
    assert e.data[1].dtype == np.int32 and e.data[1].tolist() == [0, 1, 2] * 4
    e = b('[loss]\ncallable = "./forms.py:with_apply"\n')  # diabetes, linear model
    x, y = e.data
    w = np.asarray(e.params["w"], np.float64)
    bias = np.asarray(e.params["b"], np.float64)
    want = np.mean(((x @ w + bias).reshape(-1) - y) ** 2)
    assert e.info["loss"] == "./forms.py:with_apply"
    np.testing.assert_allclose(float(e.loss(e.params, (x, y))), want, rtol=1e-5)
    e = b('[loss]\ncallable = "./forms.py:with_hparams"\n[train]\nhparams = { extra = 1.0 }\n')
    assert e.sweep_kwargs["hparams"] == {"extra": 1.0}
    with pytest.raises(ConfigError, match=r"\[train\.hparams\] key 'extra' is unknown"):
        b('[loss]\ncallable = "./forms.py:with_apply"\n[train]\nhparams = { extra = 1.0 }\n')


def test_example_my_code_builds(tmp_path):
    """experiments/configs/my_code.toml: a (train, val) pair from its data function,
    standardised with the training part's statistics, images kept [n, 8, 8] for the
    model, and the model's width a shape axis of the sweep."""
    import importlib.util

    exp = build(read_config(CONFIGS / "my_code.toml"))
    spec = importlib.util.spec_from_file_location("my_code_ref", CONFIGS / "my_code.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    (x, y), (xv, yv) = m.digits(val_fraction=0.2)
    flat = x.reshape(len(x), -1).astype(np.float64)
    mu, sd = flat.mean(0), flat.std(0)
    sd[sd == 0] = 1

    def scaled(a):
        return ((a.reshape(len(a), -1) - mu) / sd).reshape(a.shape)

    np.testing.assert_allclose(exp.data[0], scaled(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(exp.sweep_kwargs["val_data"][0], scaled(xv), rtol=1e-4,
                               atol=1e-4)
    assert exp.data[0].shape[1:] == (8, 8)
    np.testing.assert_array_equal(exp.sweep_kwargs["val_data"][1], yv)
    assert exp.params is None and exp.sweep_kwargs["grid"]["width"] == [16, 64]
    p = exp.sweep_kwargs["init"](None, width=16)
    assert p["w1"].shape == (64, 16) and p["w2"].shape == (16, 10)


def test_named_file_importing_its_neighbour(tmp_path):
    """A named file that imports a module beside it (not on the path) is reported at
    the key with what to do, not as a package to pip install."""
    (tmp_path / "neighbour_mod.py").write_text("X = 1\n")
    (tmp_path / "main_mod.py").write_text("import neighbour_mod\n\ndef f():\n    pass\n")
    text = '[model]\ncallable = "./main_mod.py:f"\n[sweep]\nlearning_rate = [0.1]\n'
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError) as e:
        build(read_config(tmp_path / "c.toml"))
    assert str(e.value).startswith(f"{tmp_path / 'c.toml'}:2: model.callable = "
                                   '"./main_mod.py:f": main_mod.py imports \'neighbour_mod\', '
                                   "which is beside it but not importable")
    assert "jaxgd_config_main_mod" not in sys.modules


def test_track_table_becomes_the_track_option():
    c = rc('[sweep]\nlearning_rate = [0.1]\n[track]\ntensorboard = "tb/x"\n'
           'mlflow = "sqlite:///runs.db"\n')
    assert c.track == ["tensorboard:tb/x", "mlflow:sqlite:///runs.db"]
    assert build(c).sweep_kwargs["track"] == ["tensorboard:tb/x", "mlflow:sqlite:///runs.db"]
    assert "track" not in build(rc("[sweep]\nlearning_rate = [0.1]\n")).sweep_kwargs
    e = err('[sweep]\nlearning_rate = [0.1]\n[track]\nwandb = ""\n')
    assert e.line == 4 and e.key == "track.wandb"
    e = err('[sweep]\nlearning_rate = [0.1]\n[track]\ntensorbord = "x"\n')
    assert e.line == 4 and "did you mean 'tensorboard'" in str(e)
