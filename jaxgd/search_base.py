"""What every search method shares: the ranking of units and the default metric."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def ranked(values: Mapping[Any, float], mode: str) -> list[Any]:
    """Units best first (NaN last; ties keep the given order)."""
    keys = list(values)
    v = np.asarray([values[k] for k in keys], float)
    v = np.where(np.isnan(v), np.inf, v if mode == "min" else -v)
    return [keys[i] for i in np.argsort(v, kind="stable")]


def default_metric(has_val: bool) -> str:
    return "val_loss" if has_val else "loss"
