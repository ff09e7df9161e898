"""The run folder: its layout, its file formats, its lock. The one module that reads and
writes them (``sweep(out=...)``, :meth:`SweepResult.save`, :func:`jaxgd.load`).

Layout of a run folder::

    sweep.json        {"format", "fingerprint", "checksum"}: which sweep (or fit) the
                      folder holds, written first by sweep(out=...) / fit(out=...)
    .lock             locked with flock(2) by the process writing the folder (holds its
                      pid for messages only); the OS drops the lock when that process ends
    chunks/TAG.npz    one file per finished chunk, kept so that a re-run loads it
                      (a fit's: chunks/fit.npz; its final files are a one-row sweep's)
    chunks/TAG.ckpt-a.npz, TAG.ckpt-b.npz
                      with checkpoint_every: the running chunk's program state and history
                      so far, the newer replacing the older (removed when the chunk ends)
    table.csv         the results table (its column dtypes in    } final files, written
                      result.json)                               }
    history.npz       [config, evaluation] arrays                } at the end, each
    params.npz        stacked parameters (the params format)     } atomically;
                      with several parameter shapes (shape axes), one stacked tree
                      per shape: see :func:`param_groups_arrays`
    result.json       configs, folds, and the checksum of each final file: written last

Folders hold data, never code. Nothing is pickled: ``.npz`` files are read with
``allow_pickle=False``, a parameter tree's structure is stored as JSON key paths.
Every ``.npz`` holds a ``__jaxgd__`` entry (uint8 JSON bytes) with the sweep's
fingerprint and a SHA-256 checksum of its arrays (names, dtypes, shapes, bytes);
``result.json`` and ``sweep.json`` carry a checksum of their own content, and
``result.json`` the checksums of ``table.csv`` and both final ``.npz`` files. A chunk that
does not match is recomputed; a final file that does not match is refused.

Files are written to a temporary name in the same folder and renamed, so a killed
process leaves the old file or the new one, never half of one. Nothing inside a run
folder is read or written through a symbolic link. Only process 0 of a multi-process
run writes. This module imports JAX lazily (the lock needs only the standard library).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 2
META = "__jaxgd__"  # the npz entry holding a file's JSON metadata
PARAMS_PREFIX = "params/"
STATE_PREFIX = "state/"  # the model state (a loss's non-trainable state), same format
FINAL_FILES = ("table.csv", "history.npz", "params.npz", "result.json")
_MAX_META = 64 << 20  # a metadata entry larger than this is not ours


class IntegrityError(ValueError):
    """A file of a run folder is damaged or belongs to another sweep."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()


# ----------------------------------------------------------------------------- raw files


def _os_error(e: OSError, verb: str, path: Path) -> OSError:
    """The same OSError (errno kept), its message naming the path: one line for the CLI."""
    return OSError(e.errno, f"cannot {verb} {path}: {e.strerror or e}")


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file and ``os.replace``.

    The file gets the usual permissions (0666 less the umask), not ``mkstemp``'s 0600.
    ``os.replace`` onto a symbolic link replaces the link, never its target. An OSError
    (disk full, read-only, no permission) names ``path`` and leaves no temporary behind.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _os_error(e, "write", path) from e
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _os_error(e, "write", path) from e
        raise


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The bytes of ``path``, refusing a symbolic link (``O_NOFOLLOW``) and non-files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise IntegrityError(f"{path} is a symbolic link: refused (jaxgd never follows "
                                 "links inside a run folder)") from None
        if isinstance(e, FileNotFoundError):
            raise
        raise _os_error(e, "read", path) from e
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise IntegrityError(f"{path} is not a regular file")
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise IntegrityError(f"{path} is larger than {limit} bytes: not a jaxgd file")
    return data


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------------- checksums


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        if name == META:
            continue
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


def _json_checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _sealed_json(doc: dict[str, Any], default=None) -> bytes:
    """``doc`` with a ``checksum`` of its own content, as JSON bytes."""
    doc = json.loads(json.dumps(doc, default=default))  # plain JSON types from here on
    doc["checksum"] = _json_checksum(doc)
    return json.dumps(doc, indent=1).encode()


def read_sealed_json(path: Path) -> dict[str, Any]:
    """A JSON file written by :func:`_sealed_json`; IntegrityError if it does not match."""
    raw = read_bytes(path, _MAX_META)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise IntegrityError(f"{path} is damaged (not JSON: {e})") from None
    if isinstance(doc, dict) and "checksum" not in doc and doc.get("format") == 1:
        raise IntegrityError(f"{path} is from an older jaxgd (format 1, which stored pickles); "
                             f"this one reads format {FORMAT_VERSION}: run the sweep again")
    if not isinstance(doc, dict) or doc.get("checksum") != _json_checksum(doc):
        raise IntegrityError(f"{path} is damaged (its checksum does not match its content)")
    return doc


def write_npz(path: Path, arrays: dict[str, np.ndarray], fingerprint: str,
              **meta: Any) -> str:
    """Write ``arrays`` and a ``__jaxgd__`` entry (format, fingerprint, checksum, ``meta``).

    Returns the checksum. Object arrays are refused (they would need pickle).
    """
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, a in arrays.items():
        if a.dtype.hasobject:
            raise TypeError(f"{path}: array {k!r} has dtype object; only numeric arrays "
                            "are stored")
    digest = checksum(arrays)
    doc = {"format": FORMAT_VERSION, "fingerprint": fingerprint, "checksum": digest, **meta}
    arrays[META] = np.frombuffer(json.dumps(doc).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return digest


def read_npz(path: Path, fingerprint: str | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and metadata of a file written by :func:`write_npz`, verified.

    Raises IntegrityError when the file is not one of ours, is damaged, its checksum does
    not match its arrays, or (with ``fingerprint``) it belongs to another sweep.
    """
    raw = read_bytes(path)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - BadZipFile, pickled objects refused, ...
        raise IntegrityError(f"{path} is damaged ({type(e).__name__}: {e})") from None
    m = arrays.pop(META, None)
    if m is None or m.dtype != np.uint8 or m.ndim != 1 or m.size > _MAX_META:
        raise IntegrityError(f"{path} is not a jaxgd file (no valid {META} entry)")
    try:
        meta = json.loads(m.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("checksum"), str):
        raise IntegrityError(f"{path} is damaged (its {META} entry is not valid)")
    if meta.get("format") != FORMAT_VERSION:
        raise IntegrityError(f"{path} has format {meta.get('format')!r}; this jaxgd reads "
                             f"format {FORMAT_VERSION}")
    if checksum(arrays) != meta["checksum"]:
        raise IntegrityError(f"{path} is damaged (its checksum does not match its arrays)")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise IntegrityError(f"{path} belongs to another sweep (fingerprint "
                             f"{meta.get('fingerprint')!r}, expected {fingerprint!r})")
    return arrays, meta


# ----------------------------------------------------------------------------- pytrees


def _entry(k: Any) -> list[Any]:
    """One key-path entry as JSON: [kind, value]."""
    import jax

    tu = jax.tree_util
    if isinstance(k, tu.DictKey):
        key = k.key
        if isinstance(key, bool) or not isinstance(key, str | int):
            return ["key", str(key)]
        return ["key", key]
    if isinstance(k, tu.SequenceKey):
        return ["index", int(k.idx)]
    if isinstance(k, tu.GetAttrKey):
        return ["attr", str(k.name)]
    if isinstance(k, tu.FlattenedIndexKey):
        return ["index", int(k.key)]
    return ["key", str(k)]


def tree_spec(tree: Any) -> list[list[list[Any]]]:
    """The key path of every stored leaf of ``tree`` (flatten order) as JSON-able lists."""
    return [[_entry(k) for k in path] for path, _ in _stored_leaves(tree)]


def _stored_leaves(tree: Any) -> list[tuple[Any, Any]]:
    """(path, leaf) of the leaves that are stored: all of a dict/list/tuple tree; of a
    model object (e.g. an equinox Module), its arrays (functions and other held leaves
    are code: ``load(like=...)`` takes them from the template)."""
    import jax

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    if tree is None or isinstance(tree, (dict, list, tuple)):
        return flat
    return [(p, x) for p, x in flat if isinstance(x, np.ndarray | jax.Array)]


def _path_str(path: list[list[Any]]) -> str:
    out = ""
    for kind, v in path:
        out += f".{v}" if kind == "attr" else f"[{v!r}]"
    return out or "<root>"


def _check_spec(spec: Any, n_leaves: int, where: Path) -> list[list[list[Any]]]:
    ok = isinstance(spec, list) and len(spec) == n_leaves
    for path in spec if ok else ():
        if not (isinstance(path, list) and len(path) <= 64 and all(
                isinstance(e, list) and len(e) == 2 and e[0] in ("key", "index", "attr")
                and (isinstance(e[1], str) or (isinstance(e[1], int)
                                               and not isinstance(e[1], bool)))
                and (e[0] != "index" or (isinstance(e[1], int) and 0 <= e[1] < 1 << 30))
                for e in path)):
            ok = False
            break
    if not ok:
        raise IntegrityError(f"{where} is damaged (its tree description is not valid)")
    return spec


def _nest(items: list[tuple[list[list[Any]], Any]], where: Path) -> Any:
    """Nested dicts/lists from (key path, leaf) pairs."""
    if len(items) == 1 and not items[0][0]:
        return items[0][1]
    if any(not p for p, _ in items):
        raise IntegrityError(f"{where} is damaged (a leaf path is a prefix of another)")
    groups: dict[Any, list] = {}
    kinds = set()
    for path, leaf in items:
        kinds.add(path[0][0])
        groups.setdefault((path[0][0], path[0][1]), []).append((path[1:], leaf))
    if kinds == {"index"}:
        idx = sorted(k[1] for k in groups)
        if idx != list(range(len(idx))):
            raise IntegrityError(f"{where} is damaged (list indices {idx[:5]}... are not 0..n)")
        return [_nest(groups[("index", i)], where) for i in idx]
    return {k[1]: _nest(v, where) for k, v in groups.items()}


def params_arrays(params: Any, prefix: str = PARAMS_PREFIX
                  ) -> tuple[dict[str, np.ndarray], list]:
    """The params format: ``params/0..n-1`` leaf arrays, and the tree's key paths (the
    model state: ``state/0..``)."""

    leaves = [x for _, x in _stored_leaves(params)]
    return ({f"{prefix}{i}": np.asarray(x) for i, x in enumerate(leaves)},
            tree_spec(params))


def params_from_arrays(arrays: dict[str, np.ndarray], spec: Any, where: Path,
                       like: Any = None, stacked: bool = True,
                       prefix: str = PARAMS_PREFIX) -> Any:
    """Rebuild parameters from the params format: nested dicts/lists by default, or the
    pytree type of ``like`` (one configuration's parameters, or stacked ones)."""
    import jax

    n = sum(1 for k in arrays if k.startswith(prefix))
    try:
        leaves = [arrays[f"{prefix}{i}"] for i in range(n)]
    except KeyError:
        raise IntegrityError(f"{where} is damaged (parameter leaves are not numbered "
                             "0..n-1)") from None
    spec = _check_spec(spec, n, where)
    if like is None:
        if not leaves:
            return {}
        return _nest(list(zip(spec, leaves, strict=True)), where)
    full, treedef = jax.tree_util.tree_flatten_with_path(like)
    flat = _stored_leaves(like)
    stored_ids = {id(x) for _, x in flat}
    if len(flat) != n:
        raise ValueError(f"like= has {len(flat)} leaves but {where} holds {n} parameter "
                         f"arrays ({', '.join(_path_str(p) for p in spec[:4])}"
                         f"{', ...' if n > 4 else ''})")
    for (path, tl), stored, sl in zip(flat, spec, leaves, strict=True):
        mine = [_entry(k) for k in path]
        tshape = tuple(np.shape(tl))
        shape_ok = tshape == sl.shape[1:] or tshape == sl.shape if stacked else tshape == sl.shape
        if mine != stored or not shape_ok:
            raise ValueError(
                f"like= does not match {where}: leaf {_path_str(mine)} of shape {tshape} "
                f"vs stored {_path_str(stored)} of shape {sl.shape}"
                + (" (with a leading configuration axis)" if stacked else ""))
    it = iter(leaves)
    return jax.tree.unflatten(treedef, [next(it) if id(x) in stored_ids else x
                                        for _, x in full])


def param_groups_arrays(groups: list[Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The params format of a result (``(arrays, meta)`` for ``params.npz``).

    One parameter shape: ``params/0..n-1`` and ``meta = {"tree": key paths}``, as an
    ordinary stacked tree. Several (a sweep over shape axes): the leaves of every group
    numbered on (``params/0..``, group after group), ``rows/K`` the table positions of
    group K, and ``meta = {"groups": [{"tree": key paths, "leaves": count}, ...]}``.
    """
    if len(groups) == 1:
        arrays, spec = params_arrays(groups[0].params)
        return arrays, {"tree": spec}
    arrays: dict[str, np.ndarray] = {}
    desc = []
    for k, g in enumerate(groups):
        a, spec = params_arrays(g.params)
        base = sum(d["leaves"] for d in desc)
        arrays.update({f"{PARAMS_PREFIX}{base + i}": a[f"{PARAMS_PREFIX}{i}"]
                       for i in range(len(a))})
        arrays[f"rows/{k}"] = np.asarray(g.rows, np.int64)
        desc.append({"tree": spec, "leaves": len(a)})
    return arrays, {"groups": desc}


def param_groups_from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any], n: int,
                             configs: list[Any], where: Path, like: Any = None
                             ) -> list[tuple[np.ndarray, Any]]:
    """``(rows, stacked params)`` per parameter shape, checked against a table of ``n``
    rows. ``like``: a template (one shape only) or a function ``like(config) -> template``
    called with each group's first configuration."""
    import functools
    import types

    fn_like = isinstance(like, types.FunctionType | types.MethodType | functools.partial)
    desc = meta.get("groups")
    if desc is None:
        tmpl = like(configs[0]) if fn_like and configs else like
        params = params_from_arrays(arrays, meta.get("tree"), where, like=tmpl)
        leaves = [v for k, v in arrays.items() if k.startswith(PARAMS_PREFIX)]
        if any(v.ndim == 0 or len(v) != n for v in leaves):
            raise IntegrityError(f"{where} is damaged: parameter and table lengths differ")
        return [(np.arange(n, dtype=np.int64), params)]
    if not isinstance(desc, list) or not all(
            isinstance(d, dict) and isinstance(d.get("leaves"), int) for d in desc):
        raise IntegrityError(f"{where} is damaged (its parameter groups)")
    if like is not None and not fn_like:
        raise ValueError(f"{where} holds {len(desc)} parameter shapes: give like= a function "
                         "of a configuration returning that configuration's template, e.g. "
                         "like=lambda c: init(key, hidden=c['hidden'])")
    out, base, seen = [], 0, []
    for k, d in enumerate(desc):
        rows = arrays.get(f"rows/{k}")
        if rows is None or rows.ndim != 1 or rows.dtype.kind not in "iu" or not len(rows):
            raise IntegrityError(f"{where} is damaged (rows of parameter group {k})")
        if rows.min() < 0 or rows.max() >= n:
            raise IntegrityError(f"{where} is damaged (rows of parameter group {k})")
        sub = {}
        for i in range(d["leaves"]):
            key = f"{PARAMS_PREFIX}{base + i}"
            if key not in arrays:
                raise IntegrityError(f"{where} is damaged (parameter leaves are not "
                                     "numbered 0..n-1)")
            sub[f"{PARAMS_PREFIX}{i}"] = arrays[key]
            if arrays[key].ndim == 0 or len(arrays[key]) != len(rows):
                raise IntegrityError(f"{where} is damaged: parameter and row counts differ")
        base += d["leaves"]
        tmpl = like(configs[int(rows[0])]) if fn_like else None
        out.append((rows.astype(np.int64), params_from_arrays(sub, d.get("tree"), where,
                                                              like=tmpl)))
        seen.append(rows)
    extra = sum(1 for key in arrays if key.startswith(PARAMS_PREFIX)) - base
    allrows = np.sort(np.concatenate(seen))
    if extra or not np.array_equal(allrows, np.arange(n)):
        raise IntegrityError(f"{where} is damaged (parameter groups do not cover the table)")
    return out


# ----------------------------------------------------------------------------- the folder


def _leftover(path: Path, name: str) -> bool:
    """What a killed run may leave before sweep.json exists: the lock file, temporaries,
    an empty chunks folder."""
    if name == ".lock" or (name.startswith(".") and name.endswith(".tmp")):
        return True
    if name == "chunks":
        p = path / name
        return not _is_link(p) and p.is_dir() and not any(p.iterdir())
    return False


def check_folder(path: Path, arg: str, marker: tuple[str, ...]) -> None:
    """Refuse a folder that is not ours: it exists, holds files, and none of ``marker``."""
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{arg}={str(path)!r} exists and is not a folder")
    for name in ("chunks", ".lock", "sweep.json", *FINAL_FILES, "lineage.csv"):
        if _is_link(path / name):
            raise ValueError(f"{arg}={str(path)!r}: {path / name} is a symbolic link: refused "
                             "(jaxgd never follows links inside a run folder)")
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise _os_error(e, "read", path) from e
    if any(m in names for m in marker):
        return
    foreign = [n for n in names if not _leftover(path, n)]
    if foreign:
        raise ValueError(
            f"{arg}={str(path)!r} holds files that jaxgd did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}) and no {marker[0]}: choose a new or "
            "empty folder")


class RunStore:
    """An open run folder: locked by this process (when it writes) until :meth:`close`."""

    def __init__(self, path: Path, fingerprint: str, writer: bool):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.writer = writer
        self._fd: int | None = None
        self.done: set[str] = set()
        self.what = "sweep"  # what the folder holds, for messages

    @property
    def locked(self) -> bool:
        return self._fd is not None

    @classmethod
    def open(cls, out: Any, fingerprint: str, writer: bool | None = None,
             what: str = "sweep") -> RunStore:
        """The folder of ``sweep(out=out)`` (or ``fit``'s, ``what="run"``): created, locked,
        tied to ``fingerprint``."""
        if isinstance(out, bool) or not isinstance(out, str | os.PathLike):
            raise TypeError(f"out={out!r} must be a folder path (str or pathlib.Path)")
        if writer is None:
            import jax

            writer = jax.process_index() == 0
        path = Path(out)
        store = cls(path, fingerprint, writer)
        store.what = what
        if writer:
            check_folder(path, "out", ("sweep.json",))
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(f"out={str(out)!r} cannot be created: {e.strerror}") from e
            store.lock("out")
            try:
                check_folder(path, "out", ("sweep.json",))  # again, now that we hold it
                store._bind()
            except BaseException:
                store.close()
                raise
        chunk_dir = path / "chunks"
        if not _is_link(chunk_dir) and chunk_dir.is_dir():
            store.done = {p.stem for p in chunk_dir.glob("*.npz")}
        return store

    def _bind(self) -> None:
        manifest = self.path / "sweep.json"
        if manifest.exists() or _is_link(manifest):
            try:
                old = read_sealed_json(manifest)
            except IntegrityError as e:
                raise ValueError(f"out={str(self.path)!r}: {e}; delete the folder or choose "
                                 "another") from None
            if old.get("fingerprint") != self.fingerprint:
                raise ValueError(
                    f"out={str(self.path)!r} holds the results of a different {self.what} "
                    f"(fingerprint {old.get('fingerprint')!r}, this one {self.fingerprint!r}); "
                    "choose another folder or delete it")
        else:
            atomic_write_bytes(manifest, _sealed_json(
                {"format": FORMAT_VERSION, "fingerprint": self.fingerprint}))
        chunks = self.path / "chunks"
        if _is_link(chunks):
            raise ValueError(f"out={str(self.path)!r}: {chunks} is a symbolic link: refused "
                             "(jaxgd never follows links inside a run folder)")
        try:
            chunks.mkdir(exist_ok=True)
        except OSError as e:
            raise _os_error(e, "create", chunks) from e

    # -- the lock
    def lock(self, arg: str = "out") -> None:
        """Take the folder's lock, ``flock(2)`` on ``.lock``: held until :meth:`close` or
        the end of this process, whichever comes first; never waits."""
        import fcntl

        lock = self.path / ".lock"
        for _ in range(100):
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise ValueError(f"{arg}={str(self.path)!r}: {lock} is a symbolic link: "
                                     "refused") from None
                raise _os_error(e, "lock", lock) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = b""
                with contextlib.suppress(OSError):
                    holder = os.pread(fd, 200, 0)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise _os_error(e, "lock", lock) from e
                parts = holder.decode("utf-8", "replace").split()
                who = f"pid {parts[0]} on {parts[1]}" if len(parts) >= 2 else "pid ?"
                raise RuntimeError(f"{arg}={str(self.path)!r} is in use by another run ({who}); "
                                   f"wait for it to finish ({lock} is locked)") from None
            # the previous holder may have removed the file between our open and flock:
            # then we hold a lock on a name nobody else sees; start again
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(lock))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            self._fd = fd
            return
        raise RuntimeError(f"could not lock {lock}")

    def close(self) -> None:
        """Drop the lock (removing the lock file first, while still holding it)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path / ".lock")
            os.close(self._fd)
            self._fd = None

    def release_lock_on_error(self) -> None:
        """Called in ``finally``: drop the lock unless the final save still needs it."""
        import sys

        if sys.exc_info()[0] is not None:
            self.close()

    # -- chunks
    def load_chunk(self, tag: str, treedef, state_treedef=None) -> dict[str, Any] | None:
        """A finished chunk of this sweep, or None (missing, damaged, another sweep's, or
        not shaped like ``treedef``: recompute it)."""
        import jax

        if tag not in self.done:
            return None
        path = self.path / "chunks" / f"{tag}.npz"
        try:
            arrays, meta = read_npz(path, self.fingerprint)
            if meta.get("kind") != "chunk" or meta.get("tag") != tag:
                return None
            n = treedef.num_leaves
            leaves = [arrays.pop(f"{PARAMS_PREFIX}{i}") for i in range(n)]
            if any(k.startswith(PARAMS_PREFIX) for k in arrays):
                return None
            chunk: dict[str, Any] = {"params": jax.tree.unflatten(treedef, leaves),
                                     "history": {}, "state": None}
            if state_treedef is not None:
                m = state_treedef.num_leaves
                chunk["state"] = jax.tree.unflatten(
                    state_treedef, [arrays.pop(f"{STATE_PREFIX}{i}") for i in range(m)])
            if any(k.startswith(STATE_PREFIX) for k in arrays):
                return None
            for k, v in arrays.items():
                if k.startswith("history/"):
                    chunk["history"][k.split("/", 1)[1]] = v
                else:
                    chunk[k] = v
            return chunk
        except (IntegrityError, KeyError, ValueError, FileNotFoundError):
            return None

    def save_chunk(self, tag: str, chunk: dict[str, Any]) -> None:
        if not self.writer:
            return
        arrays, spec = params_arrays(chunk["params"])
        if chunk.get("state") is not None:
            arrays.update(params_arrays(chunk["state"], STATE_PREFIX)[0])
        for k, v in chunk["history"].items():
            arrays[f"history/{k}"] = np.asarray(v)
        for k, v in chunk.items():
            if k not in ("params", "history", "state"):
                arrays[k] = np.asarray(v)
        write_npz(self.path / "chunks" / f"{tag}.npz", arrays, self.fingerprint,
                  kind="chunk", tag=tag, tree=spec)


    # -- checkpoints inside a running chunk (checkpoint_every)
    def checkpoint_paths(self, tag: str) -> list[Path]:
        """The two files a chunk's checkpoints alternate between (the newer one replaces
        the older, so a damaged newest file leaves the previous checkpoint)."""
        return [self.path / "chunks" / f"{tag}.ckpt-{slot}.npz" for slot in "ab"]

    def save_checkpoint(self, tag: str, arrays: dict[str, np.ndarray], at: int) -> None:
        """The running chunk ``tag``'s program state and history at evaluation ``at``,
        written over the older of its two checkpoint files."""
        if not self.writer:
            return
        have = [(c[1]["at"], p) for p in self.checkpoint_paths(tag)
                if (c := self._read_checkpoint(p, tag)) is not None]
        free = [p for p in self.checkpoint_paths(tag) if p not in {q for _, q in have}]
        target = free[0] if free else min(have)[1]
        write_npz(target, arrays, self.fingerprint, kind="checkpoint", tag=tag, at=int(at))

    def _read_checkpoint(self, path: Path, tag: str):
        try:
            arrays, meta = read_npz(path, self.fingerprint)
        except (IntegrityError, OSError, ValueError):
            return None
        ok = (meta.get("kind") == "checkpoint" and meta.get("tag") == tag
              and isinstance(meta.get("at"), int))
        return (arrays, meta) if ok else None

    def load_checkpoints(self, tag: str) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
        """The valid checkpoints of chunk ``tag``, newest (largest ``at``) first; damaged
        files, partial files and another sweep's are left out."""
        got = [c for p in self.checkpoint_paths(tag)
               if not _is_link(p) and (c := self._read_checkpoint(p, tag)) is not None]
        return sorted(got, key=lambda c: -c[1]["at"])

    def drop_checkpoints(self, tag: str) -> None:
        """Remove chunk ``tag``'s checkpoints (once the chunk itself is saved)."""
        if self.writer:
            for p in self.checkpoint_paths(tag):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)

    def save_search(self, arrays: dict[str, np.ndarray], **meta: Any) -> None:
        """An adaptive search's state at a rung / interval boundary (replaced at each)."""
        if self.writer:
            write_npz(self.path / "chunks" / "search.npz", arrays, self.fingerprint,
                      kind="search", **meta)

    def load_search(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The last saved search boundary of this sweep, or None (none, damaged, or
        another sweep's: the search starts again)."""
        try:
            arrays, meta = read_npz(self.path / "chunks" / "search.npz", self.fingerprint)
        except (IntegrityError, OSError, ValueError):
            return None
        return (arrays, meta) if meta.get("kind") == "search" else None


# ----------------------------------------------------------------------------- results


def save_result(res: Any, path: Any, store: RunStore | None = None) -> None:
    """Write a SweepResult's final files into ``path`` (see the module docstring).

    ``result.json`` is removed first and written last: a folder whose writing was
    interrupted reads as unfinished, never as a mix of two results.
    """
    if isinstance(path, bool) or not isinstance(path, str | os.PathLike):
        raise TypeError(f"path={path!r} must be a folder path (str or pathlib.Path)")
    path = Path(path)
    fingerprint = getattr(res, "fingerprint", None)
    own = store is None
    if own:
        check_folder(path, "path", ("result.json", "sweep.json"))
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"path={str(path)!r} cannot be created: {e.strerror}") from e
        store = RunStore(path, fingerprint or "", True)
        store.lock("path")
    try:
        params, pmeta = param_groups_arrays(res.param_groups)
        state = getattr(res, "state", None)
        if state is not None:
            sarrays, sspec = params_arrays(state, STATE_PREFIX)
            params.update(sarrays)
            pmeta["state_tree"] = sspec
        history = {k: np.asarray(v) for k, v in res.history.items()}
        if not fingerprint:  # not from sweep(): tie the files together by their content
            fingerprint = "content-" + hashlib.sha256(
                (checksum(params) + checksum(history)).encode()).hexdigest()[:16]
        if own and (path / "sweep.json").exists():
            try:
                old = read_sealed_json(path / "sweep.json").get("fingerprint")
            except IntegrityError:
                old = None
            if old != fingerprint:
                raise ValueError(f"path={str(path)!r} is the run folder of another sweep "
                                 f"(fingerprint {old!r}): choose another folder")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path / "result.json")
        table = res.table.to_csv(index=False).encode()
        atomic_write_bytes(path / "table.csv", table)
        h_sum = write_npz(path / "history.npz", history, fingerprint, kind="history")
        p_sum = write_npz(path / "params.npz", params, fingerprint, kind="params", **pmeta)
        files = {"table.csv": hashlib.sha256(table).hexdigest(),
                 "history.npz": h_sum, "params.npz": p_sum}
        lineage = getattr(res, "lineage", None)
        if lineage is not None:  # PBT: the members' hyper-parameters over time
            raw = lineage.to_csv(index=False).encode()
            atomic_write_bytes(path / "lineage.csv", raw)
            files["lineage.csv"] = hashlib.sha256(raw).hexdigest()
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path / "lineage.csv")
        meta = {"format": FORMAT_VERSION, "fingerprint": fingerprint, "folds": res.folds,
                "configs": res.configs, "n": len(res.table), "files": files,
                "dtypes": {"table.csv": frame_dtypes(res.table)}}
        if getattr(res, "plans", None) is not None:  # the execution plan of each group
            meta["plans"] = list(res.plans)
        if lineage is not None:
            meta["dtypes"]["lineage.csv"] = frame_dtypes(lineage)
        if getattr(res, "loop", None) is not None:  # the execution plan (jaxgd.spec.loop_name)
            meta["loop"] = res.loop
        trials = getattr(res, "plan_trials", None)
        if trials is not None:  # the measured candidate plans (jaxgd.autoplan)
            meta["plan_trials"] = trials.to_dict(orient="records")
        atomic_write_bytes(path / "result.json", _sealed_json(meta, default=json_default))
    finally:
        store.close()


# the dtypes a stored table column may have (anything else: the folder is damaged)
_COLUMN_DTYPES = frozenset({"bool", "object", "str", "float16", "float32", "float64",
                            *(f"{k}int{b}" for k in ("", "u") for b in (8, 16, 32, 64))})


def frame_dtypes(frame: Any) -> list[list[str]]:
    """``[[column, dtype], ...]`` of a DataFrame in column order (CSV keeps neither the
    float width nor the string type: ``result.json`` keeps them for the loader)."""
    return [[str(c), str(t)] for c, t in frame.dtypes.items()]


def read_frame(raw: bytes, dtypes: Any, where: Path) -> Any:
    """The DataFrame of CSV bytes, each column cast to its stored dtype (``dtypes`` from
    :func:`frame_dtypes`; ``None`` for a folder written before dtypes were stored: as
    pandas reads them)."""
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(raw))
    except Exception as e:  # noqa: BLE001
        raise IntegrityError(f"{where} is damaged ({e})") from None
    if dtypes is None:
        return frame
    if (not isinstance(dtypes, list) or not all(
            isinstance(d, list) and len(d) == 2 and d[1] in _COLUMN_DTYPES for d in dtypes)
            or [d[0] for d in dtypes] != [str(c) for c in frame.columns]):
        raise IntegrityError(f"{where} does not match its column types in result.json")
    try:
        return frame.astype({c: t for c, (_, t) in zip(frame.columns, dtypes, strict=True)})
    except (TypeError, ValueError) as e:
        raise IntegrityError(f"{where} is damaged ({e})") from None


def json_default(v: Any) -> Any:
    """JSON for the values a configuration may hold: NumPy numbers as numbers, a function
    (an optimizer factory) by its name, ``None`` (full batch) as ``"full"``."""
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if v is None:
        return "full"
    if isinstance(v, str | int | float | bool):
        return v
    return getattr(v, "__name__", repr(v))


def load_result(path: Any, like: Any = None, state_like: Any = None) -> dict[str, Any]:
    """The verified contents of a finished run folder (see :func:`jaxgd.load`)."""
    if isinstance(path, bool) or not isinstance(path, str | os.PathLike):
        raise TypeError(f"path={path!r} must be a folder path (str or pathlib.Path)")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path={str(path)!r} does not exist")
    if not p.is_dir():
        raise ValueError(f"path={str(path)!r} is not a run folder")
    missing = [f for f in FINAL_FILES if not (p / f).exists() and not _is_link(p / f)]
    if missing:
        raise ValueError(
            f"path={str(path)!r} is not a finished run folder: missing {missing}"
            + (" (an interrupted sweep: run it again with the same out= to resume)"
               if (p / "sweep.json").exists() else ""))
    try:
        meta = read_sealed_json(p / "result.json")
        fingerprint = meta.get("fingerprint")
        files = meta.get("files")
        configs = meta.get("configs")
        if (meta.get("format") != FORMAT_VERSION or not isinstance(fingerprint, str)
                or not isinstance(files, dict) or not isinstance(configs, list)
                or not all(isinstance(c, dict) for c in configs)):
            raise IntegrityError(f"{p / 'result.json'} is not a format-{FORMAT_VERSION} "
                                 "result description")
        raw = read_bytes(p / "table.csv")
        if hashlib.sha256(raw).hexdigest() != files.get("table.csv"):
            raise IntegrityError(f"{p / 'table.csv'} does not match result.json (checksum)")
        history, hmeta = read_npz(p / "history.npz", fingerprint)
        parrays, pmeta = read_npz(p / "params.npz", fingerprint)
        for name, m in (("history.npz", hmeta), ("params.npz", pmeta)):
            if m["checksum"] != files.get(name):
                raise IntegrityError(f"{p / name} does not match result.json (checksum)")
        dtypes = meta.get("dtypes", {})
        if not isinstance(dtypes, dict):
            raise IntegrityError(f"{p / 'result.json'} is damaged (dtypes)")
        table = read_frame(raw, dtypes.get("table.csv"), p / "table.csv")
        lineage = None
        if "lineage.csv" in files:
            raw = read_bytes(p / "lineage.csv")
            if hashlib.sha256(raw).hexdigest() != files["lineage.csv"]:
                raise IntegrityError(f"{p / 'lineage.csv'} does not match result.json "
                                     "(checksum)")
            lineage = read_frame(raw, dtypes.get("lineage.csv"), p / "lineage.csv")
    except IntegrityError as e:
        raise ValueError(f"path={str(path)!r} is damaged: {e}") from None
    need = ("config", "init_loss", "final_loss", "best_loss", "best_epoch", "epochs_run",
            "steps_run", "stop_reason", "diverged")
    lacking = [c for c in need if c not in table.columns] + (
        [] if "loss" in history else ["history 'loss'"])
    folds = meta.get("folds")
    if lacking or not (folds is None or (isinstance(folds, int) and folds >= 2)):
        raise ValueError(f"path={str(path)!r} is damaged: {p / 'table.csv'} lacks {lacking}"
                         if lacking else f"path={str(path)!r} is damaged: folds={folds!r}")
    state = None
    if any(k.startswith(STATE_PREFIX) for k in parrays):
        state = params_from_arrays(parrays, pmeta.get("state_tree"), p / "params.npz",
                                   like=state_like, prefix=STATE_PREFIX)
    leaves = [v for k, v in parrays.items() if k.startswith(STATE_PREFIX)]
    if (len(table) != meta.get("n") or len(configs) != len(table)
            or any(v.ndim == 0 or len(v) != len(table) for v in [*history.values(), *leaves])):
        raise ValueError(f"path={str(path)!r} is damaged: table and history lengths differ")
    try:
        groups = param_groups_from_arrays(parrays, pmeta, len(table), configs,
                                          p / "params.npz", like=like)
    except IntegrityError as e:
        raise ValueError(f"path={str(path)!r} is damaged: {e}") from None
    return {"configs": configs, "table": table, "history": history, "param_groups": groups,
            "state": state, "folds": meta.get("folds"), "fingerprint": fingerprint,
            "lineage": lineage, "typed": "table.csv" in dtypes, "plans": _plans(meta),
            "loop": meta.get("loop"), "plan_trials": _plan_trials(meta)}


def _plans(meta: dict[str, Any]) -> list[str] | None:
    """The groups' execution plans a result.json records (None when it has none)."""
    plans = meta.get("plans")
    if plans is None:
        return None
    if not isinstance(plans, list) or not all(p in ("vmap", "map") for p in plans):
        raise ValueError(f"result.json is damaged: plans={plans!r}")
    return plans


def recorded_plan(path) -> dict[str, Any]:
    """``plans``, ``loop`` and ``plan_trials`` as the run folder's ``result.json`` records
    them (what computed the results it holds); each None when it holds none, or the
    folder no result."""
    try:
        meta = read_sealed_json(Path(path) / "result.json")
        return {"plans": _plans(meta), "loop": meta.get("loop"),
                "plan_trials": _plan_trials(meta)}
    except (OSError, IntegrityError, ValueError):
        return {"plans": None, "loop": None, "plan_trials": None}


_TRIAL_FIELDS = {"group": int, "plan": str, "loop": str, "compile_s": float, "eval_s": float,
                 "chosen": bool}


def _plan_trials(meta: dict[str, Any]) -> Any:
    """The measured candidate plans a result.json records, as a DataFrame (None when it
    has none)."""
    rows = meta.get("plan_trials")
    if rows is None:
        return None
    if not isinstance(rows, list) or not all(
            isinstance(r, dict) and set(r) == set(_TRIAL_FIELDS)
            and all(isinstance(r[k], t) or t is float and isinstance(r[k], int)
                    for k, t in _TRIAL_FIELDS.items()) for r in rows):
        raise ValueError(f"result.json is damaged: plan_trials={rows!r}")
    import pandas as pd

    return pd.DataFrame(rows, columns=list(_TRIAL_FIELDS))
