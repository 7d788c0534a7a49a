"""Preemption on Ray Train: SIGTERM and SIGINT sent for real to the driver of `vaezoo train
--num-workers 2`, and `ray job stop` on a submitted training, while the driver waits in `fit()`.

The training holds at a known point (VAEZOO_TEST_HOLD_AT_EPOCH: rank 0 waits after reporting
epoch 1, the controller writes "1" into a FIFO once epoch 1 is in the run folder), so the test
signals without sleeping for timing: it waits on the FIFO with a deadline. Then: the exit status,
the MLflow run KILLED, checkpoints/last.pt at epoch 1; `--resume` finishes the same MLflow run
with every epoch's metrics exactly once.

The cluster is test_ray_jobs.py's (two `ray start` nodes, one CPU each, a temporary HOME).
"""
# test.sh: own process (it starts Ray)
from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import open_hold, wait_for_hold
from test_ray_jobs import BIN, REPO, cluster, make_idx_data, train_args  # noqa: F401 - cluster is a fixture

from core.serialization import read_checkpoint

pytestmark = pytest.mark.slow

EPOCHS, HOLD_EPOCH = 2, 1


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_idx_data(tmp_path_factory.mktemp("data"))


def mlflow_run(tracking: str, output: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    run = client.get_run(json.loads((output / "mlflow_run.json").read_text())["run_id"])
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/epoch_seconds"))
    return run, steps


def assert_stopped_at_the_hold(output: Path, tracking: str, log: str):
    assert f"holds epoch {HOLD_EPOCH}, the last complete one" in log, log[-3000:]
    assert read_checkpoint(output / "checkpoints" / "last.pt")["epoch"] == HOLD_EPOCH
    assert [json.loads(ln)["epoch"] for ln in (output / "metrics.jsonl").read_text().splitlines()] == [HOLD_EPOCH]
    assert not (output / "model.safetensors").exists()
    run, steps = mlflow_run(tracking, output)
    assert run.info.status == "KILLED" and steps == [HOLD_EPOCH]
    return run


def assert_resumed_to_the_end(output: Path, tracking: str, stopped_run) -> None:
    run, steps = mlflow_run(tracking, output)
    assert run.info.run_id == stopped_run.info.run_id and run.info.status == "FINISHED"
    assert steps == list(range(1, EPOCHS + 1))  # each epoch's metrics exactly once
    assert [json.loads(ln)["epoch"] for ln in (output / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, EPOCHS + 1))
    assert read_checkpoint(output / "checkpoints" / "last.pt")["epoch"] == EPOCHS
    assert (output / "model.safetensors").is_file()


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_to_the_driver_in_fit_ends_the_run_killed_and_resume_finishes_it(cluster, data, tmp_path, signum,
                                                                                 status):
    out, tracking = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    hold, fd = open_hold(tmp_path, HOLD_EPOCH)
    command = [str(BIN / "vaezoo"), *train_args(data, out, epochs=EPOCHS), "--address", cluster.address,
               "--no-register"]
    env = cluster.env | {"MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stopped.log", "w") as log:
        proc = subprocess.Popen(command, env=env | {"VAEZOO_TEST_HOLD_AT_EPOCH": hold}, cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_hold(fd, HOLD_EPOCH, lambda: proc.poll() is None)
            proc.send_signal(signum)  # the driver is waiting in fit(): the workers are held
            returncode = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    stopped_log = (tmp_path / "stopped.log").read_text()
    assert returncode == status, stopped_log[-3000:]
    stopped = assert_stopped_at_the_hold(out, tracking, stopped_log)

    resumed = subprocess.run([*command, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert_resumed_to_the_end(out, tracking, stopped)


def test_ray_job_stop_ends_the_run_killed_within_the_grace_period_and_resume_finishes_it(cluster, data, tmp_path):
    """`ray job stop` sends SIGTERM to the driver, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S
    (default 3 s, unset here): a run left RUNNING or no stop line would mean the driver was killed."""
    out, tracking = tmp_path / "job-run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    hold, fd = open_hold(tmp_path, HOLD_EPOCH)
    base_env = {"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": tracking}
    excludes = ["runs/", "*.safetensors", "mlflow.db", "mlartifacts/"]

    def submit(job_id: str, env_vars: dict[str, str], *extra: str, wait: bool) -> subprocess.CompletedProcess:
        runtime_env = {"env_vars": env_vars, "excludes": excludes}
        return cluster.run(["ray", "job", "submit", "--address", cluster.dashboard, "--submission-id", job_id,
                            *([] if wait else ["--no-wait"]), "--working-dir", str(REPO),
                            "--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", "pipelines.cli",
                            *train_args(data, out, epochs=EPOCHS), "--no-register", *extra], timeout_s=400)

    def job_status(job_id: str) -> str:
        return cluster.run(["ray", "job", "status", "--address", cluster.dashboard, job_id]).stdout

    job_id = f"vaezoo-stop-{uuid.uuid4().hex[:8]}"
    assert submit(job_id, base_env | {"VAEZOO_TEST_HOLD_AT_EPOCH": hold}, wait=False).returncode == 0
    wait_for_hold(fd, HOLD_EPOCH, lambda: "RUNNING" in job_status(job_id) or "PENDING" in job_status(job_id))
    stop = cluster.run(["ray", "job", "stop", "--address", cluster.dashboard, job_id], timeout_s=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert f"Job '{job_id}' was stopped" in job_status(job_id)
    logs = cluster.run(["ray", "job", "logs", "--address", cluster.dashboard, job_id]).stdout
    assert "vaezoo train: stopped by SIGTERM" in logs, logs[-3000:]
    stopped = assert_stopped_at_the_hold(out, tracking, logs)

    resume_id = f"vaezoo-resume-{uuid.uuid4().hex[:8]}"
    resumed = submit(resume_id, base_env, "--resume", wait=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert f"Job '{resume_id}' succeeded" in job_status(resume_id)
    assert_resumed_to_the_end(out, tracking, stopped)
