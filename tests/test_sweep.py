"""`vaezoo sweep` on a real local Ray cluster (each sweep driver is a `vaezoo` process of its own,
with its own Ray temp folder) and a real SQLite MLflow store: one parent run and a child per trial
whose metrics equal the trials' run folders, ASHA stopping a clearly worse trial, the best trial
registered, and a SIGKILLed driver that resumes without retraining a finished trial."""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import make_images, write_idx_folder

REPO = Path(__file__).resolve().parents[1]
BASE = {"model": {"latent_dim": 2, "hidden_dims": [16]},
        "train": {"epochs": 3, "batch_size": 64, "lr": 0.003, "eval_nll_samples": 5, "eval_nll_examples": 32,
                  "progress": False}}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_idx_folder(tmp_path_factory.mktemp("data") / "tiny", make_images(256, 0), make_images(64, 1))


class Driver:
    """A `vaezoo sweep` process in a session of its own, its Ray cluster under its own temp folder
    (so everything it started can be found and ended by this test, never by `ray stop`)."""

    def __init__(self, args: list[str], store: Path, log: Path):
        self.temp = tempfile.mkdtemp(prefix="vzs", dir="/tmp")  # short: Ray's socket paths have a length limit
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_TMPDIR=self.temp, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                   MLFLOW_TRACKING_URI=f"sqlite:///{store}", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "sweep", *args], stdout=f,
                                         stderr=subprocess.STDOUT, env=env, cwd=store.parent, start_new_session=True)

    def wait(self, timeout_s: float = 240) -> str:
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            self.kill()
        out = self.log.read_text()
        assert self.proc.returncode == 0, out[-4000:]
        return out

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):  # Ray processes that left the group
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if self.temp.encode() in cmdline and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.temp, ignore_errors=True)


def write_sweep(path: Path, data: Path, **fields) -> Path:
    base = json.loads(json.dumps(BASE)) | {"data": {"dataset": str(data)}}
    path.write_text(yaml.safe_dump({"base": base, "final_nll_samples": 20, "experiment": "sweeps"} | fields))
    return path


def client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store}")


def runs_of(store: Path):
    mlflow_client = client(store)
    exp = mlflow_client.get_experiment_by_name("sweeps")
    runs = mlflow_client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def history(folder: Path) -> list[dict]:
    return [json.loads(ln) for ln in (folder / "metrics.jsonl").read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def asha_sweep(tmp_path_factory, data):
    """4 trials, vae and iwae x a good and a hopeless learning rate, one at a time (the grid's order
    puts a good trial first, so ASHA's first rung has a number to compare the hopeless ones with)."""
    root = tmp_path_factory.mktemp("asha")
    sweep = write_sweep(root / "sweep.yaml", data, register="tiny-sweep",
                        space={"variant_name": {"grid": ["vae", "iwae"]}, "train.lr": {"grid": [0.003, 1e-7]}},
                        asha={"grace_period": 1, "reduction_factor": 2})
    out = Driver(["--config", str(sweep), "--output", str(root / "sweep"), "--max-concurrent", "1"],
                 root / "mlflow.db", root / "driver.log").wait()
    return root, json.loads(out[out.index("{\n"):])


def test_one_parent_and_a_child_per_trial_with_the_run_folders_metrics(asha_sweep):
    root, info = asha_sweep
    parents, children = runs_of(root / "mlflow.db")
    assert [p.info.run_id for p in parents] == [info["parent_run_id"]]
    assert len(children) == 4 and {c.data.tags["mlflow.parentRunId"] for c in children} == {info["parent_run_id"]}
    mlflow_client = client(root / "mlflow.db")
    for child in children:
        folder = root / "sweep" / "trials" / child.data.tags["sweep.trial_id"]
        assert json.loads((folder / "mlflow_run.json").read_text())["run_id"] == child.info.run_id
        epochs = history(folder)
        assert epochs, folder
        for name in ("train/elbo", "test/elbo", "test/nll", "test/kl"):
            logged = {m.step: m.value for m in mlflow_client.get_metric_history(child.info.run_id, name)}
            assert logged == {e["epoch"]: pytest.approx(e[name], rel=1e-12) for e in epochs}, (name, folder)
        assert child.data.params["train.lr"] in ("0.003", "1e-07")
        assert child.info.status == "FINISHED"
        if (folder / "results.json").is_file():
            results = json.loads((folder / "results.json").read_text())
            assert child.data.metrics["final/nll"] == pytest.approx(results["nll"])
            assert child.data.metrics["final/elbo"] == pytest.approx(results["elbo"])
            assert child.data.tags["early_stop_reason"] == "completed all 3 epochs"


def test_asha_stops_the_hopeless_trials_early(asha_sweep):
    root, info = asha_sweep
    _, children = runs_of(root / "mlflow.db")
    stopped = [c for c in children if c.data.tags["early_stop_reason"].startswith("stopped by ASHA")]
    assert stopped, [c.data.tags["early_stop_reason"] for c in children]
    for child in stopped:
        folder = root / "sweep" / "trials" / child.data.tags["sweep.trial_id"]
        assert child.data.params["train.lr"] == "1e-07"
        assert len(history(folder)) < 3 and not (folder / "results.json").exists()
        assert "final/nll" not in child.data.metrics
    good = [c for c in children if c.data.params["train.lr"] == "0.003"]
    assert all(c.data.tags["early_stop_reason"] == "completed all 3 epochs" for c in good)


def test_best_trial_is_registered_as_champion(asha_sweep):
    root, info = asha_sweep
    _, children = runs_of(root / "mlflow.db")
    finished = [c for c in children if "final/nll" in c.data.metrics]
    best = min(finished, key=lambda c: c.data.metrics["final/nll"])
    version = client(root / "mlflow.db").get_model_version_by_alias("tiny-sweep", "champion")
    assert version.run_id == best.info.run_id
    assert info["best"]["trial_id"] == best.data.tags["sweep.trial_id"]
    rows = json.loads((root / "sweep" / "results.json").read_text())
    assert [r["trial_id"] for r in rows][0] == info["best"]["trial_id"] and len(rows) == 4
    assert all(r["trainings"] == 1 for r in rows)


def test_killed_sweep_resumes_without_retraining_finished_trials(tmp_path, data):
    sweep = write_sweep(tmp_path / "sweep.yaml", data, asha=None, space={"train.seed": {"grid": [0, 1]}})
    sweep.write_text(sweep.read_text().replace("epochs: 3", "epochs: 2"))
    sweep_dir = tmp_path / "sweep"
    driver = Driver(["--config", str(sweep), "--output", str(sweep_dir), "--max-concurrent", "1"],
                    tmp_path / "mlflow.db", tmp_path / "first.log")
    deadline = time.monotonic() + 240
    try:
        while not list(sweep_dir.glob("trials/*/results.json")):
            assert driver.proc.poll() is None, driver.log.read_text()[-4000:]
            assert time.monotonic() < deadline, "no trial finished"
            time.sleep(0.2)  # polling a condition with a deadline, not timing
    finally:
        driver.kill()  # SIGKILL: the driver gets no chance to save anything
    finished_before = {p.parent.name for p in sweep_dir.glob("trials/*/results.json")}
    assert len(finished_before) == 1  # the other trial was cut short

    Driver(["--resume", "--output", str(sweep_dir)], tmp_path / "mlflow.db", tmp_path / "resume.log").wait()
    trials = sorted(p.name for p in (sweep_dir / "trials").iterdir())
    assert len(trials) == 2 and all((sweep_dir / "trials" / t / "results.json").is_file() for t in trials)
    for trial in finished_before:  # trained once, never again
        assert (sweep_dir / "trainings" / f"{trial}.log").read_text().splitlines() == ["started"]
    parents, children = runs_of(tmp_path / "mlflow.db")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["sweep.trial_id"] for c in children) == trials
    for child in children:
        steps = [m.step for m in client(tmp_path / "mlflow.db").get_metric_history(child.info.run_id, "train/elbo")]
        assert sorted(steps) == [1, 2], (child.data.tags["sweep.trial_id"], steps)


def test_sweep_file_errors_name_the_field(tmp_path, data):
    from core.config import ConfigError
    from pipelines.sweep import load_sweep

    with pytest.raises(ConfigError, match="latent_dim"):  # every value is checked before any trial runs
        load_sweep(write_sweep(tmp_path / "a.yaml", data, space={"model.latent_dim": {"grid": [2, -1]}}))
    with pytest.raises(ConfigError, match="search: must be one of grid, random, optuna"):
        load_sweep(write_sweep(tmp_path / "b.yaml", data, search="bayes", space={"train.seed": {"grid": [0]}}))
    with pytest.raises(ConfigError, match="space.train.lr: search grid takes only"):
        load_sweep(write_sweep(tmp_path / "c.yaml", data, space={"train.lr": {"loguniform": [1e-4, 1e-2]}}))
    with pytest.raises(ConfigError, match="unknown keys"):
        load_sweep(write_sweep(tmp_path / "d.yaml", data, spaces={}, space={"train.seed": {"grid": [0]}}))


def test_optuna_draws_from_the_space_including_the_variant(tmp_path, data):
    from ray.tune.search.optuna import OptunaSearch

    from pipelines.sweep import load_sweep, param_space, trial_config

    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", data, search="optuna", num_samples=4,
                                   space={"variant_name": {"grid": ["vae", "iwae"]},
                                          "train.lr": {"loguniform": [1e-4, 1e-2]}}))
    searcher = OptunaSearch(seed=0)
    assert searcher.set_search_properties("test/nll", "min", param_space(sweep))
    drawn = [searcher.suggest(f"t{i}") for i in range(8)]
    assert {d["variant_name"] for d in drawn} == {"vae", "iwae"}
    assert all(1e-4 <= d["train.lr"] <= 1e-2 for d in drawn)
    config = trial_config(sweep["base"], drawn[0])
    assert config.variant_name == drawn[0]["variant_name"] and config.train.lr == drawn[0]["train.lr"]


def test_cli_refuses_a_resume_with_nothing_to_resume_and_a_used_folder(tmp_path, data, capsys):
    from pipelines.cli import main

    assert main(["sweep", "--resume", "--output", str(tmp_path / "none")]) == 1
    assert "--resume:" in capsys.readouterr().err and not (tmp_path / "none").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    sweep = write_sweep(tmp_path / "s.yaml", data, space={"train.seed": {"grid": [0]}})
    assert main(["sweep", "--config", str(sweep), "--output", str(tmp_path / "used")]) == 1
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["keep.txt"]
