"""`vaezoo train` against clusters started with `ray start`: two Ray nodes on this machine (one
training worker on each), and the same command submitted with `ray job submit`.

The cluster runs under a temporary HOME (Ray's default token auth keeps its token in
~/.ray/auth_token: head, nodes and clients must share it), its own temp dir and free ports, so it
neither joins nor disturbs any other Ray cluster on the host. It is stopped by killing the
`ray start --block` process groups this module started, never with `ray stop`.
"""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

import ray  # noqa: F401

from core.data import write_idx  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment with the project installed: the head's PATH


def make_idx_data(folder: Path, n_train: int = 256, n_test: int = 64, side: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:side, :side]
    for split, n in (("train", n_train), ("t10k", n_test)):
        cy, cx = rng.uniform(2, side - 2, (2, n, 1, 1))
        images = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)
        write_idx(folder / f"{split}-images-idx3-ubyte", (images * 255).astype(np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return folder


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(condition, what: str, timeout_s: float = 120.0, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class Cluster:
    """A head (with the dashboard, for Ray Jobs) and one more node, one CPU each."""

    def __init__(self, root: Path):
        self.root = root
        self.temp = tempfile.mkdtemp(prefix="vzc", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(HOME=str(root / "home"), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                        RAY_USAGE_STATS_ENABLED="0")
        (root / "home").mkdir(parents=True, exist_ok=True)
        ports = free_ports(10)
        self.gcs_port, self.dashboard_port = ports[0], ports[1]
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.procs: list[subprocess.Popen] = []
        common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        self.head_log = root / "head.log"
        self._start(["ray", "start", "--head", "--port", str(self.gcs_port), "--temp-dir", self.temp,
                     "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(ports[2]),
                     "--dashboard-agent-listen-port", str(ports[3]), "--dashboard-agent-grpc-port", str(ports[4]),
                     *common], self.head_log)
        wait_for(lambda: "Ray runtime started" in self.head_log.read_text(), "the head node", timeout_s=180)
        self.node_log = root / "node.log"
        self._start(["ray", "start", "--address", self.address, "--temp-dir", self.temp,
                     "--dashboard-agent-listen-port", str(ports[5]), "--dashboard-agent-grpc-port", str(ports[6]),
                     *common], self.node_log)
        wait_for(lambda: "Ray runtime started" in self.node_log.read_text(), "the second node", timeout_s=180)
        wait_for(lambda: len(self.alive_nodes()) == 2, "two alive nodes in the dashboard", timeout_s=120)

    def _start(self, cmd: list[str], log: Path) -> None:
        with open(log, "w") as f:
            # A session of its own: the whole node (GCS, raylet, workers) is one process group to kill.
            self.procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                               cwd=self.root, start_new_session=True))
        if self.procs[-1].poll() is not None:
            raise RuntimeError(f"{' '.join(cmd)} exited: {log.read_text()}")

    def _get(self, path: str):
        headers = {}
        token = self.root / "home" / ".ray" / "auth_token"
        if token.is_file():
            headers["Authorization"] = f"Bearer {token.read_text().strip()}"
        with urllib.request.urlopen(urllib.request.Request(self.dashboard + path, headers=headers), timeout=5) as r:
            return json.loads(r.read())

    def alive_nodes(self) -> list[str]:
        try:
            nodes = self._get("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        except (OSError, ValueError, KeyError):
            return []
        return [n["node_id"] for n in nodes if n.get("state") == "ALIVE"]

    def run(self, cmd: list[str], timeout_s: float = 300, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout_s, **kwargs)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the extra node first, then the head
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(timeout=5)  # a graceful head shutdown waits ~30 s on the dashboard: not worth it here
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        # Anything left that names this cluster's own temp dir (a process that left the group).
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = None
    try:
        c = Cluster(tmp_path_factory.mktemp("cluster"))
        yield c
    finally:
        if c is not None:
            c.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_idx_data(tmp_path_factory.mktemp("data"))


def train_args(data: Path, output: Path, epochs: int) -> list[str]:
    return ["train", "--dataset", str(data), "--epochs", str(epochs), "--batch-size", "32", "--latent-dim", "2",
            "--set", "model.hidden_dims=[16]", "--set", "data.train_limit=128", "--set", "train.eval_nll_samples=2",
            "--set", "train.eval_nll_examples=16", "--final-nll-samples", "2", "--no-progress",
            "--num-workers", "2", "--cpus-per-worker", "1", "--output", str(output)]


def test_two_nodes_train_with_one_worker_each(cluster, data, tmp_path):
    out = tmp_path / "run"
    # From tmp_path: the default tracking store is ./mlflow.db, which must not land in the repository.
    proc = cluster.run([str(BIN / "vaezoo"), *train_args(data, out, epochs=2), "--address", cluster.address],
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "mlflow.db").is_file()
    info = json.loads((out / "ray_run.json").read_text())
    assert [h["epoch"] for h in info["history"]] == [1, 2]
    for h in info["history"]:
        nodes = {w["node_id"] for w in h["workers"]}
        assert len(nodes) == 2 and nodes <= set(cluster.alive_nodes()), h
    assert "epoch 1:" in proc.stdout and "epoch 2:" in proc.stdout
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["test"]["test_examples"] == 64
    assert (out / "model.safetensors").is_file()


def test_ray_job_submit_logs_every_epoch(cluster, data, tmp_path):
    out = tmp_path / "job-run"
    job_id = f"vaezoo-test-{uuid.uuid4().hex[:8]}"
    # The job runs in an unpacked copy of the working directory: track into a database by absolute path.
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runtime_env = {"env_vars": {"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": tracking},
                   "excludes": ["runs/", "*.safetensors", "mlflow.db", "mlartifacts/"]}
    submit = cluster.run(["ray", "job", "submit", "--address", cluster.dashboard, "--submission-id", job_id,
                          "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
                          "python", "-m", "pipelines.cli", *train_args(data, out, epochs=3)], timeout_s=400)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    status = cluster.run(["ray", "job", "status", "--address", cluster.dashboard, job_id])
    assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr
    logs = cluster.run(["ray", "job", "logs", "--address", cluster.dashboard, job_id]).stdout
    lines = [ln for ln in logs.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1", "epoch 2", "epoch 3"], logs
    assert all("te_elbo=" in ln for ln in lines)
    assert json.loads((out / "results.json").read_text())["test_examples"] == 64


@pytest.mark.parametrize("case", ["no-tracking-uri", "relative-output"])
def test_ray_job_refuses_to_keep_records_in_its_temporary_working_dir(cluster, data, tmp_path, case):
    """Without MLFLOW_TRACKING_URI the default ./mlflow.db, and a relative --output, would be in
    the job's unpacked copy of --working-dir, deleted after the job: refused in one line at start."""
    job_id = f"vaezoo-test-{uuid.uuid4().hex[:8]}"
    env_vars = {"OMP_NUM_THREADS": "1"}
    if case == "relative-output":
        env_vars["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    output = tmp_path / "job-run" if case == "no-tracking-uri" else Path("runs/job-run")
    runtime_env = {"env_vars": env_vars, "excludes": ["runs/", "*.safetensors", "mlflow.db", "mlartifacts/"]}
    submit = cluster.run(["ray", "job", "submit", "--address", cluster.dashboard, "--submission-id", job_id,
                          "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
                          "python", "-m", "pipelines.cli", *train_args(data, output, epochs=1)], timeout_s=400)
    assert submit.returncode != 0
    logs = cluster.run(["ray", "job", "logs", "--address", cluster.dashboard, job_id]).stdout
    errors = [ln for ln in logs.splitlines() if ln.startswith("vaezoo train: error:")]
    assert len(errors) == 1, logs
    assert "temporary copy of its working directory" in errors[0]
    assert ("set MLFLOW_TRACKING_URI" if case == "no-tracking-uri" else "give --output an absolute path") in errors[0]
    assert "Traceback" not in logs
    assert not (tmp_path / "job-run").exists() and not (tmp_path / "mlflow.db").exists()
