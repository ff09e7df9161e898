"""Smoke test of the benchmark (``experiments/bench.py``) at tiny sizes: no timing asserts."""

from __future__ import annotations

import math

import pandas as pd


def test_bench_tiny_writes_tables_and_figures(tmp_path):
    from experiments import bench

    res = bench.main(["--tiny", "--out", str(tmp_path)])

    for name in ("bench.csv", "bench.md", "targets.csv", "targets.md", "scaling.csv",
                 "scaling.md", "speedup.png", "scaling.png"):
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 0, name

    table = pd.read_csv(tmp_path / "bench.csv")
    assert set("ABCD") <= set(table["problem"].str[0])
    assert {"jaxgd", "PyTorch per config", "NumPy loop per config"} <= set(
        table["implementation"])
    ratios = table.loc[table["problem"] != "memory", "speedup_of_jaxgd"]
    assert len(ratios) and all(math.isfinite(r) and r > 0 for r in ratios)
    assert (table["run_s"] > 0).all()
    assert res["peak_gflops"] > 0

    targets = pd.read_csv(tmp_path / "targets.csv")
    assert targets["measured"].map(math.isfinite).all()
    assert any(t.startswith("recompiles") for t in targets["target"])

    scaling = pd.read_csv(tmp_path / "scaling.csv")
    assert "error" not in scaling.columns, scaling.to_string()
    assert set(scaling["axis"]) == {"configs", "samples", "devices"}
    assert (scaling["run_s"] > 0).all()
