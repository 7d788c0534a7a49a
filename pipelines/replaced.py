"""Attributes of Ray's modules and classes replaced for the duration of a call: the private hooks
of pipelines/ray_connect.py, ray_lean.py and ray_data_lean.py (Ray is pinned; their tests fail if
an upgrade moves what they replace)."""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def replaced(*replacements: tuple[object, str, object]) -> Iterator[None]:
    """Each (owner, name, value): `owner.name` is `value` inside the block. What was there is put
    back as it was stored (`vars(owner)[name]`, so a class's staticmethod stays a staticmethod),
    also when the block raises."""
    saved = [(owner, name, vars(owner)[name]) for owner, name, _ in replacements]
    try:
        for owner, name, value in replacements:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
