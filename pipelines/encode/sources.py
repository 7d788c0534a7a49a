"""What the inputs are (IDX, Parquet, image folders), cut into parts whose row ids are known
before anything is read; every check that needs no decoding is done here."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.encode.schema import EncodeError, _flat

SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
PARQUET_SUFFIXES = (".parquet", ".pq")
PART_ROWS = 50_000         # rows per read task for seekable sources (plain IDX, Parquet row groups)
PART_FILES = 2_000         # image files per read task


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


def _open_idx(path: Path):
    """core.idx's streaming IDX reader, its DataError told as an EncodeError (same message)."""
    from core.idx import DataError, open_idx

    try:
        return open_idx(path)
    except DataError as err:
        raise EncodeError(str(err)) from None


def _idx_image_layout(dims: tuple[int, ...], dtype: np.dtype, path: Path, shape: tuple[int, int, int]) -> str:
    """How the IDX images map to the model's (C, H, W) (as core.idx reads them), or an error."""
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
    from core.idx import SPLIT_FILES

    return any(_find_idx(folder, images) for images, _ in SPLIT_FILES.values())


def _plan_idx(folder: Path, split: str, shape: tuple[int, int, int], first_id: int) -> tuple[list[Part], int, dict]:
    from core.idx import SPLIT_FILES

    image_stem, label_stem = SPLIT_FILES[split]
    image_path = _find_idx(folder, image_stem)
    if image_path is None:
        raise EncodeError(f"{folder}: no {image_stem}[.gz] for the {split} split")
    stream, header = _open_idx(image_path)
    stream.close()
    dims, gz = header.dims, header.gzipped
    _idx_image_layout(dims, header.dtype, image_path, shape)
    n = dims[0]
    if not gz:
        size, needed = image_path.stat().st_size, header.size + n * header.row_bytes
        if size != needed:
            raise EncodeError(f"{image_path}: IDX file is {size} bytes, its dimensions {dims} need {needed}")
    label_path = _find_idx(folder, label_stem)
    if label_path is not None:
        lstream, labels = _open_idx(label_path)
        lstream.close()
        if len(labels.dims) != 1 or labels.dims[0] != n:
            raise EncodeError(f"{label_path}: {labels.dims[0]} labels for {n} images")
        if labels.dtype.kind not in "iu":
            raise EncodeError(f"{label_path}: labels must be integers, found {labels.dtype}")
    # A gzip stream cannot seek without decompressing what comes before: one part reads it all.
    step = n if gz else PART_ROWS
    parts = [Part("idx", first_id + s, min(step, n - s), path=str(image_path), start=s,
                  label_path=None if label_path is None else str(label_path)) for s in range(0, n, max(step, 1))]
    files = [str(image_path)] + ([str(label_path)] if label_path else [])
    return parts, n, {"files": files}


def _resolve_dataset_folder(name: str, data_dir: str | None) -> Path:
    from core.idx import SYSTEM_LOCATIONS

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
