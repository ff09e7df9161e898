"""Experiments 8-14 in their reduced (``quick``) size: files written, parity numbers held.

Each experiment already raises ``ParityError`` when jaxgd disagrees with its reference
beyond the stated tolerance; the assertions below restate the headline numbers so a
failure names them. The RNN and float64-accumulation runs spend most of their time
compiling and are marked slow.
"""

from __future__ import annotations

import importlib

import pytest


def run_quick(name, tmp_path):
    mod = importlib.import_module(f"experiments.{name}")
    res = mod.run(tmp_path, quick=True)
    folder = tmp_path / name
    files = {p.suffix for p in folder.iterdir()}
    assert {".png", ".csv", ".md"} <= files, sorted(folder.iterdir())
    return mod, res


def test_e08_regularisation(tmp_path):
    mod, res = run_quick("e08_regularisation", tmp_path)
    assert res["coef_max_abs_diff"] <= mod.COEF_TOL
    assert res["objective_max_rel_excess"] <= mod.OBJ_TOL
    assert (tmp_path / "e08_regularisation" / "paths.png").exists()


@pytest.mark.slow
def test_e09_clipping(tmp_path):
    _, res = run_quick("e09_clipping", tmp_path)
    assert res["unclipped_stop"].startswith("diverged")
    assert res["clip_value_final_loss"] < 0.1 * res["init_loss"]
    assert res["clip_norm_final_loss"] < 0.1 * res["init_loss"]


@pytest.mark.slow
def test_e10_accumulation(tmp_path):
    mod, res = run_quick("e10_accumulation", tmp_path)
    assert res["max_abs_diff_vs_big_batch"] <= mod.TOL_JAX
    assert res["max_abs_diff_vs_torch"] <= mod.TOL_TORCH


def test_e11_kfold(tmp_path):
    mod, res = run_quick("e11_kfold", tmp_path)
    assert res["same_choice_as_kfold_loop"]
    assert res["max_rel_diff_val_loss"] <= mod.TOL


def test_e12_parity(tmp_path):
    mod, res = run_quick("e12_parity", tmp_path)
    assert res["max_abs_param_diff_at_optimum"] <= mod.TOL_OPT
    assert res["max_abs_diff_torch_trajectory"] <= mod.TOL_TRAJ


def test_e13_scaling(tmp_path):
    _, res = run_quick("e13_scaling", tmp_path)
    assert res["cond_raw"] > 1e4 * res["cond_standardised"]
    assert res["epochs_to_target_standardised"] < 100
    assert isinstance(res["epochs_to_target_raw"], str)  # not reached


def test_e14_digits(tmp_path):
    mod, res = run_quick("e14_digits", tmp_path)
    assert res["softmax_vs_sklearn_accuracy_diff"] <= mod.ACC_TOL
    assert min(res["test_accuracy"].values()) > 0.85


def test_e15_research_code(tmp_path):
    mod, res = run_quick("e15_research_code", tmp_path)
    assert res["params_max_abs_diff"] <= mod.PARAM_TOL
    assert res["batch_stats_max_abs_diff"] <= mod.PARAM_TOL
    assert res["test_accuracy_max_diff"] == 0.0
    assert res["test_accuracy"] > 0.7
    assert (tmp_path / "e15_research_code" / "sweep.csv").exists()


@pytest.mark.slow
def test_e18_optuna(tmp_path):
    _, res = run_quick("e18_optuna", tmp_path)
    assert len(res["problems"]) == 2
    assert all(0 < r < 10 for r in res["batched best / sequential best"])
    table = (tmp_path / "e18_optuna" / "optuna_sequential_vs_batched.csv").read_text()
    assert table.count("jaxgd.optuna_search") == 2 and table.count("median pruner") == 2


@pytest.mark.slow
def test_e17_char_lm(tmp_path):
    mod, res = run_quick("e17_char_lm", tmp_path)
    folder = tmp_path / "e17_char_lm"
    for f in ("val_bpc_vs_steps.png", "lr_warmup_heatmap.png", "lr_warmup_grid.csv",
              "hyperband_vs_grid.csv", "parity_optax_loop.md"):
        assert (folder / f).exists(), f
    assert res["val curve rel diff vs optax loop"] <= mod.VAL_TOL
    assert res["params max abs diff vs optax loop"] <= mod.PARAM_TOL
    # the model learns from context: below the character frequencies' bits per character
    assert res["best final val bpc"] < res["unigram val bpc"]
    assert 0 < res["Hyperband updates / grid's"] < 1
    assert res["Hyperband best val bpc / grid's"] >= 1 - 1e-4  # prefixes of the grid's curves
