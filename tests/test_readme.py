"""README.md and experiments/configs/README.md, run as written (slow tier).

The fenced blocks are read from the two files themselves, so an edit that breaks one
fails here:

* ```python blocks: all blocks of a file, in order, in one fresh interpreter, verbatim; a
  value the README states in a comment after a snippet's last expression, such as
  ``# ('grad_tol', 658, 1429.848...)``, is compared with what that expression gives.
* ```bash / ```sh blocks: run by ``bash -e`` in order, as written, in a scratch folder
  holding a copy of ``experiments/configs`` (the README's paths are relative to the
  repository root). ``jaxgd`` is this checkout's command line (``python -m jaxgd.cli``,
  what the installed console script calls). Two substitutions only: the opening
  ``pip install ... &&`` is left to CI (which installs before running the tests) and what
  follows it runs; the multi-host example's ``127.0.0.1:12345`` gets a free port. The
  README's test command (``python -m pytest ...``, which includes this file) is not run
  recursively: it must be the command ``.ci/run`` runs.
* The shell commands run without the test extra's packages (hidden by
  ``tests/hide_modules``), as on a fresh machine after ``pip install -e .``: the demo must
  pass all its experiments with the PyTorch comparisons marked "not installed" (and the
  flax experiments skipped with a note), the bench likewise. A block that exports to a
  tracker or orbax, which the README says need their extras, hides PyTorch only.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = ROOT / "README.md"
CONFIGS_README = ROOT / "experiments" / "configs" / "README.md"
# the packages of the test extra that ``pip install -e .`` does not bring
EXTRAS = "torch,flax,equinox,optuna,grain,orbax,tensorboardX,tensorboard,mlflow,wandb,hypothesis"
NOTE = "not installed (pip install torch==2.13.0 or the [test] extra)"
TIMEOUT = 900
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)

pytestmark = pytest.mark.slow


def blocks(path: Path, *langs: str) -> list[tuple[int, str]]:
    """(line number, code) of the fenced blocks of ``path`` in the given languages."""
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 2, m.group(2)) for m in FENCE.finditer(text)
            if m.group(1) in langs]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "experiments" / "configs", d / "experiments" / "configs")
    bin_dir = d / ".bin"
    bin_dir.mkdir()
    cmd = bin_dir / "jaxgd"
    cmd.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m jaxgd.cli "$@"\n')
    cmd.chmod(0o755)
    return d


def environ(work: Path, hide: str = "") -> dict[str, str]:
    env = dict(os.environ)
    paths = ([str(HERE / "hide_modules")] if hide else []) + [str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env["PATH"] = f"{work / '.bin'}{os.pathsep}{env['PATH']}"
    env["HIDE_MODULES"] = hide
    env["MPLBACKEND"] = "Agg"
    return env


def run_python_blocks(path: Path, work: Path) -> list[tuple[int, str, str | None]]:
    """Run every python block of ``path`` in order in one fresh interpreter. Returns, per
    block, (line, repr of its last expression, the comment on that line)."""
    code = blocks(path, "python")
    assert code, f"no python blocks in {path}"
    driver = work / f"run_{path.parent.name}_snippets.py"
    driver.write_text(
        "import ast, json, sys\n"
        "blocks, out = json.loads(sys.argv[1]), []\n"
        "ns = {'__name__': '__main__'}\n"
        "for line, src in blocks:\n"
        "    name = f'{sys.argv[2]}:{line}'\n"
        "    tree = ast.parse(src, name)\n"
        "    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) "
        "else None\n"
        "    exec(compile(tree, name, 'exec'), ns)\n"
        "    value = None\n"
        "    if last is not None:\n"
        "        value = repr(eval(compile(ast.Expression(last.value), name, 'eval'), ns))\n"
        "    out.append(value)\n"
        "print('VALUES ' + json.dumps(out))\n")
    r = subprocess.run([sys.executable, str(driver), json.dumps(code), str(path.name)],
                       cwd=work, env=environ(work), capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    values = json.loads(r.stdout.split("VALUES ", 1)[1])
    out = []
    for (line, src), value in zip(code, values, strict=True):
        last = src.rstrip().splitlines()[-1]
        comment = last.split("#", 1)[1].strip() if "#" in last else None
        out.append((line, value, comment))
    return out


def matches(value: str, stated: str) -> bool:
    """A stated tuple like ``('grad_tol', 658, 1429.848...)`` or ``(0.92..., (64,))``
    against the repr of a tuple (``...`` = more digits follow; numpy scalars' reprs
    unwrapped; tuples nest)."""
    value = re.sub(r"np\.\w+\(([^()]*)\)", r"\1", value)
    want = ast.literal_eval(re.sub(r"(-?\d[\d.]*?)\.\.\.", r"'\1...'", stated))
    return _matches(ast.literal_eval(value), want)


def _matches(got, want) -> bool:
    if isinstance(want, str) and want.endswith("..."):
        return repr(got).startswith(want[:-3])
    if isinstance(want, tuple):
        return (isinstance(got, tuple) and len(got) == len(want)
                and all(_matches(g, w) for g, w in zip(got, want, strict=True)))
    return got == want


def run_bash(code: str, work: Path, hide: str = "") -> subprocess.CompletedProcess:
    """``bash -e -c code``; past TIMEOUT its whole process group (background jobs too) is
    killed."""
    p = subprocess.Popen(["bash", "-e", "-c", code], cwd=work, env=environ(work, hide),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    assert r.returncode == 0, f"{code}\n---\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-4000:]
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_python_snippets(work):
    results = run_python_blocks(README, work)
    stated = [(line, v, c) for line, v, c in results if c and c.startswith("(")]
    assert stated, "the README states no result to check"
    for line, value, comment in stated:
        assert matches(value, comment), f"README.md:{line}: states {comment}, got {value}"
    # the sweep snippet saved, plotted and reloaded its run
    assert (work / "runs" / "x" / "table.csv").is_file()
    assert list((work / "runs" / "x").glob("*.png"))


def test_readme_shell_commands_without_torch(work):
    code = blocks(README, "bash", "sh")
    assert len(code) >= 3
    ci = (ROOT / ".ci" / "run").read_text()
    demo = work / "demo_out"
    ran, demos = [], []
    for line, src in code:
        script, port = [], free_port()  # one coordinator port for the processes of a block
        for cmd in src.splitlines():
            m = re.match(r"pip install (-e \.|-e \"\.\[test\]\") && (.*)", cmd)
            if m and "pytest" in m.group(2):
                # the README's test command: CI runs exactly this line
                assert cmd in ci.splitlines(), f"README.md:{line}: {cmd!r} is not .ci/run's"
                continue
            if m:
                cmd = m.group(2)  # CI has installed the package
            script.append(cmd.replace("127.0.0.1:12345", f"127.0.0.1:{port}"))
        exports = any(c.startswith("jaxgd export") for c in script)
        r = run_bash("\n".join(script), work, hide="torch" if exports else EXTRAS)
        ran.append((line, r))
        for mode in re.findall(r"^jaxgd demo( --quick)?\s*(?:#.*)?$", "\n".join(script), re.M):
            # every experiment passed, without PyTorch, its comparisons marked
            index = (demo / "index.md").read_text()
            n = len([f for f in (ROOT / "experiments").iterdir()
                     if re.match(r"^e\d\d_\w+\.py$", f.name)])
            assert f"{n}/{n} experiments passed{' (quick mode)' if mode else ''}." in index
            for table in ("e10_accumulation/accumulation.csv",
                          "e12_parity/torch_trajectories.csv"):
                assert NOTE in (demo / table).read_text(), table
            demos.append(mode or "full")
    assert demos == ["full", " --quick"]
    # the bench: PyTorch rows marked, everything else measured
    bench = pd.read_csv(demo / "bench" / "bench.csv")
    torch_rows = bench[bench["implementation"] == "PyTorch per config"]
    assert len(torch_rows) and all(NOTE in n for n in torch_rows["note"])
    assert (bench.loc[bench["implementation"] != "PyTorch per config", "run_s"] > 0).all()
    targets = pd.read_csv(demo / "bench" / "targets.csv", keep_default_na=False)
    t = targets[targets["target"].str.contains("PyTorch")]
    assert list(t["met"]) == ["n/a"] and NOTE in t["note"].iloc[0]
    # show --sort names the same best as the sweep's summary
    out = "\n".join(r.stdout for _, r in ran)
    bests = re.findall(r"^best: learning_rate=.*$", out, re.M)
    assert len(set(bests)) == 1 and len(bests) >= 2, bests
    # the two-process run: process 0 wrote the results of all 135 configurations
    big = pd.read_csv(work / "runs" / "big" / "table.csv")
    assert len(big) == 135


def test_configs_readme_snippets(work):
    run_python_blocks(CONFIGS_README, work)
    assert (work / "runs" / "cv" / "table.csv").is_file()
    for line, src in blocks(CONFIGS_README, "bash", "sh"):
        r = run_bash(src, work)
        assert "best:" in r.stdout, f"experiments/configs/README.md:{line}"
