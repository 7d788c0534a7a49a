"""Decoding a part into blocks of (id, label, pixels as uint8 C*H*W); runs in Ray read tasks,
and without Ray too (the benchmark's baseline)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.encode.schema import EncodeError, _flat
from pipelines.encode.sources import Part, _idx_image_layout, _model_shape_str, _open_idx

BLOCK_BYTES = 4 << 20      # decoded pixels per block a read task yields


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
    from core.idx import DataError, read_idx_rows

    stream, header = _open_idx(Path(part.path))
    layout = _idx_image_layout(header.dims, header.dtype, header.path, shape)
    lstream = None
    try:
        step = _rows_per_block(shape)
        images = read_idx_rows(stream, header, part.start, part.rows, step)
        labels: Iterator[np.ndarray] = iter(())
        if part.label_path:
            lstream, lheader = _open_idx(Path(part.label_path))
            labels = read_idx_rows(lstream, lheader, part.start, part.rows, step)
        for s in range(0, part.rows, step):
            try:
                pixels = next(images)
                y = next(labels).astype(np.int64) if lstream is not None else None
            except DataError as err:
                raise EncodeError(str(err)) from None
            if layout == "hwc":
                pixels = pixels.transpose(0, 3, 1, 2)
            k = len(pixels)
            ids = np.arange(part.first_id + s, part.first_id + s + k, dtype=np.int64)
            yield _pixel_block(ids, y, pixels.reshape(k, -1))
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
