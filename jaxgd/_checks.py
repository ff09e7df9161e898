"""Argument checks shared by several modules (pure Python: no JAX operation).

Each raises a ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, out of
range) whose message names the argument and its value, before anything is compiled.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
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


def _edits(a: str, b: str) -> int:
    """Single-character edits from ``a`` to ``b``: insertions, deletions, substitutions
    and swaps of two neighbouring characters (the optimal string alignment distance)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def closest(name: Any, choices: Iterable[Any]) -> str | None:
    """The valid name a mistyped ``name`` most likely meant, or None: the choice fewest
    single-character edits away (a swap of two neighbours is one; case ignored), within a
    third of the name's length (at least 2), ties broken by :mod:`difflib`'s similarity;
    failing that, :func:`difflib.get_close_matches`' choice (a longer or shorter spelling).
    ``"adma"`` is one swap from ``"adam"``, while similarity alone picks ``"adamax"``."""
    name = str(name)
    names = [str(c) for c in choices]
    if not names:
        return None
    low = name.lower()

    def rank(c: str) -> tuple[int, float]:
        return _edits(low, c.lower()), -difflib.SequenceMatcher(None, low, c.lower()).ratio()

    best = min(names, key=rank)
    if rank(best)[0] <= max(2, len(name) // 3):
        return best
    close = difflib.get_close_matches(name, names, n=1)
    return close[0] if close else None
