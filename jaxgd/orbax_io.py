"""Orbax checkpoints in and out: trained parameters for flax/orbax training or serving code.

The run folder keeps its own format (checksums, atomic files, no pickle); this module only
translates one configuration's parameters (and model state) to and from an
`orbax-checkpoint <https://orbax.readthedocs.io>`_ directory, which any JAX program
restores without jaxgd::

    import orbax.checkpoint as ocp
    params = ocp.StandardCheckpointer().restore(path, params_template)

Layout of an exported checkpoint (one ``StandardCheckpointer`` item): the parameters'
tree itself, as nested dicts (dict keys and attribute names) and lists (sequence
indices) of arrays; with a model state, ``{"params": params, "state": state}`` (the
state's key is the ``state=`` argument when it is a string, e.g. ``"batch_stats"``
gives a flax linen variable dict). Orbax matches leaves by these names, so the template
may be the pytree the run was given: a flax linen variable dict, a ``flax.nnx`` state
(``nnx.split(model)[1]``), an equinox Module filtered to its arrays
(``eqx.filter(model, eqx.is_array)``: its other fields, such as activation functions,
are stored as None, as orbax stores that filtered tree) or a plain dict. A run folder
loaded without ``like=`` holds nested dicts of arrays only: restore its export into an
equinox template with ``partial_restore=True``, or load it with ``like=model`` first.

orbax-checkpoint is an optional package (``pip install orbax-checkpoint``; flax installs
it). Call these functions from one process: orbax's save is collective in a
multi-process JAX program.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import require

__all__ = ["export_orbax", "from_orbax", "require"]

def _ocp():
    return require("orbax.checkpoint", "an orbax checkpoint")


def _plain(tree: Any) -> Any:
    """``tree`` as nested dicts (dict keys, attribute names) and lists (sequence indices)
    of NumPy arrays. A model object's other leaves (an equinox Module's activation
    functions) become None, as in ``eqx.filter(model, eqx.is_array)``."""
    import jax

    from .store import params_arrays, params_from_arrays

    if tree is None or isinstance(tree, dict | list | tuple):
        arrays, spec = params_arrays(tree)
        return params_from_arrays(arrays, spec, Path("<params>"), stacked=False)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    out: Any = {}
    for path, leaf in flat:
        keys = [_name(k) for k in path]
        value = np.asarray(leaf) if isinstance(leaf, np.ndarray | jax.Array) else None
        if not keys:
            return value
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return _lists(out)


def _name(k: Any) -> Any:
    """One key-path entry: a dict key, an attribute name, or ('#', index) for a sequence."""
    import jax

    tu = jax.tree_util
    if isinstance(k, tu.SequenceKey):
        return ("#", int(k.idx))
    if isinstance(k, tu.GetAttrKey):
        return k.name
    if isinstance(k, tu.DictKey):
        return k.key
    if isinstance(k, tu.FlattenedIndexKey):
        return ("#", int(k.key))
    return str(k)


def _lists(node: Any) -> Any:
    """Dicts keyed by ('#', i) turned into lists."""
    if not isinstance(node, dict):
        return node
    if node and all(isinstance(k, tuple) for k in node):
        return [_lists(node[k]) for k in sorted(node)]
    return {k: _lists(v) for k, v in node.items()}


def checkpoint_tree(params: Any, state: Any = None, state_key: str = "state") -> Any:
    """The tree an exported checkpoint holds (see the module docstring)."""
    if state is None:
        return _plain(params)
    return {"params": _plain(params), state_key: _plain(state)}


def _target_path(path: Any, overwrite: bool) -> Path:
    if isinstance(path, bool) or not isinstance(path, str | os.PathLike):
        raise TypeError(f"path={path!r} must be a folder path (str or pathlib.Path)")
    p = Path(path).absolute()
    if p.is_symlink():
        raise ValueError(f"path={str(path)!r} is a symbolic link: give the folder itself")
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"path={str(path)!r} exists and is not a folder")
        if any(p.iterdir()) and not overwrite:
            raise ValueError(f"path={str(path)!r} exists and is not empty: choose a new "
                             "folder or pass overwrite=True (CLI: --overwrite)")
    return p


def export_orbax(path: Any, params: Any, state: Any = None, *, state_key: str = "state",
                 overwrite: bool = False) -> Path:
    """Write ``params`` (and ``state``) as an orbax checkpoint directory at ``path``.

    The checkpoint is written into a temporary folder beside ``path`` and renamed into
    place: a killed process leaves the old folder or the new one, never half of one.

    Args:
      path: the checkpoint directory: new, empty, or (``overwrite=True``) replaced.
      params: one configuration's parameters (any pytree jaxgd trains).
      state: its model state, or None (then the checkpoint is ``params``' tree alone).
      state_key: the state's key beside ``"params"`` (e.g. ``"batch_stats"``).
      overwrite: replace an existing non-empty ``path``.

    Returns:
      the absolute path written.
    """
    if not isinstance(state_key, str) or not state_key or state_key == "params":
        raise ValueError(f"state={state_key!r}: the state's key must be a non-empty string "
                         "other than 'params'")
    target = _target_path(path, overwrite)
    tree = checkpoint_tree(params, state, state_key)
    ocp = _ocp()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        ck = ocp.StandardCheckpointer()
        ck.save(tmp / "ckpt", tree)
        ck.wait_until_finished()
        ck.close()
        _swap_in(tmp / "ckpt", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _swap_in(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and
    removed after (an empty one is replaced by the rename itself)."""
    old = None
    if target.exists() and any(target.iterdir()):
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        os.rename(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _restore_plain(path: Path) -> Any:
    """The checkpoint's tree with its stored dtypes and shapes, as NumPy arrays."""
    import jax

    ocp = _ocp()
    ck = ocp.StandardCheckpointer()
    try:
        meta = ck.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)
        tree = ck.restore(path, target)
    finally:
        ck.close()
    tree = getattr(tree, "tree", tree)
    return jax.tree.map(np.asarray, tree)


def _at(tree: Any, path: list[list[Any]], where: str) -> np.ndarray:
    """The leaf of nested dicts/lists ``tree`` at a jaxgd key path."""
    node = tree
    for kind, key in path:
        if isinstance(node, list | tuple) and kind == "index" and 0 <= key < len(node):
            node = node[key]
        elif isinstance(node, dict) and (key in node or str(key) in node):
            node = node[key] if key in node else node[str(key)]
        else:
            shown = "".join(f".{k}" if t == "attr" else f"[{k!r}]" for t, k in path)
            raise ValueError(f"like= does not match {where}: it has no leaf {shown or '<root>'}"
                             f" (the checkpoint holds {_keys(tree)})")
    return node


def _keys(tree: Any) -> str:
    if isinstance(tree, dict):
        return "keys " + ", ".join(map(repr, list(tree)[:6])) + (", ..." if len(tree) > 6
                                                                   else "")
    return type(tree).__name__


def from_orbax(path: Any, like: Any = None) -> Any:
    """Read an orbax checkpoint (written by jaxgd or by any orbax ``StandardCheckpointer``
    / ``PyTreeCheckpointer`` save of a pytree) as parameters for ``fit`` / ``sweep``.

    Args:
      path: the checkpoint directory.
      like: a template (e.g. the model's freshly initialised parameters: a flax variable
        dict, an nnx state, an equinox Module, any pytree): the result has its type, with
        the checkpoint's values at the template's key paths (an equinox Module keeps its
        non-array fields). Every array of the template must be in the checkpoint, with
        the same shape and dtype. Without it: nested dicts/lists of NumPy arrays, as
        stored.

    Returns:
      the parameters (NumPy arrays), ready to pass as ``params`` to :func:`jaxgd.fit` or
      :func:`jaxgd.sweep`, or to return from ``sweep(init=...)``.
    """
    if isinstance(path, bool) or not isinstance(path, str | os.PathLike):
        raise TypeError(f"path={path!r} must be a checkpoint folder (str or pathlib.Path)")
    p = Path(path).absolute()
    if not p.is_dir():
        raise FileNotFoundError(f"path={str(path)!r} is not a checkpoint folder")
    tree = _restore_plain(p)
    if like is None:
        return tree
    from .store import params_arrays, params_from_arrays

    arrays, spec = params_arrays(like)
    picked = {}
    for i, stored_path in enumerate(spec):
        tmpl = arrays[f"params/{i}"]
        leaf = np.asarray(_at(tree, stored_path, str(path)))
        if leaf.shape != tmpl.shape or leaf.dtype != tmpl.dtype:
            shown = "".join(f".{k}" if t == "attr" else f"[{k!r}]" for t, k in stored_path)
            raise ValueError(f"like= does not match {path}: leaf {shown} is {tmpl.dtype}"
                             f"{list(tmpl.shape)} in the template, {leaf.dtype}"
                             f"{list(leaf.shape)} in the checkpoint")
        picked[f"params/{i}"] = leaf
    return params_from_arrays(picked, spec, p, like=like, stacked=False)
