"""The ``jaxgd`` command line (in-process via ``main``) and the sweep figures."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import jax
import numpy as np
import pandas as pd
import pytest

import jaxgd
from jaxgd.cli import main
from jaxgd.plots import plot_sweep

TINY = """\
[data]
dataset = "diabetes"
standardize = true
standardize_target = true

[model]
name = "linear"

[train]
optimizer = "sgd"
epochs = 3
batch_size = [64, "full"]

[sweep]
learning_rate = { logspace = [-2, 0.5], num = 4 }
seed = [0, 1]
"""

CV = """\
[data]
dataset = "diabetes"
standardize = true
standardize_target = true
[train]
epochs = 3
batch_size = 128
folds = 3
[sweep]
learning_rate = [0.01, 0.1, 3.0]
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``jaxgd sweep tiny.toml`` run in a fresh folder: the default out is runs/tiny."""
    d = tmp_path_factory.mktemp("cli")
    (d / "tiny.toml").write_text(TINY)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        assert main(["sweep", "tiny.toml", "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    return d, d / "runs" / "tiny"


def _big_png(path, min_bytes=5000):
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes, (path, len(data))


def test_sweep_writes_results_and_plots(tiny_run, capsys):
    _, out = tiny_run
    for f in ("table.csv", "history.npz", "params.npz", "result.json"):
        assert (out / f).is_file()
    for f in ("loss_curves", "final_loss_vs_lr", "heatmap_lr_batch_size"):
        _big_png(out / f"{f}.png")
    assert not (out / "cv_learning_rate.png").exists()
    assert len(pd.read_csv(out / "table.csv")) == 16


def test_sweep_prints_summary_and_resumes(tiny_run, capsys, monkeypatch):
    d, out = tiny_run
    monkeypatch.chdir(d)
    before = (out / "table.csv").read_bytes()
    capsys.readouterr()
    # the same command again resumes from the finished chunks (no recomputation)
    assert main(["sweep", "tiny.toml", "--top", "3", "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert (out / "table.csv").read_bytes() == before
    assert "16 configurations" in text and "stop reasons:" in text and "best: config" in text
    assert "sorted by final_loss" in text and "... 13 more rows" in text
    assert "diabetes (442 x 10, regression), model linear, loss mse" in text


def test_show_prints_table(tiny_run, capsys):
    _, out = tiny_run
    capsys.readouterr()
    assert main(["show", str(out), "--top", "0"]) == 0
    text = capsys.readouterr().out
    table = pd.read_csv(out / "table.csv")
    assert "stop reasons:" in text and "learning_rate" in text
    assert len([ln for ln in text.splitlines() if ln.strip().split(" ")[0].isdigit()]) == 16
    assert main(["show", str(out), "--sort", "epochs_run", "--desc", "--top", "2"]) == 0
    assert "sorted by epochs_run (descending)" in capsys.readouterr().out
    assert len(table) == 16


def test_plot_redraws(tiny_run, tmp_path, capsys):
    _, out = tiny_run
    assert main(["plot", str(out), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(os.path.basename(p) for p in printed) == [
        "final_loss_vs_lr.png", "heatmap_lr_batch_size.png", "loss_curves.png"]
    for p in printed:
        _big_png(tmp_path / os.path.basename(p))


def test_cli_table_equals_direct_sweep(tiny_run):
    """The CLI's rows equal jaxgd.sweep called directly with the same settings (the
    full-batch rows: a configuration's result does not depend on the rest of the sweep)."""
    _, out = tiny_run
    ds = jaxgd.datasets.load("diabetes")
    s = jaxgd.data.fit_standardizer(ds.x)
    x = np.asarray(jaxgd.data.standardize(ds.x, s), np.float32)
    y = ((ds.y - ds.y.mean()) / ds.y.std()).astype(np.float32)
    model = jaxgd.models.linear(10)
    loss = jaxgd.losses.make_loss(model.apply, "mse")
    sw = jaxgd.sweep(loss, model.init(jax.random.key(0)), (x, y), optimizer="sgd", epochs=3,
                     grid={"batch_size": [None], "learning_rate": np.logspace(-2, 0.5, 4),
                           "seed": [0, 1]})
    got = pd.read_csv(out / "table.csv")
    assert len(got) == 16 and list(got.columns) == list(sw.table.columns)
    got = got[got["batch_size"].astype(str) == "full"].reset_index(drop=True)
    want = sw.table
    assert len(got) == len(want) == 8
    for c in want.columns:
        if c == "config":
            continue
        if want[c].dtype.kind in "fi":
            np.testing.assert_allclose(got[c].to_numpy(float), want[c].to_numpy(float),
                                       rtol=1e-5, atol=1e-7, err_msg=c)
        else:
            assert got[c].astype(str).tolist() == want[c].astype(str).tolist(), c
    hist = np.load(out / "history.npz")["loss"]
    full = pd.read_csv(out / "table.csv")["batch_size"].astype(str).to_numpy() == "full"
    np.testing.assert_allclose(hist[full], sw.history["loss"], rtol=1e-5)


def test_cv_sweep_plots(tmp_path, capsys):
    cfg = tmp_path / "cv.toml"
    cfg.write_text(CV)
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "cross-validation over 3 folds" in text and "final_val_loss_mean" in text
    _big_png(out / "cv_learning_rate.png")
    _big_png(out / "final_loss_vs_lr.png")
    assert not (out / "heatmap_lr_batch_size.png").exists()


def test_default_sweep_help_and_usage(capsys):
    for cmd in ([], ["sweep"], ["plot"], ["show"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
    assert "--coordinator" in capsys.readouterr().out
    capsys.readouterr()
    assert main([]) == 2  # a usage error: one line, not a usage block
    assert "required: COMMAND" in _one_error_line(capsys)
    assert main(["sweep", "--chunk-size", "0"]) == 2
    assert "--chunk-size: '0' must be > 0" in _one_error_line(capsys)
    assert main(["show"]) == 2
    assert "required: dir" in _one_error_line(capsys)


# ----------------------------------------------------------------------------- errors


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("jaxgd: error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("text, needle", [
    ("[train]\nepochs = 3\nbatch_size = [16,\n", "bad.toml:3: TOML syntax error"),
    ("[data]\ndataset = 'diabetes'\n[train]\nepoch = 5\n",
     "bad.toml:4: [train] key 'epoch' is unknown (did you mean 'epochs'?)"),
    ("[data]\ndataset = 'mnist'\n", "bad.toml:2: data.dataset = \"mnist\" is not a built-in"),
    ("[train]\nbatch_size = [16, 'half']\n", "bad.toml:2: train.batch_size = \"half\""),
    ("[track]\ntensorbord = 'tb'\n",
     "bad.toml:2: [track] key 'tensorbord' is unknown (did you mean 'tensorboard'?)"),
    ("[train]\nepochs = 2\n[track]\nmlflow = 3\n",
     "bad.toml:4: track.mlflow = 3 is invalid: use a folder"),
])
def test_bad_config_exit_2_one_line(tmp_path, capsys, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert needle in line and str(cfg) in line
    assert not (tmp_path / "o").exists()


def test_library_validation_errors_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nepochs = 2\n")  # no learning rate: jaxgd.sweep refuses
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "learning_rate" in _one_error_line(capsys)
    assert main(["show", str(tmp_path / "missing")]) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert main(["sweep", "--coordinator", "127.0.0.1:1234"]) == 2
    assert "go together" in _one_error_line(capsys)


def test_locked_folder_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    out = tmp_path / "o"
    out.mkdir()
    from test_resume import lock_holder

    holder = lock_holder(out / ".lock")
    try:
        assert main(["sweep", str(cfg), "--out", str(out), "--quiet"]) == 2
        assert "in use by another run" in _one_error_line(capsys)
    finally:
        holder.kill()
        holder.wait()


def test_show_bad_sort_column(tiny_run, capsys):
    _, out = tiny_run
    assert main(["show", str(out), "--sort", "final_los"]) == 2
    assert "did you mean 'final_loss'" in _one_error_line(capsys)


def test_subprocess_exit_status_and_single_line(tmp_path):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text("[data]\ndataset = 'diabetes'\n\n[train]\noptimizer = 'sgd'\nepoch = 5\n")
    p = subprocess.run([sys.executable, "-m", "jaxgd.cli", "sweep", str(cfg)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"jaxgd: error: {cfg}:6: [train] key 'epoch' is unknown (did you mean 'epochs'?)"]
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_genuine_bugs_keep_traceback(monkeypatch):
    import jaxgd.cli as cli

    def boom(args):
        raise KeyError("bug")

    monkeypatch.setattr(cli, "_cmd_show", boom)
    with pytest.raises(KeyError):
        main(["show", "x"])


def test_demo_and_bench_forward_argv(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("experiments.demo")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "experiments.demo", fake)
    assert main(["demo", "--out", "x", "--quick"]) == 0
    assert seen["argv"] == ["--out", "x", "--quick"]
    monkeypatch.setitem(sys.modules, "experiments.bench", None)  # import fails
    assert main(["bench", "--quick"]) == 2
    assert "experiments/bench.py" in _one_error_line(capsys)


# ----------------------------------------------------------------------------- plots


def _synthetic(axes: dict, n_epochs=6, diverge=(), nan_rows=()):
    import itertools

    configs = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    n = len(configs)
    rng = np.random.default_rng(0)
    loss = np.exp(-np.linspace(0, 1, n_epochs))[None] * (1 + rng.random((n, 1)))
    reason = ["max_epochs"] * n
    epochs_run = np.full(n, n_epochs)
    for i in diverge:
        loss[i, 2] = np.inf
        loss[i, 3:] = np.nan
        reason[i], epochs_run[i] = "diverged", 3
    for i in nan_rows:
        loss[i] = np.nan
    table = pd.DataFrame([{k: ("full" if v is None else v) for k, v in c.items()}
                          for c in configs])
    table.insert(0, "config", np.arange(n))
    table["init_loss"] = 2.0
    table["final_loss"] = [r[np.isfinite(r)][-1] if np.isfinite(r).any() else np.nan
                           for r in loss]
    table["epochs_run"] = epochs_run
    table["stop_reason"] = reason
    table["diverged"] = table["stop_reason"] == "diverged"
    return jaxgd.SweepResult(configs, table, {"loss": loss}, {"w": np.zeros((n, 1))})


def test_plots_single_axis_and_nans(tmp_path):
    sw = _synthetic({"learning_rate": [0.01, 0.1, 1.0]}, diverge=[2], nan_rows=[0])
    paths = plot_sweep(sw, tmp_path / "a")
    assert sorted(os.path.basename(p) for p in paths) == ["final_loss_vs_lr.png",
                                                          "loss_curves.png"]
    sw = _synthetic({"seed": [0, 1]})
    assert [os.path.basename(p) for p in plot_sweep(sw, tmp_path / "b")] == ["loss_curves.png"]
    sw = _synthetic({"learning_rate": [0.1, 1.0], "batch_size": [8, None]},
                    diverge=[0, 1, 2, 3])  # everything diverged
    paths = plot_sweep(sw, tmp_path / "c")
    assert len(paths) == 3
    for p in paths:
        _big_png(tmp_path / "c" / os.path.basename(p), 3000)
    sw = _synthetic({"learning_rate": [0.1]}, nan_rows=[0])  # nothing finite at all
    assert [os.path.basename(p) for p in plot_sweep(sw, tmp_path / "d")] == ["loss_curves.png"]
    with pytest.raises(ValueError, match="out=folder"):
        plot_sweep(sw)


# ----------------------------------------------------------------------------- review fixes


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cvrun")
    cfg = d / "cv.toml"
    cfg.write_text(CV)
    out = d / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 0
    return out


def _best_line(text):
    return next(line for line in text.splitlines() if line.startswith("best:"))


def test_show_cv_desc_keeps_best(cv_run, capsys):
    capsys.readouterr()
    assert main(["show", str(cv_run)]) == 0
    asc = capsys.readouterr().out
    assert main(["show", str(cv_run), "--desc"]) == 0
    desc = capsys.readouterr().out
    assert "sorted by final_val_loss_mean (descending):" in desc
    assert _best_line(desc) == _best_line(asc)
    sw = jaxgd.load(cv_run)
    m = sw.cv_table("final_val_loss")["final_val_loss_mean"]
    assert f"{m.min():.6g}" in _best_line(desc)


def test_show_cv_sort_by_cv_column(cv_run, capsys):
    capsys.readouterr()
    assert main(["show", str(cv_run), "--sort", "final_val_loss_std"]) == 0
    text = capsys.readouterr().out
    assert "cross-validation over 3 folds, sorted by final_val_loss_std:" in text
    assert main(["show", str(cv_run), "--sort", "final_los"]) == 2
    assert "final_val_loss_mean" in _one_error_line(capsys)


def test_show_sort_any_column_same_best(cv_run, tiny_run, capsys):
    """`show --sort KEY` (the README's `--sort final_loss --top 5`) names the best that
    `show` names: the sweep's best, whatever the display order."""
    def best(run, *args):
        capsys.readouterr()
        assert main(["show", str(run), *args]) == 0
        return _best_line(capsys.readouterr().out)

    plain = best(cv_run)
    # independent: the learning rate of the lowest mean validation loss over folds
    t = pd.read_csv(cv_run / "table.csv")
    means = t.groupby("learning_rate")["final_val_loss"].mean()
    assert plain.startswith(f"best: learning_rate={means.idxmin()}:")
    assert f"{means.min():.6g}" in plain
    for args in (["--sort", "final_loss", "--top", "5"], ["--sort", "fold"],
                 ["--sort", "final_loss", "--desc"], ["--sort", "final_val_loss_std"],
                 ["--sort", "epochs_run", "--top", "0"]):
        assert best(cv_run, *args) == plain, args
    run = tiny_run[1]
    plain = best(run)
    assert plain.startswith("best: config")
    for args in (["--sort", "best_loss"], ["--sort", "learning_rate", "--desc", "--top", "1"]):
        assert best(run, *args) == plain, args


def test_ctrl_c_one_line(tmp_path, monkeypatch, capsys):
    import jaxgd.config as config

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(config, "build", interrupted)
    assert main(["sweep", "--out", str(tmp_path / "o"), "--quiet"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"jaxgd: interrupted; finished chunks are kept in {tmp_path / 'o'} - run "
                   "the same command again to resume")


def test_demo_user_error_and_prog(monkeypatch, capsys):
    import jaxgd.cli as cli

    fake = types.ModuleType("experiments.demo")

    def fake_main(argv, prog=None):
        raise cli.UserError(f"bad demo argument, prog {prog}")

    fake.main = fake_main
    monkeypatch.setitem(sys.modules, "experiments.demo", fake)
    assert main(["demo", "--x"]) == 2
    assert _one_error_line(capsys) == "jaxgd: error: bad demo argument, prog jaxgd demo"


def test_demo_help_prog(capsys):
    from experiments.demo import main as demo_main

    with pytest.raises(SystemExit):
        demo_main(["--help"], prog="jaxgd demo")
    assert capsys.readouterr().out.startswith("usage: jaxgd demo [-h]")


def test_cv_figure_marks_capped_and_diverged_folds(cv_run):
    from matplotlib.collections import PolyCollection

    from jaxgd import plots

    fig = plots._cv(jaxgd.load(cv_run), False)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "diverged: 3/3 folds" in labels  # learning rate 3.0 diverges on every fold
    assert "> 10x initial loss (clipped)" in labels
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert bands and all(p.vertices[:, 1].min() > 0 for c in bands for p in c.get_paths())


# ----------------------------------------------------------------------------- named code

NAMED_SETS = ["--set", "train.epochs=3", "--set", "sweep.learning_rate=[0.05, 0.2]"]


@pytest.fixture(scope="module")
def named_run(tmp_path_factory):
    """``jaxgd sweep cfg.toml --set ...`` of a config whose data, model and loss are the
    functions of usercode.py (test_config.USER_CODE) beside it."""
    from test_config import NAMED, USER_CODE

    d = tmp_path_factory.mktemp("named")
    (d / "usercode.py").write_text(USER_CODE)
    (d / "cfg.toml").write_text(NAMED)
    cwd = os.getcwd()
    os.chdir(d)
    try:
        assert main(["sweep", "cfg.toml", "--quiet", "--no-plots", "--out", "run",
                     *NAMED_SETS]) == 0
    finally:
        os.chdir(cwd)
    return d


def _import_file(path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_named_code_sweep_equals_python(named_run):
    """The CLI's run of named data/model/loss functions (with --set) equals jaxgd.sweep
    called from Python with the same functions, and a hand-written gradient-descent loop."""
    import functools

    m = _import_file(named_run / "usercode.py", "usercode_reference")
    x, y = m.data(n=40)
    init, apply = m.model(scale=0.5)
    loss = functools.partial(m.loss, apply=apply, power=1.5)

    def init_fixed(key, *, width):  # init_seed = 0: every configuration from key(0)
        return init(jax.random.key(0), width=width)

    grid = {"learning_rate": [0.05, 0.2], "width": [2, 4]}
    sw = jaxgd.sweep(loss, None, (x, y), init=init_fixed, optimizer="sgd", epochs=3,
                     batch_size=None, grid=grid)
    got = jaxgd.load(named_run / "run")
    assert list(got.table.columns) == list(sw.table.columns)
    for c in sw.table.columns:
        if sw.table[c].dtype.kind in "fi":
            np.testing.assert_allclose(got.table[c].to_numpy(float),  # (as CSV text)
                                       sw.table[c].to_numpy(float), rtol=1e-6, err_msg=c)
        else:
            assert got.table[c].astype(str).tolist() == sw.table[c].astype(str).tolist(), c
    np.testing.assert_array_equal(got.history["loss"], sw.history["loss"])
    # an independent reference: plain full-batch gradient descent, 3 steps
    for _, row in got.table.iterrows():
        p = init(jax.random.key(0), width=int(row["width"]))
        for _ in range(3):
            g = jax.grad(loss)(p, (x, y))
            p = jax.tree.map(lambda a, b: a - row["learning_rate"] * b, p, g)
        np.testing.assert_allclose(row["final_loss"], float(loss(p, (x, y))), rtol=2e-5)
    # the run folder names the functions and holds no code
    rec = (named_run / "run" / "config.toml").read_text()
    assert f'callable = "{named_run / "usercode.py"}:loss"' in rec and "def " not in rec
    assert "--set train.epochs=3 --set sweep.learning_rate=[0.05, 0.2]" in rec


def test_show_plot_load_of_named_code_import_nothing(named_run, capsys, tmp_path):
    """Only `jaxgd sweep` imports the code a config names: show, plot, load and
    read_config of the run folder (and of the config) never do."""
    from test_config import imports_of

    from jaxgd.config import read_config

    assert "jaxgd_config_usercode" in " ".join(imports_of(named_run))  # the sweep did
    (named_run / "imported.txt").unlink()
    for name in [n for n in sys.modules if n.startswith("jaxgd_config_usercode")]:
        del sys.modules[name]
    run = named_run / "run"
    assert main(["show", str(run)]) == 0
    assert main(["plot", str(run), "--out", str(tmp_path)]) == 0
    jaxgd.load(run)
    read_config(run / "config.toml")
    read_config(named_run / "cfg.toml", overrides=["model.kwargs.scale=2"])
    assert imports_of(named_run) == []
    assert not any(n.startswith("jaxgd_config_usercode") for n in sys.modules)


def test_named_code_resumes_and_fingerprint_covers_it(named_run, monkeypatch, capsys):
    """The same command resumes (so does the run folder's config.toml); after an edit of
    the named loss or model code, the run folder is refused as another sweep's (the
    fingerprint covers the functions)."""
    d = named_run
    monkeypatch.chdir(d)
    table = (d / "run" / "table.csv").read_bytes()
    args = ["sweep", "cfg.toml", "--quiet", "--no-plots", "--out", "run", *NAMED_SETS]
    assert main(args) == 0 and (d / "run" / "table.csv").read_bytes() == table
    assert main(["sweep", "run/config.toml", "--quiet", "--no-plots", "--out", "run"]) == 0
    code = (d / "usercode.py").read_text()
    try:
        for old, new in [("** power)", "** power * 1.0)"), ("jnp.tanh(", "jnp.sin(")]:
            (d / "usercode.py").write_text(code.replace(old, new))
            capsys.readouterr()
            assert main(args) == 2
            assert "holds the results of a different sweep" in _one_error_line(capsys)
    finally:
        (d / "usercode.py").write_text(code)
    assert main(args) == 0 and (d / "run" / "table.csv").read_bytes() == table


@pytest.mark.parametrize("sets, needle", [
    (["train.epochs=abc"], '--set train.epochs=abc: train.epochs = "abc" is invalid'),
    (["train.epoch=3"], "--set train.epoch=3: [train] key 'epoch' is unknown (did you mean "
                        "'epochs'?)"),
    (["sweep.widht=[2]"], "--set sweep.widht=[2]: [sweep] key 'widht' is unknown (did you "
                          "mean 'width'?)"),
    (["model.callable=no_such_module_xyz.sub:make"], "--set model.callable=no_such_module_"
     "xyz.sub:make: model.callable = \"no_such_module_xyz.sub:make\": no module named "
     "'no_such_module_xyz'"),
    (["model.callable=./usercode.py:modle"], "--set model.callable=./usercode.py:modle: "
     "model.callable = \"./usercode.py:modle\": usercode.py has no attribute 'modle' (did "
     "you mean 'model'?)"),
    (["loss.callable=./usercode.py:WIDTH"], "--set loss.callable=./usercode.py:WIDTH: "
     "loss.callable = \"./usercode.py:WIDTH\": usercode.py:WIDTH is a int, not a function"),
    (["data.callable=./usercode.py:bad_data", "data.kwargs={}"], "--set data.callable=./"
     "usercode.py:bad_data: data.callable = \"./usercode.py:bad_data\" must return (x, y) "
     "arrays, a ((x, y), (x_val, y_val)) pair or a jaxgd.datasets.Dataset; it returned a "
     "tuple of 3"),
    (["model.callable=./usercode.py:bad_model", "model.kwargs={}"], "--set model.callable=./"
     "usercode.py:bad_model: model.callable = \"./usercode.py:bad_model\" must return (init, "
     "apply)"),
    (["model.kwargs.widht=3"], "--set model.kwargs.widht=3: model.kwargs of model.callable = "
     "\"./usercode.py:model\": the function does not take these kwargs"),
    (["loss.callable=./usercode.py:vector_loss", "loss.kwargs={}"], "--set loss.callable=./"
     "usercode.py:vector_loss: loss.callable = \"./usercode.py:vector_loss\": configuration 0"),
])
def test_named_code_errors_exit_2_one_line(tmp_path, monkeypatch, capsys, sets, needle):
    from test_config import NAMED, USER_CODE

    (tmp_path / "usercode.py").write_text(USER_CODE)
    (tmp_path / "cfg.toml").write_text(NAMED)
    monkeypatch.chdir(tmp_path)
    args = [a for s in sets for a in ("--set", s)]
    assert main(["sweep", "cfg.toml", "--quiet", "--out", "o", *args]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("jaxgd: error: ") and needle in line, line
    assert not (tmp_path / "o").exists()
    # the same mistake written in the file is reported at its line
    if sets[0].startswith(("model.callable", "loss.callable", "data.callable")):
        key, _, value = sets[0].partition("=")
        table, name = key.split(".")
        text = NAMED.replace(f'[{table}]\n{name} = "./usercode.py:{table}"',
                             f'[{table}]\n{name} = "{value}"')
        (tmp_path / "cfg.toml").write_text(text)
        assert main(["sweep", "cfg.toml", "--quiet", "--out", "o", *args[2:]]) == 2
        line = _one_error_line(capsys)
        no = text.splitlines().index(f'{name} = "{value}"') + 1
        assert line.startswith(f"jaxgd: error: cfg.toml:{no}: {key} = "), line


# ----------------------------------------------------------------------------- tracking


def test_sweep_tracks_live_from_the_config_and_the_command_line(tmp_path, capsys):
    """``[track]`` and ``--track`` write every configuration live; ``--track`` replaces the
    file's entry of the same kind. The runs equal the export of the run folder."""
    from tests.test_trackers import read_mlflow, read_tensorboard

    cfg = tmp_path / "trk.toml"
    cfg.write_text(TINY.replace("seed = [0, 1]", "seed = [0]") +
                   f"[track]\ntensorboard = '{tmp_path / 'never'}'\n"
                   f"mlflow = '{tmp_path / 'ml'}'\n")
    out = tmp_path / "run"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet", "--no-plots",
                 "--track", f"tensorboard:{tmp_path / 'tb'}"]) == 0
    assert not (tmp_path / "never").exists()
    jaxgd.trackers.export(out, "tensorboard", tmp_path / "tb_export")
    got = read_tensorboard(tmp_path / "tb")
    assert got == read_tensorboard(tmp_path / "tb_export")
    sw = jaxgd.load(out)
    assert len(got) == len(sw) == 8
    for i in range(len(sw)):
        (name,) = [n for n in got if n.startswith(f"config-{i:04d}_")]
        ran = ~np.isnan(sw.history["loss"][i])
        assert [s for s, _ in got[name]["series"]["loss"]] == \
            [int(e) for e in sw.history["epoch"][i][ran]]
        np.testing.assert_array_equal(np.float32([v for _, v in got[name]["series"]["loss"]]),
                                      np.float32(sw.history["loss"][i][ran]))
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    ml = read_mlflow(tmp_path / "ml", "run")
    assert sorted(ml) == sorted([*got, "run"])


def test_bad_track_flag_exit_2(capsys):
    assert main(["sweep", "--track", "tb:x"]) == 2
    err = capsys.readouterr().err
    assert "argument --track: --track='tb:x' must be \"KIND:DIR\"" in err
