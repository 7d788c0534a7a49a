"""Variant registry: a decorator fills it; other packages add variants through an entry-point group.

Built-in variants are declared in this project's own pyproject under the same group, so the core
never names a variant and no code anywhere chains on variant names. The core imports no variant:
for a source tree that was never installed (no entry points), the layer above it (pipelines/)
adds a loader that imports the built-ins, called only when a name is first looked up.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from core.variant import Variant

ENTRY_POINT_GROUP = "vaezoo.variants"

_REGISTRY: dict[str, type["Variant"]] = {}
_plugins_loaded = False
_fallback_loaders: list[Callable[[], Any]] = []


def add_fallback_loader(load: Callable[[], Any]) -> None:
    """`load()` imports modules that register variants; it runs at the first lookup when the
    entry points registered none (a source tree that was never installed)."""
    if load not in _fallback_loaders:
        _fallback_loaders.append(load)


def register_variant(cls: type["Variant"]) -> type["Variant"]:
    """Class decorator: make a Variant subclass findable by its `name`."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__qualname__} needs a class attribute `name` to be registered")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"variant {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()  # importing the module runs its @register_variant
    if not _REGISTRY:  # running from a source tree that was never installed
        for load in _fallback_loaders:
            load()


def get_variant(name: str) -> type["Variant"]:
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown variant {name!r} (known: {known})") from None


def available_variants() -> dict[str, type["Variant"]]:
    _load_plugins()
    return dict(sorted(_REGISTRY.items()))
