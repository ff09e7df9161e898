"""The run folder (jaxgd/store.py): no pickle, checksums and fingerprints in every file,
structure rebuilt from JSON key paths, an OS lock, links refused, OS errors as one line.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxgd
from jaxgd import store as store_mod
from jaxgd.cli import main

ROOT = Path(__file__).resolve().parents[1]
X = np.linspace(-1, 1, 24, dtype=np.float32).reshape(12, 2)
Y = X @ np.array([1.5, -0.5], np.float32) + 0.25


def mse(p, b):
    return jnp.mean((b[0] @ p["w"] + p["b"] - b[1]) ** 2)


P0 = {"w": jnp.zeros(2, jnp.float32), "b": jnp.zeros((), jnp.float32)}
GRID = {"learning_rate": [0.05, 0.1, 0.2], "seed": [0, 1]}


def run(out=None, loss=mse, params=P0, **kw):
    kw = {"grid": GRID, "epochs": 3, "batch_size": 4, "chunk_size": 2, **kw}
    return jaxgd.sweep(loss, params, (X, Y), out=out, **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "run"
    return run(out), out


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("jaxgd: error: ")
    return err[0]


# ----------------------------------------------------------------------------- no pickle


def test_jaxgd_source_never_unpickles():
    for f in (ROOT / "jaxgd").glob("*.py"):
        text = f.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, f.name


def test_every_npz_loads_without_pickle_and_holds_its_fingerprint(saved):
    sw, out = saved
    files = [out / "history.npz", out / "params.npz", *sorted((out / "chunks").glob("*.npz"))]
    assert len(files) == 2 + 3  # chunk_size 2 over 2 seeds: 3 chunks of 2 x 1
    for f in files:
        with np.load(f, allow_pickle=False) as z:  # raises on any object array
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("__jaxgd__").tobytes())
        assert meta["fingerprint"] == sw.fingerprint
        # the checksum, recomputed here independently: sha256 over name, dtype, shape, bytes
        h = hashlib.sha256()
        for k in sorted(arrays):
            a = np.ascontiguousarray(arrays[k])
            h.update(json.dumps([k, a.dtype.str, list(a.shape)]).encode() + a.tobytes())
        assert meta["checksum"] == h.hexdigest(), f
    doc = json.loads((out / "result.json").read_text())
    assert doc["fingerprint"] == sw.fingerprint
    assert doc["files"]["table.csv"] == hashlib.sha256((out / "table.csv").read_bytes()
                                                       ).hexdigest()
    pmeta = json.loads(np.load(out / "params.npz")["__jaxgd__"].tobytes())
    assert pmeta["tree"] == [[["key", "b"]], [["key", "w"]]]  # the structure, as data


EVIL = """
import os
class Evil:
    def __reduce__(self):
        return (open, ({marker!r}, "w"))
"""


def _evil_array(marker: Path) -> np.ndarray:
    ns: dict = {}
    exec(EVIL.format(marker=str(marker)), ns)
    a = np.empty(1, object)
    a[0] = ns["Evil"]()
    return a


@pytest.mark.parametrize("target", ["params.npz", "history.npz", "treedef"])
def test_a_pickle_payload_never_runs(saved, tmp_path, target):
    """A crafted folder with a pickled object array (the old format's ``treedef`` entry, or
    in place of a leaf) gives a clear error from load, ``jaxgd show`` and ``jaxgd plot``;
    the payload, which does run when unpickled, never does."""
    _, out = saved
    run_dir = copy(out, tmp_path / "crafted")
    marker = tmp_path / "PWNED"
    name = "params.npz" if target == "treedef" else target
    with np.load(run_dir / name) as z:
        arrays = {k: z[k] for k in z.files}
    key = "treedef" if target == "treedef" else next(k for k in arrays if k != "__jaxgd__")
    arrays[key] = _evil_array(marker)
    np.savez(run_dir / name, **arrays)  # numpy pickles object arrays
    # jaxgd refuses it ...
    with pytest.raises(ValueError, match=rf"damaged: .*{name}"):
        jaxgd.load(run_dir)
    for cmd in (["show", str(run_dir)], ["plot", str(run_dir)]):
        p = subprocess.run([sys.executable, "-m", "jaxgd.cli", *cmd], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path)
        assert p.returncode == 2, p.stderr
        assert p.stderr.startswith("jaxgd: error: ") and len(p.stderr.splitlines()) == 1
        assert name in p.stderr
    assert not marker.exists()
    # ... and the payload is live: unpickling it (what jaxgd never does) creates the marker
    np.load(run_dir / name, allow_pickle=True)[key]
    assert marker.exists()


@pytest.mark.parametrize("content", [
    "[1, 2, 3]", '{"format": 2}', "not json", '{"a": ' * 100000, "",
    json.dumps({"format": 2, "fingerprint": 1, "files": "x", "configs": "y"}),
], ids=["list", "partial", "text", "deep", "empty", "types"])
def test_odd_result_json_is_a_clear_error(saved, tmp_path, content):
    _, out = saved
    run_dir = copy(out, tmp_path / "odd")
    (run_dir / "result.json").write_text(content)
    with pytest.raises(ValueError, match=r"is damaged: .*result\.json"):
        jaxgd.load(run_dir)


def test_odd_tree_description_is_a_clear_error(saved, tmp_path):
    """A params.npz with a valid checksum but a nonsense tree (a forger's best effort)."""
    _, out = saved
    for i, tree in enumerate([{"a": 1}, [[["module", "os"]]] * 2, [[["index", -1]]] * 2,
                              [[["key", "a"]], [["key", "a"], ["key", "b"]]]]):
        run_dir = copy(out, tmp_path / f"t{i}")
        arrays, meta = store_mod.read_npz(run_dir / "params.npz")
        meta = {k: v for k, v in meta.items() if k not in ("checksum", "format")}
        meta["tree"] = tree
        digest = store_mod.write_npz(run_dir / "params.npz", arrays, **meta)
        doc = json.loads((run_dir / "result.json").read_text())
        doc["files"]["params.npz"] = digest
        doc.pop("checksum")
        (run_dir / "result.json").write_bytes(store_mod._sealed_json(doc))
        with pytest.raises(ValueError, match=r"params\.npz is damaged"):
            jaxgd.load(run_dir)


# ----------------------------------------------------------------------------- structure


class Lin(NamedTuple):
    w: jax.Array
    b: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DC:
    w: jax.Array
    b: jax.Array
    name: str = dataclasses.field(default="lin", metadata={"static": True})


class Box:
    """A user class registered without keys (its leaves are numbered)."""

    def __init__(self, w, b):
        self.w, self.b = w, b


jax.tree_util.register_pytree_node(Box, lambda t: ((t.w, t.b), None), lambda _, c: Box(*c))


def lin_loss(p, b):
    return jnp.mean((b[0] @ p.w + p.b - b[1]) ** 2)


def wb_loss(p, b):
    leaves = jax.tree.leaves(p)
    w = next(x for x in leaves if x.ndim == 1)
    c = next(x for x in leaves if x.ndim == 0)
    return mse({"w": w, "b": c}, b)


@pytest.mark.parametrize("make", [
    lambda w, b: Lin(w, b), lambda w, b: DC(w, b), lambda w, b: Box(w, b),
    lambda w, b: (w, [b]), lambda w, b: {"layers": {0: w, 1: b}},
])
def test_load_rebuilds_any_pytree_with_like(tmp_path, make):
    p0 = make(jnp.zeros(2, jnp.float32), jnp.zeros((), jnp.float32))
    sw = run(tmp_path / "run", loss=wb_loss, params=p0, grid={"learning_rate": [0.1, 0.2]})
    got = jaxgd.load(tmp_path / "run", like=p0)
    assert jax.tree.structure(got.params) == jax.tree.structure(sw.params)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(sw.params), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.shape[0] == 2
    # the default: the same leaves in nested dicts and lists only
    plain = jaxgd.load(tmp_path / "run").params
    nodes = [plain]
    while nodes:
        n = nodes.pop()
        if isinstance(n, dict):
            nodes += n.values()
        elif isinstance(n, list):
            nodes += n
        else:
            assert isinstance(n, np.ndarray)
    got_bytes = sorted(a.tobytes() for a in jax.tree.leaves(plain))  # dict order may differ
    assert got_bytes == sorted(np.asarray(b).tobytes() for b in jax.tree.leaves(sw.params))


def test_default_load_gives_nested_dicts_and_lists(tmp_path):
    p0 = Lin(jnp.zeros(2, jnp.float32), jnp.zeros((), jnp.float32))
    run(tmp_path / "run", loss=lin_loss, params=p0, grid={"learning_rate": [0.1]})
    got = jaxgd.load(tmp_path / "run").params
    assert set(got) == {"w", "b"} and got["w"].shape == (1, 2)  # attribute names as keys
    sw = run(tmp_path / "r2", params=(P0,), loss=lambda p, b: mse(p[0], b),
             grid={"learning_rate": [0.1]})
    got = jaxgd.load(tmp_path / "r2").params
    assert isinstance(got, list) and set(got[0]) == {"w", "b"}
    np.testing.assert_array_equal(got[0]["w"], sw.params[0]["w"])


def test_like_that_does_not_match_is_a_clear_error(saved):
    _, out = saved
    with pytest.raises(ValueError, match=r"like= has 1 leaves but .*params\.npz holds 2"):
        jaxgd.load(out, like={"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"like= does not match .*\['w'\] of shape \(3,\)"):
        jaxgd.load(out, like={"w": jnp.zeros(3), "b": jnp.zeros(())})
    with pytest.raises(ValueError, match=r"like= does not match"):
        jaxgd.load(out, like=Lin(jnp.zeros(2), jnp.zeros(())))  # attributes, not keys


MAIN_SCRIPT = """
import sys
from typing import NamedTuple
import jax.numpy as jnp, numpy as np, jaxgd

class Params(NamedTuple):  # defined in __main__
    w: jnp.ndarray
    b: jnp.ndarray

p0 = Params(jnp.zeros(2), jnp.zeros(()))
x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(12, 2); y = x @ np.array([1.5, -0.5])
loss = lambda p, b: jnp.mean((b[0] @ p.w + p.b - b[1]) ** 2)
if sys.argv[1] == "write":
    jaxgd.sweep(loss, p0, (x, y.astype(np.float32)), grid={"learning_rate": [0.1, 0.2]},
                epochs=3, out=sys.argv[2])
else:
    r = jaxgd.load(sys.argv[2], like=p0)
    assert type(r.params) is Params and r.params.w.shape == (2, 2), r.params
    print("ok", float(r.params.b[1]))
"""


def test_a_namedtuple_of_main_loads_in_another_process(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(MAIN_SCRIPT)
    for step in ("write", "read"):
        p = subprocess.run([sys.executable, str(script), step, str(tmp_path / "run")],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith("ok")


# ----------------------------------------------------------------------------- integrity


def test_a_chunk_rewritten_by_hand_is_recomputed(saved, tmp_path):
    sw, out = saved
    run_dir = copy(out, tmp_path / "r")
    for f in ("table.csv", "result.json"):
        (run_dir / f).unlink()
    chunk = sorted((run_dir / "chunks").glob("*.npz"))[0]
    with np.load(chunk) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["history/loss"] = arrays["history/loss"] * 0 + 123.0  # a valid npz, other numbers
    np.savez(chunk, **arrays)  # keeps the old __jaxgd__ entry: its checksum no longer holds
    forged = copy(run_dir, tmp_path / "forged")
    got = run(run_dir)
    pd.testing.assert_frame_equal(got.table, sw.table)
    assert store_mod.read_npz(chunk, sw.fingerprint)  # rewritten, valid again
    # a chunk of another sweep (valid on its own) is not used either
    other = run(tmp_path / "other", grid={"learning_rate": [0.3, 0.4, 0.5], "seed": [0, 1]})
    shutil.copy(tmp_path / "other" / "chunks" / chunk.name, forged / "chunks" / chunk.name)
    assert store_mod.read_npz(forged / "chunks" / chunk.name)[1]["fingerprint"] == \
        other.fingerprint
    got = run(forged)
    pd.testing.assert_frame_equal(got.table, sw.table)


@pytest.mark.parametrize("name", ["table.csv", "history.npz", "params.npz"])
def test_a_final_file_that_does_not_match_is_refused(saved, tmp_path, name):
    _, out = saved
    run_dir = copy(out, tmp_path / "r")
    if name == "table.csv":
        text = (run_dir / name).read_text()
        (run_dir / name).write_text(text.replace("0.05", "0.06", 1))  # same rows, edited
    else:  # a whole, valid file of another result
        other = run(tmp_path / "other", grid={"learning_rate": [0.3, 0.4, 0.5], "seed": [0, 1]})
        assert other.fingerprint != jaxgd.load(out).fingerprint
        shutil.copy(tmp_path / "other" / name, run_dir / name)
    with pytest.raises(ValueError, match=rf"damaged: .*{name}"):
        jaxgd.load(run_dir)
    (run_dir / "table.csv").write_bytes((out / "table.csv").read_bytes())
    for f in ("history.npz", "params.npz"):
        shutil.copy(out / f, run_dir / f)
    assert len(jaxgd.load(run_dir)) == 6  # the original files load again


def test_a_folder_without_sweep_json_is_refused(saved, tmp_path, capsys):
    """Sweep A's folder without its sweep.json, then another sweep B into it: refused,
    nothing of A's is used or overwritten."""
    _, out = saved
    run_dir = copy(out, tmp_path / "r")
    (run_dir / "sweep.json").unlink()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"holds files that jaxgd did not write .* no "
                                         r"sweep\.json"):
        run(run_dir, grid={"learning_rate": [0.3, 0.4, 0.5], "seed": [0, 1]})
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    # a user's own folder: their table.csv survives sweep(out=), save() and the CLI
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "table.csv").write_text("my,own\n1,2\n")
    with pytest.raises(ValueError, match="holds files that jaxgd did not write"):
        run(mine)
    with pytest.raises(ValueError, match="holds files that jaxgd did not write"):
        jaxgd.load(out).save(mine)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nepochs = 2\n[sweep]\nlearning_rate = [0.1]\n")
    assert main(["sweep", str(cfg), "--out", str(mine), "--quiet"]) == 2
    assert "holds files that jaxgd did not write (table.csv)" in one_line(capsys)
    assert (mine / "table.csv").read_text() == "my,own\n1,2\n"
    assert sorted(p.name for p in mine.iterdir()) == ["table.csv"]


def test_a_damaged_sweep_json_is_reported_as_damaged(saved, tmp_path):
    _, out = saved
    run_dir = copy(out, tmp_path / "r")
    raw = (run_dir / "sweep.json").read_bytes()
    (run_dir / "sweep.json").write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(ValueError, match=r"sweep\.json is damaged \(not JSON") as e:
        run(run_dir)
    assert "different sweep" not in str(e.value) and "None" not in str(e.value)
    assert not (run_dir / ".lock").exists()


def test_save_then_load_round_trip_outside_a_sweep(saved, tmp_path):
    sw, _ = saved
    sub = jaxgd.SweepResult(sw.configs, sw.table, sw.history, sw.params, sw.folds)
    sub.save(tmp_path / "s")
    got = jaxgd.load(tmp_path / "s")
    assert got.fingerprint.startswith("content-")
    pd.testing.assert_frame_equal(got.table, sw.table, check_dtype=True)
    sub.save(tmp_path / "s")  # a folder jaxgd wrote: overwritten
    with pytest.raises(ValueError, match="run folder of another sweep"):
        sub.save(saved[1])  # a sweep's folder holds another fingerprint


# ----------------------------------------------------------------------------- fingerprint


HELPER_SRC = """
import jax, jax.numpy as jnp

def helper(z):
    return jax.nn.{act}(z)

def loss(p, b):
    return jnp.mean((helper(b[0] @ p["w"]) + p["b"] - b[1]) ** 2)
"""


def _loss_with(act: str):
    ns: dict = {"__name__": "userloss"}
    exec(compile(HELPER_SRC.format(act=act), "userloss.py", "exec"), ns)
    return ns["loss"]


def test_an_edited_helper_is_a_different_sweep(tmp_path):
    relu, tanh = _loss_with("relu"), _loss_with("tanh")
    # the loss's own code, name and closure are the same: only the helper changed
    assert relu.__code__.co_code == tanh.__code__.co_code and relu.__closure__ is None
    a = run(tmp_path / "run", loss=relu)
    with pytest.raises(ValueError, match="different sweep"):
        run(tmp_path / "run", loss=tanh)
    b = run(tmp_path / "tanh", loss=tanh)
    assert not np.allclose(a.table["final_loss"], b.table["final_loss"])
    again = run(tmp_path / "run", loss=_loss_with("relu"))  # same program: resumes
    pd.testing.assert_frame_equal(again.table, a.table)


def test_fingerprint_is_computed_once_per_group(tmp_path, monkeypatch):
    sweep_mod = sys.modules["jaxgd.sweep"]
    calls = []
    real = sweep_mod.program_digest
    monkeypatch.setattr(sweep_mod, "program_digest", lambda prep: calls.append(1) or
                        real(prep))
    # 2 groups (batch sizes) of 6 configurations in chunks of 2: 6 chunks
    run(tmp_path / "run", grid={**GRID, "batch_size": [4, 6]})
    assert len(calls) == 2
    assert len(list((tmp_path / "run" / "chunks").glob("*.npz"))) == 6


# ----------------------------------------------------------------------------- links, lock


def test_links_inside_a_run_folder_are_refused(saved, tmp_path):
    _, out = saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "chunks").symlink_to(elsewhere)
    with pytest.raises(ValueError, match=r"chunks is a symbolic link: refused"):
        run(run_dir)
    assert not any(elsewhere.iterdir())
    r2 = copy(out, tmp_path / "r2")
    (r2 / "params.npz").unlink()
    (r2 / "params.npz").symlink_to(out / "params.npz")
    with pytest.raises(ValueError, match=r"params\.npz is a symbolic link: refused"):
        jaxgd.load(r2)
    r3 = copy(out, tmp_path / "r3")
    target = tmp_path / "victim"
    target.write_text("keep")
    (r3 / ".lock").symlink_to(target)
    with pytest.raises(ValueError, match=r"\.lock is a symbolic link: refused"):
        run(r3)
    assert target.read_text() == "keep"


RACE = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("jaxgd_store_only", sys.argv[1])
store = importlib.util.module_from_spec(spec)
spec.loader.exec_module(store)
assert "jax" not in sys.modules  # the lock needs no JAX
root, trials, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def child(folder, log, go, k):
    os.read(go, 1)  # blocks until the parent releases every child at once
    s = store.RunStore(folder, "fp", True)
    deadline = time.time() + 20
    while True:
        try:
            s.lock()
            break
        except RuntimeError:
            if time.time() > deadline:
                os._exit(3)
            time.sleep(0.0005)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.write(fd, f"in {os.getpid()}\\n".encode())
    time.sleep(0.001)
    os.write(fd, f"out {os.getpid()}\\n".encode())
    if k % 2:
        os._exit(0)  # dies holding the lock: the OS releases it, the file stays
    s.close()
    os._exit(0)

for t in range(trials):
    folder, log = os.path.join(root, f"f{t}"), os.path.join(root, f"log{t}")
    os.mkdir(folder)
    with open(os.path.join(folder, ".lock"), "w") as f:
        f.write("999999 somehost\\n")  # a stale lock file naming a dead process
    open(log, "w").close()
    r, w = os.pipe()
    pids = []
    for k in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(w)
            child(folder, log, r, k)
        pids.append(pid)
    os.close(r)
    time.sleep(0.05)  # every child started and waiting
    os.close(w)  # go
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
print("done", flush=True)
"""


@pytest.mark.slow
def test_lock_race_eight_processes_fifty_times(tmp_path):
    """8 processes started at once on a folder whose .lock names a dead process, 50 times
    (forked by a driver that imports only jaxgd/store.py): each takes the lock once, never
    two at a time; half of them die holding it, and the OS hands it on."""
    script = tmp_path / "race.py"
    script.write_text(RACE)
    p = subprocess.run([sys.executable, str(script), str(ROOT / "jaxgd" / "store.py"),
                        str(tmp_path), "50", "8"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and p.stdout.strip() == "done", p.stderr[-3000:]
    for trial in range(50):
        lines = (tmp_path / f"log{trial}").read_text().split()
        events = list(zip(lines[::2], lines[1::2], strict=True))
        assert len(events) == 16, events
        for i in range(0, 16, 2):  # strictly in, out, in, out ... by the same process
            assert events[i][0] == "in" and events[i + 1] == ("out", events[i][1]), events
        assert len({pid for _, pid in events}) == 8


# ----------------------------------------------------------------------------- OS errors


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mnt = tmp_path / "mnt"
    if not _tmpfs(mnt, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root): see the simulated test below")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_names_the_path_and_keeps_finished_chunks(tmpfs, tmp_path, capsys):
    ref_dir = tmp_path / "ref"
    ref = run(ref_dir)
    sizes = sorted(f.stat().st_size for f in (ref_dir / "chunks").glob("*.npz"))
    # fill the tmpfs so that sweep.json and about 1.5 chunks still fit
    free = shutil.disk_usage(tmpfs).free
    room = 8192 + 4096 * (-(-int(1.5 * sizes[-1]) // 4096))
    (tmpfs / "filler").write_bytes(b"\0" * max(0, free - room))
    out = tmpfs / "run"
    with pytest.raises(OSError, match=rf"cannot write {out}/.*: No space left on device") as e:
        run(out)
    assert e.value.errno == errno.ENOSPC
    kept = sorted((out / "chunks").glob("*.npz"))
    assert 1 <= len(kept) < 3
    for f in kept:  # what was written is whole and valid
        store_mod.read_npz(f, ref.fingerprint)
    assert not [p for p in out.rglob("*.tmp")]
    mtimes = {f.name: f.stat().st_mtime_ns for f in kept}
    # the CLI: one line naming the path, exit 2
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nepochs = 2\n[sweep]\nlearning_rate = [0.1, 0.2]\n")
    assert main(["sweep", str(cfg), "--out", str(tmpfs / "cli"), "--quiet"]) == 2
    line = one_line(capsys)
    assert str(tmpfs / "cli") in line and "No space left on device" in line
    (tmpfs / "filler").unlink()  # space again: the same call resumes
    got = run(out)
    pd.testing.assert_frame_equal(got.table, ref.table)
    for name, m in mtimes.items():
        assert (out / "chunks" / name).stat().st_mtime_ns == m


def test_read_only_folder_names_the_path(tmpfs, saved, tmp_path, capsys):
    _, out = saved
    ro = tmpfs
    copy(out, ro / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    # read-only even to root: plot --out, sweep --out, show of a readable folder
    assert main(["plot", str(ro / "run"), "--out", str(ro / "figs")]) == 2
    assert str(ro / "figs") in (line := one_line(capsys)) and "Read-only" in line
    assert main(["plot", str(ro / "run")]) == 2
    assert str(ro / "run") in (line := one_line(capsys)) and "Read-only" in line
    with pytest.raises(ValueError, match=rf"{ro / 'new'}.*cannot be created: Read-only"):
        run(ro / "new")
    with pytest.raises(OSError, match=rf"cannot lock {ro / 'run'}.*Read-only file system"):
        jaxgd.load(ro / "run").save(ro / "run")  # an existing folder, read-only
    assert main(["show", str(ro / "run")]) == 0  # reading needs no writes
    capsys.readouterr()
    assert len(jaxgd.load(ro / "run")) == 6


def test_os_errors_simulated(saved, tmp_path, monkeypatch, capsys):
    """Where no tmpfs can be mounted this still runs: os.replace is patched to fail with
    ENOSPC after the first chunk, then EACCES for the plots (simulated, not a real disk)."""
    sw, _ = saved
    out = tmp_path / "run"
    real = os.replace
    count = {"n": 0}

    def failing(src, dst, *a, **k):
        if str(dst).endswith(".npz") and "chunks" in str(dst):
            count["n"] += 1
            if count["n"] > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match=rf"cannot write {out}/chunks/.*No space left") as e:
        run(out)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    kept = list((out / "chunks").glob("*.npz"))
    assert len(kept) == 1 and store_mod.read_npz(kept[0], sw.fingerprint)
    assert not list(out.rglob("*.tmp"))
    # the run resumes elsewhere (a copy of the folder on another disk): 2 chunks computed
    moved = copy(out, tmp_path / "moved")
    engine = sys.modules["jaxgd.engine"]
    computed = []
    real_chunk = engine.Engine.run_chunk
    monkeypatch.setattr(engine.Engine, "run_chunk", lambda *a: computed.append(1) or
                        real_chunk(*a))
    got = run(moved)
    assert len(computed) == 2
    pd.testing.assert_frame_equal(got.table, sw.table)
    monkeypatch.undo()

    def denied(src, dst, *a, **k):
        if str(dst).endswith(".png"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", denied)
    assert main(["plot", str(moved), "--out", str(tmp_path / "figs")]) == 2
    line = one_line(capsys)
    assert str(tmp_path / "figs") in line and "Permission denied" in line


# ----------------------------------------------------------------------------- store alone


def test_store_module_imports_without_jax():
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('s', "
            f"{str(ROOT / 'jaxgd' / 'store.py')!r}); m = importlib.util.module_from_spec(s); "
            "s.loader.exec_module(m); assert 'jax' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_checksum_covers_dtype_and_shape():
    a = {"x": np.zeros(4, np.float32)}
    assert store_mod.checksum(a) != store_mod.checksum({"x": np.zeros(4, np.int32)})
    assert store_mod.checksum(a) != store_mod.checksum({"x": np.zeros((2, 2), np.float32)})
    assert store_mod.checksum(a) != store_mod.checksum({"y": np.zeros(4, np.float32)})
    assert store_mod.checksum(a) == store_mod.checksum({"x": np.zeros(4, np.float32)})


def test_a_format_1_folder_is_named_as_such(saved, tmp_path):
    _, out = saved
    run_dir = copy(out, tmp_path / "old")
    (run_dir / "result.json").write_text('{"format": 1, "folds": null, "configs": [], "n": 0}')
    (run_dir / "sweep.json").write_text('{"format": 1, "fingerprint": "abc"}')
    with pytest.raises(ValueError, match=r"result\.json is from an older jaxgd \(format 1"):
        jaxgd.load(run_dir)
    with pytest.raises(ValueError, match=r"sweep\.json is from an older jaxgd \(format 1"):
        run(run_dir)


def test_a_forged_but_consistent_folder_is_still_checked(saved, tmp_path):
    """Checksums guard against damage, not forgery: a forger can recompute them. What
    jaxgd reads is still validated, so the worst outcome is a clear error."""
    _, out = saved
    run_dir = copy(out, tmp_path / "f")
    table = pd.read_csv(run_dir / "table.csv").drop(columns=["stop_reason"])
    raw = table.to_csv(index=False).encode()
    (run_dir / "table.csv").write_bytes(raw)
    doc = json.loads((run_dir / "result.json").read_text())
    doc["files"]["table.csv"] = hashlib.sha256(raw).hexdigest()
    doc["folds"] = "os.system"
    doc.pop("checksum")
    types = doc["dtypes"]["table.csv"]
    doc["dtypes"]["table.csv"] = [t for t in types if t[0] != "stop_reason"]
    (run_dir / "result.json").write_bytes(store_mod._sealed_json(doc))
    with pytest.raises(ValueError, match=r"damaged: .*table\.csv lacks \['stop_reason'\]"):
        jaxgd.load(run_dir)
    # column types that do not fit the columns, or are not a table's, are refused
    for bad in (types, [[c, "datetime64[ns]" if c == "final_loss" else t] for c, t in types]):
        doc["dtypes"]["table.csv"] = bad
        (run_dir / "result.json").write_bytes(store_mod._sealed_json(doc))
        with pytest.raises(ValueError, match=r"table\.csv does not match its column types"):
            jaxgd.load(run_dir)


# ----------------------------------------------------------------------------- round trips


def _same_frame(got, want):
    assert got.equals(want)
    pd.testing.assert_frame_equal(got, want, check_dtype=True, check_exact=True)
    assert list(got.dtypes.astype(str)) == list(want.dtypes.astype(str))


def _line_init(key, hidden):
    return jaxgd.models.mlp(2, (hidden,)).init(key)


_MLP_APPLY = jaxgd.models.mlp(2, (1,)).apply


def _mlp_loss(p, b):
    return jnp.mean((_MLP_APPLY(p, b[0])[:, 0] - b[1]) ** 2)


def _research_loss(p, b, *, key, state, train):
    keep = jax.random.bernoulli(key, 0.9, b[0].shape) if train else 1.0
    err = (b[0] * keep) @ p["w"] + p["b"] - b[1]
    return jnp.mean(err ** 2), state + 1.0, {"mae": jnp.mean(jnp.abs(err))}


ROUND_TRIPS = {
    "sweep": lambda: run(grid={"learning_rate": [0.05, 0.1], "batch_size": [4, None],
                               "optimizer": ["sgd", "adam"]}, chunk_size=None),
    "folds": lambda: run(grid={"learning_rate": [0.05, 0.1]}, folds=3),
    "halving": lambda: run(grid={"learning_rate": [0.01, 0.05, 0.1, 0.2]}, epochs=4,
                           search=jaxgd.search.Halving(eta=2)),
    "hyperband": lambda: run(grid={"learning_rate": [0.01, 0.05, 0.1, 0.2]}, epochs=9,
                             search=jaxgd.search.hyperband(eta=3)),
    "pbt": lambda: run(grid={"learning_rate": [0.01, 0.05, 0.1, 0.2]}, epochs=6,
                       search=jaxgd.search.PBT(interval=2, quantile=0.25)),
    "shape axes": lambda: run(loss=_mlp_loss, params=None, init=_line_init,
                              grid={"hidden": [2, 4], "learning_rate": [0.05, 0.1]}),
    "keys and state": lambda: run(loss=_research_loss, state=jnp.zeros(()), val_data=(X, Y)),
}


@pytest.mark.parametrize("kind", list(ROUND_TRIPS))
def test_a_loaded_table_equals_the_saved_one(kind, tmp_path):
    """Every column, its dtype (float32 losses stay float32, string columns stay str),
    the column order and the index come back from table.csv as the sweep gave them."""
    sw = ROUND_TRIPS[kind]()
    sw.save(tmp_path / "r")
    got = jaxgd.load(tmp_path / "r")
    _same_frame(got.table, sw.table)
    assert got.table.equals(sw.table)
    if kind == "folds":
        _same_frame(got.cv_table(), sw.cv_table())
    if kind == "pbt":
        assert any(c.startswith("final_") and c[6:] in sw.axes() for c in sw.table)
        _same_frame(got.lineage, sw.lineage)
    if kind == "keys and state":
        assert "final_val_mae" in sw.table


def test_a_sweeps_own_folder_and_concatenated_parts_round_trip(tmp_path):
    """The folder ``sweep(out=)`` writes, and ``SweepResult.concat`` of ``only=`` parts
    whose histories differ (a penalty only in one part: ``objective``), saved and loaded."""
    cfgs = [{"learning_rate": 0.1}, {"learning_rate": 0.2, "batch_size": 4},
            {"learning_rate": 0.1, "l2": 0.1}]
    full = run(tmp_path / "full", configs=cfgs, grid=None)
    _same_frame(jaxgd.load(tmp_path / "full").table, full.table)
    parts = [run(configs=cfgs, grid=None, only=o) for o in ([0, 1], [2])]
    joined = jaxgd.SweepResult.concat(parts)
    assert "objective" not in parts[0].history
    np.testing.assert_array_equal(joined.history["objective"][:2], np.nan)
    np.testing.assert_allclose(joined.history["objective"][2], full.history["objective"][2],
                               rtol=1e-6)
    joined.save(tmp_path / "joined")
    _same_frame(jaxgd.load(tmp_path / "joined").table, joined.table)
    _same_frame(joined.table, full.table)
