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


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be True or False")
    return value


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
