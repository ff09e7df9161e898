"""The GPU benchmark (``experiments/bench_gpu.py``) runs end to end on CPU at tiny sizes.

Run as the lent device will run it (``python -m experiments.bench_gpu``, a fresh process),
then check the written table has every row and that its FLOP/s figures follow from its
own timings and an operation count made here (not by the module). No timing asserts.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# the tiny sizes, restated (an independent count, not read from the module)
N, BATCH, EPOCHS, DS, KS, SEEDS = 2048, 64, 2, (8,), (8, 16), 2
IMPLS = {
    ("B", "jaxgd sweep (defaults)"),
    ("B", "JAX+optax per config"),
    ("C", "jaxgd sweep (defaults)"),
    ("B", "jaxgd sweep, metrics='batch'"),
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    p = subprocess.run([sys.executable, "-m", "experiments.bench_gpu", "--tiny", "--out",
                        str(out), "--f-budget", "60"], cwd=ROOT, capture_output=True,
                       text=True, timeout=420)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out, json.loads((out / "gpu_bench.json").read_text()), p.stdout


@pytest.mark.slow  # a fresh process compiling six programs: ~30-50 s on 2 cores
def test_every_row_in_the_table(tiny_run):
    out, res, stdout = tiny_run
    md = (out / "gpu_bench.md").read_text()
    printed = stdout[stdout.index("# jaxgd GPU benchmark"):].split("bench_gpu done")[0]
    assert md.strip() == printed.strip()
    rows = res["rows"]
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    have = {(r["problem"], r["implementation"], r["d"], r["configs"]) for r in rows}
    want = {(p, i, d, k) for p, i in IMPLS for d in DS for k in KS}
    want |= {("B", "data check + transfer (diagnostic)", d, 1) for d in DS}
    assert have == want
    assert len(rows) == len(want)
    lines = [ln for ln in md.splitlines() if ln.startswith("| B ") or ln.startswith("| C ")]
    for p, i, d, k in want:
        assert any(ln.startswith(f"| {p} | {i} | {d} | {k} |") for ln in lines), (p, i, d, k)
    for key in ("fp32, default precision", "fp32, precision=highest", "bf16"):
        assert f"| {key} |" in md
    assert "cpu" in md and res["info"]["jax"] in md
    # the targets table: four targets per B shape, the ratios finite
    assert len(res["targets"]) == 4 * len(DS) * len(KS)
    assert all(math.isfinite(t["measured"]) for t in res["targets"])
    # problem set F: every row measured or said skipped (a 60 s budget), none failed
    f = res["f"]
    assert f["error"] is None and f["sizes"] == "tiny"
    done = [f"{r['problem']} {r['mode']}" for r in f["rows"]]
    # a sweep row is followed by the same sweep with the other plan forced
    forced = [d for d in done if " sweep plan=" in d]
    for d in forced:
        assert done[done.index(d) - 1] == d.split(" plan=")[0], done
    done = [d for d in done if d not in forced]
    assert done and done + f["skipped"] == [
        f"{p} {m}" for p in ("cnn", "mlp", "mlp-steps", "transformer", "A", "B", "C")
        for m in ("fit", "sweep") if not (p == "C" and m == "fit")]
    assert "## Problem set F" in md
    for r in f["rows"]:
        assert f"| {r['problem']} | {r['mode']} | {r['configs']} |" in md
        assert r["ratio_run"] == pytest.approx(
            r["jaxgd_run_s"] / min(r["loop_run_s"], r["scan_run_s"]))
    # the plans' choice: each measured problem's sweep under the four plans, one of them
    # auto's, in the markdown
    for q in dict.fromkeys(r["problem"] for r in f["plans"]):
        mine = [r for r in f["plans"] if r["problem"] == q]
        assert [(r["plan"], r["loop"]) for r in mine] == [
            (p, lp) for p in ("vmap", "map") for lp in ("scan", "host")], q
        assert sum(r["auto"] for r in mine) == 1, q
    for r in f["plans"]:
        assert f"| {r['problem']} | {r['configs']} | {r['plan']} | {r['loop']} |" in md
    # each seed of C ran its own configurations: K rows returned
    for r in rows:
        if r["implementation"].startswith("jaxgd"):
            assert r["configs_returned"] == r["configs"]
            assert r["recompiles"] == 0


@pytest.mark.slow
def test_flops_follow_from_the_timings(tiny_run):
    _, res, _ = tiny_run
    peaks = res["peaks"]
    for v in peaks.values():
        assert v["GFLOP/s"] == pytest.approx(2 * v["n"] ** 3 / v["run_s"] / 1e9)
        assert v["run_s"] == pytest.approx(statistics.median(v["times_s"]))
        assert v["GFLOP/s"] == max(v["before_GFLOP_s"], v["after_GFLOP_s"])
    checked = 0
    for r in res["rows"]:
        if r["flops"] == 0:
            continue
        # N is a multiple of the batch: N/B steps of B samples, 4*B*d flops each
        flops = 4 * BATCH * r["d"] * (N // BATCH) * EPOCHS * r["configs"]
        assert r["flops"] == flops
        med = statistics.median(r["times_s"])
        assert r["reps"] == len(r["times_s"]) >= 1
        if r["implementation"] == "JAX+optax per config":
            sub = int(r["measured"].split("/")[0])
            assert sub < r["configs"]  # a subset, extrapolated
            assert r["run_s"] == pytest.approx(med * r["configs"] / sub)
        else:
            assert r["run_s"] == pytest.approx(med)
            assert r["compile_s"] == pytest.approx(r["first_s"] - med)
        gf = flops / r["run_s"] / 1e9
        assert r["GFLOP/s"] == pytest.approx(gf)
        for key in ("fp32", "fp32_highest", "bf16"):
            assert r[f"pct_{key}"] == pytest.approx(100 * gf / peaks[key]["GFLOP/s"])
        checked += 1
    assert checked == len(IMPLS) * len(DS) * len(KS)
    # one ratio of the targets table recomputed from the rows
    b = [r for r in res["rows"] if r["implementation"] == "jaxgd sweep (defaults)"
         and r["problem"] == "B" and r["configs"] == KS[-1]][0]
    c = [r for r in res["rows"] if r["implementation"] == "jaxgd sweep (defaults)"
         and r["problem"] == "C" and r["configs"] == KS[-1]][0]
    t = [t for t in res["targets"] if t["target"].startswith("C time")
         and t["configs"] == KS[-1]][0]
    assert t["measured"] == pytest.approx(c["run_s"] / b["run_s"])


def test_budget_skips_rows_and_bad_arguments(tmp_path, capsys):
    from experiments import bench_gpu

    assert bench_gpu.main(["--tiny", "--out", str(tmp_path), "--budget", "1e-9",
                           "--f-budget", "1e-9"]) == 0
    res = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert res["rows"] and all(r["status"] == "skipped (budget)" for r in res["rows"])
    assert "skipped (budget)" in (tmp_path / "gpu_bench.md").read_text()
    assert res["f"]["rows"] == [] and len(res["f"]["skipped"]) == 13
    assert "Skipped (budget): cnn fit, cnn sweep" in (tmp_path / "gpu_bench.md").read_text()
    capsys.readouterr()
    for bad in (["--reps", "0"], ["--budget", "-1"], ["--ks", "8,x"], ["--ks", "7"],
                ["--tiny", "--medium"], ["--problems", "B,X"], ["--f-budget", "0"]):
        assert bench_gpu.main(["--out", str(tmp_path), *bad]) == 2, bad
        assert "error:" in capsys.readouterr().err


def test_a_failing_row_is_recorded_and_the_exit_code_is_1(tmp_path, monkeypatch, capsys):
    from experiments import bench_gpu

    peaks = {"fp32": {"GFLOP/s": 1.0}}
    bn = bench_gpu.GpuBench(bench_gpu.TINY, 1, bench_gpu.Budget(100.0), tmp_path,
                            {"platform": "cpu", "device_kind": "cpu"}, peaks)
    monkeypatch.setattr(bench_gpu, "write_outputs", lambda out, res: [])

    def boom(r):
        raise MemoryError("out of memory while allocating")

    row = bn.row("B", "jaxgd sweep (defaults)", 8, 8, boom)
    assert row["status"] == "error: MemoryError: out of memory while allocating"
    assert "MemoryError" in row["traceback"] and bn.rows == [row]
    ok = bn.row("B", "jaxgd sweep (defaults)", 8, 16, lambda r: None)
    assert ok["status"] == "ok" and ok["reps"] == 1  # the next row still runs

    monkeypatch.setattr(bench_gpu, "run", lambda *a, **k: {"rows": [row, ok]})
    assert bench_gpu.main(["--tiny", "--out", str(tmp_path)]) == 1
    assert "MemoryError" in capsys.readouterr().err


def test_jaxgd_bench_gpu_runs_this_module(tmp_path, capsys):
    """``jaxgd bench --gpu`` is this benchmark (the flag is dropped, the rest passed on)."""
    from jaxgd.cli import main

    assert main(["bench", "--gpu", "--tiny", "--out", str(tmp_path), "--budget", "1e-9",
                 "--problems", "B,C"]) == 0
    assert (tmp_path / "gpu_bench.md").read_text().startswith("# jaxgd GPU benchmark")
    assert main(["bench", "--gpu", "--reps", "0", "--out", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err


def test_a_parity_failure_in_f_is_reported_and_the_exit_code_is_1(tmp_path, monkeypatch,
                                                                  capsys):
    from experiments import bench_f, bench_gpu

    def unequal(*a, **k):
        raise bench_f.ParityError("F B fit vs peer 0a (loop): differ by 0.5")

    monkeypatch.setattr(bench_f, "run_f", unequal)
    assert bench_gpu.main(["--tiny", "--out", str(tmp_path), "--problems", "F"]) == 1
    md = (tmp_path / "gpu_bench.md").read_text()
    assert "F stopped: error: ParityError: F B fit vs peer 0a (loop): differ by 0.5" in md
    assert "ParityError" in capsys.readouterr().err
