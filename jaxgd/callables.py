"""Configuration keys that name Python code, and what the named functions must return.

A name is ``"package.module:function"`` (a module Python can import: an installed package
or one on ``PYTHONPATH``) or ``"path/to/file.py:function"`` (a file, relative to the
configuration file's folder, then to the current folder). The part after the colon may
be dotted (``"mod:Class.create"``).

Reading a name (:func:`parse`) never imports anything: it checks the spelling and that a
named file exists. :func:`load` imports the module, which runs its code as any Python
import does; :func:`jaxgd.config.build` is its only caller, for the keys
``data.callable``, ``model.callable`` and ``loss.callable``. Every problem is a
``ValueError`` whose message the configuration reports at the key that names the code.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._checks import closest

__all__ = ["CallableSpec", "call", "data_arrays", "load", "model_pair", "parse"]

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENT}(?:\.{_IDENT})*"
FORMS = '"package.module:function" or "path/to/file.py:function"'


class CallableSpec(NamedTuple):
    """A parsed name of a function (nothing imported).

    Attributes:
      text: the name as written.
      module: the dotted module name (module form), or None.
      path: the resolved ``.py`` file (file form), or None.
      attr: the dotted attribute of the module (``"make"``, ``"Model.create"``).
    """

    text: str
    module: str | None
    path: Path | None
    attr: str


def parse(text: Any, base: Path) -> CallableSpec:
    """Check the spelling of a function's name; find its file (file form). No import.

    Args:
      text: ``"package.module:function"`` or ``"path/to/file.py:function"``.
      base: the folder a relative file is looked up in first (then the current folder).

    Raises:
      ValueError: the reason (a bad spelling, a file that does not exist).
    """
    if not isinstance(text, str):
        raise ValueError(f"must be a string, {FORMS}")
    left, sep, attr = text.rpartition(":")
    if not sep or not left or not re.fullmatch(_DOTTED, attr):
        raise ValueError(f"is not a function's name: write {FORMS}")
    if left.endswith(".py") or "/" in left or "\\" in left:
        p = Path(left).expanduser()
        cands = [p] if p.is_absolute() else list(dict.fromkeys([base / p, Path.cwd() / p]))
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise ValueError(f"file {left!r} not found (looked in "
                             f"{', '.join(str(c.parent) for c in cands)})")
        if found.suffix != ".py":
            raise ValueError(f"file {left!r} is not a Python file (.py)")
        return CallableSpec(text, None, found.resolve(), attr)
    if not re.fullmatch(_DOTTED, left):
        raise ValueError(f"{left!r} is not a module name: write {FORMS}")
    return CallableSpec(text, left, None, attr)


def _import(spec: CallableSpec):
    """The module of ``spec``, imported (its code runs)."""
    if spec.path is not None:
        # named by the file's stem, not its folder: a sweep's fingerprint holds the names
        # of its functions' modules, and a moved project folder resumes its runs
        name = "jaxgd_config_" + re.sub(r"\W", "_", spec.path.stem)
        found = importlib.util.spec_from_file_location(name, spec.path)
        if found is None or found.loader is None:  # pragma: no cover - a .py file loads
            raise ValueError(f"cannot load {str(spec.path)!r} as a Python module")
        mod = importlib.util.module_from_spec(found)
        sys.modules[name] = mod  # as an import does (dataclasses, pickle look it up)
        try:
            found.loader.exec_module(mod)
        except ModuleNotFoundError as e:
            sys.modules.pop(name, None)
            top = (e.name or "").split(".")[0]
            here = spec.path.parent
            if top and ((here / f"{top}.py").is_file() or (here / top).is_dir()):
                raise ValueError(f"{spec.path.name} imports {top!r}, which is beside it but "
                                 "not importable: Python finds modules in installed packages "
                                 f"and on PYTHONPATH (add {str(here)!r} to it)") from None
            raise
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return mod
    try:
        return importlib.import_module(spec.module)
    except ModuleNotFoundError as e:
        # the named module itself (or its package) is missing; a module that it imports
        # is missing is the user's environment: reported as that (jaxgd.cli names it)
        if e.name and (spec.module == e.name or spec.module.startswith(e.name + ".")):
            raise ValueError(
                f"no module named {e.name!r} (a module of an installed package or of "
                f"PYTHONPATH; for a file write \"./{spec.module.replace('.', '/')}.py:"
                f"{spec.attr}\")") from None
        raise


def load(spec: CallableSpec) -> Any:
    """Import the module of ``spec`` (running its code) and return the named function.

    Raises:
      ValueError: no such module, no such attribute, or the attribute is not callable.
    """
    obj = _import(spec)
    where = spec.module or spec.path.name
    for i, part in enumerate(spec.attr.split(".")):
        if not hasattr(obj, part):
            owner = where if i == 0 else f"{where}:{'.'.join(spec.attr.split('.')[:i])}"
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = closest(part, names)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ValueError(f"{owner} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{where}:{spec.attr} is a {type(obj).__name__}, not a function")
    return obj


def call(fn: Any, kwargs: dict[str, Any]) -> Any:
    """``fn(**kwargs)``, after checking that ``fn`` takes these keyword arguments.

    Raises:
      ValueError: ``fn``'s signature does not accept ``kwargs`` (the reason names the key).
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to check: call it
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            names = [p for p in sig.parameters if p not in kwargs]
            bad = re.search(r"argument '(\w+)'", str(e))
            close = closest(bad.group(1), names) if bad else None
            hint = f" (did you mean {close!r}?)" if close and "unexpected" in str(e) else ""
            raise ValueError(f"the function does not take these kwargs: {e}{hint}; "
                             f"its parameters: {list(sig.parameters)}") from None
    return fn(**kwargs)


def data_arrays(out: Any):
    """What a data function returned, checked: ``(x, y, (x_val, y_val) or None, task or
    None)`` with NumPy arrays.

    Accepted: ``(x, y)``; ``((x, y), (x_val, y_val))`` (two tuples: a Python list is
    read as an array); a :class:`jaxgd.datasets.Dataset` (its task is used).
    """
    from .datasets import Dataset

    want = ("must return (x, y) arrays, a ((x, y), (x_val, y_val)) pair or a "
            f"jaxgd.datasets.Dataset; it returned {_describe(out)}")
    if isinstance(out, Dataset):
        return _pair(out.x, out.y, want) + (None, out.task)
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise ValueError(want)
    if all(isinstance(p, tuple) for p in out):  # (train, val); lists are arrays
        if not all(len(p) == 2 for p in out):
            raise ValueError(want)
        x, y = _pair(*out[0], want)
        xv, yv = _pair(*out[1], want)
        if xv.shape[1:] != x.shape[1:]:
            raise ValueError(f"returned x_val of shape {xv.shape} for x of shape {x.shape}: "
                             "their shapes after the first axis must agree")
        return x, y, (xv, yv), None
    return _pair(*out, want) + (None, None)


def _pair(x: Any, y: Any, want: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        x, y = np.asarray(x), np.asarray(y)
    except Exception:  # noqa: BLE001 - not array-like: the contract says what is
        raise ValueError(want) from None
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf" or x.ndim < 1 or y.ndim < 1:
        raise ValueError(want.split("; it returned")[0] + f" (numeric arrays with a leading "
                         f"sample axis); it returned x {x.dtype}{list(x.shape)}, "
                         f"y {y.dtype}{list(y.shape)}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"returned x with {len(x)} rows and y with {len(y)}: the same "
                         "number of samples (at least 1) is needed")
    return x, y


def model_pair(out: Any):
    """What a model function returned, checked: ``(init, apply)``.

    Accepted: a pair ``(init, apply)`` of functions, or an object with ``init`` and
    ``apply`` methods (a :class:`jaxgd.models.Model`). ``init(key)`` returns the
    parameters; keyword parameters after the key (``init(key, *, width=32)``) are shape
    axes that ``[sweep]`` may vary. ``apply(params, x)`` returns the outputs.
    """
    if isinstance(out, tuple | list) and len(out) == 2:
        init, apply = out
    elif hasattr(out, "init") and hasattr(out, "apply"):
        init, apply = out.init, out.apply
    else:
        init = apply = None
    if not (callable(init) and callable(apply)):
        raise ValueError("must return (init, apply): init(key) -> params and apply(params, "
                         f"x) -> outputs; it returned {_describe(out)}")
    return init, apply


def _describe(v: Any) -> str:
    if isinstance(v, tuple | list):
        return f"a {type(v).__name__} of {len(v)}: ({', '.join(_describe1(x) for x in v)})"
    return _describe1(v)


def _describe1(v: Any) -> str:
    shape = getattr(v, "shape", None)
    if shape is not None:
        return f"{type(v).__name__}{list(shape)}"
    if isinstance(v, tuple | list):
        return f"{type(v).__name__} of {len(v)}"
    return type(v).__name__
