"""Many trainings at once on one tracking store: N `vaezoo train --num-workers 0` processes
started together against one local `mlflow server` (SQLite behind it) and, separately, the
default store (sqlite:///$PWD/mlflow.db, shared by all N). For each store: every run FINISHED with
every epoch's metrics, no "database is locked" (or other error) reaching the user, the wall time,
and how many tracking calls were retried (each process reports its retries on stderr).

    python benchmarks/concurrent_trainings.py [--runs 8] [--epochs 2] [--stores server,sqlite] [--no-save]

Data: the first 512 Fashion-MNIST training images (/usr/share/datasets/fashion-mnist), a small
MLP VAE. One JSON object to stdout, also merged into benchmarks/results.json under
"concurrent_trainings" unless --no-save.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

RETRY_LINE = re.compile(r"vaezoo: tracking call (\w+) retried (\d+) time")


def train_command(dataset: str, output: Path, epochs: int, experiment: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "train", "--variant", "vae", "--dataset", dataset,
            "--epochs", str(epochs), "--output", str(output), "--experiment", experiment, "--no-progress",
            "--num-workers", "0", "--latent-dim", "2", "--set", "model.hidden_dims=[32]", "--batch-size", "64",
            "--final-nll-samples", "5", "--set", "train.eval_nll_samples=2", "--set", "train.eval_nll_examples=32",
            *extra]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)


def run_at_once(work: Path, runs: int, epochs: int, dataset: str, tracking_uri: str | None,
                extra: list[str] = ()) -> dict:
    """Start `runs` trainings together in `work`; wait; check every run in the store."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    experiment = f"concurrent-{int(time.time())}"
    started = time.perf_counter()
    procs = [subprocess.Popen(train_command(dataset, work / f"run{i}", epochs, experiment, list(extra)), cwd=work,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(runs)]
    outputs = [p.communicate(timeout=1800) for p in procs]
    wall = time.perf_counter() - started
    failures, retries = [], 0
    for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
        (work / f"run{i}.stderr").write_text(err)
        retries += sum(int(m.group(2)) for m in RETRY_LINE.finditer(err))
        if p.returncode != 0 or "database is locked" in err:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            failures.append(f"run{i}: exit {p.returncode}: {last}")
    if not failures:  # read the store only once every writer is done and all succeeded
        from pipelines.tracking.store import open_client

        client = open_client(tracking_uri or f"sqlite:///{work / 'mlflow.db'}")
        for i in range(runs):
            run_id = json.loads((work / f"run{i}" / "mlflow_run.json").read_text())["run_id"]
            run = client.get_run(run_id)
            steps = sorted(m.step for m in client.get_metric_history(run_id, "train/elbo"))
            if run.info.status != "FINISHED" or steps != list(range(1, epochs + 1)):
                failures.append(f"run{i}: status {run.info.status}, train/elbo steps {steps}")
    return {"runs": runs, "epochs": epochs, "wall_seconds": round(wall, 1), "retries": retries, "failures": failures}


def main() -> None:
    from _results import add_save_argument, emit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--stores", default="server,sqlite")
    parser.add_argument("--dataset", default="fashion-mnist")
    add_save_argument(parser)
    args = parser.parse_args()
    extra = ["--set", "data.train_limit=512", "--set", "data.test_limit=128"]
    result = {}
    for store in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix=f"vaezoo-concurrent-{store}-") as tmp:
            work = Path(tmp)
            server = None
            try:
                uri = None
                if store == "server":
                    server, uri = start_server(work)
                print(f"{store}: {args.runs} trainings at once ...", file=sys.stderr)
                result[store] = run_at_once(work, args.runs, args.epochs, args.dataset, uri, extra)
                print(f"{store}: {result[store]}", file=sys.stderr)
            finally:
                if server is not None:
                    os.killpg(server.pid, signal.SIGTERM)
                    server.wait(timeout=30)
    emit("concurrent_trainings", result, args.save)


if __name__ == "__main__":
    main()
