"""`vaezoo encode`: Fashion-MNIST and Parquet / image-folder inputs through Ray Data to Parquet
latents, checked row by row against the core `encode`; exactly-once output (refusal, overwrite,
a killed run); one-line errors for bad input.

One Ray session serves the whole file (Ray's start-up is most of the cost); the kill test runs
the command in its own process with its own local cluster.
"""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from core.config import RunConfig
from core.data import SYSTEM_LOCATIONS
from core.datasets import load_split, prepare_data
from core.serialization import build_variant, load_model, package_version, save_model
from core.training import train
from pipelines import encode as enc
from pipelines.encode import EncodeError

FASHION = Path(SYSTEM_LOCATIONS["fashion-mnist"])
REPO = Path(__file__).resolve().parents[1]
LATENT_DIM = 4

# No skip when Fashion-MNIST is missing: scripts/setup.sh installs it (dataset-fashion-mnist), and
# a missing copy must fail the suite, naming the folder, not pass it silently.
pytestmark = pytest.mark.slow


# -- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny VAE trained briefly on Fashion-MNIST (what it learned does not matter, only that the
    pipeline's latents equal the core encode's)."""
    config = RunConfig.from_dict({
        "variant_name": "vae",
        "model": {"latent_dim": LATENT_DIM, "hidden_dims": [32]},
        "data": {"dataset": "fashion-mnist", "train_limit": 512, "test_limit": 64},
        "train": {"epochs": 1, "batch_size": 64, "eval_nll_samples": 1, "eval_nll_examples": 1, "progress": False},
    })
    d = config.data
    data = prepare_data(d.dataset, d.data_dir, d.binarize, d.train_limit, d.test_limit)
    variant = train(config, report=lambda metrics, checkpoint: None, data=data)
    return save_model(variant, config, tmp_path_factory.mktemp("model") / "tiny-vae")


@pytest.fixture(scope="module")
def model(model_dir):
    variant, _ = load_model(model_dir)
    return variant


@pytest.fixture(scope="module")
def fashion_test():
    return load_split("fashion-mnist", "test")


@pytest.fixture(scope="module")
def fashion_output(local_ray, model_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("latents") / "fashion-test"
    summary = enc.run_encode(str(model_dir), ["fashion-mnist"], out, split="test", batch_size=500, num_workers=2,
                             rows_per_file=4000)
    return out, summary


# -- helpers -----------------------------------------------------------------------------------------

def read_sorted(folder: Path) -> pa.Table:
    table = pq.read_table(folder)
    return table.sort_by("id")


def latents(table: pa.Table, column: str) -> np.ndarray:
    return table.column(column).combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)


@torch.no_grad()
def direct_encode(variant, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The core encode on grey levels x/255, the preprocessing the pipeline documents."""
    mean, logvar = variant.encode(images.float() / 255.0)
    return mean.numpy(), logvar.numpy()


def png_bytes(image: np.ndarray, mode: str = "L") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def assert_exactly(table: pa.Table, n: int) -> None:
    ids = table.column("id").to_numpy()
    assert table.num_rows == n
    assert np.array_equal(np.sort(ids), np.arange(n)), "every id exactly once"


def encode_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaezoo")
    enc.add_encode_parser(parser.add_subparsers(dest="command", required=True))
    return parser


# -- Fashion-MNIST IDX -------------------------------------------------------------------------------

def test_fashion_mnist_test_split_equals_direct_encoding(fashion_output, model, fashion_test):
    out, summary = fashion_output
    assert summary["rows"] == 10_000 and summary["source"] == "idx"
    # A Ray already initialised counts as joined: 1 CPU per actor, as its one torch thread.
    assert summary["cpus_per_worker"] == 1 and summary["torch_threads_per_worker"] == 1
    table = read_sorted(out)
    assert_exactly(table, 10_000)
    assert np.array_equal(table.column("label").to_numpy(), fashion_test.labels.numpy())
    mean, logvar = direct_encode(model, fashion_test.images)
    np.testing.assert_allclose(latents(table, "z_mean"), mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(latents(table, "z_logvar"), logvar, rtol=0, atol=1e-6)
    # Nothing but the output files, and no staging folder left beside it.
    assert all(p.suffix == ".parquet" for p in out.iterdir())
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_schema_and_metadata_on_every_file(fashion_output, model_dir):
    out, _ = fashion_output
    files = sorted(out.glob("*.parquet"))
    assert len(files) >= 2  # several files, each carrying the schema and the metadata
    vector = pa.list_(pa.field("element", pa.float32()), LATENT_DIM)
    for f in files:
        schema = pq.read_schema(f)
        assert schema.field("id").type == pa.int64() and not schema.field("id").nullable
        assert schema.field("label").type == pa.int64() and schema.field("label").nullable
        for name in ("z_mean", "z_logvar"):
            assert schema.field(name).type == vector  # plain fixed_size_list<float32>[D], no extension type
            assert not isinstance(schema.field(name).type, pa.ExtensionType)
        assert schema.names == ["id", "label", "z_mean", "z_logvar"]
        meta = json.loads(schema.metadata[b"vaezoo"])
        assert meta == enc.read_latents_metadata(out)
    assert meta["model_uri"] == str(model_dir) and meta["model_version"] is None
    assert meta["variant"] == "vae" and meta["latent_dim"] == LATENT_DIM and meta["data_shape"] == [1, 28, 28]
    assert meta["split"] == "test" and meta["num_rows"] == 10_000
    assert meta["source"]["kind"] == "idx" and meta["source"]["inputs"] == ["fashion-mnist"]
    assert meta["source"]["splits"] == {"test": [0, 10_000]}
    assert meta["preprocessing"] == "grey levels /255" and meta["model_binarize"] == "dynamic"
    assert meta["vae_zoo_version"] == package_version()
    assert len(meta["model_sha256"]) == 64
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None


def test_readable_by_pyarrow_pandas_polars_duckdb(fashion_output):
    out, _ = fashion_output
    import pyarrow.dataset as ds

    assert ds.dataset(out, format="parquet").count_rows() == 10_000
    import pandas as pd

    frame = pd.read_parquet(out)
    assert len(frame) == 10_000 and set(frame["id"]) == set(range(10_000))
    assert all(len(v) == LATENT_DIM for v in frame["z_mean"].head(50))
    assert str(frame["label"].dtype) in ("int64", "Int64")

    import polars
    pl_frame = polars.read_parquet(out / "*.parquet")
    assert pl_frame.height == 10_000 and pl_frame["z_mean"].dtype == polars.Array(polars.Float32, LATENT_DIM)

    import duckdb
    [(rows, ids, width)] = duckdb.sql(f"SELECT count(*), count(DISTINCT id), max(len(z_logvar)) "
                                      f"FROM read_parquet('{out}/*.parquet')").fetchall()
    assert (rows, ids, width) == (10_000, 10_000, LATENT_DIM)


# -- Parquet and image folders ---------------------------------------------------------------------

def test_parquet_of_png_bytes(local_ray, model_dir, model, fashion_test, tmp_path):
    """Two files in the Hugging Face image layouts (a {bytes, path} struct and plain bytes), several
    row groups each: ids count rows across the files in name order."""
    images, labels = fashion_test.images[:1500, 0].numpy(), fashion_test.labels[:1500].numpy()
    blobs = [png_bytes(a) for a in images]
    folder = tmp_path / "pngs" / "data"
    folder.mkdir(parents=True)
    struct = pa.StructArray.from_arrays([pa.array(blobs[:900], pa.binary()), pa.array([f"{i}.png" for i in range(900)])],
                                        names=["bytes", "path"])
    pq.write_table(pa.table({"image": struct, "label": labels[:900]}), folder / "test-00000-of-00002.parquet",
                   row_group_size=256)
    pq.write_table(pa.table({"label": labels[900:], "image": pa.array(blobs[900:], pa.binary())}),
                   folder / "test-00001-of-00002.parquet", row_group_size=200)

    out = tmp_path / "out"
    summary = enc.run_encode(str(model_dir), [str(tmp_path / "pngs")], out, batch_size=128, num_workers=2)
    assert summary["rows"] == 1500 and summary["source"] == "parquet"
    table = read_sorted(out)
    assert_exactly(table, 1500)
    assert np.array_equal(table.column("label").to_numpy(), labels)
    mean, logvar = direct_encode(model, fashion_test.images[:1500])
    np.testing.assert_allclose(latents(table, "z_mean"), mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(latents(table, "z_logvar"), logvar, rtol=0, atol=1e-6)
    meta = enc.read_latents_metadata(out)
    assert meta["source"]["kind"] == "parquet" and meta["source"]["files"] == 2 and meta["split"] is None


def test_parquet_uint8_arrays_without_labels_and_image_folder(local_ray, model_dir, model, fashion_test, tmp_path):
    # Fixed-size uint8 arrays (28*28 flat), no label column: labels are null.
    images = fashion_test.images[:300, 0].numpy()
    flat = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1), pa.uint8()), 28 * 28)
    pq.write_table(pa.table({"pixels": flat}), tmp_path / "arrays.parquet", row_group_size=100)
    out = tmp_path / "arrays-out"
    enc.run_encode(str(model_dir), [str(tmp_path / "arrays.parquet")], out, image_column="pixels", batch_size=64)
    table = read_sorted(out)
    assert_exactly(table, 300)
    assert table.column("label").null_count == 300
    mean, _ = direct_encode(model, fashion_test.images[:300])
    np.testing.assert_allclose(latents(table, "z_mean"), mean, rtol=0, atol=1e-6)

    # A folder of PNG files in the ImageFolder layout: ids follow the sorted paths, labels the class folders.
    root = tmp_path / "folder"
    order = []
    for i in range(40):
        cls = "bag" if i % 2 else "coat"
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / f"{i:03d}.png").write_bytes(png_bytes(images[i]))
        order.append((f"{cls}/{i:03d}.png", i, 0 if cls == "bag" else 1))
    order.sort()
    out = tmp_path / "folder-out"
    summary = enc.run_encode(str(model_dir), [str(root)], out, batch_size=16)
    assert summary["source"] == "images"
    table = read_sorted(out)
    assert_exactly(table, 40)
    picked = [i for _, i, _ in order]
    assert table.column("label").to_pylist() == [label for _, _, label in order]
    np.testing.assert_allclose(latents(table, "z_mean"), mean[picked], rtol=0, atol=1e-6)
    assert enc.read_latents_metadata(out)["source"]["classes"] == ["bag", "coat"]


def test_registered_model_by_alias_records_name_and_version(local_ray, model_dir, model, fashion_test, tmp_path,
                                                            monkeypatch):
    """`--model models:/NAME@ALIAS`: the registry's copy is encoded with, and its version is recorded."""
    import mlflow
    from pipelines.mlflow_model import log_model, register

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment("encode", artifact_location=(tmp_path / "artifacts").as_uri())
        run_id = client.create_run(experiment).info.run_id
        example = (fashion_test.images[:2].numpy() / 255.0).astype(np.float32)
        logged = log_model(run_id, uri, model_dir, example, (1, 28, 28), LATENT_DIM)
        assert register(uri, "tiny-vae", logged, run_id, test_nll=300.0)["champion"]

        path = tmp_path / "small.parquet"
        pq.write_table(pa.table({"image": [png_bytes(a) for a in fashion_test.images[:64, 0].numpy()]}), path)
        out = tmp_path / "out"
        enc.run_encode("models:/tiny-vae@champion", [str(path)], out, batch_size=32)
    finally:
        mlflow.set_tracking_uri(previous)
    meta = enc.read_latents_metadata(out)
    assert (meta["model_uri"], meta["model_name"], meta["model_version"]) == ("models:/tiny-vae@champion", "tiny-vae", "1")
    assert meta["model_sha256"] == enc._sha256(model_dir / "model.safetensors")
    table = read_sorted(out)
    assert_exactly(table, 64)
    mean, _ = direct_encode(model, fashion_test.images[:64])
    np.testing.assert_allclose(latents(table, "z_mean"), mean, rtol=0, atol=1e-6)


# -- exactly once: refusal, overwrite, a killed run -----------------------------------------------------

def test_existing_output_is_refused_without_overwrite(fashion_output, model_dir):
    out, _ = fashion_output
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(EncodeError, match="already exists; pass --overwrite"):
        enc.run_encode(str(model_dir), ["fashion-mnist"], out, split="test")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_overwrite_replaces_only_encode_output(local_ray, fashion_output, model_dir, fashion_test, tmp_path):
    other = tmp_path / "not-latents"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(EncodeError, match="not a vae-zoo latents file"):
        enc.run_encode(str(model_dir), ["fashion-mnist"], other, split="test", overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"

    # A copy of real output, replaced through the command line by the encoding of a smaller input.
    out = tmp_path / "latents"
    shutil.copytree(fashion_output[0], out)
    pq.write_table(pa.table({"image": [png_bytes(a) for a in fashion_test.images[:50, 0].numpy()]}),
                   tmp_path / "small.parquet")
    args = encode_parser().parse_args(["encode", "--model", str(model_dir), "--input", str(tmp_path / "small.parquet"),
                                       "--output", str(out), "--overwrite", "--no-progress", "--batch-size", "25"])
    assert enc.cmd_encode(args) == 0
    table = read_sorted(out)
    assert_exactly(table, 50)  # nothing left of the 10,000 rows it replaced
    assert enc.read_latents_metadata(out)["source"]["kind"] == "parquet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents", "not-latents", "small.parquet"]


def _session_processes(sid: int) -> list[int]:
    """Processes still in the session the killed command led (Ray's workers start their own
    process groups, so a group kill does not reach them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    found.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return found


def _kill_session(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while (left := _session_processes(proc.pid)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    assert not _session_processes(proc.pid)


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "overwriting"])
def test_killed_run_leaves_output_as_it_was(local_ray, fashion_output, model_dir, tmp_path, existing):
    out = tmp_path / "latents"
    before = None
    if existing:
        shutil.copytree(fashion_output[0], out)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
    # The job holds once every row is staged, before the commit: the kill lands there however
    # loaded the machine is (polling for a first staged file raced with a fast commit).
    hold = tmp_path / "hold.pid"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"VAEZOO_TEST_HOLD_BEFORE_COMMIT": str(hold)}
    cmd = [sys.executable, "-m", "pipelines.encode", "--model", str(model_dir), "--input", "fashion-mnist",
           "--split", "test", "--output", str(out), "--batch-size", "32", "--rows-per-file", "1000", "--no-progress"]
    if existing:
        cmd.append("--overwrite")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not hold.exists():
            assert proc.poll() is None, f"the job ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the job never staged its output"
            time.sleep(0.05)
        assert len(list(tmp_path.glob(".latents.staging-*/*.parquet"))) == 10  # every row staged, none committed
    finally:
        _kill_session(proc)
        hold.unlink(missing_ok=True)
        proc.stderr.close()

    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert not out.exists()
    stale = list(tmp_path.glob(".latents.staging-*"))
    assert len(stale) == 1  # the killed run's staging folder, out of the way

    # A rerun removes the stale staging folder and writes every row exactly once.
    enc.run_encode(str(model_dir), ["fashion-mnist"], out, split="test", batch_size=1000, overwrite=existing)
    assert not stale[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents"]
    table = pq.read_table(out, columns=["id"])
    assert_exactly(table, 10_000)


def test_stale_staging_cleanup_spares_live_runs(tmp_path):
    out = tmp_path / "latents"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    host = enc._host()
    stale = tmp_path / f".latents.staging-{host}-{dead}-0123abcd"
    live = tmp_path / f".latents.staging-{host}-{os.getpid()}-0123abcd"
    elsewhere = tmp_path / f".latents.staging-otherhost-{dead}-0123abcd"
    other_output = tmp_path / f".other.staging-{host}-{dead}-0123abcd"
    for d in (stale, live, elsewhere, other_output):
        d.mkdir()
    assert enc.clean_stale_staging(out) == [stale]
    assert not stale.exists() and live.exists() and elsewhere.exists() and other_output.exists()


# -- bad input: one line naming the row or the file --------------------------------------------------

def _bad_images(fashion_test) -> dict[str, tuple[list[bytes], str]]:
    base = [png_bytes(a) for a in fashion_test.images[:64, 0].numpy()]
    undecodable, small, colour = list(base), list(base), list(base)
    undecodable[37] = b"\x89PNG\r\n\x1a\n but not really"
    small[41] = png_bytes(np.zeros((32, 32), np.uint8))
    colour[45] = png_bytes(fashion_test.images[45, 0].numpy(), mode="RGB")
    return {"undecodable": (undecodable, r"row 37 \(id 37\): cannot decode image"),
            "wrong-size": (small, r"row 41 \(id 41\): image is 32x32, the model expects 28x28"),
            "wrong-channels": (colour, r"row 45 \(id 45\): image has 3 channels \(RGB\), the model expects 1")}


@pytest.mark.parametrize("case", ["undecodable", "wrong-size", "wrong-channels"])
def test_bad_image_is_one_line_naming_the_row(local_ray, model_dir, fashion_test, tmp_path, capsys, case):
    blobs, expected = _bad_images(fashion_test)[case]
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image": blobs}), path, row_group_size=16)
    out = tmp_path / "out"
    with pytest.raises(EncodeError, match=f"^{path}: {expected}"):
        enc.run_encode(str(model_dir), [str(path)], out, batch_size=8)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.parquet"]

    if case == "undecodable":  # the command line says the same in one line and exits 1
        capsys.readouterr()
        assert enc.main(["--model", str(model_dir), "--input", str(path), "--output", str(out), "--no-progress"]) == 1
        lines = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln.lower()]
        assert lines == [f"vaezoo encode: error: {path}: row 37 (id 37): cannot decode image (not a known image format)"]


def test_bad_inputs_found_before_any_work(model_dir, fashion_test, tmp_path):
    """Errors that need no decoding are raised by the driver, before Ray starts anything."""
    images = fashion_test.images[:10, 0].numpy()
    no_column = tmp_path / "no-column.parquet"
    pq.write_table(pa.table({"img_bytes": [png_bytes(a) for a in images]}), no_column)
    with pytest.raises(EncodeError, match=rf"^{no_column}: no image column 'image' \(columns: img_bytes\)"):
        enc.run_encode(str(model_dir), [str(no_column)], tmp_path / "out")

    wrong_length = tmp_path / "wrong-length.parquet"
    arrays = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(10 * 30 * 30, np.uint8)), 30 * 30)
    pq.write_table(pa.table({"image": arrays}), wrong_length)
    with pytest.raises(EncodeError, match=rf"^{wrong_length}: column 'image': images are arrays of shape 900, "
                                          r"the model expects 28x28 with 1 channel"):
        enc.run_encode(str(model_dir), [str(wrong_length)], tmp_path / "out")

    idx = tmp_path / "idx"
    idx.mkdir()
    from core.data import write_idx

    write_idx(idx / "t10k-images-idx3-ubyte.gz", np.zeros((5, 3, 32, 32), np.uint8))
    with pytest.raises(EncodeError, match=r"t10k-images-idx3-ubyte.gz: images are 32x32, the model expects 28x28"):
        enc.run_encode(str(model_dir), [str(idx)], tmp_path / "out", split="test")
    with pytest.raises(EncodeError, match="no such file or folder"):
        enc.run_encode(str(model_dir), [str(tmp_path / "missing.parquet")], tmp_path / "out")
    with pytest.raises(EncodeError, match="no train-images-idx3-ubyte"):
        enc.run_encode(str(model_dir), [str(idx)], tmp_path / "out", split="all")
    assert not (tmp_path / "out").exists()


def test_use_gpu_without_gpus_is_refused(local_ray, model_dir, tmp_path):
    import ray

    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray cluster has a GPU")
    with pytest.raises(EncodeError, match="--use-gpu with --num-workers 1 needs 1 GPU; the Ray cluster has 0"):
        enc.run_encode(str(model_dir), ["fashion-mnist"], tmp_path / "out", use_gpu=True)
    assert list(tmp_path.iterdir()) == []


def test_weights_that_do_not_fit_the_config_stop_the_job_in_one_line(local_ray, model_dir, tmp_path):
    """The driver reads only config.json (no torch); the actor builds the model and its error is
    bad input, with the model folder's own path, and nothing is written."""
    bad = tmp_path / "bad-model"
    shutil.copytree(model_dir, bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["config"]["model"]["hidden_dims"] = [16]  # the weights are for [32]
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(EncodeError, match=rf"^{bad}/model.safetensors: weights do not fit this vae model"):
        enc.run_encode(str(bad), ["fashion-mnist"], tmp_path / "out", split="test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-model"]


def test_variable_length_arrays_name_the_row(local_ray, model_dir, tmp_path):
    rows = [np.zeros(784, np.uint8)] * 20
    rows[13] = np.zeros(780, np.uint8)
    path = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"image": pa.array(rows, pa.list_(pa.uint8()))}), path)
    with pytest.raises(EncodeError, match=rf"^{path}: row 13 \(id 13\): image array has 780 values, the model "
                                          r"expects 784 \(28x28 with 1 channel\)$"):
        enc.run_encode(str(model_dir), [str(path)], tmp_path / "out")


# -- labels for label-conditioned variants (no Ray) ---------------------------------------------------

def test_labels_reach_label_conditioned_variants(fashion_test):
    config = RunConfig.from_dict({"variant_name": "cvae", "variant": {"condition": "label"},
                                  "model": {"latent_dim": 3, "hidden_dims": [16]}})
    torch.manual_seed(0)
    cvae = build_variant(config, fashion_test.shape, 10).eval()
    pixels = fashion_test.images[:8].numpy()
    labels = fashion_test.labels[:8].numpy()
    mean, logvar = enc.encode_pixels(cvae, pixels, labels, np.ones(8, bool), np.arange(100, 108))
    with torch.no_grad():
        want_mean, want_logvar = cvae.encode(fashion_test.images[:8].float() / 255, fashion_test.labels[:8])
    np.testing.assert_allclose(mean, want_mean.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(logvar, want_logvar.numpy(), rtol=0, atol=1e-6)
    valid = np.ones(8, bool)
    valid[5] = False
    with pytest.raises(EncodeError, match="row id 105 has no label"):
        enc.encode_pixels(cvae, pixels, labels, valid, np.arange(100, 108))
    with pytest.raises(EncodeError, match="row id 102: label 12 is outside the 10 classes"):
        enc.encode_pixels(cvae, pixels, np.where(np.arange(8) == 2, 12, labels), np.ones(8, bool), np.arange(100, 108))


def test_cli_parser_defaults(model_dir):
    args = encode_parser().parse_args(["encode", "--model", "m", "--input", "a.parquet", "b.parquet", "--output", "o"])
    assert args.input == ["a.parquet", "b.parquet"] and args.split is None and args.batch_size == 1024
    assert args.num_workers == 1 and not args.use_gpu and not args.overwrite
    assert args.cpus_per_worker is None  # run_encode picks: the machine split over the actors locally, else 1
    with pytest.raises(SystemExit):
        encode_parser().parse_args(["encode", "--model", "m", "--input", "x", "--output", "o", "--split", "val"])
