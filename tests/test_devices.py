"""A sweep on 4 forced host devices equals the single-device sweep; one whose loss carries
model state (BatchNorm-like) on 8 devices equals it too, and a hand-written optax loop.

Forcing devices must happen before JAX starts, and slows ordinary code, so it runs in a
separate process (tests/sweep_worker.py); the single-device reference runs here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).parent
WORKER = HERE / "sweep_worker.py"
TIMEOUT = 240


def load_worker():
    spec = importlib.util.spec_from_file_location("sweep_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_worker(args, timeout=TIMEOUT, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    p = subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env)
    return finish(p, timeout)


def finish(p: subprocess.Popen, timeout=TIMEOUT) -> str:
    """Wait for a worker (killed by handle past ``timeout``); assert it exited 0."""
    try:
        out, _ = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out[-4000:]
    return out


def compare_tables(got: pd.DataFrame, ref: pd.DataFrame, rtol=1e-4):
    assert list(got["config"]) == list(ref["config"])
    for col in ref.columns:
        a, b = got[col].to_numpy(), ref[col].to_numpy()
        if ref[col].dtype.kind == "f":
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=rtol, atol=1e-6,
                                       err_msg=col)
        else:
            assert [str(v) for v in a] == [str(v) for v in b], col


# a tqdm epoch bar as the sweep draws it: "group 1 chunk 1:  67%|...| 2/3 [..., active=9]"
BAR = re.compile(r"group (\d+) chunk (\d+):[^\n]*?(\d+)/(\d+) \[[^\]\n]*active=(\d+)\]")


def progress_ticks(log: str) -> list[tuple[tuple[int, int], ...]]:
    """The (epoch, active count) ticks of every epoch bar in a log, one tuple per bar."""
    bars: dict[tuple[str, str], dict[int, int]] = {}
    for g, c, done, _, active in BAR.findall(log.replace("\r", "\n")):
        bars.setdefault((g, c), {})[int(done)] = int(active)
    return sorted(tuple(sorted(t.items())) for t in bars.values())


def expected_ticks(table: pd.DataFrame, by: str, epochs: int) -> list[tuple[tuple[int, int], ...]]:
    """Per group (one chunk each): after epoch e < epochs the configurations that ran past
    e (a stopped one does not run again); none after the last epoch."""
    out = []
    for _, t in table.groupby(by.split(","), dropna=False):
        runs = t["epochs_run"].to_numpy()
        out.append(tuple((e, int((runs > e).sum()) if e < epochs else 0)
                         for e in range(1, epochs + 1)))
    return sorted(out)


def test_four_forced_devices_equal_one(tmp_path):
    report = tmp_path / "report.json"
    # XLA_FLAGS, as a user would set it (the worker's --devices is the config-API route)
    log = run_worker(["--report", str(report), "--progress", "all"],
                     env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    info = json.loads(report.read_text())
    assert info["device_count"] == 4 and info["process_count"] == 1
    assert info["default_mesh_devices"] == 4
    # every program call ran over the 4-device mesh with the configuration axis sharded;
    # blocks of 3 seeds x 3 learning rates were padded from width 3 to 4
    assert len(info["shardings"]) == 2  # one call per group (batch size)
    for s in info["shardings"]:
        assert s["devices"] == 4 and s["addressable_shards"] == 4
        assert "config" in s["spec"] and s["shape"] == [3, 4]

    ref = load_worker().run_sweep()  # single device, in this process
    assert len(ref) == 18  # not a multiple of 4
    got = pd.DataFrame(info["table"])
    compare_tables(got, ref.table)
    np.testing.assert_allclose(np.asarray(info["loss"]), ref.history["loss"], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(info["params_w"]), ref.params["w"], rtol=1e-4,
                               atol=1e-6)
    # the progress bars counted the 9 real configurations of each group, not the 12 lanes
    # of the padded sharded block
    ticks = progress_ticks(log)
    assert ticks == expected_ticks(ref.table, "batch_size", 4)
    assert ticks[0][0] == (1, 9)


def test_search_on_four_forced_devices_equals_one(tmp_path):
    """Successive halving across two groups on a 4-device mesh: the same rankings, pruned
    rows, histories and parameters as on one device (survivors' states gathered from the
    sharded program and put back, compacted, on the mesh)."""
    report = tmp_path / "report.json"
    run_worker(["--report", str(report), "--search", "halving"],
               env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    info = json.loads(report.read_text())
    assert info["device_count"] == 4
    assert {s["devices"] for s in info["shardings"]} == {4}
    w = load_worker()
    ref = w.run_sweep(search=w.search_of("halving"))
    got = pd.DataFrame(info["table"])
    assert list(got["stop_reason"]) == list(ref.table["stop_reason"])
    assert (ref.table["stop_reason"] == "pruned").sum() == 18 - 18 // 4
    compare_tables(got, ref.table)
    np.testing.assert_allclose(np.asarray(info["loss"], float), ref.history["loss"],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(info["params_w"]), ref.params["w"], rtol=1e-4,
                               atol=1e-6)


def hand_bn_sgd(worker, lr, epochs):
    """``worker.bn_mse`` trained full batch by a hand-written optax SGD loop: (params,
    state, eval-mode loss after each epoch)."""
    import jax
    import optax

    _, p, (x, y) = worker.problem()
    s = worker.state0()
    opt = optax.sgd(lr)
    ost = opt.init(p)
    losses = []
    for _ in range(epochs):
        g, s_new = jax.grad(lambda q, s=s: worker.bn_mse(q, (x, y), state=s, train=True),
                            has_aux=True)(p)
        u, ost = opt.update(g, ost, p)
        p, s = optax.apply_updates(p, u), s_new
        losses.append(float(worker.bn_mse(p, (x, y), state=s, train=False)[0]))
    return p, s, np.asarray(losses)


def test_model_state_sweep_on_eight_devices_equals_one_and_hand_loop(tmp_path):
    report = tmp_path / "report.json"
    run_worker(["--report", str(report), "--model-state"],
               env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    info = json.loads(report.read_text())
    assert info["device_count"] == 8 and info["default_mesh_devices"] == 8
    for s in info["shardings"]:  # blocks of 3 x 3 padded to 3 x 8, split over 8 devices
        assert s["devices"] == 8 and "config" in s["spec"] and s["shape"] == [3, 8]
        # the state comes back per configuration, split over the devices like the rest
        assert "config" in s["state_spec"] and s["state_shape"] == [3, 8]

    worker = load_worker()
    ref = worker.run_sweep(model_state=True)  # single device, in this process
    compare_tables(pd.DataFrame(info["table"]), ref.table)
    for name in ("mean", "steps"):
        np.testing.assert_allclose(np.asarray(info["state"][name]), ref.state[name],
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(np.asarray(info["params_w"]), ref.params["w"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(info["params_b"]), ref.params["b"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(info["loss"]), ref.history["loss"], rtol=1e-5,
                               atol=1e-6)
    # each configuration carried its own state: the running mean of x @ w differs with the
    # learning rate; full batch runs 1 step an epoch, batches of 5 run 5 (23 rows)
    t = ref.table
    full = (t["batch_size"].astype(str) == "full").to_numpy()
    steps = np.where(full, 4.0, 20.0)
    np.testing.assert_array_equal(np.asarray(info["state"]["steps"]), steps)
    assert len(np.unique(np.round(np.asarray(info["state"]["mean"]), 6))) >= 6
    # and the full-batch configurations equal a hand-written optax loop
    for lr in worker.LRS:
        i = t.index[(t["learning_rate"] == lr) & full & (t["seed"] == 1)][0]
        p, s, losses = hand_bn_sgd(worker, lr, 4)
        np.testing.assert_allclose(info["params_w"][i], p["w"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(info["params_b"][i], p["b"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(info["state"]["mean"][i], s["mean"], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(np.asarray(info["loss"])[i], losses, rtol=1e-5)


def test_config_data_meshes_equal_one_device(tmp_path):
    """8 forced devices as ("config", "data") meshes of every shape: each batch's samples
    split over the data axis (the compiled program works on B/d samples per device), the
    same table, histories, parameters and stop reasons as one device, progress bars on."""
    w = load_worker()
    ref = w.run_sweep(batch_sizes=(None, 8), n=24)
    for shape in [(8, 1), (4, 2), (2, 4), (1, 8)]:
        report = tmp_path / f"report_{shape[0]}x{shape[1]}.json"
        log = run_worker(["--report", str(report), "--mesh", f"{shape[0]},{shape[1]}",
                          "--n", "24", "--batch-size", "full,8", "--progress", "all"],
                         env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
        info = json.loads(report.read_text())
        d = shape[1]
        assert info["device_count"] == 8
        # configurations split over the config axis only (3 padded to a multiple of it)
        assert [s["shape"] for s in info["shardings"]] == [[3, -(-3 // shape[0]) * shape[0]]] * 2
        # the batch of 8 samples (3 streams) is computed as 8/d samples per device, the
        # full batch of 24 as 24/d
        hlo = [set(s["hlo_shapes"]) for s in info["shardings"]]
        assert any(f"f32[3,{8 // d},3]" in h for h in hlo), (shape, hlo)
        if d > 1:
            assert any(f"f32[{24 // d},3]" in h for h in hlo), (shape, hlo)
        got = pd.DataFrame(info["table"])
        compare_tables(got, ref.table, rtol=1e-5)
        assert list(got["stop_reason"]) == list(ref.table["stop_reason"])
        np.testing.assert_allclose(np.asarray(info["loss"]), ref.history["loss"], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(np.asarray(info["params_w"]), ref.params["w"], rtol=1e-5,
                                   atol=1e-6)
        assert progress_ticks(log) == expected_ticks(ref.table, "batch_size", 4)


BAD_MESH = """
import jax, numpy as np, jaxgd
jax.config.update("jax_num_cpu_devices", 4)
import sys
sys.path.insert(0, {tests!r})
import sweep_worker as w
devs = np.asarray(jax.devices())
calls = jaxgd.program.compiled_program.cache_info().misses
for mesh, bs in [(jax.sharding.Mesh(devs.reshape(2, 2), ("config", "data")), 5),
                 (jax.sharding.Mesh(devs.reshape(1, 4), ("config", "data")), 8),
                 (jax.sharding.Mesh(devs.reshape(2, 2), ("a", "b")), 8),
                 (jax.sharding.Mesh(devs, ("data",)), 8)]:
    try:
        w.run_sweep(batch_sizes=(bs,), n=23, mesh=mesh)
    except ValueError as e:
        print("ValueError:", e)
print("compiled", jaxgd.program.compiled_program.cache_info().misses - calls)
"""


def test_data_axis_bad_input_is_refused_before_compiling():
    out = subprocess.run([sys.executable, "-c", BAD_MESH.format(tests=str(HERE))],
                         capture_output=True, text=True, timeout=TIMEOUT,
                         cwd=HERE.parent).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("ValueError")]
    assert len(lines) == 4, out
    assert "batch_size = 5 does not split over the mesh's 'data' axis of 2" in lines[0]
    # 23 samples in batches of 8: the last batch of 7 does not split over 4
    assert "the last batch of an epoch = 7" in lines[1] and "drop_last=True" in lines[1]
    assert "mesh=" in lines[2] and "'config'" in lines[2]
    assert "mesh=" in lines[3]
    assert out.strip().endswith("compiled 0")
