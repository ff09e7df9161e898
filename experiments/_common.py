"""Shared plumbing of the experiments: arguments, output folder, tables, figures, checks.

Every experiment module defines ``run(out: Path, quick: bool) -> dict`` returning its
headline numbers, and ends with ``if __name__ == "__main__": main(run, __doc__)``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from jaxgd.store import atomic_write_bytes  # noqa: E402

DEFAULT_OUT = Path("demo_out")


# PyTorch is an optional reference (the [test] extra): without it, a comparison with it
# becomes a row or column marked with this note, never a failure
TORCH_INSTALL = "pip install torch==2.13.0 or the [test] extra"
NOT_INSTALLED = f"not installed ({TORCH_INSTALL})"


def optional_torch():
    """``torch`` when it is installed, else None (its comparisons are then marked
    :data:`NOT_INSTALLED`)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


class ParityError(AssertionError):
    """jaxgd disagrees with an independent reference beyond the stated tolerance."""


def check(name: str, error: float, tol: float) -> float:
    """Assert a parity ``error`` is within ``tol``; returns the error for the report."""
    if not (error <= tol):
        raise ParityError(f"{name}: error {error:.3e} exceeds tolerance {tol:.1e}")
    return float(error)


def save_table(df: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """Write ``name.csv`` and ``name.md`` (atomically); returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / f"{name}.csv", out / f"{name}.md"
    atomic_write_bytes(csv, df.to_csv(index=False).encode())
    atomic_write_bytes(md, df.to_markdown(index=False).encode())
    return [csv, md]


def save_figure(fig, out: Path, name: str) -> Path:
    """Write ``name.png`` (atomically) and close the figure."""
    import io

    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    path = out / f"{name}.png"
    atomic_write_bytes(path, buf.getvalue())
    return path


def main(run: Callable[[Path, bool], dict[str, Any]], doc: str | None) -> dict[str, Any]:
    """Command line of one experiment: ``python -m experiments.NAME [--out DIR] [--quick]``."""
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument("--quick", action="store_true", help="reduced size (CI)")
    a = p.parse_args()
    t = time.perf_counter()
    res = run(a.out, a.quick)
    print(f"done in {time.perf_counter() - t:.1f} s -> {a.out}")
    for k, v in res.items():
        print(f"  {k}: {v}")
    return res
