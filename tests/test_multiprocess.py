"""Two local processes with ``jax.distributed`` give the table of one process.

The library test forces 2 CPU devices per process, so the configuration axis is sharded
over a 4-device mesh spanning both processes; the command-line test runs the README's
command as written (one device per process, progress bars on). Only process 0 writes
``out=`` and draws progress bars. The coordinator binds to 127.0.0.1, timeouts are short,
and both processes are bounded and killed by handle.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_devices import WORKER, compare_tables, expected_ticks, load_worker, progress_ticks

import jaxgd

TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pair(command, tmp_path, tag: str, expect=(0, 0)) -> list[str]:
    """Run ``command(i)`` for processes 0 and 1 at once, bounded by TIMEOUT and killed by
    handle; asserts their exit statuses are ``expect`` and returns their logs."""
    procs, logs = [], []
    try:
        for i in range(2):
            log = open(tmp_path / f"{tag}{i}.log", "w")  # noqa: SIM115
            logs.append(log)
            procs.append(subprocess.Popen(command(i), stdout=log, stderr=subprocess.STDOUT))
        for p in procs:
            p.wait(timeout=TIMEOUT)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    texts = [(tmp_path / f"{tag}{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == list(expect), "\n".join(t[-3000:] for t in texts)
    return texts


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    port = free_port()
    out = tmp_path / "run"
    report = tmp_path / "report.json"
    # progress=True on process 0 only (as a script might write it): the processes must
    # still agree on one program, and only process 0 draws; 4 epochs in history blocks of
    # 3 evaluations: two program calls, the decision to run the second taken alike on both
    # processes
    logs = run_pair(lambda i: [sys.executable, str(WORKER), "--process-id", str(i),
                               "--num-processes", "2", "--port", str(port), "--devices", "2",
                               "--out", str(out), "--report", str(report), "--progress", "lead",
                               "--block-rows", "3", "--track", f"tensorboard:{tmp_path / 'tb'}"],
                    tmp_path, "p")

    info = json.loads(report.read_text())
    assert info["process_count"] == 2 and info["device_count"] == 4
    assert info["local_device_count"] == 2 and info["default_mesh_devices"] == 4
    for s in info["shardings"]:  # the configuration axis spans both processes
        assert s["devices"] == 4 and s["addressable_shards"] == 2
    assert len(info["shardings"]) == 4  # 2 groups x 2 blocks

    ref = load_worker().run_sweep()  # one process, one device
    compare_tables(pd.DataFrame(info["table"]), ref.table)
    # process 0 wrote a complete run folder; the lock is gone
    saved = jaxgd.load(out)
    compare_tables(saved.table, ref.table)
    np.testing.assert_allclose(saved.history["loss"], ref.history["loss"], rtol=1e-4, atol=1e-6)
    assert not (out / ".lock").exists()
    assert len(list((out / "chunks").glob("*.npz"))) == 2
    # 9 real configurations per group on a 4-device mesh (12 lanes): the count is real
    assert progress_ticks(logs[0]) == expected_ticks(ref.table, "batch_size", 4)
    assert "epoch" not in logs[1] and "active=" not in logs[1]
    # every process asked for track=, process 0 alone wrote it, live, block by block: the
    # runs of the folder's export
    from test_trackers import read_tensorboard

    jaxgd.trackers.export(out, "tensorboard", tmp_path / "tb_export")
    live = read_tensorboard(tmp_path / "tb")
    assert len(live) == 18 and live == read_tensorboard(tmp_path / "tb_export")


@pytest.mark.slow
def test_two_processes_choose_the_same_measured_plan(tmp_path):
    """plan="auto" measuring every candidate (``--try-plans``) on two processes of 2
    devices each: both run the same trials and follow process 0's timings (else their
    programs' collectives would not match), and the table is one process's."""
    port = free_port()
    report = tmp_path / "report.json"
    run_pair(lambda i: [sys.executable, str(WORKER), "--process-id", str(i),
                        "--num-processes", "2", "--port", str(port), "--devices", "2",
                        "--epochs", "30", "--report", str(report), "--try-plans"],
             tmp_path, "t")
    info = json.loads(report.read_text())
    trials = pd.DataFrame(info["plan_trials"])
    # 2 groups (batch sizes) x the 2 plans (several processes: the scan loop only)
    assert list(zip(trials.group, trials.plan, trials.loop, strict=True)) == [
        (g, p, "scan") for g in (0, 1) for p in ("vmap", "map")]
    assert (trials.groupby("group").chosen.sum() == 1).all()
    assert info["plans"] == list(trials[trials.chosen].plan)
    compare_tables(pd.DataFrame(info["table"]), load_worker().run_sweep(epochs=30).table)


CLI_CONFIG = """
[data]
dataset = "diabetes"
standardize = true
standardize_target = true
[model]
name = "linear"
[train]
optimizer = "sgd"
epochs = 3
batch_size = [32, "full"]
[sweep]
learning_rate = [0.01, 0.1, 1.0]
seed = [0, 1]
"""


@pytest.mark.slow
def test_cli_two_processes_equal_one(tmp_path):
    """``jaxgd sweep --coordinator ... --num-processes 2 --process-id i`` on 127.0.0.1, as
    the README writes it: one CPU device per process, the default progress bars on."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CLI_CONFIG)
    port = free_port()
    logs = run_pair(lambda i: [
        sys.executable, "-m", "jaxgd.cli", "sweep", str(cfg), "--out", str(tmp_path / "multi"),
        "--no-plots", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
        "--process-id", str(i), "--init-timeout", "60"], tmp_path, "cli")
    # process 0 printed the summary and drew the bars; process 1 wrote neither
    assert "best:" in logs[0] and "best:" not in logs[1]
    assert "2 device(s), 2 process(es)" in logs[0]
    assert "epoch" not in logs[1] and "active=" not in logs[1] and "sweep" not in logs[1]
    single = subprocess.run(
        [sys.executable, "-m", "jaxgd.cli", "sweep", str(cfg), "--out", str(tmp_path / "one"),
         "--quiet", "--no-plots"], capture_output=True, text=True, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr[-3000:]
    a = jaxgd.load(tmp_path / "multi").table
    b = jaxgd.load(tmp_path / "one").table
    assert list(a["stop_reason"]) == list(b["stop_reason"])
    np.testing.assert_allclose(a["final_loss"], b["final_loss"], rtol=1e-4)
    # the bars' active counts: per batch-size group, the configurations still running
    # (lr 1 diverges at batch size 32 in the first epoch)
    ticks = progress_ticks(logs[0])
    assert ticks == expected_ticks(b, "batch_size", 3)
    assert (1, 4) in [t[0] for t in ticks]


@pytest.mark.slow
def test_processes_given_different_sweeps_are_refused(tmp_path):
    """Process 1 started with another config than process 0: both stop with one clear
    error (exit 2) instead of compiling different programs and waiting for each other's
    collectives for ever."""
    cfgs = []
    for i, lrs in enumerate(("[0.01, 0.1, 1.0]", "[0.01, 0.1]")):
        cfgs.append(tmp_path / f"c{i}.toml")
        cfgs[-1].write_text(CLI_CONFIG.replace("[0.01, 0.1, 1.0]", lrs))
    port = free_port()
    logs = run_pair(lambda i: [
        sys.executable, "-m", "jaxgd.cli", "sweep", str(cfgs[i]), "--out",
        str(tmp_path / "multi"), "--no-plots", "--coordinator", f"127.0.0.1:{port}",
        "--num-processes", "2", "--process-id", str(i), "--init-timeout", "60"],
        tmp_path, "diff", expect=(2, 2))
    for log in logs:
        assert "the 2 processes of this run were given different sweeps" in log, log[-2000:]
    assert not (tmp_path / "multi" / "table.csv").exists()


@pytest.mark.slow
def test_sigterm_ends_the_processes_of_a_run(tmp_path):
    """``kill`` (SIGTERM) mid-run ends both processes (JAX's runtime catches SIGTERM for
    its preemption notices and would run on)."""
    import signal
    import time

    cfg = tmp_path / "long.toml"
    cfg.write_text(CLI_CONFIG.replace("epochs = 3", "epochs = 20000").replace(
        'batch_size = [32, "full"]', "batch_size = 1"))
    port = free_port()
    out = tmp_path / "long"
    procs = [subprocess.Popen([
        sys.executable, "-m", "jaxgd.cli", "sweep", str(cfg), "--out", str(out),
        "--no-plots", "--quiet", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
        "--process-id", str(i), "--init-timeout", "60"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        t0 = time.monotonic()
        while not (out / ".lock").exists():  # process 0 opened the run folder: running
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() - t0 < TIMEOUT
            time.sleep(0.1)
        time.sleep(3)
        assert all(p.poll() is None for p in procs)  # still running
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert codes == [-signal.SIGTERM, -signal.SIGTERM]
    assert not (out / "table.csv").exists()  # no result of an unfinished run


@pytest.mark.slow
def test_pbt_on_two_processes_equals_one(tmp_path):
    """PBT over 2 processes x 2 devices: every process takes the same exploit/explore
    decisions from the gathered history; lineage, table and parameters equal one
    process's."""
    port = free_port()
    report = tmp_path / "report.json"
    run_pair(lambda i: [sys.executable, str(WORKER), "--process-id", str(i),
                        "--num-processes", "2", "--port", str(port), "--devices", "2",
                        "--report", str(report), "--batch-size", "5", "--search", "pbt"],
             tmp_path, "pbt")
    info = json.loads(report.read_text())
    assert info["process_count"] == 2
    w = load_worker()
    ref = w.run_sweep(batch_sizes=(5,), search=w.search_of("pbt"))
    np.testing.assert_allclose(np.asarray(info["lineage"]), ref.lineage.to_numpy(float),
                               rtol=1e-12)
    assert len(ref.lineage) > 9  # exploit steps happened
    compare_tables(pd.DataFrame(info["table"]), ref.table)
    np.testing.assert_allclose(np.asarray(info["params_w"]), ref.params["w"], rtol=1e-4,
                               atol=1e-6)


@pytest.mark.slow
def test_data_axis_across_two_processes_equals_one(tmp_path):
    """2 processes x 2 devices as a (2, 2) ("config", "data") mesh whose data axis spans
    the processes: each batch is split between them; the table of one device."""
    port = free_port()
    report = tmp_path / "report.json"
    run_pair(lambda i: [sys.executable, str(WORKER), "--process-id", str(i),
                        "--num-processes", "2", "--port", str(port), "--devices", "2",
                        "--report", str(report), "--mesh", "2,2", "--data-across",
                        "--n", "24", "--batch-size", "full,8"], tmp_path, "d")
    info = json.loads(report.read_text())
    assert info["process_count"] == 2 and info["device_count"] == 4
    assert info["mesh_processes"] == [[0, 1], [0, 1]]  # a data row holds both processes
    hlo = [set(s["hlo_shapes"]) for s in info["shardings"]]
    assert any("f32[3,4,3]" in h for h in hlo) and any("f32[12,3]" in h for h in hlo)
    ref = load_worker().run_sweep(batch_sizes=(None, 8), n=24)
    got = pd.DataFrame(info["table"])
    compare_tables(got, ref.table, rtol=1e-5)
    assert list(got["stop_reason"]) == list(ref.table["stop_reason"])
    np.testing.assert_allclose(np.asarray(info["params_w"]), ref.params["w"], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.slow
def test_host_fed_shards_on_two_processes_equal_one(tmp_path):
    """Host-fed data on 2 processes x 2 devices, the mesh's data axis across the processes:
    each process reads only its half of every batch (a memmap's rows; an iterable yields
    its half, like a per-host DataLoader), and the tables equal one process's in-memory
    sweep (a loss that weights samples by their place in the batch: rows out of order
    would show). With the data axis within each process, every process's iterable yields
    whole batches. Shares that do not make one batch are refused on both processes before
    anything compiles."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("feed_worker", WORKER.parent / "feed_worker.py")
    fw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fw)
    x, y = fw.problem()
    mm = np.memmap(tmp_path / "x.bin", np.float32, "w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    port = free_port()
    run_pair(lambda i: [sys.executable, str(WORKER.parent / "feed_worker.py"), str(i),
                        str(port), str(tmp_path)], tmp_path, "feed")
    infos = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    x96, y96 = fw.problem(96)
    refs = [jaxgd.sweep(fw.loss, fw.p0(), (x, y), grid=fw.GRID, **fw.KW),  # one device
            jaxgd.sweep(fw.loss, fw.p0(), (x96, y96), grid=fw.GRID, shuffle=False, **fw.KW)]
    assert set(refs[0].table["stop_reason"]) == {"max_epochs", "diverged"}
    # an iterable's "epoch" is its one batch: compare what does not count epochs
    cols = [c for c in refs[0].table.columns if "epoch" not in c]
    for info in infos:
        for got, ref, keep in zip(info["tables"], refs + refs[1:], (None, cols, cols),
                                  strict=True):
            got = pd.DataFrame(got)
            compare_tables(got[keep] if keep else got, ref.table[keep] if keep else ref.table,
                           rtol=1e-5)
            assert list(got["stop_reason"]) == list(ref.table["stop_reason"])
        # 2 seeds' orders x 26 updates (13 evaluations of 2) x 8 of 16 rows, x and y
        assert info["memmap"]["blocks"] == [[2, 26, 8, 3]]
        assert info["memmap"]["gathered"] == 2 * 2 * 26 * 8
        assert info["iterable"]["blocks"] == [[1, 26, 8, 3]]
        assert info["iterable"]["yielded"] == [8] * 26  # the first batch looked at, 25 used
        assert "batches hold [8, 6] samples" in info["error"] and info["compiled"] == 0
        assert "first batch differs between the processes" in info["error_within"]
        assert info["within_blocks"] == [[1, 26, 16, 3]]
