"""The encode actor without Ray (fast): its torch threads, and how it cuts a block into model calls.

The Ray Data job itself (exactly-once output, errors) is tests/test_encode.py."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from core.config import RunConfig
from core.networks import DataShape
from core.serialization import CONFIG_FILE, WEIGHTS_FILE, build_variant, save_model
from pipelines.encode import LatentEncoder, encode_pixels, output_schema
from pipelines.encode.job import default_cpus_per_worker, local_cluster_cpus
from pipelines.encode.readers import _pixel_block

LATENT_DIM = 3


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, bytes]:
    config = RunConfig.from_dict({"variant_name": "vae", "model": {"latent_dim": LATENT_DIM, "hidden_dims": [16]},
                                  "data": {"dataset": "fashion-mnist"}})
    torch.manual_seed(0)
    folder = save_model(build_variant(config, DataShape(1, 28, 28), 10), config,
                        tmp_path_factory.mktemp("model") / "m")
    return {name: (folder / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}


@pytest.fixture
def restore_torch_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def make_actor(model_files, **kwargs) -> LatentEncoder:
    schema = output_schema(LATENT_DIM, {"test": True})
    return LatentEncoder(model_files, schema.serialize().to_pybytes(), **kwargs)


@pytest.mark.parametrize("threads", [1, 2])
def test_actor_runs_one_torch_thread_per_reserved_cpu(model_files, restore_torch_threads, threads):
    make_actor(model_files, torch_threads=threads)
    assert torch.get_num_threads() == threads


def test_actor_cuts_a_block_into_model_calls_of_batch_size(model_files):
    rng = np.random.default_rng(0)
    n, batch_size = 2500, 1024
    pixels = rng.integers(0, 256, (n, 784), dtype=np.uint8)
    ids = np.arange(7_000, 7_000 + n, dtype=np.int64)
    labels = rng.integers(0, 10, n)
    block = _pixel_block(ids, labels, pixels)
    actor = make_actor(model_files, batch_size=batch_size)
    calls = []
    encode = actor.variant.encode
    actor.variant.encode = lambda x, *rest: calls.append(len(x)) or encode(x, *rest)

    out = actor(block)

    assert calls == [1024, 1024, 452]  # the model sees at most batch_size rows at a time
    assert out.schema.equals(output_schema(LATENT_DIM, {"test": True}))
    assert out.column("id").to_numpy().tolist() == ids.tolist()
    assert out.column("label").to_numpy().tolist() == labels.tolist()
    mean = np.stack(out.column("z_mean").to_numpy(zero_copy_only=False))
    logvar = np.stack(out.column("z_logvar").to_numpy(zero_copy_only=False))
    # Each row's latents are exactly what the model gives that row in its own batch.
    for s in range(0, n, batch_size):
        want_mean, want_logvar = encode_pixels(actor.variant, pixels[s:s + batch_size].reshape(-1, 1, 28, 28))
        assert np.array_equal(mean[s:s + batch_size], want_mean)
        assert np.array_equal(logvar[s:s + batch_size], want_logvar)


def test_actor_keeps_null_labels(model_files):
    block = _pixel_block(np.arange(5, dtype=np.int64), None, np.zeros((5, 784), np.uint8))
    out = make_actor(model_files, batch_size=2)(block)
    assert out.column("label").null_count == 5 and out.num_rows == 5
    assert out.column("label").type == pa.int64()


def test_default_cpus_per_actor_split_the_machine_only_on_a_local_cluster():
    cores = os.cpu_count() or 1
    assert default_cpus_per_worker(1, local=True) == cores
    assert default_cpus_per_worker(2, local=True) == max(1, cores // 2)
    assert default_cpus_per_worker(cores + 1, local=True) == 1
    assert default_cpus_per_worker(1, local=False) == 1  # a joined cluster: 1 CPU, as Ray's default
    # The local cluster holds the actors' CPUs and 2 more for the write tasks beside them.
    assert local_cluster_cpus(2, 3.0) == max(4, cores, 8)
    assert local_cluster_cpus(1, 1.0) == max(4, cores)


@pytest.mark.parametrize("cpus", [0, -1.5])
def test_cpus_per_worker_must_be_positive(tmp_path, cpus):
    from pipelines.encode import EncodeError, run_encode

    with pytest.raises(EncodeError, match="--cpus-per-worker must be positive"):
        run_encode(str(tmp_path / "model"), ["fashion-mnist"], tmp_path / "out", cpus_per_worker=cpus)
    assert not (tmp_path / "out").exists()


# -- the read, one block ahead of the model (no Ray) -------------------------------------------------

def test_read_ahead_keeps_order_and_raises_the_source_error_after_its_blocks():
    from pipelines.encode import EncodeError
    from pipelines.encode.datasource import read_ahead

    def blocks():
        for i in range(5):
            yield i
        raise EncodeError("row 5: cannot decode image")

    got = []
    with pytest.raises(EncodeError, match="^row 5: cannot decode image$"):
        for block in read_ahead(blocks(), depth=2):
            got.append(block)
    assert got == [0, 1, 2, 3, 4]


def test_read_ahead_stopped_early_closes_the_source_and_its_thread():
    import threading

    from pipelines.encode.datasource import read_ahead

    closed = []

    def blocks():
        try:
            yield from range(1_000)
        finally:
            closed.append(True)  # the reader's files are closed here

    ahead = read_ahead(blocks(), depth=2)
    assert [next(ahead), next(ahead)] == [0, 1]
    ahead.close()
    assert closed == [True]
    assert not any(t.name == "vaezoo-read-ahead" for t in threading.enumerate())


# -- the driver: no torch ------------------------------------------------------------------------------

def test_driver_describes_the_model_and_plans_idx_input_without_torch(model_files, tmp_path):
    """The driver's path (model description, IDX planning, the job module) never imports torch:
    that import costs the command a second or more and the driver its memory; the actors pay it."""
    import subprocess
    import sys

    from core.idx import write_idx

    folder = tmp_path / "model"
    folder.mkdir()
    for name, blob in model_files.items():
        (folder / name).write_bytes(blob)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((7, 28, 28), np.uint8))
    code = (f"import sys\nfrom pipelines.encode import run_encode\nfrom pipelines.encode.sources import plan_source\n"
            f"from core.model_folder import describe_model\n"
            f"d = describe_model({str(folder)!r})\n"
            f"s = plan_source([{str(tmp_path)!r}], d.shape, split='test')\n"
            f"print(d.latent_dim, d.shape, s.num_rows, 'torch' in sys.modules)")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo,
                         env={**os.environ, "PYTHONPATH": repo}, check=True).stdout.split()
    assert out == [str(LATENT_DIM), "(1,", "28,", "28)", "7", "False"]
