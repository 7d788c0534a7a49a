"""The aae quality suite (pipelines/quality/aae.py): its data split, its report and its verdicts."""
from __future__ import annotations

import json

import pytest
import torch

from pipelines.quality.aae import AAEBudget, MODELS, load_suite_data, seed_claim, run_aae_suite, run_semi_supervised, semi_markdown


def test_seed_claim_applies_the_two_standard_error_rule():
    assert seed_claim("c", [3.0, 3.1, 2.9], [1.0, 1.0, 1.0], "nats")["verdict"] == "holds"
    assert seed_claim("c", [1.0, 1.1, 0.9], [3.0, 3.0, 3.0], "nats")["verdict"] == "does not hold"
    unresolved = seed_claim("c", [1.0, 3.0, -1.0], [0.5, 0.5, 0.5], "nats")
    assert unresolved["verdict"] == "not resolved at this budget"
    assert unresolved["difference"] == pytest.approx(0.5) and unresolved["standard_error"] == pytest.approx(2 / 3 ** 0.5)
    assert seed_claim("c", [2.0], [1.0], "nats")["verdict"].startswith("not resolved")
    # far apart over two seeds: still not resolved (the judge needs 3), as for every quality claim
    assert seed_claim("c", [5.0, 5.1], [1.0, 1.1], "nats")["verdict"] == "not resolved at this budget"


def tiny_budget(folder) -> AAEBudget:
    return AAEBudget(dataset=str(folder), train_limit=300, validation_examples=100, test_examples=64, epochs=1,
                     seeds=[0, 1], hidden_dims=[16], samples=300, mmd_points=64, nll_samples=3)


def test_the_validation_split_is_held_out_of_training(idx_folder):
    budget = tiny_budget(idx_folder)
    data = load_suite_data(budget)
    assert len(data.prepared.train) == 300 and len(data.validation_grey) == 100 and len(data.test_grey) == 64
    from core.data import to_float
    from core.datasets import load_split
    full = load_split(str(idx_folder), "train", None)
    assert torch.equal(data.validation_grey, to_float(full.images[300:400]).flatten(1))
    assert torch.equal(data.prepared.train.images, full.images[:300])


def test_suite_reports_every_model_and_seed_with_one_kernel_per_prior(idx_folder, tmp_path):
    report = run_aae_suite(tiny_budget(idx_folder), tmp_path / "out", log=lambda *a: None)
    saved = json.loads((tmp_path / "out" / "aae.json").read_text())
    assert saved["findings"] == report["findings"] and len(report["findings"]) == 3
    assert set(saved["results"]) == set(MODELS)
    for model, per_seed in saved["results"].items():
        assert set(per_seed) == {"0", "1"}
        for r in per_seed.values():
            assert r["parzen"]["samples"] == 300 and r["parzen"]["test_examples"] == 64
            assert r["parzen"]["standard_error"] > 0 and r["mmd_points"] == 64
            assert ("nll" in r["test"]) == (model == "vae")  # the deterministic aae has no likelihood
    for seed in ("0", "1"):  # the vae and aae-gaussian codes are measured against the same N(0, I) draw
        assert saved["results"]["vae"][seed]["mmd_bandwidth"] == saved["results"]["aae-gaussian"][seed]["mmd_bandwidth"]
    for name in ("aae-codes.png", "aae-samples-vae.png", "aae-samples-aae-mixture.png"):
        assert (tmp_path / "out" / "figures" / name).stat().st_size > 1000, name


def test_semi_supervised_part_reports_both_accuracies_per_seed(idx_folder, tmp_path):
    budget = tiny_budget(idx_folder)
    budget.semi_labels = [8, 40]
    report = run_semi_supervised(budget, tmp_path / "out", log=lambda *a: None)
    saved = json.loads((tmp_path / "out" / "aae-semi.json").read_text())
    assert set(saved["results"]) == {"n8", "n40"} and len(saved["findings"]) == 2
    for per_seed in report["results"].values():
        assert set(per_seed) == {"0", "1"}
        for r in per_seed.values():
            # 64 test images: accuracies are multiples of 1/64 (the whole split was scored)
            assert 0 <= r["aae"] <= 1 and (r["aae"] * 64) == pytest.approx(round(r["aae"] * 64))
            assert 0 <= r["classifier"] <= 1
    table = semi_markdown(report).splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == ["| 8", "| 40"]
