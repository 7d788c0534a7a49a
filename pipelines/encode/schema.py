"""The output's Parquet schema, its provenance metadata, and the errors encode raises."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

META_KEY = b"vaezoo"
FORMAT_NAME, FORMAT_VERSION = "vaezoo-latents", 1
PREPROCESSING = "grey levels /255"


class EncodeError(ValueError):
    """Bad input, in one line that names the file and, where it is one row's fault, the row."""


def _flat(err: BaseException) -> str:
    """An exception's message on one line (Arrow's can span several)."""
    return " ".join(str(err).split())


class EncodeFailed(RuntimeError):
    """The job failed for a reason other than its input (a worker died, the disk filled up...)."""


# -- schema -----------------------------------------------------------------------------------------

def output_schema(latent_dim: int, metadata: dict[str, Any] | None = None) -> pa.Schema:
    vector = pa.list_(pa.field("element", pa.float32()), latent_dim)  # "element": Parquet's name for it
    fields = [pa.field("id", pa.int64(), nullable=False), pa.field("label", pa.int64(), nullable=True),
              pa.field("z_mean", vector, nullable=False), pa.field("z_logvar", vector, nullable=False)]
    meta = None if metadata is None else {META_KEY: json.dumps(metadata, sort_keys=True).encode()}
    return pa.schema(fields, metadata=meta)


def read_latents_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `vaezoo` metadata of one output file (or of the first file of an output folder)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".parquet")
        if not files:
            raise EncodeError(f"{path}: no Parquet files")
        path = files[0]
    meta = pq.read_schema(path).metadata or {}
    if META_KEY not in meta:
        raise EncodeError(f"{path}: not a vae-zoo latents file (no {META_KEY.decode()!r} schema metadata)")
    return json.loads(meta[META_KEY])
