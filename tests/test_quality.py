"""The quality protocol (issue #6): its baselines against reference computations, the papers'
claims checked by `findings`, and the whole benchmark through `vaezoo quality` on the synthetic
data, continued from its per-model results on a rerun."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import NUM_CLASSES, SIZE
from core.config import RunConfig
from core.data import PreparedData, labelled_subset
from pipelines.cli import main
from pipelines.quality import (Budget, findings, hidden_pixels_nll, judge, label_classifier, plan,
                               train_label_classifier)
from variants.cvae import quadrant_mask


def test_plan_has_each_paper_comparison_once_per_seed():
    jobs = plan(Budget(iwae_ks=[1, 5], m2_labels=[8, 16], seeds=[0, 3]), ["burda", "dvae", "m2", "cvae", "zoo"])
    assert [j.seed for j in jobs] == [0] * 18 + [3] * 18  # seed-major
    assert [j.key for j in jobs[:18]] == [j.key for j in jobs[18:]]
    assert jobs[18].run_key == "vae-k1-seed3"
    from pipelines.quality import job_config
    assert job_config(Budget(seeds=[0, 3]), jobs[18]).train.seed == 3
    jobs = jobs[:18]
    keys = [j.key for j in jobs]
    assert keys == ["vae-k1", "iwae-k1", "vae-k5", "iwae-k5",  # burda; dvae reuses vae-k1
                    "dvae-gaussian", "dvae-salt_and_pepper", "dvae-masking",
                    "m2-n8", "classifier-n8", "m2-n16", "classifier-n16",
                    "cvae-q1", "network-q1", "cvae-q2", "network-q2", "cvae-q3", "network-q3", "cvae-label"]
    by_key = {j.key: j for j in jobs}
    assert by_key["vae-k5"].options == {"samples": 5} and by_key["iwae-k5"].options == {"k": 5}
    assert by_key["cvae-q2"].options == {"condition": "quadrants", "visible_quadrants": 2}
    with pytest.raises(ValueError, match="unknown suite"):
        plan(Budget(), ["burda", "gan"])


def test_hidden_pixels_nll_is_the_bernoulli_nll_of_the_hidden_quadrants_only():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((5, 1, SIZE, SIZE), 0.3))
    mask = quadrant_mask(1, SIZE, SIZE, 1)
    zero = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, SIZE * SIZE))
    torch.nn.init.zeros_(zero[1].weight)
    torch.nn.init.zeros_(zero[1].bias)
    # logits 0: p = 1/2 on each of the 48 hidden pixels, whatever their value
    assert torch.allclose(hidden_pixels_nll(zero, x, mask), torch.full((5,), 48 * math.log(2)))

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, SIZE * SIZE))
    p = torch.sigmoid(net(x * mask)).view_as(x)
    hidden = mask == 0
    expected = torch.stack([-(xi[h] * pi[h].log() + (1 - xi[h]) * (1 - pi[h]).log()).sum()
                            for xi, pi, h in zip(x, p, hidden.expand_as(x))])
    assert torch.allclose(hidden_pixels_nll(net, x, mask), expected, atol=1e-4)


def test_label_classifier_is_m2s_classifier_and_reports_its_true_accuracy(prepared: PreparedData):
    config = RunConfig.from_dict({"train": {"epochs": 1, "batch_size": 64}})
    m2_config = RunConfig.from_dict({"variant_name": "m2", "variant": {"num_labels": 16}})
    from core.serialization import build_variant

    m2 = build_variant(m2_config, prepared.shape, prepared.num_classes)
    baseline = label_classifier(config, prepared.shape, prepared.num_classes)
    assert [p.shape for p in baseline.parameters()] == [p.shape for p in m2.classifier.parameters()]

    net, metrics = train_label_classifier(config, prepared, 16)
    with torch.no_grad():
        x = prepared.test.images.float() / 255  # the fixed binarisation: already 0/1
        reference = float((net(x).argmax(-1) == prepared.test.labels).float().mean())
    assert metrics["accuracy"] == pytest.approx(reference)
    # quadrant classes are easy: 16 labels are far better than chance
    assert metrics["accuracy"] > 1.5 / NUM_CLASSES
    assert len(labelled_subset(prepared.train.labels, 16, NUM_CLASSES)) == 16


def test_completion_network_is_scored_on_the_cvaes_first_nll_examples_images(prepared: PreparedData):
    from pipelines.quality import train_completion_network

    config = RunConfig.from_dict({"train": {"epochs": 1, "batch_size": 64}, "model": {"hidden_dims": [32]}})
    net, metrics = train_completion_network(config, prepared, 2, nll_examples=40)
    mask = quadrant_mask(1, SIZE, SIZE, 2)
    with torch.no_grad():
        x = prepared.test.floats(torch.arange(len(prepared.test))).double()
        per_image = hidden_pixels_nll(net.double(), x, mask.double())
    assert metrics["nll_examples"] == 40 and metrics["test_examples"] == len(prepared.test)
    assert metrics["cond_nll"] == pytest.approx(float(per_image[:40].mean()), rel=1e-5)
    assert metrics["cond_nll"] != pytest.approx(float(per_image.mean()), rel=1e-5)  # not the whole split


def test_judge_holds_only_beyond_two_standard_errors_over_three_seeds():
    # clearly separated: 0.80 ± 0.006 vs 0.70 ± 0.006
    j = judge([0.79, 0.80, 0.81], [0.69, 0.70, 0.71], higher_is_better=True)
    assert j["verdict"] == "holds"
    assert j["ours_mean"] == pytest.approx(0.80) and j["baseline_mean"] == pytest.approx(0.70)
    assert j["ours_se"] == pytest.approx(0.01 / math.sqrt(3))
    assert j["difference"] == pytest.approx(0.10) and j["standard_error"] == pytest.approx(math.sqrt(2 / 3) * 0.01)
    # the same numbers where lower is better: the claim fails, beyond 2 s.e. the other way
    assert judge([0.79, 0.80, 0.81], [0.69, 0.70, 0.71], higher_is_better=False)["verdict"] == "does not hold"
    # overlapping intervals: difference 0.01, its s.e. about 0.047
    assert judge([0.70, 0.80, 0.75], [0.69, 0.79, 0.74], higher_is_better=True)["verdict"] == "not resolved at this budget"
    # far apart but fewer than 3 seeds: never "holds"
    assert judge([0.9, 0.91], [0.1, 0.11], higher_is_better=True)["verdict"] == "not resolved at this budget"
    # just inside / just beyond 2 s.e.: differences 0.02 +- 0.0100 and 0.03 +- 0.0100
    base = [0.0, 0.01 * math.sqrt(3) / math.sqrt(2), -0.01 * math.sqrt(3) / math.sqrt(2)]  # s.e. 0.01 / sqrt(2)
    assert judge([v + 0.019 for v in base], base, True)["verdict"] == "not resolved at this budget"
    assert judge([v + 0.021 for v in base], base, True)["verdict"] == "holds"


def _model(key, variant, kind="variant", **per_seed_metrics):
    options = {"vae": lambda: {"samples": int(key.split("k")[-1])}, "iwae": lambda: {"k": int(key.split("k")[-1])},
               "m2": lambda: {"num_labels": int(key.split("n")[-1])},
               "cvae": lambda: {"condition": "quadrants", "visible_quadrants": int(key[-1])}}
    runs = [{"key": key, "seed": s, "suite": "x", "kind": kind, "variant": variant,
             "options": options[variant]() if variant else {}} | {m: v[s] for m, v in per_seed_metrics.items()}
            for s in range(3)]
    return runs


def test_findings_judge_each_claim_against_its_own_baseline_over_the_seeds():
    from pipelines.quality.jobs import aggregate

    runs = [
        *_model("vae-k1", "vae", nll=[250.0, 250.2, 249.8], active_units=[20, 20, 20]),
        *_model("iwae-k1", "iwae", nll=[250.5, 249.5, 250.1], active_units=[20, 20, 20]),
        *_model("vae-k50", "vae", nll=[249.0, 249.1, 248.9], active_units=[20, 20, 20]),
        *_model("iwae-k50", "iwae", nll=[246.0, 246.1, 245.9], active_units=[19, 18, 19]),
        *_model("m2-n100", "m2", accuracy=[0.70, 0.74, 0.72]),
        *_model("classifier-n100", None, "label_classifier", accuracy=[0.72, 0.71, 0.74]),
        *_model("cvae-q1", "cvae", cond_nll=[150.0, 151.0, 149.0]),
        *_model("network-q1", None, "completion_network", cond_nll=[160.0, 161.0, 159.0]),
    ]
    results = aggregate(runs)
    assert results["vae-k1"]["mean"]["nll"] == pytest.approx(250.0)
    assert results["vae-k1"]["se"]["nll"] == pytest.approx(0.2 / math.sqrt(3))
    assert results["m2-n100"]["seeds"] == [0, 1, 2]
    got = {f["claim"]: f["verdict"] for f in findings(results)}
    assert got == {
        "IWAE test NLL falls from k=1 to k=50": "holds",
        "IWAE has more active units than the VAE at k=1": "not resolved at this budget",
        "IWAE beats the VAE at k=50 (NLL)": "holds",
        "IWAE has more active units than the VAE at k=50": "does not hold",
        "M2 beats the labels-only classifier with 100 labels (test accuracy)": "not resolved at this budget",
        "CVAE beats the deterministic network on conditional NLL with 1 quadrant(s) given": "holds",
    }
    from dataclasses import asdict

    from pipelines.quality import markdown
    text = markdown({"results": results, "budget": asdict(Budget(m2_labels=[100])), "findings": findings(results)})
    assert "| 100 | 72.00 ± 1.15 |  | 72.33 ± 0.88 |" in text.splitlines()  # no M1+M2 result here
    assert "- **not resolved at this budget**: M2 beats the labels-only classifier with 100 labels" in text


def test_vaezoo_quality_runs_every_suite_checks_claims_and_continues(idx_folder, tmp_path, capsys):
    out = tmp_path / "quality"
    args = ["quality", "--dataset", str(idx_folder), "--out", str(out), "--epochs", "1", "--nll-samples", "20",
            "--nll-examples", "128", "--iwae-k", "1,3", "--m2-labels", "8,16", "--no-progress",
            "--seeds", "0", "--small-train-limit", "64", "--small-epochs", "2", "--set", "train.batch_size=64"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    expected = {j.key for j in plan(Budget(iwae_ks=[1, 3], m2_labels=[8, 16]),
                                    ["burda", "dvae", "dvae-small", "m2", "m1m2", "cvae", "zoo"])}
    assert {"m1m2-n8", "m1m2-n16"} <= expected
    assert set(report["results"]) == expected
    assert report["config"]["train"]["batch_size"] == 64 and report["budget"]["epochs"] == 1
    for key, model in report["results"].items():
        assert model["seeds"] == [0]
        r = model["per_seed"]["0"]
        if model["kind"] != "variant":
            continue
        label_conditioned = key == "cvae-label"  # its encoder needs the label: conditional active units
        assert 0 <= r["cond_active_units" if label_conditioned else "active_units"] <= 20
        assert r["nll_examples"] == 128  # the same images for every model, m2 included
        # The k-sample estimate sits between the true NLL and -ELBO (128 of the 128 test images):
        # allow Monte-Carlo noise only. A cvae's is conditional, and named so.
        nll = {"cvae": "cond_nll"}.get(model["variant"], "m1_latent_nll" if key.startswith("m1m2") else "nll")
        assert "nll" not in r or nll == "nll"
        assert r[nll] <= -r["elbo"] + 1.0, key
    small = report["results"]["vae-small"]["per_seed"]["0"]  # dvae-small: its own training subset and epochs
    assert small["train_images"] == 64 and [c["epoch"] for c in small["curves"]] == [1, 2]
    assert small["train_elbo"] == small["curves"][-1]["train/elbo"]
    diwae = report["results"]["diwae-small-0.1"]
    assert diwae["variant"] == "dvae" and diwae["options"]["noise_level"] == 0.1
    assert {f["claim"] for f in report["findings"]} >= {
        "The vae overfits on 64 training images (train ELBO above test ELBO)",
        "DIWAE (noise 0.1, k=5) has a lower clean test NLL than the IWAE (k=5) on the small training set"}
    m1m2 = report["results"]["m1m2-n8"]
    assert m1m2["options"]["m1_run"] == str((out / "models" / "vae-k1-seed0").resolve())
    mean = {key: m["mean"] for key, m in report["results"].items()}
    for n in (8, 16):
        assert 0 <= mean[f"m2-n{n}"]["accuracy"] <= 1
    for q in (1, 2, 3):
        # The conditional NLL is scored on the hidden quadrants only: at most all their pixels at p=1/2 or so.
        hidden = (4 - q) * (SIZE // 2) ** 2
        assert 0 < mean[f"cvae-q{q}"]["cond_nll"] < hidden * 2 * math.log(2)
        assert 0 < mean[f"network-q{q}"]["cond_nll"] < hidden * 2 * math.log(2)
        assert report["results"][f"network-q{q}"]["per_seed"]["0"]["nll_examples"] == 128  # the cvae's images
    assert {f["claim"] for f in report["findings"]} >= {"IWAE test NLL falls from k=1 to k=3"}
    # one seed judges nothing
    assert {f["verdict"] for f in report["findings"]} == {"not resolved at this budget"}

    # Figures: completions are rows of 10 test images (truth, visible, network, 3 cvae draws).
    completions = Image.open(out / "figures" / "completions-q2.png")
    assert completions.size == (10 * (SIZE + 2) + 2, 6 * (SIZE + 2) + 2)
    by_class = np.asarray(Image.open(out / "figures" / "samples-cvae-label-by-class.png"))
    assert by_class.shape[:2] == (NUM_CLASSES * (SIZE + 2) + 2, 10 * (SIZE + 2) + 2)

    # A rerun trains nothing: every model's results are kept byte for byte.
    before = {p.name: p.read_bytes() for p in (out / "results").iterdir()}
    assert main(args + ["--no-figures"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("kept from") == len(expected) and "training" not in captured.err
    assert {p.name: p.read_bytes() for p in (out / "results").iterdir()} == before

    # Another budget in the same folder is refused rather than mixed into one table.
    assert main([a if a != "1" else "2" for a in args]) == 1
    assert "another budget" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    (["--set", "variant.k=5"], "--set variant.k"),
    (["--suites", "burda,gan"], "unknown suite 'gan'"),
    (["--iwae-k", "1,x"], "--iwae-k"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--seeds", "0,0"], "--seeds: expected distinct"),
])
def test_bad_quality_arguments_give_one_line_and_train_nothing(idx_folder, tmp_path, capsys, bad, message):
    out = tmp_path / "q"
    assert main(["quality", "--dataset", str(idx_folder), "--out", str(out), *bad]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_processes_sharing_an_out_folder_train_each_model_once(idx_folder, tmp_path, capsys):
    import subprocess
    import sys

    out = tmp_path / "q"
    args = ["quality", "--dataset", str(idx_folder), "--out", str(out), "--suites", "zoo", "--epochs", "1",
            "--nll-samples", "5", "--nll-examples", "8", "--no-progress", "--no-figures", "--seeds", "0"]
    (out / "results").mkdir(parents=True)
    lock = out / "results" / "cvae-label-seed0.lock"
    lock.write_text(str(__import__("os").getpid()))  # a live process holds the only model: skipped
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["results"] == {}
    assert lock.exists() and not (out / "results" / "cvae-label-seed0.json").exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())  # its process is gone (killed): the lock is taken over
    assert main(args) == 0
    assert set(json.loads(capsys.readouterr().out)["results"]) == {"cvae-label"}
    assert not lock.exists() and (out / "results" / "cvae-label-seed0.json").exists()


def test_more_seeds_extend_a_results_folder_and_train_only_the_new_seed(idx_folder, tmp_path, capsys):
    out = tmp_path / "q"
    args = ["quality", "--dataset", str(idx_folder), "--out", str(out), "--suites", "zoo", "--epochs", "1",
            "--nll-samples", "5", "--nll-examples", "8", "--no-progress", "--no-figures"]
    assert main(args + ["--seeds", "0"]) == 0
    capsys.readouterr()
    assert main(args + ["--seeds", "0,1,2"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("kept from") == 1 and captured.err.count("training") == 2
    model = json.loads(captured.out)["results"]["cvae-label"]
    assert model["seeds"] == [0, 1, 2]
    elbos = [model["per_seed"][s]["elbo"] for s in ("0", "1", "2")]
    assert len(set(elbos)) == 3  # each seed its own model
    assert model["mean"]["elbo"] == pytest.approx(sum(elbos) / 3)

    # The table's mean ± s.e. is a direct computation from the per-seed result files.
    files = [json.loads((out / "results" / f"cvae-label-seed{s}.json").read_text()) for s in (0, 1, 2)]
    elbo = np.array([f["elbo"] for f in files])
    mean, se = elbo.mean(), elbo.std(ddof=1) / np.sqrt(3)
    assert model["mean"]["elbo"] == pytest.approx(mean) and model["se"]["elbo"] == pytest.approx(se)
    from pipelines.quality import markdown
    row, = [line for line in markdown(json.loads((out / "quality.json").read_text())).splitlines()
            if line.startswith("| cvae-label |")]
    assert row.split(" | ")[4] == f"{mean:.2f} ± {se:.2f}"  # the ELBO column


def test_more_label_counts_in_another_order_extend_a_folder_and_train_only_the_new_count(idx_folder, tmp_path,
                                                                                      capsys):
    out = tmp_path / "q"
    args = ["quality", "--dataset", str(idx_folder), "--out", str(out), "--suites", "m2", "--epochs", "1",
            "--nll-samples", "5", "--nll-examples", "8", "--no-progress", "--no-figures", "--seeds", "0"]
    assert main(args + ["--m2-labels", "8"]) == 0
    first = json.loads(capsys.readouterr().out)["results"]
    assert main(args + ["--m2-labels", "16,8"]) == 0
    captured = capsys.readouterr()
    # m2-n8 and classifier-n8 kept, m2-n16 and classifier-n16 trained
    assert captured.err.count("kept from") == 2 and captured.err.count("training") == 2
    results = json.loads(captured.out)["results"]
    assert set(results) == {"m2-n8", "classifier-n8", "m2-n16", "classifier-n16"}
    assert results["m2-n8"] == first["m2-n8"] and results["classifier-n8"] == first["classifier-n8"]
    # a field every result depends on still refuses the folder
    assert main(args + ["--m2-labels", "8", "--epochs", "2"]) == 1
    assert "another budget" in capsys.readouterr().err


def test_a_results_folder_of_an_earlier_version_resumes_under_its_old_names(idx_folder, tmp_path, capsys):
    """main's dcign/superres/inpaint suites kept `<key>-s<seed>.json` and a budget with dcign_seeds:
    read as the model's seed, nothing retrained; a new seed trains only its own model."""
    out = tmp_path / "q"
    args = ["quality", "--dataset", str(idx_folder), "--out", str(out), "--suites", "zoo", "--epochs", "1",
            "--nll-samples", "5", "--nll-examples", "8", "--no-progress", "--no-figures"]
    assert main(args + ["--seeds", "0"]) == 0
    first = json.loads(capsys.readouterr().out)["results"]["cvae-label"]["per_seed"]["0"]
    (out / "results" / "cvae-label-seed0.json").rename(out / "results" / "cvae-label-s0.json")
    budget = json.loads((out / "budget.json").read_text())
    (out / "budget.json").write_text(json.dumps(budget | {"dcign_seeds": 3}))
    assert main(args + ["--seeds", "0,1"]) == 0
    captured = capsys.readouterr()
    assert "cvae-label-s0.json" in captured.err and captured.err.count("training") == 1
    model = json.loads(captured.out)["results"]["cvae-label"]
    assert model["seeds"] == [0, 1] and model["per_seed"]["0"] == first
    assert sorted(p.name for p in (out / "results").glob("*.json")) == ["cvae-label-s0.json", "cvae-label-seed1.json"]
