"""benchmarks/learning_curves.py: the dvae-small curves' summary equals a direct computation over
the per-seed result files, the figure is a whole PNG, and a folder without results is refused."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "learning_curves.py"


def write_result(out: Path, key: str, seed: int, train: list[float], test: list[float]) -> None:
    curves = [{"epoch": e + 1, "train/elbo": tr, "test/elbo": te} for e, (tr, te) in enumerate(zip(train, test))]
    path = out / "results" / f"{key}-seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "seed": seed, "curves": curves}))


def test_summary_equals_direct_computation_and_figure_is_written(tmp_path):
    rng = np.random.default_rng(0)
    train = {s: (-300 + np.arange(5) * 10 + rng.normal(size=5)).tolist() for s in range(3)}
    test = {s: (-302 + np.arange(5) * 7 + rng.normal(size=5)).tolist() for s in range(3)}
    for s in range(3):
        write_result(tmp_path, "vae-small", s, train[s], test[s])
    write_result(tmp_path, "other", 0, [-1.0], [-2.0])  # not asked for with --keys
    (tmp_path / "results" / "vae-small-seed9.lock").write_text("")  # an unfinished model: ignored
    png = tmp_path / "fig" / "curves.png"
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--keys", "vae-small", "--png", str(png)],
                          capture_output=True, text=True, cwd=REPO, check=True)
    models = json.loads(done.stdout)["models"]
    assert list(models) == ["vae-small"]
    summary = models["vae-small"]
    gaps = np.array([train[s][-1] - test[s][-1] for s in range(3)])
    assert summary["seeds"] == [0, 1, 2] and summary["epochs"] == 5
    assert summary["final_train_minus_test"] == [round(gaps.mean(), 2), round(gaps.std(ddof=1) / np.sqrt(3), 2)]
    test_mean = np.mean([test[s] for s in range(3)], axis=0)
    assert summary["best_test_elbo"] == round(test_mean.max(), 2)
    assert summary["best_epoch"] == int(test_mean.argmax()) + 1
    with Image.open(png) as image:
        image.verify()  # a complete PNG
    assert not list(png.parent.glob("*.tmp.png"))


def test_a_folder_without_results_is_refused(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and "no results/ folder" in done.stderr
