"""Missing optional packages: a PyTorch comparison is marked "not installed", anything else
missing is one line naming the package and its install command (exit 2), nothing lost.

The packages are hidden from a subprocess by ``tests/hide_modules/sitecustomize.py``
(``HIDE_MODULES=torch``): ``import torch`` raises ``ModuleNotFoundError`` there exactly
as on a machine where only ``pip install -e .`` ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import jaxgd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT = 600
NOTE = "not installed (pip install torch==2.13.0 or the [test] extra)"


def without(modules: str, args: list[str], cwd: Path, timeout: int = TIMEOUT):
    """Run ``python ARGS`` in ``cwd`` with ``modules`` (comma-separated) not importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE / "hide_modules"), str(ROOT), env.get("PYTHONPATH", "")])
    env["HIDE_MODULES"] = modules
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_hiding_works(tmp_path):
    r = without("torch", ["-c", "import torch"], tmp_path)
    assert r.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in r.stderr
    r = without("torch", ["-c", "import torch.utils.data"], tmp_path)
    assert r.returncode == 1 and "No module named 'torch" in r.stderr
    # the rest of the stack still imports (scipy probes sys.modules for torch)
    r = without("torch", ["-c", "import jaxgd, sklearn.linear_model, scipy.optimize, "
                          "experiments.e12_parity as m; assert m.torch is None"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]


def test_demo_missing_package_one_line_rest_kept(tmp_path):
    """e12 needs scipy: without it, one line naming scipy and its install command, exit 2;
    the other experiment still ran and the index lists both."""
    out = tmp_path / "demo"
    r = without("scipy", ["-m", "jaxgd.cli", "demo", "--quick", "--only", "e01,e12",
                          "--out", str(out)], tmp_path)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr
    assert err[0].startswith("jaxgd: error: e12_parity not run: the Python package 'scipy' "
                             "is not installed; install it with: pip install scipy")
    assert "Traceback" not in r.stderr
    index = (out / "index.md").read_text()
    assert "1/2 experiments passed" in index
    assert (out / "e01_batch_vs_sgd").is_dir() and any((out / "e01_batch_vs_sgd").glob("*.png"))


def test_show_missing_tabulate_one_line(tmp_path):
    """A package missing under pandas (tabulate, for the table): one line, exit 2, the run
    folder untouched."""
    loss = lambda p, b: ((b[0][:, 0] * p["w"] - b[1]) ** 2).mean()  # noqa: E731
    x = np.arange(1.0, 4.0)[:, None]
    sw = jaxgd.sweep(loss, {"w": np.float32(0.0)}, (x, 2 * x[:, 0]),
                     grid={"learning_rate": [0.01, 0.1]}, epochs=3)
    run = tmp_path / "run"
    sw.save(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = without("tabulate", ["-m", "jaxgd.cli", "show", str(run)], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip() == ("jaxgd: error: the Python package 'tabulate' is not installed; "
                                "install it with: pip install tabulate")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    ok = subprocess.run([sys.executable, "-m", "jaxgd.cli", "show", str(run)],
                        capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert ok.returncode == 0 and "best: config" in ok.stdout


# `jaxgd bench --quick` without PyTorch: tests/test_readme.py (README command, slow tier)
