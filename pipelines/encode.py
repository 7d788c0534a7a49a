"""`vaezoo encode`: batch encoding of an image dataset to Parquet latents on Ray Data.

The pipeline is Ray Data end to end and streams, so memory stays flat as the input grows:

1. read: a Ray Data datasource cuts the input into parts whose row ids are known in advance and
   decodes images in its read tasks into blocks of (id, label, pixels as uint8 C*H*W); a part is
   read block by block, so no task holds more than a few MiB of pixels;
2. encode: `map_batches` on an actor pool; each actor loads the model once (from the bytes of
   its config.json and model.safetensors, shipped with the actor, so it works on any node);
3. write: `write_parquet` with an explicit schema into a staging folder beside the output.

Output schema (every file carries it, with JSON provenance under the schema metadata key
`vaezoo`: model URI and registry version, weights hash, variant, latent dimension, data shape,
preprocessing, source, split, row count, creation time, vae-zoo version):

    id        int64 not null   the row's stable index in the source (see "ids" below)
    label     int64            null where the source has no label
    z_mean    fixed_size_list<float32>[D]
    z_logvar  fixed_size_list<float32>[D]

Rows are not in id order (order is not preserved, for throughput): sort by `id` when it matters.

Decisions worth knowing:

* Preprocessing: pixels are fed as grey levels x/255, whatever `data.binarize` the model was
  trained with. That is the mean of the Bernoulli a binarised model was trained on, the usual
  input for embeddings, and it makes a row's latent a function of that row alone (a fixed-seed
  binarisation like the test split's would depend on the row's position in the whole split).
  The metadata records `preprocessing` and the model's `model_binarize`.
* ids: IDX data counts rows from 0 in file order; `--split all` numbers the train rows first and
  the test rows after them (the metadata's `splits` gives each split's id range). Parquet input
  counts rows across the files in the order given, a folder's files sorted by relative path. A
  folder of images counts the image files sorted by relative path; images that sit exactly one
  folder deep (`ROOT/CLASS/x.png`, torchvision's ImageFolder layout) get the index of their
  sorted class folder as label (the names are in the metadata's `source.classes`).
* Labels reach the model only for variants whose `encode` uses them (cvae, m2): m2 falls back to
  its classifier for rows without a label; a label-conditioned cvae needs every label.
* Images must already have the model's size and channel count: nothing is resized or converted
  between grey and colour. A flat or nested uint8 array is read as (H, W, C) unless its declared
  shape (a Ray tensor column, nested fixed-size lists) says (C, H, W).
* Exactly once: the job writes into `.DIR.staging-HOST-PID-RANDOM` next to DIR, then checks that
  the staged files hold every id exactly once and moves them into place with one rename (with
  `--overwrite`, an atomic exchange with the old DIR where Linux supports it, else two renames).
  A killed job leaves DIR as it was; its staging folder is removed by the next run for the same
  DIR on the same host once the process that made it is gone.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import struct
import sys
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

META_KEY = b"vaezoo"
FORMAT_NAME, FORMAT_VERSION = "vaezoo-latents", 1
PREPROCESSING = "grey levels /255"
SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
PARQUET_SUFFIXES = (".parquet", ".pq")
BLOCK_BYTES = 4 << 20      # decoded pixels per block a read task yields
MAX_BLOCK_BYTES = 16 << 20  # Ray Data's target block size during the job
PART_ROWS = 50_000         # rows per read task for seekable sources (plain IDX, Parquet row groups)
PART_FILES = 2_000         # image files per read task
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


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


# -- the input, cut into parts whose ids are known before anything is read ---------------------------

@dataclass(frozen=True)
class Part:
    kind: str                            # "idx", "parquet" or "files"
    first_id: int
    rows: int
    path: str = ""                       # the IDX image file or the Parquet file
    start: int = 0                       # index inside the file of the part's first row
    label_path: str | None = None        # IDX labels
    row_groups: tuple[int, ...] = ()     # Parquet
    column_kind: str = ""                # Parquet image column: "bytes", "struct" or "array"
    layout: str = "hwc"                  # Parquet arrays: "hwc" or "chw"
    has_label: bool = False              # Parquet: the file has the label column
    files: tuple[str, ...] = ()          # image files
    labels: tuple[int, ...] = ()         # image files: ImageFolder class indices (empty: no labels)


@dataclass
class Source:
    kind: str
    parts: list[Part]
    num_rows: int
    info: dict[str, Any] = field(default_factory=dict)
    image_column: str = "image"
    label_column: str = "label"


def _shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _model_shape_str(shape: tuple[int, int, int]) -> str:
    c, h, w = shape
    return f"{h}x{w} with {c} channel{'s' if c != 1 else ''}"


def _idx_header(path: Path) -> tuple[Any, tuple[int, ...], np.dtype, int, bool]:
    """Open an IDX file (gzip or plain, told by its first bytes): (stream after the header, dims,
    dtype, header length, gzipped)."""
    try:
        raw = open(path, "rb")
    except OSError as err:
        raise EncodeError(f"{path}: cannot read ({err.strerror})") from None
    gz = raw.read(2) == _GZIP_MAGIC
    raw.seek(0)
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
    try:
        head = stream.read(4)
        if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_DTYPES or head[3] == 0:
            raise EncodeError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'})")
        ndim = head[3]
        dims_raw = stream.read(4 * ndim)
        if len(dims_raw) < 4 * ndim:
            raise EncodeError(f"{path}: truncated IDX header")
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: damaged deflate data
        stream.close()
        raise EncodeError(f"{path}: corrupt gzip data ({err})") from None
    except EncodeError:
        stream.close()
        raise
    dims = struct.unpack(f">{ndim}I", dims_raw)
    return stream, dims, np.dtype(_IDX_DTYPES[head[2]]), 4 + 4 * ndim, gz


def _idx_image_layout(dims: tuple[int, ...], dtype: np.dtype, path: Path, shape: tuple[int, int, int]) -> str:
    """How the IDX images map to the model's (C, H, W) (as core.data reads them), or an error."""
    if dtype != np.uint8:
        raise EncodeError(f"{path}: image IDX files must hold uint8 pixels, found {dtype}")
    c, h, w = shape
    if len(dims) == 3:
        found, layout = (1, dims[1], dims[2]), "chw"
    elif len(dims) == 4 and dims[-1] in (1, 3, 4):
        found, layout = (dims[3], dims[1], dims[2]), "hwc"
    elif len(dims) == 4:
        found, layout = tuple(dims[1:]), "chw"
    else:
        raise EncodeError(f"{path}: images must have 3 or 4 dimensions, found {dims}")
    if found[1:] != (h, w):
        raise EncodeError(f"{path}: images are {_shape_str(found[1:])}, the model expects {h}x{w}")
    if found[0] != c:
        raise EncodeError(f"{path}: images have {found[0]} channel{'s' if found[0] != 1 else ''}, "
                          f"the model expects {c}")
    return layout


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _is_idx_folder(folder: Path) -> bool:
    from core.data import SPLIT_FILES

    return any(_find_idx(folder, images) for images, _ in SPLIT_FILES.values())


def _plan_idx(folder: Path, split: str, shape: tuple[int, int, int], first_id: int) -> tuple[list[Part], int, dict]:
    from core.data import SPLIT_FILES

    image_stem, label_stem = SPLIT_FILES[split]
    image_path = _find_idx(folder, image_stem)
    if image_path is None:
        raise EncodeError(f"{folder}: no {image_stem}[.gz] for the {split} split")
    stream, dims, dtype, header, gz = _idx_header(image_path)
    stream.close()
    _idx_image_layout(dims, dtype, image_path, shape)
    n = dims[0]
    row_bytes = math.prod(dims[1:])  # Python ints: no int64 wrap on a crafted header
    if not gz:
        size = image_path.stat().st_size
        if size != header + n * row_bytes:
            raise EncodeError(f"{image_path}: IDX file is {size} bytes, its dimensions {dims} need {header + n * row_bytes}")
    label_path = _find_idx(folder, label_stem)
    if label_path is not None:
        lstream, ldims, ldtype, _, _ = _idx_header(label_path)
        lstream.close()
        if len(ldims) != 1 or ldims[0] != n:
            raise EncodeError(f"{label_path}: {ldims[0]} labels for {n} images")
        if ldtype.kind not in "iu":
            raise EncodeError(f"{label_path}: labels must be integers, found {ldtype}")
    # A gzip stream cannot seek without decompressing what comes before: one part reads it all.
    step = n if gz else PART_ROWS
    parts = [Part("idx", first_id + s, min(step, n - s), path=str(image_path), start=s,
                  label_path=None if label_path is None else str(label_path)) for s in range(0, n, max(step, 1))]
    files = [str(image_path)] + ([str(label_path)] if label_path else [])
    return parts, n, {"files": files}


def _resolve_dataset_folder(name: str, data_dir: str | None) -> Path:
    from core.data import SYSTEM_LOCATIONS

    if data_dir is not None:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise EncodeError(f"--data-dir {data_dir}: no such folder")
        return folder
    system = SYSTEM_LOCATIONS.get(name.lower())
    if system and Path(system).is_dir():
        return Path(system)
    raise EncodeError(f"{name}: not a file or folder, and no IDX files known for a dataset of that name; "
                      f"pass --data-dir with its IDX files")


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _walk_files(root: Path, keep) -> list[Path]:
    """Files under `root` that `keep` accepts, sorted by relative path; hidden entries skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".") and keep(Path(f))]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _select_split_files(files: list[Path], root: Path, split: str | None) -> list[Path]:
    """Hugging Face layouts: `train-00000-of-00001.parquet`, `data/train/...`."""
    if split in (None, "all"):
        return files
    chosen = []
    for f in files:
        rel = f.relative_to(root).parts
        if split in rel[:-1] or re.match(rf"{re.escape(split)}[-_.]", rel[-1]):
            chosen.append(f)
    return chosen


def _list_type_shape(t: pa.DataType) -> tuple[pa.DataType, tuple[int, ...] | None]:
    """(value type, declared shape or None) of a (nested) list / tensor column type."""
    declared: list[int] | None = []
    if isinstance(t, pa.ExtensionType):
        shape = getattr(t, "shape", None)
        t = t.storage_type
        if shape is not None and all(isinstance(s, int) and s >= 0 for s in shape):
            while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
                t = t.value_type
            return t, tuple(shape)
        declared = None
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) \
            or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        if declared is not None and pa.types.is_fixed_size_list(t):
            declared.append(t.list_size)
        else:
            declared = None
        t = t.value_type
    return t, (tuple(declared) if declared else None)


def _array_layout(declared: tuple[int, ...] | None, shape: tuple[int, int, int], where: str) -> str:
    c, h, w = shape
    if declared is None or declared == (c * h * w,):
        return "hwc"
    if declared in ((h, w, c),) or (c == 1 and declared == (h, w)):
        return "hwc"
    if declared == (c, h, w):
        return "chw"
    raise EncodeError(f"{where}: images are arrays of shape {_shape_str(declared)}, "
                      f"the model expects {_model_shape_str(shape)}")


def _image_column_kind(t: pa.DataType, column: str, path: Path, shape) -> tuple[str, str]:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "bytes", "hwc"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        return "struct", "hwc"
    value_type, declared = _list_type_shape(t)
    if value_type is not t and pa.types.is_integer(value_type):
        return "array", _array_layout(declared, shape, f"{path}: column {column!r}")
    raise EncodeError(f"{path}: column {column!r} has type {t}; it needs encoded image bytes (PNG, JPEG...), "
                      f"a {{bytes, path}} struct as in Hugging Face image datasets, or a uint8 array")


def _plan_parquet(files: list[Path], shape, image_column: str, label_column: str,
                  first_id: int) -> tuple[list[Part], int]:
    parts: list[Part] = []
    next_id = first_id
    for path in files:
        try:
            meta = pq.ParquetFile(path).metadata
            schema = meta.schema.to_arrow_schema()
        except (OSError, pa.ArrowException, UnicodeDecodeError) as err:  # a damaged name: not UTF-8
            raise EncodeError(f"{path}: not a readable Parquet file ({_flat(err)})") from None
        if schema.get_field_index(image_column) < 0:
            cols = ", ".join(schema.names)
            raise EncodeError(f"{path}: no image column {image_column!r} (columns: {cols}); choose one with --image-column")
        kind, layout = _image_column_kind(schema.field(image_column).type, image_column, path, shape)
        has_label = schema.get_field_index(label_column) >= 0
        if has_label:
            lt = schema.field(label_column).type
            if pa.types.is_dictionary(lt):
                lt = lt.value_type if pa.types.is_integer(lt.value_type) else lt
            if not pa.types.is_integer(lt):
                raise EncodeError(f"{path}: label column {label_column!r} has type {lt}; labels must be integers "
                                  f"(choose another with --label-column)")
        group, start, rows = [], 0, 0
        position = 0
        for g in range(meta.num_row_groups):
            count = meta.row_group(g).num_rows
            if group and rows + count > PART_ROWS:
                parts.append(Part("parquet", next_id, rows, path=str(path), start=start, row_groups=tuple(group),
                                  column_kind=kind, layout=layout, has_label=has_label))
                next_id += rows
                group, start, rows = [], position, 0
            group.append(g)
            rows += count
            position += count
        if rows:
            parts.append(Part("parquet", next_id, rows, path=str(path), start=start, row_groups=tuple(group),
                              column_kind=kind, layout=layout, has_label=has_label))
            next_id += rows
    return parts, next_id - first_id


def _plan_image_files(root: Path, files: list[Path], first_id: int) -> tuple[list[Part], int, dict]:
    rel = [f.relative_to(root).parts for f in files]
    classes: list[str] = []
    labels: list[int] = []
    if rel and all(len(r) == 2 for r in rel):
        classes = sorted({r[0] for r in rel})
        index = {name: i for i, name in enumerate(classes)}
        labels = [index[r[0]] for r in rel]
    parts = []
    for s in range(0, len(files), PART_FILES):
        chunk = files[s:s + PART_FILES]
        parts.append(Part("files", first_id + s, len(chunk), files=tuple(str(f) for f in chunk),
                          labels=tuple(labels[s:s + PART_FILES])))
    return parts, len(files), ({"classes": classes} if classes else {})


def plan_source(inputs: Sequence[str], shape: tuple[int, int, int], *, split: str | None = None,
                data_dir: str | None = None, image_column: str = "image", label_column: str = "label") -> Source:
    """Find what `inputs` are and cut them into parts; every check that needs no decoding is done here."""
    if not inputs:
        raise EncodeError("no --input given")
    if split is not None and split not in SPLITS:
        raise EncodeError(f"unknown split {split!r} (train, test or all)")
    first = Path(inputs[0])
    info: dict[str, Any] = {"inputs": list(inputs)}
    # A dataset name or an IDX folder: one input only.
    is_name = not first.exists() and os.sep not in inputs[0] and first.suffix.lower() not in PARQUET_SUFFIXES
    if len(inputs) == 1 and (is_name or first.is_dir() and _is_idx_folder(first)):
        folder = first if first.is_dir() else _resolve_dataset_folder(inputs[0], data_dir)
        chosen = split or "test"
        parts, total, splits, files = [], 0, {}, []
        for s in (("train", "test") if chosen == "all" else (chosen,)):
            p, n, extra = _plan_idx(folder, s, shape, total)
            parts += p
            splits[s] = [total, total + n]
            files += extra["files"]
            total += n
        info.update(kind="idx", path=str(folder.resolve()), files=files, splits=splits)
        return Source("idx", parts, total, info)

    parquet_files: list[Path] = []
    image_root: Path | None = None
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise EncodeError(f"{item}: no such file or folder")
        if p.is_file():
            if p.suffix.lower() not in PARQUET_SUFFIXES:
                raise EncodeError(f"{item}: not a Parquet file (name it *.parquet), an IDX folder or a folder of images")
            parquet_files.append(p.resolve())
            continue
        found = _walk_files(p, lambda f: f.suffix.lower() in PARQUET_SUFFIXES)
        if found:
            chosen = _select_split_files(found, p, split)
            if not chosen:
                raise EncodeError(f"{item}: no Parquet files for the {split} split (file names starting "
                                  f"'{split}-' or a '{split}' folder)")
            parquet_files += [f.resolve() for f in chosen]
            continue
        if _is_idx_folder(p):
            raise EncodeError(f"{item}: an IDX folder must be the only --input")
        if len(inputs) > 1:
            raise EncodeError(f"{item}: a folder of images must be the only --input")
        image_root = p
    if image_root is not None:
        root = image_root
        if split in ("train", "test"):
            root = image_root / split
            if not root.is_dir():
                raise EncodeError(f"{image_root}: no '{split}' folder for the {split} split")
        files = _walk_files(root, _is_image_file)
        if not files:
            raise EncodeError(f"{image_root}: no IDX files, Parquet files or images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
        parts, total, extra = _plan_image_files(root, files, 0)
        info.update(kind="images", path=str(root.resolve()), files=len(files), **extra)
        return Source("images", parts, total, info)
    parts, total = _plan_parquet(parquet_files, shape, image_column, label_column, 0)
    info.update(kind="parquet", files=len(parquet_files), image_column=image_column, label_column=label_column,
                paths=[str(Path(i).resolve()) for i in inputs])
    return Source("parquet", parts, total, info, image_column, label_column)


# -- decoding (runs in Ray read tasks) ---------------------------------------------------------------

def decode_image(data: bytes, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """Encoded image bytes to (C, H, W) uint8, or an EncodeError naming `where`."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        reason = ("not a known image format" if isinstance(err, UnidentifiedImageError)
                  else str(err).split("\n")[0] or type(err).__name__)
        raise EncodeError(f"{where}: cannot decode image ({reason})") from None
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif img.mode not in ("L", "LA", "RGB", "RGBA"):
        raise EncodeError(f"{where}: image mode {img.mode} is not 8 bits per channel")
    if (img.height, img.width) != (h, w):
        raise EncodeError(f"{where}: image is {img.height}x{img.width}, the model expects {h}x{w}")
    bands = len(img.getbands())
    if bands != c:
        raise EncodeError(f"{where}: image has {bands} channel{'s' if bands != 1 else ''} ({img.mode}), "
                          f"the model expects {c}")
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _rows_per_block(shape: tuple[int, int, int]) -> int:
    return max(1, min(65_536, BLOCK_BYTES // max(1, int(np.prod(shape)))))


def _pixel_block(ids: np.ndarray, labels: pa.Array | np.ndarray | None, pixels: np.ndarray) -> pa.Table:
    n = len(ids)
    flat = pa.array(np.ascontiguousarray(pixels).reshape(-1), type=pa.uint8())
    width = pixels.shape[1] if pixels.ndim == 2 else int(np.prod(pixels.shape[1:]))
    if labels is None:
        labels = pa.nulls(n, pa.int64())
    elif not isinstance(labels, pa.Array):
        labels = pa.array(labels, type=pa.int64())
    return pa.table({"id": pa.array(ids, type=pa.int64()), "label": labels,
                     "pixels": pa.FixedSizeListArray.from_arrays(flat, width)})


def _read_idx_part(part: Part, shape) -> Iterator[pa.Table]:
    path = Path(part.path)
    stream, dims, dtype, header, gz = _idx_header(path)
    layout = _idx_image_layout(dims, dtype, path, shape)
    row_bytes = math.prod(dims[1:])  # Python ints: no int64 wrap on a crafted header
    lstream = ldtype = None
    try:
        if part.label_path:
            lstream, _, ldtype, lheader, lgz = _idx_header(Path(part.label_path))
        if part.start:
            stream.seek(header + part.start * row_bytes)
            if lstream is not None:
                try:
                    lstream.seek(lheader + part.start * ldtype.itemsize)
                except (OSError, EOFError, zlib.error) as err:
                    raise EncodeError(f"{part.label_path}: corrupt gzip data ({err})") from None
        step = _rows_per_block(shape)
        for s in range(0, part.rows, step):
            k = min(step, part.rows - s)
            try:
                raw = stream.read(k * row_bytes)
            except (OSError, EOFError, zlib.error) as err:
                raise EncodeError(f"{path}: corrupt gzip data after row {part.start + s} ({err})") from None
            if len(raw) < k * row_bytes:
                raise EncodeError(f"{path}: truncated IDX data: row {part.start + s + len(raw) // row_bytes} "
                                  f"is missing (the header says {dims[0]} rows)")
            pixels = np.frombuffer(raw, dtype=np.uint8).reshape(k, *dims[1:])
            if layout == "hwc":
                pixels = pixels.transpose(0, 3, 1, 2)
            labels = None
            if lstream is not None:
                try:
                    lraw = lstream.read(k * ldtype.itemsize)
                except (OSError, EOFError, zlib.error) as err:
                    raise EncodeError(f"{part.label_path}: corrupt gzip data after row {part.start + s} ({err})") from None
                if len(lraw) < k * ldtype.itemsize:
                    raise EncodeError(f"{part.label_path}: truncated IDX data at row {part.start + s}")
                labels = np.frombuffer(lraw, dtype=ldtype).astype(np.int64)
            ids = np.arange(part.first_id + s, part.first_id + s + k, dtype=np.int64)
            yield _pixel_block(ids, labels, pixels.reshape(k, -1))
    finally:
        stream.close()
        if lstream is not None:
            lstream.close()


def _array_column_pixels(column: pa.Array, shape, layout: str, where) -> np.ndarray:
    """A (nested) list / tensor column of integer pixels to (n, C*H*W) uint8 in (C, H, W) order."""
    c, h, w = shape
    n = len(column)
    arr = column.storage if isinstance(column, pa.ExtensionArray) else column
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise EncodeError(f"{where(row)}: image is null")
    parents = np.arange(n)
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type) \
            or pa.types.is_list_view(arr.type) or pa.types.is_large_list_view(arr.type):
        parents = parents[pc.list_parent_indices(arr).to_numpy()]
        arr = pc.list_flatten(arr)
    counts = np.bincount(parents, minlength=n)
    bad = np.flatnonzero(counts != c * h * w)
    if bad.size:
        row = int(bad[0])
        raise EncodeError(f"{where(row)}: image array has {counts[row]} values, the model expects "
                          f"{c * h * w} ({_model_shape_str(shape)})")
    if arr.null_count:
        row = int(parents[np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0]])
        raise EncodeError(f"{where(row)}: image array has missing values")
    values = arr.to_numpy(zero_copy_only=False)
    if values.dtype != np.uint8:
        outside = np.flatnonzero((values < 0) | (values > 255))
        if outside.size:
            row = int(parents[outside[0]])
            raise EncodeError(f"{where(row)}: pixel value {values[outside[0]]} is outside 0..255")
        values = values.astype(np.uint8)
    pixels = values.reshape(n, *((h, w, c) if layout == "hwc" else (c, h, w)))
    if layout == "hwc":
        pixels = pixels.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(pixels).reshape(n, -1)


def _read_parquet_part(part: Part, shape, image_column: str, label_column: str) -> Iterator[pa.Table]:
    path = part.path
    columns = [image_column] + ([label_column] if part.has_label else [])
    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(batch_size=_rows_per_block(shape), row_groups=list(part.row_groups),
                                  columns=columns, use_threads=False)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as err:
        raise EncodeError(f"{path}: cannot read ({_flat(err)})") from None
    done = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except (OSError, pa.ArrowException, UnicodeDecodeError) as err:
            raise EncodeError(f"{path}: cannot read the rows after row {part.start + done} ({_flat(err)})") from None
        k = batch.num_rows
        base_row, base_id = part.start + done, part.first_id + done
        where = lambda i: f"{path}: row {base_row + i} (id {base_id + i})"  # noqa: E731
        column = batch.column(0)
        if part.column_kind == "array":
            pixels = _array_column_pixels(column, shape, part.layout, where)
        else:
            blobs = (column.field("bytes") if part.column_kind == "struct" else column).to_pylist()
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            pixels = np.empty((k, int(np.prod(shape))), dtype=np.uint8)
            for i, blob in enumerate(blobs):
                if not valid[i]:
                    raise EncodeError(f"{where(i)}: image is null")
                if blob is None:
                    extra = ""
                    if part.column_kind == "struct" and column.type.get_field_index("path") >= 0:
                        extra = f" (only a path: {column.field('path')[i].as_py()})"
                    raise EncodeError(f"{where(i)}: image has no bytes{extra}")
                pixels[i] = decode_image(blob, shape, where(i)).reshape(-1)
        labels = None
        if part.has_label:
            labels = batch.column(1)
            if pa.types.is_dictionary(labels.type):
                labels = labels.dictionary_decode()
            try:
                labels = pc.cast(labels, pa.int64())
            except pa.ArrowInvalid as err:
                raise EncodeError(f"{path}: label column {label_column!r} near row {base_row}: {_flat(err)}") from None
        ids = np.arange(base_id, base_id + k, dtype=np.int64)
        yield _pixel_block(ids, labels, pixels)
        done += k


def _read_files_part(part: Part, shape) -> Iterator[pa.Table]:
    step = _rows_per_block(shape)
    for s in range(0, part.rows, step):
        chunk = part.files[s:s + step]
        pixels = np.empty((len(chunk), int(np.prod(shape))), dtype=np.uint8)
        for i, name in enumerate(chunk):
            try:
                data = Path(name).read_bytes()
            except OSError as err:
                raise EncodeError(f"{name}: cannot read ({err.strerror})") from None
            pixels[i] = decode_image(data, shape, name).reshape(-1)
        ids = np.arange(part.first_id + s, part.first_id + s + len(chunk), dtype=np.int64)
        labels = np.asarray(part.labels[s:s + step], dtype=np.int64) if part.labels else None
        yield _pixel_block(ids, labels, pixels)


def read_part(part: Part, shape: tuple[int, int, int], image_column: str = "image",
              label_column: str = "label") -> Iterator[pa.Table]:
    """Blocks of (id, label, pixels) for one part; also usable without Ray (the benchmark's baseline)."""
    if part.kind == "idx":
        yield from _read_idx_part(part, shape)
    elif part.kind == "parquet":
        yield from _read_parquet_part(part, shape, image_column, label_column)
    else:
        yield from _read_files_part(part, shape)


def _make_datasource(source: Source, shape):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    row_bytes = int(np.prod(shape)) + 16

    class LatentInputDatasource(Datasource):
        def get_name(self) -> str:
            return f"VaezooInput[{source.kind}]"

        def estimate_inmemory_data_size(self) -> int:
            return source.num_rows * row_bytes

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            # Parts are cut at planning time (their ids depend on it), so `parallelism` is a hint
            # this source does not need.
            tasks = []
            for part in source.parts:
                meta = BlockMetadata(num_rows=part.rows, size_bytes=part.rows * row_bytes, exec_stats=None,
                                     input_files=[part.path] if part.path else None)
                tasks.append(ReadTask(lambda part=part: read_part(part, shape, source.image_column,
                                                                  source.label_column), meta))
            return tasks

    return LatentInputDatasource()


# -- encoding (runs in the actor pool) ---------------------------------------------------------------

def _uses_labels(variant) -> bool:
    from core.variant import Variant

    return type(variant).encode is not Variant.encode


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
        if labels is None or not _uses_labels(variant):
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
    """The actor: loads the model once, then turns (id, label, pixels) batches into output rows."""

    def __init__(self, model_files: dict[str, bytes], schema_bytes: bytes, device: str = "cpu"):
        import tempfile

        from core.serialization import load_model

        with tempfile.TemporaryDirectory(prefix="vaezoo-model-") as folder:
            for name, blob in model_files.items():
                Path(folder, name).write_bytes(blob)
            self.variant, _ = load_model(folder, device=device)
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
        mean, logvar = encode_pixels(self.variant, x, labels, valid, ids.to_numpy(), self.device)
        d = self.latent_dim
        return pa.Table.from_arrays(
            [ids, label_col, pa.FixedSizeListArray.from_arrays(pa.array(mean.reshape(-1)), d),
             pa.FixedSizeListArray.from_arrays(pa.array(logvar.reshape(-1)), d)], schema=self.schema)


# -- provenance ------------------------------------------------------------------------------------

def _model_version(uri: str) -> tuple[str | None, str | None]:
    """(registered name, version) for models:/NAME/VERSION and models:/NAME@ALIAS; else (None, None)."""
    m = re.fullmatch(r"models:/([^/@]+)/(\d+)(/.*)?", uri)
    if m:
        return m.group(1), m.group(2)
    m = re.fullmatch(r"models:/([^/@]+)@([^/]+)(/.*)?", uri)
    if m:
        try:
            from mlflow.tracking import MlflowClient

            return m.group(1), str(MlflowClient().get_model_version_by_alias(m.group(1), m.group(2)).version)
        except Exception:  # noqa: BLE001 - provenance is best effort; the model itself resolved
            return m.group(1), None
    return None, None


def _resolve_model(model: str) -> Path:
    if "://" not in model and not model.startswith(("models:/", "runs:/")):
        return Path(model)  # a folder: no need to import MLflow (seconds, and its warnings)
    from pipelines.mlflow_model import resolve_model_uri

    return resolve_model_uri(model)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- staging and the exactly-once commit ----------------------------------------------------------

_STAGING_RE = re.compile(r"\.(?P<name>.+)\.(?P<what>staging|replaced)-(?P<host>[^/]+)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _staging_path(output: Path, what: str = "staging") -> Path:
    return output.with_name(f".{output.name}.{what}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(output: Path) -> list[Path]:
    """Remove staging folders of killed runs for `output` (this host, process gone); put back an
    output that a killed two-rename replacement had moved aside. Returns what was removed."""
    removed = []
    parent = output.parent
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        m = _STAGING_RE.fullmatch(entry.name)
        if not m or m["name"] != output.name or m["host"] != _host() or _pid_alive(int(m["pid"])):
            continue
        if m["what"] == "replaced" and not output.exists():
            os.rename(entry, output)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _check_replaceable(output: Path) -> None:
    """--overwrite replaces only a folder of vae-zoo latents (or an empty one): a typo must not
    delete a home folder."""
    if not output.is_dir():
        raise EncodeError(f"{output} exists and is not a folder; remove it yourself")
    for entry in output.iterdir():
        if entry.is_file() and entry.suffix == ".parquet":
            try:
                meta = pq.read_schema(entry).metadata or {}
            except (OSError, pa.ArrowException, UnicodeDecodeError):
                meta = {}
            if META_KEY in meta:
                continue
        raise EncodeError(f"{output} holds {entry.name}, which is not a vae-zoo latents file; "
                          f"--overwrite replaces only encode output: remove the folder yourself")


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _commit(staging: Path, output: Path, overwrite: bool) -> None:
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise EncodeError(f"{output} appeared while encoding; pass --overwrite to replace it")
        _check_replaceable(output)
        if _exchange(staging, output):
            shutil.rmtree(staging)  # now the old output
            return
        aside = _staging_path(output, "replaced")
        os.rename(output, aside)
        os.rename(staging, output)
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.rename(staging, output)


def verify_output(folder: Path, num_rows: int, schema: pa.Schema) -> list[Path]:
    """Every id in [0, num_rows) exactly once, every file with the exact schema; returns the files."""
    files = sorted(folder.glob("*.parquet"))
    seen = np.zeros(num_rows, dtype=bool)
    repeated = 0
    for f in files:
        found = pq.read_schema(f)
        if not found.equals(schema) or found.metadata != schema.metadata:
            raise EncodeFailed(f"{f.name}: written with schema {found.to_string(show_schema_metadata=False)}, "
                               f"not the one asked for")
        ids = pq.read_table(f, columns=["id"]).column("id").to_numpy()
        if ids.size and (ids.min() < 0 or ids.max() >= num_rows):
            raise EncodeFailed(f"{f.name}: ids outside 0..{num_rows - 1}")
        repeated += (ids.size - np.unique(ids).size) + int(seen[ids].sum())
        seen[ids] = True
    missing = int(num_rows - seen.sum())
    if missing or repeated:
        raise EncodeFailed(f"staged output is not exactly once: {missing} ids missing, {repeated} repeated")
    return files


# -- errors coming back from Ray -------------------------------------------------------------------

_ERROR_LINE = re.compile(r"EncodeError: (.+)")


def _input_error(err: BaseException) -> str | None:
    """The EncodeError message inside an exception that came back from Ray, if there is one."""
    todo, seen = [err], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, EncodeError):
            text = e.args[0] if e.args else str(e)
            if isinstance(text, str) and "\n" not in text:
                return text
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    m = _ERROR_LINE.search(str(err))
    return m.group(1).strip() if m else None


def _failure_summary(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if re.match(r"[\w.]+(Error|Exception|Killed|Died)\b", ln)), None)
    return last or (lines[-1] if lines else type(err).__name__)


class _DropErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


@contextlib.contextmanager
def _quiet_ray_data_errors():
    """Ray Data logs a failed job's traceback to the console; the CLI says it in one line instead
    (the full log stays in Ray's session folder, and VAEZOO_DEBUG=1 shows everything)."""
    if os.environ.get("VAEZOO_DEBUG"):
        yield
        return
    import ray.data  # noqa: F401 - configures the "ray.data" logger

    handlers = [h for h in logging.getLogger("ray.data").handlers if not isinstance(h, logging.FileHandler)]
    flt = _DropErrors()
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)


# -- the job ---------------------------------------------------------------------------------------

def _connect(address: str | None, num_workers: int) -> bool:
    """Join `address` (or $RAY_ADDRESS) or start a local cluster listening on 127.0.0.1
    (pipelines/ray_connect.py); True when this call did (and so must disconnect). An initialised
    Ray (tests, notebooks) is used as it is."""
    from pipelines.ray_connect import connect

    # Logical CPUs beyond the cores keep read tasks running beside the actor pool on small machines.
    num_cpus = max(4, os.cpu_count() or 1, num_workers + 2)
    return connect(address, num_cpus=num_cpus, log_to_driver=bool(os.environ.get("VAEZOO_DEBUG"))) != "existing"


def run_encode(model: str, inputs: Sequence[str] | str, output: str | os.PathLike, *, split: str | None = None,
               data_dir: str | None = None, image_column: str = "image", label_column: str = "label",
               batch_size: int = 1024, num_workers: int = 1, use_gpu: bool = False, overwrite: bool = False,
               rows_per_file: int = 100_000, address: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Encode `inputs` with `model` into Parquet files in `output`; returns a summary."""
    started = time.perf_counter()
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
    for name, value in (("--batch-size", batch_size), ("--num-workers", num_workers), ("--rows-per-file", rows_per_file)):
        if value < 1:
            raise EncodeError(f"{name} must be at least 1, got {value}")
    output = Path(output).absolute()
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise EncodeError(f"{output} already exists; pass --overwrite to replace it")
        _check_replaceable(output)
    clean_stale_staging(output)

    from core.serialization import CONFIG_FILE, WEIGHTS_FILE, load_model, package_version, read_metadata

    model_dir = _resolve_model(str(model))
    variant, config = load_model(model_dir)  # fails early, with the model's own message
    model_meta = read_metadata(model_dir)
    shape = variant.shape.as_tuple()
    latent_dim = config.model.latent_dim
    source = plan_source(inputs, shape, split=split, data_dir=data_dir, image_column=image_column,
                         label_column=label_column)
    if source.num_rows == 0:
        raise EncodeError(f"{', '.join(inputs)}: no rows to encode")
    registered, version = _model_version(str(model))
    metadata = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        # A folder is recorded by its absolute path, a URI as given.
        "model_uri": str(model) if registered or ":/" in str(model) else str(model_dir.resolve()),
        "model_name": registered, "model_version": version,
        "model_sha256": _sha256(model_dir / WEIGHTS_FILE),
        "model_vae_zoo_version": model_meta.get("vae_zoo_version"),
        "variant": config.variant_name, "latent_dim": latent_dim, "data_shape": list(shape),
        "num_classes": variant.num_classes, "model_binarize": config.data.binarize,
        "preprocessing": PREPROCESSING, "source": source.info, "split": split if source.kind != "idx" else (split or "test"),
        "num_rows": source.num_rows,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vae_zoo_version": package_version(),
    }
    schema = output_schema(latent_dim, metadata)
    model_files = {name: (model_dir / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}
    del variant

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(output)
    staging.mkdir()
    connected = False
    try:
        import ray
        import ray.data

        connected = _connect(address, num_workers)
        if use_gpu:  # an actor pool asking for GPUs a cluster lacks would wait for ever
            gpus = ray.cluster_resources().get("GPU", 0)
            if gpus < num_workers:
                raise EncodeError(f"--use-gpu with --num-workers {num_workers} needs {num_workers} GPU"
                                  f"{'s' if num_workers > 1 else ''}; the Ray cluster has {gpus:g}")
        ctx = ray.data.DataContext.get_current()
        saved = ctx.enable_progress_bars, ctx.target_max_block_size
        # Blocks of at most MAX_BLOCK_BYTES (Ray's default, 128 MiB, merges what a read task
        # yields into blocks that big): what is in flight stays small whatever the input size.
        ctx.enable_progress_bars, ctx.target_max_block_size = progress, MAX_BLOCK_BYTES
        try:
            # One read task per part, and no splitting of their output into more blocks.
            ds = ray.data.read_datasource(_make_datasource(source, shape), override_num_blocks=len(source.parts))
            ds = ds.map_batches(
                LatentEncoder, batch_size=batch_size, batch_format="pyarrow", zero_copy_batch=True,
                compute=ray.data.ActorPoolStrategy(size=num_workers),
                fn_constructor_kwargs={"model_files": model_files, "schema_bytes": schema.serialize().to_pybytes(),
                                       "device": "cuda" if use_gpu else "cpu"},
                num_cpus=1, num_gpus=1 if use_gpu else 0)
            ds.write_parquet(str(staging), schema=schema, min_rows_per_file=rows_per_file,
                             max_rows_per_file=rows_per_file)
        except Exception as err:  # noqa: BLE001 - Ray wraps everything; sort it into input or failure
            if os.environ.get("VAEZOO_DEBUG"):
                raise
            message = _input_error(err)
            if message is not None:
                raise EncodeError(message) from None
            raise EncodeFailed(f"encoding failed: {_failure_summary(err)} (Ray's logs have the details)") from None
        finally:
            ctx.enable_progress_bars, ctx.target_max_block_size = saved
        files = verify_output(staging, source.num_rows, schema)
        _commit(staging, output, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if connected:
            import ray

            ray.shutdown()
    seconds = time.perf_counter() - started
    return {"output": str(output), "rows": source.num_rows, "files": len(files), "seconds": round(seconds, 3),
            "rows_per_second": round(source.num_rows / seconds, 1), "model": str(model),
            "variant": config.variant_name, "latent_dim": latent_dim, "source": source.kind}


# -- command line ------------------------------------------------------------------------------------

def add_encode_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "encode", help="encode a dataset to Parquet latents on Ray Data",
        description="Encode images to latent means and log-variances with a saved model: Ray Data reads "
                    "SOURCE, an actor pool encodes batches, Parquet files land in DIR (columns id, label, "
                    "z_mean, z_logvar; provenance in the schema metadata under 'vaezoo'). DIR appears only "
                    "when complete. Pixels are fed as grey levels x/255.")
    p.add_argument("--model", required=True, help="model folder, or an MLflow URI: models:/NAME@ALIAS, "
                                                   "models:/NAME/VERSION, runs:/RUN_ID/model")
    p.add_argument("--input", required=True, nargs="+", metavar="SOURCE",
                   help="a dataset name (fashion-mnist; see --data-dir), a folder of MNIST-layout IDX files, "
                        "Parquet files or folders of them with an image column, or a folder of image files")
    p.add_argument("--output", required=True, metavar="DIR", help="folder of Parquet files to create")
    p.add_argument("--split", choices=list(SPLITS),
                   help="IDX data: train, test (default) or all (train ids first); Parquet folders: files "
                        "named SPLIT-* or under a SPLIT folder (default every file); image folders: ROOT/SPLIT")
    p.add_argument("--data-dir", help="folder with the IDX files of a dataset given by name")
    p.add_argument("--image-column", default="image", help="Parquet column with the images (default image)")
    p.add_argument("--label-column", default="label", help="Parquet column with integer labels, if any (default label)")
    p.add_argument("--batch-size", type=int, default=1024, help="images per model call (default 1024)")
    p.add_argument("--num-workers", type=int, default=1, help="encoder actors, each loads the model once (default 1)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per encoder actor")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds earlier encode output")
    p.add_argument("--rows-per-file", type=int, default=100_000,
                   help="rows per Parquet file (default 100000; a few files may hold fewer)")
    p.add_argument("--address", help="Ray cluster to join (default $RAY_ADDRESS, else a local cluster for this "
                                     "job); DIR must be on storage every node shares")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def cmd_encode(args) -> int:
    def on_term(signum, frame):  # SIGTERM: unwind, so the staging folder is removed
        raise SystemExit(128 + signum)

    previous = None
    with contextlib.suppress(ValueError):  # not in the main thread
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with _quiet_ray_data_errors():
            summary = run_encode(
                args.model, args.input, args.output, split=args.split, data_dir=args.data_dir,
                image_column=args.image_column, label_column=args.label_column, batch_size=args.batch_size,
                num_workers=args.num_workers, use_gpu=args.use_gpu, overwrite=args.overwrite,
                rows_per_file=args.rows_per_file, address=args.address,
                progress=not args.no_progress and sys.stderr.isatty())
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.encode ...`: the same as `vaezoo encode ...`."""
    parser = argparse.ArgumentParser(prog="vaezoo")
    add_encode_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["encode", *(sys.argv[1:] if argv is None else argv)])
    try:
        return cmd_encode(args)
    except KeyboardInterrupt:
        print("vaezoo: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, RuntimeError) as err:
        if os.environ.get("VAEZOO_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"vaezoo encode: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
