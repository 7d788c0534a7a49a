"""Staging folders and the exactly-once commit: the output appears whole or not at all."""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.encode.schema import META_KEY, EncodeError, EncodeFailed
from pipelines.processes import pid_alive

_STAGING_RE = re.compile(r"\.(?P<name>.+)\.(?P<what>staging|replaced)-(?P<host>[^/]+)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _staging_path(output: Path, what: str = "staging") -> Path:
    return output.with_name(f".{output.name}.{what}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def clean_stale_staging(output: Path) -> list[Path]:
    """Remove staging folders of killed runs for `output` (this host, process gone); put back an
    output that a killed two-rename replacement had moved aside. Returns what was removed."""
    removed = []
    parent = output.parent
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        m = _STAGING_RE.fullmatch(entry.name)
        if not m or m["name"] != output.name or m["host"] != _host() or pid_alive(int(m["pid"])):
            continue
        if m["what"] == "replaced" and not output.exists():
            os.rename(entry, output)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _check_replaceable(output: Path, folders: tuple[str, ...] = ()) -> None:
    """--overwrite replaces only a folder of vae-zoo latents (or an empty one; `folders` names
    subfolders the command itself writes, `vaezoo complete`'s images): a typo must not delete a
    home folder."""
    if not output.is_dir():
        raise EncodeError(f"{output} exists and is not a folder; remove it yourself")
    for entry in output.iterdir():
        if entry.is_dir() and entry.name in folders:
            continue
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


def _commit(staging: Path, output: Path, overwrite: bool, folders: tuple[str, ...] = ()) -> None:
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise EncodeError(f"{output} appeared while encoding; pass --overwrite to replace it")
        _check_replaceable(output, folders)
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
