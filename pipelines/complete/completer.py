"""The model call of `vaezoo complete` and the Ray Data actor that makes it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipelines.complete.metrics import cvae_completions, cvae_conditional_nll, image_scores
from pipelines.encode.schema import META_KEY

SCORE_COLUMNS = ("cond_nll", "psnr_mean", "ssim_mean", "psnr_best", "ssim_best", "consistency", "diversity")
FORMAT_NAME, FORMAT_VERSION = "vaezoo-completions", 1
IMAGES_FOLDER, SCORES_FOLDER = "images", "scores"


def scores_schema(metadata: dict | None = None) -> pa.Schema:
    fields = [pa.field("id", pa.int64(), nullable=False), pa.field("label", pa.int64(), nullable=True)]
    fields += [pa.field(name, pa.float64(), nullable=False) for name in SCORE_COLUMNS]
    meta = None if metadata is None else {META_KEY: json.dumps(metadata, sort_keys=True).encode()}
    return pa.schema(fields, metadata=meta)


def row_generator(seed: int, row_id: int) -> torch.Generator:
    """A row's own random stream: its mask and its samples do not depend on how rows are batched."""
    return torch.Generator().manual_seed(seed * 1_000_003 + row_id)


def input_view(cvae, x: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """What the model is given, as an image: the low-resolution image blown up (nearest), or the
    visible pixels with the hidden ones at mid-grey."""
    if cvae.options.condition == "lowres":
        f = cvae.options.lowres_factor
        return torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, f), scale_factor=f, mode="nearest")
    shown = cvae.condition_given(x, visible).target_mask
    return x * (1 - shown) + 0.5 * shown


@torch.no_grad()
def complete_pixels(cvae, pixels: np.ndarray, ids: np.ndarray, samples: int, nll_samples: int, seed: int,
                    device="cpu") -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """Scores (B,) per column and the grids' images (B, 3 + samples, C, H, W): input, mean, the
    samples, truth. Pixels (uint8) are fed as grey levels x/255, as encode feeds them."""
    pixels = pixels if pixels.flags.writeable else pixels.copy()
    x = torch.from_numpy(pixels).to(device).float().div_(255.0)
    gens = [row_generator(seed, int(i)) for i in ids]
    visible = None
    if cvae.random_mask:
        visible = torch.cat([cvae.draw_visible(1, g) for g in gens])
    latent = cvae.model_cfg.latent_dim
    noise = torch.stack([torch.randn((samples, latent), generator=g) for g in gens], 1).to(device)
    done = cvae_completions(cvae, x, samples, visible=visible, noise=noise)
    scores = image_scores(done)
    torch.manual_seed(seed * 1_000_003 + int(ids.min()) if len(ids) else seed)  # the importance samples
    scores["cond_nll"] = cvae_conditional_nll(cvae, x, nll_samples, visible).double().cpu().numpy()
    grids = torch.cat([input_view(cvae, x, visible)[:, None], done.mean[:, None], done.samples.transpose(0, 1),
                       x[:, None]], 1)
    return scores, grids


class Completer:
    """The actor: loads the model once; per batch writes one PNG grid per row into the staging
    folder's images/ (by temporary name and rename, so a retried task leaves whole files) and
    returns the rows' scores."""

    def __init__(self, model_files: dict[str, bytes], schema_bytes: bytes, images_dir: str, samples: int,
                 nll_samples: int, seed: int, device: str = "cpu"):
        import tempfile

        from core.serialization import load_model

        with tempfile.TemporaryDirectory(prefix="vaezoo-model-") as folder:
            for name, blob in model_files.items():
                Path(folder, name).write_bytes(blob)
            self.variant, _ = load_model(folder, device=device)
        self.variant.eval()
        self.schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
        self.shape = self.variant.shape.as_tuple()
        self.images_dir, self.samples, self.nll_samples, self.seed, self.device = \
            Path(images_dir), samples, nll_samples, seed, device

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipelines.images import save_grid

        n = batch.num_rows
        pixels = batch.column("pixels").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        ids = batch.column("id").combine_chunks()
        id_values = ids.to_numpy()
        scores, grids = complete_pixels(self.variant, pixels.reshape(n, *self.shape), id_values, self.samples,
                                        self.nll_samples, self.seed, self.device)
        for row_id, grid in zip(id_values, grids):
            final = self.images_dir / f"{int(row_id)}.png"
            partial = final.with_name(f".{final.name}.{os.getpid()}.tmp")
            save_grid(grid, partial, nrow=len(grid))
            os.replace(partial, final)
        columns = [ids, batch.column("label").combine_chunks()]
        columns += [pa.array(scores[name], pa.float64()) for name in SCORE_COLUMNS]
        return pa.Table.from_arrays(columns, schema=self.schema)
