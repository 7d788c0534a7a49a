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
from pipelines.quality import (Budget, findings, hidden_pixels_nll, label_classifier, plan,
                               train_label_classifier)
from variants.cvae import quadrant_mask


def test_plan_has_each_paper_comparison_once():
    jobs = plan(Budget(iwae_ks=[1, 5], m2_labels=[8, 16]), ["burda", "dvae", "m2", "cvae", "zoo"])
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


def _result(key, variant=None, kind="variant", **metrics):
    options = {"vae": lambda: {"samples": int(key.split("k")[-1])}, "iwae": lambda: {"k": int(key.split("k")[-1])},
               "m2": lambda: {"num_labels": int(key.split("n")[-1])},
               "cvae": lambda: {"condition": "quadrants", "visible_quadrants": int(key[-1])}}
    return {"key": key, "variant": variant, "kind": kind, "options": options[variant]() if variant else {}, **metrics}


def test_findings_check_each_claim_against_its_own_baseline():
    results = {r["key"]: r for r in [
        _result("vae-k1", "vae", nll=250.0, active_units=20), _result("iwae-k1", "iwae", nll=250.5, active_units=20),
        _result("vae-k50", "vae", nll=249.0, active_units=20), _result("iwae-k50", "iwae", nll=246.0, active_units=19),
        _result("m2-n100", "m2", accuracy=0.70), _result("classifier-n100", kind="label_classifier", accuracy=0.72),
        _result("cvae-q1", "cvae", cond_nll=150.0), _result("network-q1", kind="completion_network", cond_nll=160.0),
    ]}
    got = {f["claim"]: f["holds"] for f in findings(results)}
    assert got == {
        "IWAE test NLL falls as k grows": True,
        "IWAE keeps at least as many active units as the VAE at k=1": True,
        "IWAE beats the VAE at k=50 (NLL)": True,
        "IWAE keeps at least as many active units as the VAE at k=50": False,
        "M2 beats the labels-only classifier with 100 labels (test accuracy)": False,
        "CVAE beats the deterministic network on conditional NLL with 1 quadrant(s) given": True,
    }


def test_vaezoo_quality_runs_every_suite_checks_claims_and_continues(idx_folder, tmp_path, capsys):
    out = tmp_path / "quality"
    args = ["quality", "--dataset", str(idx_folder), "--out", str(out), "--epochs", "1", "--nll-samples", "20",
            "--nll-examples", "128", "--iwae-k", "1,3", "--m2-labels", "8,16", "--no-progress",
            "--set", "train.batch_size=64"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    expected = {j.key for j in plan(Budget(iwae_ks=[1, 3], m2_labels=[8, 16]), ["burda", "dvae", "m2", "cvae", "zoo"])}
    assert set(report["results"]) == expected
    assert report["config"]["train"]["batch_size"] == 64 and report["budget"]["epochs"] == 1
    for key, r in report["results"].items():
        if r["kind"] != "variant":
            continue
        # a label cvae's encoder needs the label: its active units are named conditional
        assert 0 <= r.get("active_units", r.get("cond_active_units")) <= 20
        if r["variant"] != "m2":  # m2's NLL uses a quarter of the images: not comparable with its ELBO
            # The k-sample estimate sits between the true NLL and -ELBO (the same 128 images):
            # allow Monte-Carlo noise only. A cvae's is conditional, cond_nll, never nll.
            nll = r["cond_nll"] if r["variant"] == "cvae" else r["nll"]
            assert nll <= -r["elbo"] + 1.0, key
            assert r["nll_examples"] == 128
    for n in (8, 16):
        assert 0 <= report["results"][f"m2-n{n}"]["accuracy"] <= 1
        assert report["results"][f"m2-n{n}"]["nll_examples"] == 128 // NUM_CLASSES
    for q in (1, 2, 3):
        # The conditional NLL is scored on the hidden quadrants only: at most all their pixels at p=1/2 or so.
        hidden = (4 - q) * (SIZE // 2) ** 2
        assert 0 < report["results"][f"cvae-q{q}"]["cond_nll"] < hidden * 2 * math.log(2)
        assert 0 < report["results"][f"network-q{q}"]["cond_nll"] < hidden * 2 * math.log(2)
    assert {f["claim"] for f in report["findings"]} >= {"IWAE test NLL falls as k grows"}
    assert all(isinstance(f["holds"], bool) for f in report["findings"])

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
            "--nll-samples", "5", "--nll-examples", "8", "--no-progress", "--no-figures"]
    (out / "results").mkdir(parents=True)
    lock = out / "results" / "cvae-label.lock"
    lock.write_text(str(__import__("os").getpid()))  # a live process holds the only model: skipped
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["results"] == {}
    assert lock.exists() and not (out / "results" / "cvae-label.json").exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())  # its process is gone (killed): the lock is taken over
    assert main(args) == 0
    assert set(json.loads(capsys.readouterr().out)["results"]) == {"cvae-label"}
    assert not lock.exists() and (out / "results" / "cvae-label.json").exists()
