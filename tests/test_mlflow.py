"""MLflow tracking against a real `mlflow server` (SQLite backend) on 127.0.0.1, started by the
fixture and stopped by its pid: one run per training, per-epoch metrics, valid artifacts, the
registry and the champion alias, pyfunc == native encode, and a killed-then-resumed run that
stays one run."""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MlflowServer, make_images, write_idx_folder
from PIL import Image

from pipelines.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--set", "model.hidden_dims=[16]", "--latent-dim", "2", "--batch-size", "64", "--final-nll-samples", "20",
        "--set", "train.eval_nll_samples=5", "--set", "train.eval_nll_examples=32", "--no-progress", "--num-workers", "0"]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory) -> Path:
    return write_idx_folder(tmp_path_factory.mktemp("data") / "tiny", make_images(256, 0), make_images(64, 1))


@pytest.fixture(scope="module")
def tracked(mlflow_server, data_folder, tmp_path_factory):
    """Two variants trained for 2 epochs each, tracked on the server; returns their run folders."""
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    work = tmp_path_factory.mktemp("runs")
    outputs = {}
    try:
        for variant in ("vae", "iwae"):
            out = work / variant
            assert main(["train", "--variant", variant, "--dataset", str(data_folder), "--epochs", "2",
                         "--output", str(out), "--experiment", "zoo-test", "--register", f"tiny-{variant}", *TINY]) == 0
            outputs[variant] = out
        yield outputs
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_one_run_per_training_with_a_metric_at_every_epoch(mlflow_server, tracked):
    client = _client(mlflow_server)
    exp = client.get_experiment_by_name("zoo-test")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["variant"] for r in runs) == ["iwae", "vae"]
    for run in runs:
        record = json.loads((tracked[run.data.tags["variant"]] / "mlflow_run.json").read_text())
        assert record["run_id"] == run.info.run_id
        assert run.info.status == "FINISHED"
        for metric in ("train/elbo", "test/elbo", "test/kl", "test/active_units"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
            assert steps[:2] == [1, 2] and set(steps) == {1, 2}, (metric, steps)
        # the final test metrics every variant shares, equal to the run folder's results.json
        results = json.loads((tracked[run.data.tags["variant"]] / "results.json").read_text())
        assert run.data.metrics["final/nll"] == pytest.approx(results["nll"])
        assert run.data.metrics["final/active_units"] == results["active_units"]
        assert run.data.params["model.latent_dim"] == "2"
        assert run.data.params["variant_name"] == run.data.tags["variant"]
        assert run.data.tags["version.torch"] == version("torch")
        assert run.data.tags["version.mlflow"] == version("mlflow")
        assert run.data.tags["git_commit"] != ""


def test_artifacts_are_valid_pngs(mlflow_server, tracked, tmp_path):
    import mlflow

    client = _client(mlflow_server)
    exp = client.get_experiment_by_name("zoo-test")
    for run in client.search_runs([exp.experiment_id]):
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"samples.png", "reconstructions.png", "latent_manifold.png", "latents_2d.png",
                "training_curves.png"} <= names
        mlflow.set_tracking_uri(mlflow_server)
        local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="plots",
                                                         dst_path=str(tmp_path / run.info.run_id)))
        for png in local.glob("*.png"):
            assert png.read_bytes()[:8] == PNG_SIGNATURE
            with Image.open(png) as im:
                im.verify()
            with Image.open(png) as im:
                assert min(im.size) >= 20, (png.name, im.size)


def test_versions_registered_and_champion_alias(mlflow_server, tracked):
    from pipelines.mlflow_model import register

    client = _client(mlflow_server)
    for variant in ("vae", "iwae"):
        versions = client.search_model_versions(f"name='tiny-{variant}'")
        assert [int(v.version) for v in versions] == [1]
        assert client.get_model_version_by_alias(f"tiny-{variant}", "champion").version == "1"
    # The alias moves only to a version whose test NLL beats the champion's.
    run_id = json.loads((tracked["vae"] / "mlflow_run.json").read_text())["run_id"]
    model_uri = client.get_model_version("tiny-vae", "1").source
    champion_nll = float(client.get_model_version("tiny-vae", "1").tags["test_nll"])
    definition = client.get_model_version("tiny-vae", "1").tags["metric_definition"]
    assert definition == "vae|nll|bernoulli|dynamic"
    worse = register(mlflow_server, "tiny-vae", model_uri, run_id, champion_nll + 5.0, definition)
    assert (worse["version"], worse["champion"]) == (2, False)
    assert client.get_model_version_by_alias("tiny-vae", "champion").version == "1"
    better = register(mlflow_server, "tiny-vae", model_uri, run_id, champion_nll - 5.0, definition)
    assert (better["version"], better["champion"]) == (3, True)
    assert client.get_model_version_by_alias("tiny-vae", "champion").version == "3"
    # A cvae's conditional NLL scores only some pixels: however low, it never takes a vae's champion.
    cvae = register(mlflow_server, "tiny-vae", model_uri, run_id, champion_nll - 500.0,
                    "cvae-quadrants3|cond_nll|bernoulli|dynamic")
    assert (cvae["version"], cvae["champion"]) == (4, False)
    assert client.get_model_version_by_alias("tiny-vae", "champion").version == "3"


def test_a_cvae_and_a_vae_never_share_a_registered_name_or_definition():
    from core.config import RunConfig
    from pipelines.tracking import default_model_name, metric_definition

    def config(variant, **options):
        return RunConfig.from_dict({"variant_name": variant, "variant": options})

    names = {default_model_name(config("vae")), default_model_name(config("cvae", condition="label")),
             *(default_model_name(config("cvae", condition="quadrants", visible_quadrants=q)) for q in (1, 2, 3))}
    assert names == {"fashion-mnist-vae", "fashion-mnist-cvae-label", "fashion-mnist-cvae-quadrants1",
                     "fashion-mnist-cvae-quadrants2", "fashion-mnist-cvae-quadrants3"}
    assert metric_definition(config("cvae", condition="quadrants", visible_quadrants=2)) == \
        "cvae-quadrants2|cond_nll|bernoulli|dynamic"
    grey = config("vae").with_overrides({"model.likelihood": "gaussian", "data.binarize": "none"})
    assert metric_definition(grey) == "vae|nll|gaussian|none"


def test_pyfunc_predict_equals_native_encode(mlflow_server, tracked, data_folder, monkeypatch):
    import mlflow

    from core.datasets import load_split
    from core.serialization import load_model
    from pipelines.model_uri import resolve_model_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    x = load_split(str(data_folder), "test").images[:16].float().div(255.0)
    pyfunc = mlflow.pyfunc.load_model("models:/tiny-iwae@champion")
    predicted = pyfunc.predict(x.numpy())
    variant, _ = load_model(resolve_model_uri("models:/tiny-iwae@champion"))
    with torch.no_grad():
        mean, logvar = variant.encode(x)
    assert np.array_equal(predicted["z_mean"], mean.numpy())
    assert np.array_equal(predicted["z_logvar"], logvar.numpy())
    # every URI form resolves to the same native model
    run_id = json.loads((tracked["iwae"] / "mlflow_run.json").read_text())["run_id"]
    for uri in ("models:/tiny-iwae/1", str(tracked["iwae"])):
        other, _ = load_model(resolve_model_uri(uri))
        assert torch.equal(other.encode(x)[0], mean)
    assert run_id


def test_pyfunc_refuses_non_finite_images_naming_the_rows(mlflow_server, tracked, data_folder, monkeypatch):
    """NaN or Inf pixels used to come back as NaN latents; the registered model now refuses the
    batch with one error naming the rows. The same batch with those rows made finite encodes."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from core.datasets import load_split

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    pyfunc = mlflow.pyfunc.load_model("models:/tiny-vae@champion")
    x = load_split(str(data_folder), "test").images[:16].float().div(255.0).numpy()
    bad = x.copy()
    bad[3, 0, 2, 5], bad[11, 0, 0, 0], bad[12, 0, 7, 7] = np.nan, np.inf, -np.inf
    with pytest.raises(MlflowException) as err:
        pyfunc.predict(bad)
    message = str(err.value)
    assert "NaN or Inf in rows 3, 11, 12 of 16" in message, message
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    many = x.copy()
    many[:, 0, 0, 0] = np.nan
    with pytest.raises(MlflowException, match=r"rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\. \(16 rows\) of 16"):
        pyfunc.predict(many)
    fine = pyfunc.predict(x)  # control
    assert np.isfinite(fine["z_mean"]).all() and fine["z_mean"].shape == (16, 2)


def test_compare_lists_latest_run_of_each_variant(mlflow_server, tracked, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert main(["compare", "--experiment", "zoo-test", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, rows = lines[0].split(","), [dict(zip(lines[0].split(","), ln.split(","))) for ln in lines[1:]]
    assert "final/nll" in header and "variant" in header
    assert sorted(r["variant"] for r in rows) == ["iwae", "vae"]
    for r in rows:
        results = json.loads((tracked[r["variant"]] / "results.json").read_text())
        assert float(r["final/nll"]) == pytest.approx(results["nll"], abs=0.01)
    assert main(["compare", "--experiment", "zoo-test", "--format", "markdown"]) == 0
    assert capsys.readouterr().out.startswith("| variant | dataset |")


def test_killed_and_resumed_run_stays_one_run(mlflow_server, data_folder, tmp_path):
    env = os.environ | {"MLFLOW_TRACKING_URI": mlflow_server, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--variant", "vae", "--dataset", str(data_folder),
           "--output", str(out), "--experiment", "zoo-resume", "--register", "tiny-resume",
           "--set", "train.epochs=100", *TINY]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no epoch finished in time"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    client = _client(mlflow_server)
    exp = client.get_experiment_by_name("zoo-resume")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run_id, "test/elbo")}
    assert steps == set(range(1, 101))
    lines = [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == list(range(1, 101))


def test_ray_training_is_one_run_with_every_epoch(mlflow_server, data_folder, tmp_path, monkeypatch):
    """Through Ray Train the driver still owns the run: epochs arrive as Ray registers them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    out = tmp_path / "ray-run"
    args = [a for a in TINY if a not in ("--num-workers", "0")]
    assert main(["train", "--variant", "vae", "--dataset", str(data_folder), "--epochs", "3", "--output", str(out),
                 "--experiment", "zoo-ray", "--no-register", "--num-workers", "1", *args]) == 0
    client = _client(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("zoo-ray").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/elbo")) == [1, 2, 3]
    assert client.search_model_versions("name='tiny-ray'") == []


# -- the experiment as the UI opens it, the data as run inputs, a quiet log_model ------------------
def test_experiment_opens_in_training_mode_and_a_user_kind_is_kept(mlflow_server, tracked):
    from pipelines.tracking.settings import EXPERIMENT_KIND_TAG, TRAINING_KIND, experiment_id

    client = _client(mlflow_server)
    assert client.get_experiment_by_name("zoo-test").tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    # an experiment made elsewhere without a kind gets one when vae-zoo first uses it
    bare = client.create_experiment("made-by-hand")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(bare).tags
    assert experiment_id(mlflow_server, "made-by-hand") == bare
    assert client.get_experiment(bare).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    # a kind the user chose stays, through vae-zoo's use of the experiment
    chosen = client.create_experiment("genai-by-choice", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert experiment_id(mlflow_server, "genai-by-choice") == chosen
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_training_and_test_data_are_run_inputs_with_digest_and_rows(mlflow_server, tracked, data_folder):
    import hashlib

    from core.data import read_idx

    client = _client(mlflow_server)
    exp = client.get_experiment_by_name("zoo-test")
    expected = {}
    for split, stem in (("train", "train-images-idx3-ubyte.gz"), ("test", "t10k-images-idx3-ubyte.gz")):
        images = read_idx(data_folder / stem)
        expected[split] = (hashlib.sha256(images.astype(np.uint8).tobytes()).hexdigest()[:32], str(len(images)))
    for run in client.search_runs([exp.experiment_id]):
        inputs = run.inputs.dataset_inputs
        found = {}
        for item in inputs:
            tags = {t.key: t.value for t in item.tags}
            found[tags["split"]] = (item.dataset.digest, tags["rows"])
            assert item.dataset.name == f"tiny-{tags['split']}"
            assert json.loads(item.dataset.source)["uri"] == str(data_folder)
            assert tags["binarize"] == "dynamic"
            assert tags["mlflow.data.context"] == {"train": "training", "test": "testing"}[tags["split"]]
        assert found == expected, run.data.tags["variant"]


def test_log_model_prints_no_warning(mlflow_server, tracked, tmp_path):
    import logging
    import shutil
    import warnings

    from pipelines.tracking.pyfunc import log_model

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    model_dir = tmp_path / "vaezoo_model"
    model_dir.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(tracked["vae"] / name, model_dir / name)
    run = _client(mlflow_server).create_run(_client(mlflow_server).get_experiment_by_name("zoo-test").experiment_id)
    handler = Keep(level=logging.WARNING)
    logger = logging.getLogger("mlflow")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            uri = log_model(run.info.run_id, mlflow_server, model_dir, np.zeros((2, 1, 8, 8), np.float32), (1, 8, 8), 2)
    finally:
        logger.removeHandler(handler)
    assert uri.startswith("models:/")
    said = [r.getMessage() for r in records] + [str(w.message) for w in caught]
    assert not [m for m in said if "type hint" in m.lower()], said
    assert said == [], said


# -- the MLflow UI as a user meets it, in a real headless browser ---------------------------------
def _chromium() -> str:
    import shutil

    found = shutil.which("chromium")
    if found is None:  # scripts/setup.sh installs it: a missing browser is a broken setup, not a skip
        pytest.fail("chromium is not installed (scripts/setup.sh installs Debian's chromium)")
    return found


def _browse(url: str, screenshot: Path | None = None, height: int = 1000) -> str:
    """The page's DOM after its scripts ran (virtual time, not a wall-clock wait); a screenshot too."""
    common = [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--virtual-time-budget=20000"]
    if screenshot is not None:
        subprocess.run([*common, f"--window-size=1600,{height}", f"--screenshot={screenshot}", url],
                       capture_output=True, timeout=120, check=True)
        assert screenshot.read_bytes()[:8] == PNG_SIGNATURE
    return subprocess.run([*common, "--window-size=1600,1000", "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout


def _text(dom: str) -> str:
    import html
    import re

    dom = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    """Test artifacts: $VAEZOO_UI_SCREENSHOTS if set (docs/figures is made that way), else a temp folder."""
    folder = Path(os.environ.get("VAEZOO_UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_ui_experiment_page_is_in_training_mode_and_lists_both_runs(mlflow_server, tracked, screenshots):
    client = _client(mlflow_server)
    exp_id = client.get_experiment_by_name("zoo-test").experiment_id
    plain = client.create_experiment("no-kind-ui")  # made without vae-zoo: no kind, MLflow's GenAI default
    ours = _browse(f"{mlflow_server}/#/experiments/{exp_id}/runs", screenshots / "mlflow-ui-runs.png")
    # The "Training runs" entry of the experiment's navigation is there only for a training experiment.
    assert f'href="#/experiments/{exp_id}/runs?' in ours
    assert f'href="#/experiments/{plain}/runs?' not in _browse(f"{mlflow_server}/#/experiments/{plain}")
    text = _text(ours)
    assert "Training runs" in text
    assert "vae-tiny" in text and "iwae-tiny" in text


def test_ui_compare_view_shows_shared_metrics_of_both_runs(mlflow_server, tracked, screenshots):
    import html
    import re

    client = _client(mlflow_server)
    exp = client.get_experiment_by_name("zoo-test")
    runs = sorted((r for r in client.search_runs([exp.experiment_id]) if "final/nll" in r.data.metrics),
                  key=lambda r: r.data.tags["variant"])
    ids = [json.loads((tracked[v] / "mlflow_run.json").read_text())["run_id"] for v in ("iwae", "vae")]
    assert [r.info.run_id for r in runs] == ids
    url = f'{mlflow_server}/#/compare-runs?runs={json.dumps(ids).replace(" ", "")}&experiments=["{exp.experiment_id}"]'
    dom = _browse(url, screenshots / "mlflow-ui-compare.png", height=2400)
    # The metrics grid: a label column (links titled "Plot chart") and a value column per run, rows by offset.
    cell = r'<div class="[^"]*" style="height: 45px; left: (\d+)px; position: absolute; top: (\d+)px; width: \d+px;">(.*?)</div>'
    labels, values = {}, {}
    for left, top, inner in re.findall(cell, dom, flags=re.S):
        text = html.unescape(re.sub(r"<[^>]+>", "", inner)).strip()
        if 'title="Plot chart"' in inner:
            labels[int(top)] = text
        else:
            values.setdefault(int(top), {})[int(left)] = text
    shown = {labels[top]: [row[left] for left in sorted(row)] for top, row in values.items() if top in labels}
    for metric in ("final/nll", "final/elbo"):
        assert metric in shown, sorted(shown)
        expected = [run.data.metrics[metric] for run in runs]  # one column per run, in the URL's order
        assert len(shown[metric]) == 2
        for cell_text, value in zip(shown[metric], expected):
            assert abs(float(cell_text.replace("\u2212", "-")) - value) <= 0.0051, (metric, cell_text, value)


def test_ui_model_version_page_shows_the_champion_alias(mlflow_server, tracked, screenshots):
    client = _client(mlflow_server)
    champion = client.get_model_version_by_alias("tiny-vae", "champion")
    text = _text(_browse(f"{mlflow_server}/#/models/tiny-vae/versions/{champion.version}",
                         screenshots / "mlflow-ui-model-version.png"))
    assert f"tiny-vae v{champion.version}" in text
    assert "Aliases : @ champion" in text.replace("\xa0", " ")
