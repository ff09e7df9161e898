"""Checkpoints inside a run: ``fit(..., out=DIR)`` and ``checkpoint_every``.

The reference of every comparison is the same call run without ``out=`` (or a worker run
never interrupted): a resumed run must give the same bits (history, parameters, model
state, stop reasons). The fast tests interrupt a run in this process (a KeyboardInterrupt
raised as a checkpoint is saved, or a real SIGINT); the slow ones kill a real worker
process (tests/sweep_worker.py) with SIGKILL at random points, and once with SIGTERM.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from test_devices import WORKER, finish, load_worker

import jaxgd
from jaxgd import engine as engine_mod
from jaxgd import store as store_mod

W = load_worker()
TIMEOUT = 300


def fit_kw(**kw):
    return dict(epochs=120, batch_size=5, lr=0.05, **kw)


def same_fit(a, b):
    """Bit for bit: stop reason, counters, every history column, parameters and state."""
    assert (a.stop_reason, a.epochs_run, a.steps_run, a.best_epoch) == (
        b.stop_reason, b.epochs_run, b.steps_run, b.best_epoch)
    assert sorted(a.history) == sorted(b.history)
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k], err_msg=k)
    for x, y in zip(jax.tree.leaves((a.params, a.state)), jax.tree.leaves((b.params, b.state)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def same_sweep(a, b):
    pd.testing.assert_frame_equal(a.table, b.table, check_exact=True)
    assert sorted(a.history) == sorted(b.history)
    for k in a.history:
        np.testing.assert_array_equal(a.history[k], b.history[k], err_msg=k)
    for x, y in zip(jax.tree.leaves(a.param_groups), jax.tree.leaves(b.param_groups),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class Calls:
    """Spy on the engine's block loop: the evaluation each program call starts from."""

    def __init__(self, monkeypatch):
        self.starts: list[int] = []
        real = engine_mod.run_blocks

        def spy(prog, spec, st, start, end, *a, **kw):
            self.starts.append(start)
            return real(prog, spec, st, start, end, *a, **kw)

        monkeypatch.setattr(engine_mod, "run_blocks", spy)


def interrupt_after(monkeypatch, n: int, how: str = "raise"):
    """Interrupt the run as its ``n``-th checkpoint is saved: a KeyboardInterrupt raised
    there, or (``how="signal"``) a real SIGINT to this process just after the save, which
    the run notes and acts on at its next block boundary."""
    from jaxgd.checkpoint import Checkpointer

    real, real_saved = store_mod.RunStore.save_checkpoint, Checkpointer.saved
    count = [0]

    def save(self, tag, arrays, at):
        real(self, tag, arrays, at)
        count[0] += 1
        if count[0] == n and how == "raise":
            raise KeyboardInterrupt

    def saved(self):
        real_saved(self)
        if count[0] == n and how == "signal":
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(store_mod.RunStore, "save_checkpoint", save)
    monkeypatch.setattr(Checkpointer, "saved", saved)
    return count


def checkpoints(out: Path, tag: str) -> dict[str, int]:
    """The ``at`` of each valid checkpoint file of ``tag``."""
    got = {}
    for p in sorted((out / "chunks").glob(f"{tag}.ckpt-*.npz")):
        try:
            got[p.name] = store_mod.read_npz(p)[1]["at"]
        except store_mod.IntegrityError:
            pass
    return got


@pytest.fixture(scope="module")
def fit_ref():
    return W.run_fit(**fit_kw())


@pytest.fixture(scope="module")
def sweep_ref():
    return W.run_sweep(epochs=40, chunk_size=3, batch_sizes=(5, None), record_steps=True,
                       patience=3, model_state=True)


def run_sweep(out, **kw):
    return W.run_sweep(out=out, epochs=40, chunk_size=3, batch_sizes=(5, None),
                       record_steps=True, patience=3, model_state=True, **kw)


# ----------------------------------------------------------------------------- fit(out=)

def test_fit_out_equals_fit_and_a_second_call_loads_it(tmp_path, monkeypatch, fit_ref):
    out = tmp_path / "run"
    got = W.run_fit(out=out, **fit_kw())
    same_fit(got, fit_ref)
    assert fit_ref.stop_reason == "patience"  # an early stop: the NaN tail is compared too
    assert not (out / ".lock").exists()
    assert sorted(p.name for p in (out / "chunks").iterdir()) == ["fit.npz"]
    calls = Calls(monkeypatch)
    again = W.run_fit(out=out, **fit_kw())
    assert calls.starts == []  # loaded, not run
    same_fit(again, fit_ref)
    with pytest.raises(ValueError, match=r"out='.*run' holds the results of a different run"):
        W.run_fit(out=out, **fit_kw(key=2))
    with pytest.raises(ValueError, match="different run"):
        W.run_fit(out=out, **{**fit_kw(), "epochs": 121})


def test_fit_out_refuses_a_sweeps_folder_and_bad_values(tmp_path):
    W.run_sweep(out=tmp_path / "sw", epochs=2, batch_sizes=(5,))
    with pytest.raises(ValueError, match="different run"):
        W.run_fit(out=tmp_path / "sw", epochs=2)
    with pytest.raises(TypeError, match=r"out=3 must be a folder path"):
        W.run_fit(out=3)


def block_calls(monkeypatch) -> list[tuple[int, int, bool]]:
    """Spy on the compiled block program: (start, stop, SIGTERM handled by jaxgd) per
    call of the run (``loop="auto"``'s trials, which run before it, are not counted:
    tests/test_autoplan.py)."""
    from jaxgd import autoplan, program

    monkeypatch.setattr(autoplan, "worth_measuring", lambda *a: False)

    calls = []
    real = program.compiled_program

    def spy(spec, rows):
        prog = real(spec, rows)

        def block(st, start, end, *a):
            ours = signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
            calls.append((int(start), int(end), ours))
            return prog.block(st, start, end, *a)

        return prog._replace(block=block)

    monkeypatch.setattr(program, "compiled_program", spy)
    return calls


def test_without_checkpoint_every_out_runs_the_same_blocks(tmp_path, monkeypatch, fit_ref):
    calls = block_calls(monkeypatch)
    W.run_fit(**fit_kw())
    plain = list(calls)
    calls.clear()
    same_fit(W.run_fit(out=tmp_path / "run", **fit_kw()), fit_ref)
    assert calls == plain and not any(ours for *_, ours in calls)
    calls.clear()
    same_fit(W.run_fit(out=tmp_path / "cut", checkpoint_every=10, **fit_kw()), fit_ref)
    assert calls[0][:2] == (0, 1) and all(ours for *_, ours in calls)  # cut, handled
    assert {e for _, e, _ in calls} >= {10, 20, 30} and len(calls) > len(plain)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


# ----------------------------------------------------------------------------- checkpoint_every

@pytest.mark.parametrize("every", [7, 1e-4])  # evaluations; seconds (a save per block)
def test_fit_interrupted_at_a_checkpoint_resumes_bit_for_bit(tmp_path, monkeypatch, fit_ref,
                                                              every):
    out = tmp_path / "run"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        W.run_fit(out=out, checkpoint_every=every, **fit_kw())
    assert not (out / ".lock").exists()
    saved = checkpoints(out, "fit")
    assert len(saved) == 2 and 0 < max(saved.values()) < 120
    if every == 7:
        assert sorted(saved.values()) == [7, 14]
    monkeypatch.undo()
    calls = Calls(monkeypatch)
    got = W.run_fit(out=out, checkpoint_every=every, **fit_kw())
    assert calls.starts == [max(saved.values())]  # went on from the newest checkpoint
    same_fit(got, fit_ref)
    assert sorted(p.name for p in (out / "chunks").iterdir()) == ["fit.npz"]  # dropped


def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, monkeypatch,
                                                                     fit_ref):
    out = tmp_path / "run"
    interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        W.run_fit(out=out, checkpoint_every=5, **fit_kw())
    monkeypatch.undo()
    saved = checkpoints(out, "fit")
    assert sorted(saved.values()) == [10, 15]
    newest = out / "chunks" / max(saved, key=saved.get)
    newest.write_bytes(newest.read_bytes()[:200])  # as if cut off (a disk fault)
    calls = Calls(monkeypatch)
    same_fit(W.run_fit(out=out, checkpoint_every=5, **fit_kw()), fit_ref)
    assert calls.starts == [10]
    # both damaged (one not even a jaxgd file): the run starts again
    monkeypatch.undo()
    out2 = tmp_path / "run2"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        W.run_fit(out=out2, checkpoint_every=5, **fit_kw())
    monkeypatch.undo()
    a, b = sorted((out2 / "chunks").glob("fit.ckpt-*.npz"))
    a.write_bytes(a.read_bytes()[:-10])
    b.write_bytes(b"not a checkpoint")
    calls = Calls(monkeypatch)
    same_fit(W.run_fit(out=out2, checkpoint_every=5, **fit_kw()), fit_ref)
    assert calls.starts == [0]


def test_sigint_saves_at_the_next_block_then_raises(tmp_path, monkeypatch, fit_ref):
    """A real SIGINT: noted by the run's handler, a checkpoint saved at the next block
    boundary, then Python's own handler (restored) raises KeyboardInterrupt."""
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    count = interrupt_after(monkeypatch, 1, how="signal")
    with pytest.raises(KeyboardInterrupt):
        W.run_fit(out=out, checkpoint_every=10, **fit_kw())
    assert count[0] == 2  # the periodic one, then the one the signal asked for
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    saved = checkpoints(out, "fit")
    assert saved and 10 < max(saved.values()) <= 20
    monkeypatch.undo()
    calls = Calls(monkeypatch)
    same_fit(W.run_fit(out=out, checkpoint_every=10, **fit_kw()), fit_ref)
    assert calls.starts == [max(saved.values())]


def test_sweep_interrupted_twice_resumes_bit_for_bit(tmp_path, monkeypatch, sweep_ref):
    out = tmp_path / "run"
    count = interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(out, checkpoint_every=4)
    assert checkpoints(out, "g000_c00000")
    count[0] = -5  # the next run is interrupted at its 8th checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_sweep(out, checkpoint_every=4)
    monkeypatch.undo()
    calls = Calls(monkeypatch)
    got = run_sweep(out, checkpoint_every=4)
    assert calls.starts[0] > 0  # the interrupted chunk went on from its checkpoint
    same_sweep(got, sweep_ref)
    same_sweep(jaxgd.load(out), sweep_ref)
    assert not list((out / "chunks").glob("*.ckpt-*"))
    assert set(sweep_ref.table.stop_reason) == {"max_epochs", "patience"}


def test_checkpoint_every_is_checked_before_anything_runs(tmp_path, monkeypatch):
    calls = Calls(monkeypatch)
    with pytest.raises(ValueError, match=r"checkpoint_every=5 needs out="):
        W.run_fit(checkpoint_every=5)
    with pytest.raises(ValueError, match=r"checkpoint_every='3 weeks' is not a duration"):
        W.run_sweep(out=tmp_path / "a", checkpoint_every="3 weeks")
    for bad in (0, -2.0, float("nan")):
        with pytest.raises(ValueError, match=rf"checkpoint_every={bad!r} must be a positive"):
            W.run_fit(out=tmp_path / "b", checkpoint_every=bad)
    with pytest.raises(TypeError, match=r"checkpoint_every=True must be a number"):
        W.run_fit(out=tmp_path / "b", checkpoint_every=True)
    with pytest.raises(ValueError, match=r"checkpoint_every=4 cannot be combined with search="):
        W.run_sweep(out=tmp_path / "c", checkpoint_every=4, search=W.search_of("halving"))
    assert calls.starts == []
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    from jaxgd.checkpoint import parse_every

    assert [parse_every("e", v) for v in ("30s", "10min", "1.5h", 2.5, 3)] == [
        ("seconds", 30.0), ("seconds", 600.0), ("seconds", 5400.0), ("seconds", 2.5),
        ("evals", 3.0)]


def test_a_toml_train_key_reaches_the_sweep(tmp_path, monkeypatch):
    from jaxgd.config import build, read_config

    text = ('[data]\ndataset = "line"\n[train]\nepochs = 6\ncheckpoint_every = 2\n'
            "[sweep]\nlearning_rate = [0.01]\n")
    cfg = read_config("sweep.toml", text=text)
    assert cfg.train["checkpoint_every"] == 2
    count = interrupt_after(monkeypatch, 10**6)
    build(cfg).run(out=str(tmp_path / "run"))
    assert count[0] == 2  # at evaluations 2 and 4 (not at the end: the chunk is saved)


# ----------------------------------------------------------------------------- slow: real kills

# the worker's fit: 1.5M epochs of batch size 1 (23 steps each) in 3000 evaluations
# (about 10 s on one core), no early stop
LONG_EPOCHS = 1_500_000
LONG = ["--fit", "--epochs", str(LONG_EPOCHS), "--eval-every", "500", "--batch-size", "1",
        "--lrs", "0.002"]
LONG_KW = dict(epochs=LONG_EPOCHS, eval_every=500, batch_size=1, lr=0.002, **W.LONG_FIT)


def start(out: Path, args) -> subprocess.Popen:
    """The worker on this checkout's jaxgd."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, str(WORKER), "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def kill(p: subprocess.Popen, sig=signal.SIGKILL) -> str:
    if p.poll() is None:
        p.send_signal(sig)
    text, _ = p.communicate(timeout=60)
    return text


def wait_for(cond, p, what, timeout=TIMEOUT):
    t0 = time.monotonic()
    while not cond():
        if p.poll() is not None:
            raise AssertionError(f"the worker ended before {what}: {p.stdout.read()[-3000:]}")
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def resumed_from(text: str) -> list[int]:
    """The evaluations the worker's program calls started from (its "call from" lines)."""
    return [int(line.split()[2]) for line in text.splitlines() if line.startswith("call from")]


@pytest.mark.slow
def test_fit_killed_at_random_points_resumes_bit_for_bit(tmp_path):
    args = [*LONG, "--checkpoint-every", "100"]
    whole = tmp_path / "whole"
    finish(start(whole, args), TIMEOUT)  # the same worker, never interrupted
    out = tmp_path / "run"
    rng = random.Random(0)
    ats = []
    for _ in range(3):
        p = start(out, args)
        try:
            wait_for(lambda: bool(checkpoints(out, "fit")), p, "a checkpoint")
            time.sleep(rng.uniform(0.0, 2.0))
        finally:
            kill(p)
        assert p.returncode == -signal.SIGKILL, "the worker ended before the kill"
        ats.append(max(checkpoints(out, "fit").values()))
    assert ats == sorted(ats) and 0 < ats[-1] < 3000
    text = finish(start(out, args), TIMEOUT)
    assert resumed_from(text) == [ats[-1]]  # went on from the newest checkpoint
    got, ref = jaxgd.load(out), jaxgd.load(whole)  # fit's folder: a one-row run folder
    same_sweep(got, ref)
    assert ref.table.stop_reason.tolist() == ["max_epochs"]
    assert ref.history["loss"].shape == (1, 3000)


@pytest.mark.slow
def test_fit_sigterm_saves_then_ends_the_process(tmp_path):
    """SIGTERM with no periodic checkpoint due ("1h"): the run saves at its next block
    boundary and then ends as the default action does (status -SIGTERM)."""
    args = [*LONG, "--checkpoint-every", "1h"]
    out = tmp_path / "run"
    p = start(out, args)
    try:
        assert p.stdout.readline().startswith("call from 0")  # the handlers are in place
        time.sleep(2.0)
        assert p.poll() is None and not checkpoints(out, "fit")  # nothing periodic yet
        t0 = time.monotonic()
        text = kill(p, signal.SIGTERM)
        waited = time.monotonic() - t0
    finally:
        kill(p)
    assert p.returncode == -signal.SIGTERM, text[-2000:]
    assert waited < 10
    at = max(checkpoints(out, "fit").values())
    assert 0 < at < 3000
    text = finish(start(out, args), TIMEOUT)
    assert resumed_from(text) == [at]
    got, ref = jaxgd.load(out), W.run_fit(**LONG_KW)  # this process, never interrupted
    assert got.table.stop_reason.tolist() == [ref.stop_reason]
    assert sorted(got.history) == sorted(ref.history)
    for k in ref.history:
        np.testing.assert_array_equal(got.history[k][0], ref.history[k], err_msg=k)
    for x, y in zip(jax.tree.leaves((got.params, got.state)),
                    jax.tree.leaves((ref.params, ref.state)), strict=True):
        np.testing.assert_array_equal(np.asarray(x)[0], np.asarray(y))


@pytest.mark.slow
def test_sweep_killed_at_random_points_resumes_bit_for_bit(tmp_path):
    args = ["--epochs", "60000", "--chunk-size", "3", "--checkpoint-every", "5000",
            "--batch-size", "1", "--lrs", "0.001,0.002,0.003"]
    whole = tmp_path / "whole"
    finish(start(whole, args), TIMEOUT)
    out = tmp_path / "run"
    rng = random.Random(1)
    for _ in range(4):
        p = start(out, args)
        try:
            wait_for(lambda: bool(list((out / "chunks").glob("*.ckpt-*.npz"))), p,
                     "a checkpoint")
            time.sleep(rng.uniform(0.0, 3.0))
        finally:
            kill(p)
        for f in (out / "chunks").glob("*.npz"):  # every file present is whole
            with np.load(f) as z:
                assert "config" in z.files
    text = finish(start(out, args), TIMEOUT)
    assert any(s > 0 for s in resumed_from(text)), text[-2000:]
    same_sweep(jaxgd.load(out), jaxgd.load(whole))


def run_two(out: Path, tmp_path: Path, tag: str, stop_at: str) -> list[subprocess.Popen]:
    """The sweep worker as two processes of one run (2 forced devices each), bounded by
    TIMEOUT; ``stop_at``: the checkpoint after which both end (exit status 3)."""
    from test_multiprocess import free_port

    port = free_port()
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "JAXGD_TEST_STOP_AT_CHECKPOINT": stop_at, "JAXGD_TEST_HEARTBEAT": "120",
           "PYTHONPATH": os.pathsep
           .join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    procs = []
    try:
        for i in range(2):
            with open(tmp_path / f"{tag}{i}.log", "w") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, str(WORKER), "--process-id", str(i), "--num-processes",
                     "2", "--port", str(port), "--devices", "2", "--out", str(out),
                     "--epochs", "9", "--checkpoint-every", "2", "--batch-size", "5"],
                    stdout=log, stderr=subprocess.STDOUT, env=env))
        for p in procs:
            p.wait(timeout=TIMEOUT)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return procs


@pytest.mark.slow
def test_two_processes_checkpoint_alike(tmp_path):
    """Two processes: blocks cut and checkpoints saved on both alike (their collectives
    would otherwise wait for ever); the same command again goes on from the checkpoint
    process 0 wrote, and gives the table of a run never interrupted."""
    out = tmp_path / "run"
    procs = run_two(out, tmp_path, "a", "3")  # both end as the third checkpoint is saved
    logs = [(tmp_path / f"a{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [3, 3], logs[0][-2000:] + logs[1][-2000:]
    assert max(checkpoints(out, "g000_c00000").values()) == 6
    procs = run_two(out, tmp_path, "b", "")
    logs = [(tmp_path / f"b{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert [resumed_from(t) for t in logs] == [[6], [6]]
    ref = W.run_sweep(epochs=9, batch_sizes=(5,))  # one process, one device
    pd.testing.assert_frame_equal(jaxgd.load(out).table, ref.table, check_dtype=False,
                                  rtol=1e-4)
    assert not list((out / "chunks").glob("*.ckpt-*"))
