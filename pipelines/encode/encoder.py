"""Pixels to latents: the model call, and the actor of the Ray Data pool that makes it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.encode.schema import EncodeError


def encode_pixels(variant, pixels: np.ndarray, labels: np.ndarray | None = None, valid: np.ndarray | None = None,
                  ids: np.ndarray | None = None, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Latent mean and log-variance (float32 numpy) of uint8 pixels (B, C, H, W), fed as x/255.

    `labels`/`valid` (int64 and bool, (B,)) reach variants whose encode uses labels: rows with a
    label pass it, rows without pass none (the variant decides: m2 classifies, cvae refuses).
    """
    import torch

    pixels = pixels if pixels.flags.writeable else pixels.copy()  # torch warns on read-only memory
    x = torch.from_numpy(pixels).to(device).float().div_(255.0)
    with torch.no_grad():
        if labels is None or not variant.uses_labels:  # the capability flag, not a guess
            mean, logvar = variant.encode(x)
            return mean.float().cpu().numpy(), logvar.float().cpu().numpy()
        valid = np.ones(len(labels), bool) if valid is None else valid
        ids = np.arange(len(labels)) if ids is None else ids
        if variant.num_classes:
            bad = np.flatnonzero(valid & ((labels < 0) | (labels >= variant.num_classes)))
            if bad.size:
                raise EncodeError(f"row id {int(ids[bad[0]])}: label {int(labels[bad[0]])} is outside the "
                                  f"{variant.num_classes} classes the {variant.name} model knows")
        mean = np.empty((len(labels), variant.model_cfg.latent_dim), np.float32)
        logvar = np.empty_like(mean)
        for rows, y in ((np.flatnonzero(valid), True), (np.flatnonzero(~valid), False)):
            if not rows.size:
                continue
            yt = torch.from_numpy(labels[rows]).to(device) if y else None
            try:
                m, lv = variant.encode(x[torch.from_numpy(rows).to(device)], yt)
            except ValueError as err:
                raise EncodeError(f"row id {int(ids[rows[0]])} has no label: {err}") from None
            mean[rows], logvar[rows] = m.float().cpu().numpy(), lv.float().cpu().numpy()
        return mean, logvar


class LatentEncoder:
    """The actor: loads the model once, then turns (id, label, pixels) blocks into output rows,
    calling the model on `batch_size` rows at a time (a block is what a read task yields: the read
    runs fused in this actor, so blocks arrive in-process, without a copy)."""

    def __init__(self, model_files: dict[str, bytes], schema_bytes: bytes, device: str = "cpu",
                 torch_threads: int = 1, batch_size: int = 1024, model_path: str = "the model folder"):
        import tempfile

        import torch

        from core.serialization import ModelLoadError, load_model

        # Ray gives an actor one torch thread unless told: use every CPU it reserves.
        torch.set_num_threads(max(1, torch_threads))
        self.batch_size = batch_size

        with tempfile.TemporaryDirectory(prefix="vaezoo-model-") as folder:
            for name, blob in model_files.items():
                Path(folder, name).write_bytes(blob)
            try:
                self.variant, _ = load_model(folder, device=device)
            except ModelLoadError as err:  # the driver read only config.json: bad input, told as such
                raise EncodeError(str(err).replace(folder, model_path)) from None
        self.device = device
        self.shape = self.variant.shape.as_tuple()
        self.schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
        self.latent_dim = self.variant.model_cfg.latent_dim

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        pixels = batch.column("pixels").combine_chunks().flatten()  # flatten() honours slicing
        x = pixels.to_numpy(zero_copy_only=False).reshape(n, *self.shape)
        ids = batch.column("id").combine_chunks()
        label_col = batch.column("label").combine_chunks()
        labels = valid = None
        if label_col.null_count < n:
            valid = label_col.is_valid().to_numpy(zero_copy_only=False)
            labels = label_col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        id_values = ids.to_numpy()
        mean = np.empty((n, self.latent_dim), np.float32)
        logvar = np.empty_like(mean)
        for s in range(0, n, self.batch_size):
            rows = slice(s, s + self.batch_size)
            mean[rows], logvar[rows] = encode_pixels(
                self.variant, x[rows], None if labels is None else labels[rows],
                None if valid is None else valid[rows], id_values[rows], self.device)
        d = self.latent_dim
        return pa.Table.from_arrays(
            [ids, label_col, pa.FixedSizeListArray.from_arrays(pa.array(mean.reshape(-1)), d),
             pa.FixedSizeListArray.from_arrays(pa.array(logvar.reshape(-1)), d)], schema=self.schema)
