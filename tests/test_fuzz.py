"""Fuzzing the image readers with generated corrupt input: they raise only the project's own errors.

* IDX (`core.data.read_idx`, `core.data.load_idx_split`): random bytes, random headers (any type
  code, 0-255 dimensions, sizes up to 2**32-1), valid files with bit flips, truncations, inserted
  and deleted bytes, gzip wrappers of all of these and gzip magic before garbage. Only
  `core.data.DataError` may come out (never IndexError / ValueError / struct.error / zlib.error),
  its message naming the file; an undamaged file still reads back exactly.
* `vaezoo encode`'s readers, driven as its Ray read tasks drive them but in this process
  (`plan_source` then `read_part`): IDX folders of the same blobs, and Parquet files whose image
  column holds damaged or random image bytes (PNG, BMP, GIF, TIFF, JPEG, WebP...), structs, uint8 /
  int64 / float (NaN, Inf) arrays of any length, strings, nulls; label columns of every type; then
  the file itself truncated, bit-flipped or replaced by random bytes. Only
  `pipelines.encode.EncodeError` may come out.
"""
from __future__ import annotations

import gzip
import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.data import DataError, load_idx_split, read_idx
from pipelines.encode import EncodeError, plan_source, read_part

FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SHAPE = (1, 4, 4)  # the model shape the encode readers are asked for: 4x4 grey


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- IDX ----------------------------------------------------------------------------------------------

_dim = st.one_of(st.integers(0, 5), st.sampled_from([1, 4, 255, 256, 65_535, 65_536, 2**31, 2**32 - 1]))


def damage_bytes(draw, raw: bytearray, max_ops: int) -> bytes:
    """1 to `max_ops` damages of an encoded file: flip a bit, overwrite a byte, or truncate."""
    for _ in range(draw(st.integers(1, max_ops))):
        if not raw:
            break
        i = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["flip", "byte", "truncate"]))
        if op == "flip":
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            raw[i] = draw(st.integers(0, 255))
        else:
            raw = raw[:i]
    return bytes(raw)


@st.composite
def idx_headers(draw) -> bytes:
    """A header with any magic, type code and dimensions, then random bytes."""
    code = draw(st.one_of(st.sampled_from(sorted(IDX_TYPES)), st.integers(0, 255)))
    ndim = draw(st.one_of(st.integers(0, 5), st.just(255)))
    dims = draw(st.lists(_dim, min_size=min(ndim, 6), max_size=min(ndim, 6)))
    magic = draw(st.sampled_from([b"\x00\x00", b"\x00\x00", b"\x01\x00", b"\x00\x08"]))
    return magic + bytes([code, ndim]) + struct.pack(f">{len(dims)}I", *dims) + draw(st.binary(max_size=300))


def _mutate(draw, raw: bytearray) -> tuple[bytearray, bool]:
    changed = False
    for op in draw(st.lists(st.sampled_from(["flip", "truncate", "insert", "delete"]), max_size=3)):
        before = bytes(raw)
        if op == "flip" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            raw = raw[:draw(st.integers(0, len(raw)))]
        elif op == "insert":
            i = draw(st.integers(0, len(raw)))
            raw[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and raw:
            i = draw(st.integers(0, len(raw) - 1))
            del raw[i:i + draw(st.integers(1, 8))]
        changed |= bytes(raw) != before
    return raw, changed


@st.composite
def damaged_idx(draw) -> tuple[bytes, np.ndarray | None]:
    """A valid IDX file (random type and shape), damaged or not, gzipped before or after: (bytes,
    the array it holds when it came through undamaged, else None)."""
    dtype = np.dtype(draw(st.sampled_from(list(IDX_TYPES.values()))))
    shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4))
    array = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape).astype(dtype)
    body = struct.pack(">BBBB", 0, 0, next(k for k, v in IDX_TYPES.items() if np.dtype(v) == dtype), len(shape))
    body += struct.pack(f">{len(shape)}I", *shape) + array.astype(dtype.newbyteorder(">")).tobytes()
    gz_first = draw(st.booleans())
    raw = bytearray(gzip.compress(body, compresslevel=1) if gz_first else body)
    raw, changed = _mutate(draw, raw)
    if not gz_first and draw(st.booleans()):
        raw = bytearray(gzip.compress(bytes(raw), compresslevel=1))
    return bytes(raw), None if changed else array


idx_blobs = st.one_of(
    st.binary(max_size=100),
    idx_headers(),
    damaged_idx().map(lambda pair: pair[0]),
    st.binary(max_size=100).map(gzip.compress),                      # gzip of garbage
    idx_headers().map(gzip.compress),
    st.binary(max_size=60).map(lambda b: b"\x1f\x8b" + b),            # gzip magic, then garbage
    st.builds(lambda b, n: gzip.compress(b)[:n], st.binary(max_size=60), st.integers(0, 40)),  # cut gzip
)


@settings(max_examples=200, **FUZZ)
@given(blob=idx_blobs)
@example(blob=b"")
@example(blob=bytes([0, 0, 8, 4]) + struct.pack(">4I", *(65_536,) * 4))  # 65536**4 wraps to 0 in int64
@example(blob=bytes([0, 0, 8, 0]))
@example(blob=bytes([0, 0, 8, 5]) + struct.pack(">5I", 2**31, 4, 2**32 - 1, 1, 0))  # zero size, too big for numpy
@example(blob=bytes([0, 0, 8, 255]) + b"\x00" * 16)
@example(blob=b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"garbage")
def test_read_idx_raises_only_data_error(folder, blob):
    path = folder / "images-idx3-ubyte"
    path.write_bytes(blob)
    try:
        array = read_idx(path)
    except DataError as err:
        assert str(err).startswith(f"{path}: "), err
        assert "\n" not in str(err)
        return
    assert isinstance(array, np.ndarray) and array.ndim >= 1


@settings(max_examples=100, **FUZZ)
@given(case=damaged_idx())
def test_undamaged_idx_reads_back_and_damaged_raises_data_error(folder, case):
    """The property above is not met by refusing everything: what came through whole reads back."""
    blob, array = case
    path = folder / "damaged-idx"
    path.write_bytes(blob)
    try:
        got = read_idx(path)
    except DataError as err:
        assert array is None, f"an undamaged file was refused: {err}"
        assert str(err).startswith(f"{path}: ")
        return
    if array is not None:
        np.testing.assert_array_equal(got, array)
        assert got.dtype == array.dtype


def _write_split(folder: Path, images: bytes, labels: bytes | None) -> Path:
    split = folder / "split"
    split.mkdir(exist_ok=True)
    (split / "t10k-images-idx3-ubyte").write_bytes(images)
    label_file = split / "t10k-labels-idx1-ubyte"
    if labels is None:
        label_file.unlink(missing_ok=True)
    else:
        label_file.write_bytes(labels)
    return split


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX bytes of `array` (uint8, int8 or big-endian int32 / float32, as the file stores them)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    code = codes[array.dtype]
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


# Images that fit the 4x4 model, and labels of every kind (negative, float with NaN, wrong count).
_images_4x4 = st.integers(0, 6).map(lambda n: _idx_bytes(np.full((n, 4, 4), 7, np.uint8)))
_labels = st.one_of(
    st.none(),
    st.lists(st.integers(-128, 127), max_size=6).map(lambda v: _idx_bytes(np.array(v, np.int8))),
    st.lists(st.integers(0, 2**31 - 1), max_size=6).map(lambda v: _idx_bytes(np.array(v, ">i4"))),
    st.lists(st.floats(width=32), max_size=6).map(lambda v: _idx_bytes(np.array(v, ">f4"))),
    idx_blobs,
)


@settings(max_examples=100, **FUZZ)
@given(images=st.one_of(_images_4x4, idx_blobs), labels=_labels)
def test_load_idx_split_raises_only_data_error(folder, images, labels):
    split = _write_split(folder, images, labels)
    try:
        ds = load_idx_split(split, "test")
    except DataError as err:
        assert str(err).startswith(str(split)), err
        return
    assert ds.images.dtype.is_floating_point is False and ds.images.ndim == 4
    if ds.labels is not None:
        assert len(ds.labels) == len(ds.images) and (len(ds.labels) == 0 or int(ds.labels.min()) >= 0)


def _encode_all(inputs: list[str], **kwargs) -> None:
    """Plan and read every part as encode's read tasks do: every row exactly once, 4x4 pixels."""
    source = plan_source(inputs, SHAPE, **kwargs)
    ids: list[int] = []
    for part in source.parts:
        for block in read_part(part, SHAPE, source.image_column, source.label_column):
            assert block.column("pixels").type.list_size == int(np.prod(SHAPE))
            ids += block.column("id").to_pylist()
    assert sorted(ids) == list(range(source.num_rows))


@settings(max_examples=100, **FUZZ)
@given(images=st.one_of(_images_4x4, idx_blobs), labels=_labels)
def test_encode_idx_reader_raises_only_encode_error(folder, images, labels):
    split = _write_split(folder, images, labels)
    try:
        _encode_all([str(split)], split="test")
    except EncodeError as err:
        assert str(split) in str(err) and "\n" not in str(err), err


# -- Parquet (vaezoo encode) ----------------------------------------------------------------------------

def _encoded_images() -> list[bytes]:
    from PIL import Image

    found = []
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    for fmt in ("PNG", "BMP", "GIF", "TIFF", "JPEG", "WEBP", "PPM", "TGA", "PCX", "ICO"):
        for mode, size in (("L", (4, 4)), ("RGB", (4, 4)), ("L", (5, 3))):
            pixels = np.resize(grey, size[::-1])
            image = Image.fromarray(pixels, "L").convert(mode)
            buffer = io.BytesIO()
            try:
                image.save(buffer, format=fmt)
            except (OSError, KeyError, ValueError):  # a format this Pillow cannot write
                continue
            found.append(buffer.getvalue())
    return found


ENCODED = _encoded_images()


@st.composite
def image_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["valid", "damaged", "damaged", "header-then-garbage", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=64))
    raw = bytearray(draw(st.sampled_from(ENCODED)))
    if kind == "header-then-garbage":
        return bytes(raw[:draw(st.integers(2, 24))]) + draw(st.binary(max_size=64))
    if kind == "damaged":
        return damage_bytes(draw, raw, max_ops=4)
    return bytes(raw)


@st.composite
def image_columns(draw, n: int) -> pa.Array:
    kind = draw(st.sampled_from(["binary", "binary", "large_binary", "struct", "struct-no-bytes", "uint8-list",
                                 "int64-list", "fixed-size", "nested", "float-nan", "string", "int", "null",
                                 "dictionary"]))
    with_nulls = draw(st.booleans())

    def holes(values: list) -> list:
        if with_nulls and values:
            values[draw(st.integers(0, len(values) - 1))] = None
        return values

    if kind in ("binary", "large_binary"):
        return pa.array(holes([draw(image_bytes()) for _ in range(n)]),
                        pa.binary() if kind == "binary" else pa.large_binary())
    if kind == "struct":
        rows = [{"bytes": draw(st.one_of(st.none(), image_bytes())),
                 "path": draw(st.one_of(st.none(), st.text(max_size=4)))} for _ in range(n)]
        return pa.array(holes(rows), pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    if kind == "struct-no-bytes":
        return pa.array([{"path": "x.png"}] * n, pa.struct([("path", pa.string())]))
    if kind in ("uint8-list", "int64-list"):
        lo, hi = (0, 255) if kind == "uint8-list" else (-300, 300)
        length = st.one_of(st.just(16), st.integers(0, 20))
        rows = [draw(st.lists(st.integers(lo, hi), min_size=draw(length), max_size=20)) for _ in range(n)]
        return pa.array(holes(rows), pa.list_(pa.uint8() if kind == "uint8-list" else pa.int64()))
    if kind == "fixed-size":
        width = draw(st.sampled_from([16, 15, 4, 1]))
        values = draw(st.lists(st.integers(0, 255), min_size=n * width, max_size=n * width))
        return pa.FixedSizeListArray.from_arrays(pa.array(np.array(values, np.uint8)), width)
    if kind == "nested":
        h, w = draw(st.sampled_from([(4, 4), (3, 4), (4, 5)]))
        inner = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * h * w, np.uint8)), w)
        return pa.FixedSizeListArray.from_arrays(inner, h)
    if kind == "float-nan":
        values = draw(st.lists(st.floats(width=32), min_size=n * 16, max_size=n * 16))
        return pa.FixedSizeListArray.from_arrays(pa.array(np.array(values, np.float32)), 16)
    if kind == "string":
        return pa.array(holes([draw(st.text(max_size=5)) for _ in range(n)]), pa.string())
    if kind == "int":
        return pa.array(holes([draw(st.integers(-5, 5)) for _ in range(n)]), pa.int64())
    if kind == "dictionary":
        return pa.array([draw(image_bytes()) for _ in range(n)], pa.binary()).dictionary_encode()
    return pa.nulls(n)


@st.composite
def label_columns(draw, n: int) -> pa.Array | None:
    kind = draw(st.sampled_from(["none", "none", "int", "int", "uint64", "float", "string", "null", "dictionary-int",
                                 "dictionary-string", "bool"]))
    if kind == "none":
        return None
    if kind == "int":
        return pa.array([draw(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1))) for _ in range(n)], pa.int64())
    if kind == "uint64":
        return pa.array([draw(st.integers(0, 2**64 - 1)) for _ in range(n)], pa.uint64())
    if kind == "float":
        return pa.array([draw(st.floats()) for _ in range(n)], pa.float64())
    if kind == "string":
        return pa.array([draw(st.text(max_size=3)) for _ in range(n)], pa.string())
    if kind == "dictionary-int":
        return pa.array([draw(st.integers(0, 3)) for _ in range(n)], pa.int32()).dictionary_encode()
    if kind == "dictionary-string":
        return pa.array(["a"] * n, pa.string()).dictionary_encode()
    if kind == "bool":
        return pa.array([True] * n, pa.bool_())
    return pa.nulls(n)


@st.composite
def parquet_files(draw, damage: bool) -> bytes:
    n = draw(st.integers(0, 6))
    columns = {"image": draw(image_columns(n))}
    labels = draw(label_columns(n))
    if labels is not None:
        columns["label"] = labels
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer, row_group_size=draw(st.integers(1, 4)),
                   compression=draw(st.sampled_from(["none", "snappy", "zstd", "gzip"])))
    raw = bytearray(buffer.getvalue())
    if not damage:
        return bytes(raw)
    if draw(st.integers(0, 7)) == 0:
        return draw(st.binary(max_size=200))
    return damage_bytes(draw, raw, max_ops=3)


def _check_parquet(path: Path, blob: bytes) -> None:
    path.write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about damaged EXIF; warnings are not errors
        try:
            _encode_all([str(path)])
        except EncodeError as err:
            assert str(path) in str(err) and "\n" not in str(err), err


@settings(max_examples=50, **FUZZ)
@given(blob=parquet_files(damage=False))
def test_encode_parquet_reader_on_bad_cells_raises_only_encode_error(folder, blob):
    """Well-formed Parquet files with bad contents: undecodable images, wrong types, NaN, nulls."""
    _check_parquet(folder / "cells.parquet", blob)


@settings(max_examples=50, **FUZZ)
@given(blob=parquet_files(damage=True))
@example(blob=b"")
@example(blob=b"PAR1")
@example(blob=b"PAR1\x00\x00\x00\x00PAR1")
def test_encode_parquet_reader_on_damaged_files_raises_only_encode_error(folder, blob):
    """The file itself truncated, bit-flipped or random."""
    _check_parquet(folder / "damaged.parquet", blob)


def test_parquet_fuzz_inputs_reach_the_decoder():
    """The image strategy is not all garbage: some cells decode to the model's shape."""
    from pipelines.encode import decode_image

    decoded = 0
    for blob in ENCODED:
        try:
            decode_image(blob, SHAPE, "cell")
            decoded += 1
        except EncodeError:
            pass
    assert decoded >= 3, decoded
