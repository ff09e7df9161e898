"""The fingerprint of a run: a digest of everything that determines its results.

A run folder (``out=``) refuses to resume a different sweep, and the processes of a
multi-process run refuse to run different sweeps, by comparing this digest.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import lossform


def run_fingerprint(cfgs, idx, base, base_hp, epochs, shuffle, drop_last, folds, fold_seed,
                    settings, data, programs=()) -> str:
    """A digest of what determines the results (to refuse resuming a different sweep).

    Covered: every configuration and option (functions by name, code digest, defaults
    and closures, see :func:`stable_repr`), the bytes of the data, validation data and
    initial parameters, each group's program digest (:func:`program_digest`: the loss's
    jaxpr, which includes every helper and global it calls), jaxgd's own source and the
    versions of jax, jaxlib and optax. Not covered: the hardware and XLA flags, and
    Python code that runs outside tracing (an optimizer factory's helpers are covered by
    name and code of the factory only).
    """
    h = hashlib.sha256()
    desc = {
        "configs": [cfgs[i] for i in idx], "base": base, "hparams": base_hp, "epochs": epochs,
        "shuffle": shuffle, "drop_last": drop_last, "folds": folds, "fold_seed": fold_seed,
        "settings": settings, "programs": list(programs), "code": code_digest(),
    }
    h.update(json.dumps(desc, sort_keys=True, default=stable_repr).encode())
    leaves = [x for leaf in jax.tree.leaves(data)
              for x in (leaf.digest_leaves() if hasattr(leaf, "digest_leaves") else [leaf])]
    for leaf in leaves:  # host-fed data: its arrays (or an iterable's first batch)
        a = np.asarray(leaf)
        h.update(str((a.shape, a.dtype)).encode())
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))  # all of it
    return h.hexdigest()[:16]


def code_digest() -> str:
    """jaxgd's own source files and the versions of what computes (cached per process)."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        import importlib.metadata as md
        from pathlib import Path

        h = hashlib.sha256()
        here = Path(__file__).resolve().parent
        for f in sorted(here.glob("*.py")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        for dist in ("jax", "jaxlib", "optax"):
            try:
                h.update(f"{dist}={md.version(dist)}".encode())
            except md.PackageNotFoundError:
                pass
        _CODE_DIGEST = h.hexdigest()[:16]
    return _CODE_DIGEST


_CODE_DIGEST: str | None = None


def program_digest(prep) -> str:
    """A digest of what a group's program computes with the user's functions: the jaxpr of
    ``loss(params, batch)`` for the data's shapes (every helper and global it calls at
    trace time shows in it), with the values of the arrays it closes over, and the same
    for ``init`` and the output of ``penalty_mask``. Computed once per group."""
    import re

    spec, params, data = prep[0], prep[1], prep[2]
    probe = data.probe() if hasattr(data, "probe") else jax.tree.map(  # host-fed: its own
        lambda a: jax.ShapeDtypeStruct((min(2, a.shape[0]),) + a.shape[1:], a.dtype), data)
    h = hashlib.sha256()

    def add_jaxpr(fn, *args):
        try:
            closed = jax.make_jaxpr(fn)(*args)
        except Exception as e:  # noqa: BLE001 - checked by prepare already; be safe
            h.update(f"untraceable {type(e).__name__}".encode())
            return
        h.update(re.sub(r" at 0x[0-9a-fA-F]+", "", str(closed.jaxpr)).encode())
        for c in closed.consts:
            h.update(stable_repr(np.asarray(c) if not (
                isinstance(c, jax.Array) and jnp.issubdtype(c.dtype, jax.dtypes.prng_key))
                else jax.random.key_data(c)).encode())

    def loss_call(p, b, s):
        return lossform.call(spec.form, spec.loss, p, b, state=s, train=True,
                             key=jax.random.key(0) if spec.form.key else None,
                             hparams={k: jnp.zeros(()) for k in spec.form.hparams}
                             if spec.form.takes_hparams else None)

    add_jaxpr(loss_call, params, probe, prep.state)
    if spec.init_fn is not None:
        add_jaxpr(spec.init_fn, jax.random.key(0))
    if spec.penalty_mask is not None:
        try:
            mask = jax.tree.leaves(spec.penalty_mask(params))
            h.update(stable_repr([np.asarray(m) for m in mask]).encode())
        except Exception as e:  # noqa: BLE001
            h.update(f"mask {type(e).__name__}".encode())
    return h.hexdigest()[:16]


def stable_repr(v: Any, depth: int = 0) -> str:
    """A description of ``v`` that is the same in every process and run.

    ``repr`` of a function holds a memory address, so a resumed sweep with
    ``optimizer=optax.adam`` would never match. Functions are described by name, a digest
    of their code, their defaults and what their closures hold (numbers, arrays, other
    functions, a few levels deep), so an edited loss or one closing over other values is
    not resumed; ``functools.partial`` by its function, arguments and keywords.
    """
    import marshal
    import re

    if depth > 3:
        return type(v).__name__
    rec = lambda x: stable_repr(x, depth + 1)  # noqa: E731
    if isinstance(v, functools.partial):
        kw = {k: rec(x) for k, x in sorted(v.keywords.items())}
        return f"partial({rec(v.func)}, {[rec(a) for a in v.args]}, {kw})"
    if isinstance(v, (np.ndarray, jax.Array)) and not (
            isinstance(v, jax.Array) and jnp.issubdtype(v.dtype, jax.dtypes.prng_key)):
        a = np.ascontiguousarray(np.asarray(v))
        return f"array{a.shape}{a.dtype}:{hashlib.sha256(a.tobytes()).hexdigest()[:16]}"
    if isinstance(v, (list, tuple)):
        return f"{type(v).__name__}({[rec(x) for x in v]})"
    if isinstance(v, dict):
        return f"dict({[(rec(k), rec(x)) for k, x in v.items()]})"
    if callable(v) and hasattr(v, "__qualname__"):
        name = f"{getattr(v, '__module__', '')}.{v.__qualname__}"
        code = getattr(v, "__code__", None)
        if code is not None:
            try:
                name += ":" + hashlib.sha256(marshal.dumps(code)).hexdigest()[:12]
            except ValueError:  # unmarshallable constants: the name alone
                pass
            if getattr(v, "__defaults__", None):
                name += f" defaults={[rec(d) for d in v.__defaults__]}"
            cells = []
            for cell in getattr(v, "__closure__", None) or ():
                try:
                    cells.append(rec(cell.cell_contents))
                except ValueError:  # an empty cell
                    cells.append("<empty>")
            if cells:
                name += f" closure={cells}"
        return name
    return re.sub(r" at 0x[0-9a-f]+", "", repr(v))


def fit_fingerprint(opts, loss, params, prep) -> str:
    """The fingerprint of a ``fit(..., out=)`` call (:func:`run_fingerprint` of a run of
    one configuration): its options, key, loss, data, initial parameters and program."""
    from .axes import STRUCTURAL_AXES
    from .options import options_for
    from .prepare import as_key

    settings = {o.name: getattr(opts, o.name) for o in options_for("fit")
                if o.fingerprint == "settings"}
    settings["key"] = np.asarray(jax.random.key_data(as_key(opts.key))).tolist()
    settings["loss"], settings["run"] = loss, "fit"
    start = params if prep.combined is None else prep.params
    return run_fingerprint(
        [{}], [0], opts.pick(STRUCTURAL_AXES), dict(opts.hparams or {}), opts.epochs,
        opts.shuffle, opts.drop_last, None, 0, settings,
        (prep.data, start, opts.val_data, opts.state), [program_digest(prep)])
