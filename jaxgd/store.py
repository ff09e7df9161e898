"""A sweep's output folder: atomic files, a lock, and finished chunks kept for resuming.

Layout of ``out/``::

    sweep.json        what the folder holds (fingerprint of the sweep), written first
    chunks/*.npz      one file per finished chunk (kept: a re-run loads instead of recomputing)
    table.csv         the results table           } written at the end, each atomically
    history.npz       [config, epoch] arrays      }
    params.npz        stacked parameters          }
    .lock             the pid of the process writing the folder

Every file is written to a temporary name in the same folder and renamed, so a killed
process leaves either the old file or the new one, never half of one. Only process 0 of
a multi-process run writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file and ``os.replace``.

    The file gets the usual permissions (0666 less the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """The output folder of one sweep (see the module docstring)."""

    def __init__(self, path: Path, fingerprint: str, writer: bool):
        self.path = path
        self.fingerprint = fingerprint
        self.writer = writer
        self.locked = False
        self.done: set[str] = set()

    @classmethod
    def open(cls, out: Any, fingerprint: str) -> RunStore:
        path = Path(out)
        writer = jax.process_index() == 0
        store = cls(path, fingerprint, writer)
        if path.exists() and not path.is_dir():
            raise ValueError(f"out={str(out)!r} exists and is not a folder")
        if writer:
            try:
                (path / "chunks").mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(f"out={str(out)!r} cannot be created: {e.strerror}") from e
            if not os.access(path, os.W_OK):
                raise ValueError(f"out={str(out)!r} is not writable")
            store._lock()
            manifest = path / "sweep.json"
            if manifest.exists():
                try:
                    old = json.loads(manifest.read_text())
                except (OSError, ValueError):
                    old = {}
                if old.get("fingerprint") != fingerprint:
                    store._unlock()
                    raise ValueError(
                        f"out={str(out)!r} holds the results of a different sweep "
                        f"(fingerprint {old.get('fingerprint')!r}, this one {fingerprint!r}); "
                        "choose another folder or delete it")
            else:
                atomic_write_bytes(manifest, json.dumps(
                    {"format": FORMAT_VERSION, "fingerprint": fingerprint}).encode())
        chunk_dir = path / "chunks"
        if chunk_dir.is_dir():
            store.done = {p.stem for p in chunk_dir.glob("*.npz")}
        return store

    # -- lock
    def _lock(self) -> None:
        lock = self.path / ".lock"
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid_s, host = lock.read_text().split()[:2]
                    pid = int(pid_s)
                except (OSError, ValueError):
                    pid, host = -1, ""
                if host == socket.gethostname() and pid > 0 and not _pid_alive(pid):
                    with contextlib.suppress(OSError):
                        lock.unlink()  # stale lock of a killed run
                    continue
                raise RuntimeError(
                    f"out={str(self.path)!r} is in use by another run (pid {pid} on "
                    f"{host or '?'}); wait for it, or delete {lock} if that run is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.locked = True
            return
        raise RuntimeError(f"could not lock {lock}")

    def _unlock(self) -> None:
        if self.locked:
            with contextlib.suppress(OSError):
                (self.path / ".lock").unlink()
            self.locked = False

    def release_lock_on_error(self) -> None:
        """Called in ``finally``: drop the lock unless the final save still needs it."""
        import sys

        if sys.exc_info()[0] is not None:
            self._unlock()

    def close(self) -> None:
        self._unlock()

    # -- chunks
    def load_chunk(self, tag: str, treedef) -> dict[str, Any] | None:
        if tag not in self.done:
            return None
        path = self.path / "chunks" / f"{tag}.npz"
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
            return _unflatten_chunk(arrays, treedef)
        except Exception:  # noqa: BLE001  (BadZipFile, EOFError, KeyError, ...)
            return None  # unreadable or incomplete: recompute it

    def save_chunk(self, tag: str, chunk: dict[str, Any]) -> None:
        if not self.writer:
            return
        atomic_savez(self.path / "chunks" / f"{tag}.npz", _flatten_chunk(chunk))


def _flatten_chunk(chunk: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for i, leaf in enumerate(jax.tree.leaves(chunk["params"])):
        out[f"params/{i}"] = np.asarray(leaf)
    for k, v in chunk["history"].items():
        out[f"history/{k}"] = np.asarray(v)
    for k, v in chunk.items():
        if k not in ("params", "history"):
            out[k] = np.asarray(v)
    return out


def _unflatten_chunk(arrays: dict[str, np.ndarray], treedef) -> dict[str, Any]:
    leaves = [arrays[f"params/{i}"] for i in range(treedef.num_leaves)]
    chunk: dict[str, Any] = {"params": jax.tree.unflatten(treedef, leaves), "history": {}}
    for k, v in arrays.items():
        if k.startswith("history/"):
            chunk["history"][k.split("/", 1)[1]] = v
        elif not k.startswith("params/"):
            chunk[k] = v
    return chunk


def dump_treedef(treedef) -> bytes:
    return pickle.dumps(treedef)


def load_treedef(payload: bytes):
    return pickle.loads(payload)
