"""Trackers written from a finished sweep, read back with each tracker's own reader
(TensorBoard's EventAccumulator, MLflow's client on the local store, W&B's record
protobufs from the offline run file): every configuration, every history column, the
hyper-parameters and the summaries, compared with the sweep's table and history (the
step index of ``step_loss`` from the batch plan, computed here)."""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd
from jaxgd.cli import main

HERE = Path(__file__).resolve().parent
N = 40
BATCH = [8, None]


def problem():
    """(x, y, loss): N training and 10 validation samples of a noiseless linear model."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N + 10, 3)).astype(np.float32)
    y = x @ np.array([1.0, -1.0, 2.0], np.float32)

    def loss(p, b):
        xb, yb = b
        return jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)

    return x, y, loss


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A saved sweep with validation data, per-step losses, evaluations every 2 epochs
    and one diverging configuration."""
    x, y, loss = problem()

    sw = jaxgd.sweep(loss, {"w": jnp.zeros(3), "b": jnp.zeros(())}, (x[:N], y[:N]),
                     val_data=(x[N:], y[N:]), optimizer=optax.sgd,
                     grid={"learning_rate": [0.01, 0.1, 5.0], "batch_size": BATCH},
                     epochs=6, eval_every=2, record_steps=True)
    assert (sw.table["stop_reason"] == "diverged").any()
    path = tmp_path_factory.mktemp("trk") / "lrbs"
    sw.save(path)
    return sw, path


def expected_name(sw, i: int) -> str:
    lr, bs = sw.table["learning_rate"].iloc[i], sw.table["batch_size"].iloc[i]
    return f"config-{int(sw.table['config'].iloc[i]):04d}_learning_rate={lr}_batch_size={bs}"


def expected_hparams(sw, i: int) -> dict:
    bs = sw.configs[i]["batch_size"]
    return {"learning_rate": float(sw.configs[i]["learning_rate"]),
            "batch_size": "full" if bs is None else int(bs)}


def eval_series(sw, i: int, col: str) -> tuple[list[int], np.ndarray]:
    """(epochs, values) of one configuration's column at the evaluations that ran."""
    ep, v = sw.history["epoch"][i], sw.history[col][i]
    keep = ~np.isnan(ep) & ~np.isnan(v)
    return [int(e) for e in ep[keep]], v[keep]


def step_series(sw, i: int) -> tuple[list[int], np.ndarray]:
    """step_loss at global step epoch * ceil(N / B) + k (the batch plan)."""
    bs = sw.configs[i]["batch_size"]
    per_epoch = 1 if bs is None else math.ceil(N / bs)
    steps, vals = [], []
    sl = sw.history["step_loss"][i]
    for e in range(sl.shape[0]):
        for k in range(per_epoch):
            if not np.isnan(sl[e, k]):
                steps.append(e * per_epoch + k)
                vals.append(sl[e, k])
    return steps, np.asarray(vals)


def columns(sw) -> list[str]:
    return [k for k, v in sw.history.items() if v.ndim == 2 and k != "epoch"]


def summary_numbers(sw, i: int) -> dict[str, float]:
    skip = {"config", "learning_rate", "batch_size", "stop_reason"}
    out = {}
    for c in sw.table.columns:
        if c not in skip:
            v = float(sw.table[c].iloc[i])
            if not math.isnan(v):
                out[c] = v
    return out


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_every_configuration_column_and_hparam(run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    sw, path = run
    out = tmp_path / "tb"
    rc = main(["export", str(path), "--to", "tensorboard", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        expected_name(sw, i) for i in range(len(sw)))
    assert {"loss", "val_loss", "grad_norm", "lr", "batch_loss"} <= set(columns(sw))
    for i in range(len(sw)):
        ea = EventAccumulator(str(out / expected_name(sw, i)),
                              size_guidance={"scalars": 0, "tensors": 0})
        ea.Reload()
        for col in columns(sw):
            epochs, vals = eval_series(sw, i, col)
            got = ea.Scalars(col)
            assert [e.step for e in got] == epochs, (i, col)
            np.testing.assert_array_equal(np.float32([e.value for e in got]),
                                          vals.astype(np.float32))
        steps, vals = step_series(sw, i)
        got = ea.Scalars("step_loss")
        assert [e.step for e in got] == steps
        np.testing.assert_array_equal(np.float32([e.value for e in got]), vals)
        raw = ea.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]
        info = metadata.parse_session_start_info_plugin_data(raw)
        hp = {k: (v.string_value if v.HasField("string_value") else v.number_value)
              for k, v in info.hparams.items()}
        assert hp == expected_hparams(sw, i)
        for k, v in summary_numbers(sw, i).items():
            (s,) = ea.Scalars(f"summary/{k}")
            assert np.float32(s.value) == np.float32(v), k
        (t,) = ea.Tensors("summary/stop_reason/text_summary")
        assert tensor_util.make_ndarray(t.tensor_proto).item().decode() == \
            sw.table["stop_reason"].iloc[i]


def test_tensorboard_refuses_to_mix_two_exports(run, tmp_path):
    sw, _ = run
    jaxgd.trackers.export(sw, "tensorboard", tmp_path / "tb")
    with pytest.raises(ValueError, match="already holds a run 'config-0000"):
        jaxgd.trackers.export(sw, "tensorboard", tmp_path / "tb")


def test_fit_result_is_one_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x = np.arange(8, dtype=np.float32)[:, None]
    res = jaxgd.fit(lambda p, b: jnp.mean((b[0] @ p - b[1]) ** 2), jnp.zeros(1),
                    (x, 2 * x[:, 0]), optimizer=optax.sgd, hparams={"learning_rate": 0.01},
                    epochs=3)
    assert jaxgd.trackers.export(res, "tensorboard", tmp_path) == ["fit"]
    ea = EventAccumulator(str(tmp_path / "fit"), size_guidance={"scalars": 0})
    ea.Reload()
    got = ea.Scalars("loss")
    assert [e.step for e in got] == [0, 1, 2]
    np.testing.assert_array_equal(np.float32([e.value for e in got]), res.history["loss"])
    assert ea.Scalars("summary/steps_run")[0].value == res.steps_run == 3


# ----------------------------------------------------------------------------- MLflow


def test_mlflow_parent_and_one_child_run_per_configuration(run, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    sw, path = run
    store = tmp_path / "mlruns"
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert jaxgd.trackers.export(path, "mlflow", store) == [
        expected_name(sw, i) for i in range(len(sw))]
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # put back as it was
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reading a folder
    client = MlflowClient(tracking_uri=store.absolute().as_uri())
    saved = jaxgd.load(path)
    exp = client.get_experiment_by_name("lrbs")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    parent = runs.pop("lrbs")
    assert sorted(runs) == sorted(expected_name(sw, i) for i in range(len(sw)))
    for i in range(len(sw)):
        r = runs[expected_name(sw, i)]
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.info.status == "FINISHED"
        assert r.data.params == {k: str(v) for k, v in expected_hparams(sw, i).items()}
        assert r.data.tags["stop_reason"] == sw.table["stop_reason"].iloc[i]
        for col in columns(sw):
            epochs, vals = eval_series(sw, i, col)
            got = sorted(client.get_metric_history(r.info.run_id, col), key=lambda m: m.step)
            assert [m.step for m in got] == epochs, (i, col)
            np.testing.assert_array_equal([m.value for m in got], vals.astype(np.float64))
        steps, vals = step_series(sw, i)
        got = sorted(client.get_metric_history(r.info.run_id, "step_loss"),
                     key=lambda m: m.step)
        assert [m.step for m in got] == steps
        np.testing.assert_array_equal([m.value for m in got], vals.astype(np.float64))
        for k, v in summary_numbers(saved, i).items():  # the folder's table, as written
            assert r.data.metrics[f"summary/{k}"] == v, k
    with pytest.raises(ValueError, match="already holds an MLflow experiment 'lrbs'"):
        jaxgd.trackers.export(path, "mlflow", store)


# ----------------------------------------------------------------------------- W&B


def wandb_records(path: str):
    """The protobuf records of an offline ``.wandb`` file (W&B's LevelDB-style log: a
    7-byte header, 32 KiB blocks of [crc32c, length, type] chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = Path(path).read_bytes()
    assert raw[:4] == b":W&B"
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if n == 0 and kind == 0:  # block padding
            pos += left
            continue
        buf += raw[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            r = pb.Record()
            r.ParseFromString(buf)
            buf = b""
            yield r


def _items(items) -> dict:
    return {".".join(it.nested_key) or it.key: json.loads(it.value_json) for it in items}


def read_wandb_run(path: str) -> dict:
    out = {"history": [], "config": {}, "summary": {}}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["group"] = r.run.display_name, r.run.run_group
        elif kind == "config":
            out["config"].update({k: v for k, v in _items(r.config.update).items()
                                  if not k.startswith("_")})
        elif kind == "history":
            out["history"].append(_items(r.history.item))
        elif kind == "summary":
            out["summary"].update(_items(r.summary.update))
    return out


def test_wandb_offline_runs_in_one_group(run, tmp_path):
    sw, path = run
    rc = main(["export", str(path), "--to", "wandb", str(tmp_path), "--name", "grp"])
    assert rc == 0
    files = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    saved = jaxgd.load(path)
    runs = {r["name"]: r for r in map(read_wandb_run, files)}
    assert sorted(runs) == sorted(expected_name(sw, i) for i in range(len(sw)))
    for i in range(len(sw)):
        r = runs[expected_name(sw, i)]
        assert r["group"] == "grp"
        assert r["config"] == expected_hparams(sw, i)
        for col in columns(sw):
            epochs, vals = eval_series(sw, i, col)
            got = [(h["epoch"], h[col]) for h in r["history"] if col in h]
            assert [e for e, _ in got] == epochs, (i, col)
            np.testing.assert_array_equal([v for _, v in got], vals.astype(np.float64))
        steps, vals = step_series(sw, i)
        got = [(h["step"], h["step_loss"]) for h in r["history"] if "step_loss" in h]
        assert [s for s, _ in got] == steps
        np.testing.assert_array_equal([v for _, v in got], vals.astype(np.float64))
        assert r["summary"]["stop_reason"] == sw.table["stop_reason"].iloc[i]
        for k, v in summary_numbers(saved, i).items():  # the folder's table, as written
            assert r["summary"][k] == v, k


# ----------------------------------------------------------------------------- CLI


def without(modules: str, args: list[str], cwd: Path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "hide_modules"), str(HERE.parent)])
    env["HIDE_MODULES"] = modules
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("kind,module,pip", [("tensorboard", "tensorboardX", "tensorboardX"),
                                              ("mlflow", "mlflow", "mlflow-skinny"),
                                              ("wandb", "wandb", "wandb"),
                                              ("orbax", "orbax", "orbax-checkpoint")])
def test_missing_extra_is_one_line(run, tmp_path, kind, module, pip):
    _, path = run
    r = without(module, ["-m", "jaxgd.cli", "export", str(path), "--to", kind,
                         str(tmp_path / "o")], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        f"jaxgd: error: the Python package {module!r} is not installed; install it with: "
        f"pip install {pip}" + (' (or the track extra: pip install -e ".[track]")'
                                if kind != "orbax" else "")]
    assert not (tmp_path / "o").exists()


def test_missing_extra_from_python_names_the_package(run, tmp_path):
    _, path = run
    r = without("tensorboardX", ["-c", "import jaxgd\n"
                                 "try:\n"
                                 f"    jaxgd.trackers.export({str(path)!r}, 'tensorboard', 'o')\n"
                                 "except ModuleNotFoundError as e:\n"
                                 "    print(e)\n"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == ("writing TensorBoard event files needs the Python package "
                                "'tensorboardX', which is not installed; install it with: "
                                "pip install tensorboardX")


def test_cli_orbax_row_and_errors(run, tmp_path, capsys):
    sw, path = run
    assert main(["export", str(path), "--to", "orbax", str(tmp_path / "c"), "--row", "3"]) == 0
    got = jaxgd.from_orbax(tmp_path / "c")
    want = sw.params_of(3)
    assert set(got) == {"w", "b"}
    for k in want:
        assert np.asarray(got[k]).tobytes() == np.asarray(want[k]).tobytes()
    capsys.readouterr()
    assert main(["export", str(path), "--to", "orbax", str(tmp_path / "c")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(path), "--to", "orbax", str(tmp_path / "c"), "--overwrite"]) == 0
    best = sw.best().index
    assert np.asarray(jaxgd.from_orbax(tmp_path / "c")["w"]).tobytes() == \
        np.asarray(sw.params_of(best)["w"]).tobytes()
    capsys.readouterr()
    assert main(["export", str(path), "--to", "orbax", str(tmp_path / "d"), "--row", "6"]) == 2
    assert capsys.readouterr().err.strip() == \
        "jaxgd: error: --row 6 is not a row position in 0..5"
    assert main(["export", str(path), "--to", "tensorboard", str(tmp_path / "t"),
                 "--row", "1"]) == 2
    assert "--row applies to --to orbax only" in capsys.readouterr().err
    assert main(["export", str(path), "--to", "csv", str(tmp_path / "t")]) == 2
    assert "--to 'csv' must be one of orbax, tensorboard, mlflow, wandb" in \
        capsys.readouterr().err


# ----------------------------------------------------------------------------- live


LIVE = ("tensorboard", "mlflow", "wandb")


def read_tensorboard(root: Path) -> dict:
    """Every run of a TensorBoard folder, as TensorBoard's readers give it back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    out = {}
    for d in sorted(Path(root).iterdir()):
        ea = EventAccumulator(str(d), size_guidance={"scalars": 0, "tensors": 0})
        ea.Reload()
        content = ea.PluginTagToContent("hparams")
        info = metadata.parse_session_start_info_plugin_data(
            content[metadata.SESSION_START_INFO_TAG])
        exp = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        out[d.name] = {
            "series": {t: [(e.step, e.value) for e in ea.Scalars(t)]
                       for t in ea.Tags()["scalars"]},
            "hparams": {k: (v.string_value if v.HasField("string_value") else v.number_value)
                        for k, v in info.hparams.items()},
            "metrics": [m.name.tag for m in exp.metric_infos],
            "text": {t: tensor_util.make_ndarray(x.tensor_proto).item().decode()
                     for t in ea.Tags()["tensors"] if t.endswith("/text_summary")
                     for x in ea.Tensors(t)}}
    return out


def read_mlflow(store: Path, experiment: str) -> dict:
    """Every run of an MLflow experiment in a file store, through MlflowClient."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.absolute().as_uri())
    exp = client.get_experiment_by_name(experiment)
    out = {}
    for r in client.search_runs([exp.experiment_id]):
        hist = {k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k))
                for k in r.data.metrics}
        parent = r.data.tags.get("mlflow.parentRunId")
        out[r.info.run_name] = {
            "params": r.data.params, "series": hist, "status": r.info.status,
            "parent": None if parent is None else client.get_run(parent).info.run_name,
            "tags": {k: v for k, v in r.data.tags.items() if not k.startswith("mlflow.")}}
    return out


def read_wandb(root: Path) -> dict:
    """Every offline W&B run of a folder: config, summary and each column's series."""
    out = {}
    for f in glob.glob(str(root / "wandb" / "offline-run-*" / "run-*.wandb")):
        r = read_wandb_run(f)
        series: dict[str, list] = {}
        for h in r["history"]:
            axis = "step" if "step" in h else "epoch"
            for k, v in h.items():
                if k not in ("epoch", "step") and not k.startswith("_"):
                    series.setdefault(k, []).append((h[axis], v))
        summary = {k: v for k, v in r["summary"].items() if not k.startswith("_")}
        out[r["name"]] = {"group": r["group"], "config": r["config"], "summary": summary,
                          "series": series}
    return out


def read_all(kind: str, dest: Path, group: str) -> dict:
    return {"tensorboard": lambda: read_tensorboard(dest),
            "mlflow": lambda: read_mlflow(dest, group),
            "wandb": lambda: read_wandb(dest)}[kind]()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The sweep of ``run`` with ``out=`` and ``track=`` every tracker (written live)."""
    x, y, loss = problem()

    root = tmp_path_factory.mktemp("live")
    kw = dict(val_data=(x[N:], y[N:]), optimizer=optax.sgd,
              grid={"learning_rate": [0.01, 0.1, 5.0], "batch_size": BATCH}, epochs=6,
              eval_every=2, record_steps=True, out=root / "lrbs", chunk_size=2)
    args = (loss, {"w": jnp.zeros(3), "b": jnp.zeros(())}, (x[:N], y[:N]))
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    sw = jaxgd.sweep(*args, **kw, track=[f"{k}:{root / ('live_' + k)}" for k in LIVE])
    return sw, root, args, kw


@pytest.mark.parametrize("kind", LIVE)
def test_live_tracking_equals_the_export_of_the_run_folder(live, kind, tmp_path):
    """What a sweep writes live (block by block) is what ``export`` writes from its saved
    run folder afterwards, read back with the tracker's own reader; and it holds every
    configuration, history column and hyper-parameter of the sweep."""
    sw, root, _, _ = live
    jaxgd.trackers.export(root / "lrbs", kind, tmp_path / "exp")
    got = read_all(kind, root / f"live_{kind}", "lrbs")
    assert got == read_all(kind, tmp_path / "exp", "lrbs")
    names = [expected_name(sw, i) for i in range(len(sw))]
    assert sorted(n for n in got if n != "lrbs") == sorted(names)
    for i, name in enumerate(names):
        series = got[name]["series"]
        for col in columns(sw):
            epochs, vals = eval_series(sw, i, col)
            assert [s for s, _ in series[col]] == epochs, (i, col)
            np.testing.assert_array_equal(np.float32([v for _, v in series[col]]),
                                          vals.astype(np.float32))
        steps, vals = step_series(sw, i)
        assert [s for s, _ in series["step_loss"]] == steps
        hp = {"tensorboard": lambda: got[name]["hparams"],
              "mlflow": lambda: {k: v for k, v in got[name]["params"].items()},
              "wandb": lambda: got[name]["config"]}[kind]()
        want = expected_hparams(sw, i)
        assert hp == ({k: str(v) for k, v in want.items()} if kind == "mlflow" else want)


def test_a_resumed_sweep_tracks_the_chunks_it_reads_back(live, tmp_path):
    """Run again on its finished folder, the sweep runs nothing and tracks the chunks it
    reads back: the same runs as the export."""
    sw, root, args, kw = live
    again = jaxgd.sweep(*args, **kw, track=f"tensorboard:{tmp_path / 'tb'}")
    assert again.table.equals(sw.table)
    assert read_tensorboard(tmp_path / "tb") == read_tensorboard(root / "live_tensorboard")


def test_a_folder_holding_the_runs_is_refused_before_anything_runs(live, monkeypatch):
    _, root, args, kw = live
    monkeypatch.setattr(jaxgd.engine, "program_for", lambda *a, **k: 1 / 0)
    with pytest.raises(ValueError, match="already holds a run 'config-0000_"):
        jaxgd.sweep(*args, **{**kw, "out": None},
                    track=[f"wandb:{root / 'never'}", f"tensorboard:{root / 'live_tensorboard'}"])
    assert not (root / "never").exists()


SEARCHES = {"halving": lambda: jaxgd.search.Halving(eta=2, min_epochs=1),
            "pbt": lambda: jaxgd.search.PBT(interval=1, quantile=0.25, seed=1),
            "median": lambda: jaxgd.search.Median(warmup=1, interval=1)}


@pytest.mark.parametrize("method", list(SEARCHES))
def test_an_adaptive_search_tracks_every_configuration(method, tmp_path):
    """An adaptive search writes each call's rows live; its runs equal the export of its
    result (pruned configurations included) and its history."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 2)).astype(np.float32)
    y = x @ np.array([1.0, -2.0], np.float32)
    sw = jaxgd.sweep(lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2), {"w": jnp.zeros(2)},
                     (x, y), grid={"learning_rate": [0.001, 0.01, 0.05, 0.1]}, batch_size=8,
                     epochs=4, search=SEARCHES[method](),
                     track=f"tensorboard:{tmp_path / 'live'}")
    if method == "halving":
        assert (sw.table["stop_reason"] == "pruned").sum() == 3
    jaxgd.trackers.export(sw, "tensorboard", tmp_path / "exp")
    got = read_tensorboard(tmp_path / "live")
    assert got == read_tensorboard(tmp_path / "exp")
    for i in range(len(sw)):
        name = f"config-{i:04d}_learning_rate={sw.table['learning_rate'].iloc[i]}"
        epochs, vals = eval_series(sw, i, "loss")
        assert [s for s, _ in got[name]["series"]["loss"]] == epochs
        np.testing.assert_array_equal(np.float32([v for _, v in got[name]["series"]["loss"]]),
                                      vals.astype(np.float32))
        assert got[name]["hparams"] == {"learning_rate": sw.configs[i]["learning_rate"]}
        assert got[name]["text"]["summary/stop_reason/text_summary"] == \
            sw.table["stop_reason"].iloc[i]


def test_fit_tracks_one_run(tmp_path):
    x = np.arange(8, dtype=np.float32)[:, None]
    res = jaxgd.fit(lambda p, b: jnp.mean((b[0] @ p - b[1]) ** 2), jnp.zeros(1),
                    (x, 2 * x[:, 0]), optimizer=optax.sgd, hparams={"learning_rate": 0.01},
                    epochs=3, batch_size=4, record_steps=True,
                    track=f"wandb:{tmp_path / 'live'}")
    jaxgd.trackers.export(res, "wandb", tmp_path / "exp")
    got = read_wandb(tmp_path / "live")
    assert got == read_wandb(tmp_path / "exp")
    (run,) = got.values()
    assert run["group"] == "jaxgd-fit"
    assert run["series"]["loss"] == [(e, float(v)) for e, v in enumerate(res.history["loss"])]
    assert [s for s, _ in run["series"]["step_loss"]] == list(range(6))
    assert run["summary"]["steps_run"] == 6 and run["summary"]["stop_reason"] == "max_epochs"


@pytest.mark.parametrize("track, err, match", [
    ("tensorbord:x", ValueError, r"track='tensorbord:x' must be \"KIND:DIR\""),
    ("tensorboard:", ValueError, r"track='tensorboard:' must be"),
    (["wandb:x", 3], TypeError, r"track=3 must be a \"KIND:DIR\" string"),
    ([], ValueError, r"track=\[\] must name at least one tracker")])
def test_bad_track_is_refused_before_anything_runs(track, err, match, monkeypatch):
    monkeypatch.setattr(jaxgd.engine, "program_for", lambda *a, **k: 1 / 0)
    x = np.ones((4, 1), np.float32)
    with pytest.raises(err, match=match):
        jaxgd.fit(lambda p, b: jnp.mean(b[0] * p), jnp.zeros(()), (x,), track=track)
    with pytest.raises(err, match=match):
        jaxgd.sweep(lambda p, b: jnp.mean(b[0] * p), jnp.zeros(()), (x,), track=track,
                    grid={"learning_rate": [0.1]})


def test_missing_tracker_package_before_compiling(tmp_path):
    code = ("import jax, numpy as np, jax.numpy as jnp, jaxgd\n"
            "x, p0, n = np.ones((4, 1), np.float32), jnp.zeros(()), []\n"
            "jax.monitoring.register_event_duration_secs_listener(\n"
            "    lambda e, s, **k: n.append(e) if e.startswith('/jax/core/compile/') else None)\n"
            "try:\n"
            "    jaxgd.sweep(lambda p, b: jnp.mean(b[0] * p), p0, (x,),\n"
            "                grid={'learning_rate': [0.1]}, track='mlflow:o')\n"
            "except ModuleNotFoundError as e:\n"
            "    print(e, len(n))\n")
    r = without("mlflow", ["-c", code], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == ("writing MLflow runs needs the Python package 'mlflow', which "
                                "is not installed; install it with: pip install mlflow-skinny 0")
    assert not (tmp_path / "o").exists()


def test_a_resumed_search_tracks_the_rows_it_restored(tmp_path, monkeypatch):
    """A halving search interrupted after its first rung and resumed with ``track=``
    writes the restored rows first (in epoch order, as TensorBoard needs them), then the
    rest: the runs equal the export of the finished folder."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 2)).astype(np.float32)
    y = x @ np.array([1.0, -2.0], np.float32)
    mod = jaxgd.population.Population
    real_check = mod.checkpoint

    class Stop(Exception):
        pass

    def dying(pop, where):
        real_check(pop, where)
        raise Stop

    kw = dict(grid={"learning_rate": [0.001, 0.01, 0.05, 0.1]}, batch_size=8, epochs=4,
              search=jaxgd.search.Halving(eta=2, min_epochs=1), out=tmp_path / "run")
    args = (lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2), {"w": jnp.zeros(2)}, (x, y))
    monkeypatch.setattr(mod, "checkpoint", dying)
    with pytest.raises(Stop):
        jaxgd.sweep(*args, **kw)
    monkeypatch.setattr(mod, "checkpoint", real_check)
    sw = jaxgd.sweep(*args, **kw, track=f"tensorboard:{tmp_path / 'live'}")
    jaxgd.trackers.export(tmp_path / "run", "tensorboard", tmp_path / "exp")
    got = read_tensorboard(tmp_path / "live")
    assert got == read_tensorboard(tmp_path / "exp")
    for i in range(len(sw)):
        (name,) = [n for n in got if n.startswith(f"config-{i:04d}_")]
        epochs, vals = eval_series(sw, i, "loss")
        assert epochs[0] == 0 and [s for s, _ in got[name]["series"]["loss"]] == epochs
        np.testing.assert_array_equal(np.float32([v for _, v in got[name]["series"]["loss"]]),
                                      vals.astype(np.float32))


def test_only_process_zero_writes(tmp_path, monkeypatch):
    """In a multi-process run the other processes write nothing (process 0 writes)."""
    import jax

    x = np.arange(8, dtype=np.float32)[:, None]
    args = (lambda p, b: jnp.mean((b[0] @ p - b[1]) ** 2), jnp.zeros(1), (x, 2 * x[:, 0]))
    kw = dict(optimizer=optax.sgd, hparams={"learning_rate": 0.01}, epochs=2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    jaxgd.fit(*args, **kw, track=f"tensorboard:{tmp_path / 'p1'}")
    assert not (tmp_path / "p1").exists()
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    jaxgd.fit(*args, **kw, track=f"tensorboard:{tmp_path / 'p0'}")
    assert [p.name for p in (tmp_path / "p0").iterdir()] == ["fit"]


def test_sweep_without_track_names_no_runs(monkeypatch):
    """The runs' names and hyper-parameters (a table of every configuration) are built
    only for a live tracker: a sweep without ``track`` never asks for them, and gives the
    same results."""
    x, y, loss = problem()
    kw = dict(optimizer="sgd", grid={"learning_rate": [0.01, 0.1]}, batch_size=8, epochs=2)
    want = jaxgd.sweep(loss, {"w": jnp.zeros(3), "b": jnp.zeros(())}, (x[:N], y[:N]), **kw)

    def refuse(*a, **k):
        raise AssertionError("planned_runs called without a tracker")

    monkeypatch.setattr(jaxgd.trackers, "planned_runs", refuse)
    got = jaxgd.sweep(loss, {"w": jnp.zeros(3), "b": jnp.zeros(())}, (x[:N], y[:N]), **kw)
    np.testing.assert_array_equal(got.history["loss"], want.history["loss"])
