"""Problem set F of the benchmark (``experiments/bench_f.py``): its rows and tables, its
peers against an independent NumPy loop, and a parity check that fails when the peer
computes something else. No timing asserts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest


def test_f_rows_targets_and_table_through_bench_main(tmp_path, monkeypatch):
    from experiments import bench, bench_f

    monkeypatch.setattr(bench_f, "F_PROBLEMS", ("A", "B"))  # the fast ones
    res = bench.main(["--tiny", "--problems", "F", "--no-scaling", "--out", str(tmp_path)])

    f = pd.read_csv(tmp_path / "f.csv")
    assert (tmp_path / "f.md").read_text().count("\n") >= 5
    assert list(zip(f["problem"], f["mode"], f["N"], f["plan"], strict=True)) == [
        ("A", "fit", 1, "single"), ("A", "sweep", 2, "vmap"), ("A", "sweep plan=map", 2, "map"),
        ("B", "fit", 1, "single"), ("B", "sweep", 2, "vmap"), ("B", "sweep plan=map", 2, "map")]
    for _, r in f.iterrows():
        runs = [r["jaxgd run s"], r["loop run s"], r["scan run s"]]
        assert all(math.isfinite(v) and v > 0 for v in runs)
        # the ratio against the faster peer, recomputed here
        assert r["jaxgd / peer (run)"] == pytest.approx(runs[0] / min(runs[1:]))
        assert r["<= 1 run"] == ("met" if r["jaxgd / peer (run)"] <= 1 else "unmet")
        assert r["<= 1 first call"] in ("met", "unmet")
        assert 0 <= r["parity (rel. max diff)"] <= 1e-4
    assert (f["rounds"] == 1).all()  # F_TINY: one timed round
    assert list(f["jaxgd loop"]) == ["scan"] * 6  # no convolution: the scan plan

    table = pd.read_csv(tmp_path / "bench.csv")
    rows = table[table["problem"].str.startswith("F ")]
    assert set(rows["problem"]) == {"F A fit", "F A sweep", "F A sweep plan=map", "F B fit",
                                    "F B sweep", "F B sweep plan=map"}
    assert set(rows["implementation"]) == {
        "jaxgd fit (defaults)", "jaxgd sweep (defaults)", "jaxgd sweep plan=map",
        "peer 0a: jitted step + Python loop", "peer 0b: hand jit(lax.scan)"}
    targets = pd.read_csv(tmp_path / "targets.csv")
    ft = targets[targets["target"].str.startswith("F ")]
    assert len(ft) == 2 * len(f) and set(ft["goal"]) == {"<= 1"}
    assert res["f"] is not None and len(res["f"]) == len(f)
    # each problem's sweep under every execution plan, measured in the same run
    pl = pd.read_csv(tmp_path / "f_plans.csv", keep_default_na=False)
    assert list(zip(pl["problem"], pl["plan"], pl["loop"], strict=True)) == [
        (q, p, lp) for q in ("A", "B") for p in ("vmap", "map") for lp in ("scan", "host")]
    for q in ("A", "B"):
        mine = pl[pl["problem"] == q]
        run = mine["run s"].astype(float)
        assert (run > 0).all() and (mine["compile s"].astype(float) >= 0).all()
        np.testing.assert_allclose(mine["run / fastest plan"].astype(float), run / run.min())
        # auto ran one of them: the rules' (F_TINY runs are too short to try the others;
        # A's 200 evaluations are enough to measure the default)
        assert list(mine["auto chose"]) == ["yes", "", "", ""]
        got = list(mine["auto measured eval s"])
        assert got[1:] == ["", "", ""] and (got[0] == "" or float(got[0]) > 0)
        assert (mine["parity with auto"].astype(float) <= 1e-4).all()


def test_default_problems_leave_f_out():
    from experiments import bench

    assert "F" in bench.PROBLEMS and "F" not in bench.DEFAULT_PROBLEMS


def _mse_scaled(p, batch):
    import jax.numpy as jnp

    xb, yb = batch
    return jnp.mean((1.5 * (xb @ p["w"] + p["b"]) - yb) ** 2)


def test_parity_check_fails_loudly_when_the_peer_computes_something_else():
    from experiments import bench_f

    with pytest.raises(bench_f.ParityError, match=r"F B fit vs peer 0a \(loop\)"):
        bench_f.run_f(bench_f.F_TINY, problems=("B",), overrides={"B": {"peer_loss":
                                                                         _mse_scaled}},
                      echo=lambda m: None)


def test_check_parity_judges_params_and_state():
    from experiments import bench_f

    ref = [{"params": {"w": np.array([1.0, -2.0]), "b": np.array(0.5)}, "state": None}]
    near = [{"params": {"w": np.array([1.0 + 1e-6, -2.0]), "b": np.array(0.5)},
             "state": None}]
    assert bench_f.check_parity("x", near, ref, 1e-3) == pytest.approx(5e-7)
    far = [{"params": {"w": np.array([1.1, -2.0]), "b": np.array(0.5)}, "state": None}]
    with pytest.raises(bench_f.ParityError, match="differ"):
        bench_f.check_parity("x", far, ref, 1e-3)
    nan = [{"params": {"w": np.array([np.nan, -2.0]), "b": np.array(0.5)}, "state": None}]
    with pytest.raises(bench_f.ParityError):
        bench_f.check_parity("x", nan, ref, 1e-3)
    with pytest.raises(bench_f.ParityError, match="1 results from jaxgd, 2"):
        bench_f.check_parity("x", ref, ref + ref, 1e-3)
    sref = [{"params": ref[0]["params"], "state": {"m": np.array([1.0])}}]
    sbad = [{"params": ref[0]["params"], "state": {"m": np.array([2.0])}}]
    with pytest.raises(bench_f.ParityError):
        bench_f.check_parity("x", sbad, sref, 1e-3)


def test_peers_match_a_numpy_loop_on_the_line():
    """Both peers of A run the textbook SGD loop (NumPy, float64) and nothing else."""
    from experiments import bench_f

    prob = bench_f.a_problem(bench_f.F_TINY)
    x, y = (np.asarray(a, np.float64) for a in prob.data)
    lr = 1e-4
    w = b = 0.0
    for _ in range(prob.epochs):
        err = w * x[:, 0] + b - y
        w, b = w - lr * 2 * np.mean(err * x[:, 0]), b - lr * 2 * np.mean(err)
    for make in (bench_f.make_loop, bench_f.make_scan):
        p = make(prob)(lr, 0)["params"]
        assert float(p["w"]) == pytest.approx(w, rel=1e-5)
        assert float(p["b"]) == pytest.approx(b, rel=1e-4, abs=1e-7)


def test_bad_problem_name_is_refused():
    from experiments import bench_f

    with pytest.raises(ValueError, match="problems=.*'Z'"):
        bench_f.run_f(bench_f.F_TINY, problems=("Z",))


@pytest.mark.slow  # six problems, each compiling jaxgd and both peers: minutes on 2 cores
def test_every_f_problem_runs_at_tiny_sizes_with_parity():
    from experiments import bench_f

    rows = bench_f.run_f(bench_f.F_TINY, echo=lambda m: None)
    assert [(r["problem"], r["mode"].split(" plan=")[0]) for r in rows] == [
        (p, m) for p in bench_f.F_PROBLEMS for m in ("fit", "sweep", "sweep")
        if not (p == "C" and m == "fit")]
    assert all(r["parity"] <= 1e-3 for r in rows)
    assert all(math.isfinite(r["ratio_run"]) and r["ratio_run"] > 0 for r in rows)


def test_short_rows_get_more_rounds_within_their_budget():
    from experiments.bench_f import rounds_for

    assert rounds_for(3, 20.0, 1.0, 25) == 5  # a quarter of the budget: 5 rounds of 1 s
    assert rounds_for(3, 20.0, 0.01, 25) == 25  # short rounds: up to short_rounds
    assert rounds_for(3, 20.0, 10.0, 25) == 2  # long rounds: what fits in the budget
    assert rounds_for(3, 20.0, 0.01, 0) == 3  # no short rounds asked: reps
    assert rounds_for(5, 1.0, 30.0, 25) == 1  # at least one


def test_interleaved_rounds_rotate_which_side_starts():
    """Each timed round starts from the next side, so no side is always timed right after
    the same other one (a call after the user's loop runs slower)."""
    from experiments.bench_f import interleaved

    order = []
    fns = {k: (lambda k=k: order.append(k)) for k in ("jaxgd", "loop", "scan")}
    times, _ = interleaved(fns, 3)
    assert order == ["jaxgd", "loop", "scan", "loop", "scan", "jaxgd",
                     "scan", "jaxgd", "loop", "jaxgd", "loop", "scan"]
    assert all(len(ts) == 3 for _, ts in times.values())
