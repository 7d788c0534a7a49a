"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Each write goes to a temporary name in the same folder (so the rename stays on one file system),
then `os.replace` puts it in place; a failed write leaves no temporary file behind. The temporary
name is unique per call, so two processes writing the same file do not write into each other's.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` to make the file under a temporary name, then rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, newline: bool = True) -> Path:
    """`obj` as indented JSON with sorted keys (and a final newline unless `newline=False`)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + ("\n" if newline else ""))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj, path)`, atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
