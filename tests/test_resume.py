"""Fault tolerance of ``sweep(..., out=DIR)``: resume after SIGKILL, atomic files, the lock.

The slow tests kill a real sweep process (tests/sweep_worker.py) with SIGKILL; the fast
ones exercise the same store logic in this process.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from test_devices import WORKER, finish, load_worker

import jaxgd
from jaxgd import store as store_mod

W = load_worker()
TIMEOUT = 300

# the long run: batch size 1 (23 steps per epoch), 6 chunks of 3 seeds x 1 learning rate
LONG_LRS = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006]
LONG_EPOCHS = 40000
LONG_ARGS = ["--epochs", str(LONG_EPOCHS), "--chunk-size", "3", "--batch-size", "1",
             "--lrs", ",".join(map(str, LONG_LRS))]


def long_reference():
    return W.run_sweep(epochs=LONG_EPOCHS, chunk_size=3, batch_sizes=(1,), lrs=LONG_LRS)


def start(out: Path, args=()) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)  # reap it: a zombie's pid still looks alive


def chunk_files(out: Path) -> dict[str, int]:
    d = out / "chunks"
    return {f.name: f.stat().st_mtime_ns for f in d.glob("*.npz")} if d.is_dir() else {}


def wait_for(cond, p, timeout=TIMEOUT, what=""):
    t0 = time.monotonic()
    while not cond():
        if p.poll() is not None:
            raise AssertionError(f"the worker ended before {what}: {p.stdout.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame):
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True),
                                  check_dtype=False, rtol=1e-6, atol=0)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- slow: real kills


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    out = tmp_path / "run"
    p = start(out, LONG_ARGS)
    try:
        wait_for(lambda: len(chunk_files(out)) >= 1, p, what="the first chunk")
        # while it runs, a second run into the same folder is refused by the lock
        assert (out / ".lock").exists()
        with pytest.raises(RuntimeError, match=r"is in use by another run \(pid \d+.*\.lock"):
            W.run_sweep(out=out, epochs=LONG_EPOCHS, chunk_size=3, batch_sizes=(1,),
                        lrs=LONG_LRS)
    finally:
        kill(p)
    before = chunk_files(out)
    assert 1 <= len(before) < len(LONG_LRS), "the kill came too late to test anything"
    assert (out / ".lock").exists()  # left behind by the killed process: stale
    assert not (out / "table.csv").exists()
    with pytest.raises(ValueError, match="interrupted sweep"):
        jaxgd.load(out)

    finish(start(out, LONG_ARGS), TIMEOUT)  # the same command: takes over the stale lock, resumes
    after = chunk_files(out)
    assert len(after) == len(LONG_LRS)
    for name, mtime in before.items():  # chunks finished before the kill were kept
        assert after[name] == mtime, name
    assert not (out / ".lock").exists()
    ref = long_reference()
    got = jaxgd.load(out)
    assert_same_table(got.table, ref.table)
    np.testing.assert_allclose(got.history["loss"], ref.history["loss"], rtol=1e-6)


@pytest.mark.slow
def test_kills_at_random_points_never_leave_half_written_results(tmp_path):
    out = tmp_path / "run"
    args = ["--epochs", "8000", "--chunk-size", "3", "--batch-size", "1",
            "--lrs", ",".join(map(str, LONG_LRS))]
    ref = W.run_sweep(epochs=8000, chunk_size=3, batch_sizes=(1,), lrs=LONG_LRS)
    rng = random.Random(0)
    outcomes = []
    for _ in range(5):
        p = start(out, args)
        try:
            time.sleep(rng.uniform(0.5, 6.0))
        finally:
            kill(p)
        try:
            res = jaxgd.load(out)
        except (ValueError, FileNotFoundError) as e:  # a clean refusal
            outcomes.append(type(e).__name__)
        else:  # or the whole result
            assert_same_table(res.table, ref.table)
            outcomes.append("complete")
        for f in (out / "chunks").glob("*.npz") if (out / "chunks").is_dir() else []:
            with np.load(f) as z:  # every chunk file present is whole
                assert "config" in z.files
    finish(start(out, args), TIMEOUT)
    assert_same_table(jaxgd.load(out).table, ref.table)
    assert outcomes  # (the mix of outcomes depends on timing)


# ----------------------------------------------------------------------------- fast: in-process


@pytest.mark.slow
def test_ctrl_c_on_the_command_line_exits_130_and_resumes(tmp_path):
    """SIGINT to ``jaxgd sweep`` (its console entry point) after its first chunk: the
    message, exit status 130 (not a crash while the runtime shuts down), the finished
    chunks kept; the same command again completes with the table of a run never
    interrupted."""
    def cmd(out):
        return [sys.executable, "-m", "jaxgd.cli", "sweep", "--out", str(out), "--chunk-size",
                "8", "--quiet", "--no-plots"]

    for attempt in range(3):  # the crash it guards against came at shutdown, not always
        out = tmp_path / f"run{attempt}"
        p = subprocess.Popen(cmd(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        try:
            wait_for(lambda out=out: chunk_files(out), p, what="the first chunk")
            time.sleep(0.2 * attempt)
            p.send_signal(signal.SIGINT)
            text, _ = p.communicate(timeout=TIMEOUT)
        finally:
            kill(p)
        assert p.returncode == 130, (p.returncode, text[-2000:])
        assert f"interrupted; finished chunks are kept in {out}" in text
    again = subprocess.run(cmd(out), capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    whole = subprocess.run(cmd(tmp_path / "whole"), capture_output=True, text=True,
                           timeout=TIMEOUT)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert_same_table(jaxgd.load(out).table, jaxgd.load(tmp_path / "whole").table)


@pytest.fixture(scope="module")
def reference():
    return W.run_sweep(chunk_size=3, batch_sizes=(5,))


HOLD = """
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()} {socket.gethostname()}".encode())
print("held", flush=True)
time.sleep(120)
"""


def lock_holder(lock: Path) -> subprocess.Popen:
    """Another process holding ``flock`` on ``lock`` (as a running sweep does)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_live_lock_refuses_a_second_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = lock_holder(out / ".lock")
    try:
        with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {holder.pid}"
                                               rf".*{out / '.lock'}"):
            W.run_sweep(out=out, chunk_size=3, batch_sizes=(5,))
        assert (out / ".lock").read_text().startswith(str(holder.pid))  # not taken
        assert not (out / "chunks").exists() or not list((out / "chunks").glob("*.npz"))
    finally:
        holder.kill()
        holder.wait()
    # the OS released the lock with the process: the next run takes it
    W.run_sweep(out=out, chunk_size=3, batch_sizes=(5,))
    assert not (out / ".lock").exists()


def test_a_lock_file_naming_a_dead_pid_is_not_a_lock(tmp_path, reference):
    """The pid in .lock is only for messages: an unlocked .lock (a killed run) is free."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{dead_pid()} {socket.gethostname()}")
    sw = W.run_sweep(out=out, chunk_size=3, batch_sizes=(5,))
    assert_same_table(sw.table, reference.table)
    assert not (out / ".lock").exists()


def test_resume_keeps_finished_chunks_and_recomputes_damaged_ones(tmp_path, reference):
    out = tmp_path / "run"
    W.run_sweep(out=out, chunk_size=3, batch_sizes=(5,))
    files = chunk_files(out)
    assert len(files) == 3
    names = sorted(files)
    # as after a kill before the end: no results, one chunk lost, one half-written
    for f in ("table.csv", "history.npz", "params.npz", "result.json"):
        (out / f).unlink()
    (out / "chunks" / names[0]).unlink()
    damaged = out / "chunks" / names[1]
    damaged.write_bytes(damaged.read_bytes()[:100])
    time.sleep(0.01)
    sw = W.run_sweep(out=out, chunk_size=3, batch_sizes=(5,))
    after = chunk_files(out)
    assert after[names[2]] == files[names[2]]  # kept, not recomputed
    assert names[0] in after  # the lost one was recomputed
    assert after[names[1]] != files[names[1]]  # the damaged one was recomputed
    assert_same_table(sw.table, reference.table)
    assert_same_table(jaxgd.load(out).table, reference.table)


def test_resume_with_another_chunk_size(tmp_path, reference):
    """Chunks stored with one width are not mistaken for those of another width."""
    out = tmp_path / "run"
    W.run_sweep(out=out, chunk_size=3, batch_sizes=(5,))
    (out / "table.csv").unlink()
    sw = W.run_sweep(out=out, chunk_size=6, batch_sizes=(5,))
    ref6 = W.run_sweep(chunk_size=6, batch_sizes=(5,))
    assert_same_table(sw.table, ref6.table)
    pd.testing.assert_frame_equal(sw.table, reference.table, check_dtype=False, rtol=1e-4)


def test_a_different_sweep_is_refused(tmp_path):
    out = tmp_path / "run"
    W.run_sweep(out=out, chunk_size=3, batch_sizes=(5,))
    with pytest.raises(ValueError, match=r"out='.*run' holds the results of a different sweep"):
        W.run_sweep(out=out, chunk_size=3, batch_sizes=(5,), lrs=[0.3, 0.4])
    assert not (out / ".lock").exists()


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    store_mod.atomic_write_bytes(target, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match=rf"cannot write {target}: disk full"):
        store_mod.atomic_write_bytes(target, b"new" * 1000)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]  # no temporaries
    store_mod.write_npz(tmp_path / "a.npz", {"x": np.arange(3)}, "fp")
    arrays, meta = store_mod.read_npz(tmp_path / "a.npz", "fp")
    assert arrays["x"].tolist() == [0, 1, 2] and meta["fingerprint"] == "fp"


def test_an_edited_loss_is_not_resumed(tmp_path):
    x = np.linspace(0, 1, 12, dtype=np.float32)[:, None]
    y = 2 * x[:, 0]

    def loss(p, b):
        return jnp.mean((b[0][:, 0] * p["w"] - b[1]) ** 2)

    def edited(p, b):  # another function body under the same role
        return jnp.mean(jnp.abs(b[0][:, 0] * p["w"] - b[1]))

    edited.__qualname__ = loss.__qualname__
    kw = dict(grid={"learning_rate": [0.1]}, epochs=2, out=tmp_path / "run")
    jaxgd.sweep(loss, {"w": jnp.zeros(())}, (x, y), **kw)
    with pytest.raises(ValueError, match="different sweep"):
        jaxgd.sweep(edited, {"w": jnp.zeros(())}, (x, y), **kw)
    jaxgd.sweep(loss, {"w": jnp.zeros(())}, (x, y), **kw)  # the same code resumes
