"""Preemption: SIGTERM (Kubernetes, SLURM, spot reclaim) and SIGINT sent for real to a
`vaezoo train` subprocess. The step in progress is abandoned; the checkpoint is the last complete
epoch's; the MLflow run ends KILLED; the exit status is 143 or 130. `--resume` continues the same
MLflow run to FINISHED, and ends with exactly the weights of an uninterrupted run.

The training holds after epoch HOLD_EPOCH's checkpoint (VAEZOO_TEST_HOLD_AT_EPOCH, announced on
a FIFO), so the signal lands at a known epoch boundary without sleeping for timing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_images, open_hold, wait_for_hold, write_idx_folder

from core.serialization import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
EPOCHS, HOLD_EPOCH = 4, 2
TINY = ["--variant", "vae", "--epochs", str(EPOCHS), "--set", "model.hidden_dims=[16]", "--latent-dim", "2",
        "--batch-size", "64", "--final-nll-samples", "5", "--set", "train.eval_nll_samples=2",
        "--set", "train.eval_nll_examples=16", "--set", "data.binarize=dynamic", "--no-progress", "--num-workers", "0",
        "--no-register", "--experiment", "preempt"]


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory) -> Path:
    return write_idx_folder(tmp_path_factory.mktemp("data") / "tiny", make_images(256, 0), make_images(64, 1))


@pytest.fixture(scope="module")
def uninterrupted(data_folder, tmp_path_factory) -> dict:
    """The weights of the same training run without a stop."""
    folder = tmp_path_factory.mktemp("clean")
    done = subprocess.run(train_command(data_folder, folder / "run"), env=environment(folder), cwd=folder,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return read_checkpoint(folder / "run" / "checkpoints" / "last.pt")["model"]


def train_command(data: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "train", "--dataset", str(data), "--output", str(output), *TINY, *extra]


def environment(tmp_path: Path) -> dict[str, str]:
    return os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(REPO),
                         "OMP_NUM_THREADS": "1"}


def epochs_done(output: Path) -> int:
    metrics = output / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def run_status(tmp_path: Path, output: Path):
    from mlflow.tracking import MlflowClient

    record = json.loads((output / "mlflow_run.json").read_text())
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(record["run_id"])


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_ends_the_run_killed_and_resume_finishes_it_like_an_uninterrupted_run(data_folder, uninterrupted,
                                                                                       tmp_path, signum, status):
    env, out = environment(tmp_path), tmp_path / "stopped"
    hold, fd = open_hold(tmp_path, HOLD_EPOCH)
    proc = subprocess.Popen(train_command(data_folder, out), env=env | {"VAEZOO_TEST_HOLD_AT_EPOCH": hold},
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_hold(fd, HOLD_EPOCH, lambda: proc.poll() is None)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, stderr[-2000:]

    # Stopped at the epoch boundary: the checkpoint and metrics.jsonl both end at the held epoch.
    assert read_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == HOLD_EPOCH
    assert epochs_done(out) == HOLD_EPOCH
    assert f"holds epoch {HOLD_EPOCH}, the last complete one" in stderr
    run = run_status(tmp_path, out)
    assert run.info.status == "KILLED"
    assert not (out / "model.safetensors").exists()

    resumed = subprocess.run(train_command(data_folder, out, "--resume"), env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run_after = run_status(tmp_path, out)
    assert run_after.info.run_id == run.info.run_id and run_after.info.status == "FINISHED"
    assert [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, EPOCHS + 1))

    a = read_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert a.keys() == uninterrupted.keys() and all(torch.equal(a[k], uninterrupted[k]) for k in a)

