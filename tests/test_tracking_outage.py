"""Training survives its tracker: a real `mlflow server` on 127.0.0.1 (SQLite backend) is stopped
during an in-process `vaezoo train` at an epoch boundary the test controls, and started again on
the same port and store. Every epoch's metrics reach the run exactly once, the model, artifacts
and registered version arrive at the end or at `vaezoo sync`, and a second sync changes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import MlflowServer, make_images, write_idx_folder

from pipelines.cli import main
from pipelines.tracking.outbox import OUTBOX_FILE, UNDELIVERED_EXIT, TrackedRun

TINY = ["--set", "model.hidden_dims=[16]", "--latent-dim", "2", "--batch-size", "64", "--final-nll-samples", "20",
        "--set", "train.eval_nll_samples=5", "--set", "train.eval_nll_examples=32", "--no-progress", "--num-workers", "0"]


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory) -> Path:
    return write_idx_folder(tmp_path_factory.mktemp("data") / "tiny", make_images(256, 0), make_images(64, 1))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (each test has its own experiment), started by each test that
    needs it running; a test leaves it running or stopped, as it likes."""
    server = MlflowServer(tmp_path_factory.mktemp("server"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", server.uri)
        # A stopped server refuses at once; MLflow's retries (bounded to about 3 s by vae-zoo,
        # HTTP_BOUNDS) would only slow the test down.
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        yield server
    if server.proc is not None and server.proc.poll() is None:
        server.stop()


def running(server: MlflowServer) -> None:
    if server.proc is None or server.proc.poll() is not None:
        server.start()


def at_epoch_boundary(monkeypatch, actions) -> None:
    """Run actions[epoch]() when that epoch has ended (checkpoint written), before its metrics go
    to the tracker: the test stops or starts the server there, without timing."""
    deliver_epoch = TrackedRun.log_epoch

    def log_epoch(self, metrics):
        action = actions.get(int(metrics["epoch"]))
        if action is not None:
            action()
        deliver_epoch(self, metrics)

    monkeypatch.setattr(TrackedRun, "log_epoch", log_epoch)


def train(data_folder: Path, out: Path, epochs: int, experiment: str, register: str | None) -> int:
    naming = ["--register", register] if register else ["--no-register"]
    return main(["train", "--variant", "vae", "--dataset", str(data_folder), "--epochs", str(epochs),
                 "--output", str(out), "--experiment", experiment, *naming, *TINY])


def tracked_state(uri: str, experiment: str, model_name: str | None) -> dict:
    """Everything a sync could change: each run's status, metric histories, artifacts; the versions."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    state: dict = {"runs": {}}
    for run in runs:
        rid = run.info.run_id
        histories = {key: sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, key))
                     for key in run.data.metrics}
        artifacts = sorted(f.path for top in client.list_artifacts(rid)
                           for f in (client.list_artifacts(rid, top.path) if top.is_dir else [top]))
        state["runs"][rid] = {"status": run.info.status, "end_time": run.info.end_time, "metrics": histories,
                              "params": dict(run.data.params), "artifacts": artifacts,
                              "inputs": len(run.inputs.dataset_inputs)}
    if model_name:
        state["versions"] = sorted((int(v.version), v.tags.get("run_id")) for v in
                                   client.search_model_versions(f"name='{model_name}'"))
    return state


def epoch_keys(out: Path) -> tuple[list[int], set[str]]:
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    keys = {k for k, v in lines[0].items() if k != "epoch" and isinstance(v, (int, float))}
    return [line["epoch"] for line in lines], keys


def assert_every_epoch_once(run: dict, out: Path) -> None:
    epochs, keys = epoch_keys(out)
    for key in keys:
        assert [step for step, _, _ in run["metrics"][key]] == epochs, key


def vaezoo_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("vaezoo")]


def test_mlflow_http_retries_are_bounded_unless_the_user_set_them(monkeypatch):
    from pipelines.tracking.settings import HTTP_BOUNDS, bound_http_retries

    for name in HTTP_BOUNDS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    bound_http_retries()
    from mlflow.environment_variables import (MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_MAX_RETRIES,
                                              MLFLOW_HTTP_REQUEST_TIMEOUT)

    assert (MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()) == (2, 1)  # MLflow: 7, 2
    assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 60  # the user's value is kept


def test_an_outage_mid_run_is_delivered_when_the_tracker_answers_again(server, data_folder, tmp_path, monkeypatch, capsys):
    running(server)
    out = tmp_path / "run"
    at_epoch_boundary(monkeypatch, {2: server.stop, 3: server.start})  # epoch 2 meets a stopped server
    assert train(data_folder, out, 3, "outage-mid", "tiny-outage-mid") == 0
    assert vaezoo_lines(capsys.readouterr().err) == []
    assert not (out / OUTBOX_FILE).exists()
    state = tracked_state(server.uri, "outage-mid", "tiny-outage-mid")
    [(run_id, run)] = state["runs"].items()
    assert run["status"] == "FINISHED"
    assert_every_epoch_once(run, out)
    assert "final/nll" in run["metrics"]
    assert state["versions"] == [(1, run_id)]


def test_an_outage_to_the_end_exits_75_and_sync_delivers_everything_once(server, data_folder, tmp_path, monkeypatch, capsys):
    """Two trainings: one meets the outage after epoch 1 and ends in it; one starts in it (no run
    id yet: the run is created at sync). The server comes back on the same port and store."""
    running(server)
    late, early = tmp_path / "late", tmp_path / "early"
    at_epoch_boundary(monkeypatch, {2: server.stop})
    assert train(data_folder, late, 3, "outage-end", "tiny-outage-end") == UNDELIVERED_EXIT
    [line] = vaezoo_lines(capsys.readouterr().err)
    assert line.startswith(f"vaezoo train: the tracker at {server.uri} did not answer; not delivered: the metrics of epochs 2, 3; ")
    assert "registration as tiny-outage-end" in line and line.endswith(f"`vaezoo sync --output {late}`")
    for kept in ("model.safetensors", "config.json", "results.json", OUTBOX_FILE):  # saved locally
        assert (late / kept).is_file(), kept

    monkeypatch.undo()  # no more stops
    assert train(data_folder, early, 2, "outage-start", None) == UNDELIVERED_EXIT
    [line] = vaezoo_lines(capsys.readouterr().err)
    assert "not delivered: the run itself (params and tags); the metrics of epochs 1, 2; final metrics" in line
    assert json.loads((early / "mlflow_run.json").read_text())["run_id"] is None
    assert main(["sync", "--output", str(early)]) == UNDELIVERED_EXIT  # still down: the queue stays
    assert len(vaezoo_lines(capsys.readouterr().err)) == 1 and (early / OUTBOX_FILE).is_file()

    server.start()  # the same port and store
    for out in (late, early):
        assert main(["sync", "--output", str(out)]) == 0
        assert not (out / OUTBOX_FILE).exists()
    state = tracked_state(server.uri, "outage-end", "tiny-outage-end")
    [(run_id, run)] = state["runs"].items()
    assert run["status"] == "FINISHED"
    assert_every_epoch_once(run, late)
    assert [step for step, _, _ in run["metrics"]["final/nll"]] == [3]
    assert {"results.json", "run_config.yaml", "metrics.jsonl", "plots/samples.png",
            "plots/training_curves.png"} <= set(run["artifacts"])
    assert run["inputs"] == 2
    assert state["versions"] == [(1, run_id)]
    created = tracked_state(server.uri, "outage-start", None)
    [(run_id, run)] = created["runs"].items()
    assert json.loads((early / "mlflow_run.json").read_text())["run_id"] == run_id
    assert run["status"] == "FINISHED" and run["params"]["train.epochs"] == "2"
    assert_every_epoch_once(run, early)
    capsys.readouterr()

    for out in (late, early):  # idempotent: nothing is left to deliver, nothing changes
        assert main(["sync", "--output", str(out)]) == 0
        assert json.loads(capsys.readouterr().out)["delivered_operations"] == 0
    assert tracked_state(server.uri, "outage-end", "tiny-outage-end") == state
    assert tracked_state(server.uri, "outage-start", None) == created
