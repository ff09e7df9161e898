"""Argument checks shared by several modules (pure Python: no JAX operation).

Each raises a ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, out of
range) whose message names the argument and its value, before anything is compiled.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int if it is a positive integer (not a bool), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be a positive integer")
    if value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return int(value)


def check_nonneg_int(name: str, value: Any) -> int:
    """``value`` as an int if it is an integer >= 0 (not a bool), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be a non-negative integer")
    if value < 0:
        raise ValueError(f"{name}={value!r} must be a non-negative integer")
    return int(value)


MAX_SEED = 2**64 - 1  # a PRNG key holds 64 bits


def seed_problem(value: Any) -> str | None:
    """Why ``value`` is not a seed (an integer in ``0 .. 2**64 - 1``), or None: the one
    rule for every seed (``key=``, ``seed=``, the ``seed`` axis, a file's seeds)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        return "must be a non-negative integer"
    if value > MAX_SEED:
        return "a seed must be < 2**64 (a key holds 64 bits)"
    return None


def check_seed(name: str, value: Any) -> int:
    """``value`` as an int if it is a seed (:func:`seed_problem`), else a ValueError."""
    why = seed_problem(value)
    if why is not None:
        raise ValueError(f"{name}={value!r} {why}" if why.startswith("must") else
                         f"{name}={value!r}: {why}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be True or False")
    return value


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# pip names of optional packages whose import name differs
PIP = {"orbax": "orbax-checkpoint"}


def require(module: str, what: str, pip: str | None = None):
    """Import ``module``; if it is missing, a ModuleNotFoundError naming it, ``what``
    needs it for, and its ``pip install`` command (one line for the CLI)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is None or e.name.split(".")[0] != top:
            raise
        pkg = pip or PIP.get(top, top)
        raise ModuleNotFoundError(
            f"{what} needs the Python package {top!r}, which is not installed; install it "
            f"with: pip install {pkg}", name=top) from None
