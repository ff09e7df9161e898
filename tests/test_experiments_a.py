"""Experiments e01-e07 and the demo runner, in quick mode.

Each experiment asserts its own parity numbers with ``check`` (raising ``ParityError``);
here we also assert that its figures and tables were written and re-check the headline
parity numbers it returns.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

# (module, expected files, headline key -> tolerance)
CASES = {
    "e01_batch_vs_sgd": (["cost_curves.png", "results.csv", "results.md"],
                         {"max_abs_err_vs_numpy": 1e-5}),
    "e02_accounting": (["steps_per_epoch.png", "batch_plan.csv", "batch_plan.md",
                        "fit_steps.csv", "fit_steps.md"], {}),
    "e03_vectorised_linreg": (["j_history.png", "theta.csv", "theta.md"],
                              {"max_err_vs_numpy": 1e-5, "converged_err_vs_closed_form": 1e-3}),
    "e04_noisy_line": (["noisy_line.png", "fit_and_timing.csv", "fit_and_timing.md"],
                       {"err_vs_numpy_loop": 1e-4}),
    "e05_learning_rate": (["learning_rate.png", "learning_rates.csv", "sweep.csv"],
                          {"sweep_vs_fit_rel_err": 1e-4}),
    "e06_optimizers": (["rosenbrock.png", "digits_mlp.png", "rosenbrock.csv", "digits_mlp.md"],
                       {"adam_vs_optax_loop": 1e-5, "nesterov_vs_optax_loop": 1e-5}),
    "e07_schedules": (["schedules.png", "staircase_table.csv", "staircase_table.md",
                       "fit_effect.csv"],
                      {"table_err_vs_closed_form": 1e-6, "table_err_vs_optax": 1e-6,
                       "fit_lr_history_err": 1e-6}),
}
SLOW = {"e05_learning_rate", "e06_optimizers"}  # several compiled programs each


def _param(name):
    marks = [pytest.mark.slow] if name in SLOW else []
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_param(n) for n in CASES])
def test_experiment_quick(name, tmp_path):
    mod = importlib.import_module(f"experiments.{name}")
    files, tols = CASES[name]
    res = mod.run(tmp_path, True)  # raises ParityError beyond its own tolerances
    out = tmp_path / name
    for f in files:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    for key, tol in tols.items():
        assert res[key] <= tol, (key, res[key], tol)


def test_e02_headline(tmp_path):
    res = importlib.import_module("experiments.e02_accounting").run(tmp_path, True)
    assert res["B=256"] == "196 steps, last of 80"
    assert res["steps_per_epoch"] == {1: 50000, 32: 1563, 256: 196, 50000: 1}


def test_e07_staircase_rows(tmp_path):
    import pandas as pd

    importlib.import_module("experiments.e07_schedules").run(tmp_path, True)
    t = pd.read_csv(tmp_path / "e07_schedules" / "staircase_table.csv")
    lr = dict(zip(t["step"], t["learning_rate"], strict=True))
    assert lr[0] == lr[999] == pytest.approx(0.1)
    assert lr[1000] == lr[1999] == pytest.approx(0.096)
    assert lr[2000] == pytest.approx(0.09216)


def test_demo_index_and_failure(tmp_path, monkeypatch):
    demo = importlib.import_module("experiments.demo")
    assert [m.split(".")[-1][:3] for m in demo.discover(["e01", "e03"])] == ["e01", "e03"]
    assert demo.main(["--out", str(tmp_path), "--quick", "--only", "e03"]) == 0
    index = (tmp_path / "index.md").read_text()
    assert "e03_vectorised_linreg/j_history.png" in index
    assert "e03_vectorised_linreg/theta.md" in index
    assert "converged_err_vs_closed_form" in index

    # a failing experiment is reported and gives exit status 1
    mod = importlib.import_module("experiments.e03_vectorised_linreg")

    def boom(out: Path, quick: bool):
        raise RuntimeError("boom")

    monkeypatch.setattr(mod, "run", boom)
    assert demo.main(["--out", str(tmp_path / "f"), "--quick", "--only", "e03"]) == 1
    assert "FAILED" in (tmp_path / "f" / "index.md").read_text()
