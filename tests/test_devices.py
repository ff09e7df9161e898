"""A sweep on 4 forced host devices equals the single-device sweep.

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
