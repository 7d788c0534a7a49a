"""`vaezoo complete` on a real local Ray cluster: every input row once in the Parquet scores and
once as a PNG grid, rows read back and checked against the in-process completion, one-line errors,
the exactly-once refusal of an existing output. Starts Ray: runs in a pytest process of its own
(scripts/test.sh OWN_PROCESS)."""
# test.sh: own process (it starts Ray: Ray Train V2 cannot start twice in one process)
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from core.config import RunConfig
from core.networks import DataShape
from core.serialization import build_variant, load_model, save_model
from pipelines.cli import main
from pipelines.complete import run_complete
from pipelines.complete.completer import SCORE_COLUMNS, complete_pixels
from pipelines.encode import EncodeError

SIZE, ROWS, SAMPLES = 8, 37, 3


def save_cvae(folder, options):
    config = RunConfig.from_dict({"variant_name": "cvae", "variant": options, "objective": None,
                                  "model": {"latent_dim": 3, "hidden_dims": [16]}})
    torch.manual_seed(0)
    return save_model(build_variant(config, DataShape(1, SIZE, SIZE), 4), config, folder)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A Parquet file of PNG bytes with labels; its pixels, for the direct computation."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (ROWS, SIZE, SIZE), dtype=np.uint8)
    blobs = []
    for p in pixels:
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    path = tmp_path_factory.mktemp("input") / "images.parquet"
    pq.write_table(pa.table({"image": blobs, "label": np.arange(ROWS) % 4}), path, row_group_size=10)
    return path, pixels


@pytest.mark.parametrize("task, options, workers", [("inpaint", {"condition": "mask", "mask": "pixels"}, 2),
                                                    ("superres", {"condition": "lowres", "lowres_factor": 2}, 1)])
def test_every_input_row_once_as_scores_and_as_a_grid(local_ray, source, tmp_path, task, options, workers):
    path, pixels = source
    model_dir = save_cvae(tmp_path / "model", options)
    out = tmp_path / "out"
    summary = run_complete(str(model_dir), [str(path)], out, task=task, samples=SAMPLES, nll_samples=20, seed=7,
                           batch_size=8, num_workers=workers, rows_per_file=16)
    assert summary["rows"] == ROWS
    table = pq.read_table(out / "scores").sort_by("id")
    assert table.column("id").to_pylist() == list(range(ROWS))  # every row exactly once
    assert table.column("label").to_pylist() == [i % 4 for i in range(ROWS)]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i}.png" for i in range(ROWS))
    grid = Image.open(out / "images" / "5.png")
    assert grid.size == ((3 + SAMPLES) * (SIZE + 2) + 2, SIZE + 4)  # input, mean, samples, truth in one row
    # Each row's scores are the in-process completion's: rows are seeded by id, not by batch.
    variant, _ = load_model(model_dir)
    variant.eval()
    ids = np.array([5, 30])
    want, _ = complete_pixels(variant, pixels[ids][:, None], ids, SAMPLES, 20, 7)
    got = table.take(pa.array(ids))
    for name in SCORE_COLUMNS:
        if name != "cond_nll":  # importance samples are seeded per batch
            np.testing.assert_allclose(got.column(name).to_numpy(), want[name], rtol=1e-6, err_msg=name)
    assert np.all(np.isfinite(table.column("cond_nll").to_numpy())) and np.all(table.column("cond_nll").to_numpy() > 0)

    # Exactly once: an existing output is refused, and kept as it was.
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(EncodeError, match="already exists"):
        run_complete(str(model_dir), [str(path)], out, task=task, samples=1, nll_samples=1)
    assert sorted(p.name for p in out.rglob("*")) == before


def test_wrong_task_and_model_without_image_condition_are_one_line(source, tmp_path, capsys):
    path, _ = source
    sr = save_cvae(tmp_path / "sr", {"condition": "lowres", "lowres_factor": 2})
    labels = save_cvae(tmp_path / "label", {"condition": "label"})
    common = ["--input", str(path), "--samples", "2", "--no-progress"]
    assert main(["complete", "--model", str(sr), "--task", "inpaint", "--output", str(tmp_path / "a"), *common]) == 1
    err = capsys.readouterr().err.strip()
    assert "the model is a cvae for superres" in err and len(err.splitlines()) == 1
    assert main(["complete", "--model", str(labels), "--task", "superres", "--output", str(tmp_path / "b"), *common]) == 1
    assert "no image condition" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
