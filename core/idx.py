"""The IDX file format (MNIST's): streaming reads, whole-file reads and writes, gzip or plain.

NumPy only, no torch: `vaezoo encode`'s driver plans IDX input with it without loading torch
(core.data builds the torch datasets on top and re-exports these names).
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np


class DataError(ValueError):
    """Bad or missing data; the message names the file or dataset."""


# IDX type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte types are big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where Debian's dataset packages put the IDX files (`apt-get install dataset-fashion-mnist`).
SYSTEM_LOCATIONS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}


@dataclass(frozen=True)
class IdxHeader:
    path: Path
    dims: tuple[int, ...]
    dtype: np.dtype
    size: int       # bytes before the first row
    gzipped: bool

    @property
    def row_bytes(self) -> int:
        # Python ints: an int64 product wraps (65536**4 == 0 mod 2**64) and lets a crafted header through.
        return math.prod(self.dims[1:]) * self.dtype.itemsize


def open_idx(path: str | os.PathLike) -> tuple[BinaryIO, IdxHeader]:
    """Open an IDX file for streaming, gzip-compressed or not (told by its first bytes, not its
    name): the stream, positioned after the header, and the header. The caller closes the stream."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == _GZIP_MAGIC
        stream = gzip.open(path, "rb") if gzipped else open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    try:
        head = stream.read(4)
        if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
            raise DataError(f"{path}: not an IDX file (bad magic number {head.hex() or 'empty'})")
        ndim = head[3]
        if ndim == 0:
            raise DataError(f"{path}: IDX file declares zero dimensions")
        dims_raw = stream.read(4 * ndim)
        if len(dims_raw) < 4 * ndim:
            raise DataError(f"{path}: truncated IDX header")
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: damaged deflate data
        stream.close()
        raise DataError(f"{path}: corrupt gzip data ({err})") from None
    except DataError:
        stream.close()
        raise
    dims = struct.unpack(f">{ndim}I", dims_raw)
    return stream, IdxHeader(path, dims, np.dtype(_IDX_DTYPES[head[2]]), 4 + 4 * ndim, gzipped)


def read_idx_rows(stream: BinaryIO, header: IdxHeader, start: int, count: int,
                  rows_per_chunk: int) -> Iterator[np.ndarray]:
    """Rows [start, start + count) of an IDX stream from `open_idx`, as arrays of at most
    `rows_per_chunk` rows (a gzip stream decompresses what comes before `start` to get there)."""
    path, row_bytes = header.path, header.row_bytes
    try:
        stream.seek(header.size + start * row_bytes)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: corrupt gzip data ({err})") from None
    for s in range(0, count, max(1, rows_per_chunk)):
        k = min(rows_per_chunk, count - s)
        try:
            raw = stream.read(k * row_bytes)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt gzip data after row {start + s} ({err})") from None
        if len(raw) < k * row_bytes:
            raise DataError(f"{path}: truncated IDX data: row {start + s + len(raw) // max(1, row_bytes)} "
                            f"is missing (the header says {header.dims[0]} rows)")
        yield np.frombuffer(raw, dtype=header.dtype).reshape(k, *header.dims[1:])


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a whole IDX file, gzip-compressed or not, checking its size against its header."""
    stream, header = open_idx(path)
    with stream:
        try:
            data = stream.read()
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{header.path}: corrupt gzip data ({err})") from None
    dims = header.dims
    expected = math.prod(dims) * header.dtype.itemsize
    actual = len(data)
    if actual != expected:
        kind = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(f"{header.path}: IDX file {kind}: dimensions {dims} need {expected} data bytes, found {actual}")
    try:
        return np.frombuffer(data, dtype=header.dtype).reshape(dims)
    except ValueError as err:  # a zero dimension beside ones too big for numpy ("array is too big")
        raise DataError(f"{header.path}: IDX dimensions {dims} cannot be held in an array ({err})") from None


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write an IDX file (gzip when the name ends in .gz); tests and tools use it to make data."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder(">") if np.dtype(v).itemsize > 1 else np.dtype(v): k for k, v in _IDX_DTYPES.items()}
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in codes:
        raise DataError(f"cannot write dtype {array.dtype} to IDX")
    body = bytes([0, 0, codes[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body += np.ascontiguousarray(array, dtype=dtype).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(body, compresslevel=1) if compress else body)
