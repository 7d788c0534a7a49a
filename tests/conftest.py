"""Shared fixtures: a tiny synthetic labelled image dataset, its IDX folder, small configs and
briefly trained models (trained once per session and shared, to keep the suite fast).

The images are 1x8x8 with four classes; class c lights one quadrant (reading order) brightly on a
dim background, so the classes are easy to separate and there is structure for a VAE to learn.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis.configuration import set_hypothesis_home_dir

from core.config import RunConfig
from core.data import ImageDataset, PreparedData, prepare_split, write_idx
from core.training import train
from ray_cluster import local_ray_cluster

# Hypothesis keeps its caches outside the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "vae-zoo-tests-hypothesis")

# Tiny models run fastest on one thread, and the suite shares the machine with other work.
torch.set_num_threads(1)

SIZE = 8
NUM_CLASSES = 4
N_TRAIN = 512
N_TEST = 128

# Options per variant for the small test models (m2 keeps 10 labels per class).
VARIANT_OPTIONS: dict[str, dict[str, Any]] = {
    "vae": {},
    "iwae": {},  # the preset: the k=5 IWAE bound
    "dvae": {"corruption": "salt_and_pepper", "noise_level": 0.1},
    "cvae": {"condition": "label"},
    "m2": {"num_labels": 40, "labelled_batch_size": 32},
}
ALL_VARIANTS = ["vae", "iwae", "cvae", "dvae", "m2"]


def make_images(n: int, seed: int, num_classes: int = NUM_CLASSES, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) uint8 images and (n,) uint8 labels, every class equally often."""
    rng = np.random.RandomState(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.uint8)
    images = rng.randint(0, 40, size=(n, size, size))
    h = size // 2
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 2)
        images[i, r * h:(r + 1) * h, col * h:(col + 1) * h] = rng.randint(200, 256, size=(h, h))
    return images.astype(np.uint8), labels


def make_dataset(n: int, seed: int, name: str = "synthetic") -> ImageDataset:
    images, labels = make_images(n, seed)
    return ImageDataset(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64)),
                        NUM_CLASSES, name)


@pytest.fixture(scope="session")
def train_set() -> ImageDataset:
    return make_dataset(N_TRAIN, seed=0)


@pytest.fixture(scope="session")
def test_set() -> ImageDataset:
    return make_dataset(N_TEST, seed=1)


@pytest.fixture(scope="session")
def prepared(train_set, test_set) -> PreparedData:
    """Dynamic binarisation: fresh draws of each training batch, one fixed draw of the test set."""
    return PreparedData(train_set, prepare_split(test_set, "dynamic", "test"), dynamic_train=True)


@pytest.fixture(scope="session")
def binary_batch(test_set) -> torch.Tensor:
    """A fixed binarised float batch (B, 1, 8, 8) for model-level checks."""
    gen = torch.Generator().manual_seed(123)
    return torch.bernoulli(test_set.images.float() / 255.0, generator=gen)


def write_idx_folder(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                     gz: bool = True) -> Path:
    """A folder in the MNIST layout: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-..."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{ext}", train[0])
    write_idx(folder / f"train-labels-idx1-ubyte{ext}", train[1])
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", test[0])
    write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", test[1])
    return folder


@pytest.fixture
def idx_folder(tmp_path) -> Path:
    """The synthetic dataset written as gzip IDX files in the MNIST layout."""
    return write_idx_folder(tmp_path / "synthetic-idx", make_images(N_TRAIN, 0), make_images(N_TEST, 1))


def small_config(variant: str, *, options: dict[str, Any] | None = None, epochs: int = 5,
                 architecture: str = "mlp", latent_dim: int = 2, **train: Any) -> RunConfig:
    raw = {
        "variant_name": variant,
        "variant": VARIANT_OPTIONS[variant] if options is None else options,
        "model": {"architecture": architecture, "latent_dim": latent_dim, "hidden_dims": [32],
                  "conv_channels": [4, 8]},
        "data": {"dataset": "synthetic"},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 3e-3, "seed": 0, "eval_nll_samples": 10,
                  "eval_nll_examples": 32, "progress": False} | train,
    }
    return RunConfig.from_dict(raw)


class TrainedRun:
    def __init__(self, variant, config: RunConfig, history: list[dict[str, Any]]):
        self.variant, self.config, self.history = variant, config, history


@pytest.fixture(scope="module")
def local_ray():
    """One private local Ray cluster for a test module (tests/ray_cluster.py); the pipelines use an
    initialised Ray as it is. Only the Ray test files ask for it, each in a pytest process of its own."""
    with local_ray_cluster():
        yield


@pytest.fixture(scope="session")
def trained(prepared):
    """trained(name) -> TrainedRun: each variant trained once per session for 5 epochs, shared."""
    cache: dict[str, TrainedRun] = {}

    def get(name: str) -> TrainedRun:
        if name not in cache:
            history: list[dict[str, Any]] = []
            config = small_config(name)
            variant = train(config, report=lambda metrics, checkpoint: history.append(metrics), data=prepared)
            variant.eval()
            cache[name] = TrainedRun(variant, config, history)
        return cache[name]

    return get


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend under `root`, started and
    stopped by its pid; stopped and started again, it serves the same port and the same store."""

    def __init__(self, root: Path):
        self.root = Path(root)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination",
             str(self.root / "artifacts")],
            stdout=open(self.root / "server.log", "a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.uri
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"mlflow server did not start:\n{(self.root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)  # polling a condition with a deadline, not timing

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def open_hold(tmp_path: Path, epoch: int) -> tuple[str, int]:
    """A training hold at `epoch` (VAEZOO_TEST_HOLD_AT_EPOCH, pipelines/ray_stop.py): the value to
    set, and a FIFO the training writes the epoch to when it holds, opened for reading without blocking."""
    fifo = tmp_path / "hold.fifo"
    os.mkfifo(fifo)
    return f"{epoch}:{fifo}", os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)


def wait_for_hold(fd: int, epoch: int, alive, timeout_s: float = 240.0) -> None:
    """Until the training announces the hold; fails at the deadline or when the training ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready and os.read(fd, 64).decode().strip() == str(epoch):
            return
        assert alive(), "the training ended before reaching the hold"
    raise AssertionError(f"the training did not reach epoch {epoch} within {timeout_s:.0f}s")
