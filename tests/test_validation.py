"""Bad inputs to ``fit``, ``sweep`` and ``load``: a clear error before anything compiles.

Every case raises ``ValueError`` / ``TypeError`` (``FileNotFoundError`` for a missing
path) whose message names the argument and the offending value.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd

N = 10
_r = np.random.default_rng(0)
X = _r.normal(size=(N, 2)).astype(np.float32)
Y = X[:, 0] - X[:, 1]
P = {"w": jnp.zeros(2)}
NAN = float("nan")
INF = float("inf")


def mse(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] - y) ** 2)


def fit(**kw):
    args = {"loss": mse, "params": P, "data": (X, Y), "hparams": {"learning_rate": 0.1},
            "epochs": 2, **kw}
    return jaxgd.fit(**args)


def sweep(**kw):
    args = {"loss": mse, "params": P, "data": (X, Y), "hparams": {"learning_rate": 0.1},
            "epochs": 2, **kw}
    return jaxgd.sweep(**args)


def lr(v):
    return {"hparams": {"learning_rate": v}}


X_NAN = X.copy()
X_NAN[3, 1] = np.nan
X_INF = X.copy()
X_INF[0, 0] = np.inf

# (id, call, exception, regex the message must match)
FIT_CASES = [
    ("lr-zero", lambda: fit(**lr(0.0)), ValueError,
     r"learning_rate'\]=0\.0 must be finite and > 0"),
    ("lr-negative", lambda: fit(**lr(-0.1)), ValueError, r"learning_rate'\]=-0\.1"),
    ("lr-nan", lambda: fit(**lr(NAN)), ValueError, r"learning_rate'\]=nan"),
    ("lr-inf", lambda: fit(**lr(INF)), ValueError, r"learning_rate'\]=inf"),
    ("lr-string", lambda: fit(**lr("0.1")), TypeError, r"learning_rate'\]='0\.1' must be a number"),
    ("lr-vector", lambda: fit(**lr([0.1, 0.2])), ValueError, r"learning_rate'\] must be a scalar"),
    ("lr-missing", lambda: fit(hparams={}), ValueError, r"must give 'learning_rate'"),
    ("batch-zero", lambda: fit(batch_size=0), ValueError, r"batch_size=0"),
    ("batch-negative", lambda: fit(batch_size=-4), ValueError, r"batch_size=-4"),
    ("batch-fraction", lambda: fit(batch_size=2.5), TypeError, r"batch_size=2\.5"),
    ("batch-string", lambda: fit(batch_size="32"), TypeError, r"batch_size='32'"),
    ("batch-too-big-drop-last", lambda: fit(batch_size=20, drop_last=True), ValueError,
     r"batch_size=20 > n=10"),
    ("epochs-zero", lambda: fit(epochs=0), ValueError, r"epochs=0 must be a positive integer"),
    ("epochs-negative", lambda: fit(epochs=-3), ValueError, r"epochs=-3"),
    ("epochs-float", lambda: fit(epochs=2.0), TypeError, r"epochs=2\.0"),
    ("accumulate-zero", lambda: fit(accumulate=0), ValueError, r"accumulate=0"),
    ("data-lengths", lambda: fit(data=(X, Y[:7])), ValueError,
     r"leaves differ in leading length .*: 10.*: 7"),
    ("data-empty", lambda: fit(data=(X[:0], Y[:0])), ValueError, r"data is empty"),
    ("data-nan", lambda: fit(data=(X_NAN, Y)), ValueError, r"data\[0\] has 1 non-finite"),
    ("data-inf", lambda: fit(data=(X_INF, Y)), ValueError, r"data\[0\] has 1 non-finite"),
    ("data-strings", lambda: fit(data=(np.array(["a"] * N), Y)), TypeError,
     r"data\[0\] must have a numeric .*dtype <U1"),
    ("data-0d", lambda: fit(data=(np.float32(1.0), Y)), ValueError,
     r"data\[0\] must be at least 1-D"),
    ("data-none", lambda: fit(data=None), ValueError, r"data has no array leaves"),
    ("val-structure", lambda: fit(val_data=X), ValueError,
     r"val_data must have the same structure"),
    ("val-nan", lambda: fit(val_data=(X_NAN, Y)), ValueError, r"val_data\[0\] has 1 non-finite"),
    ("params-string-leaf", lambda: fit(params={"w": "abc"}), TypeError, r"params\['w'\]='abc'"),
    ("params-int-leaf", lambda: fit(params={"w": [0, 0]}), TypeError,
     r"params\['w'\]\[0\] has dtype int"),
    ("params-object-leaf", lambda: fit(params={"w": jnp.zeros(2), "c": object()}), TypeError,
     r"params\['c'\]"),
    ("params-nan", lambda: fit(params={"w": jnp.asarray([0.0, NAN])}), ValueError,
     r"params\['w'\] contains non-finite"),
    ("loss-vector", lambda: fit(loss=lambda p, b: b[0] @ p["w"]), TypeError,
     r"loss must return a scalar .*shape \(2,\)"),
    ("loss-integer", lambda: fit(loss=lambda p, b: jnp.sum(b[1] > 0)), TypeError,
     r"loss must return a floating-point scalar, got dtype int"),
    ("loss-not-callable", lambda: fit(loss=3), TypeError, r"loss=3 must be a function"),
    ("loss-fails", lambda: fit(loss=lambda p, b: p["nope"]), TypeError,
     r"loss could not be evaluated.*KeyError: 'nope'"),
    ("optimizer-unknown", lambda: fit(optimizer="adma"), ValueError,
     r"optimizer='adma' is not a built-in optimizer \(did you mean 'adam'\?\)"),
    ("optimizer-unknown-dropped-letter", lambda: fit(optimizer="admw"), ValueError,
     r"did you mean 'adamw'\?\)"),
    ("optimizer-type", lambda: fit(optimizer=3), TypeError, r"optimizer=3 must be"),
    ("hparam-not-taken",
     lambda: fit(optimizer="adam", hparams={"learning_rate": 0.1, "bb1": 0.9}), ValueError,
     r"hparams key 'bb1' is not a hyper-parameter of optimizer 'adam'.*did you mean 'b1'"),
    ("hparam-momentum-typo", lambda: fit(optimizer="momentum",
                                         hparams={"learning_rate": 0.1, "momentun": 0.9}),
     ValueError, r"'momentun'.*did you mean 'momentum'"),
    ("l2-negative", lambda: fit(hparams={"learning_rate": 0.1, "l2": -1.0}), ValueError,
     r"hparams\['l2'\]=-1\.0 must be >= 0"),
    ("schedule-unknown", lambda: fit(schedule="cosin"), ValueError,
     r"schedule='cosin' is unknown \(did you mean 'cosine'\?\)"),
    ("schedule-param-missing", lambda: fit(schedule="cosine"), ValueError,
     r"schedule 'cosine' needs hparams\['decay_steps'\]"),
    ("shuffle-unknown", lambda: fit(shuffle="random"), ValueError, r"shuffle='random'"),
    ("drop-last-string", lambda: fit(drop_last="yes"), TypeError, r"drop_last='yes'"),
    ("metrics-unknown", lambda: fit(metrics="foo"), ValueError, r"metrics='foo'"),
    ("patience-fraction", lambda: fit(patience=1.5), ValueError, r"patience=1\.5"),
    ("diverge-factor-small", lambda: fit(diverge_factor=0.5), ValueError,
     r"diverge_factor=0\.5 must be a number > 1"),
    ("key-string", lambda: fit(key="abc"), TypeError, r"key='abc'"),
    ("key-negative", lambda: fit(key=-1), ValueError, r"key=-1"),
    ("penalty-mask", lambda: fit(penalty_mask=3), TypeError, r"penalty_mask=3"),
]

SWEEP_CASES = [
    ("grid-not-dict", lambda: sweep(grid=[0.1]), TypeError, r"grid must be a dict.*list"),
    ("grid-empty-axis", lambda: sweep(grid={"learning_rate": []}), ValueError,
     r"grid axis 'learning_rate' is empty"),
    ("grid-nan", lambda: sweep(grid={"learning_rate": [0.1, NAN]}), ValueError,
     r"axis 'learning_rate' has non-finite value nan"),
    ("grid-inf-array", lambda: sweep(grid={"l2": np.array([0.0, np.inf])}), ValueError,
     r"axis 'l2' has non-finite value inf"),
    ("grid-string-value", lambda: sweep(grid={"learning_rate": ["a"]}), TypeError,
     r"axis 'learning_rate' has value 'a'"),
    ("grid-negative-lr", lambda: sweep(grid={"learning_rate": [0.1, -0.1]}), ValueError,
     r"configuration 1 .*learning_rate'\]=-0\.1 must be finite and > 0"),
    ("grid-unknown-axis", lambda: sweep(grid={"lerning_rate": [0.1]}), ValueError,
     r"'lerning_rate' is not a hyper-parameter.*did you mean 'learning_rate'"),
    ("grid-axis-optimizer-lacks", lambda: sweep(optimizer="adam", grid={"momentum": [0.9]}),
     ValueError, r"'momentum' is not a hyper-parameter of optimizer 'adam'"),
    ("grid-batch-zero", lambda: sweep(grid={"batch_size": [16, 0]}), ValueError,
     r"'batch_size' has value 0"),
    ("grid-batch-string", lambda: sweep(grid={"batch_size": ["32"]}), ValueError,
     r"'batch_size' has value '32'"),
    ("grid-seed-fraction", lambda: sweep(grid={"seed": [0, 1.5]}), ValueError,
     r"axis 'seed' has value 1\.5: must be a non-negative integer"),
    ("grid-seed-negative", lambda: sweep(grid={"seed": [-1]}), ValueError, r"'seed' has value -1"),
    ("grid-optimizer-unknown", lambda: sweep(grid={"optimizer": ["sgd", "adma"]}), ValueError,
     r"optimizer='adma'"),
    ("seed-string", lambda: sweep(seed="a"), ValueError, r"seed='a' must be a non-negative"),
    ("fold-without-folds", lambda: sweep(grid={"fold": [0]}), ValueError, r"'fold' needs folds"),
    ("folds-one", lambda: sweep(folds=1), ValueError, r"folds=1 must be an integer >= 2"),
    ("folds-too-many", lambda: sweep(folds=11), ValueError, r"folds=11 is more than the 10"),
    ("folds-and-val", lambda: sweep(folds=2, val_data=(X, Y)), ValueError, r"folds=k or val_data"),
    ("random-bad-kind", lambda: sweep(random={"n": 2, "learning_rate": ("gauss", 0.1, 1.0)}),
     ValueError, r"random\['learning_rate'\]=\('gauss'.*must be \(kind"),
    ("random-loguniform-zero",
     lambda: sweep(random={"n": 2, "learning_rate": ("loguniform", 0, 1)}),
     ValueError, r"loguniform needs low > 0"),
    ("random-low-above-high", lambda: sweep(random={"n": 2, "learning_rate": ("uniform", 1, 0.1)}),
     ValueError, r"random\['learning_rate'\].*need finite low < high"),
    ("random-empty-choice", lambda: sweep(random={"n": 2, "batch_size": ("choice", [])}),
     ValueError, r"random\['batch_size'\]=\('choice', \[\]\)"),
    ("random-not-spec", lambda: sweep(random={"n": 2, "learning_rate": 0.1}), ValueError,
     r"random\['learning_rate'\]=0\.1"),
    ("random-n-zero", lambda: sweep(random={"n": 0, "learning_rate": ("uniform", 0.1, 1)}),
     ValueError, r"random\['n'\]=0"),
    ("random-seed-string", lambda: sweep(random={"n": 2, "random_seed": "x",
                                                 "learning_rate": ("uniform", 0.1, 1)}),
     ValueError, r"random\['random_seed'\]='x'"),
    ("configs-and-grid", lambda: sweep(grid={"learning_rate": [0.1]}, configs=[{}]), ValueError,
     r"either configs"),
    ("configs-item", lambda: sweep(configs=[{"learning_rate": 0.1}, 0.2]), TypeError,
     r"configs\[1\]=0\.2 must be a dict"),
    ("only-out-of-range", lambda: sweep(grid={"learning_rate": [0.1]}, only=[3]), ValueError,
     r"only=\[3\]"),
    ("chunk-size-zero", lambda: sweep(chunk_size=0), ValueError, r"chunk_size=0"),
    ("memory-budget-negative", lambda: sweep(memory_budget=-1), ValueError, r"memory_budget=-1"),
    ("mesh-not-mesh", lambda: sweep(mesh="cpu"), ValueError, r"mesh='cpu'"),
    ("hparams-not-dict", lambda: sweep(hparams=[0.1]), TypeError, r"hparams=\[0\.1\]"),
    ("params-none", lambda: sweep(params=None), ValueError, r"params is None"),
    ("sweep-data-lengths", lambda: sweep(data=(X[:5], Y)), ValueError, r"leading length"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in FIT_CASES],
                         ids=[c[0] for c in FIT_CASES])
def test_fit_rejects(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in SWEEP_CASES],
                         ids=[c[0] for c in SWEEP_CASES])
def test_sweep_rejects(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_at_least_30_distinct_cases():
    assert len({c[0] for c in FIT_CASES + SWEEP_CASES}) >= 30 + 30


# ----------------------------------------------------------------------------- nothing compiles




@pytest.mark.parametrize("case", [
    lambda loss: jaxgd.fit(loss, P, (X, Y), hparams={"learning_rate": -1.0}),
    lambda loss: jaxgd.fit(loss, P, (X, Y), hparams={"learning_rate": 0.1}, batch_size=0),
    lambda loss: jaxgd.fit(loss, P, (X, Y), optimizer="adam",
                           hparams={"learning_rate": 0.1, "bb1": 0.9}),
    lambda loss: jaxgd.sweep(loss, P, (X, Y), grid={"learning_rate": [0.1, -0.1]}),
    lambda loss: jaxgd.sweep(loss, P, (X, Y), grid={"lerning_rate": [0.1]}),
    lambda loss: jaxgd.sweep(loss, P, (X, Y), hparams={"learning_rate": 0.1},
                             grid={"batch_size": [4, None], "seed": [0, 0.5]}),
], ids=["fit-lr", "fit-batch", "fit-hparam", "sweep-lr", "sweep-axis", "sweep-seed"])
def test_errors_come_before_compilation(case, compiles):
    def fresh_loss(params, batch):  # a new function: nothing of it can be cached
        x, y = batch
        return jnp.mean((x @ params["w"] - y) ** 2)

    with pytest.raises((ValueError, TypeError)):
        case(fresh_loss)
    assert compiles.messages == []


# ----------------------------------------------------------------------------- files


def test_out_under_a_regular_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match=r"out='.*file\.txt/run' cannot be created"):
        sweep(out=f / "run")
    with pytest.raises(ValueError, match=r"out='.*file\.txt' exists and is not a folder"):
        sweep(out=f)


def test_out_not_writable():
    # /proc refuses new folders even to root (a chmod-ed folder would not stop root)
    with pytest.raises(ValueError, match=r"out='/proc/jaxgd-run' cannot be created"):
        sweep(out="/proc/jaxgd-run")


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "run"
    sweep(grid={"learning_rate": [0.1, 0.2]}, out=path)
    return path


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path='.*nope' does not exist"):
        jaxgd.load(tmp_path / "nope")


def test_load_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"path='.*f' is not a run folder"):
        jaxgd.load(tmp_path / "f")


def test_load_unfinished(saved_run, tmp_path):
    run = _copy(saved_run, tmp_path / "run")
    (run / "table.csv").unlink()
    with pytest.raises(ValueError, match=r"not a finished run folder: missing \['table\.csv'\]"
                                         r".*interrupted sweep"):
        jaxgd.load(run)


@pytest.mark.parametrize("name", ["params.npz", "history.npz"])
def test_load_truncated_npz(saved_run, tmp_path, name):
    run = _copy(saved_run, tmp_path / "run")
    payload = (run / name).read_bytes()
    (run / name).write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ValueError, match=r"path='.*run' is damaged"):
        jaxgd.load(run)


def test_load_damaged_json_and_table(saved_run, tmp_path):
    run = _copy(saved_run, tmp_path / "a")
    (run / "result.json").write_text('{"format": 1, "n"')
    with pytest.raises(ValueError, match=r"path='.*a' is damaged"):
        jaxgd.load(run)
    run = _copy(saved_run, tmp_path / "b")
    lines = (run / "table.csv").read_text().splitlines()
    (run / "table.csv").write_text("\n".join(lines[:-1]) + "\n")  # a row lost
    with pytest.raises(ValueError, match=r"path='.*b' is damaged"):
        jaxgd.load(run)
    assert len(jaxgd.load(saved_run)) == 2  # the intact one loads


@pytest.mark.parametrize("typed, choices, meant", [
    ("adma", ["adam", "adamax", "adamw", "sgd"], "adam"),  # two letters swapped
    ("Adam", ["adam", "adamax", "adamw"], "adam"),  # case
    ("admw", ["adam", "adamax", "adamw"], "adamw"),  # a letter dropped
    ("epoch", ["epochs", "steps", "eval_every"], "epochs"),  # a letter missing at the end
    ("tensorbord", ["tensorboard", "wandb", "mlflow"], "tensorboard"),
    ("learningrate", ["learning_rate", "momentum"], "learning_rate"),
    ("lr_schedule_warmup_cosine", ["warmup_cosine", "cosine"], "warmup_cosine"),  # difflib's
    ("xyz", ["learning_rate", "momentum"], None),  # nothing close
    ("adam", [], None),
])
def test_closest_name_is_the_fewest_edits_away(typed, choices, meant):
    from jaxgd._checks import closest

    assert closest(typed, choices) == meant
